package multipath

import (
	"strconv"
	"sync/atomic"
	"time"

	"udm/dm"
)

// The path selectors. A group's selector picks one of the active paths of
// the current snapshot for each I/O, with no lock: round-robin rotates an
// atomic counter; queue-length, service-time and historical-service-time
// scan the active paths for the least loaded one (per-path atomic
// in-flight counters, bumped at submission and dropped in EndIO), starting
// at a rotating index so that ties are spread as the kernel spreads them
// by moving the chosen path to the tail of its list.
//
// The counters are shared atomics rather than per-loop counts summed on
// demand: BenchmarkSelect's parallel cases measure the cost on the
// machines udm targets (a few cores), where one padded cache line per
// path costs less than summing per-loop counters on every selection.

// path is one path of the map: its device and its fast-path counters.
type path struct {
	dev   dm.BlockDevice
	name  string // as in the table
	idx   int    // in Multipath.paths and the machine
	group *group
	rel   int64 // service-time relative throughput
	// epoch counts reinstatements: an I/O carries the epoch it was sent
	// in, and its error fails the path only if the path has not been
	// reinstated since (a late error must not fail a path that came back).
	epoch atomic.Uint32

	_             [64]byte
	inflight      atomic.Int64 // I/Os (queue-length, historical-service-time)
	inflightBytes atomic.Int64 // bytes (service-time)
	// historical-service-time: the service time average (fixed point,
	// hstFixedShift fraction bits, nanoseconds), when the last I/O
	// finished, and when the path turns stale (nanotime).
	hst        atomic.Uint64
	lastFinish atomic.Int64
	staleAfter atomic.Int64
	_          [64]byte
}

// group is one priority group's selector state.
type group struct {
	idx   int
	kind  selKind
	paths []*path
	// historical-service-time parameters.
	threshold uint64
	weights   [hstWeightCount]uint64

	_  [64]byte
	rr atomic.Uint64 // rotation
	// active is the number of active paths (historical-service-time's
	// valid_count), updated with each snapshot.
	active atomic.Int64
	_      [64]byte
}

// snapshot is the immutable view of the map the fast path reads: when
// ready, I/O goes to one of active (the active paths of group g).
type snapshot struct {
	ready  bool
	g      *group
	active []*path
}

// Kernel constants of dm-ps-service-time.c and
// dm-ps-historical-service-time.c.
const (
	stThroughputShift = 7
	stMaxInflight     = int64(^uint64(0)>>1) >> stThroughputShift
	hstWeightCount    = 64
	hstBucketShift    = 24 // ~16 ms per weight bucket
	hstMaxInflight    = 1024
	hstFixedMax       = uint64(1) << 62
)

// clockBase anchors nanotime: a monotonic clock in nanoseconds.
var clockBase = time.Now()

func nanotime() int64 { return int64(time.Since(clockBase)) }

// clock returns the time the snapshot's selector needs (0 if none).
func (s *snapshot) clock() int64 {
	if s.g.kind == selHistorical {
		return nanotime()
	}
	return 0
}

// pick chooses a path among the snapshot's active ones for an I/O of n
// bytes (now: clock()). The snapshot must be ready (at least one active
// path).
func (s *snapshot) pick(n uint32, now int64) *path {
	act := s.active
	if len(act) == 1 {
		return act[0]
	}
	g := s.g
	start := int(g.rr.Add(1) % uint64(len(act)))
	switch g.kind {
	case selRoundRobin:
		return act[start]
	case selQueueLength:
		return pickQueueLength(act, start)
	case selServiceTime:
		return pickServiceTime(act, start, int64(n))
	default:
		return g.pickHistorical(act, start, now)
	}
}

func pickQueueLength(act []*path, start int) *path {
	best := act[start]
	bq := best.inflight.Load()
	for k, i := 1, start+1; k < len(act); k, i = k+1, i+1 {
		if i == len(act) {
			i = 0
		}
		if q := act[i].inflight.Load(); q < bq {
			best, bq = act[i], q
		}
	}
	return best
}

func pickServiceTime(act []*path, start int, incoming int64) *path {
	best := act[start]
	bsz := best.inflightBytes.Load()
	for k, i := 1, start+1; k < len(act); k, i = k+1, i+1 {
		if i == len(act) {
			i = 0
		}
		p := act[i]
		sz := p.inflightBytes.Load()
		if stCompare(sz, p.rel, bsz, best.rel, incoming) < 0 {
			best, bsz = p, sz
		}
	}
	return best
}

// stCompare is the kernel's st_compare_load: < 0 when path 1 (in-flight
// bytes sz1, relative throughput rt1) serves an I/O of incoming bytes
// sooner than path 2.
func stCompare(sz1, rt1, sz2, rt2, incoming int64) int {
	// Same throughput: the less loaded one.
	if rt1 == rt2 {
		return cmp64(sz1, sz2)
	}
	// Same load, or one path with no throughput: the faster one.
	if sz1 == sz2 || rt1 == 0 || rt2 == 0 {
		return cmp64(rt2, rt1)
	}
	// Service time (sz + incoming) / rt, compared without dividing.
	sz1 += incoming
	sz2 += incoming
	if sz1 >= stMaxInflight || sz2 >= stMaxInflight {
		sz1 >>= stThroughputShift
		sz2 >>= stThroughputShift
	}
	if c := cmp64(sz1*rt2, sz2*rt1); c != 0 {
		return c
	}
	return cmp64(rt2, rt1)
}

