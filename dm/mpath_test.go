package dm_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

// Queueing, pushback and suspend in the core, with qpath standing in for
// multipath: I/O with and without a valid path and queue_if_no_path,
// queued I/O across noflush suspends, resumes and table loads, failed
// and interrupted suspends, and two devices at once.

type mpFixture struct {
	t    *testing.T
	path *dmtest.MemDevice
	d    *dm.Device
	q    *qpath
	l    ledger
}

func newMP(t *testing.T, queueIfNoPath bool) *mpFixture {
	f := &mpFixture{t: t, path: dmtest.NewMemDevice("p", 4*MiB)}
	table := "0 2048 qpath p"
	if queueIfNoPath {
		table += " queue_if_no_path"
	}
	f.d = newDev(t, nil, table, f.path, dmtest.NewMemDevice("spare", 4*MiB))
	f.q = liveTarget[*qpath](t, f.d, 0)
	t.Cleanup(func() { f.l.checkOnce(t) })
	return f
}

func (f *mpFixture) msg(args ...string) {
	f.t.Helper()
	if _, err := f.d.Message(bg(), 0, args); err != nil {
		f.t.Fatalf("message %q: %v", args, err)
	}
}

func (f *mpFixture) write(sector uint64, v byte) *dmtest.Rec {
	r := f.l.bio(dm.OpWrite, sector, 4096)
	fill(r.Buf, v)
	f.d.Submit(&r.Bio)
	return r
}

// queued submits a write while the path is down and checks the target
// holds it.
func (f *mpFixture) queued(sector uint64, v byte) *dmtest.Rec {
	f.t.Helper()
	f.msg("fail_path")
	r := f.write(sector, v)
	if r.Ended() {
		f.t.Fatalf("write ended (%v) instead of being queued", r.Err())
	}
	if n := f.q.nheld(); n != 1 {
		f.t.Fatalf("target holds %d bios, want 1", n)
	}
	return r
}

func (f *mpFixture) onDev(dev *dmtest.MemDevice, sector int64, v byte) bool {
	buf := make([]byte, 4096)
	dev.ReadAt(buf, sector<<9)
	return bytes.Equal(buf, fill(make([]byte, 4096), v))
}

func TestQueueIfNoPathHoldsAndFlushSuspendFails(t *testing.T) {
	t.Run("I/O succeeds with valid paths", func(t *testing.T) {
		f := newMP(t, true)
		testutil.MustErrno(t, "write", f.write(8, 0xa1).Wait(t), 0)
		if !f.onDev(f.path, 8, 0xa1) {
			t.Fatal("data not on the path")
		}
	})
	t.Run("fails with no valid path and no queue_if_no_path", func(t *testing.T) {
		f := newMP(t, false)
		f.msg("fail_path")
		testutil.MustErrno(t, "write", f.write(8, 1).Wait(t), syscall.EIO)
		if f.path.IOs() != 0 {
			t.Fatal("I/O reached the failed path")
		}
	})
	t.Run("is queued with no valid path and queue_if_no_path", func(t *testing.T) {
		f := newMP(t, true)
		r := f.queued(8, 1)
		if f.d.Pending() != 1 || r.Ended() {
			t.Fatalf("pending %d", f.d.Pending())
		}
		// Recovery runs it.
		f.msg("reinstate_path")
		testutil.MustErrno(t, "write", r.Wait(t), 0)
	})
	t.Run("queued I/O fails on a suspend without noflush", func(t *testing.T) {
		f := newMP(t, true)
		r := f.queued(8, 1)
		mustSuspend(t, f.d, false)
		testutil.MustErrno(t, "queued write", r.Wait(t), syscall.EIO)
		if s := f.d.Stats(); !s.Suspended || s.Deferred != 0 || s.Pushbacks != 0 || s.InFlight != 0 {
			t.Fatalf("stats %+v", s)
		}
	})
}

