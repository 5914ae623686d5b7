package dm_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

// testSeed returns the seed of a randomised test (DM_SEED overrides it)
// and makes the test print it if it fails.
func testSeed(t *testing.T) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DM_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("DM_SEED: %v", err)
		}
		seed = v
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("seed %d (rerun with DM_SEED=%d)", seed, seed)
		}
	})
	return seed
}

// gate parks a goroutine at a hook until the test opens it.
type gate struct {
	reached chan struct{}
	open    chan struct{}
	once    sync.Once
}

func newGate() *gate { return &gate{reached: make(chan struct{}), open: make(chan struct{})} }

// park is called at the hook: the first caller signals and waits.
func (g *gate) park() {
	first := false
	g.once.Do(func() { first = true })
	if !first {
		return
	}
	close(g.reached)
	<-g.open
}

func (g *gate) waitReached(t *testing.T, what string) {
	t.Helper()
	testutil.Wait(t, what+" to be reached", g.reached)
}

// Suspend racing completions: the last completion lands at each point of
// the suspend's wait, and the suspend still sees the drain.
func TestSuspendRacesCompletions(t *testing.T) {
	for _, at := range []dm.HookPoint{dm.HookBlocked, dm.HookBeforeWait} {
		name := map[dm.HookPoint]string{dm.HookBlocked: "between BLOCK_IO and the pending check", dm.HookBeforeWait: "after the pending check, before sleeping"}[at]
		t.Run(name, func(t *testing.T) {
			a := newCapDev("a", MiB)
			d := newDev(t, nil, "0 64 linear a 0", a)
			var l ledger
			a.setHold(true)
			for i := uint64(0); i < 4; i++ {
				l.submit(d, dm.OpWrite, i, 512)
			}
			released := 0
			d.SetHook(func(p dm.HookPoint) {
				if p == at && released == 0 {
					released = a.release(nil) // all complete here, synchronously
				}
			})
			mustSuspend(t, d, true)
			if released != 4 {
				t.Fatalf("hook released %d", released)
			}
			l.waitAll(t)
			if d.Pending() != 0 || !d.Suspended() {
				t.Fatal("not drained")
			}
		})
	}
	t.Run("random completions from many goroutines", func(t *testing.T) {
		seed := testSeed(t)
		rnd := rand.New(rand.NewPCG(seed, 2))
		for round := 0; round < 50; round++ {
			a := newCapDev("a", MiB)
			d := newDev(t, nil, "0 64 linear a 0", a)
			var l ledger
			a.setHold(true)
			n := 1 + rnd.IntN(32)
			for i := 0; i < n; i++ {
				l.submit(d, dm.OpWrite, uint64(i), 512)
			}
			a.mu.Lock()
			held := a.held
			a.held = nil
			a.mu.Unlock()
			done := make(chan error, 1)
			noflush := rnd.IntN(2) == 0
			go func() { done <- d.Suspend(bg(), noflush) }()
			var wg sync.WaitGroup
			for len(held) > 0 {
				k := 1 + rnd.IntN(len(held))
				part := held[:k]
				held = held[k:]
				wg.Add(1)
				go func() {
					defer wg.Done()
					for _, c := range part {
						c.End(nil)
					}
				}()
			}
			wg.Wait()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			l.waitAll(t)
			if d.Pending() != 0 { // the suspend returned: nothing is pending
				t.Fatalf("round %d: pending %d", round, d.Pending())
			}
		}
	})
}

