package dm_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

// ledger tracks every bio a test issues and checks that each ends exactly
// once.
type ledger struct {
	mu   sync.Mutex
	recs []*dmtest.Rec // guarded by mu
}

func (l *ledger) bio(op dm.Op, sector uint64, n int) *dmtest.Rec {
	r := dmtest.NewRec(op, sector, n)
	l.mu.Lock()
	l.recs = append(l.recs, r)
	l.mu.Unlock()
	return r
}

func (l *ledger) submit(d *dm.Device, op dm.Op, sector uint64, n int) *dmtest.Rec {
	r := l.bio(op, sector, n)
	d.Submit(&r.Bio)
	return r
}

func (l *ledger) all() []*dmtest.Rec {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*dmtest.Rec(nil), l.recs...)
}

// endedCount is how many issued bios have ended so far.
func (l *ledger) endedCount() int {
	n := 0
	for _, r := range l.all() {
		if r.Ended() {
			n++
		}
	}
	return n
}

// waitAll waits for every bio to end and checks each ended exactly once.
func (l *ledger) waitAll(t testing.TB) {
	t.Helper()
	for _, r := range l.all() {
		r.Wait(t)
	}
	l.checkOnce(t)
}

func (l *ledger) checkOnce(t testing.TB) {
	t.Helper()
	for i, r := range l.all() {
		if n := r.Ends(); n > 1 {
			t.Errorf("bio %d (%s@%d) ended %d times", i, r.Op, r.Sector, n)
		}
	}
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
	ctx   *dm.TargetContext
	dev   dm.BlockDevice
	label string
	log   *eventLog
	// preresumeErr, if set, fails PreResume.
	preresumeErr error
	// mapHook, if set, runs in Map.
	mapHook func(c *dm.Clone)
}

