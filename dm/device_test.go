package dm_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

func wantEvents(t *testing.T, log *eventLog, want ...string) {
	t.Helper()
	got := log.take()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("events\n got %q\nwant %q", got, want)
	}
}

// Load fills the inactive slot without disturbing live I/O; Clear drops
// it; Resume swaps it in atomically, destroys the old table (releasing its
// devices) and bumps the event counter.
func TestTwoTableSlots(t *testing.T) {
	log := &eventLog{}
	a, b := newCapDev("a", MiB), newCapDev("b", MiB)
	closed := map[string]int{}
	open := func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		dev := map[string]dm.BlockDevice{"a": a, "b": b}[name]
		return dev, dm.CloserFunc(func() error { closed[name]++; return nil }), nil
	}
	reg := testTargets(t, log)
	d := dm.NewDevice(dm.DeviceConfig{Name: "slots", Targets: reg, Open: open})
	if err := d.Load("0 8 rec a old"); err != nil {
		t.Fatal(err)
	}
	mustResume(t, d)
	log.take()
	ev0 := d.Event()

	// A bio in flight on the old table while a new one is loaded.
	a.setHold(true)
	r := dmtest.NewRec(dm.OpWrite, 0, 512)
	d.Submit(&r.Bio)
	if err := d.Load("0 16 rec b new"); err != nil {
		t.Fatal(err)
	}
	if i := d.Info(); !i.Live || !i.Inactive || i.TablesPresent() != "LIVE & INACTIVE" || i.Suspended {
		t.Fatalf("after load: %+v", i)
	}
	if lines, _ := d.Table(true); !reflect.DeepEqual(lines, []string{"0 16 rec new"}) {
		t.Fatalf("inactive table %q", lines)
	}
	if lines, _ := d.Table(false); !reflect.DeepEqual(lines, []string{"0 8 rec old"}) {
		t.Fatalf("live table %q", lines)
	}
	if d.Size() != 8<<9 {
		t.Fatalf("size %d before the swap", d.Size())
	}
	// Live I/O still goes to the old table.
	r2 := dmtest.NewRec(dm.OpRead, 0, 512)
	d.Submit(&r2.Bio)
	a.release(nil)
	testutil.MustErrno(t, "in-flight write", r.Wait(t), 0)
	testutil.MustErrno(t, "read", r2.Wait(t), 0)
	wantEvents(t, log, "map old write@0", "ctr new", "map old read@0")

	d.Clear()
	if d.Info().Inactive {
		t.Fatal("Clear left the inactive table")
	}
	wantEvents(t, log, "dtr new")
	if closed["b"] != 1 {
		t.Fatalf("clear did not release b: %v", closed)
	}

	if err := d.Load("0 16 rec b new2"); err != nil {
		t.Fatal(err)
	}
	mustResume(t, d)
	wantEvents(t, log, "ctr new2",
		"presuspend old noflush=false block=false suspended=false pending=0",
		"postsuspend old noflush=false block=true suspended=false pending=0",
		"dtr old",
		"preresume new2 noflush=false block=true suspended=true pending=0",
		"resume new2 noflush=false block=true suspended=true pending=0")
	if closed["a"] != 1 || closed["b"] != 1 {
		t.Fatalf("devices closed %v; want a released by the swap", closed)
	}
	if i := d.Info(); i.TablesPresent() != "LIVE" || i.Suspended || d.Size() != 16<<9 {
		t.Fatalf("after the swap: %+v size %d", i, d.Size())
	}
	if d.Event() == ev0 {
		t.Fatal("a table swap did not bump the event counter")
	}
	r3 := dmtest.NewRec(dm.OpRead, 8, 512)
	d.Submit(&r3.Bio)
	testutil.MustErrno(t, "read on the new table", r3.Wait(t), 0)
	if got := b.take(); len(got) != 1 || got[0].Sector != 8 {
		t.Fatalf("b got %v", got)
	}
}

