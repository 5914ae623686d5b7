package uring

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned for work offered to a loop that is closing or closed.
var ErrClosed = errors.New("uring: loop closed")

// ErrCallOnLoop is returned by the methods that wait for a loop (Call,
// Close) when they are called on a loop's thread: waiting there would
// stop that loop until the wait ends, and forever if the loop waited for
// is the caller's own. The error names the call site.
var ErrCallOnLoop = errors.New("uring: waiting for a loop on a loop's thread")

// loopThreads maps the thread ID of every running loop to its Loop.
var loopThreads sync.Map // int -> *Loop

// onLoopThread returns the loop whose thread the caller runs on, if any.
// It costs a system call.
func onLoopThread() *Loop {
	if v, ok := loopThreads.Load(unix.Gettid()); ok {
		return v.(*Loop)
	}
	return nil
}

// OnLoopThread reports whether the caller runs on a loop's thread (any
// loop's): code that would wait for I/O or for a loop checks it to refuse
// instead, as Call does. It costs a system call.
func OnLoopThread() bool { return onLoopThread() != nil }

// refuseOnLoop returns ErrCallOnLoop, naming what was called, on which
// loop, for which loop and where from (the caller of the exported method
// that calls refuseOnLoop), if the caller runs on a loop's thread; nil
// otherwise.
func (l *Loop) refuseOnLoop(what string) error {
	cur := onLoopThread()
	if cur == nil {
		return nil
	}
	site := "unknown caller"
	if pc, file, line, ok := runtime.Caller(2); ok {
		site = fmt.Sprintf("%s:%d", file, line)
		if fn := runtime.FuncForPC(pc); fn != nil {
			site = fn.Name() + " (" + site + ")"
		}
	}
	if cur == l {
		return fmt.Errorf("%w: Loop.%s on loop %d's own thread, from %s", ErrCallOnLoop, what, l.id, site)
	}
	return fmt.Errorf("%w: Loop.%s for loop %d on loop %d's thread, from %s", ErrCallOnLoop, what, l.id, cur.id, site)
}

// Handler receives the completion of an operation, on the loop's thread.
// res is the kernel's result: >= 0 on success, -errno on failure (use
// Errno to turn it into an error). tag is the value given at submission.
type Handler interface {
	Complete(tag uint64, res int32, flags uint32)
}

// HandlerFunc adapts a function to Handler. Creating a closure allocates;
// keep these for the slow path.
type HandlerFunc func(tag uint64, res int32, flags uint32)

// Complete calls f.
func (f HandlerFunc) Complete(tag uint64, res int32, flags uint32) { f(tag, res, flags) }

// Errno converts a negative CQE result to a syscall.Errno error, nil
// otherwise.
func Errno(res int32) error {
	if res >= 0 {
		return nil
	}
	return unix.Errno(-res)
}

// OpID identifies a submitted operation (its user_data) for Cancel.
type OpID uint64

// Reserved user_data values; slot user_data always has a generation >= 1
// in its upper half, so these never collide.
const (
	udWake   uint64 = 1
	udIgnore uint64 = 2
	udCancel uint64 = 3
	udSweep  uint64 = 4
)

const (
	slotDeadline = 1 << iota
	slotCancelled
	slotStorage // a storage operation: counts towards completion batching
	slotExpires // swept deadline: expire holds when (SubmitTimed)
	slotExpired // the sweep cancelled it: report ETIMEDOUT
)

// isStorage reports whether op is block I/O (as opposed to sockets and
// timers) for completion batching.
func isStorage(op uint8) bool {
	switch op {
	case OpRead, OpWrite, OpReadFixed, OpWriteFixed, OpReadv, OpWritev, OpFsync, OpFallocate:
		return true
	}
	return false
}

type slot struct {
	h      Handler
	tag    uint64
	gen    uint32
	flags  uint8
	next   int32 // free list
	ts     Timespec
	expire int64 // nanotime after which the sweep cancels it (slotExpires)
}

// Config configures a Loop.
type Config struct {
	// ID is a small integer naming the loop (for per-loop state in callers).
	ID int
	// Entries is the SQ size (default 256); the CQ gets CQFactor times that.
	Entries uint32
	// CQFactor is the CQ size as a multiple of Entries (default 4).
	CQFactor uint32
	// ArenaSize is the size of the registered buffer arena (default 32 MiB;
	// negative disables the arena).
	ArenaSize int
	// Files is the size of the sparse fixed-file table (default 256).
	Files int
	// SetupFlags overrides the ring setup flags (0 = default with fallback).
	SetupFlags uint32
	// SQE128 gives the ring 128-byte SQEs, for URING_CMD operations with
	// a large command area (SubmitCmd; FUSE over io_uring).
	SQE128 bool
	// BatchDiv and BatchWait tune completion batching: with n storage
	// operations in flight the loop sleeps until n/BatchDiv of them
	// completed or BatchWait passed (then until any one completes).
	// Defaults 8 and 20µs; BatchDiv < 0 disables batching.
	BatchDiv  int
	BatchWait time.Duration
	// Spin is the most a loop that just did work polls for more before
	// it sleeps (default 50µs; negative: never). How long it polls within
	// that, and whether at all, adapts to what polling finds and to the
	// CPUs being shared (see spinPolicy).
	Spin time.Duration
	// Slice is the scheduler time slice the loop's thread asks for
	// (sched_setattr: a fair-class thread's custom slice, Linux 6.12 and
	// later; default DefaultSlice, negative: the kernel's). See
	// DefaultSlice.
	Slice time.Duration
	// Nice is the nice value the loop's thread asks for (0: DefaultNice;
	// NiceKeep: the thread keeps the process's). It only ever lowers the
	// thread's nice, and without CAP_SYS_NICE the thread keeps it. See
	// DefaultNice.
	Nice int
}

