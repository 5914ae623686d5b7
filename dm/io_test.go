package dm_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

// TestSplit checks where bios are cut: exactly at target boundaries and
// at MaxIOSectors counted from each target's start.
func TestSplit(t *testing.T) {
	type io = capIO
	for _, tc := range []struct {
		name  string
		table string
		bio   capIO
		want  []io
	}{
		{"inside one target", "0 100 linear a 1000", capIO{Op: dm.OpRead, Sector: 10, Len: 8 << 9},
			[]io{{"a", dm.OpRead, 0, 1010, 8 << 9, 0}}},
		{"across a boundary", "0 100 linear a 0\n100 100 linear b 500", capIO{Op: dm.OpWrite, Sector: 96, Len: 8 << 9},
			[]io{{"a", dm.OpWrite, 0, 96, 4 << 9, 0}, {"b", dm.OpWrite, 0, 500, 4 << 9, 0}}},
		{"across three targets", "0 10 linear a 0\n10 1 linear b 0\n11 10 linear c 0", capIO{Op: dm.OpRead, Sector: 9, Len: 3 << 9},
			[]io{{"a", dm.OpRead, 0, 9, 1 << 9, 0}, {"b", dm.OpRead, 0, 0, 1 << 9, 0}, {"c", dm.OpRead, 0, 0, 1 << 9, 0}}},
		{"last sector", "0 100 linear a 0", capIO{Op: dm.OpRead, Sector: 99, Len: 1 << 9},
			[]io{{"a", dm.OpRead, 0, 99, 1 << 9, 0}}},
		{"striped chunks", "0 64 striped 2 8 a 0 b 100", capIO{Op: dm.OpWrite, Sector: 4, Len: 24 << 9},
			[]io{{"a", dm.OpWrite, 0, 4, 4 << 9, 0}, {"b", dm.OpWrite, 0, 100, 8 << 9, 0}, {"a", dm.OpWrite, 0, 8, 8 << 9, 0}, {"b", dm.OpWrite, 0, 108, 4 << 9, 0}}},
		{"chunks count from the target start", "0 10 linear c 0\n10 32 striped 2 8 a 0 b 0", capIO{Op: dm.OpRead, Sector: 12, Len: 10 << 9},
			[]io{{"a", dm.OpRead, 0, 2, 6 << 9, 0}, {"b", dm.OpRead, 0, 0, 4 << 9, 0}}},
		{"FUA passes through", "0 100 linear a 0\n100 100 linear b 0", capIO{Op: dm.OpWrite, Flags: dm.FUA, Sector: 99, Len: 2 << 9},
			[]io{{"a", dm.OpWrite, dm.FUA, 99, 1 << 9, 0}, {"b", dm.OpWrite, dm.FUA, 0, 1 << 9, 0}}},
		{"discard split like data", "0 32 striped 2 8 a 0 b 0\n32 8 linear c 0", capIO{Op: dm.OpDiscard, Sector: 6, Len: 30 << 9},
			[]io{{"a", dm.OpDiscard, 0, 6, 2 << 9, 0}, {"b", dm.OpDiscard, 0, 0, 8 << 9, 0}, {"a", dm.OpDiscard, 0, 8, 8 << 9, 0}, {"b", dm.OpDiscard, 0, 8, 8 << 9, 0}, {"c", dm.OpDiscard, 0, 0, 4 << 9, 0}}},
		{"write-zeroes split like data", "0 8 linear a 0\n8 8 linear b 0", capIO{Op: dm.OpWriteZeroes, Flags: dm.NoUnmap, Sector: 0, Len: 16 << 9},
			[]io{{"a", dm.OpWriteZeroes, dm.NoUnmap, 0, 8 << 9, 0}, {"b", dm.OpWriteZeroes, dm.NoUnmap, 0, 8 << 9, 0}}},
		{"empty flush reaches every target, once per stripe", "0 10 linear a 0\n10 48 striped 3 8 a 0 b 0 c 0\n58 10 zero\n68 10 linear c 0", capIO{Op: dm.OpFlush},
			[]io{{"a", dm.OpFlush, 0, 0, 0, 0}, {"a", dm.OpFlush, 0, 0, 0, 0}, {"b", dm.OpFlush, 0, 0, 0, 1}, {"c", dm.OpFlush, 0, 0, 0, 2}, {"c", dm.OpFlush, 0, 0, 0, 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var devs []dm.BlockDevice
			var caps []*capDev
			for _, n := range []string{"a", "b", "c"} {
				c := newCapDev(n, 1*MiB)
				devs, caps = append(devs, c), append(caps, c)
			}
			d := newDev(t, nil, tc.table, devs...)
			r := dmtest.NewRec(tc.bio.Op, tc.bio.Sector, int(tc.bio.Len))
			r.Flags = tc.bio.Flags
			d.Submit(&r.Bio)
			if err := r.Wait(t); err != nil {
				t.Fatalf("bio: %v", err)
			}
			var got []io
			for _, c := range caps {
				got = append(got, c.take()...)
			}
			sortIO(got)
			sortIO(tc.want)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("clones\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

func sortIO(s []capIO) {
	key := func(c capIO) string { return fmt.Sprintf("%s %d %d %d", c.Dev, c.Index, c.Sector, c.Op) }
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && key(s[j]) < key(s[j-1]); j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// Data lands where the split says: write a pattern across targets with
// MemDevices behind them and read it back, and read each device directly.
func TestSplitData(t *testing.T) {
	a, b := dmtest.NewMemDevice("a", MiB), dmtest.NewMemDevice("b", MiB)
	d := newDev(t, nil, "0 16 linear a 8\n16 32 striped 2 8 a 64 b 0", a, b)
	w := dmtest.NewRec(dm.OpWrite, 12, 20<<9)
	for i := range w.Buf {
		w.Buf[i] = byte(i >> 9) // one value per sector: sector s of the bio holds s
	}
	d.Submit(&w.Bio)
	if err := w.Wait(t); err != nil {
		t.Fatal(err)
	}
	r := dmtest.NewRec(dm.OpRead, 12, 20<<9)
	d.Submit(&r.Bio)
	if err := r.Wait(t); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Buf, w.Buf) {
		t.Fatal("read back differs")
	}
	// Device sector of bio sector s: linear 12..15 → a 20..23; striped rel
	// 0..7 → a 64..71, rel 8..15 → b 0..7.
	for _, tc := range []struct {
		dev    *dmtest.MemDevice
		sector int64
		bioSec byte
	}{{a, 20, 0}, {a, 23, 3}, {a, 64, 4}, {a, 71, 11}, {b, 0, 12}, {b, 7, 19}} {
		buf := make([]byte, 512)
		tc.dev.ReadAt(buf, tc.sector<<9)
		if buf[0] != tc.bioSec || buf[511] != tc.bioSec {
			t.Errorf("%s sector %d holds %d, want %d", tc.dev.Name(), tc.sector, buf[0], tc.bioSec)
		}
	}
}

func TestBioValidation(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 100 linear a 0", a)
	empty := dm.NewDevice(dm.DeviceConfig{Name: "empty"})
	for _, tc := range []struct {
		name string
		dev  *dm.Device
		bio  func() *dmtest.Rec
		want syscall.Errno
	}{
		{"ok", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpRead, 0, 512) }, 0},
		{"up to the end", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpRead, 96, 4<<9) }, 0},
		{"beyond the end", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpRead, 97, 4<<9) }, syscall.EIO},
		{"starts beyond the end", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpWrite, 1000, 512) }, syscall.EIO},
		{"sector overflow", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpRead, ^uint64(0), 512) }, syscall.EIO},
		{"no live table", empty, func() *dmtest.Rec { return dmtest.NewRec(dm.OpRead, 0, 512) }, syscall.EIO},
		{"no live table flush", empty, func() *dmtest.Rec { return dmtest.NewRec(dm.OpFlush, 0, 0) }, syscall.EIO},
		{"length not in sectors", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpRead, 0, 100) }, syscall.EINVAL},
		{"zero length", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpWrite, 0, 0) }, syscall.EINVAL},
		{"buffer length mismatch", d, func() *dmtest.Rec { r := dmtest.NewRec(dm.OpRead, 0, 1024); r.Buf = r.Buf[:512]; return r }, syscall.EINVAL},
		{"flush with a length", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpFlush, 0, 512) }, syscall.EINVAL},
		{"bad op", d, func() *dmtest.Rec { r := dmtest.NewRec(dm.OpRead, 0, 512); r.Op = 99; return r }, syscall.EINVAL},
		{"discard", d, func() *dmtest.Rec { return dmtest.NewRec(dm.OpDiscard, 0, 4096) }, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.bio()
			tc.dev.Submit(&r.Bio)
			testutil.MustErrno(t, "bio", r.Wait(t), tc.want)
			if p := tc.dev.Pending(); p != 0 {
				t.Fatalf("pending %d after the bio ended", p)
			}
		})
	}
	if s := d.Stats(); s.Errors == 0 || s.Reads == 0 {
		t.Fatalf("stats not counted: %+v", s)
	}
}

