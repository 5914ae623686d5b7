package multipath

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"udm/dm"
	"udm/internal/testutil"
	"udm/uring"
)

// Queueing, pushback and suspend with the real multipath target over
// real files: what happens to I/O with and without valid paths and
// queue_if_no_path, what a noflush suspend does to queued I/O and how a
// resume, a path recovery or a table load brings it back, and what a
// failed or interrupted suspend does to pushback. Paths are dm devices
// mapping one file, made to fail by swapping their table to error. Each
// case runs with bios from a uring loop and with bios that have no
// executor.

func forExecs(t *testing.T, fn func(t *testing.T, kind string)) {
	for _, kind := range execs {
		t.Run(kind, func(t *testing.T) { fn(t, kind) })
	}
}

func TestQueueIfNoPathHoldsAndFlushSuspendFails(t *testing.T) {
	t.Run("I/O succeeds with valid paths", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f := newFix(t, true, envConfig{})
			l := f.exec(kind)
			for i := uint64(0); i < 8; i++ {
				data := pattern(byte(i), 4*kib)
				testutil.MustErrnoIs(t, "write", f.write(l, 8*i, data).wait(t), 0)
				if !f.onFile(8*i, data) {
					t.Fatalf("block %d not in the file", i)
				}
				r := f.read(l, 8*i, 4*kib)
				testutil.MustErrnoIs(t, "read", r.wait(t), 0)
				if string(r.data) != string(data) {
					t.Fatalf("block %d read back wrong", i)
				}
			}
			// Round-robin used both paths.
			for _, p := range []string{"p0", "p1"} {
				if s := f.dev(p).Stats(); s.Reads+s.Writes == 0 {
					t.Errorf("no I/O on %s", p)
				}
			}
		})
	})
	t.Run("fails with no valid path and no queue_if_no_path", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f := newFix(t, false, envConfig{})
			f.breakPath("p0")
			f.breakPath("p1")
			testutil.MustErrnoIs(t, "write", f.write(f.exec(kind), 8, pattern(1, 4*kib)).wait(t), syscall.EIO)
			// Both paths were tried and failed; the next I/O fails at once.
			if st := f.status("mp"); st != "0 8192 multipath 2 0 0 0 1 1 E 0 2 0 /dev/mapper/p0 F 1 /dev/mapper/p1 F 1 " {
				t.Fatalf("status %q", st)
			}
			before := f.dev("p0").Stats().Writes + f.dev("p1").Stats().Writes
			testutil.MustErrnoIs(t, "second write", f.write(f.exec(kind), 8, pattern(1, 4*kib)).wait(t), syscall.EIO)
			if after := f.dev("p0").Stats().Writes + f.dev("p1").Stats().Writes; after != before {
				t.Fatal("I/O reached a failed path")
			}
		})
	})
	t.Run("is queued with no valid path and queue_if_no_path", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f := newFix(t, true, envConfig{})
			data := pattern(2, 4*kib)
			w := f.queued(f.exec(kind), 8, data)
			if f.mp.Pending() != 1 {
				t.Fatalf("pending %d", f.mp.Pending())
			}
			// Recovery runs it.
			f.repairPath("p1")
			f.mustMsg("mp", "reinstate_path", "/dev/mapper/p1")
			f.landed(t, "queued write", w, 8, data)
		})
	})
	t.Run("queued I/O fails on a suspend without noflush", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f := newFix(t, true, envConfig{})
			w := f.queued(f.exec(kind), 8, pattern(3, 4*kib))
			if err := f.mp.Suspend(bg(), false); err != nil {
				t.Fatal(err)
			}
			testutil.MustErrnoIs(t, "queued write", w.wait(t), syscall.EIO)
			if s := f.mp.Stats(); !s.Suspended || s.Deferred != 0 || s.Pushbacks != 0 || s.InFlight != 0 {
				t.Fatalf("stats %+v", s)
			}
			if err := f.mp.Resume(bg()); err != nil {
				t.Fatal(err)
			}
			// queue_if_no_path is back after the resume.
			w2 := f.write(f.exec(kind), 16, pattern(4, 4*kib))
			testutil.Eventually(t, "the next write to be held", func() bool { return f.target("mp").Held() == 1 })
			if err := f.mp.Suspend(bg(), false); err != nil {
				t.Fatal(err)
			}
			testutil.MustErrnoIs(t, "second write", w2.wait(t), syscall.EIO)
		})
	})
}