// A requeue landing just as an interrupted suspend clears the flag: the
// completion is parked right before the pushback lock and the suspend
// right before it clears the flag; each order is run.
func TestRequeueRacesInterruptedSuspend(t *testing.T) {
	for _, requeueFirst := range []bool{true, false} {
		name := map[bool]string{true: "requeue first: pushed back and re-issued", false: "flag cleared first: EIO"}[requeueFirst]
		t.Run(name, func(t *testing.T) {
			p, h := newCapDev("p", MiB), newCapDev("h", MiB)
			d := newDev(t, nil, "0 8 qpath p\n8 8 linear h 0", p, h)
			var l ledger
			defer l.checkOnce(t)
			p.setHold(true)
			h.setHold(true)
			b := l.submit(d, dm.OpWrite, 0, 512) // on the path, will fail
			c := l.submit(d, dm.OpWrite, 8, 512) // keeps the suspend waiting

			blocked, atPushback, atAbort := newGate(), newGate(), newGate()
			close(blocked.open)
			d.SetHook(func(hp dm.HookPoint) {
				switch hp {
				case dm.HookBlocked:
					blocked.park()
				case dm.HookBeforePushback:
					atPushback.park()
				case dm.HookAbort:
					atAbort.park()
				}
			})
			ctx, cancel := context.WithCancel(bg())
			suspended := make(chan error, 1)
			go func() { suspended <- d.Suspend(ctx, true) }()
			blocked.waitReached(t, "BLOCK_IO")

			completed := make(chan struct{})
			go func() { p.release(syscall.EIO); close(completed) }() // path error → requeue
			atPushback.waitReached(t, "the pushback lock")
			cancel()
			atAbort.waitReached(t, "the abort")

			if requeueFirst {
				close(atPushback.open)
				<-completed // b is on pushback now
				if s := d.Stats(); s.Pushback != 1 || b.Ended() {
					t.Fatalf("b not on pushback: %+v", s)
				}
				// Let the re-issued bio through.
				p.setHold(false)
				if _, err := d.Message(bg(), 0, []string{"reinstate_path"}); err != nil {
					t.Fatal(err)
				}
				close(atAbort.open)
				if err := <-suspended; !errors.Is(err, dm.ErrInterrupted) {
					t.Fatalf("suspend: %v", err)
				}
				testutil.MustErrno(t, "b", b.Wait(t), 0)
				if d.Stats().Pushbacks != 1 {
					t.Fatal("no pushback counted")
				}
			} else {
				close(atAbort.open)
				if err := <-suspended; !errors.Is(err, dm.ErrInterrupted) {
					t.Fatalf("suspend: %v", err)
				}
				if b.Ended() {
					t.Fatal("b ended before its requeue was decided")
				}
				close(atPushback.open)
				<-completed
				testutil.MustErrno(t, "b", b.Wait(t), syscall.EIO)
				if d.Stats().Pushbacks != 0 {
					t.Fatal("pushed back after the flag was cleared")
				}
			}
			d.SetHook(nil)
			if d.NoflushSuspending() || d.Suspended() || d.Stats().Pushback != 0 || d.Stats().Deferred != 0 {
				t.Fatalf("state after: %+v", d.Stats())
			}
			h.release(nil)
			testutil.MustErrno(t, "c", c.Wait(t), 0)
		})
	}
}

// A Submit that saw BLOCK_IO just before a resume cleared it re-checks
// under the deferred lock and maps the bio instead of stranding it.
func TestSubmitRacesResume(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 8 linear a 0", a)
	mustSuspend(t, d, false)
	g := newGate()
	d.SetHook(func(p dm.HookPoint) {
		if p == dm.HookDefer {
			g.park()
		}
	})
	r := dmtest.NewRec(dm.OpWrite, 0, 512)
	go d.Submit(&r.Bio)
	g.waitReached(t, "the deferred lock")
	if err := d.Resume(bg()); err != nil { // clears BLOCK_IO, finds deferred empty
		t.Fatal(err)
	}
	close(g.open)
	testutil.MustErrno(t, "bio", r.Wait(t), 0)
	d.SetHook(nil)
	if d.Stats().Deferred != 0 {
		t.Fatal("a bio was stranded on deferred")
	}
}