// Stats are counters kept by the loop.
type Stats struct {
	Submitted     uint64 // SQEs submitted
	Completed     uint64 // CQEs reaped
	Enters        uint64 // io_uring_enter calls
	Wakes         uint64 // eventfd wake-ups written by Post
	Posted        uint64 // functions run from Post
	BacklogHigh   uint64 // most SQEs ever waiting in the backlog
	SpinHits      uint64 // spins that found work
	SpinMisses    uint64 // spins that found none and slept
	SpinRests     uint64 // times spinning stopped for a back-off (spinPolicy)
	SpinContended uint64 // those among them for a contended CPU
}

const (
	stateRunning uint32 = iota
	stateSleeping
	stateWoken
)

// Loop is a run-to-completion event loop: one goroutine locked to its OS
// thread owns one io_uring. Operations are submitted in batches and their
// handlers run inline on that thread. Every method but Post, Call, Close,
// ID and Stats must be called on the loop (from a handler or posted
// function).
type Loop struct {
	id    int
	cfg   Config
	ring  *Ring
	arena *Arena

	now        int64 // Now's reading for the current callback; 0: none yet
	slots      []slot
	freeSlot   int32
	inflight   int // operations with slots
	ioInflight int // storage operations among them
	expiring   int // operations with a swept deadline (SubmitTimed)
	sweepArmed bool
	sweepTS    Timespec

	// backlog holds SQEs (with user_data already set) that did not fit in
	// the SQ and that the kernel did not take yet; flushed in order.
	backlog []SQE
	// refuseSQ is a test hook: sqe() reports the SQ full this many more
	// times, as when the kernel takes no more submissions for now.
	refuseSQ int

	files    []bool // fixed-file slot used
	freeFile []int32

	// flush holds the Flushers asked for this turn (FlushLater);
	// flushing is the other buffer, swapped in while they run.
	flush, flushing []Flusher
	rest            bool // Rest: no spin before the next sleep
	pol             spinPolicy
	schedFd         int // /proc/thread-self/schedstat of the loop's thread; -1: none
	schedBuf        [96]byte
	rusage          unix.Rusage

	posted   mpsc
	state    atomic.Uint32
	posting  atomic.Int32 // Posts between their closed check and their push
	closed   atomic.Bool
	closing  bool // on-loop: Close has started
	closeReq atomic.Bool
	wakeFd   int
	wakeBuf  [8]byte
	wakeOne  [8]byte
	wakeArm  bool

	tid       int
	closeOnce sync.Once
	done      chan struct{}

	submitted, completed, enters, wakes, postedN, backlogHigh atomic.Uint64
	spinHits, spinMisses, spinRests, spinContended            atomic.Uint64
}

// NewLoop starts a loop goroutine, sets its ring up on the locked thread
// and returns once it is ready.
func NewLoop(cfg Config) (*Loop, error) {
	if cfg.Entries == 0 {
		cfg.Entries = 256
	}
	if cfg.CQFactor == 0 {
		cfg.CQFactor = 4
	}
	if cfg.ArenaSize == 0 {
		cfg.ArenaSize = 32 << 20
	}
	if cfg.Files == 0 {
		cfg.Files = 256
	}
	if cfg.BatchDiv == 0 {
		cfg.BatchDiv = 8
	}
	if cfg.BatchWait == 0 {
		cfg.BatchWait = 20 * time.Microsecond
	}
	if cfg.Spin == 0 {
		cfg.Spin = DefaultSpin
	}
	if cfg.Slice == 0 {
		cfg.Slice = DefaultSlice
	}
	if cfg.Nice == 0 {
		cfg.Nice = DefaultNice
	}
	l := &Loop{id: cfg.ID, cfg: cfg, done: make(chan struct{}), freeSlot: -1, wakeFd: -1, schedFd: -1,
		pol: newSpinPolicy(cfg.Spin)}
	l.wakeOne[0] = 1
	l.posted.init()
	reserveProc()
	ready := make(chan error, 1)
	go l.run(ready)
	if err := <-ready; err != nil {
		<-l.done
		return nil, err
	}
	return l, nil
}

func (l *Loop) setup() error {
	r, err := NewRing(RingOptions{Entries: l.cfg.Entries, CQEntries: l.cfg.Entries * l.cfg.CQFactor, Flags: l.cfg.SetupFlags, SQE128: l.cfg.SQE128})
	if err != nil {
		return err
	}
	l.ring = r
	_ = r.RegisterRingFd() // an optimisation; older kernels lack it
	if err := r.RegisterFiles(l.cfg.Files); err != nil {
		return fmt.Errorf("uring: register %d fixed files: %w", l.cfg.Files, err)
	}
	l.files = make([]bool, l.cfg.Files)
	for i := l.cfg.Files - 1; i >= 0; i-- {
		l.freeFile = append(l.freeFile, int32(i))
	}
	if l.cfg.ArenaSize > 0 {
		a, err := NewArena(l.cfg.ArenaSize)
		if err != nil {
			return err
		}
		if err := r.RegisterBuffer(a.Mem()); err != nil {
			a.Close()
			return fmt.Errorf("uring: register %d-byte buffer arena: %w", l.cfg.ArenaSize, err)
		}
		a.index = 0
		l.arena = a
	} else {
		a, _ := NewArena(0)
		l.arena = a
	}
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("uring: eventfd: %w", err)
	}
	l.wakeFd = fd
	l.tid = unix.Gettid()
	l.schedSetup()
	loopThreads.Store(l.tid, l)
	l.growSlots(int(l.cfg.Entries))
	l.armWake()
	return nil
}