// The suspend and resume orders (flag, presuspend, block, drain,
// postsuspend; preresume, resume, re-issue), with the state each hook
// sees.
func TestSuspendResumeOrder(t *testing.T) {
	for _, noflush := range []bool{false, true} {
		name := map[bool]string{false: "flush", true: "noflush"}[noflush]
		t.Run(name, func(t *testing.T) {
			log := &eventLog{}
			a := dmtest.NewMemDevice("a", MiB)
			d := newDev(t, log, "0 8 rec a A\n8 8 rec a B", a)
			log.take()
			mustSuspend(t, d, noflush)
			nf := map[bool]string{false: "noflush=false", true: "noflush=true"}[noflush]
			wantEvents(t, log,
				"presuspend A "+nf+" block=false suspended=false pending=0",
				"presuspend B "+nf+" block=false suspended=false pending=0",
				"postsuspend A "+nf+" block=true suspended=false pending=0",
				"postsuspend B "+nf+" block=true suspended=false pending=0")
			if !d.Suspended() || d.NoflushSuspending() || d.Info().State() != "SUSPENDED" {
				t.Fatalf("after suspend: suspended %v noflush %v", d.Suspended(), d.NoflushSuspending())
			}
			// Suspending a suspended device is a no-op.
			mustSuspend(t, d, !noflush)
			wantEvents(t, log)

			// I/O waits on deferred while suspended.
			r := dmtest.NewRec(dm.OpWrite, 9, 512)
			d.Submit(&r.Bio)
			if r.Ended() || d.Stats().Deferred != 1 {
				t.Fatalf("bio not deferred: ended %v stats %+v", r.Ended(), d.Stats())
			}
			wantEvents(t, log)

			mustResume(t, d)
			testutil.MustErrno(t, "deferred bio", r.Wait(t), 0)
			wantEvents(t, log,
				"preresume A noflush=false block=true suspended=true pending=0",
				"preresume B noflush=false block=true suspended=true pending=0",
				"resume A noflush=false block=true suspended=true pending=0",
				"resume B noflush=false block=true suspended=true pending=0",
				"map B write@1")
			if d.Suspended() || d.Info().State() != "ACTIVE" {
				t.Fatal("still suspended")
			}
			// Resuming an active device without an inactive table does
			// nothing.
			mustResume(t, d)
			wantEvents(t, log)
		})
	}
}

// heldRead makes a device whose rec target (A) logs to log over a capDev
// that holds I/O, and sends it a read, held there.
func heldRead(t *testing.T) (*dm.Device, *capDev, *eventLog, *dmtest.Rec) {
	log := &eventLog{}
	a := newCapDev("a", MiB)
	d := newDev(t, log, "0 8 rec a A", a)
	a.setHold(true)
	r := dmtest.NewRec(dm.OpRead, 0, 512)
	d.Submit(&r.Bio)
	return d, a, log, r
}

// Suspend waits for in-flight I/O; presuspend sees it pending, and
// postsuspend runs only once it has drained.
func TestSuspendWaitsForPending(t *testing.T) {
	d, a, log, r := heldRead(t)
	log.take()
	done := suspendBlocked(t, d, bg(), false, nil)
	if got := log.take(); !reflect.DeepEqual(got, []string{"presuspend A noflush=false block=false suspended=false pending=1"}) {
		t.Fatalf("events %q", got)
	}
	if d.Suspended() {
		t.Fatal("suspended with I/O in flight")
	}
	a.release(nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testutil.MustErrno(t, "bio", r.Wait(t), 0)
	wantEvents(t, log, "postsuspend A noflush=false block=true suspended=false pending=0")
}

func TestResumeErrors(t *testing.T) {
	t.Run("no table", func(t *testing.T) {
		d := dm.NewDevice(dm.DeviceConfig{Name: "none"})
		err := d.Resume(bg())
		if !errors.Is(err, dm.ErrNoTable) || !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("resume without a table: %v", err)
		}
		if err := d.Suspend(bg(), false); err != nil {
			t.Fatalf("suspend without a table: %v", err)
		}
		if err := d.Resume(bg()); !errors.Is(err, dm.ErrNoTable) || !d.Suspended() {
			t.Fatalf("resume of a suspended device without a table: %v, suspended %v", err, d.Suspended())
		}
	})
	t.Run("zero size", func(t *testing.T) {
		d := dm.NewDevice(dm.DeviceConfig{Name: "zero"})
		if err := d.Load("# nothing\n"); err != nil {
			t.Fatal(err)
		}
		err := d.Resume(bg())
		if !errors.Is(err, dm.ErrZeroSize) || !errors.Is(err, syscall.EINVAL) {
			t.Fatalf("resume of a zero-size table: %v", err)
		}
		if i := d.Info(); !i.Suspended || !i.Live || i.Inactive {
			t.Fatalf("after a failed resume: %+v", i)
		}
	})
	t.Run("preresume error leaves it suspended", func(t *testing.T) {
		log := &eventLog{}
		a := dmtest.NewMemDevice("a", MiB)
		d := newDev(t, log, "0 8 rec a A\n8 8 rec a B", a)
		mustSuspend(t, d, false)
		r := dmtest.NewRec(dm.OpRead, 0, 512)
		d.Submit(&r.Bio)
		log.take()
		boom := errors.New("boom")
		liveTarget[*recTarget](t, d, 1).preresumeErr = boom
		if err := d.Resume(bg()); !errors.Is(err, boom) || !strings.Contains(err.Error(), "rec target at 8") {
			t.Fatalf("resume: %v", err)
		}
		wantEvents(t, log,
			"preresume A noflush=false block=true suspended=true pending=0",
			"preresume B noflush=false block=true suspended=true pending=0")
		if !d.Suspended() || r.Ended() || d.Stats().Deferred != 1 {
			t.Fatalf("after the failed resume: suspended %v, deferred bio ended %v", d.Suspended(), r.Ended())
		}
		liveTarget[*recTarget](t, d, 1).preresumeErr = nil
		mustResume(t, d)
		testutil.MustErrno(t, "deferred bio", r.Wait(t), 0)
	})
}