func TestNoflushSuspendPushesQueuedIOBack(t *testing.T) {
	// noflushSuspended: a write queued in the target, then a noflush
	// suspend pushes it back, and it does not return.
	noflushSuspended := func(t *testing.T) (*mpFixture, *dmtest.Rec) {
		f := newMP(t, true)
		r := f.queued(8, 0xb2)
		mustSuspend(t, f.d, true)
		if r.Ended() {
			t.Fatalf("pushed-back write returned: %v", r.Err())
		}
		if s := f.d.Stats(); s.Pushbacks != 1 || s.Deferred != 1 || s.Pushback != 0 || s.InFlight != 0 || !s.Suspended {
			t.Fatalf("after the noflush suspend: %+v", s)
		}
		if f.q.nheld() != 0 || f.d.NoflushSuspending() {
			t.Fatalf("target holds %d; noflush flag %v", f.q.nheld(), f.d.NoflushSuspending())
		}
		return f, r
	}
	t.Run("queued I/O is pushed back but does not return on a noflush suspend", func(t *testing.T) {
		noflushSuspended(t)
	})
	t.Run("is queued in the target again on a resume without recovery", func(t *testing.T) {
		f, r := noflushSuspended(t)
		mustResume(t, f.d)
		if r.Ended() || f.q.nheld() != 1 || f.d.Stats().Deferred != 0 {
			t.Fatalf("ended %v held %d", r.Ended(), f.q.nheld())
		}
		f.msg("reinstate_path")
		testutil.MustErrno(t, "write", r.Wait(t), 0)
	})
	t.Run("succeeds on resume after path recovery", func(t *testing.T) {
		f, r := noflushSuspended(t)
		f.msg("reinstate_path")
		if r.Ended() {
			t.Fatal("ran before resume")
		}
		mustResume(t, f.d)
		testutil.MustErrno(t, "write", r.Wait(t), 0)
		if !f.onDev(f.path, 8, 0xb2) {
			t.Fatal("data not on the path")
		}
	})
	t.Run("succeeds on resume after a table load", func(t *testing.T) {
		f, r := noflushSuspended(t)
		if err := f.d.Load("0 2048 linear spare 0"); err != nil {
			t.Fatal(err)
		}
		mustResume(t, f.d)
		testutil.MustErrno(t, "write", r.Wait(t), 0)
		spare := f.d.LiveTargets()[0].(*dm.Linear).Lower().(*dmtest.MemDevice)
		if !f.onDev(spare, 8, 0xb2) || f.path.IOs() != 0 {
			t.Fatal("data not on the new table's device")
		}
	})
	t.Run("queued I/O succeeds on a noflush resume after a table load", func(t *testing.T) {
		for _, how := range []string{"resume --noflush", "suspend --noflush; load; resume"} {
			t.Run(how, func(t *testing.T) {
				f := newMP(t, true)
				r := f.queued(8, 0xc3)
				if how != "resume --noflush" {
					mustSuspend(t, f.d, true)
				}
				if err := f.d.Load("0 2048 qpath spare queue_if_no_path"); err != nil {
					t.Fatal(err)
				}
				var err error
				if how == "resume --noflush" {
					err = f.d.ResumeNoflush(bg())
				} else {
					err = f.d.Resume(bg())
				}
				if err != nil {
					t.Fatal(err)
				}
				testutil.MustErrno(t, "write", r.Wait(t), 0)
				if f.d.Stats().Pushbacks != 1 {
					t.Fatal("the write was not pushed back")
				}
			})
		}
	})
	t.Run("pushed-back I/O is re-issued ahead of newer deferred I/O", func(t *testing.T) {
		path := newCapDev("p", 4*MiB)
		d := newDev(t, nil, "0 2048 qpath p", path)
		q := liveTarget[*qpath](t, d, 0)
		var l ledger
		defer l.checkOnce(t)
		path.setHold(true)
		x := l.submit(d, dm.OpWrite, 8, 512) // in flight on the path
		var newer *dmtest.Rec
		done := suspendBlocked(t, d, bg(), true, func() {
			newer = l.submit(d, dm.OpWrite, 100, 512) // deferred
		})
		path.take()
		path.release(syscall.EIO) // x: path error → requeue → pushback
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if x.Ended() || newer.Ended() || d.Stats().Deferred != 2 {
			t.Fatalf("stats %+v", d.Stats())
		}
		if _, err := d.Message(bg(), 0, []string{"reinstate_path"}); err != nil {
			t.Fatal(err)
		}
		path.setHold(false)
		mustResume(t, d)
		l.waitAll(t)
		got := path.take()
		if len(got) != 2 || got[0].Sector != 8 || got[1].Sector != 100 {
			t.Fatalf("re-issue order %v, want the pushed-back write (8) first", got)
		}
		_ = q
	})
}