func (l *Loop) teardown() {
	if l.wakeFd >= 0 {
		// wakeFd keeps its number: wake() only writes while the loop
		// sleeps, which it no longer does.
		unix.Close(l.wakeFd)
	}
	if l.schedFd >= 0 {
		unix.Close(l.schedFd)
	}
	if l.ring != nil {
		l.ring.Close()
	}
	if l.arena != nil {
		l.arena.Close()
	}
}

func (l *Loop) run(ready chan<- error) {
	runtime.LockOSThread()
	// The thread stays locked and dies with the goroutine: it owned a
	// SINGLE_ISSUER ring and we'd rather not hand it back to the runtime.
	defer close(l.done)
	if err := l.setup(); err != nil {
		if l.tid != 0 {
			loopThreads.Delete(l.tid)
		}
		l.teardown()
		l.closed.Store(true)
		ready <- err
		return
	}
	ready <- nil
	l.loop()
	l.teardown()
	l.finishPosts()
	loopThreads.Delete(l.tid)
}

func (l *Loop) loop() {
	var cancelTS Timespec
	for {
		busy := l.runPosted()
		busy = l.reap() > 0 || busy
		l.runFlush()
		if l.closeReq.Load() && !l.closing {
			l.startClose()
		}
		if l.closing && l.inflight == 0 && !l.wakeArm {
			return
		}
		l.flushBacklog()
		rest := l.rest
		l.rest = false
		if busy && !rest && l.cfg.Spin > 0 && !l.closing && l.ioInflight <= spinMaxStorage && l.spin() {
			continue
		}
		l.state.Store(stateSleeping)
		if l.hasWork() {
			l.state.Store(stateRunning)
			if l.pol.missAt != 0 {
				l.pol.woke(nanotime())
			}
			l.enter(0, nil)
			continue
		}
		var ts *Timespec
		wait, minWait := uint32(1), uint32(0)
		if l.closing {
			// Re-issue cancel-all periodically until everything is back.
			cancelTS = Timespec{Nsec: int64(50 * time.Millisecond)}
			ts = &cancelTS
		} else if bw := l.batchWait(); bw > 1 {
			wait = bw
			if l.ring.Features()&FeatMinTimeout != 0 {
				// Wait up to BatchWait for the batch, then for any one.
				minWait = uint32(l.cfg.BatchWait / time.Microsecond)
			} else {
				cancelTS = Timespec{Nsec: int64(l.cfg.BatchWait)}
				ts = &cancelTS
			}
		}
		l.enterWait(wait, ts, minWait)
		l.state.Store(stateRunning)
		if l.pol.missAt != 0 {
			l.pol.woke(nanotime())
		}
		if l.closing {
			l.cancelAll()
		}
	}
}

// Flusher is work a handler put off until the end of the loop's turn.
type Flusher interface {
	Flush()
}

// FlushLater has f.Flush run once the completions and posted functions
// of this turn have been handled, before the loop submits and sleeps:
// a connection whose requests complete in one turn sends their replies
// in one message instead of one each. Register a Flusher once per turn
// (keep a flag); Flush may register again, for the same turn.
func (l *Loop) FlushLater(f Flusher) {
	l.flush = append(l.flush, f)
}

func (l *Loop) runFlush() {
	for len(l.flush) > 0 {
		batch := l.flush
		l.flush = l.flushing[:0]
		for i, f := range batch {
			batch[i] = nil
			l.now = 0
			f.Flush()
		}
		l.flushing = batch[:0]
	}
}

// hasWork reports whether a function was posted or Close was asked for.
// The loop checks it after announcing it will sleep: a Post or Close that
// saw it running didn't wake it.
func (l *Loop) hasWork() bool {
	return !l.posted.empty() || (l.closeReq.Load() && !l.closing)
}

// Rest asks the loop not to spin before its next sleep: a handler that
// set a timer for its next work (a connection letting requests gather)
// would only burn the CPU until it fires.
func (l *Loop) Rest() { l.rest = true }

// DefaultSpin is Config.Spin's default.
const DefaultSpin = 50 * time.Microsecond

// spinMaxStorage: a loop with more storage operations than this in flight
// sleeps in the kernel instead of spinning. Those operations complete on
// kernel threads (a loop device's workers, io-wq) that need a CPU; on two
// vCPUs a spinning loop takes the one they would use, and with many in
// flight the wake-up is shared by a batch anyway. Measured with udm bench
// --raw on a loop device over /dev/shm (AMD EPYC, 2 vCPUs): at depth 32,
// 295-297k IOPS, p50 113-117µs, 3.3µs CPU per I/O spinning always; 331-340k,
// p50 95-98µs, 1.95µs with this limit at 2 (fio io_uring: 341-345k); at
// depth 1 unchanged (87-91k, p50 11µs; never spinning: 57k, p50 16µs).
const spinMaxStorage = 2

