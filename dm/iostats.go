package dm

import "sync/atomic"

// IOStats counts the I/O of a backing device (a multipath path, the file
// under a linear target) for metrics, as the kernel's per-disk stats do:
// ops, bytes and errors by class, I/O in flight, latency histograms.
// Start and Done cost a clock read and a few atomic adds, with no lock
// and no allocation. Devices driven by several loops keep one IOStats per
// loop and add their snapshots (IOStatsSnapshot.Add), so that no cache
// line is written from two CPUs.
type IOStats struct {
	ops      [numLatClasses]atomic.Uint64
	bytes    [2]atomic.Uint64 // read, write
	errors   atomic.Uint64
	inflight atomic.Int64
	lat      [numLatClasses]latHist
}

// Start counts an I/O as in flight and returns its start stamp for Done.
func (s *IOStats) Start() int64 { return s.StartAt(nanotime()) }

// StartAt is Start with the time given: now is a runtime nanotime
// reading, such as uring.Loop.Now.
func (s *IOStats) StartAt(now int64) int64 {
	s.inflight.Add(1)
	return now
}

// Done ends an I/O of op and n bytes begun at start (Start's stamp).
func (s *IOStats) Done(op Op, n uint32, start int64, err error) {
	s.DoneAt(op, n, start, nanotime(), err)
}

// DoneAt is Done with the time given, as StartAt.
func (s *IOStats) DoneAt(op Op, n uint32, start, now int64, err error) {
	cl := latClass(op)
	s.lat[cl].observe(now - start)
	s.ops[cl].Add(1)
	if op.HasData() {
		s.bytes[op].Add(uint64(n))
	}
	if err != nil {
		s.errors.Add(1)
	}
	s.inflight.Add(-1)
}

// IOStatsSnapshot is a reading of IOStats. Ops and Latency are indexed by
// LatRead, LatWrite and LatOther.
type IOStatsSnapshot struct {
	Ops                   [3]uint64
	ReadBytes, WriteBytes uint64
	Errors                uint64
	InFlight              int64
	Latency               [3]LatencyHistogram
}

// Snapshot reads the counters; safe from any goroutine.
func (s *IOStats) Snapshot() IOStatsSnapshot {
	var o IOStatsSnapshot
	for i := range o.Ops {
		o.Ops[i] = s.ops[i].Load()
		o.Latency[i] = s.lat[i].snapshot()
	}
	o.ReadBytes, o.WriteBytes = s.bytes[0].Load(), s.bytes[1].Load()
	o.Errors = s.errors.Load()
	o.InFlight = s.inflight.Load()
	return o
}

// Add adds x to o (summing per-loop stats).
func (o *IOStatsSnapshot) Add(x IOStatsSnapshot) {
	for i := range o.Ops {
		o.Ops[i] += x.Ops[i]
		for k, c := range x.Latency[i].Counts {
			o.Latency[i].Counts[k] += c
		}
		o.Latency[i].Sum += x.Latency[i].Sum
	}
	o.ReadBytes += x.ReadBytes
	o.WriteBytes += x.WriteBytes
	o.Errors += x.Errors
	o.InFlight += x.InFlight
}

// IOStatser is a BlockDevice that keeps IOStats (filedev does).
type IOStatser interface {
	IOStats() IOStatsSnapshot
}