// noflushSuspended queues a write, then suspends with noflush: the write
// is pushed back and does not return.
// landed checks that w succeeded and its data is in the file at sector.
func (f *mpFix) landed(t *testing.T, what string, w *bio, sector uint64, data []byte) {
	t.Helper()
	testutil.MustErrnoIs(t, what, w.wait(t), 0)
	if !f.onFile(sector, data) {
		t.Fatal("data not in the file")
	}
}

// resumeWrites checks that the write held in the map (from
// noflushSuspended) is still held, resumes the map, and checks the write
// succeeds and is in the file.
func resumeWrites(t *testing.T, f *mpFix, w *bio, data []byte) {
	t.Helper()
	if w.ended() {
		t.Fatal("the write ran before resume")
	}
	if err := f.mp.Resume(bg()); err != nil {
		t.Fatal(err)
	}
	f.landed(t, "write", w, 8, data)
}

func noflushSuspended(t *testing.T, kind string, cfg envConfig) (*mpFix, *bio, []byte) {
	t.Helper()
	f := newFix(t, true, cfg)
	data := pattern(0xb2, 4*kib)
	w := f.queued(f.exec(kind), 8, data)
	if err := f.mp.Suspend(bg(), true); err != nil {
		t.Fatal(err)
	}
	if w.ended() {
		t.Fatalf("pushed-back write returned: %v", w.Err())
	}
	if s := f.mp.Stats(); s.Pushbacks != 1 || s.Deferred != 1 || s.Pushback != 0 || s.InFlight != 0 || !s.Suspended {
		t.Fatalf("after the noflush suspend: %+v", s)
	}
	if f.target("mp").Held() != 0 || f.mp.NoflushSuspending() {
		t.Fatal("target still holds the write, or the noflush flag is set")
	}
	// Messages are refused while suspended.
	if err := f.msg("mp", "reinstate_path", "/dev/mapper/p0"); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("message while suspended: %v", err)
	}
	return f, w, data
}

func TestNoflushSuspendPushesQueuedIOBack(t *testing.T) {
	t.Run("queued I/O is pushed back but does not return on a noflush suspend", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) { noflushSuspended(t, kind, envConfig{}) })
	})
	t.Run("is queued in the target again on a resume without recovery", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f, w, data := noflushSuspended(t, kind, envConfig{})
			if err := f.mp.Resume(bg()); err != nil {
				t.Fatal(err)
			}
			mp := f.target("mp")
			testutil.Eventually(t, "the write to be held again", func() bool { return mp.Held() == 1 })
			if w.ended() || f.mp.Stats().Deferred != 0 {
				t.Fatalf("ended %v, stats %+v", w.ended(), f.mp.Stats())
			}
			f.repairPath("p0")
			f.mustMsg("mp", "reinstate_path", "/dev/mapper/p0")
			f.landed(t, "write", w, 8, data)
		})
	})
	t.Run("succeeds on resume after path recovery", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			// The checker polls (every few ms): it finds p0 repaired and
			// reinstates it while the map is suspended.
			f, w, data := noflushSuspended(t, kind, envConfig{check: MapConfig{PollingInterval: 5 * time.Millisecond}})
			f.repairPath("p0")
			mp := f.target("mp")
			testutil.Eventually(t, "the checker to reinstate p0", func() bool { return mp.ValidPaths() == 1 })
			resumeWrites(t, f, w, data)
		})
	})
	t.Run("succeeds on resume after path recovery by the operator", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f, w, data := noflushSuspended(t, kind, envConfig{})
			f.repairPath("p1")
			if err := f.chk.ReinstatePath("mp", "/dev/mapper/p1"); err != nil {
				t.Fatal(err)
			}
			resumeWrites(t, f, w, data)
		})
	})
	t.Run("succeeds on resume after a table load", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f, w, data := noflushSuspended(t, kind, envConfig{})
			f.repairPath("p1")
			// A new table: its paths start active.
			if err := f.mp.Load(f.mpTable(true, "/dev/mapper/p1")); err != nil {
				t.Fatal(err)
			}
			resumeWrites(t, f, w, data)
			// The old table's paths are gone from the map.
			if got := f.table("mp"); got != "0 8192 multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 /dev/mapper/p1 1 " {
				t.Fatalf("table %q", got)
			}
		})
	})
	t.Run("queued I/O succeeds on a noflush resume after a table load", func(t *testing.T) {
		for _, how := range []string{"resume --noflush", "suspend --noflush; load; resume"} {
			t.Run(how, func(t *testing.T) {
				forExecs(t, func(t *testing.T, kind string) {
					f := newFix(t, true, envConfig{})
					data := pattern(0xc3, 4*kib)
					w := f.queued(f.exec(kind), 8, data)
					if how != "resume --noflush" {
						if err := f.mp.Suspend(bg(), true); err != nil {
							t.Fatal(err)
						}
					}
					f.repairPath("p0")
					if err := f.mp.Load(f.mpTable(true, "/dev/mapper/p0", "/dev/mapper/p1")); err != nil {
						t.Fatal(err)
					}
					var err error
					if how == "resume --noflush" {
						err = f.mp.ResumeNoflush(bg())
					} else {
						err = f.mp.Resume(bg())
					}
					if err != nil {
						t.Fatal(err)
					}
					f.landed(t, "write", w, 8, data)
					if f.mp.Stats().Pushbacks != 1 {
						t.Fatal("the write was not pushed back")
					}
				})
			})
		}
	})
}