func TestReadOnlyDevice(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 100 linear a 0", a)
	d.SetReadOnly(true)
	for _, tc := range []struct {
		op   dm.Op
		n    int
		want syscall.Errno
	}{{dm.OpRead, 512, 0}, {dm.OpWrite, 512, syscall.EPERM}, {dm.OpDiscard, 512, syscall.EPERM}, {dm.OpWriteZeroes, 512, syscall.EPERM}, {dm.OpFlush, 0, 0}} {
		r := dmtest.NewRec(tc.op, 0, tc.n)
		d.Submit(&r.Bio)
		testutil.MustErrno(t, tc.op.String(), r.Wait(t), tc.want)
	}
	if a.Writes() != 0 {
		t.Fatal("a write reached the device")
	}
	if !d.Info().ReadOnly || !d.ReadOnly() {
		t.Fatal("read-only flag not reported")
	}
}

// TestAggregation: the bio ends after its last piece; any failed piece
// fails it (first error wins); a requeue supersedes errors in either
// order.
func TestAggregation(t *testing.T) {
	type piece struct {
		mapRes dm.MapResult
		devErr error
		end    func(c *dm.Clone, err error) (dm.EndIOResult, error)
	}
	ok := piece{}
	devErr := func(e syscall.Errno) piece { return piece{devErr: e} }
	for _, tc := range []struct {
		name    string
		p0, p1  piece
		noflush bool // submit during a noflush suspend's wait
		want    syscall.Errno
		pushed  bool // ends up on pushback (re-issued later)
	}{
		{"both succeed", ok, ok, false, 0, false},
		{"second fails", ok, devErr(syscall.EIO), false, syscall.EIO, false},
		{"first error wins", devErr(syscall.ENOSPC), devErr(syscall.EIO), false, syscall.ENOSPC, false},
		{"kill", piece{mapRes: dm.MapKill}, ok, false, syscall.EIO, false},
		{"requeue outside suspend is EIO", piece{mapRes: dm.MapRequeue}, ok, false, syscall.EIO, false},
		{"requeue beats a later ENOSPC", piece{mapRes: dm.MapRequeue}, devErr(syscall.ENOSPC), false, syscall.EIO, false},
		{"requeue beats an earlier ENOSPC", devErr(syscall.ENOSPC), piece{mapRes: dm.MapRequeue}, false, syscall.EIO, false},
		{"endio changes the error", piece{devErr: syscall.EIO, end: func(c *dm.Clone, err error) (dm.EndIOResult, error) { return dm.EndIODone, syscall.ENOSPC }}, ok, false, syscall.ENOSPC, false},
		{"endio clears the error", piece{devErr: syscall.EIO, end: func(c *dm.Clone, err error) (dm.EndIOResult, error) { return dm.EndIODone, nil }}, ok, false, 0, false},
		{"endio non-errno error is EIO", piece{end: func(c *dm.Clone, err error) (dm.EndIOResult, error) { return dm.EndIODone, errors.New("x") }}, ok, false, syscall.EIO, false},
		{"endio wrapped errno", piece{end: func(c *dm.Clone, err error) (dm.EndIOResult, error) {
			return dm.EndIODone, fmt.Errorf("w: %w", syscall.ENOSPC)
		}}, ok, false, syscall.ENOSPC, false},
		{"endio requeue", piece{end: func(c *dm.Clone, err error) (dm.EndIOResult, error) { return dm.EndIORequeue, nil }}, ok, false, syscall.EIO, false},
		{"noflush: requeue after error is pushed back", devErr(syscall.ENOSPC), piece{mapRes: dm.MapRequeue}, true, 0, true},
		{"noflush: requeue before error is pushed back", piece{mapRes: dm.MapRequeue}, devErr(syscall.ENOSPC), true, 0, true},
		{"noflush: endio requeue is pushed back", devErr(syscall.EIO), piece{end: func(c *dm.Clone, err error) (dm.EndIOResult, error) { return dm.EndIORequeue, nil }}, true, 0, true},
		{"noflush: plain error still fails", devErr(syscall.ENOSPC), ok, true, syscall.ENOSPC, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := newCapDev("a", MiB), newCapDev("b", MiB)
			d := newDev(t, nil, "0 8 fn a\n8 8 fn b", a, b)
			first := true
			for i, p := range []piece{tc.p0, tc.p1} {
				ft := liveTarget[*fnTarget](t, d, i)
				p := p
				ft.mapFn = func(c *dm.Clone) dm.MapResult {
					if p.mapRes == dm.MapRequeue && !first {
						return dm.MapRemapped // only the first mapping requeues
					}
					return p.mapRes
				}
				ft.endFn = p.end
				[]*capDev{a, b}[i].setErr(p.devErr)
			}
			r := dmtest.NewRec(dm.OpWrite, 4, 8<<9)
			if tc.noflush {
				// Submit from presuspend: NOFLUSH_SUSPENDING is set and
				// BLOCK_IO not yet, so the bio is mapped during the
				// noflush suspend.
				liveTarget[*fnTarget](t, d, 0).preFn = func() { d.Submit(&r.Bio) }
				mustSuspend(t, d, true)
				first = false
				if tc.pushed {
					if r.Ended() {
						t.Fatalf("bio ended (%v) instead of being pushed back", r.Err())
					}
					if s := d.Stats(); s.Deferred != 1 || s.Pushback != 0 || s.Pushbacks != 1 {
						t.Fatalf("after the suspend: %+v", s)
					}
					// Resume re-issues it; this time it goes through.
					a.setErr(nil)
					b.setErr(nil)
					liveTarget[*fnTarget](t, d, 0).endFn = nil
					liveTarget[*fnTarget](t, d, 1).endFn = nil
				}
				mustResume(t, d)
			} else {
				d.Submit(&r.Bio)
			}
			testutil.MustErrno(t, "bio", r.Wait(t), tc.want)
			if r.Ends() != 1 {
				t.Fatal("ended more than once")
			}
		})
	}
}

