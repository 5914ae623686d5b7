package dm_test

import (
	"bytes"
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

// Each target's table and status lines, in the kernel's format, and the
// table output loads back to itself.
func TestTargetFormats(t *testing.T) {
	for _, tc := range []struct {
		table  string
		lines  string // dmsetup table ("" = same as table)
		status string
	}{
		{"0 64 linear a 100", "", "0 64 linear"},
		{"0 64 striped 2 8 a 0 b 16", "", "0 64 striped 2 a b 1 AA"},
		{"0 64 error", "", "0 64 error"},
		{"0 64 error ignored args", "0 64 error", "0 64 error"},
		{"0 64 zero", "", "0 64 zero"},
		{"0 64 flakey a 0 1 2", "", "0 64 flakey"},
		{"0 64 flakey a 0 1 2 0", "", "0 64 flakey"},
		{"0 64 flakey a 8 1 2 1 drop_writes", "", "0 64 flakey"},
		{"0 64 flakey a 8 1 2 2 error_reads error_writes", "0 64 flakey a 8 1 2 2 error_writes error_reads", "0 64 flakey"},
		{"0 64 flakey a 8 1 2 6 corrupt_bio_byte 32 w 1 0 error_reads", "0 64 flakey a 8 1 2 6 error_reads corrupt_bio_byte 32 w 1 0", "0 64 flakey"},
		// dm-delay's INFO is "reads writes flushes" held, for every form.
		{"0 64 delay a 0 50", "", "0 64 delay 0 0 0"},
		{"0 64 delay a 0 50 b 10 100", "", "0 64 delay 0 0 0"},
		{"0 64 delay a 0 50 b 10 100 c 20 0", "", "0 64 delay 0 0 0"},
		{"0 64 delay a 0 0 a 0 0 a 0 0", "", "0 64 delay 0 0 0"},
		{"0 8 linear a 0\n8 8 zero", "", "0 8 linear\n8 8 zero"},
	} {
		t.Run(tc.table, func(t *testing.T) {
			a, b, c := dmtest.NewMemDevice("a", MiB), dmtest.NewMemDevice("b", MiB), dmtest.NewMemDevice("c", MiB)
			d := newDev(t, nil, tc.table, a, b, c)
			want := tc.lines
			if want == "" {
				want = tc.table
			}
			lines, _ := d.Table(false)
			if got := strings.Join(lines, "\n"); got != want {
				t.Fatalf("table %q, want %q", got, want)
			}
			st, _ := d.Status()
			if got := strings.Join(st, "\n"); got != tc.status {
				t.Fatalf("status %q, want %q", got, tc.status)
			}
			// Round trip.
			if err := d.Load(strings.Join(lines, "\n")); err != nil {
				t.Fatal(err)
			}
			again, _ := d.Table(true)
			if !reflect.DeepEqual(again, lines) {
				t.Fatalf("reloaded table %q, want %q", again, lines)
			}
		})
	}
}

func TestTargetConstructorErrors(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB) // 2048 sectors
	for _, tc := range []struct{ table, err string }{
		{"0 64 linear a x", "invalid device sector"},
		{"0 64 linear a 2000", "too small"},
		{"0 64 striped 0 8 a 0", "invalid stripe count"},
		{"0 64 striped 2 0 a 0 a 0", "invalid chunk_size"},
		{"0 63 striped 2 8 a 0 a 0", "not divisible by number of stripes"},
		{"0 60 striped 2 8 a 0 a 0", "not divisible by chunk size"},
		{"0 64 striped 2 8 a 0", "not enough destinations"},
		{"0 64 striped 2 8 a 0 a x", "invalid stripe 1 offset"},
		{"0 64 striped 2 8 a 0 a 2040", "too small"},
		{"0 64 flakey a 0 1", "invalid argument count"},
		{"0 64 flakey a 0 0 0", "interval is zero"},
		{"0 64 flakey a 0 x 1", "invalid up interval"},
		{"0 64 flakey a 0 1 1 1 bogus", "unrecognised flakey feature"},
		{"0 64 flakey a 0 1 1 2 drop_writes", "want 2 feature args"},
		{"0 64 flakey a 0 1 1 2 drop_writes drop_writes", "duplicated"},
		{"0 64 flakey a 0 1 1 2 drop_writes error_writes", "conflicts"},
		{"0 64 flakey a 0 1 1 3 corrupt_bio_byte 1 w", "requires parameters"},
		{"0 64 flakey a 0 1 1 5 corrupt_bio_byte 0 w 1 0", "invalid corrupt bio byte"},
		{"0 64 flakey a 0 1 1 5 corrupt_bio_byte 1 x 1 0", "direction"},
		{"0 64 flakey a 0 1 1 5 corrupt_bio_byte 1 w 256 0", "value"},
		{"0 64 flakey a 0 1 1 6 corrupt_bio_byte 1 w 1 0 drop_writes", "incompatible"},
		{"0 64 delay a 0", "3, 6 or 9"},
		{"0 64 delay a 0 10 a 0", "3, 6 or 9"},
		{"0 64 delay a x 10", "invalid device sector"},
		{"0 64 delay a 0 x", "invalid delay"},
		{"0 64 delay a 0 1 nosuch 0 1", "device lookup failed"},
	} {
		d := dm.NewDevice(dm.DeviceConfig{Name: "c", Open: dm.StaticOpener(a)})
		err := d.Load(tc.table)
		if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, syscall.EINVAL) {
			t.Errorf("Load(%q) = %v, want an EINVAL error containing %q", tc.table, err, tc.err)
		}
	}
}

