package dm

import (
	"math/bits"
	"sync/atomic"
	"time"
)

// Latency histograms: each device keeps one per class of op (reads,
// writes, the rest), of the time from a bio's first Submit to its End —
// time spent deferred across a suspend or on pushback included, as the
// submitter sees it. Buckets are powers of two of nanoseconds, so the
// end of a bio costs a shift, a bit count and two atomic adds (the
// bucket and the sum); no lock, no allocation.
const (
	// NumLatencyBuckets is the number of bounded buckets; one more
	// counts everything above the last bound.
	NumLatencyBuckets = 22
	// latShift: the first bucket's bound is 2^latShift ns (8.192 µs);
	// the last is 2^(latShift+NumLatencyBuckets-1) ns (~17.2 s).
	latShift = 13
)

// LatencyBound is the upper bound (exclusive) of bucket i.
func LatencyBound(i int) time.Duration { return time.Duration(1) << (latShift + i) }

// Latency classes.
const (
	LatRead = iota
	LatWrite
	LatOther // flush, discard, write-zeroes
	numLatClasses
)

// LatencyHistogram is a snapshot of one histogram. Counts[i] counts bios
// that took at least LatencyBound(i-1) and less than LatencyBound(i);
// Counts[NumLatencyBuckets] counts the slower ones.
type LatencyHistogram struct {
	Counts [NumLatencyBuckets + 1]uint64
	Sum    time.Duration
}

// Count is the number of bios in the histogram.
func (h *LatencyHistogram) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

type latHist struct {
	counts [NumLatencyBuckets + 1]atomic.Uint64
	sum    atomic.Uint64 // ns
}

func (h *latHist) observe(ns int64) {
	if ns < 0 {
		ns = 0
	}
	i := bits.Len64(uint64(ns) >> latShift)
	if i > NumLatencyBuckets {
		i = NumLatencyBuckets
	}
	h.counts[i].Add(1)
	h.sum.Add(uint64(ns))
}

func (h *latHist) snapshot() LatencyHistogram {
	var s LatencyHistogram
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Sum = time.Duration(h.sum.Load())
	return s
}

func latClass(op Op) int {
	switch op {
	case OpRead:
		return LatRead
	case OpWrite:
		return LatWrite
	}
	return LatOther
}

// NumOps is the number of bio operations (OpRead … OpWriteZeroes).
const NumOps = int(OpWriteZeroes) + 1

// Latency returns the device's latency histograms, indexed by LatRead,
// LatWrite and LatOther; safe from any goroutine. Bios that ended in
// error are counted too.
func (d *Device) Latency() [3]LatencyHistogram {
	var out [3]LatencyHistogram
	for op, h := range d.LatencyByOp() {
		out[latClass(Op(op))].add(h)
	}
	return out
}

// LatencyByOp returns the device's latency histograms, indexed by Op;
// safe from any goroutine. Bios that ended in error are counted too.
func (d *Device) LatencyByOp() [NumOps]LatencyHistogram {
	var out [NumOps]LatencyHistogram
	for s := range d.shards {
		for i := range out {
			out[i].add(d.shards[s].lat[i].snapshot())
		}
	}
	return out
}

// add adds the samples of x to h.
func (h *LatencyHistogram) add(x LatencyHistogram) {
	for k, c := range x.Counts {
		h.Counts[k] += c
	}
	h.Sum += x.Sum
}