// hungFix adds a third path p2 and makes p1 and p2 hang: each is a delay
// target (delaying for much longer than any test) over a device that
// fails (p1: the error device e) or works (p2: the file, unless p2Fails).
// A suspend of p1 or p2 releases what it holds.
func hungFix(t *testing.T, kind string, p2Fails bool) (*mpFix, *uring.Loop) {
	f := newFix(t, false, envConfig{})
	f.create("e", f.errTable())
	f.create("p2", f.linear())
	f.swap("p1", fmt.Sprintf("0 %d delay /dev/mapper/e 0 600000", f.sectors))
	lower := f.file
	if p2Fails {
		lower = "/dev/mapper/e"
	}
	f.swap("p2", fmt.Sprintf("0 %d delay %s 0 600000", f.sectors, lower))
	if err := f.mp.Load(f.mpTable(false, "/dev/mapper/p0", "/dev/mapper/p1", "/dev/mapper/p2")); err != nil {
		t.Fatal(err)
	}
	if err := f.mp.Resume(bg()); err != nil {
		t.Fatal(err)
	}
	return f, f.exec(kind)
}

// release lets a hung path's held I/O go (to its lower device).
func (f *mpFix) release(p string) {
	f.t.Helper()
	d := f.dev(p)
	if err := d.Suspend(bg(), false); err != nil {
		f.t.Fatal(err)
	}
	if err := d.Resume(bg()); err != nil {
		f.t.Fatal(err)
	}
}

// hangAX writes A (sector 8) so that it hangs on p1 and X (sector 16) so
// that it hangs on p2, then fails every path by message: hungFix's
// interrupted-suspend set-up.
func (f *mpFix) hangAX(t *testing.T, l *uring.Loop, aData, xData []byte) (a, x *bio) {
	t.Helper()
	f.mustMsg("mp", "fail_path", "/dev/mapper/p0")
	f.mustMsg("mp", "fail_path", "/dev/mapper/p2")
	a = f.write(l, 8, aData)
	testutil.Eventually(t, "A on p1", func() bool { return f.held("p1") == 1 })
	f.mustMsg("mp", "reinstate_path", "/dev/mapper/p2")
	f.mustMsg("mp", "fail_path", "/dev/mapper/p1")
	x = f.write(l, 16, xData)
	testutil.Eventually(t, "X on p2", func() bool { return f.held("p2") == 1 })
	f.mustMsg("mp", "fail_path", "/dev/mapper/p2")
	return a, x
}

// suspendPushingA starts a noflush suspend of mp and releases p1, so that
// A (from hangAX) fails there with no path left and is pushed back; X
// keeps the suspend waiting. Cancel ends the suspend; done has its error.
// reinstateAndInterrupt brings p0 back and interrupts the suspend (from
// suspendPushingA): it gives up, A (pushed back) is re-issued and lands,
// and X (hung on p2) is still out.
func (f *mpFix) reinstateAndInterrupt(t *testing.T, cancel context.CancelFunc, done <-chan error, a, x *bio, aData []byte) {
	t.Helper()
	f.mustMsg("mp", "reinstate_path", "/dev/mapper/p0")
	cancel()
	if err := <-done; !errors.Is(err, dm.ErrInterrupted) {
		t.Fatalf("suspend: %v", err)
	}
	testutil.MustErrnoIs(t, "A (pushed back, re-issued)", a.wait(t), 0)
	if !f.onFile(8, aData) || x.ended() {
		t.Fatal("A's data not in the file, or X ended")
	}
}

func (f *mpFix) suspendPushingA(t *testing.T) (cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	ctx, cancel := context.WithCancel(bg())
	ch := make(chan error, 1)
	go func() { ch <- f.mp.Suspend(ctx, true) }()
	testutil.Eventually(t, "the suspend to start", f.mp.NoflushSuspending)
	f.release("p1")
	testutil.Eventually(t, "A on pushback", func() bool { return f.mp.Stats().Pushback == 1 })
	return cancel, ch
}