// spin polls, for up to Config.Spin, for work arriving: completions the
// kernel has ready for this task (IORING_SQ_TASKRUN in the shared ring: a
// memory read, no system call), posted functions, or the wake-up. It
// returns true if some arrived, after submitting what is queued.
//
// Why: on a VM, waking a thread whose vCPU halted costs tens of µs (an
// IPI and a VM exit), far more than the I/O itself. A loop that just did
// work will likely get more within microseconds (a client's next request
// at queue depth 1); polling instead of sleeping keeps the vCPU running,
// and the work reaches it without a wake-up. Measured with fio's nbd
// engine at depth 1 over a Unix socket, unpinned on 2 vCPUs: 15k IOPS,
// p50 65µs sleeping; 32-37k IOPS, p50 23µs spinning 30-60µs, for about
// the same server CPU per I/O (the wake-ups burned it before). A loop
// that found nothing sleeps; an idle loop doesn't spin at all.
//
// How long it polls, and whether at all, is spinPolicy's: the budget
// follows how soon polling finds work, and polling stops for a while when
// it finds none or the thread is kept from its CPU (see spinPolicy).
func (l *Loop) spin() bool {
	start := nanotime()
	budget := l.pol.allowance(start)
	if budget <= 0 {
		return false
	}
	if l.pol.sampleDue(start) {
		nivcsw, delay := l.schedCounters()
		l.pol.sample(start, nivcsw, delay)
		l.notePolicy()
		if budget = l.pol.allowance(start); budget <= 0 {
			return false
		}
	}
	if l.ring.Unsubmitted() > 0 {
		l.enter(0, nil)
		if l.ring.CQReady() {
			return true // found without polling: says nothing of polling
		}
	}
	end := start + budget
	for i := 0; ; i++ {
		if l.ring.TaskrunPending() || l.ring.CQReady() || l.hasWork() {
			now := nanotime()
			l.pol.spun(now, now-start, true)
			l.spinHits.Store(l.spinHits.Load() + 1)
			l.enter(0, nil) // run the task work: post the CQEs
			return true
		}
		if i&63 == 63 {
			if now := nanotime(); now > end {
				l.pol.spun(now, now-start, false)
				l.spinMisses.Store(l.spinMisses.Load() + 1)
				l.notePolicy()
				return false
			}
		}
	}
}

// notePolicy publishes the policy's counters for Stats.
func (l *Loop) notePolicy() {
	l.spinRests.Store(l.pol.rests)
	l.spinContended.Store(l.pol.contentions)
}

// schedCounters returns the loop thread's involuntary context switches
// (getrusage RUSAGE_THREAD) and its run delay in ns (the time it was
// runnable and waiting for a CPU: schedstat's second field); 0 for what
// can't be read. Two system calls; the loop calls it once per spinWindow
// at most.
func (l *Loop) schedCounters() (nivcsw, runDelay int64) {
	if unix.Getrusage(unix.RUSAGE_THREAD, &l.rusage) == nil {
		nivcsw = l.rusage.Nivcsw
	}
	if l.schedFd >= 0 {
		if n, err := unix.Pread(l.schedFd, l.schedBuf[:], 0); err == nil {
			runDelay = schedstatDelay(l.schedBuf[:n])
		}
	}
	return nivcsw, runDelay
}

// schedstatDelay parses the second field of /proc/.../schedstat
// ("run_ns delay_ns timeslices"); 0 if it has none.
func schedstatDelay(b []byte) int64 {
	i := 0
	for i < len(b) && b[i] != ' ' {
		i++
	}
	i++
	var v int64
	digits := false
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		v = v*10 + int64(b[i]-'0')
		digits = true
	}
	if !digits {
		return 0
	}
	return v
}

// DefaultSlice is Config.Slice's default: the time slice a loop's thread
// asks of the fair scheduler, shorter than the kernel's default (3ms on
// two CPUs). A loop's thread mostly sleeps and runs for microseconds
// when woken; with a short slice its deadline (EEVDF) comes early, so a
// wake-up preempts a CPU-bound neighbour instead of queuing behind the
// rest of the neighbour's slice. Its share of the CPU is unchanged (the
// slice sets latency, not weight), so it can't starve anyone: a busy loop
// is only switched out more often.
const DefaultSlice = 200 * time.Microsecond

// DefaultNice is Config.Nice's default. With the CPUs shared (CPU-bound
// neighbours, the clients themselves), one loop thread serves what a
// peer such as nbdkit serves with a thread per request, and at the same
// weight as each of those neighbours it waits behind them: fio's nbd
// engine at depth 1 beside two CPU hogs got about half nbdkit's IOPS.
// A fair-class weight is a share, not a priority: at nice -10 (weight
// 9548 against 1024) a loop thread that never slept would still leave a
// nice-0 neighbour on its CPU about a tenth of it, and the spin policy
// stops polling when the CPU is contended, so what the weight buys is
// the loop running its I/O soon after it wakes. No realtime class: a
// polling thread there could starve the machine.
const DefaultNice = -10

// NiceKeep as Config.Nice leaves the loop's thread at the process's nice.
const NiceKeep = 20

// schedSetup, on the loop's thread: ask for Config.Slice and Config.Nice,
// and open the thread's schedstat for spinPolicy. None is needed: an
// older kernel keeps its slice, a thread without CAP_SYS_NICE its nice,
// and without schedstat the policy sees preemptions only.
func (l *Loop) schedSetup() {
	if attr, err := unix.SchedGetAttr(0, 0); err == nil && attr.Policy == unix.SCHED_NORMAL {
		var slice uint64 // 0: the kernel's
		if l.cfg.Slice > 0 {
			slice = uint64(l.cfg.Slice)
		}
		nice := attr.Nice
		if l.cfg.Nice >= -20 && l.cfg.Nice < 20 && int32(l.cfg.Nice) < nice {
			nice = int32(l.cfg.Nice)
		}
		if slice != 0 || nice != attr.Nice {
			kept := attr.Nice
			// Threads the runtime starts from this one keep the
			// kernel's slice and a nice of at least 0.
			attr.Flags = unix.SCHED_FLAG_RESET_ON_FORK
			attr.Runtime = slice
			attr.Nice = nice
			if unix.SchedSetAttr(0, attr, 0) != nil && nice != kept {
				// No CAP_SYS_NICE: the slice alone.
				attr.Nice = kept
				_ = unix.SchedSetAttr(0, attr, 0)
			}
		}
	}
	if fd, err := unix.Open("/proc/thread-self/schedstat", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		l.schedFd = fd
	}
}

