package perf

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"udm/uring"
)

// Op is a generated I/O's direction.
type Op uint8

const (
	Read Op = iota
	Write
)

// Config describes one workload. Zero values take the defaults noted.
type Config struct {
	// RW is read, write, randread, randwrite or randrw (default randread).
	RW string
	// BlockSize in bytes (default 4096).
	BlockSize int
	// Depth is the queue depth per loop (default 1).
	Depth int
	// Loops is how many loops share the work (default 1); ignored when
	// LoopSet is given.
	Loops int
	// LoopSet runs the workload on existing loops instead of new ones.
	LoopSet []*uring.Loop
	// Duration bounds the run (default 10s unless TotalBytes is set).
	Duration time.Duration
	// TotalBytes ends the run once this many bytes moved.
	TotalBytes int64
	// ReadPct is the share of reads in randrw, in percent (default 70).
	ReadPct int
	// Seed makes offsets and data reproducible (default 1).
	Seed uint64
	// Verify writes self-describing blocks and checks every read.
	Verify bool
	// Offset and Size select the region of the target (default all).
	Offset, Size int64
	// Ramp is a warm-up excluded from the results.
	Ramp time.Duration
	// Interval, if set, records a timeline of IOPS and latency per
	// interval (drills use 100 ms).
	Interval time.Duration
	// Progress, if set, is called about once a second while running.
	Progress func(Progress)
	// StopOnError ends the run at the first I/O error.
	StopOnError bool
	// Stop, if set, ends the run when it is closed, as Duration does:
	// no new I/O, the run returns once what is in flight has completed
	// (and after the read-back pass, if asked).
	Stop <-chan struct{}
	// ReadBack (with Verify) adds a pass after the run: every block
	// written during it is read once and checked, so that every
	// acknowledged write is proven, not only those that random reads hit.
	// It is not part of the timeline, IOPS or latency figures; its bytes
	// are Result.ReadBackBytes, its errors count in Errors and IOErrors.
	// Cancelling ctx skips or ends it.
	ReadBack bool
}

func (c *Config) defaults() error {
	if c.RW == "" {
		c.RW = "randread"
	}
	switch c.RW {
	case "read", "write", "randread", "randwrite", "randrw", "rw":
	default:
		return fmt.Errorf("perf: unknown workload %q (read, write, randread, randwrite, randrw, rw)", c.RW)
	}
	if c.BlockSize == 0 {
		c.BlockSize = 4096
	}
	if c.BlockSize%512 != 0 || c.BlockSize <= 0 {
		return fmt.Errorf("perf: block size %d is not a multiple of 512", c.BlockSize)
	}
	if c.Depth == 0 {
		c.Depth = 1
	}
	if c.Loops == 0 {
		c.Loops = 1
	}
	if len(c.LoopSet) > 0 {
		c.Loops = len(c.LoopSet)
	}
	if c.Duration == 0 && c.TotalBytes == 0 {
		c.Duration = 10 * time.Second
	}
	if c.ReadPct == 0 {
		c.ReadPct = 70
	}
	if c.Seed == 0 {
		c.Seed = 1
	}
	return nil
}

func (c *Config) random() bool { return strings.HasPrefix(c.RW, "rand") }

// Engine is what a workload runs against.
type Engine interface {
	// Name describes the engine for reports.
	Name() string
	// Size of the target in bytes.
	Size() int64
	// Port is called on loop l (from a function posted to it) and returns
	// the submitter of I/O on that loop.
	Port(l *uring.Loop) (Port, error)
	Close() error
}

// Port submits I/O for one loop.
type Port interface {
	// Submit starts io. The port calls io.Done exactly once, on the same
	// loop (posting back to it if the I/O completes elsewhere).
	Submit(io *IO)
	// Close runs on the loop after every I/O of the run has completed.
	Close()
}

// IO is one generated request.
type IO struct {
	Op  Op
	Off int64
	Buf uring.Buf
	// Index is the IO's number within its worker (0..Depth-1); ports can
	// use it as an operation tag.
	Index int

	w     *worker
	start int64 // nanotime
	block int64
}

// Done reports io's completion; call it on io's loop.
func (io *IO) Done(err error) { io.w.complete(io, err) }

