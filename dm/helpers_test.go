package dm

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"udm/internal/testutil"

	"github.com/rs/zerolog"
)

// ioRec is a bio that records its ends.
type ioRec struct {
	Bio
	ends atomic.Int32
	err  error // written before done is closed
	done chan struct{}
	// onEnd, if set, runs inside BioEnd.
	onEnd func(err error)
}

func newRec(op Op, sector uint64, n int) *ioRec {
	r := &ioRec{done: make(chan struct{})}
	r.Op, r.Sector, r.Len, r.BufIndex = op, sector, uint32(n), -1
	if op.HasData() {
		r.Buf = make([]byte, n)
	}
	r.End = r
	return r
}

func (r *ioRec) BioEnd(b *Bio, err error) {
	if r.ends.Add(1) != 1 {
		// Ended twice: leave done closed; checkOnce reports it.
		return
	}
	r.err = err
	if r.onEnd != nil {
		r.onEnd(err)
	}
	close(r.done)
}

func (r *ioRec) ended() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

func (r *ioRec) wait(t testing.TB) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(testutil.Patience):
		t.Fatalf("bio %s@%d never ended", r.Op, r.Sector)
		return nil
	}
}

// ledger tracks every bio a test issues and checks that each ends exactly
// once.
type ledger struct {
	mu   sync.Mutex
	recs []*ioRec // guarded by mu
}

func (l *ledger) bio(op Op, sector uint64, n int) *ioRec {
	r := newRec(op, sector, n)
	l.mu.Lock()
	l.recs = append(l.recs, r)
	l.mu.Unlock()
	return r
}

func (l *ledger) submit(d *Device, op Op, sector uint64, n int) *ioRec {
	r := l.bio(op, sector, n)
	d.Submit(&r.Bio)
	return r
}

func (l *ledger) all() []*ioRec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*ioRec(nil), l.recs...)
}

// endedCount is how many issued bios have ended so far.
func (l *ledger) endedCount() int {
	n := 0
	for _, r := range l.all() {
		if r.ended() {
			n++
		}
	}
	return n
}

// waitAll waits for every bio to end and checks each ended exactly once.
func (l *ledger) waitAll(t testing.TB) {
	t.Helper()
	for _, r := range l.all() {
		r.wait(t)
	}
	l.checkOnce(t)
}

func (l *ledger) checkOnce(t testing.TB) {
	t.Helper()
	for i, r := range l.all() {
		if n := r.ends.Load(); n > 1 {
			t.Errorf("bio %d (%s@%d) ended %d times", i, r.Op, r.Sector, n)
		}
	}
}

// testLoop is an Executor: one goroutine running posted functions in
// order, like a uring.Loop.
type testLoop struct {
	mu     sync.Mutex
	q      []func() // guarded by mu
	closed bool     // guarded by mu
	wake   chan struct{}
	done   chan struct{}
	posted atomic.Int64
	gid    atomic.Uint64 // the loop goroutine's id
	id     int
}

var testLoopIDs atomic.Int32

// ID numbers the loop like uring.Loop's (devices shard their counters by
// it).
func (l *testLoop) ID() int { return l.id }

// curGID is the calling goroutine's id (tests only: which goroutine runs
// what).
func curGID() uint64 {
	var buf [64]byte
	s := string(buf[:runtime.Stack(buf[:], false)])
	s = strings.TrimPrefix(s, "goroutine ")
	id, _ := strconv.ParseUint(s[:strings.IndexByte(s, ' ')], 10, 64)
	return id
}

// onLoop reports whether the caller runs on the loop's goroutine.
func (l *testLoop) onLoop() bool { return curGID() == l.gid.Load() }

func newTestLoop(t testing.TB) *testLoop {
	l := &testLoop{wake: make(chan struct{}, 1), done: make(chan struct{}), id: int(testLoopIDs.Add(1))}
	go l.run()
	t.Cleanup(l.close)
	return l
}

func (l *testLoop) Post(fn func()) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("test loop closed")
	}
	l.q = append(l.q, fn)
	l.mu.Unlock()
	l.posted.Add(1)
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return nil
}

func (l *testLoop) run() {
	defer close(l.done)
	l.gid.Store(curGID())
	for {
		l.mu.Lock()
		q := l.q
		l.q = nil
		closed := l.closed
		l.mu.Unlock()
		for _, fn := range q {
			fn()
		}
		if closed && len(q) == 0 {
			return
		}
		if len(q) == 0 {
			<-l.wake
		}
	}
}

func (l *testLoop) close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	<-l.done
}

// eventLog records what test targets see, in order.
type eventLog struct {
	mu sync.Mutex
	ev []string // guarded by mu
}