// Completions may arrive inside Submit, from the bio's loop, or from any
// goroutine; splitting at many places, every bio ends exactly once.
func TestCompletionContexts(t *testing.T) {
	for _, mode := range []dmtest.Completion{dmtest.CompleteSync, dmtest.CompleteAsync, dmtest.CompleteExec} {
		t.Run(fmt.Sprint(mode), func(t *testing.T) {
			a, b := dmtest.NewMemDevice("a", 4*MiB), dmtest.NewMemDevice("b", 4*MiB)
			a.SetCompletion(mode)
			b.SetCompletion(mode)
			d := newDev(t, nil, "0 64 linear a 0\n64 2048 striped 2 8 a 1024 b 0", a, b)
			loop := dmtest.NewLoop(t)
			var l ledger
			var wg sync.WaitGroup
			for g := 0; g < 4; g++ {
				wg.Add(1)
				go func(g int) {
					defer wg.Done()
					rnd := rand.New(rand.NewPCG(uint64(g), 1))
					for i := 0; i < 200; i++ {
						n := 1 + rnd.IntN(40)
						s := rnd.Uint64N(2112 - uint64(n))
						op := []dm.Op{dm.OpRead, dm.OpWrite, dm.OpDiscard, dm.OpFlush}[rnd.IntN(4)]
						if op == dm.OpFlush {
							n, s = 0, 0
						}
						r := l.bio(op, s, n<<9)
						if i%2 == 0 {
							r.Exec = loop
						}
						d.Submit(&r.Bio)
					}
				}(g)
			}
			wg.Wait()
			l.waitAll(t)
			for _, r := range l.all() {
				if r.Err() != nil {
					t.Fatalf("%s@%d: %v", r.Op, r.Sector, r.Err())
				}
			}
			waitIdle(t, d)
			if mode == dmtest.CompleteExec && loop.Posted() == 0 {
				t.Fatal("nothing completed through the executor")
			}
		})
	}
}