func TestErrorAndZeroTargets(t *testing.T) {
	d := newDev(t, nil, "0 8 error\n8 8 zero")
	for _, tc := range []struct {
		op     dm.Op
		sector uint64
		n      int
		want   syscall.Errno
	}{
		{dm.OpRead, 0, 512, syscall.EIO}, {dm.OpWrite, 0, 512, syscall.EIO}, {dm.OpDiscard, 0, 512, syscall.EIO},
		{dm.OpFlush, 0, 0, syscall.EIO}, // the flush reaches the error target too
		{dm.OpRead, 8, 512, 0}, {dm.OpWrite, 8, 512, 0}, {dm.OpDiscard, 8, 4096, 0}, {dm.OpWriteZeroes, 8, 512, 0},
		{dm.OpRead, 6, 4 << 9, syscall.EIO}, // half error, half zero
	} {
		r := dmtest.NewRec(tc.op, tc.sector, tc.n)
		if tc.op.HasData() {
			fill(r.Buf, 0xff)
		}
		d.Submit(&r.Bio)
		testutil.MustErrno(t, tc.op.String(), r.Wait(t), tc.want)
		if tc.op == dm.OpRead && tc.want == 0 && !bytes.Equal(r.Buf, make([]byte, tc.n)) {
			t.Fatal("zero target read non-zero data")
		}
	}
}

func TestStripedErrorsAndEvents(t *testing.T) {
	a, b := dmtest.NewMemDevice("a", MiB), dmtest.NewMemDevice("b", MiB)
	d := newDev(t, nil, "0 64 striped 2 8 a 0 b 0", a, b)
	b.FailAll(syscall.EIO)
	ev := d.Event()
	for i := 0; i < dm.StripeErrorThreshold; i++ {
		r := dmtest.NewRec(dm.OpWrite, 8, 512) // chunk 1: stripe b
		d.Submit(&r.Bio)
		testutil.MustErrno(t, "write to b", r.Wait(t), syscall.EIO)
	}
	if st, _ := d.Status(); st[0] != "0 64 striped 2 a b 1 AD" {
		t.Fatalf("status %q", st)
	}
	if d.Event() != ev+1 {
		t.Fatalf("event %d, want %d after %d errors", d.Event(), ev+1, dm.StripeErrorThreshold)
	}
}

