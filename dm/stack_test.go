package dm_test

import (
	"bytes"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

// stackPair makes lower (over devs, with lowerTable) and an upper device
// whose table names "lower" through the adapter, wired by hand.
func stackPair(t *testing.T, lowerTable, upperTable string, devs ...dm.BlockDevice) (upper, lower *dm.Device, adapter dm.BlockDevice) {
	lower = newDev(t, nil, lowerTable, devs...)
	adapter = lower.BlockDevice()
	open := func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		if name == "lower" {
			return adapter, dm.NopCloser{}, nil
		}
		return dm.StaticOpener(devs...)(name, ro)
	}
	upper = dm.NewDevice(dm.DeviceConfig{Name: "upper", Log: zerolog.Nop(), Open: open})
	if err := upper.Load(upperTable); err != nil {
		t.Fatal(err)
	}
	if err := upper.Resume(bg()); err != nil {
		t.Fatal(err)
	}
	return upper, lower, adapter
}

func TestStackedIO(t *testing.T) {
	a := dmtest.NewMemDevice("a", 4*MiB)
	upper, lower, adapter := stackPair(t, "0 1024 striped 2 8 a 0 a 2048", "0 100 zero\n100 512 linear lower 256", a)
	if adapter.Name() != "/dev/mapper/test" || adapter.Size() != lower.Size() || adapter.BlockSize() != 512 || adapter.ReadOnly() {
		t.Fatalf("adapter %s size %d", adapter.Name(), adapter.Size())
	}
	for _, mode := range []dmtest.Completion{dmtest.CompleteSync, dmtest.CompleteAsync, dmtest.CompleteExec} {
		a.SetCompletion(mode)
		loop := dmtest.NewLoop(t)
		w := dmtest.NewRec(dm.OpWrite, 96, 64<<9) // split by upper and by lower
		w.Exec = loop
		for i := range w.Buf {
			w.Buf[i] = byte(i>>9) + byte(mode)
		}
		upper.Submit(&w.Bio)
		testutil.MustErrno(t, "write", w.Wait(t), 0)
		r := dmtest.NewRec(dm.OpRead, 96, 64<<9)
		r.Exec = loop
		upper.Submit(&r.Bio)
		testutil.MustErrno(t, "read", r.Wait(t), 0)
		if !bytes.Equal(r.Buf[4<<9:], w.Buf[4<<9:]) || !bytes.Equal(r.Buf[:4<<9], make([]byte, 4<<9)) {
			t.Fatalf("mode %d: read back differs", mode)
		}
	}
	// A suspended lower device defers the upper's I/O until it resumes.
	if err := lower.Suspend(bg(), true); err != nil {
		t.Fatal(err)
	}
	r := dmtest.NewRec(dm.OpRead, 100, 512)
	upper.Submit(&r.Bio)
	if r.Ended() || lower.Stats().Deferred != 1 || upper.Pending() != 1 {
		t.Fatal("upper I/O not deferred by the lower device")
	}
	if err := lower.Resume(bg()); err != nil {
		t.Fatal(err)
	}
	testutil.MustErrno(t, "deferred read", r.Wait(t), 0)
}

// timedOutBelow stacks a device over a capDev that holds its I/O, with a
// deadline, and sends one bio of op (its buffer filled with v) that must
// time out; it returns the bio, the lower device and the clone held
// below.
func timedOutBelow(t *testing.T, op dm.Op, v byte) (*dmtest.Rec, *dm.Device, []*dm.Clone) {
	t.Helper()
	c := newCapDev("c", MiB)
	upper, lower, adapter := stackPair(t, "0 64 linear c 0", "0 64 linear lower 0", c)
	adapter.(dm.DeadlineSetter).SetIODeadline(50 * time.Millisecond) // long enough for the descent to reach the device on a loaded machine
	c.setHold(true)
	r := dmtest.NewRec(op, 0, 512)
	fill(r.Buf, v)
	upper.Submit(&r.Bio)
	testutil.MustErrno(t, op.String(), r.Wait(t), syscall.ETIMEDOUT)
	c.mu.Lock()
	held := c.held
	c.held = nil
	c.mu.Unlock()
	return r, lower, held
}

// With a deadline, an I/O the lower device sits on ends with ETIMEDOUT;
// the lower bio is canceled so a delay target holding it drops it, and
// the caller's memory is never touched afterwards.
func TestStackedDeadline(t *testing.T) {
	t.Run("a held write is dropped, not written late", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		upper, lower, adapter := stackPair(t, "0 64 delay a 0 3600000", "0 64 linear lower 0", a)
		adapter.(dm.DeadlineSetter).SetIODeadline(50 * time.Millisecond) // long enough for the descent to reach the device on a loaded machine
		w := dmtest.NewRec(dm.OpWrite, 0, 512)
		fill(w.Buf, 1)
		upper.Submit(&w.Bio)
		testutil.MustErrno(t, "write", w.Wait(t), syscall.ETIMEDOUT)
		fill(w.Buf, 2) // the caller reuses its buffer
		// The lower bio is still held; a suspend releases it, and the
		// delay target drops it because it was canceled.
		if lower.Pending() != 1 {
			t.Fatalf("lower pending %d", lower.Pending())
		}
		if err := lower.Suspend(bg(), false); err != nil {
			t.Fatal(err)
		}
		if a.Writes() != 0 {
			t.Fatal("the timed-out write reached the device")
		}
	})
	t.Run("a late read lands in the bounce buffer", func(t *testing.T) {
		r, lower, held := timedOutBelow(t, dm.OpRead, 7)
		// Complete the lower clone late, scribbling on its buffer.
		if len(held) != 1 || &held[0].Buf[0] == &r.Buf[0] {
			t.Fatal("the lower clone reads into the caller's buffer")
		}
		fill(held[0].Buf, 9)
		held[0].End(nil)
		waitIdle(t, lower)
		if !bytes.Equal(r.Buf, fill(make([]byte, 512), 7)) {
			t.Fatal("a late completion touched the caller's buffer")
		}
	})
	t.Run("a late write sends what the caller had written", func(t *testing.T) {
		w, lower, held := timedOutBelow(t, dm.OpWrite, 3)
		fill(w.Buf, 4)
		if len(held) != 1 || held[0].Buf[0] != 3 {
			t.Fatalf("lower write carries %d", held[0].Buf[0])
		}
		held[0].End(nil)
		waitIdle(t, lower)
	})
	t.Run("I/O within the deadline is not timed out, and buffers are reused", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		upper, _, adapter := stackPair(t, "0 64 linear a 0", "0 64 linear lower 0", a)
		adapter.(dm.DeadlineSetter).SetIODeadline(time.Hour)
		a.SetCompletion(dmtest.CompleteAsync)
		for i := 0; i < 200; i++ {
			w := dmtest.NewRec(dm.OpWrite, uint64(i%64), 512)
			fill(w.Buf, byte(i))
			upper.Submit(&w.Bio)
			testutil.MustErrno(t, "write", w.Wait(t), 0)
			r := dmtest.NewRec(dm.OpRead, uint64(i%64), 512)
			upper.Submit(&r.Bio)
			testutil.MustErrno(t, "read", r.Wait(t), 0)
			if r.Buf[0] != byte(i) || r.Buf[511] != byte(i) {
				t.Fatalf("i=%d read %d", i, r.Buf[0])
			}
		}
		f := dmtest.NewRec(dm.OpFlush, 0, 0)
		upper.Submit(&f.Bio)
		testutil.MustErrno(t, "flush", f.Wait(t), 0)
	})
}