func TestCancel(t *testing.T) {
	t.Run("before submit", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		d := newDev(t, nil, "0 8 linear a 0\n8 8 linear a 8", a)
		r := dmtest.NewRec(dm.OpWrite, 0, 16<<9)
		r.Cancel()
		d.Submit(&r.Bio)
		testutil.MustErrno(t, "canceled bio", r.Wait(t), syscall.ECANCELED)
		if a.IOs() != 0 {
			t.Fatal("a canceled bio reached the device")
		}
	})
	t.Run("between pieces", func(t *testing.T) {
		a := dmtest.NewMemDevice("a", MiB)
		d := newDev(t, nil, "0 8 fn a\n8 8 fn a", a)
		// Piece 0's Map cancels the bio: piece 0 was not yet on a device
		// either (it ends ECANCELED); so is piece 1.
		liveTarget[*fnTarget](t, d, 0).mapFn = func(c *dm.Clone) dm.MapResult { c.Bio().Cancel(); return dm.MapRemapped }
		r := dmtest.NewRec(dm.OpWrite, 4, 8<<9)
		d.Submit(&r.Bio)
		testutil.MustErrno(t, "bio", r.Wait(t), syscall.ECANCELED)
		if a.IOs() != 0 {
			t.Fatalf("%d pieces reached the device", a.IOs())
		}
	})
	t.Run("pieces on a device complete normally", func(t *testing.T) {
		a := newCapDev("a", MiB)
		a.setHold(true)
		d := newDev(t, nil, "0 8 linear a 0\n8 8 fn a", a)
		r := dmtest.NewRec(dm.OpWrite, 4, 8<<9)
		liveTarget[*fnTarget](t, d, 1).mapFn = func(c *dm.Clone) dm.MapResult {
			c.Bio().Cancel() // piece 0 is on the device already
			return dm.MapRemapped
		}
		d.Submit(&r.Bio)
		if a.nheld() != 1 {
			t.Fatalf("held %d", a.nheld())
		}
		a.release(nil)
		testutil.MustErrno(t, "bio", r.Wait(t), syscall.ECANCELED)
	})
}