// flakeyDev makes a flakey device over a with a clock the test moves.
func flakeyDev(t *testing.T, args string) (*dm.Device, *dmtest.MemDevice, time.Time, *fakeClock) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 64 flakey a 8 "+args, a)
	clk := &fakeClock{}
	start := liveTarget[*dm.Flakey](t, d, 0).SetClock(clk.Now)
	clk.set(start)
	return d, a, start, clk
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func TestFlakeyUpDownCycle(t *testing.T) {
	d, a, start, clk := flakeyDev(t, "2 3")
	// up for [0,2) s, down for [2,5), up again at 5.
	for _, tc := range []struct {
		at   time.Duration
		down bool
	}{{0, false}, {1900 * time.Millisecond, false}, {2 * time.Second, true}, {4 * time.Second, true}, {4999 * time.Millisecond, true}, {5 * time.Second, false}, {7 * time.Second, true}} {
		clk.set(start.Add(tc.at))
		want := syscall.Errno(0)
		if tc.down {
			want = syscall.EIO // no features: reads and writes fail while down
		}
		for _, op := range []dm.Op{dm.OpRead, dm.OpWrite} {
			r := dmtest.NewRec(op, 0, 512)
			d.Submit(&r.Bio)
			testutil.MustErrno(t, op.String()+" at "+tc.at.String(), r.Wait(t), want)
		}
	}
	if a.Reads() != 3 || a.Writes() != 3 {
		t.Fatalf("device saw %d reads %d writes while up", a.Reads(), a.Writes())
	}
}

func TestFlakeyFeatures(t *testing.T) {
	type want struct {
		read, write syscall.Errno
		stored      bool // the write reached the device
	}
	for _, tc := range []struct {
		feats string
		down  want
	}{
		{"", want{syscall.EIO, syscall.EIO, false}},
		{"1 drop_writes", want{0, 0, false}},
		{"1 error_writes", want{0, syscall.EIO, false}},
		{"1 error_reads", want{syscall.EIO, 0, true}},
		{"2 error_reads drop_writes", want{syscall.EIO, 0, false}},
	} {
		t.Run(tc.feats, func(t *testing.T) {
			d, a, _, _ := flakeyDev(t, "0 5 "+tc.feats) // always down
			w := dmtest.NewRec(dm.OpWrite, 0, 512)
			fill(w.Buf, 7)
			d.Submit(&w.Bio)
			testutil.MustErrno(t, "write", w.Wait(t), tc.down.write)
			buf := make([]byte, 512)
			a.ReadAt(buf, 8<<9)
			if stored := buf[0] == 7; stored != tc.down.stored {
				t.Fatalf("write stored %v, want %v", stored, tc.down.stored)
			}
			r := dmtest.NewRec(dm.OpRead, 0, 512)
			d.Submit(&r.Bio)
			testutil.MustErrno(t, "read", r.Wait(t), tc.down.read)
		})
	}
}

func TestFlakeyCorrupt(t *testing.T) {
	t.Run("writes: the device gets the corrupted byte, the caller's buffer is untouched", func(t *testing.T) {
		d, a, _, _ := flakeyDev(t, "0 5 5 corrupt_bio_byte 3 w 200 0")
		w := dmtest.NewRec(dm.OpWrite, 0, 512)
		fill(w.Buf, 1)
		d.Submit(&w.Bio)
		testutil.MustErrno(t, "write", w.Wait(t), 0)
		buf := make([]byte, 512)
		a.ReadAt(buf, 8<<9)
		if buf[2] != 200 || buf[1] != 1 || buf[3] != 1 {
			t.Fatalf("device bytes %v", buf[:4])
		}
		if !bytes.Equal(w.Buf, fill(make([]byte, 512), 1)) {
			t.Fatal("the caller's buffer was corrupted")
		}
		r := dmtest.NewRec(dm.OpRead, 0, 512)
		d.Submit(&r.Bio)
		testutil.MustErrno(t, "read", r.Wait(t), 0) // reads pass while down
	})
	t.Run("reads: corrupted on the way back", func(t *testing.T) {
		d, a, _, _ := flakeyDev(t, "0 5 5 corrupt_bio_byte 1 r 9 0")
		a.WriteAt(fill(make([]byte, 512), 4), 8<<9)
		r := dmtest.NewRec(dm.OpRead, 0, 512)
		d.Submit(&r.Bio)
		testutil.MustErrno(t, "read", r.Wait(t), 0)
		if r.Buf[0] != 9 || r.Buf[1] != 4 {
			t.Fatalf("read bytes %v", r.Buf[:2])
		}
	})
	t.Run("only bios whose flags match", func(t *testing.T) {
		d, a, _, _ := flakeyDev(t, "0 5 5 corrupt_bio_byte 1 w 9 1") // flags 1 = FUA
		for _, fua := range []bool{false, true} {
			w := dmtest.NewRec(dm.OpWrite, 0, 512)
			if fua {
				w.Flags = dm.FUA
			}
			d.Submit(&w.Bio)
			testutil.MustErrno(t, "write", w.Wait(t), 0)
			buf := make([]byte, 1)
			a.ReadAt(buf, 8<<9)
			if (buf[0] == 9) != fua {
				t.Fatalf("fua %v: byte %d", fua, buf[0])
			}
		}
	})
	t.Run("not while up", func(t *testing.T) {
		d, a, _, _ := flakeyDev(t, "5 0 5 corrupt_bio_byte 1 w 9 0")
		w := dmtest.NewRec(dm.OpWrite, 0, 512)
		d.Submit(&w.Bio)
		testutil.MustErrno(t, "write", w.Wait(t), 0)
		buf := make([]byte, 1)
		a.ReadAt(buf, 8<<9)
		if buf[0] != 0 {
			t.Fatal("corrupted while up")
		}
	})
}