// Resume (with and without table swaps) racing submissions from many
// goroutines, with completions inline, async and on loops, and a target
// requeuing at random: every bio ends exactly once and none is lost.
func TestResumeRacesSubmissions(t *testing.T) {
	seed := testSeed(t)
	rnd := rand.New(rand.NewPCG(seed, 3))
	a, b := dmtest.NewMemDevice("a", 4*MiB), dmtest.NewMemDevice("b", 4*MiB)
	reg := testTargets(t, nil)
	if err := reg.Register(chaosType(seed, 30, 30)); err != nil {
		t.Fatal(err)
	}
	d := dm.NewDevice(dm.DeviceConfig{Name: "race", Targets: reg, Open: dm.StaticOpener(a, b)})
	tables := []string{
		"0 1024 chaos a\n1024 1024 striped 2 8 a 2048 b 0",
		"0 512 linear b 2048\n512 1536 chaos a",
	}
	if err := d.Load(tables[0]); err != nil {
		t.Fatal(err)
	}
	mustResume(t, d)
	loops := []*dmtest.Loop{dmtest.NewLoop(t), dmtest.NewLoop(t)}
	const goroutines, perG = 6, 1500
	var l ledger
	var issued atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		gseed := rnd.Uint64()
		go func(g int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(gseed, uint64(g)))
			<-start
			for i := 0; i < perG; i++ {
				n := 1 + r.IntN(24)
				s := r.Uint64N(2048 - uint64(n))
				op := []dm.Op{dm.OpRead, dm.OpWrite, dm.OpWrite, dm.OpFlush, dm.OpDiscard}[r.IntN(5)]
				if op == dm.OpFlush {
					n, s = 0, 0
				}
				rec := l.bio(op, s, n<<9)
				if r.IntN(3) == 0 {
					rec.Exec = loops[r.IntN(len(loops))]
				}
				issued.Add(1)
				d.Submit(&rec.Bio)
				runtime.Gosched() // interleave with the suspends and resumes
				if r.IntN(64) == 0 {
					time.Sleep(time.Duration(r.IntN(50)) * time.Microsecond)
				}
			}
		}(g)
	}
	modes := []dmtest.Completion{dmtest.CompleteSync, dmtest.CompleteAsync, dmtest.CompleteExec}
	close(start)
	rounds := 0
	for ; issued.Load() < goroutines*perG || rounds < 40; rounds++ {
		round := rounds
		a.SetCompletion(modes[rnd.IntN(3)])
		b.SetCompletion(modes[rnd.IntN(3)])
		// Keep some I/O in flight across suspends now and then.
		a.SetDelay(time.Duration(rnd.IntN(2)) * 20 * time.Microsecond)
		noflush := rnd.IntN(2) == 0
		mustSuspend(t, d, noflush)
		if d.Pending() < 0 {
			t.Fatalf("pending %d", d.Pending())
		}
		if rnd.IntN(3) == 0 {
			if err := d.Load(tables[round%2]); err != nil {
				t.Fatal(err)
			}
		}
		if rnd.IntN(4) == 0 {
			// A suspend interrupted mid-wait, then a resume.
			mustResume(t, d)
			ctx, cancel := context.WithCancel(bg())
			go cancel()
			if err := d.Suspend(ctx, noflush); err != nil && !errors.Is(err, dm.ErrInterrupted) {
				t.Fatal(err)
			}
		}
		mustResume(t, d)
	}
	wg.Wait()
	l.waitAll(t)
	for _, r := range l.all() {
		if r.Err() != nil && r.Err() != syscall.EIO {
			t.Fatalf("%s@%d: unexpected error %v", r.Op, r.Sector, r.Err())
		}
	}
	waitIdle(t, d)
	if s := d.Stats(); s.Deferred != 0 || s.Pushback != 0 {
		t.Fatalf("after: %+v", s)
	}
	t.Logf("%d bios, %d rounds, %d pushed back, %d errors", len(l.all()), rounds, d.Stats().Pushbacks, d.Stats().Errors)
	if len(l.all()) != goroutines*perG {
		t.Fatal(fmt.Sprint("ledger lost bios: ", len(l.all())))
	}
}