// batchWait is how many completions the loop waits for when it sleeps:
// one, unless many storage operations are in flight. Waking for every
// completion costs the completing side (an io-wq worker, a loop device's
// worker) a wake-up each time, and on two cores that side is the
// bottleneck: waiting for inflight/BatchDiv completions, bounded by
// BatchWait, measured +15-25% IOPS at depth 32 on tmpfs and a lower p50.
// Socket receives never count, so an idle connection can't delay a lone
// I/O.
func (l *Loop) batchWait() uint32 {
	if l.cfg.BatchDiv <= 0 {
		return 1
	}
	return uint32(max(1, l.ioInflight/l.cfg.BatchDiv))
}

// enter submits what's queued and optionally waits; it handles transient
// errors itself.
func (l *Loop) enter(wait uint32, ts *Timespec) { l.enterWait(wait, ts, 0) }

func (l *Loop) enterWait(wait uint32, ts *Timespec, minWaitUsec uint32) {
	l.enters.Store(l.enters.Load() + 1)
	pending := l.ring.Unsubmitted()
	n, err := l.ring.EnterMinWait(wait, ts, minWaitUsec)
	if n > 0 {
		l.submitted.Store(l.submitted.Load() + uint64(n))
	}
	switch {
	case err == nil, err == unix.EINTR, err == unix.ETIME:
	case err == unix.EAGAIN, err == unix.EBUSY:
		// The kernel is short of resources or the CQ is overflowing:
		// completions will be reaped on the next turn and the SQEs still
		// in the ring are retried then.
	default:
		panic(fmt.Sprintf("uring: io_uring_enter(%d pending, wait %d): %v", pending, wait, err))
	}
}

func (l *Loop) reap() int {
	n := 0
	for {
		first, second := l.ring.Peek()
		if len(first) == 0 {
			break
		}
		for _, part := range [2][]CQE{first, second} {
			for i := range part {
				c := part[i]
				l.ring.Advance(1)
				l.dispatch(&c)
				n++
			}
		}
	}
	if n > 0 {
		l.completed.Store(l.completed.Load() + uint64(n))
	}
	return n
}

func (l *Loop) dispatch(c *CQE) {
	switch c.UserData {
	case udWake:
		l.wakeArm = false
		if !l.closing {
			l.armWake()
		}
		return
	case udIgnore, udCancel:
		return
	case udSweep:
		l.sweepArmed = false
		l.sweep()
		return
	}
	idx := int32(uint32(c.UserData))
	gen := uint32(c.UserData >> 32)
	if idx < 0 || int(idx) >= len(l.slots) || l.slots[idx].gen != gen {
		panic(fmt.Sprintf("uring: completion for unknown operation %#x (res %d)", c.UserData, c.Res))
	}
	s := &l.slots[idx]
	h, tag, flags := s.h, s.tag, s.flags
	if c.Flags&CQEFMore == 0 {
		if flags&slotStorage != 0 {
			l.ioInflight--
		}
		if flags&slotExpires != 0 {
			l.expiring--
		}
		l.freeSlotAt(idx)
	}
	res := c.Res
	l.now = 0
	if flags&slotDeadline != 0 && flags&slotCancelled == 0 && res == -int32(unix.ECANCELED) {
		res = -int32(unix.ETIMEDOUT)
	}
	if flags&slotExpired != 0 && (res == -int32(unix.ECANCELED) || res == -int32(unix.EINTR)) {
		res = -int32(unix.ETIMEDOUT)
	}
	h.Complete(tag, res, c.Flags)
}

func (l *Loop) growSlots(n int) {
	old := len(l.slots)
	if n <= old {
		return
	}
	ns := make([]slot, n)
	copy(ns, l.slots)
	l.slots = ns
	for i := n - 1; i >= old; i-- {
		l.slots[i].gen = 1
		l.slots[i].next = l.freeSlot
		l.freeSlot = int32(i)
	}
}

func (l *Loop) allocSlot(h Handler, tag uint64, flags uint8) (int32, uint64) {
	if l.freeSlot < 0 {
		l.growSlots(2 * len(l.slots))
	}
	idx := l.freeSlot
	s := &l.slots[idx]
	l.freeSlot = s.next
	s.h, s.tag, s.flags = h, tag, flags
	l.inflight++
	return idx, uint64(s.gen)<<32 | uint64(uint32(idx))
}

func (l *Loop) freeSlotAt(idx int32) {
	s := &l.slots[idx]
	s.h = nil
	s.gen++
	if s.gen == 0 {
		s.gen = 1
	}
	s.next = l.freeSlot
	l.freeSlot = idx
	l.inflight--
}