func TestFailedOrInterruptedSuspendFlushesPushback(t *testing.T) {
	t.Run("a failure inside suspend after the flag is set clears it and flushes pushback", func(t *testing.T) {
		for _, recover := range []bool{false, true} {
			name := map[bool]string{false: "path still down: EIO", true: "path back: succeeds"}[recover]
			t.Run(name, func(t *testing.T) {
				f := newMP(t, true)
				r := f.queued(8, 0xd4)
				ctx, cancel := context.WithCancel(bg())
				f.q.mu.Lock()
				f.q.onPresuspend = func() {
					// Presuspend pushed the write back; now fail.
					if s := f.d.Stats(); s.Pushback != 1 || !f.d.NoflushSuspending() {
						t.Errorf("in presuspend: %+v", s)
					}
					if recover {
						f.q.mu.Lock()
						f.q.up = true
						f.q.mu.Unlock()
					}
					cancel()
				}
				f.q.mu.Unlock()
				err := f.d.Suspend(ctx, true)
				if !errors.Is(err, dm.ErrInterrupted) || !errors.Is(err, context.Canceled) {
					t.Fatalf("suspend: %v", err)
				}
				if f.d.NoflushSuspending() || f.d.Suspended() {
					t.Fatal("flag left set or device suspended")
				}
				want := syscall.EIO // queue_if_no_path is off: no presuspend undo in multipath
				if recover {
					want = 0
				}
				testutil.MustErrno(t, "pushed-back write", r.Wait(t), want)
				if s := settledStats(t, f.d); s.Pushback != 0 || s.Deferred != 0 || s.InFlight != 0 {
					t.Fatalf("stats %+v", s)
				}
			})
		}
	})
	t.Run("an interrupted noflush suspend re-issues what was already pushed back, and what requeues afterwards returns EIO", func(t *testing.T) {
		f := newMP(t, true)
		// B is in flight on the path and will fail there.
		f.path.Hang(true)
		f.path.FailNext(1, syscall.EIO)
		b := f.write(16, 0xbb)
		// A is queued in the target: the path is down.
		a := f.queued(8, 0xaa)

		ctx, cancel := context.WithCancel(bg())
		done := suspendBlocked(t, f.d, ctx, true, nil)
		if s := f.d.Stats(); s.Pushback != 1 || s.InFlight != 1 {
			t.Fatalf("while suspending: %+v", s)
		}
		f.msg("reinstate_path")
		cancel()
		if err := <-done; !errors.Is(err, dm.ErrInterrupted) {
			t.Fatalf("suspend: %v", err)
		}
		// A was re-issued: it is on the path now.
		if f.path.Held() != 2 || a.Ended() || b.Ended() {
			t.Fatalf("path holds %d", f.path.Held())
		}
		f.path.Hang(false)
		f.path.Release()
		testutil.MustErrno(t, "B (requeued after the interrupt)", b.Wait(t), syscall.EIO)
		testutil.MustErrno(t, "A (pushed back before it)", a.Wait(t), 0)
		if !f.onDev(f.path, 8, 0xaa) || f.d.Suspended() {
			t.Fatal("A's data not on the path, or device suspended")
		}
	})
}

// Two devices at once, in one registry, sharing their path device through
// the pool: each keeps its own pushback and deferred bios.
func TestSuspendTouchesOnlyItsOwnDevice(t *testing.T) {
	path := dmtest.NewMemDevice("p", 4*MiB)
	spare := dmtest.NewMemDevice("spare", 4*MiB)
	opens := map[string]int{}
	closes := map[string]int{}
	open := func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		opens[name]++
		dev := map[string]dm.BlockDevice{"p": path, "spare": spare}[name]
		return dev, dm.CloserFunc(func() error { closes[name]++; return nil }), nil
	}
	reg := dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Targets: testTargets(t, nil), Open: open})
	var devs [2]*dm.Device
	var qs [2]*qpath
	for i, name := range []string{"mpa", "mpb"} {
		d, err := reg.Create(bg(), name, "", "0 2048 qpath p queue_if_no_path")
		if err != nil {
			t.Fatal(err)
		}
		devs[i], qs[i] = d, liveTarget[*qpath](t, d, 0)
	}
	if opens["p"] != 1 {
		t.Fatalf("p opened %d times; the pool should share it", opens["p"])
	}
	var l ledger
	defer l.checkOnce(t)
	var rs [2]*dmtest.Rec
	for i, d := range devs {
		if _, err := d.Message(bg(), 0, []string{"fail_path"}); err != nil {
			t.Fatal(err)
		}
		rs[i] = l.bio(dm.OpWrite, uint64(8*i), 4096)
		fill(rs[i].Buf, byte(0x10+i))
		d.Submit(&rs[i].Bio)
	}
	// Suspend both (noflush) concurrently.
	errs := make(chan error, 2)
	for _, d := range devs {
		go func(d *dm.Device) { errs <- d.Suspend(bg(), true) }(d)
	}
	for range devs {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i, d := range devs {
		if s := d.Stats(); s.Deferred != 1 || rs[i].Ended() {
			t.Fatalf("device %d: %+v", i, s)
		}
	}
	// Recover the first one only.
	if _, err := devs[0].Message(bg(), 0, []string{"reinstate_path"}); err != nil {
		t.Fatal(err)
	}
	mustResume(t, devs[0])
	testutil.MustErrno(t, "first device's write", rs[0].Wait(t), 0)
	if rs[1].Ended() || devs[1].Stats().Deferred != 1 {
		t.Fatal("the second device's write moved")
	}
	// The second gets a new table instead.
	if err := devs[1].Load("0 2048 linear spare 0"); err != nil {
		t.Fatal(err)
	}
	mustResume(t, devs[1])
	testutil.MustErrno(t, "second device's write", rs[1].Wait(t), 0)
	buf := make([]byte, 4096)
	spare.ReadAt(buf, 8<<9)
	if buf[0] != 0x11 {
		t.Fatal("second write not on spare")
	}
	path.ReadAt(buf, 0)
	if buf[0] != 0x10 {
		t.Fatal("first write not on the path")
	}
	if closes["p"] != 0 {
		t.Fatal("p closed while the first device still uses it")
	}
	if err := reg.Remove(bg(), "mpa", false, false); err != nil {
		t.Fatal(err)
	}
	if closes["p"] != 1 {
		t.Fatalf("p closed %d times after its last user went", closes["p"])
	}
	_ = qs
}
