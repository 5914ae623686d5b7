package dm

import (
	"runtime"
	"sync/atomic"
)

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

// devStats are the device-wide counters of the slow paths.
type devStats struct {
	pushbacks atomic.Uint64
	deferred  atomic.Int64 // written under defMu
	pushback  atomic.Int64 // written under pushMu
}

// shard holds what one submitter (one loop) updates per bio: the pending
// count, the I/O counters and the latency histograms. Loops use different
// shards, so the fast path writes no cache line that another CPU writes
// too (BenchmarkPending, BenchmarkSubmit/linear-4k-parallel). Ops are
// indexed by Op, bytes by OpRead and OpWrite.
type shard struct {
	pending atomic.Int64
	ops     [5]atomic.Uint64
	bytes   [2]atomic.Uint64
	errors  atomic.Uint64
	_       [128 - 9*8]byte
	lat     [NumOps]latHist // by Op; Latency folds them into classes
	_       [64]byte
}

// account counts b, ended with err at now (bioNow's reading).
func (s *shard) account(b *Bio, err error, now int64) {
	if t := b.core.start; t != 0 {
		if op := int(b.Op); op < len(s.lat) {
			s.lat[op].observe(now - t)
		}
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

// maxShards bounds the shards of a device.
const maxShards = 64

// newShards returns a power of two of shards: one per CPU (loops are one
// per CPU by default), at most maxShards.
func newShards() []shard {
	n := 1
	for n < runtime.GOMAXPROCS(0) && n < maxShards {
		n <<= 1
	}
	return make([]shard, n)
}

// clockExecutor is an Executor with a clock that is read once per
// callback (uring.Loop.Now): a bio's start and end stamps then share the
// readings its target's device makes, instead of a clock read each.
type clockExecutor interface{ Now() int64 }

// bioNow is the time for b's stamps. Submit and the end of a bio with an
// Exec run on it, so its clock can be used.
func bioNow(b *Bio) int64 {
	if x, ok := b.Exec.(clockExecutor); ok {
		return x.Now()
	}
	return nanotime()
}

// idExecutor is an Executor that numbers itself, as uring.Loop does: its
// bios are counted in shard ID mod #shards. Bios without one use shard 0.
type idExecutor interface{ ID() int }

// shardOf picks the shard of a bio being submitted: its loop's.
func (d *Device) shardOf(b *Bio) uint32 {
	if d.shardMask == 0 {
		return 0
	}
	if x, ok := b.Exec.(idExecutor); ok {
		return uint32(x.ID()) & d.shardMask
	}
	return 0
}

// pendingSum is the pending count: the sum of the shards'. A bio is
// counted in one shard from its submission to its end (incremented before
// its decrement, so no shard is ever negative), and while BLOCK_IO is set
// a shard gains a bio only for an instant, so a sum of zero read after
// setting BLOCK_IO means nothing is in flight.
func (d *Device) pendingSum() int64 {
	var n int64
	for i := range d.shards {
		n += d.shards[i].pending.Load()
	}
	return n
}

// Stats returns the device's counters; safe from any goroutine.
func (d *Device) Stats() Stats {
	s := &d.stats
	st := Stats{
		Pushbacks: s.pushbacks.Load(),
		InFlight:  d.pendingSum(),
		Deferred:  s.deferred.Load(),
		Pushback:  s.pushback.Load(),
		Suspended: d.flags.Load()&flagSuspended != 0,
	}
	for i := range d.shards {
		sh := &d.shards[i]
		st.Reads += sh.ops[OpRead].Load()
		st.Writes += sh.ops[OpWrite].Load()
		st.Flushes += sh.ops[OpFlush].Load()
		st.Discards += sh.ops[OpDiscard].Load()
		st.WriteZeroes += sh.ops[OpWriteZeroes].Load()
		st.ReadBytes += sh.bytes[OpRead].Load()
		st.WriteBytes += sh.bytes[OpWrite].Load()
		st.Errors += sh.errors.Load()
	}
	return st
}