func (f *mpFix) held(p string) int {
	var r, w int
	fmt.Sscanf(f.status(p), "0 8192 delay %d %d", &r, &w)
	return r + w
}

// gatedCtx is a canceled context whose Err first waits for cond: a
// suspend that checks it right after presuspend sees what presuspend
// started on a loop finish first.
type gatedCtx struct {
	context.Context
	t    testing.TB
	what string
	cond func() bool
}

func (c gatedCtx) Err() error {
	testutil.Eventually(c.t, c.what, c.cond)
	return c.Context.Err()
}

// doneAfter is a canceled context that reports it only once cond holds.
func doneAfter(t testing.TB, what string, cond func() bool) context.Context {
	ctx, cancel := context.WithCancel(bg())
	cancel()
	return gatedCtx{ctx, t, what, cond}
}

func TestFailedOrInterruptedSuspendFlushesPushback(t *testing.T) {
	t.Run("a failure inside suspend after the flag is set clears it and flushes pushback", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f := newFix(t, true, envConfig{})
			w := f.queued(f.exec(kind), 8, pattern(0xd4, 4*kib))
			// A context that is already done fails the suspend right after
			// presuspend, which pushed the held write back: at once
			// without an executor, on the loop with one, which the
			// context waits for when the suspend asks it.
			err := f.mp.Suspend(doneAfter(t, "presuspend to push the write back", func() bool {
				s := f.mp.Stats()
				return s.Pushback == 1 && s.Pushbacks == 1
			}), true)
			if !errors.Is(err, dm.ErrInterrupted) || !errors.Is(err, context.Canceled) {
				t.Fatalf("suspend: %v", err)
			}
			if f.mp.NoflushSuspending() || f.mp.Suspended() {
				t.Fatal("noflush flag left set, or the device suspended")
			}
			// The pushed-back write was re-issued: with the paths still
			// down and queueing off until the next resume (the kernel has
			// no multipath presuspend undo), it fails.
			testutil.MustErrnoIs(t, "pushed-back write", w.wait(t), syscall.EIO)
			s := settledStats(t, f.mp)
			if s.Pushback != 0 || s.Deferred != 0 || s.InFlight != 0 {
				t.Fatalf("stats %+v", s)
			}
			if s.Pushbacks != 1 {
				t.Fatalf("the write was not pushed back: %+v", s)
			}
			// The next resume turns queueing back on.
			if err := f.mp.Suspend(bg(), false); err != nil {
				t.Fatal(err)
			}
			if err := f.mp.Resume(bg()); err != nil {
				t.Fatal(err)
			}
			f.write(f.exec(kind), 16, pattern(1, 4*kib))
			testutil.Eventually(t, "a write to be held", func() bool { return f.target("mp").Held() == 1 })
			f.repairPath("p0")
			f.mustMsg("mp", "reinstate_path", "/dev/mapper/p0")
		})
	})
	t.Run("an interrupted noflush suspend re-issues what was already pushed back", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f, l := hungFix(t, kind, false)
			// A goes to p1 (hangs, then fails), X to p2 (hangs, then
			// succeeds).
			aData, xData := pattern(0xaa, 4*kib), pattern(0x55, 4*kib)
			a, x := f.hangAX(t, l, aData, xData)

			cancel, done := f.suspendPushingA(t)
			// p0 is back; the suspend, still waiting for X, gives up.
			f.reinstateAndInterrupt(t, cancel, done, a, x, aData)
			f.release("p2")
			testutil.MustErrnoIs(t, "X", x.wait(t), 0)
			if !f.onFile(16, xData) {
				t.Fatal("X's data not in the file")
			}
		})
	})
	t.Run("and what requeues afterwards returns EIO", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f, l := hungFix(t, kind, true)
			// A hangs on p1 and X on p2, and both will fail there; X keeps
			// the suspend waiting.
			a, x := f.hangAX(t, l, pattern(0xaa, 4*kib), pattern(0x55, 4*kib))

			cancel, done := f.suspendPushingA(t)
			cancel()
			if err := <-done; !errors.Is(err, dm.ErrInterrupted) {
				t.Fatalf("suspend: %v", err)
			}
			// A was re-issued with no path: it fails now.
			testutil.MustErrnoIs(t, "A", a.wait(t), syscall.EIO)
			// X fails on p2 after the interrupt: no path, no noflush
			// suspend any more: EIO.
			f.release("p2")
			testutil.MustErrnoIs(t, "X (requeued after the interrupt)", x.wait(t), syscall.EIO)
		})
	})
}