// Progress is a running snapshot.
type Progress struct {
	Elapsed time.Duration
	Ops     int64
	Errors  int64
	IOPS    float64 // over the last second
	P99     time.Duration
}

// Run executes the workload and returns its result. Cancelling ctx ends
// the run early with the results measured so far.
func Run(ctx context.Context, cfg Config, eng Engine) (*Result, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	size := eng.Size() - cfg.Offset
	if cfg.Size > 0 && cfg.Size < size {
		size = cfg.Size
	}
	blocks := size / int64(cfg.BlockSize)
	if blocks < int64(cfg.Loops) || blocks <= 0 {
		return nil, fmt.Errorf("perf: target of %d bytes too small for %d-byte blocks on %d loops", eng.Size(), cfg.BlockSize, cfg.Loops)
	}
	loops := cfg.LoopSet
	if len(loops) == 0 {
		for i := 0; i < cfg.Loops; i++ {
			l, err := uring.NewLoop(uring.Config{ID: i})
			if err != nil {
				for _, l := range loops {
					l.Close()
				}
				return nil, err
			}
			loops = append(loops, l)
		}
		defer func() {
			for _, l := range loops {
				l.Close()
			}
		}()
	}
	r := &run{cfg: cfg, eng: eng, blocks: blocks, stopped: make(chan struct{})}
	var ver *verifier
	if cfg.Verify {
		ver = newVerifier(cfg, blocks)
	}
	for i, l := range loops {
		w := newWorker(r, i, l, ver)
		r.workers = append(r.workers, w)
	}
	// Set ports up on their loops.
	for _, w := range r.workers {
		var err error
		if cerr := w.l.Call(func() { err = w.setup() }); cerr != nil {
			err = cerr
		}
		if err != nil {
			r.teardown()
			return nil, fmt.Errorf("perf: %s: %w", eng.Name(), err)
		}
	}
	var ru0 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	r.start = time.Now()
	r.startNs = nanotime()
	r.measureFrom = r.startNs + int64(cfg.Ramp)
	if cfg.Duration > 0 {
		r.deadline = r.startNs + int64(cfg.Ramp+cfg.Duration)
	}
	r.running.Store(int32(len(r.workers)))
	for _, w := range r.workers {
		w.l.Post(w.begin)
	}
	progressDone := make(chan struct{})
	go r.progress(ctx, progressDone)
	select {
	case <-r.stopped:
	case <-ctx.Done():
		r.stop()
		<-r.stopped
	case <-cfg.Stop:
		r.stop()
		<-r.stopped
	}
	close(progressDone)
	end := nanotime()
	var ru1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	res := r.result(end)
	cpu := time.Duration(ru1.Utime.Nano()-ru0.Utime.Nano()) + time.Duration(ru1.Stime.Nano()-ru0.Stime.Nano())
	if res.Ops > 0 {
		res.CPUPerIO = Micros(cpu) / float64(res.Ops+res.RampOps)
	}
	if cfg.ReadBack && ver != nil && ctx.Err() == nil {
		r.readBack(ctx, res)
	}
	r.teardown()
	if ver != nil {
		res.VerifiedBytes = ver.verified.Load()
		res.VerifyFailures = ver.failures()
	}
	return res, nil
}

type run struct {
	cfg         Config
	eng         Engine
	blocks      int64
	workers     []*worker
	start       time.Time
	startNs     int64
	measureFrom int64 // nanotime
	deadline    int64 // nanotime; 0 = none
	halt        atomic.Bool
	running     atomic.Int32
	stopOnce    sync.Once
	stopped     chan struct{}
	bytes       atomic.Int64
	rbDone      func() // a worker's read-back pass ended (set before it starts)
}

func (r *run) stop() { r.halt.Store(true) }

func (r *run) workerDone() {
	if r.running.Add(-1) == 0 {
		r.stopOnce.Do(func() { close(r.stopped) })
	}
}

func (r *run) teardown() {
	for _, w := range r.workers {
		if w.port != nil {
			w.l.Call(w.port.Close)
		}
		w.l.Call(w.freeBufs)
	}
}

