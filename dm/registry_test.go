package dm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

// regFixture is a registry over named MemDevices whose opens and closes
// are counted.
type regFixture struct {
	reg  *dm.Registry
	devs map[string]*dmtest.MemDevice
	mu   sync.Mutex
	open map[string]int // guarded by mu: currently open
}

func newRegFixture(t *testing.T, names ...string) *regFixture {
	f := &regFixture{devs: map[string]*dmtest.MemDevice{}, open: map[string]int{}}
	for _, n := range names {
		f.devs[n] = dmtest.NewMemDevice(n, 4*MiB)
	}
	opener := func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		d, ok := f.devs[name]
		if !ok {
			return nil, nil, fmt.Errorf("open %s: %w", name, syscall.ENOENT)
		}
		f.mu.Lock()
		f.open[name]++
		f.mu.Unlock()
		return d, dm.CloserFunc(func() error {
			f.mu.Lock()
			f.open[name]--
			f.mu.Unlock()
			return nil
		}), nil
	}
	f.reg = dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Targets: testTargets(t, nil), Open: opener})
	return f
}

func (f *regFixture) opened(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.open[name]
}

func (f *regFixture) create(t *testing.T, name, table string) *dm.Device {
	t.Helper()
	d, err := f.reg.Create(bg(), name, "", table)
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	return d
}

func TestRegistryCreateGetList(t *testing.T) {
	f := newRegFixture(t, "a")
	d := f.create(t, "vol1", "0 8 linear a 0")
	if _, err := f.reg.Create(bg(), "vol0", "UUID-0", "# no table\n"); err != nil {
		t.Fatal(err)
	}
	if got := f.reg.List(); !reflect.DeepEqual(got, []string{"vol0", "vol1"}) {
		t.Fatalf("List = %q", got)
	}
	if g, err := f.reg.Get("vol1"); err != nil || g != d {
		t.Fatalf("Get = %p, %v", g, err)
	}
	if _, err := f.reg.Get("nope"); !errors.Is(err, dm.ErrNoDevice) || !errors.Is(err, syscall.ENXIO) {
		t.Fatalf("Get(nope): %v", err)
	}
	v0, _ := f.reg.Get("vol0")
	if i := v0.Info(); i.TablesPresent() != "None" || i.Suspended || i.UUID != "UUID-0" {
		t.Fatalf("table-less device: %+v", i)
	}
	for _, tc := range []struct {
		name, uuid string
		err        error
	}{
		{"vol1", "", dm.ErrExists},
		{"vol2", "UUID-0", dm.ErrExists},
		{"", "", dm.ErrBadName},
		{"a/b", "", dm.ErrBadName},
		{"..", "", dm.ErrBadName},
		{"with space", "", dm.ErrBadName},
	} {
		if _, err := f.reg.Create(bg(), tc.name, tc.uuid, "0 8 zero"); !errors.Is(err, tc.err) {
			t.Errorf("Create(%q, %q): %v, want %v", tc.name, tc.uuid, err, tc.err)
		}
	}
	if errors.Is(dm.ErrExists, syscall.EEXIST) != true {
		t.Fatal("ErrExists is not EEXIST")
	}
}

func TestRegistryCreateFailureLeavesNothing(t *testing.T) {
	f := newRegFixture(t, "a")
	for _, table := range []string{
		"0 8 linear a 0\n8 8 linear missing 0", // constructor error after a open
		"0 8 linear a 0\n8 8 nosuchtype",
		"0 8 linear a",
	} {
		if _, err := f.reg.Create(bg(), "x", "", table); err == nil {
			t.Fatalf("create with %q succeeded", table)
		}
		if len(f.reg.List()) != 0 || f.opened("a") != 0 {
			t.Fatalf("left behind: %q, a open %d", f.reg.List(), f.opened("a"))
		}
	}
	// Without a table, Create makes a table-less device.
	if d, err := f.reg.Create(bg(), "x", "", "  \n"); err != nil || d.Info().Live {
		t.Fatalf("create without table: %v", err)
	}
}