// The suspend cases with two multipath devices over the same paths: what
// one device's suspend does to its I/O leaves the other's alone.
func TestSuspendTouchesOnlyItsOwnDevice(t *testing.T) {
	// unaffected checks that mpb still holds wb, queueing, with nothing
	// pushed back or deferred.
	unaffected := func(f *mpFix, mpb *dm.Device, wb *bio, what string) {
		f.t.Helper()
		tb := f.target("mpb")
		if s := mpb.Stats(); wb.ended() || tb.Held() != 1 || !tb.state().queue || s.Suspended || mpb.NoflushSuspending() ||
			s.Pushbacks != 0 || s.Deferred != 0 || s.Pushback != 0 {
			f.t.Fatalf("%s: mpb's write ended %v, held %d, queueing %v, stats %+v", what, wb.ended(), tb.Held(), tb.state().queue, s)
		}
	}
	// finish lets mpb's write complete on p0.
	finish := func(f *mpFix, wb *bio) {
		f.t.Helper()
		f.mustMsg("mpb", "reinstate_path", "/dev/mapper/p0")
		testutil.MustErrnoIs(f.t, "mpb's write", wb.wait(f.t), 0)
		if !f.onFile(64, pattern(0xbb, 4*kib)) {
			f.t.Fatal("mpb's write not in the file")
		}
	}

	t.Run("queued I/O fails on a suspend without noflush, of that device only", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			f := newFix(t, true, envConfig{})
			l := f.exec(kind)
			w := f.queued(l, 8, pattern(3, 4*kib))
			// mpb queues over the same (broken) paths: its write fails on
			// both and is held.
			mpb := f.create("mpb", f.mpTable(true, "/dev/mapper/p0", "/dev/mapper/p1"))
			wb := f.env.write(mpb, l, 64, pattern(0xbb, 4*kib))
			f.l.add(wb)
			testutil.Eventually(t, "mpb to hold its write", func() bool { return f.target("mpb").Held() == 1 })
			if err := f.mp.Suspend(bg(), false); err != nil {
				t.Fatal(err)
			}
			testutil.MustErrnoIs(t, "mp's queued write", w.wait(t), syscall.EIO)
			if s := f.mp.Stats(); !s.Suspended || s.Deferred != 0 || s.Pushbacks != 0 {
				t.Fatalf("mp stats %+v", s)
			}
			unaffected(f, mpb, wb, "mp suspended")
			if err := f.mp.Resume(bg()); err != nil {
				t.Fatal(err)
			}
			unaffected(f, mpb, wb, "mp resumed")
			f.repairPath("p0")
			finish(f, wb)
		})
	})
	t.Run("an interrupted noflush suspend re-issues what it pushed back, and only its own", func(t *testing.T) {
		forExecs(t, func(t *testing.T, kind string) {
			// As in TestFailedOrInterruptedSuspendFlushesPushback: A
			// hangs on p1 (then fails), X on p2 (then succeeds); both
			// maps queue.
			f, l := hungFix(t, kind, false)
			paths := []string{"/dev/mapper/p0", "/dev/mapper/p1", "/dev/mapper/p2"}
			f.swap("mp", f.mpTable(true, paths...))
			// mpb holds a write with every path failed by message: no I/O
			// of it reaches the paths.
			mpb := f.create("mpb", f.mpTable(true, paths...))
			for _, p := range paths {
				f.mustMsg("mpb", "fail_path", p)
			}
			wb := f.env.write(mpb, l, 64, pattern(0xbb, 4*kib))
			f.l.add(wb)
			testutil.Eventually(t, "mpb to hold its write", func() bool { return f.target("mpb").Held() == 1 })
			aData, xData := pattern(0xaa, 4*kib), pattern(0x55, 4*kib)
			a, x := f.hangAX(t, l, aData, xData)

			cancel, done := f.suspendPushingA(t)
			unaffected(f, mpb, wb, "mp suspending")
			f.reinstateAndInterrupt(t, cancel, done, a, x, aData)
			if s := f.mp.Stats(); s.Pushbacks != 1 || s.Suspended {
				t.Fatalf("mp stats %+v", s)
			}
			unaffected(f, mpb, wb, "mp's suspend interrupted")
			f.release("p2")
			testutil.MustErrnoIs(t, "X", x.wait(t), 0)
			if !f.onFile(16, xData) {
				t.Fatal("X's data not in the file")
			}
			finish(f, wb)
		})
	})
}