func (r *run) progress(ctx context.Context, done chan struct{}) {
	if r.cfg.Progress == nil {
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastOps int64
	last := time.Now()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			var p Progress
			p.Elapsed = now.Sub(r.start)
			h := newHist()
			for _, w := range r.workers {
				w.l.Call(func() {
					p.Ops += w.ops
					p.Errors += w.errCount
					h.Merge(w.lat.read)
					h.Merge(w.lat.write)
				})
			}
			p.IOPS = float64(p.Ops-lastOps) / now.Sub(last).Seconds()
			p.P99 = time.Duration(h.ValueAtQuantile(99))
			lastOps, last = p.Ops, now
			r.cfg.Progress(p)
		}
	}
}

// worker keeps Depth I/Os in flight on one loop.
type worker struct {
	r    *run
	id   int
	l    *uring.Loop
	port Port
	ios  []IO
	// sq and submitting: see submit.
	sq         []*IO
	submitting bool
	rng        *rand.Rand
	seq        int64 // next block for sequential workloads
	active     int
	ver        *verifier
	busy       map[int64]bool // blocks in flight (verify only)

	lat      latencies
	timeline []bucket
	ioErrs   []IOError
	lastErrB int // timeline interval of the last error kept in ioErrs

	// The read-back pass: blocks rbNext, rbNext+rbStep, ... below rbEnd.
	rb                    bool
	rbNext, rbEnd, rbStep int64
	rbBytes               int64
	rbErrs                int

	ops, errCount  int64 // loop-owned; others read them through Call
	rampOps        int64
	reads, writes  int64
	rbytes, wbytes int64
	firstErr       error
	errLog         []string
	stoppedAt      int64 // nanotime
}

func newWorker(r *run, id int, l *uring.Loop, ver *verifier) *worker {
	w := &worker{r: r, id: id, l: l, ver: ver, rng: rand.New(rand.NewPCG(r.cfg.Seed, uint64(id)+1))}
	w.lat = newLatencies()
	if ver != nil {
		w.busy = map[int64]bool{}
	}
	// Sequential workloads split the region into one stretch per loop.
	w.seq = r.blocks * int64(id) / int64(r.cfg.Loops)
	return w
}

func (w *worker) setup() error {
	p, err := w.r.eng.Port(w.l)
	if err != nil {
		return err
	}
	w.port = p
	w.ios = make([]IO, w.r.cfg.Depth)
	w.sq = make([]*IO, 0, w.r.cfg.Depth)
	for i := range w.ios {
		w.ios[i] = IO{Index: i, w: w, Buf: w.l.Arena().Get(w.r.cfg.BlockSize)}
		if !w.r.cfg.Verify {
			// Touch the buffer so writes don't carry all-zero pages.
			for j := range w.ios[i].Buf.B {
				w.ios[i].Buf.B[j] = byte(j*31 + i)
			}
		}
	}
	return nil
}

func (w *worker) freeBufs() {
	for i := range w.ios {
		w.l.Arena().Put(w.ios[i].Buf)
		w.ios[i].Buf = uring.Buf{}
	}
}

// submit hands io to the port. A port may complete an I/O inside Submit
// (filedev copies memory-backed files inline), and the completion issues
// the next I/O at once: done directly that would recurse without bound.
// So a submission made while one is under way is queued, and the
// outermost call sends the queue.
func (w *worker) submit(io *IO) {
	w.sq = append(w.sq, io)
	if w.submitting {
		return
	}
	w.submitting = true
	for i := 0; i < len(w.sq); i++ {
		w.port.Submit(w.sq[i])
	}
	w.sq = w.sq[:0]
	w.submitting = false
}

func (w *worker) begin() {
	for i := range w.ios {
		if !w.issue(&w.ios[i]) {
			break
		}
	}
	if w.active == 0 {
		w.finish()
	}
}