func (e *eventLog) add(format string, args ...any) {
	e.mu.Lock()
	e.ev = append(e.ev, fmt.Sprintf(format, args...))
	e.mu.Unlock()
}

func (e *eventLog) take() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev := e.ev
	e.ev = nil
	return ev
}

// recTarget is linear onto a device and records its hooks, with the
// device state each hook sees: `rec <dev> <label>`.
type recTarget struct {
	ctx   *TargetContext
	dev   BlockDevice
	label string
	log   *eventLog
	// preresumeErr, if set, fails PreResume.
	preresumeErr error
	// mapHook, if set, runs in Map.
	mapHook func(c *Clone)
}

func recType(log *eventLog) TargetType {
	return TargetType{Name: "rec", New: func(ctx *TargetContext, args []string) (Target, error) {
		if len(args) != 2 {
			return nil, fmt.Errorf("want <dev> <label>")
		}
		dev, err := ctx.Devices.GetDevice(args[0], false)
		if err != nil {
			return nil, err
		}
		log.add("ctr %s", args[1])
		return &recTarget{ctx: ctx, dev: dev, label: args[1], log: log}, nil
	}}
}

func (r *recTarget) state() string {
	d := r.ctx.Device
	f := d.flags.Load()
	return fmt.Sprintf("noflush=%t block=%t suspended=%t pending=%d",
		f&flagNoflushSuspending != 0, f&flagBlockIO != 0, f&flagSuspended != 0, d.pendingSum())
}

func (r *recTarget) Map(c *Clone) MapResult {
	if r.mapHook != nil {
		r.mapHook(c)
	}
	r.log.add("map %s %s@%d", r.label, c.Op, c.Sector)
	c.Dev = r.dev
	return MapRemapped
}
func (r *recTarget) Status(StatusType) string { return r.label }
func (r *recTarget) PreSuspend()              { r.log.add("presuspend %s %s", r.label, r.state()) }
func (r *recTarget) PreSuspendUndo()          { r.log.add("presuspend_undo %s %s", r.label, r.state()) }
func (r *recTarget) PostSuspend()             { r.log.add("postsuspend %s %s", r.label, r.state()) }
func (r *recTarget) PreResume() error {
	r.log.add("preresume %s %s", r.label, r.state())
	return r.preresumeErr
}
func (r *recTarget) Resume()  { r.log.add("resume %s %s", r.label, r.state()) }
func (r *recTarget) Destroy() { r.log.add("dtr %s", r.label) }
func (r *recTarget) Message(args []string) (string, error) {
	return r.label + ":" + strings.Join(args, ","), nil
}

// qpath is a small multipath-like test target with one path:
// `qpath <dev> [queue_if_no_path]`. With its path up it remaps; with it
// down it holds bios if queue_if_no_path is set, else requeues them
// during a noflush suspend and kills them otherwise. A path error fails
// the path and holds or requeues the clone (the core turns a requeue
// outside a noflush suspend into EIO). Presuspend clears
// queue_if_no_path (saving it) and remaps what it holds; resume restores
// it. Like dm-mpath, it has no presuspend undo. Messages: fail_path,
// reinstate_path (re-issues held bios), queue_if_no_path,
// fail_if_no_path.
type qpath struct {
	ctx *TargetContext
	dev BlockDevice

	mu            sync.Mutex // guards the following
	up            bool
	queueIfNoPath bool
	saved         bool
	held          []*Clone
	// onPresuspend runs at the end of PreSuspend (tests cancel a
	// suspend's context from it).
	onPresuspend func()
}

func qpathType() TargetType {
	return TargetType{Name: "qpath", New: func(ctx *TargetContext, args []string) (Target, error) {
		if len(args) < 1 || len(args) > 2 || (len(args) == 2 && args[1] != "queue_if_no_path") {
			return nil, fmt.Errorf("want <dev> [queue_if_no_path]")
		}
		dev, err := ctx.Devices.GetDevice(args[0], false)
		if err != nil {
			return nil, err
		}
		q := len(args) == 2
		return &qpath{ctx: ctx, dev: dev, up: true, queueIfNoPath: q, saved: q}, nil
	}}
}

func (q *qpath) Map(c *Clone) MapResult {
	q.mu.Lock()
	if q.up {
		q.mu.Unlock()
		c.Dev = q.dev
		return MapRemapped
	}
	if q.queueIfNoPath {
		q.held = append(q.held, c)
		q.mu.Unlock()
		return MapSubmitted
	}
	q.mu.Unlock()
	if q.ctx.NoflushSuspending() {
		return MapRequeue
	}
	return MapKill
}

