package filedev

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/internal/testutil"
	"udm/uring"
)

// onLoopWithin runs fn on l and fails the test if it doesn't return
// (fn, or the loop, is stuck).
func onLoopWithin(t *testing.T, l *uring.Loop, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	if err := l.Post(func() { fn(); close(done) }); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	testutil.Wait(t, what+" to return on the loop (a stuck loop does not)", done)
}

// The last close of a device marked for deferred removal, on the loop
// its file device runs on (as an NBD connection's last close is), must
// neither stop that loop nor wait for it: the removal runs on a goroutine
// of the registry's, the loop keeps serving other devices meanwhile, and
// the device is gone once the registry's Wait returns.
func TestDeferredRemoveOnLastCloseOnTheLoop(t *testing.T) {
	l := newLoop(t, 0) // the only loop, as with udm serve --loops 1
	var removed atomic.Pointer[dm.Device]
	reg := dm.NewRegistry(dm.Config{
		Log:             zerolog.Nop(),
		Open:            OpenerWith(Options{Fallback: l, Mode: ModeUring}),
		DeferredRemoved: func(d *dm.Device) { removed.Store(d) },
	})
	ctx := context.Background()
	rPath, otherPath := testutil.TempFile(t, 16<<20), testutil.TempFile(t, 1<<20)
	r, err := reg.Create(ctx, "r", "", fmt.Sprintf("0 32768 linear %s 0", rPath))
	if err != nil {
		t.Fatal(err)
	}
	other, err := reg.Create(ctx, "other", "", fmt.Sprintf("0 2048 linear %s 0", otherPath))
	if err != nil {
		t.Fatal(err)
	}
	// An export holds r and has done I/O on the loop: r's file is
	// registered there.
	if err := r.Open(); err != nil {
		t.Fatal(err)
	}
	if _, err := ioOn(t, l, r, dm.OpRead, 0, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if marked, err := r.RemoveOrDefer(ctx, false); err != nil || !marked {
		t.Fatalf("deferred remove of an open device: marked %v, %v", marked, err)
	}
	var closeErr error
	onLoopWithin(t, l, "the last close", func() { closeErr = r.Close() })
	if closeErr != nil {
		t.Fatalf("last close: %v", closeErr)
	}
	// The loop serves the other device.
	if _, err := ioOn(t, l, other, dm.OpWrite, 8, make([]byte, 4096), 0); err != nil {
		t.Fatalf("I/O to another device after the last close: %v", err)
	}
	wctx, cancel := context.WithTimeout(ctx, testutil.Patience)
	defer cancel()
	if err := reg.Wait(wctx); err != nil {
		t.Fatalf("the deferred removal did not finish: %v", err)
	}
	if got := reg.List(); len(got) != 1 || got[0] != "other" {
		t.Fatalf("devices after the deferred removal: %q", got)
	}
	if removed.Load() != r {
		t.Fatal("DeferredRemoved was not called with the removed device")
	}
	select {
	case <-r.Removed():
	default:
		t.Fatal("Removed is not closed")
	}
	if _, err := ioOn(t, l, other, dm.OpRead, 8, make([]byte, 4096), 0); err != nil {
		t.Fatalf("I/O to another device after the removal: %v", err)
	}
}

// A file device closed on the loop it is registered on unregisters it
// there instead of waiting for the loop; closed on another loop's thread
// it asks that loop to. Neither stops a loop.
func TestCloseOnALoop(t *testing.T) {
	a, b := newLoop(t, 0), newLoop(t, 1)
	for _, tc := range []struct {
		name string
		on   *uring.Loop
	}{{"its own loop", a}, {"another loop", b}} {
		t.Run(tc.name, func(t *testing.T) {
			p := testutil.TempFile(t, 1<<20)
			d, err := Open(p, Options{Fallback: a, Mode: ModeUring})
			if err != nil {
				t.Fatal(err)
			}
			// I/O through a device on a registers the file there.
			dev := mustLinearOver(t, "c", d)
			if _, err := ioOn(t, a, dev, dm.OpRead, 0, make([]byte, 4096), 0); err != nil {
				t.Fatal(err)
			}
			var cerr error
			onLoopWithin(t, tc.on, "Close", func() { cerr = d.Close() })
			if cerr != nil {
				t.Fatalf("Close: %v", cerr)
			}
			// Both loops still run; the fixed-file slot is free again
			// (once a has run what b posted to it).
			var slots []int32
			for range 2 {
				if err := a.Call(func() {}); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Call(func() {}); err != nil {
				t.Fatal(err)
			}
			if err := a.Call(func() {
				for {
					i, err := a.RegisterFile(0)
					if err != nil {
						break
					}
					slots = append(slots, i)
				}
				for _, i := range slots {
					a.UnregisterFile(i)
				}
			}); err != nil {
				t.Fatal(err)
			}
			if len(slots) != 256 {
				t.Fatalf("%d of 256 fixed-file slots free after Close", len(slots))
			}
		})
	}
}

// The path check waits for a loop: on a loop's thread it refuses at once,
// and off it it works.
func TestCheckOnALoopRefuses(t *testing.T) {
	l := newLoop(t, 0)
	d, err := Open(testutil.TempFile(t, 1<<20), Options{Fallback: l, Mode: ModeUring})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var cerr error
	onLoopWithin(t, l, "Check", func() { cerr = d.Check(context.Background(), testutil.Patience) })
	if !errors.Is(cerr, uring.ErrCallOnLoop) {
		t.Fatalf("Check on the loop: %v, want ErrCallOnLoop", cerr)
	}
	if err := d.Check(context.Background(), testutil.Patience); err != nil {
		t.Fatalf("Check off the loop: %v", err)
	}
}