func TestCloneAccessors(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 8 fn a", a)
	loop := dmtest.NewLoop(t)
	r := dmtest.NewRec(dm.OpRead, 0, 512)
	r.Exec = loop
	var sawBio *dm.Bio
	var sawExec dm.Executor
	var sawCanceled bool
	liveTarget[*fnTarget](t, d, 0).mapFn = func(c *dm.Clone) dm.MapResult {
		sawBio, sawExec, sawCanceled = c.Bio(), c.Exec(), c.Canceled()
		return dm.MapRemapped
	}
	d.Submit(&r.Bio)
	r.Wait(t)
	if sawBio != &r.Bio || sawExec != dm.Executor(loop) || sawCanceled {
		t.Fatalf("Bio %p (want %p) Exec %v Canceled %v", sawBio, &r.Bio, sawExec, sawCanceled)
	}
}

// A target may hold a clone (Submitted) and finish it later, from
// another goroutine; EndIO may take a clone back (Incomplete) and resubmit
// it.
func TestHoldAndRetry(t *testing.T) {
	a := dmtest.NewMemDevice("a", MiB)
	d := newDev(t, nil, "0 8 fn a", a)
	ft := liveTarget[*fnTarget](t, d, 0)
	held := make(chan *dm.Clone, 1)
	ft.mapFn = func(c *dm.Clone) dm.MapResult { held <- c; return dm.MapSubmitted }
	r := dmtest.NewRec(dm.OpWrite, 0, 512)
	d.Submit(&r.Bio)
	c := <-held
	if r.Ended() {
		t.Fatal("ended while held")
	}
	retries := 0
	ft.endFn = func(c *dm.Clone, err error) (dm.EndIOResult, error) {
		if err != nil && retries < 3 {
			retries++
			go c.Dev.Submit(c) // retry from another goroutine
			return dm.EndIOIncomplete, nil
		}
		return dm.EndIODone, err
	}
	a.FailNext(2, syscall.EIO)
	go c.Dev.Submit(c)
	testutil.MustErrno(t, "retried bio", r.Wait(t), 0)
	if retries != 2 || a.Writes() != 3 {
		t.Fatalf("retries %d writes %d", retries, a.Writes())
	}
}