// A suspend whose context ends while it waits undoes itself: BLOCK_IO is
// cleared, deferred bios are re-issued, presuspend is undone, and the
// error says it was interrupted (wrapping ctx.Err()).
func TestSuspendInterrupted(t *testing.T) {
	d, a, log, inflight := heldRead(t)
	a.setHold(false) // only this one is held
	log.take()

	ctx, cancel := context.WithCancel(bg())
	var late *dmtest.Rec
	d.SetHook(func(p dm.HookPoint) {
		if p == dm.HookBlocked {
			// BLOCK_IO is set: this bio is deferred. Then give up.
			late = dmtest.NewRec(dm.OpWrite, 1, 512)
			d.Submit(&late.Bio)
			cancel()
		}
	})
	err := d.Suspend(ctx, false)
	d.SetHook(nil)
	if !errors.Is(err, dm.ErrInterrupted) || !errors.Is(err, context.Canceled) || !errors.Is(err, syscall.EINTR) {
		t.Fatalf("interrupted suspend returned %v", err)
	}
	if d.Suspended() || d.Flags()&(dm.FlagBlockIO|dm.FlagNoflushSuspending) != 0 {
		t.Fatalf("device state %b after an interrupted suspend", d.Flags())
	}
	testutil.MustErrno(t, "deferred bio re-issued", late.Wait(t), 0)
	wantEvents(t, log,
		"presuspend A noflush=false block=false suspended=false pending=1",
		"map A write@1",
		"presuspend_undo A noflush=false block=false suspended=false pending=1")
	// The in-flight bio is untouched and completes normally.
	if inflight.Ended() {
		t.Fatal("in-flight bio ended by the interrupt")
	}
	a.release(nil)
	testutil.MustErrno(t, "in-flight bio", inflight.Wait(t), 0)
	// New I/O flows.
	r := dmtest.NewRec(dm.OpRead, 2, 512)
	d.Submit(&r.Bio)
	testutil.MustErrno(t, "new bio", r.Wait(t), 0)
}

// A context that is already done fails the suspend right after
// presuspend (the flag-set failure path), and a context that ends while
// waiting for the suspend lock gives up without touching the device.
func TestSuspendContextEnds(t *testing.T) {
	log := &eventLog{}
	a := newCapDev("a", MiB)
	d := newDev(t, log, "0 8 rec a A", a)
	log.take()
	ctx, cancel := context.WithCancel(bg())
	cancel()
	if err := d.Suspend(ctx, true); !errors.Is(err, dm.ErrInterrupted) || !errors.Is(err, context.Canceled) {
		t.Fatalf("suspend with a done context: %v", err)
	}
	wantEvents(t, log,
		"presuspend A noflush=true block=false suspended=false pending=0",
		"presuspend_undo A noflush=false block=false suspended=false pending=0")
	if d.Flags()&(dm.FlagBlockIO|dm.FlagNoflushSuspending|dm.FlagSuspended) != 0 {
		t.Fatalf("flags %b", d.Flags())
	}

	// Hold the suspend lock with a suspend stuck on in-flight I/O.
	a.setHold(true)
	r := dmtest.NewRec(dm.OpRead, 0, 512)
	d.Submit(&r.Bio)
	first := suspendBlocked(t, d, bg(), false, nil)
	log.take()
	ctx2, cancel2 := context.WithCancel(bg())
	second := make(chan error, 1)
	go func() { second <- d.Resume(ctx2) }()
	cancel2()
	if err := <-second; !errors.Is(err, dm.ErrInterrupted) || !errors.Is(err, context.Canceled) {
		t.Fatalf("resume waiting for the lock: %v", err)
	}
	a.release(nil)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	wantEvents(t, log, "postsuspend A noflush=false block=true suspended=false pending=0")
}