// issue starts io with the next request, or returns false when the run is
// over.
func (w *worker) issue(io *IO) bool {
	r := w.r
	if r.halt.Load() {
		return false
	}
	if r.cfg.TotalBytes > 0 && r.bytes.Add(int64(r.cfg.BlockSize)) > r.cfg.TotalBytes {
		r.stop()
		return false
	}
	cfg := &r.cfg
	op := Read
	switch cfg.RW {
	case "write", "randwrite":
		op = Write
	case "randrw", "rw":
		if int(w.rng.UintN(100)) >= cfg.ReadPct {
			op = Write
		}
	}
	var blk int64
	if cfg.random() {
		blk = w.pick()
		if blk < 0 {
			return false
		}
	} else {
		blk = w.seq
		w.seq++
		lo, hi := w.stretch()
		if w.seq >= hi {
			w.seq = lo
		}
		if w.ver != nil && w.busy[blk] {
			return false // depth exceeds this loop's stretch
		}
	}
	io.Op = op
	io.block = blk
	io.Off = cfg.Offset + blk*int64(cfg.BlockSize)
	if w.ver != nil {
		w.busy[blk] = true
		if op == Write {
			w.ver.fill(io, w.id)
		}
	}
	w.active++
	io.start = nanotime()
	w.submit(io)
	return true
}

// stretch is the part of the region a sequential worker walks: all of it
// without verification, its own share with (so no two loops write a block).
func (w *worker) stretch() (lo, hi int64) {
	n := int64(w.r.cfg.Loops)
	if w.ver == nil {
		return 0, w.r.blocks
	}
	return w.r.blocks * int64(w.id) / n, w.r.blocks * int64(w.id+1) / n
}

// pick chooses a random block; with verification, one owned by this loop
// and not in flight.
func (w *worker) pick() int64 {
	r := w.r
	if w.ver == nil {
		return w.rng.Int64N(r.blocks)
	}
	n := int64(r.cfg.Loops)
	per := r.blocks / n
	if r.blocks%n > int64(w.id) {
		per++
	}
	for range 64 {
		blk := w.rng.Int64N(per)*n + int64(w.id)
		if !w.busy[blk] {
			return blk
		}
	}
	return -1
}

func (w *worker) complete(io *IO, err error) {
	if w.rb {
		w.completeReadBack(io, err)
		return
	}
	now := nanotime()
	w.active--
	r := w.r
	d := time.Duration(now - io.start)
	since := time.Duration(now - r.startNs)
	measured := io.start >= r.measureFrom
	if w.ver != nil {
		delete(w.busy, io.block)
		if err == nil && io.Op == Read {
			w.ver.check(io, since)
		}
		w.ver.settle(io, err)
	}
	if err != nil {
		w.noteError(io, err, since, d)
		if r.cfg.StopOnError {
			r.stop()
		}
	}
	if measured {
		w.ops++
		w.lat.record(io.Op, d)
		if io.Op == Read {
			w.reads++
			w.rbytes += int64(len(io.Buf.B))
		} else {
			w.writes++
			w.wbytes += int64(len(io.Buf.B))
		}
	} else {
		w.rampOps++
	}
	if r.cfg.Interval > 0 {
		w.recordTimeline(since, d, err != nil)
	}
	if r.deadline != 0 && now > r.deadline {
		r.stop()
	}
	if w.issue(io) {
		return
	}
	if w.active == 0 {
		w.finish()
	}
}

// noteError counts a failed I/O and keeps its description: the first
// 100 of a worker, and beyond that the first of each timeline interval,
// so that every interval with errors has one on record; and the first
// 100 of the read-back pass.
func (w *worker) noteError(io *IO, err error, since, lat time.Duration) {
	w.errCount++
	if w.firstErr == nil {
		w.firstErr = err
	}
	if len(w.errLog) < 100 {
		w.errLog = append(w.errLog, fmt.Sprintf("%s at offset %d (%d bytes) after %v: %v",
			opName(io.Op), io.Off, len(io.Buf.B), since.Round(time.Millisecond), err))
	}
	b := -1
	if iv := w.r.cfg.Interval; iv > 0 {
		b = int(since / iv)
	}
	keep := len(w.ioErrs) < 100 || (b >= 0 && b != w.lastErrB)
	if w.rb {
		keep = w.rbErrs < 100
		w.rbErrs++
	}
	if keep {
		e := IOError{Op: opName(io.Op), Offset: io.Off, Len: len(io.Buf.B), At: since, Latency: lat, Err: err.Error(), ReadBack: w.rb}
		var en syscall.Errno
		if errors.As(err, &en) {
			e.Errno = unix.ErrnoName(en)
		}
		w.ioErrs = append(w.ioErrs, e)
		w.lastErrB = b
	}
}