func TestDetachedClone(t *testing.T) {
	var got error
	ended := 0
	c := dm.NewDetachedClone(&fnTarget{endFn: func(c *dm.Clone, err error) (dm.EndIOResult, error) { return dm.EndIODone, syscall.ENOSPC }},
		func(c *dm.Clone, err error) { ended++; got = err })
	c.End(nil)
	if ended != 1 || got != syscall.ENOSPC || c.Exec() != nil || c.Bio() != nil || c.Canceled() {
		t.Fatalf("ended %d err %v", ended, got)
	}
}

// Zero allocations per bio in the steady state, with and without a
// split, through linear and striped over NullDevice.
func TestZeroAllocs(t *testing.T) {
	for _, tc := range []nullShape{
		{"linear", "0 2048 linear null 0", 0, 4096, 1},
		{"split at a boundary", "0 1024 linear null 0\n1024 1024 linear null 0", 1020, 4096, 2},
		{"striped many chunks", "0 2048 striped 2 8 null 0 null 0", 4, 64 << 10, 17},
		{"flush", "0 1024 linear null 0\n1024 1024 striped 2 8 null 0 null 0", 0, 0, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var end countEnd
			d, b := tc.setUp(t, 64*MiB, &end, &benchExec{id: 1})
			allocs := testing.AllocsPerRun(1000, func() { d.Submit(b) })
			if end.err != nil {
				t.Fatal(end.err)
			}
			// The race detector makes sync.Pool drop a share of what it
			// is given; allow for that (at most one per clone) only under
			// -race.
			if limit := testutil.PoolSlack(tc.clones); allocs > limit {
				t.Fatalf("%.2f allocations per bio, want <= %v", allocs, limit)
			}
		})
	}
}

// nullShape is a table over a NullDevice named null and a bio through
// it: a read of n bytes at sector, or a flush when n is 0, which the
// table turns into clones clones.
type nullShape struct {
	name   string
	table  string
	sector uint64
	n      int
	clones int
}

// setUp makes the device (null of size bytes) and the bio, ending in end
// and run by ex (nil: none).
func (s nullShape) setUp(tb testing.TB, size int64, end *countEnd, ex dm.Executor) (*dm.Device, *dm.Bio) {
	d := newDev(tb, nil, s.table, dmtest.NewNullDevice("null", size))
	b := &dm.Bio{Op: dm.OpRead, Sector: s.sector, Len: uint32(s.n), Buf: make([]byte, s.n), BufIndex: -1, End: end}
	if ex != nil {
		b.Exec = ex
	}
	if s.n == 0 {
		b.Op, b.Buf = dm.OpFlush, nil
	}
	return d, b
}

type countEnd struct {
	n   int
	err error
}

func (c *countEnd) BioEnd(b *dm.Bio, err error) { c.n++; c.err = err }

// counted is fn with explicit flush and discard clone counts.
type counted struct {
	fnTarget
	flushes, discards int
}

func (c *counted) NumFlushClones() int   { return c.flushes }
func (c *counted) NumDiscardClones() int { return c.discards }