// Deferred bios are re-issued in order: those with an Exec by posting to
// it (and mapped there), others from the resuming goroutine.
func TestDeferredReissue(t *testing.T) {
	log := &eventLog{}
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, log, "0 64 rec a A", a)
	loop := dmtest.NewLoop(t)
	var mu sync.Mutex
	onLoop := map[uint64]bool{}
	liveTarget[*recTarget](t, d, 0).mapHook = func(c *dm.Clone) {
		mu.Lock()
		onLoop[c.Sector] = loop.OnLoop()
		mu.Unlock()
	}
	mustSuspend(t, d, false)
	log.take()
	var l ledger
	for i := uint64(0); i < 8; i++ {
		r := l.bio(dm.OpWrite, i, 512)
		if i%2 == 1 {
			r.Exec = loop
		}
		d.Submit(&r.Bio)
	}
	if d.Stats().Deferred != 8 || l.endedCount() != 0 {
		t.Fatalf("deferred %d ended %d", d.Stats().Deferred, l.endedCount())
	}
	posted := loop.Posted()
	mustResume(t, d)
	l.waitAll(t)
	if n := loop.Posted() - posted; n != 4 {
		t.Fatalf("%d posts to the loop, want 4", n)
	}
	mu.Lock()
	defer mu.Unlock()
	for s := uint64(0); s < 8; s++ {
		if onLoop[s] != (s%2 == 1) {
			t.Errorf("bio %d mapped on the loop: %v", s, onLoop[s])
		}
	}
	// In order: the direct ones in order, the posted ones in order.
	var direct, posted2 []string
	for _, e := range log.take() {
		if !strings.HasPrefix(e, "map") {
			continue
		}
		var sec int
		_, _ = fmt.Sscanf(e, "map A write@%d", &sec)
		if sec%2 == 0 {
			direct = append(direct, e)
		} else {
			posted2 = append(posted2, e)
		}
	}
	if !reflect.DeepEqual(direct, []string{"map A write@0", "map A write@2", "map A write@4", "map A write@6"}) ||
		!reflect.DeepEqual(posted2, []string{"map A write@1", "map A write@3", "map A write@5", "map A write@7"}) {
		t.Fatalf("re-issue order: direct %q posted %q", direct, posted2)
	}
}

// A deferred bio whose executor is closed ends with EIO at resume.
func TestDeferredReissueClosedExec(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 8 linear a 0", a)
	loop := dmtest.NewLoop(t)
	mustSuspend(t, d, false)
	r := dmtest.NewRec(dm.OpRead, 0, 512)
	r.Exec = loop
	d.Submit(&r.Bio)
	loop.Close()
	mustResume(t, d)
	testutil.MustErrno(t, "bio of a closed loop", r.Wait(t), syscall.EIO)
}

// EndDeferred ends what a suspended device holds with EIO, each bio once
// (on its executor if it has one), and leaves the device suspended with
// its table: resuming it serves new I/O.
func TestEndDeferred(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 64 linear a 0", a)
	loop := dmtest.NewLoop(t)
	mustSuspend(t, d, false)
	var l ledger
	var held []*dmtest.Rec
	for i := uint64(0); i < 4; i++ {
		r := l.bio(dm.OpWrite, i, 512)
		if i%2 == 1 {
			r.Exec = loop
		}
		d.Submit(&r.Bio)
		held = append(held, r)
	}
	if d.Stats().Deferred != 4 || l.endedCount() != 0 {
		t.Fatalf("deferred %d ended %d", d.Stats().Deferred, l.endedCount())
	}
	posted := loop.Posted()
	if n := d.EndDeferred(); n != 4 {
		t.Fatalf("EndDeferred ended %d, want 4", n)
	}
	for i, r := range held {
		testutil.MustErrno(t, fmt.Sprintf("held write %d", i), r.Wait(t), syscall.EIO)
	}
	l.checkOnce(t)
	if n := loop.Posted() - posted; n != 2 {
		t.Fatalf("%d bios ended through the loop, want 2", n)
	}
	if s := d.Stats(); s.Deferred != 0 || !d.Suspended() {
		t.Fatalf("after EndDeferred: deferred %d, suspended %v", s.Deferred, d.Suspended())
	}
	if n := d.EndDeferred(); n != 0 {
		t.Fatalf("second EndDeferred ended %d", n)
	}
	mustResume(t, d)
	r := dmtest.NewRec(dm.OpRead, 0, 512)
	d.Submit(&r.Bio)
	testutil.MustErrno(t, "read after resume", r.Wait(t), 0)
}

