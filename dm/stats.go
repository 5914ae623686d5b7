package dm

import "sync/atomic"

// Stats are a device's counters, for metrics. Counts are of bios (not
// clones) as they end; depths are current.
type Stats struct {
	Reads, Writes, Flushes, Discards, WriteZeroes uint64
	ReadBytes, WriteBytes                         uint64
	// Errors counts bios that ended with an error.
	Errors uint64
	// Pushbacks counts bios parked on the pushback list.
	Pushbacks uint64
	// InFlight is the pending count: bios mapped and not yet ended.
	InFlight int64
	// Deferred and Pushback are the lists' current lengths.
	Deferred, Pushback int64
	Suspended          bool
}

// devStats is updated with atomics on the fast path. Ops and bytes are
// indexed by Op.
type devStats struct {
	ops       [5]atomic.Uint64
	bytes     [5]atomic.Uint64
	errors    atomic.Uint64
	pushbacks atomic.Uint64
	deferred  atomic.Int64 // written under defMu
	pushback  atomic.Int64 // written under pushMu
	lat       [numLatClasses]latHist
}

func (s *devStats) account(b *Bio, err error) {
	if t := b.core.start; t != 0 {
		s.lat[latClass(b.Op)].observe(nanotime() - t)
		b.core.start = 0
	}
	if op := int(b.Op); op < len(s.ops) {
		s.ops[op].Add(1)
		if b.Op.HasData() {
			s.bytes[op].Add(uint64(b.Len))
		}
	}
	if err != nil {
		s.errors.Add(1)
	}
}

// Stats returns the device's counters; safe from any goroutine.
func (d *Device) Stats() Stats {
	s := &d.stats
	return Stats{
		Reads:       s.ops[OpRead].Load(),
		Writes:      s.ops[OpWrite].Load(),
		Flushes:     s.ops[OpFlush].Load(),
		Discards:    s.ops[OpDiscard].Load(),
		WriteZeroes: s.ops[OpWriteZeroes].Load(),
		ReadBytes:   s.bytes[OpRead].Load(),
		WriteBytes:  s.bytes[OpWrite].Load(),
		Errors:      s.errors.Load(),
		Pushbacks:   s.pushbacks.Load(),
		InFlight:    d.pending.Load(),
		Deferred:    s.deferred.Load(),
		Pushback:    s.pushback.Load(),
		Suspended:   d.flags.Load()&flagSuspended != 0,
	}
}