func (q *qpath) EndIO(c *Clone, err error) (EndIOResult, error) {
	if err == nil {
		return EndIODone, nil
	}
	q.mu.Lock()
	q.up = false
	if q.queueIfNoPath {
		q.held = append(q.held, c)
		q.mu.Unlock()
		return EndIOIncomplete, nil
	}
	q.mu.Unlock()
	return EndIORequeue, nil
}

// remapHeld maps held clones again, as the kernel's process_queued_bios.
func (q *qpath) remapHeld() {
	q.mu.Lock()
	held := q.held
	q.held = nil
	q.mu.Unlock()
	for _, c := range held {
		switch q.Map(c) {
		case MapRemapped:
			c.Dev.Submit(c)
		case MapRequeue:
			c.Finish(ErrRequeue)
		case MapKill:
			c.Finish(ErrIO)
		}
	}
}

func (q *qpath) PreSuspend() {
	q.mu.Lock()
	q.saved = q.queueIfNoPath
	q.queueIfNoPath = false
	hook := q.onPresuspend
	q.mu.Unlock()
	q.remapHeld()
	if hook != nil {
		hook()
	}
}

func (q *qpath) Resume() {
	q.mu.Lock()
	q.queueIfNoPath = q.saved
	q.mu.Unlock()
}

func (q *qpath) Message(args []string) (string, error) {
	if len(args) != 1 {
		return "", ErrBadMessage
	}
	switch args[0] {
	case "fail_path":
		q.mu.Lock()
		q.up = false
		q.mu.Unlock()
	case "reinstate_path":
		q.mu.Lock()
		q.up = true
		q.mu.Unlock()
		q.remapHeld()
	case "queue_if_no_path":
		q.mu.Lock()
		q.queueIfNoPath = true
		q.mu.Unlock()
	case "fail_if_no_path":
		q.mu.Lock()
		q.queueIfNoPath = false
		q.mu.Unlock()
		q.remapHeld()
	default:
		return "", ErrBadMessage
	}
	return "", nil
}

func (q *qpath) nheld() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.held)
}

func (q *qpath) Status(t StatusType) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	if t == StatusInfo {
		return fmt.Sprintf("up=%t queue=%t held=%d", q.up, q.queueIfNoPath, len(q.held))
	}
	s := q.dev.Name()
	if q.queueIfNoPath {
		s += " queue_if_no_path"
	}
	return s
}

// chaos is a test target that remaps to a device but requeues a share of
// its clones at random, from Map or from EndIO: `chaos <dev>`.
type chaos struct {
	dev BlockDevice
	mu  sync.Mutex
	rnd uint64 // guarded by mu: xorshift state
	// per thousand
	mapRequeue, endRequeue uint64
}

func chaosType(seed uint64, mapRequeue, endRequeue uint64) TargetType {
	return TargetType{Name: "chaos", New: func(ctx *TargetContext, args []string) (Target, error) {
		dev, err := ctx.Devices.GetDevice(args[0], false)
		if err != nil {
			return nil, err
		}
		return &chaos{dev: dev, rnd: seed | 1, mapRequeue: mapRequeue, endRequeue: endRequeue}, nil
	}}
}

func (x *chaos) roll() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.rnd ^= x.rnd << 13
	x.rnd ^= x.rnd >> 7
	x.rnd ^= x.rnd << 17
	return x.rnd % 1000
}

func (x *chaos) Map(c *Clone) MapResult {
	if x.roll() < x.mapRequeue {
		return MapRequeue
	}
	c.Dev = x.dev
	return MapRemapped
}

func (x *chaos) EndIO(c *Clone, err error) (EndIOResult, error) {
	if x.roll() < x.endRequeue {
		return EndIORequeue, err
	}
	return EndIODone, err
}

func (x *chaos) Status(StatusType) string { return "" }