// sqe returns a slot in the SQ, flushing to the kernel when the SQ is full.
// It returns nil only when the kernel won't take more right now.
func (l *Loop) sqe() *SQE {
	if l.refuseSQ > 0 {
		l.refuseSQ--
		return nil
	}
	if len(l.backlog) == 0 {
		if s := l.ring.NextSQE(); s != nil {
			return s
		}
		l.enter(0, nil)
		if s := l.ring.NextSQE(); s != nil {
			return s
		}
	}
	return nil
}

// push places a fully prepared SQE (user_data set) in the SQ or backlog.
func (l *Loop) push(e *SQE) {
	if s := l.sqe(); s != nil {
		*s = *e
		return
	}
	l.toBacklog(*e)
}

// toBacklog queues SQEs behind those already waiting for SQ space.
func (l *Loop) toBacklog(es ...SQE) {
	l.backlog = append(l.backlog, es...)
	if n := uint64(len(l.backlog)); n > l.backlogHigh.Load() {
		l.backlogHigh.Store(n)
	}
}

// pushChain places SQEs that must reach the kernel in one submission
// (a linked chain) contiguously.
func (l *Loop) pushChain(es []SQE) {
	if l.refuseSQ > 0 {
		l.refuseSQ--
		l.toBacklog(es...)
		return
	}
	if len(l.backlog) == 0 && l.ring.SQSpace() < uint32(len(es)) {
		l.enter(0, nil)
	}
	if len(l.backlog) == 0 && l.ring.SQSpace() >= uint32(len(es)) {
		for i := range es {
			*l.ring.NextSQE() = es[i]
		}
		return
	}
	l.toBacklog(es...)
}

func (l *Loop) flushBacklog() {
	for len(l.backlog) > 0 {
		n := 0
		for n < len(l.backlog) {
			// Never split a link chain across submissions.
			k := n
			for k < len(l.backlog) && l.backlog[k].Flags&(SQEIOLink|SQEIOHardlink) != 0 {
				k++
			}
			k++ // the chain's last SQE
			if k > len(l.backlog) {
				k = len(l.backlog)
			}
			if l.ring.SQSpace() < uint32(k-n) {
				break
			}
			for i := n; i < k; i++ {
				*l.ring.NextSQE() = l.backlog[i]
			}
			n = k
		}
		l.backlog = l.backlog[:copy(l.backlog, l.backlog[n:])]
		if len(l.backlog) == 0 {
			return
		}
		before := l.ring.Unsubmitted()
		l.enter(0, nil)
		if l.ring.Unsubmitted() == before && before > 0 {
			return // the kernel is refusing; try again after reaping
		}
	}
}

func (l *Loop) check() error {
	if l.closing {
		return ErrClosed
	}
	return nil
}

// Submit queues the prepared SQE; h.Complete(tag, ...) runs when it
// completes. The SQE is copied; buffers it points to must stay valid until
// completion. The SQE's UserData is overwritten.
func (l *Loop) Submit(e *SQE, h Handler, tag uint64) (OpID, error) {
	return l.submit(e, h, tag, true)
}

// SubmitWaiting is Submit for a read that waits for an outside event
// (a request from a kernel on /dev/fuse) rather than for storage: like a
// socket receive, it counts neither toward the completions a sleeping loop
// waits for (batchWait) nor toward the storage operations that stop it
// spinning. Counted as storage, a FUSE queue's idle reads made an idle
// loop wake every BatchWait and never spin.
func (l *Loop) SubmitWaiting(e *SQE, h Handler, tag uint64) (OpID, error) {
	return l.submit(e, h, tag, false)
}

// submit is Submit; storage: count e as a storage operation if its
// opcode is one.
func (l *Loop) submit(e *SQE, h Handler, tag uint64, storage bool) (OpID, error) {
	if err := l.check(); err != nil {
		return 0, err
	}
	var flags uint8
	if storage {
		flags = l.storageFlag(e.Opcode)
	}
	_, ud := l.allocSlot(h, tag, flags)
	e.UserData = ud
	l.push(e)
	return OpID(ud), nil
}

func (l *Loop) storageFlag(op uint8) uint8 {
	if isStorage(op) {
		l.ioInflight++
		return slotStorage
	}
	return 0
}

// SubmitDeadline is Submit with a per-operation deadline: a LINK_TIMEOUT
// is linked behind the operation, and if d passes first the operation is
// cancelled and completes with -ETIMEDOUT.
func (l *Loop) SubmitDeadline(e *SQE, d time.Duration, h Handler, tag uint64) (OpID, error) {
	if d <= 0 {
		return l.Submit(e, h, tag)
	}
	if err := l.check(); err != nil {
		return 0, err
	}
	idx, ud := l.allocSlot(h, tag, slotDeadline|l.storageFlag(e.Opcode))
	s := &l.slots[idx]
	s.ts = Timespec{Sec: int64(d / time.Second), Nsec: int64(d % time.Second)}
	e.UserData = ud
	e.Flags |= SQEIOLink
	var chain [2]SQE
	chain[0] = *e
	chain[1].PrepLinkTimeout(&s.ts, 0)
	chain[1].UserData = udIgnore
	l.pushChain(chain[:])
	return OpID(ud), nil
}

// SweepInterval is how often a loop looks for operations submitted with
// SubmitTimed that are past their deadline.
const SweepInterval = 10 * time.Millisecond