func cmp64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (g *group) pickHistorical(act []*path, start int, now int64) *path {
	best := act[start]
	for k, i := 1, start+1; k < len(act); k, i = k+1, i+1 {
		if i == len(act) {
			i = 0
		}
		if g.hstCompare(act[i], best, now) < 0 {
			best = act[i]
		}
	}
	return best
}

// hstCompare is the kernel's hst_compare: < 0 when p1 is expected to
// serve the next I/O sooner than p2.
func (g *group) hstCompare(p1, p2 *path, now int64) int {
	hst1, hst2 := p1.hst.Load(), p2.hst.Load()
	out1, out2 := p1.inflight.Load(), p2.inflight.Load()
	stale1, stale2 := p1.staleAfter.Load(), p2.staleAfter.Load()
	// Estimates too close to call: the less loaded path.
	var over bool
	if hst1 > hst2 {
		over = hst1 > g.threshold*hst2
	} else {
		over = hst2 > g.threshold*hst1
	}
	if !over {
		return cmp64(out1, out2)
	}
	// An idle stale path, or the staler of two idle ones.
	if (out1 == 0 && stale1 < now) || (out2 == 0 && stale2 < now) || (out1 == 0 && out2 == 0) {
		var a, b int64
		if out2 == 0 {
			a = stale1
		}
		if out1 == 0 {
			b = stale2
		}
		return cmp64(a, b)
	}
	var p2Better bool
	if out1 == out2 {
		p2Better = hst1 > hst2
	} else {
		if out1 >= hstMaxInflight || out2 >= hstMaxInflight {
			hst1 >>= hstFixedShift
			hst2 >>= hstFixedShift
		}
		p2Better = uint64(1+out1)*hst1 > uint64(1+out2)*hst2
	}
	// A stale winner only gets an equal share.
	if p2Better {
		if stale2 < now {
			return cmp64(out1, out2)
		}
		return 1
	}
	if stale1 < now {
		return cmp64(out1, out2)
	}
	return -1
}

// A clone's CtxU holds the epoch of its path when it was sent (top 16
// bits) and, for historical-service-time, when it was sent (nanotime,
// low 48 bits: 78 hours, differences taken modulo that).
const (
	ctxEpochShift = 48
	ctxTimeMask   = 1<<ctxEpochShift - 1
)

// start accounts for an I/O submitted on p (now: the snapshot's clock).
func (p *path) start(c *dm.Clone, now int64) {
	c.CtxU = uint64(uint16(p.epoch.Load())) << ctxEpochShift
	switch p.group.kind {
	case selQueueLength:
		p.inflight.Add(1)
	case selServiceTime:
		p.inflightBytes.Add(int64(c.Len))
	case selHistorical:
		p.inflight.Add(1)
		c.CtxU |= uint64(now) & ctxTimeMask
	}
}

// end accounts for the completion of an I/O started on p.
func (p *path) end(c *dm.Clone) {
	switch p.group.kind {
	case selQueueLength:
		p.inflight.Add(-1)
	case selServiceTime:
		p.inflightBytes.Add(-int64(c.Len))
	case selHistorical:
		p.hstEnd(c.CtxU & ctxTimeMask)
		p.inflight.Add(-1)
	}
}

// current reports whether an I/O with ctx (its CtxU) was sent in the
// path's current epoch.
func (p *path) current(ctx uint64) bool {
	return uint16(ctx>>ctxEpochShift) == uint16(p.epoch.Load())
}

// hstEnd folds one service time into the path's average (the kernel's
// hst_end_io; the read-modify-writes are separate atomics, so two
// completions racing may drop one sample, which only blurs an average).
func (p *path) hstEnd(start uint64) {
	now := nanotime()
	// Times are compared modulo 2^48 ns (CtxU keeps 48 bits).
	st := (uint64(now) - start) & ctxTimeMask
	if lf := p.lastFinish.Load(); lf > 0 {
		// A request finished after this one was sent: count the time
		// as if they were served one after the other.
		if since := (uint64(now) - uint64(lf)) & ctxTimeMask; since < st {
			st = since
		}
	}
	p.lastFinish.Store(now)
	g := p.group
	bucket := min(st>>hstBucketShift, hstWeightCount-1)
	w := g.weights[bucket]
	next := min(st<<hstFixedShift, hstFixedMax)
	for {
		old := p.hst.Load()
		ema := (old*w + next*(hstFixed1-w) + 1<<(hstFixedShift-1)) >> hstFixedShift
		if p.hst.CompareAndSwap(old, ema) {
			valid := uint64(max(g.active.Load(), 1))
			p.staleAfter.Store(now + int64(valid*(ema>>hstFixedShift)))
			return
		}
	}
}

// setWeights precomputes base^(i+1) in fixed point: the weight of the
// old average after a service time in bucket i (older averages count for
// less when the path was idle longer).
func (g *group) setWeights(base uint64) {
	w := uint64(hstFixed1)
	for i := range g.weights {
		w = (w*base + 1<<(hstFixedShift-1)) >> hstFixedShift
		g.weights[i] = w
	}
}

// info is the selector's per-path INFO status (each field followed by a
// space), as the kernel's selectors print it.
func (p *path) info() string {
	switch p.group.kind {
	case selQueueLength:
		return strconv.FormatInt(p.inflight.Load(), 10) + " "
	case selServiceTime:
		return strconv.FormatInt(p.inflightBytes.Load(), 10) + " " + strconv.FormatInt(p.rel, 10) + " "
	case selHistorical:
		return strconv.FormatUint(p.hst.Load(), 10) + " " + strconv.FormatInt(p.inflight.Load(), 10) + " " +
			strconv.FormatInt(max(p.staleAfter.Load(), 0), 10) + " "
	}
	return ""
}