// testTargets is the default registry plus the test targets.
func testTargets(t testing.TB, log *eventLog) *TargetRegistry {
	r := DefaultTargets()
	for _, tt := range []TargetType{recType(log), qpathType(), fnType()} {
		if err := r.Register(tt); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// newDev makes a standalone device over devs with the test targets and,
// if table is not empty, loads and resumes it.
func newDev(t testing.TB, log *eventLog, table string, devs ...BlockDevice) *Device {
	t.Helper()
	if log == nil {
		log = &eventLog{}
	}
	d := NewDevice(DeviceConfig{Name: "test", Log: zerolog.Nop(), Targets: testTargets(t, log), Open: StaticOpener(devs...)})
	if table != "" {
		if err := d.Load(table); err != nil {
			t.Fatal(err)
		}
		if err := d.Resume(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

// liveTarget returns target i of d's live table.
func liveTarget[T Target](t testing.TB, d *Device, i int) T {
	t.Helper()
	tab := d.live.Load()
	if tab == nil || i >= len(tab.targets) {
		t.Fatalf("no live target %d", i)
	}
	x, ok := tab.targets[i].target.(T)
	if !ok {
		t.Fatalf("live target %d is %T", i, tab.targets[i].target)
	}
	return x
}

func bg() context.Context { return context.Background() }

func errnoIs(err error, want syscall.Errno) bool {
	if want == 0 {
		return err == nil
	}
	e, ok := err.(syscall.Errno)
	return ok && e == want
}

func mustErrno(t testing.TB, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errnoIs(err, want) {
		t.Fatalf("%s: got %v (%T), want %v", what, err, err, errName(want))
	}
}

func errName(e syscall.Errno) string {
	if e == 0 {
		return "success"
	}
	return e.Error()
}

func fill(b []byte, v byte) []byte {
	for i := range b {
		b[i] = v
	}
	return b
}

const MiB = 1 << 20

// fnTarget is linear onto its device unless a test sets its functions
// (after the table is live): `fn <dev>`.
type fnTarget struct {
	dev   BlockDevice
	preFn func() // runs in PreSuspend
	mapFn func(c *Clone) MapResult
	endFn func(c *Clone, err error) (EndIOResult, error)
}

func fnType() TargetType {
	return TargetType{Name: "fn", New: func(ctx *TargetContext, args []string) (Target, error) {
		dev, err := ctx.Devices.GetDevice(args[0], false)
		if err != nil {
			return nil, err
		}
		return &fnTarget{dev: dev}, nil
	}}
}

func (f *fnTarget) Map(c *Clone) MapResult {
	c.Dev = f.dev
	if f.mapFn != nil {
		return f.mapFn(c)
	}
	return MapRemapped
}

func (f *fnTarget) EndIO(c *Clone, err error) (EndIOResult, error) {
	if f.endFn != nil {
		return f.endFn(c, err)
	}
	return EndIODone, err
}

func (f *fnTarget) Status(StatusType) string { return f.dev.Name() }

func (f *fnTarget) PreSuspend() {
	if f.preFn != nil {
		f.preFn()
	}
}

// capDev records the clones it gets and ends them at once (or holds them
// when hold is set).
type capDev struct {
	name string
	size int64
	mu   sync.Mutex
	got  []capIO  // guarded by mu
	held []*Clone // guarded by mu
	hold bool     // guarded by mu
	err  error    // guarded by mu: the error to end with
}

type capIO struct {
	Dev    string
	Op     Op
	Flags  BioFlags
	Sector uint64
	Len    uint32
	Index  int
}

func newCapDev(name string, size int64) *capDev { return &capDev{name: name, size: size} }

func (c *capDev) Name() string   { return c.name }
func (c *capDev) Size() int64    { return c.size }
func (c *capDev) BlockSize() int { return SectorSize }
func (c *capDev) ReadOnly() bool { return false }

func (c *capDev) Submit(cl *Clone) {
	c.mu.Lock()
	c.got = append(c.got, capIO{c.name, cl.Op, cl.Flags, cl.Sector, cl.Len, cl.Index})
	if c.hold {
		c.held = append(c.held, cl)
		c.mu.Unlock()
		return
	}
	err := c.err
	c.mu.Unlock()
	cl.End(err)
}

func (c *capDev) take() []capIO {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.got
	c.got = nil
	return g
}

func (c *capDev) setHold(on bool)  { c.mu.Lock(); c.hold = on; c.mu.Unlock() }
func (c *capDev) setErr(err error) { c.mu.Lock(); c.err = err; c.mu.Unlock() }

// release ends the held clones with err.
func (c *capDev) release(err error) int {
	c.mu.Lock()
	h := c.held
	c.held = nil
	c.mu.Unlock()
	for _, cl := range h {
		cl.End(err)
	}
	return len(h)
}

func (c *capDev) nheld() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held)
}

// waitIdle waits for d's pending count to reach zero: a bio's end runs
// just before the count drops, so a test that saw every bio end may still
// see it for an instant.
func waitIdle(t testing.TB, d *Device) {
	t.Helper()
	testutil.Eventually(t, "pending I/O to drain", func() bool { return d.Pending() == 0 })
}

// settledStats returns d's stats once its in-flight count is back to 0: a
// bio's end callback runs just before the core drops the count, so a
// waiter woken by the callback can read the stats a moment early.
func settledStats(t testing.TB, d *Device) Stats {
	t.Helper()
	testutil.Eventually(t, "the in-flight count to drop to 0", func() bool { return d.Stats().InFlight == 0 })
	return d.Stats()
}