func TestDelayTarget(t *testing.T) {
	const forever = "3600000" // an hour: only a suspend releases
	t.Run("holds until a suspend releases everything at once", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		d := newDev(t, nil, "0 64 delay a 0 "+forever, a)
		var l ledger
		for i := uint64(0); i < 5; i++ {
			l.submit(d, dm.OpWrite, i, 512)
		}
		r := l.submit(d, dm.OpRead, 0, 512)
		l.submit(d, dm.OpFlush, 0, 0)
		l.submit(d, dm.OpDiscard, 8, 512) // the write class
		if st, _ := d.Status(); st[0] != "0 64 delay 1 6 1" {
			t.Fatalf("status %q", st)
		}
		if l.endedCount() != 0 || a.IOs() != 0 {
			t.Fatal("not held")
		}
		mustSuspend(t, d, false)
		l.waitAll(t)
		testutil.MustErrno(t, "read", r.Err(), 0)
		if a.Writes() != 5 || a.Reads() != 1 || a.IOs() != 8 {
			t.Fatalf("device got %d writes %d reads, %d I/Os", a.Writes(), a.Reads(), a.IOs())
		}
		if st, _ := d.Status(); st[0] != "0 64 delay 0 0 0" {
			t.Fatalf("status %q", st)
		}
		mustResume(t, d)
		// Delays again after resume.
		r2 := l.submit(d, dm.OpRead, 0, 512)
		if r2.Ended() {
			t.Fatal("not delayed after resume")
		}
		mustSuspend(t, d, true)
		l.waitAll(t)
	})
	t.Run("status counts the clones each class holds", func(t *testing.T) {
		// As dm-delay: read.ops, write.ops, flush.ops, incremented when a
		// bio is delayed and decremented when it is released; a class of
		// 0 ms delays nothing and counts nothing; with 3 or 6 arguments
		// the flush class copies the one before but counts its own.
		for _, tc := range []struct {
			args string
			want string // after a read, a write, a write-zeroes and a flush
		}{
			{"a 0 " + forever, "1 2 1"},
			{"a 0 0 a 0 " + forever, "0 2 1"},
			{"a 0 " + forever + " a 0 0", "1 0 0"},
			{"a 0 " + forever + " a 0 0 a 0 " + forever, "1 0 1"},
			{"a 0 0 a 0 0 a 0 " + forever, "0 0 1"},
		} {
			a := dmtest.NewMemDevice("a", MiB)
			d := newDev(t, nil, "0 64 delay "+tc.args, a)
			var l ledger
			l.submit(d, dm.OpRead, 0, 512)
			l.submit(d, dm.OpWrite, 1, 512)
			l.submit(d, dm.OpWriteZeroes, 2, 512)
			l.submit(d, dm.OpFlush, 0, 0)
			if st, _ := d.Status(); st[0] != "0 64 delay "+tc.want {
				t.Fatalf("delay %s: status %q, want %q", tc.args, st[0], "0 64 delay "+tc.want)
			}
			mustSuspend(t, d, false)
			l.waitAll(t)
			if st, _ := d.Status(); st[0] != "0 64 delay 0 0 0" {
				t.Fatalf("delay %s: status after release %q", tc.args, st[0])
			}
		}
	})
	t.Run("the timer releases", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		d := newDev(t, nil, "0 64 delay a 0 1 a 0 2 a 0 3", a)
		var l ledger
		l.submit(d, dm.OpRead, 0, 512)
		l.submit(d, dm.OpWrite, 1, 512)
		l.submit(d, dm.OpFlush, 0, 0)
		l.submit(d, dm.OpWrite, 2, 512)
		l.waitAll(t)
		if a.IOs() != 4 {
			t.Fatalf("device got %d I/Os", a.IOs())
		}
	})
	t.Run("classes go to their own devices", func(t *testing.T) {
		a, b, c := newCapDev("a", MiB), newCapDev("b", MiB), newCapDev("c", MiB)
		d := newDev(t, nil, "0 64 delay a 10 0 b 20 0 c 30 0", a, b, c)
		var l ledger
		l.submit(d, dm.OpRead, 1, 512)
		l.submit(d, dm.OpWrite, 2, 512)
		l.submit(d, dm.OpDiscard, 3, 512)
		l.submit(d, dm.OpFlush, 0, 0)
		l.waitAll(t)
		got := append(append(a.take(), b.take()...), c.take()...)
		want := []capIO{{"a", dm.OpRead, 0, 11, 512, 0}, {"b", dm.OpWrite, 0, 22, 512, 0}, {"b", dm.OpDiscard, 0, 23, 512, 0}, {"c", dm.OpFlush, 0, 0, 0, 0}}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %v\nwant %v", got, want)
		}
	})
	t.Run("a canceled bio is dropped on release", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		d := newDev(t, nil, "0 64 delay a 0 "+forever, a)
		r := dmtest.NewRec(dm.OpWrite, 0, 512)
		d.Submit(&r.Bio)
		r.Cancel()
		mustSuspend(t, d, false)
		testutil.MustErrno(t, "canceled write", r.Wait(t), syscall.ECANCELED)
		if a.Writes() != 0 {
			t.Fatal("the canceled write was submitted")
		}
	})
	t.Run("released on the bio's executor", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		loop := dmtest.NewLoop(t)
		onLoop := map[uint64]bool{}
		var mu sync.Mutex
		a.SetSubmitHook(func(c *dm.Clone) { mu.Lock(); onLoop[c.Sector] = loop.OnLoop(); mu.Unlock() })
		d := newDev(t, nil, "0 64 delay a 0 "+forever, a)
		r := dmtest.NewRec(dm.OpWrite, 0, 512)
		r.Exec = loop
		d.Submit(&r.Bio)
		r2 := dmtest.NewRec(dm.OpWrite, 1, 512)
		d.Submit(&r2.Bio)
		mustSuspend(t, d, false)
		r.Wait(t)
		r2.Wait(t)
		mu.Lock()
		defer mu.Unlock()
		if !reflect.DeepEqual(onLoop, map[uint64]bool{0: true, 1: false}) {
			t.Fatalf("submitted on the loop: %v", onLoop)
		}
	})
	t.Run("an interrupted suspend delays again", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		d := newDev(t, nil, "0 64 delay a 0 "+forever, a)
		ctx, cancel := context.WithCancel(bg())
		cancel()
		if err := d.Suspend(ctx, false); !errors.Is(err, dm.ErrInterrupted) {
			t.Fatal(err)
		}
		r := dmtest.NewRec(dm.OpRead, 0, 512)
		d.Submit(&r.Bio)
		if r.Ended() {
			t.Fatal("not delayed")
		}
		mustSuspend(t, d, false)
		r.Wait(t)
	})
}