func TestRegistryRemove(t *testing.T) {
	t.Run("plain", func(t *testing.T) {
		f := newRegFixture(t, "a")
		d := f.create(t, "v", "0 8 linear a 0\n8 8 linear a 8")
		if f.opened("a") != 1 {
			t.Fatalf("a opened %d times; one pool entry expected", f.opened("a"))
		}
		if err := f.reg.Remove(bg(), "v", false, false); err != nil {
			t.Fatal(err)
		}
		if len(f.reg.List()) != 0 || f.opened("a") != 0 {
			t.Fatalf("after remove: %q, a open %d", f.reg.List(), f.opened("a"))
		}
		r := dmtest.NewRec(dm.OpRead, 0, 512)
		d.Submit(&r.Bio)
		testutil.MustErrno(t, "I/O to a removed device", r.Wait(t), syscall.EIO)
		if err := d.Open(); !errors.Is(err, dm.ErrRemoved) {
			t.Fatalf("open of a removed device: %v", err)
		}
		if err := d.Load("0 8 zero"); !errors.Is(err, dm.ErrRemoved) {
			t.Fatalf("load into a removed device: %v", err)
		}
		if err := f.reg.Remove(bg(), "v", false, false); !errors.Is(err, dm.ErrNoDevice) {
			t.Fatalf("second remove: %v", err)
		}
	})
	t.Run("busy, deferred, cancel", func(t *testing.T) {
		f := newRegFixture(t, "a")
		d := f.create(t, "v", "0 8 linear a 0")
		if err := d.Open(); err != nil {
			t.Fatal(err)
		}
		err := f.reg.Remove(bg(), "v", false, false)
		if !errors.Is(err, dm.ErrBusy) || !errors.Is(err, syscall.EBUSY) {
			t.Fatalf("remove while open: %v", err)
		}
		if err := f.reg.Remove(bg(), "v", false, true); err != nil {
			t.Fatalf("deferred remove: %v", err)
		}
		if i := d.Info(); !i.DeferredRemove || len(f.reg.List()) != 1 {
			t.Fatalf("not marked: %+v", i)
		}
		if _, err := d.Message(bg(), 0, []string{"@cancel_deferred_remove"}); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Message(bg(), 0, []string{"@cancel_deferred_remove"}); !errors.Is(err, syscall.ENXIO) {
			t.Fatalf("second cancel: %v", err)
		}
		if err := d.Close(); err != nil || len(f.reg.List()) != 1 {
			t.Fatalf("close after cancel removed it: %v", err)
		}
		// Deferred again; the last close removes it.
		d.Open()
		d.Open()
		if err := f.reg.Remove(bg(), "v", false, true); err != nil {
			t.Fatal(err)
		}
		d.Close()
		if len(f.reg.List()) != 1 {
			t.Fatal("removed before the last close")
		}
		if err := d.Close(); err != nil {
			t.Fatal(err)
		}
		// The last close hands the removal to a goroutine of the
		// registry's.
		if err := f.reg.Wait(bg()); err != nil {
			t.Fatal(err)
		}
		if len(f.reg.List()) != 0 || f.opened("a") != 0 {
			t.Fatalf("after last close: %q", f.reg.List())
		}
		if !testutil.Closed(d.Removed()) {
			t.Fatal("Removed not closed after the removal")
		}
	})
	t.Run("force fails held I/O under its users", func(t *testing.T) {
		f := newRegFixture(t, "a")
		d := f.create(t, "v", "0 8 qpath a queue_if_no_path")
		if err := d.Open(); err != nil { // an export holds it
			t.Fatal(err)
		}
		if _, err := d.Message(bg(), 0, []string{"fail_path"}); err != nil {
			t.Fatal(err)
		}
		var l ledger
		held := l.submit(d, dm.OpWrite, 0, 512)
		if held.Ended() {
			t.Fatal("not queued")
		}
		if err := f.reg.Remove(bg(), "v", true, false); err != nil {
			t.Fatal(err)
		}
		testutil.MustErrno(t, "queued write", held.Wait(t), syscall.EIO)
		if len(f.reg.List()) != 0 || f.opened("a") != 0 {
			t.Fatal("not removed")
		}
		late := l.submit(d, dm.OpRead, 0, 512)
		testutil.MustErrno(t, "I/O after a forced remove", late.Wait(t), syscall.EIO)
		if err := d.Close(); err != nil {
			t.Fatalf("the user's close: %v", err)
		}
		l.checkOnce(t)
	})
	t.Run("force with I/O stuck below gives up with the context", func(t *testing.T) {
		f := newRegFixture(t, "a")
		d := f.create(t, "v", "0 8 linear a 0")
		f.devs["a"].Hang(true)
		stuck := dmtest.NewRec(dm.OpRead, 0, 512)
		d.Submit(&stuck.Bio)
		ctx, cancel := context.WithTimeout(bg(), 10*time.Millisecond)
		defer cancel()
		err := f.reg.Remove(ctx, "v", true, false)
		if !errors.Is(err, dm.ErrInterrupted) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("forced remove with stuck I/O: %v", err)
		}
		if len(f.reg.List()) != 1 {
			t.Fatal("removed with I/O in flight")
		}
		// The swap needed the drain: the error table waits in the
		// inactive slot, and the device is still live and usable.
		if i := d.Info(); !i.Live || !i.Inactive || i.Suspended {
			t.Fatalf("after the failed forced remove: %+v", i)
		}
		f.devs["a"].Hang(false)
		f.devs["a"].Release()
		testutil.MustErrno(t, "stuck bio", stuck.Wait(t), 0)
		if err := f.reg.Remove(bg(), "v", true, false); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("deferred I/O of a suspended device ends with EIO", func(t *testing.T) {
		f := newRegFixture(t, "a")
		d := f.create(t, "v", "0 8 linear a 0")
		mustSuspend(t, d, true)
		r := dmtest.NewRec(dm.OpWrite, 0, 512)
		d.Submit(&r.Bio)
		if err := f.reg.Remove(bg(), "v", false, false); err != nil {
			t.Fatal(err)
		}
		testutil.MustErrno(t, "deferred write", r.Wait(t), syscall.EIO)
		if f.devs["a"].IOs() != 0 {
			t.Fatal("deferred write reached the device")
		}
	})
}

func TestRegistryRename(t *testing.T) {
	f := newRegFixture(t, "a")
	d := f.create(t, "old", "0 8 zero")
	f.create(t, "other", "0 8 zero")
	ev := d.Event()
	if err := f.reg.Rename("old", "other"); !errors.Is(err, dm.ErrExists) {
		t.Fatalf("rename onto an existing name: %v", err)
	}
	if err := f.reg.Rename("nope", "x"); !errors.Is(err, dm.ErrNoDevice) {
		t.Fatalf("rename of a missing device: %v", err)
	}
	if err := f.reg.Rename("old", "new"); err != nil {
		t.Fatal(err)
	}
	if g, _ := f.reg.Get("new"); g != d || d.Name() != "new" || d.Event() == ev {
		t.Fatalf("after rename: %v %q", g, d.Name())
	}
	if _, err := f.reg.Get("old"); err == nil {
		t.Fatal("old name still there")
	}
}

// A table may name another device of the registry as /dev/mapper/NAME.
func TestRegistryStacking(t *testing.T) {
	f := newRegFixture(t, "a")
	lower := f.create(t, "lower", "0 64 linear a 100")
	upper := f.create(t, "upper", "0 32 linear /dev/mapper/lower 16\n32 32 zero")
	if lower.Info().OpenCount != 1 {
		t.Fatalf("lower open count %d", lower.Info().OpenCount)
	}
	w := dmtest.NewRec(dm.OpWrite, 30, 4<<9) // split across upper's targets
	fill(w.Buf, 0x5a)
	upper.Submit(&w.Bio)
	testutil.MustErrno(t, "write", w.Wait(t), 0)
	buf := make([]byte, 1024)
	f.devs["a"].ReadAt(buf, (100+16+30)<<9)
	if buf[0] != 0x5a || buf[1023] != 0x5a {
		t.Fatal("stacked write not on the bottom device")
	}
	if lines, _ := upper.Table(false); lines[0] != "0 32 linear /dev/mapper/lower 16" {
		t.Fatalf("table %q", lines)
	}
	// Lower can't go while upper uses it.
	if err := f.reg.Remove(bg(), "lower", false, false); !errors.Is(err, dm.ErrBusy) {
		t.Fatalf("remove of a stacked-on device: %v", err)
	}
	// No loops.
	if err := lower.Load("0 64 linear /dev/mapper/upper 0"); !errors.Is(err, dm.ErrLoop) {
		t.Fatalf("lower over upper: %v", err)
	}
	if err := lower.Load("0 64 linear /dev/mapper/lower 0"); !errors.Is(err, dm.ErrLoop) {
		t.Fatalf("lower over itself: %v", err)
	}
	if err := upper.Load("0 64 linear /dev/mapper/nosuch 0"); err == nil {
		t.Fatal("unknown mapper device opened")
	}
	// Lower marked for deferred removal goes when upper lets go of it.
	if err := f.reg.Remove(bg(), "lower", false, true); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.Remove(bg(), "upper", false, false); err != nil {
		t.Fatal(err)
	}
	if err := f.reg.Wait(bg()); err != nil {
		t.Fatal(err)
	}
	if len(f.reg.List()) != 0 || f.opened("a") != 0 {
		t.Fatalf("left: %q, a open %d", f.reg.List(), f.opened("a"))
	}
}

func TestRegistryRemoveAll(t *testing.T) {
	f := newRegFixture(t, "a")
	f.create(t, "bottom", "0 64 linear a 0")
	f.create(t, "mid", "0 64 linear /dev/mapper/bottom 0")
	top := f.create(t, "top", "0 64 linear /dev/mapper/mid 0")
	top.Open() // an export
	f.create(t, "solo", "0 8 zero")
	if err := f.reg.RemoveAll(bg()); err != nil {
		t.Fatal(err)
	}
	if len(f.reg.List()) != 0 || f.opened("a") != 0 {
		t.Fatalf("left: %q", f.reg.List())
	}
}

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
	mustResume(t, upper)
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
	mustSuspend(t, lower, true)
	r := dmtest.NewRec(dm.OpRead, 100, 512)
	upper.Submit(&r.Bio)
	if r.Ended() || lower.Stats().Deferred != 1 || upper.Pending() != 1 {
		t.Fatal("upper I/O not deferred by the lower device")
	}
	mustResume(t, lower)
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
		mustSuspend(t, lower, false)
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

// Deps lists what the live table opened, each once, a device of the
// registry by its current name; the inactive table does not count.
func TestDeviceDeps(t *testing.T) {
	f := newRegFixture(t, "a", "b")
	lower := f.create(t, "lower", "0 64 linear a 0")
	upper := f.create(t, "upper", "0 32 linear /dev/mapper/lower 0\n32 32 linear b 0\n64 32 linear a 100\n96 32 zero")
	if got := lower.Deps(); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("lower's deps %q", got)
	}
	if got := upper.Deps(); !reflect.DeepEqual(got, []string{"/dev/mapper/lower", "b", "a"}) {
		t.Fatalf("upper's deps %q", got)
	}
	if err := f.reg.Rename("lower", "lower2"); err != nil {
		t.Fatal(err)
	}
	if got := upper.Deps(); !reflect.DeepEqual(got, []string{"/dev/mapper/lower2", "b", "a"}) {
		t.Fatalf("upper's deps after the rename %q", got)
	}
	if err := lower.Load("0 64 linear b 0"); err != nil {
		t.Fatal(err)
	}
	if got := lower.Deps(); !reflect.DeepEqual(got, []string{"a"}) {
		t.Fatalf("deps with an inactive table %q", got)
	}
	none, err := f.reg.Create(bg(), "none", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if got := none.Deps(); got != nil {
		t.Fatalf("deps without a table %q", got)
	}
}