// RemoveOrDefer says whether it removed the device or marked it; the
// last Close of a marked standalone device removes it on a goroutine of
// the device's, which WaitRemoval waits for.
func TestRemoveOrDeferStandalone(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 8 linear a 0", a)
	if err := d.Open(); err != nil {
		t.Fatal(err)
	}
	if marked, err := d.RemoveOrDefer(bg(), false); err != nil || !marked {
		t.Fatalf("open device: marked %v, %v", marked, err)
	}
	lastCloseRemoves(t, d, "not removed after the last close")
	if i := d.Info(); i.Live || i.DeferredRemove {
		t.Fatalf("after the deferred removal: %+v", i)
	}

	e := newDev(t, nil, "0 8 linear a 0", a)
	if marked, err := e.RemoveOrDefer(bg(), false); err != nil || marked {
		t.Fatalf("closed device: marked %v, %v", marked, err)
	}
	if !testutil.Closed(e.Removed()) {
		t.Fatal("not removed at once")
	}
}

// A deferred removal cancelled between the last Close and the removal's
// goroutine running leaves the device alone, as does one whose device
// was opened again meanwhile (it stays marked, and the next last Close
// removes it).
func TestDeferredRemovalRechecksTheMark(t *testing.T) {
	for _, tc := range []struct {
		name    string
		between func(t *testing.T, d *dm.Device)
		marked  bool
	}{
		{"cancelled", func(t *testing.T, d *dm.Device) {
			if err := d.CancelDeferredRemove(); err != nil {
				t.Fatal(err)
			}
		}, false},
		{"opened again", func(t *testing.T, d *dm.Device) {
			if err := d.Open(); err != nil {
				t.Fatal(err)
			}
		}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := dmtest.NewMemDevice("a", MiB)
			d := newDev(t, nil, "0 8 linear a 0", a)
			gate, reached := make(chan struct{}), make(chan struct{})
			d.SetHook(func(p dm.HookPoint) {
				if p == dm.HookDeferredRemoval {
					close(reached)
					<-gate
				}
			})
			if err := d.Open(); err != nil {
				t.Fatal(err)
			}
			if err := d.Remove(bg(), false, true); err != nil {
				t.Fatal(err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			<-reached
			tc.between(t, d)
			close(gate)
			if err := d.WaitRemoval(bg()); err != nil {
				t.Fatal(err)
			}
			if i := d.Info(); !i.Live || i.DeferredRemove != tc.marked {
				t.Fatalf("after the removal's goroutine: %+v", i)
			}
			if !tc.marked {
				return
			}
			d.SetHook(nil)
			lastCloseRemoves(t, d, "the next last close did not remove it")
		})
	}
}

func TestEvents(t *testing.T) {
	d := dm.NewDevice(dm.DeviceConfig{Name: "ev"})
	n := d.Event()
	// Already past: returns at once.
	if got, err := d.WaitEvent(bg(), n+7); err != nil || got != n {
		t.Fatalf("WaitEvent(past) = %d, %v", got, err)
	}
	done := make(chan uint32, 1)
	go func() {
		got, err := d.WaitEvent(bg(), n)
		if err != nil {
			t.Error(err)
		}
		done <- got
	}()
	ctx := &dm.TargetContext{Device: d}
	ctx.TriggerEvent()
	if got := <-done; got != n+1 {
		t.Fatalf("woke with %d, want %d", got, n+1)
	}
	c, cancel := context.WithCancel(bg())
	cancel()
	if _, err := d.WaitEvent(c, d.Event()); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitEvent with a canceled context: %v", err)
	}
	// The nil-safe shortcuts.
	var none *dm.TargetContext
	none.TriggerEvent()
	if none.NoflushSuspending() || none.Suspended() || none.ReadOnly() || (&dm.TargetContext{}).NoflushSuspending() {
		t.Fatal("shortcuts without a device")
	}
}