// SubmitTimed is Submit with a deadline enforced by the loop instead of a
// linked timeout: the operation's expiry is noted in its slot, and while
// any such operation is in flight one internal timer fires every
// SweepInterval and cancels those overdue (they complete with
// -ETIMEDOUT). It costs a clock read per operation where SubmitDeadline
// costs a second SQE and CQE and a kernel timer; the deadline is honoured
// within SweepInterval. Meant for deadlines of hundreds of milliseconds
// or more, such as multipath's per-path I/O deadline.
func (l *Loop) SubmitTimed(e *SQE, d time.Duration, h Handler, tag uint64) (OpID, error) {
	if d <= 0 {
		return l.Submit(e, h, tag)
	}
	if err := l.check(); err != nil {
		return 0, err
	}
	idx, ud := l.allocSlot(h, tag, slotExpires|l.storageFlag(e.Opcode))
	l.slots[idx].expire = nanotime() + int64(d)
	l.expiring++
	e.UserData = ud
	l.push(e)
	if !l.sweepArmed {
		l.armSweep()
	}
	return OpID(ud), nil
}

func (l *Loop) armSweep() {
	l.sweepTS = Timespec{Nsec: int64(SweepInterval)}
	var e SQE
	e.PrepTimeout(&l.sweepTS, 0, 0)
	e.UserData = udSweep
	l.sweepArmed = true
	l.push(&e)
}

// sweep cancels SubmitTimed operations past their deadline.
func (l *Loop) sweep() {
	if l.expiring == 0 || l.closing {
		return
	}
	now := nanotime()
	for i := range l.slots {
		s := &l.slots[i]
		if s.h == nil || s.flags&(slotExpires|slotExpired) != slotExpires || now < s.expire {
			continue
		}
		s.flags |= slotExpired
		var e SQE
		e.PrepCancel(uint64(s.gen)<<32|uint64(uint32(i)), 0)
		e.UserData = udCancel
		l.push(&e)
	}
	l.armSweep()
}

// Linked is one operation of a chain for SubmitChain. A nil H means the
// operation's completion is ignored.
type Linked struct {
	SQE SQE
	H   Handler
	Tag uint64
}

// SubmitChain submits ops as one IOSQE_IO_LINK chain: each starts after the
// previous one succeeded; a failure cancels the rest (-ECANCELED).
func (l *Loop) SubmitChain(ops []Linked) error {
	if err := l.check(); err != nil {
		return err
	}
	for i := range ops {
		if ops[i].H != nil {
			_, ops[i].SQE.UserData = l.allocSlot(ops[i].H, ops[i].Tag, l.storageFlag(ops[i].SQE.Opcode))
		} else {
			ops[i].SQE.UserData = udIgnore
		}
		if i < len(ops)-1 {
			ops[i].SQE.Flags |= SQEIOLink
		}
	}
	if len(ops) == 1 {
		l.push(&ops[0].SQE)
		return nil
	}
	es := make([]SQE, len(ops))
	for i := range ops {
		es[i] = ops[i].SQE
	}
	l.pushChain(es)
	return nil
}

// Timeout completes h after d with res -ETIME (or -ECANCELED if cancelled).
func (l *Loop) Timeout(d time.Duration, h Handler, tag uint64) (OpID, error) {
	if err := l.check(); err != nil {
		return 0, err
	}
	idx, ud := l.allocSlot(h, tag, 0)
	s := &l.slots[idx]
	s.ts = Timespec{Sec: int64(d / time.Second), Nsec: int64(d % time.Second)}
	var e SQE
	e.PrepTimeout(&s.ts, 0, 0)
	e.UserData = ud
	l.push(&e)
	return OpID(ud), nil
}

// Cancel asks the kernel to cancel the operation id; the operation still
// completes through its handler (usually with -ECANCELED). Cancelling an
// operation that already finished does nothing.
func (l *Loop) Cancel(id OpID) {
	idx := int32(uint32(id))
	if idx >= 0 && int(idx) < len(l.slots) && uint64(l.slots[idx].gen) == uint64(id)>>32 {
		l.slots[idx].flags |= slotCancelled
	} else {
		return
	}
	var e SQE
	e.PrepCancel(uint64(id), 0)
	e.UserData = udCancel
	l.push(&e)
}

func (l *Loop) cancelAll() {
	if l.inflight == 0 {
		return
	}
	var e SQE
	e.PrepCancel(0, asyncCancelAny)
	e.UserData = udCancel
	l.push(&e)
}

func (l *Loop) armWake() {
	var e SQE
	e.PrepRead(int32(l.wakeFd), l.wakeBuf[:], 0)
	e.UserData = udWake
	l.wakeArm = true
	l.push(&e)
}

func (l *Loop) startClose() {
	l.closing = true
	for i := range l.slots {
		if l.slots[i].h != nil {
			l.slots[i].flags |= slotCancelled
		}
	}
	l.cancelAll()
	// Cancel the wake read too (cancel-any covers it, but make sure).
	var e SQE
	e.PrepCancel(udWake, 0)
	e.UserData = udCancel
	l.push(&e)
}

func (l *Loop) runPosted() bool {
	for i := 0; i < 1024; i++ {
		n := l.posted.pop()
		if n == nil {
			return i > 0
		}
		l.postedN.Store(l.postedN.Load() + 1)
		fn := n.fn
		n.fn = nil
		l.now = 0
		fn()
	}
	return true
}

// finishPosts runs, after the loop ended, every function posted before
// Post started refusing; they see a closed loop.
func (l *Loop) finishPosts() {
	l.closing = true
	l.closed.Store(true)
	for l.posting.Load() != 0 {
		runtime.Gosched()
	}
	for {
		n := l.posted.pop()
		if n == nil {
			if l.posted.empty() {
				return
			}
			runtime.Gosched()
			continue
		}
		l.now = 0
		n.fn()
		l.runFlush()
	}
}