// IOError is one failed I/O as the workload saw it.
type IOError struct {
	Op     string `json:"op"` // read or write
	Offset int64  `json:"offset"`
	Len    int    `json:"len"`
	// At is when it completed, from the run's start; Latency how long
	// it took.
	At      time.Duration `json:"at_ns"`
	Latency time.Duration `json:"latency_ns"`
	Err     string        `json:"error"`
	Errno   string        `json:"errno,omitempty"` // EIO, ETIMEDOUT, ... when the error carries one
	// ReadBack: it happened in the read-back pass.
	ReadBack bool `json:"read_back,omitempty"`
}

// readBack runs the read-back pass on every worker and adds what it
// found to res.
func (r *run) readBack(ctx context.Context, res *Result) {
	r.halt.Store(false)
	done := make(chan struct{})
	var left atomic.Int32
	left.Store(int32(len(r.workers)))
	r.rbDone = func() {
		if left.Add(-1) == 0 {
			close(done)
		}
	}
	for _, w := range r.workers {
		w.l.Post(w.beginReadBack)
	}
	select {
	case <-done:
	case <-ctx.Done():
		r.stop()
		<-done
	}
	for _, w := range r.workers {
		w.l.Call(func() {
			res.ReadBackBytes += w.rbBytes
		})
	}
	res.Errors, res.ErrorLog, res.IOErrors, res.FirstError = 0, nil, nil, ""
	for _, w := range r.workers {
		w.l.Call(func() {
			res.Errors += w.errCount
			res.ErrorLog = append(res.ErrorLog, w.errLog...)
			res.IOErrors = append(res.IOErrors, w.ioErrs...)
			if w.firstErr != nil && res.FirstError == "" {
				res.FirstError = w.firstErr.Error()
			}
		})
	}
	sortIOErrors(res.IOErrors)
}

// beginReadBack starts the worker's read-back pass over the blocks it
// owns (those its writes went to).
func (w *worker) beginReadBack() {
	w.rb = true
	if w.r.cfg.random() {
		w.rbNext, w.rbEnd, w.rbStep = int64(w.id), w.r.blocks, int64(w.r.cfg.Loops)
	} else {
		w.rbNext, w.rbEnd = w.stretch()
		w.rbStep = 1
	}
	for i := range w.ios {
		if !w.issueReadBack(&w.ios[i]) {
			break
		}
	}
	if w.active == 0 {
		w.r.rbDone()
	}
}

// issueReadBack reads the next written block, or returns false when
// there is none left (or the pass was stopped).
func (w *worker) issueReadBack(io *IO) bool {
	r := w.r
	for !r.halt.Load() && w.rbNext < w.rbEnd {
		blk := w.rbNext
		w.rbNext += w.rbStep
		if w.ver.gens[blk] == 0 && w.ver.state[blk] == blockKnown {
			continue // never written in this run
		}
		io.Op, io.block = Read, blk
		io.Off = r.cfg.Offset + blk*int64(r.cfg.BlockSize)
		w.active++
		io.start = nanotime()
		w.submit(io)
		return true
	}
	return false
}

func (w *worker) completeReadBack(io *IO, err error) {
	now := nanotime()
	w.active--
	since := time.Duration(now - w.r.startNs)
	if err == nil {
		w.ver.check(io, since)
		w.rbBytes += int64(len(io.Buf.B))
	} else {
		w.noteError(io, err, since, time.Duration(now-io.start))
	}
	if w.issueReadBack(io) {
		return
	}
	if w.active == 0 {
		w.r.rbDone()
	}
}

func (w *worker) finish() {
	if w.stoppedAt != 0 {
		return
	}
	w.stoppedAt = nanotime()
	w.r.workerDone()
}

func opName(op Op) string {
	if op == Write {
		return "write"
	}
	return "read"
}

// ErrVerify marks data verification failures.
var ErrVerify = errors.New("perf: data verification failed")