func TestInfoStatusMessage(t *testing.T) {
	log := &eventLog{}
	a := dmtest.NewMemDevice("a", MiB)
	d := dm.NewDevice(dm.DeviceConfig{Name: "vol", UUID: "UDM-1", Targets: testTargets(t, log), Open: dm.StaticOpener(a)})
	if got := d.Info().String(); got != "Name:              vol\nState:             ACTIVE\nTables present:    None\nOpen count:        0\nEvent number:      0\nUUID: UDM-1\n" {
		t.Fatalf("info without tables:\n%s", got)
	}
	if err := d.Load("0 8 rec a first\n8 8 linear a 16"); err != nil {
		t.Fatal(err)
	}
	if i := d.Info(); i.TablesPresent() != "INACTIVE" {
		t.Fatalf("tables %s", i.TablesPresent())
	}
	mustResume(t, d)
	if err := d.Open(); err != nil {
		t.Fatal(err)
	}
	want := "Name:              vol\nState:             ACTIVE\nTables present:    LIVE\nOpen count:        1\nEvent number:      1\nNumber of targets: 2\nUUID: UDM-1\n"
	if got := d.Info().String(); got != want {
		t.Fatalf("info:\n%s\nwant:\n%s", got, want)
	}
	if lines, err := d.Table(false); err != nil || !reflect.DeepEqual(lines, []string{"0 8 rec first", "8 8 linear a 16"}) {
		t.Fatalf("table %q %v", lines, err)
	}
	if lines, err := d.Status(); err != nil || !reflect.DeepEqual(lines, []string{"0 8 rec first", "8 8 linear"}) {
		t.Fatalf("status %q %v", lines, err)
	}
	if lines, _ := d.Table(true); len(lines) != 0 {
		t.Fatalf("inactive table %q", lines)
	}
	mustSuspend(t, d, false)
	if s := d.Info().String(); !strings.Contains(s, "State:             SUSPENDED\n") {
		t.Fatalf("suspended info:\n%s", s)
	}
	mustResume(t, d)

	for _, tc := range []struct {
		sector uint64
		args   []string
		reply  string
		err    error
	}{
		{0, []string{"hello", "world"}, "first:hello,world", nil},
		{7, []string{"x"}, "first:x", nil},
		{8, []string{"x"}, "", dm.ErrBadMessage},
		{16, []string{"x"}, "", dm.ErrBadMessage},
		{0, nil, "", dm.ErrBadMessage},
	} {
		reply, err := d.Message(bg(), tc.sector, tc.args)
		if reply != tc.reply || !errors.Is(err, tc.err) || (tc.err != nil && !errors.Is(err, syscall.EINVAL)) {
			t.Errorf("Message(%d, %q) = %q, %v; want %q, %v", tc.sector, tc.args, reply, err, tc.reply, tc.err)
		}
	}
	if _, err := dm.NewDevice(dm.DeviceConfig{}).Message(bg(), 0, []string{"x"}); !errors.Is(err, dm.ErrBadMessage) {
		t.Fatalf("message without a table: %v", err)
	}

	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); !errors.Is(err, dm.ErrNotOpen) {
		t.Fatalf("close of a closed device: %v", err)
	}
}

func TestStats(t *testing.T) {
	a := newCapDev("a", MiB)
	d := newDev(t, nil, "0 64 linear a 0", a)
	var l ledger
	l.submit(d, dm.OpRead, 0, 4096)
	l.submit(d, dm.OpWrite, 0, 1024)
	l.submit(d, dm.OpWrite, 2, 512)
	l.submit(d, dm.OpFlush, 0, 0)
	l.submit(d, dm.OpDiscard, 0, 4096)
	l.submit(d, dm.OpRead, 100, 512) // beyond the end
	l.waitAll(t)
	a.setHold(true)
	l.submit(d, dm.OpRead, 0, 512)
	s := d.Stats()
	want := dm.Stats{Reads: 2, Writes: 2, Flushes: 1, Discards: 1, ReadBytes: 4096 + 512, WriteBytes: 1536, Errors: 1, InFlight: 1}
	if s != want {
		t.Fatalf("stats\n got %+v\nwant %+v", s, want)
	}
	a.release(nil)
	l.waitAll(t)
	mustSuspend(t, d, false)
	l.submit(d, dm.OpRead, 0, 512)
	if s := d.Stats(); s.Deferred != 1 || !s.Suspended || s.InFlight != 0 {
		t.Fatalf("suspended stats %+v", s)
	}
	mustResume(t, d)
	a.setHold(false)
	a.release(nil)
	l.waitAll(t)
}