// Post runs fn on the loop. It may be called from any goroutine; it never
// blocks, and wakes the loop only if it is asleep. It returns ErrClosed if
// the loop is closed (fn then never runs).
func (l *Loop) Post(fn func()) error {
	l.posting.Add(1)
	if l.closed.Load() {
		l.posting.Add(-1)
		return ErrClosed
	}
	l.posted.push(&qnode{fn: fn})
	l.posting.Add(-1)
	l.wake()
	return nil
}

func (l *Loop) wake() {
	if l.state.Load() == stateSleeping && l.state.CompareAndSwap(stateSleeping, stateWoken) {
		l.wakes.Add(1)
		unix.Write(l.wakeFd, l.wakeOne[:])
	}
}

// Call runs fn on the loop and waits for it to return. On any loop's
// thread (a handler, a posted function, a Flusher) it does not wait: it
// returns ErrCallOnLoop, naming the caller, and fn never runs. Work on a
// loop that needs another loop's answer posts to it and is posted back.
func (l *Loop) Call(fn func()) error {
	if err := l.refuseOnLoop("Call"); err != nil {
		return err
	}
	done := make(chan struct{})
	if err := l.Post(func() { fn(); close(done) }); err != nil {
		return err
	}
	<-done
	return nil
}

// Close cancels in-flight operations, waits until every one of them has
// completed through its handler, and stops the loop. It is idempotent.
// On any loop's thread it does nothing and returns ErrCallOnLoop, naming
// the caller: a loop can't wait for itself, nor stop for another.
func (l *Loop) Close() error {
	if err := l.refuseOnLoop("Close"); err != nil {
		return err
	}
	l.closeOnce.Do(func() {
		l.closeReq.Store(true)
		l.wake()
	})
	<-l.done
	return nil
}

// Done is closed once the loop has stopped.
func (l *Loop) Done() <-chan struct{} { return l.done }

// ID returns the loop's configured ID.
func (l *Loop) ID() int { return l.id }

// Now is the monotonic clock (runtime nanotime, the clock time.Since
// uses), read at most once per completion handler or posted function: the
// first call in a callback reads it and the others get the same value.
// It stamps I/O for latency statistics, where several layers time the same
// I/O at the same moment (a dm device, the file under it), and a clock
// read costs 40-50ns on these VMs, about 1.4% of the CPU per I/O each at
// depth 32 (perf record of udm bench through linear). The Linux block
// layer caches its time per plug for the same reason. Readings in one
// callback differ from the true time by at most that callback's run
// time. On the loop only; use it as stamps, not as deadlines. Once the
// loop has closed it reads the clock every time, so that whoever ends an
// I/O a closed loop refused (any goroutine) can still call it.
func (l *Loop) Now() int64 {
	if l.closed.Load() {
		return nanotime()
	}
	if l.now == 0 {
		l.now = nanotime()
	}
	return l.now
}

// Renew reads the clock anew and makes that the callback's Now: for a
// callback that has just done work that takes time itself (a pread on
// the loop thread), so that what ends after it isn't stamped before it.
func (l *Loop) Renew() int64 {
	if l.closed.Load() {
		return nanotime()
	}
	l.now = nanotime()
	return l.now
}

// Arena returns the loop's registered buffer arena (on the loop only).
func (l *Loop) Arena() *Arena { return l.arena }

// Ring exposes the loop's ring (on the loop only).
func (l *Loop) Ring() *Ring { return l.ring }

// Inflight is the number of operations submitted and not yet completed.
func (l *Loop) Inflight() int { return l.inflight }

// OnLoop reports whether the caller runs on the loop's thread. It costs a
// system call; use it in assertions and the slow path.
func (l *Loop) OnLoop() bool { return unix.Gettid() == l.tid }

// Stats returns the loop's counters; safe from any goroutine.
func (l *Loop) Stats() Stats {
	return Stats{
		Submitted:     l.submitted.Load(),
		Completed:     l.completed.Load(),
		Enters:        l.enters.Load(),
		Wakes:         l.wakes.Load(),
		Posted:        l.postedN.Load(),
		BacklogHigh:   l.backlogHigh.Load(),
		SpinHits:      l.spinHits.Load(),
		SpinMisses:    l.spinMisses.Load(),
		SpinRests:     l.spinRests.Load(),
		SpinContended: l.spinContended.Load(),
	}
}

// RegisterFile installs fd in a free fixed-file slot and returns its index
// (use it as the SQE fd with SQEFixedFile).
func (l *Loop) RegisterFile(fd int) (int32, error) {
	if len(l.freeFile) == 0 {
		return -1, fmt.Errorf("uring: fixed-file table full (%d slots)", len(l.files))
	}
	idx := l.freeFile[len(l.freeFile)-1]
	if err := l.ring.UpdateFile(int(idx), fd); err != nil {
		return -1, fmt.Errorf("uring: register file: %w", err)
	}
	l.freeFile = l.freeFile[:len(l.freeFile)-1]
	l.files[idx] = true
	return idx, nil
}

// UnregisterFile empties fixed-file slot idx. Operations already submitted
// on it keep their reference and complete normally.
func (l *Loop) UnregisterFile(idx int32) error {
	if idx < 0 || int(idx) >= len(l.files) || !l.files[idx] {
		return fmt.Errorf("uring: fixed file %d not registered", idx)
	}
	if err := l.ring.UpdateFile(int(idx), -1); err != nil {
		return fmt.Errorf("uring: unregister file: %w", err)
	}
	l.files[idx] = false
	l.freeFile = append(l.freeFile, idx)
	return nil
}