func recType(log *eventLog) dm.TargetType {
	return dm.TargetType{Name: "rec", New: func(ctx *dm.TargetContext, args []string) (dm.Target, error) {
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
	f := d.Flags()
	return fmt.Sprintf("noflush=%t block=%t suspended=%t pending=%d",
		f&dm.FlagNoflushSuspending != 0, f&dm.FlagBlockIO != 0, f&dm.FlagSuspended != 0, d.PendingSum())
}

func (r *recTarget) Map(c *dm.Clone) dm.MapResult {
	if r.mapHook != nil {
		r.mapHook(c)
	}
	r.log.add("map %s %s@%d", r.label, c.Op, c.Sector)
	c.Dev = r.dev
	return dm.MapRemapped
}
func (r *recTarget) Status(dm.StatusType) string { return r.label }
func (r *recTarget) PreSuspend()                 { r.log.add("presuspend %s %s", r.label, r.state()) }
func (r *recTarget) PreSuspendUndo()             { r.log.add("presuspend_undo %s %s", r.label, r.state()) }
func (r *recTarget) PostSuspend()                { r.log.add("postsuspend %s %s", r.label, r.state()) }
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
	ctx *dm.TargetContext
	dev dm.BlockDevice

	mu            sync.Mutex // guards the following
	up            bool
	queueIfNoPath bool
	saved         bool
	held          []*dm.Clone
	// onPresuspend runs at the end of PreSuspend (tests cancel a
	// suspend's context from it).
	onPresuspend func()
}

func qpathType() dm.TargetType {
	return dm.TargetType{Name: "qpath", New: func(ctx *dm.TargetContext, args []string) (dm.Target, error) {
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

func (q *qpath) Map(c *dm.Clone) dm.MapResult {
	q.mu.Lock()
	if q.up {
		q.mu.Unlock()
		c.Dev = q.dev
		return dm.MapRemapped
	}
	if q.queueIfNoPath {
		q.held = append(q.held, c)
		q.mu.Unlock()
		return dm.MapSubmitted
	}
	q.mu.Unlock()
	if q.ctx.NoflushSuspending() {
		return dm.MapRequeue
	}
	return dm.MapKill
}

func (q *qpath) EndIO(c *dm.Clone, err error) (dm.EndIOResult, error) {
	if err == nil {
		return dm.EndIODone, nil
	}
	q.mu.Lock()
	q.up = false
	if q.queueIfNoPath {
		q.held = append(q.held, c)
		q.mu.Unlock()
		return dm.EndIOIncomplete, nil
	}
	q.mu.Unlock()
	return dm.EndIORequeue, nil
}

// remapHeld maps held clones again, as the kernel's process_queued_bios.
func (q *qpath) remapHeld() {
	q.mu.Lock()
	held := q.held
	q.held = nil
	q.mu.Unlock()
	for _, c := range held {
		switch q.Map(c) {
		case dm.MapRemapped:
			c.Dev.Submit(c)
		case dm.MapRequeue:
			c.Finish(dm.ErrRequeue)
		case dm.MapKill:
			c.Finish(dm.ErrIO)
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
		return "", dm.ErrBadMessage
	}
	var field *bool
	var on bool
	switch args[0] {
	case "fail_path", "reinstate_path":
		field, on = &q.up, args[0] == "reinstate_path"
	case "queue_if_no_path", "fail_if_no_path":
		field, on = &q.queueIfNoPath, args[0] == "queue_if_no_path"
	default:
		return "", dm.ErrBadMessage
	}
	q.mu.Lock()
	*field = on
	q.mu.Unlock()
	// A path back, or queueing off: what is held goes again.
	if field == &q.up && on || field == &q.queueIfNoPath && !on {
		q.remapHeld()
	}
	return "", nil
}

func (q *qpath) nheld() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.held)
}

func (q *qpath) Status(t dm.StatusType) string {
	q.mu.Lock()
	defer q.mu.Unlock()
	if t == dm.StatusInfo {
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
	dev dm.BlockDevice
	mu  sync.Mutex
	rnd uint64 // guarded by mu: xorshift state
	// per thousand
	mapRequeue, endRequeue uint64
}

func chaosType(seed uint64, mapRequeue, endRequeue uint64) dm.TargetType {
	return dm.TargetType{Name: "chaos", New: func(ctx *dm.TargetContext, args []string) (dm.Target, error) {
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

func (x *chaos) Map(c *dm.Clone) dm.MapResult {
	if x.roll() < x.mapRequeue {
		return dm.MapRequeue
	}
	c.Dev = x.dev
	return dm.MapRemapped
}

func (x *chaos) EndIO(c *dm.Clone, err error) (dm.EndIOResult, error) {
	if x.roll() < x.endRequeue {
		return dm.EndIORequeue, err
	}
	return dm.EndIODone, err
}

func (x *chaos) Status(dm.StatusType) string { return "" }

// testTargets is the default registry plus the test targets.
func testTargets(t testing.TB, log *eventLog) *dm.TargetRegistry {
	r := dm.DefaultTargets()
	for _, tt := range []dm.TargetType{recType(log), qpathType(), fnType()} {
		if err := r.Register(tt); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// newDev makes a standalone device over devs with the test targets and,
// if table is not empty, loads and resumes it.
func newDev(t testing.TB, log *eventLog, table string, devs ...dm.BlockDevice) *dm.Device {
	t.Helper()
	if log == nil {
		log = &eventLog{}
	}
	d := dm.NewDevice(dm.DeviceConfig{Name: "test", Log: zerolog.Nop(), Targets: testTargets(t, log), Open: dm.StaticOpener(devs...)})
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

// suspendBlocked starts a suspend of d and waits until it has set
// BLOCK_IO and is about to wait for the I/O in flight (running atBlocked
// there, if set); it returns the suspend's result to come.
func suspendBlocked(t testing.TB, d *dm.Device, ctx context.Context, noflush bool, atBlocked func()) <-chan error {
	t.Helper()
	blocked := make(chan struct{})
	d.SetHook(func(p dm.HookPoint) {
		if p == dm.HookBlocked {
			if atBlocked != nil {
				atBlocked()
			}
			close(blocked)
		}
	})
	done := make(chan error, 1)
	go func() { done <- d.Suspend(ctx, noflush) }()
	testutil.Wait(t, "the suspend to block I/O", blocked)
	d.SetHook(nil)
	return done
}

// liveTarget returns target i of d's live table.
func liveTarget[T dm.Target](t testing.TB, d *dm.Device, i int) T {
	t.Helper()
	ts := d.LiveTargets()
	if i >= len(ts) {
		t.Fatalf("no live target %d", i)
	}
	x, ok := ts[i].(T)
	if !ok {
		t.Fatalf("live target %d is %T", i, ts[i])
	}
	return x
}

func bg() context.Context { return context.Background() }

// mustSuspend suspends d (with noflush as asked) or fails the test.
func mustSuspend(t testing.TB, d *dm.Device, noflush bool) {
	t.Helper()
	if err := d.Suspend(bg(), noflush); err != nil {
		t.Fatal(err)
	}
}

// mustResume resumes d or fails the test.
func mustResume(t testing.TB, d *dm.Device) {
	t.Helper()
	if err := d.Resume(bg()); err != nil {
		t.Fatal(err)
	}
}

// lastCloseRemoves closes d, the last user of a device marked for
// deferred removal, waits for the removal and fails with msg unless d is
// removed.
func lastCloseRemoves(t testing.TB, d *dm.Device, msg string) {
	t.Helper()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitRemoval(bg()); err != nil {
		t.Fatal(err)
	}
	if !testutil.Closed(d.Removed()) {
		t.Fatal(msg)
	}
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
	dev   dm.BlockDevice
	preFn func() // runs in PreSuspend
	mapFn func(c *dm.Clone) dm.MapResult
	endFn func(c *dm.Clone, err error) (dm.EndIOResult, error)
}

func fnType() dm.TargetType {
	return dm.TargetType{Name: "fn", New: func(ctx *dm.TargetContext, args []string) (dm.Target, error) {
		dev, err := ctx.Devices.GetDevice(args[0], false)
		if err != nil {
			return nil, err
		}
		return &fnTarget{dev: dev}, nil
	}}
}

func (f *fnTarget) Map(c *dm.Clone) dm.MapResult {
	c.Dev = f.dev
	if f.mapFn != nil {
		return f.mapFn(c)
	}
	return dm.MapRemapped
}

func (f *fnTarget) EndIO(c *dm.Clone, err error) (dm.EndIOResult, error) {
	if f.endFn != nil {
		return f.endFn(c, err)
	}
	return dm.EndIODone, err
}

func (f *fnTarget) Status(dm.StatusType) string { return f.dev.Name() }

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
	got  []capIO     // guarded by mu
	held []*dm.Clone // guarded by mu
	hold bool        // guarded by mu
	err  error       // guarded by mu: the error to end with
}

type capIO struct {
	Dev    string
	Op     dm.Op
	Flags  dm.BioFlags
	Sector uint64
	Len    uint32
	Index  int
}

func newCapDev(name string, size int64) *capDev { return &capDev{name: name, size: size} }

func (c *capDev) Name() string   { return c.name }
func (c *capDev) Size() int64    { return c.size }
func (c *capDev) BlockSize() int { return dm.SectorSize }
func (c *capDev) ReadOnly() bool { return false }

func (c *capDev) Submit(cl *dm.Clone) {
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
func waitIdle(t testing.TB, d *dm.Device) {
	t.Helper()
	testutil.Eventually(t, "pending I/O to drain", func() bool { return d.Pending() == 0 })
}

// settledStats returns d's stats once its in-flight count is back to 0: a
// bio's end callback runs just before the core drops the count, so a
// waiter woken by the callback can read the stats a moment early.
func settledStats(t testing.TB, d *dm.Device) dm.Stats {
	t.Helper()
	testutil.Eventually(t, "the in-flight count to drop to 0", func() bool { return d.Stats().InFlight == 0 })
	return d.Stats()
}