// NumFlushClones and NumDiscardClones: 0 means the target takes no flush
// (skipped) or no discard (EOPNOTSUPP); more sends that many clones,
// numbered by Index.
func TestCloneCounts(t *testing.T) {
	reg := dm.DefaultTargets()
	a := newCapDev("a", MiB)
	for _, tc := range []struct {
		name              string
		flushes, discards int
		op                dm.Op
		want              []capIO
		err               syscall.Errno
	}{
		{"no flush", 0, 1, dm.OpFlush, nil, 0},
		{"two flushes", 2, 1, dm.OpFlush, []capIO{{"a", dm.OpFlush, 0, 0, 0, 0}, {"a", dm.OpFlush, 0, 0, 0, 1}}, 0},
		{"no discard", 1, 0, dm.OpDiscard, nil, syscall.EOPNOTSUPP},
		{"two discards", 1, 2, dm.OpDiscard, []capIO{{"a", dm.OpDiscard, 0, 0, 4096, 0}, {"a", dm.OpDiscard, 0, 0, 4096, 1}}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "counted-" + strings.ReplaceAll(tc.name, " ", "-")
			tc := tc
			if err := reg.Register(dm.TargetType{Name: name, New: func(ctx *dm.TargetContext, args []string) (dm.Target, error) {
				return &counted{fnTarget: fnTarget{dev: a}, flushes: tc.flushes, discards: tc.discards}, nil
			}}); err != nil {
				t.Fatal(err)
			}
			d := dm.NewDevice(dm.DeviceConfig{Name: "c", Targets: reg})
			if err := d.Load("0 64 " + name); err != nil {
				t.Fatal(err)
			}
			mustResume(t, d)
			n := 0
			if tc.op == dm.OpDiscard {
				n = 4096
			}
			r := dmtest.NewRec(tc.op, 0, n)
			d.Submit(&r.Bio)
			testutil.MustErrno(t, "bio", r.Wait(t), tc.err)
			if got := a.take(); !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("clones %v, want %v", got, tc.want)
			}
		})
	}
}

// An Endio may submit the same bio again at once (a request slot reused
// from its completion), even when the end runs inside Submit.
func TestResubmitFromEnd(t *testing.T) {
	for _, mode := range []dmtest.Completion{dmtest.CompleteSync, dmtest.CompleteAsync} {
		a := dmtest.NewMemDevice("a", MiB)
		a.SetCompletion(mode)
		d := newDev(t, nil, "0 8 linear a 0\n8 8 linear a 8", a)
		done := make(chan struct{})
		n := 0
		b := &dm.Bio{Op: dm.OpWrite, Sector: 4, Len: 8 << 9, Buf: make([]byte, 8<<9), BufIndex: -1}
		b.End = dm.EndioFunc(func(_ *dm.Bio, err error) {
			if err != nil {
				t.Error(err)
			}
			n++
			if n == 100 {
				close(done)
				return
			}
			d.Submit(b)
		})
		d.Submit(b)
		<-done
		waitIdle(t, d)
		if a.Writes() != 200 {
			t.Fatalf("mode %d: %d writes", mode, a.Writes())
		}
	}
}

// Submit → end through the core over NullDevice (completes inline), per
// table shape; allocs/op must be 0.
func BenchmarkSubmit(b *testing.B) {
	for _, bc := range []nullShape{
		{"linear-4k", "0 2097152 linear null 0", 8, 4096, 1},
		{"linear-split-4k", "0 1024 linear null 0\n1024 2096128 linear null 0", 1020, 4096, 2},
		{"striped-64k-16clones", "0 2097152 striped 2 8 null 0 null 0", 0, 64 << 10, 16},
		{"flush-2targets", "0 1024 linear null 0\n1024 2096128 linear null 0", 0, 0, 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var end countEnd
			d, bio := bc.setUp(b, 1<<30, &end, nil)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d.Submit(bio)
			}
			b.StopTimer()
			if end.n != b.N || end.err != nil {
				b.Fatalf("%d ends, err %v", end.n, end.err)
			}
			b.ReportMetric(float64(bc.clones), "clones/op")
		})
	}
	// From all CPUs at once, each goroutine standing for one loop (an
	// executor with an ID, like uring.Loop).
	b.Run("linear-4k-parallel", func(b *testing.B) {
		d := newDev(b, nil, "0 2097152 linear null 0", dmtest.NewNullDevice("null", 1<<30))
		var ids atomic.Int32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var end countEnd
			bio := &dm.Bio{Op: dm.OpWrite, Sector: 8, Len: 4096, Buf: make([]byte, 4096), BufIndex: -1, End: &end,
				Exec: &benchExec{id: int(ids.Add(1) - 1)}}
			for pb.Next() {
				d.Submit(bio)
			}
		})
	})
}

// benchExec is an executor with an ID (as uring.Loop has); nothing is
// posted to it in the benchmarks.
type benchExec struct{ id int }

func (e *benchExec) Post(fn func()) error { fn(); return nil }
func (e *benchExec) ID() int              { return e.id }
