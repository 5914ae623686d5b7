package multipath

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

// memFix is a multipath map over in-memory paths a and b (and more),
// which fail, hang or complete on command.
type memFix struct {
	*env
	mp    *dm.Device
	paths []*dmtest.MemDevice
	l     ledger
}

const memSize = 1 * mib

func newMemFix(t *testing.T, table string, cfg envConfig, names ...string) *memFix {
	if len(names) == 0 {
		names = []string{"a", "b"}
	}
	f := &memFix{}
	for _, n := range names {
		m := dmtest.NewMemDevice(n, memSize)
		f.paths = append(f.paths, m)
		cfg.mem = append(cfg.mem, m)
	}
	if cfg.loops == 0 {
		cfg.loops = 1
	}
	f.env = newEnv(t, cfg)
	f.mp = f.create("mp", fmt.Sprintf("0 %d multipath %s", memSize>>dm.SectorShift, table))
	t.Cleanup(func() { f.l.checkOnce(t) })
	return f
}

func (f *memFix) io(kind string, op dm.Op, sector uint64, data []byte) *bio {
	b := f.submit(f.mp, f.exec(kind), op, sector, data)
	f.l.add(b)
	return b
}

// Path errors fail the path and the I/O is retried on another; errors
// about the I/O itself go to the caller and the path stays active.
func TestPathAndNonPathErrors(t *testing.T) {
	for _, tc := range []struct {
		errno syscall.Errno
		path  bool
	}{
		{syscall.EIO, true},
		{syscall.ETIMEDOUT, true},
		{syscall.ENODEV, true},
		{syscall.ENXIO, true},
		{syscall.ECONNRESET, true},
		{syscall.EPIPE, true},
		{syscall.ESHUTDOWN, true},
		{syscall.ENOTCONN, true},
		{syscall.ECANCELED, true},
		{syscall.ENOSPC, false},
		{syscall.EOPNOTSUPP, false},
		{syscall.EINVAL, false},
		{syscall.EROFS, false},
		{syscall.EPERM, false},
		{syscall.EILSEQ, false},
		{syscall.EBADMSG, false},
		{syscall.ENODATA, false},
	} {
		t.Run(errName(tc.errno), func(t *testing.T) {
			forExecs(t, func(t *testing.T, kind string) {
				f := newMemFix(t, "0 0 1 1 round-robin 0 2 1 a 1 b 1", envConfig{})
				a, b := f.paths[0], f.paths[1]
				a.FailAll(tc.errno)
				// Round-robin: within two writes, one goes to a first.
				data := pattern(7, 4*kib)
				var w *bio
				for i := 0; i < 2 && a.IOs() == 0; i++ {
					w = f.io(kind, dm.OpWrite, 8, data)
					w.wait(t)
				}
				if a.IOs() != 1 {
					t.Fatalf("%d writes reached a", a.IOs())
				}
				err := w.wait(t)
				st := f.status("mp")
				if tc.path {
					testutil.MustErrnoIs(t, "write", err, 0)
					if !strings.Contains(st, "a F 1 b A 0") {
						t.Fatalf("status %q: a should have failed", st)
					}
					got := make([]byte, len(data))
					b.ReadAt(got, 8<<dm.SectorShift)
					if !bytes.Equal(got, data) {
						t.Fatal("the retried write is not on b")
					}
				} else {
					testutil.MustErrnoIs(t, "write", err, tc.errno)
					if !strings.Contains(st, "a A 0 b A 0") {
						t.Fatalf("status %q: no path should have failed", st)
					}
				}
			})
		})
	}
}

// ECANCELED because the caller canceled the bio is not the path's fault.
func TestCanceledIsNotAPathError(t *testing.T) {
	if IsPathError(syscall.ECANCELED, true) || !IsPathError(syscall.ECANCELED, false) {
		t.Fatal("ECANCELED")
	}
	if !IsPathError(errors.New("no errno"), false) || IsPathError(nil, false) {
		t.Fatal("plain errors")
	}
	if IsPathError(fmt.Errorf("wrapped: %w", syscall.ENOSPC), false) || !IsPathError(fmt.Errorf("wrapped: %w", syscall.EIO), false) {
		t.Fatal("wrapped errnos")
	}
}

// The per-I/O deadline: a path that holds I/O (here a delay target far
// longer than the test) is failed when the deadline passes, and the I/O
// completes on the other path. Only the hung path keeps the short
// deadline the target gave every path: on a loaded machine a healthy
// path's I/O can take longer than 50 ms too (the first I/O without an
// executor even starts the file's fallback loop), which would fail it
// as well and leave no path.
func TestDeadlineFailsHungPath(t *testing.T) {
	forExecs(t, func(t *testing.T, kind string) {
		f := newFix(t, false, envConfig{opt: Options{IODeadline: 50 * time.Millisecond}})
		f.target("mp").PathDevice(1).(dm.DeadlineSetter).SetIODeadline(0)
		f.swap("p0", fmt.Sprintf("0 %d delay %s 0 600000", f.sectors, f.file))
		var ws []*bio
		for i := uint64(0); i < 4; i++ {
			ws = append(ws, f.write(f.exec(kind), 8*i, pattern(byte(i), 4*kib)))
		}
		for i, w := range ws {
			testutil.MustErrnoIs(t, "write", w.wait(t), 0)
			if !f.onFile(8*uint64(i), pattern(byte(i), 4*kib)) {
				t.Fatalf("write %d not in the file", i)
			}
		}
		if st := f.status("mp"); !strings.Contains(st, "/dev/mapper/p0 F 1 /dev/mapper/p1 A 0") {
			t.Fatalf("status %q", st)
		}
	})
}

func TestSelectors(t *testing.T) {
	t.Run("round-robin alternates", func(t *testing.T) {
		f := newMemFix(t, "0 0 1 1 round-robin 0 3 0 a b c", envConfig{}, "a", "b", "c")
		for i := 0; i < 30; i++ {
			testutil.MustErrnoIs(t, "read", f.io("noexec", dm.OpRead, 0, make([]byte, 512)).wait(t), 0)
		}
		for _, m := range f.paths {
			if m.Reads() != 10 {
				t.Fatalf("%s got %d of 30 reads", m.Name(), m.Reads())
			}
		}
	})
	for _, sel := range []string{"queue-length", "service-time"} {
		t.Run(sel+" avoids the busy path", func(t *testing.T) {
			f := newMemFix(t, "0 0 1 1 "+sel+" 0 2 0 a b", envConfig{})
			a, b := f.paths[0], f.paths[1]
			// a holds what it gets; b completes at once.
			a.Hang(true)
			var held []*bio
			for a.Held() == 0 {
				x := f.io("noexec", dm.OpRead, 0, make([]byte, 4*kib))
				held = append(held, x)
			}
			if got := f.status("mp"); !strings.Contains(got, "a A 0 1 ") && !strings.Contains(got, "a A 0 4096 ") {
				t.Fatalf("status %q does not show a's load", got)
			}
			reads := b.Reads()
			for i := 0; i < 10; i++ {
				testutil.MustErrnoIs(t, "read", f.io("noexec", dm.OpRead, 0, make([]byte, 4*kib)).wait(t), 0)
			}
			if b.Reads() != reads+10 || a.Held() != 1 {
				t.Fatalf("b got %d of 10 reads while a was busy", b.Reads()-reads)
			}
			a.Hang(false)
			a.Release()
			for _, x := range held {
				testutil.MustErrnoIs(t, "read", x.wait(t), 0)
			}
			// Every counter went back to zero.
			want := map[string]string{"queue-length": "a A 0 0 b A 0 0 ", "service-time": "a A 0 0 1 b A 0 0 1 "}[sel]
			if st := f.status("mp"); !strings.HasSuffix(st, want) {
				t.Fatalf("status %q", st)
			}
		})
	}
	t.Run("historical-service-time", func(t *testing.T) {
		f := newMemFix(t, "0 0 1 1 historical-service-time 0 2 0 a b", envConfig{})
		// (a and b are separate memories: the data is checked by the
		// randomized test over real files.)
		for i := uint64(0); i < 50; i++ {
			testutil.MustErrnoIs(t, "write", f.io("noexec", dm.OpWrite, 8*i, pattern(byte(i), 4*kib)).wait(t), 0)
			testutil.MustErrnoIs(t, "read", f.io("noexec", dm.OpRead, 8*i, make([]byte, 4*kib)).wait(t), 0)
		}
		if f.paths[0].IOs()+f.paths[1].IOs() != 100 {
			t.Fatal("lost I/O")
		}
		// Nothing outstanding is left in the counters.
		for _, p := range f.target("mp").paths {
			if p.inflight.Load() != 0 {
				t.Fatalf("%s: %d outstanding", p.name, p.inflight.Load())
			}
		}
	})
	t.Run("service-time relative throughput 0 is a last resort", func(t *testing.T) {
		f := newMemFix(t, "0 0 1 1 service-time 0 2 2 a 1 0 b 1 1", envConfig{})
		a, b := f.paths[0], f.paths[1]
		for i := 0; i < 10; i++ {
			testutil.MustErrnoIs(t, "read", f.io("noexec", dm.OpRead, 0, make([]byte, 4*kib)).wait(t), 0)
		}
		if a.Reads() != 0 || b.Reads() != 10 {
			t.Fatalf("a %d b %d", a.Reads(), b.Reads())
		}
		// With b failed, a is used.
		f.mustMsg("mp", "fail_path", "b")
		testutil.MustErrnoIs(t, "read", f.io("noexec", dm.OpRead, 0, make([]byte, 4*kib)).wait(t), 0)
		if a.Reads() != 1 {
			t.Fatal("a not used as the last resort")
		}
	})
	t.Run("service-time prefers throughput", func(t *testing.T) {
		f := newMemFix(t, "0 0 1 1 service-time 0 2 2 a 1 10 b 1 1", envConfig{})
		a, b := f.paths[0], f.paths[1]
		a.Hang(true)
		b.Hang(true)
		var xs []*bio
		// With equal loads the faster path wins; a takes I/O until its
		// load is ten times b's.
		for i := 0; i < 11; i++ {
			xs = append(xs, f.io("noexec", dm.OpRead, 0, make([]byte, 4*kib)))
		}
		if a.Held() != 10 || b.Held() != 1 {
			t.Fatalf("a %d b %d", a.Held(), b.Held())
		}
		a.Hang(false)
		b.Hang(false)
		a.Release()
		b.Release()
		for _, x := range xs {
			testutil.MustErrnoIs(t, "read", x.wait(t), 0)
		}
	})
}

func TestStCompare(t *testing.T) {
	for _, tc := range []struct {
		sz1, rt1, sz2, rt2, in int64
		want                   int
	}{
		{0, 1, 0, 1, 4096, 0},
		{4096, 1, 0, 1, 4096, 1},
		{0, 2, 0, 1, 4096, -1},       // same load: faster
		{4096, 0, 0, 1, 4096, 1},     // no throughput: the other
		{8192, 2, 4096, 1, 4096, -1}, // (8192+4096)/2 < (4096+4096)/1
		{8192, 1, 4096, 2, 4096, 1},
		{4096, 2, 0, 1, 4096, -1}, // equal service time: the faster path
		{1 << 62, 3, 1 << 62, 2, 4096, -1},
	} {
		if got := stCompare(tc.sz1, tc.rt1, tc.sz2, tc.rt2, tc.in); got != tc.want {
			t.Errorf("stCompare(%v) = %d, want %d", tc, got, tc.want)
		}
	}
}

// Groups over real paths: failover to the next group, no failback by the
// core, and switch_group to go back.
func TestGroupFailover(t *testing.T) {
	forExecs(t, func(t *testing.T, kind string) {
		f := newFix(t, false, envConfig{})
		if err := f.mp.Load(fmt.Sprintf("0 %d multipath 0 0 2 1 round-robin 0 1 1 /dev/mapper/p0 1 round-robin 0 1 1 /dev/mapper/p1 1", f.sectors)); err != nil {
			t.Fatal(err)
		}
		if err := f.mp.Resume(bg()); err != nil {
			t.Fatal(err)
		}
		l := f.exec(kind)
		ios := func(p string) uint64 { s := f.dev(p).Stats(); return s.Reads + s.Writes }
		do := func(wantOn string) {
			t.Helper()
			before := ios(wantOn)
			testutil.MustErrnoIs(t, "write", f.write(l, 0, pattern(9, 4*kib)).wait(t), 0)
			if ios(wantOn) == before {
				t.Fatalf("the write did not reach %s; status %q", wantOn, f.status("mp"))
			}
		}
		do("p0")
		do("p0")
		f.breakPath("p0")
		do("p1") // fails on p0, retried in group 2
		if st := f.status("mp"); st != "0 8192 multipath 2 0 0 0 2 2 E 0 1 0 /dev/mapper/p0 F 1 A 0 1 0 /dev/mapper/p1 A 0 " {
			t.Fatalf("status %q", st)
		}
		f.repairPath("p0")
		f.mustMsg("mp", "reinstate_path", "/dev/mapper/p0")
		do("p1") // no failback
		f.mustMsg("mp", "switch_group", "1")
		do("p0")
		f.mustMsg("mp", "disable_group", "1")
		do("p1")
		f.mustMsg("mp", "enable_group", "1")
		do("p0") // enabling a group makes the next I/O choose again (the kernel clears current_pg)
	})
}

func TestStatusTableMessagesEvents(t *testing.T) {
	f := newMemFix(t, "1 queue_if_no_path 1 alua 2 1 round-robin 0 1 1 a 1000 service-time 0 1 2 b 1 50", envConfig{})
	// Warnings: the handler, the repeat count.
	for _, w := range []string{"hardware handler", "repeat_count > 1"} {
		if !strings.Contains(f.logs.String(), w) {
			t.Errorf("no warning about %s in the log", w)
		}
	}
	table := "0 2048 multipath 1 queue_if_no_path 1 alua 2 1 round-robin 0 1 1 a 1 service-time 0 1 2 b 1 50 "
	if got := f.table("mp"); got != table {
		t.Fatalf("table %q\nwant  %q", got, table)
	}
	if got := f.status("mp"); got != "0 2048 multipath 2 0 0 0 2 1 E 0 1 0 a A 0 E 0 1 2 b A 0 0 50 " {
		t.Fatalf("status %q", got)
	}
	testutil.MustErrnoIs(t, "read", f.io("noexec", dm.OpRead, 0, make([]byte, 512)).wait(t), 0)
	if got := f.status("mp"); got != "0 2048 multipath 2 0 0 0 2 1 A 0 1 0 a A 0 E 0 1 2 b A 0 0 50 " {
		t.Fatalf("status %q", got)
	}
	// The table loads back, into this device and a new one.
	line, err := dm.ParseTableLine(table)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.mp.LoadLines([]dm.TableLine{line}); err != nil {
		t.Fatal(err)
	}
	if err := f.mp.Resume(bg()); err != nil {
		t.Fatal(err)
	}
	if got := f.table("mp"); got != table {
		t.Fatalf("reloaded table %q", got)
	}
	f.create("mp2", table)
	if got := f.table("mp2"); got != table {
		t.Fatalf("mp2 table %q", got)
	}

	// Messages: errors, and events on path and group changes.
	ev := f.mp.Event()
	for _, tc := range []struct {
		args  []string
		errno syscall.Errno
		event bool
	}{
		{[]string{"fail_path", "a"}, 0, true},
		{[]string{"fail_path", "a"}, 0, false},
		{[]string{"reinstate_path", "a"}, 0, true},
		{[]string{"fail_path", "zzz"}, syscall.EINVAL, false},
		{[]string{"switch_group", "2"}, 0, true},
		{[]string{"switch_group", "3"}, syscall.EINVAL, false},
		{[]string{"disable_group", "1"}, 0, true},
		{[]string{"enable_group", "1"}, 0, true},
		{[]string{"fail_if_no_path"}, 0, false},
		{[]string{"queue_if_no_path"}, 0, false},
		{[]string{"queue_if_no_path", "x"}, syscall.EINVAL, false},
		{[]string{"nonsense"}, syscall.EINVAL, false},
	} {
		err := f.msg("mp", tc.args...)
		if tc.errno == 0 && err != nil || tc.errno != 0 && !errors.Is(err, tc.errno) {
			t.Fatalf("message %q: %v, want %s", tc.args, err, errName(tc.errno))
		}
		now := f.mp.Event()
		if (now != ev) != tc.event {
			t.Fatalf("message %q: event %d -> %d", tc.args, ev, now)
		}
		ev = now
	}
	// Every message is EBUSY once suspended.
	if err := f.mp.Suspend(bg(), false); err != nil {
		t.Fatal(err)
	}
	if err := f.msg("mp", "fail_path", "a"); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("message while suspended: %v", err)
	}
	if err := f.msg("mp", "bogus"); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("bad message while suspended: %v", err)
	}
	if err := f.mp.Resume(bg()); err != nil {
		t.Fatal(err)
	}
	f.mustMsg("mp", "fail_path", "a")
}

// A message may name a file path another way than the table does.
func TestMessageResolvesPaths(t *testing.T) {
	f := newFix(t, false, envConfig{})
	dir, base := f.file[:strings.LastIndex(f.file, "/")], f.file[strings.LastIndex(f.file, "/")+1:]
	f.swap("mp", fmt.Sprintf("0 %d multipath 0 0 1 1 round-robin 0 1 1 %s 1", f.sectors, f.file))
	f.mustMsg("mp", "fail_path", dir+"/./"+base)
	if st := f.status("mp"); !strings.Contains(st, " F 1 ") {
		t.Fatalf("status %q", st)
	}
}

// Two multipath devices over the same paths: each holds, pushes back
// and recovers its own I/O.
func TestTwoDevices(t *testing.T) {
	forExecs(t, func(t *testing.T, kind string) {
		f := newFix(t, true, envConfig{})
		mpb := f.create("mpb", f.mpTable(true, "/dev/mapper/p0", "/dev/mapper/p1"))
		l := f.exec(kind)
		// Both devices work, concurrently, while a path fails.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var all []*bio
		for di, d := range []*dm.Device{f.mp, mpb} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 20; i++ {
					b := f.env.write(d, l, uint64(8*(40*di+i)), pattern(byte(i+di), 4*kib))
					mu.Lock()
					all = append(all, b)
					mu.Unlock()
				}
			}()
		}
		f.breakPath("p0")
		wg.Wait()
		for _, b := range all {
			f.l.add(b)
			testutil.MustErrnoIs(t, "write", b.wait(t), 0)
		}
		// Both lose their paths and hold a write each.
		f.breakPath("p1")
		wa := f.write(l, 8, pattern(0xa, 4*kib))
		wb := f.env.write(mpb, l, 16, pattern(0xb, 4*kib))
		f.l.add(wb)
		ta, tb := f.target("mp"), f.target("mpb")
		testutil.Eventually(t, "both writes held", func() bool { return ta.Held() == 1 && tb.Held() == 1 })
		// Suspend both with noflush, concurrently.
		errs := make(chan error, 2)
		for _, d := range []*dm.Device{f.mp, mpb} {
			go func() { errs <- d.Suspend(bg(), true) }()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if f.mp.Stats().Deferred != 1 || mpb.Stats().Deferred != 1 || wa.ended() || wb.ended() {
			t.Fatal("writes not pushed back")
		}
		// mp recovers by its path; mpb stays down.
		f.repairPath("p0")
		if err := f.chk.ReinstatePath("mp", "/dev/mapper/p0"); err != nil {
			t.Fatal(err)
		}
		if err := f.mp.Resume(bg()); err != nil {
			t.Fatal(err)
		}
		testutil.MustErrnoIs(t, "mp's write", wa.wait(t), 0)
		if wb.ended() || mpb.Stats().Deferred != 1 {
			t.Fatal("mpb's write moved")
		}
		// mpb gets a new table.
		if err := mpb.Load(f.mpTable(true, "/dev/mapper/p0")); err != nil {
			t.Fatal(err)
		}
		if err := mpb.Resume(bg()); err != nil {
			t.Fatal(err)
		}
		testutil.MustErrnoIs(t, "mpb's write", wb.wait(t), 0)
		if !f.onFile(8, pattern(0xa, 4*kib)) || !f.onFile(16, pattern(0xb, 4*kib)) {
			t.Fatal("data not in the file")
		}
	})
}

// The fast path allocates nothing: a bio through multipath to a null
// device, for every selector.
func TestZeroAllocs(t *testing.T) {
	for _, sel := range Selectors() {
		t.Run(sel, func(t *testing.T) {
			env := newEnv(t, envConfig{mem: []dm.BlockDevice{dmtest.NewNullDevice("n0", mib), dmtest.NewNullDevice("n1", mib)}})
			d := env.create("mpn", "0 2048 multipath 0 0 1 1 "+sel+" 0 2 0 n0 n1")
			var end countEnd
			b := &dm.Bio{Op: dm.OpRead, Len: 4096, Buf: make([]byte, 4096), BufIndex: -1, End: &end}
			d.Submit(b) // the first I/O chooses the group (slow path)
			allocs := testing.AllocsPerRun(1000, func() { d.Submit(b) })
			if end.err != nil || end.n != 1002 {
				t.Fatalf("ends %d err %v", end.n, end.err)
			}
			if allocs > testutil.PoolSlack(1) {
				t.Fatalf("%.2f allocations per bio", allocs)
			}
		})
	}
}

type countEnd struct {
	n   int
	err error
}

func (c *countEnd) BioEnd(_ *dm.Bio, err error) { c.n++; c.err = err }

func TestHstCompare(t *testing.T) {
	g := &group{kind: selHistorical}
	g.setWeights(hstWeightDefault)
	mk := func(hstNs uint64, out, stale int64) *path {
		p := &path{group: g}
		p.hst.Store(hstNs << hstFixedShift)
		p.inflight.Store(out)
		p.staleAfter.Store(stale)
		return p
	}
	const now, future, past = 1000000, 2000000, 10
	for _, tc := range []struct {
		name   string
		p1, p2 *path
		want   int // sign
	}{
		{"no history: the less loaded", mk(0, 0, 0), mk(0, 1, 0), -1},
		{"faster, both busy and fresh", mk(100, 1, future), mk(200, 1, future), -1},
		{"slower, both busy and fresh", mk(300, 1, future), mk(200, 1, future), 1},
		{"faster but much busier", mk(100, 5, future), mk(200, 1, future), 1},
		{"both idle: the staler", mk(100, 0, 50), mk(100, 0, 60), -1},
		{"an idle stale path", mk(500, 0, past), mk(100, 2, future), -1},
		{"a stale winner only gets an equal share", mk(100, 2, past), mk(200, 2, future), 0},
	} {
		got := g.hstCompare(tc.p1, tc.p2, now)
		if (got < 0) != (tc.want < 0) || (got > 0) != (tc.want > 0) {
			t.Errorf("%s: hstCompare = %d, want sign %d", tc.name, got, tc.want)
		}
	}
	// The average moves towards what completions take.
	p := mk(0, 1, 0)
	start := nanotime()
	p.hstEnd(uint64(start-int64(time.Millisecond)) & ctxTimeMask)
	if h := p.hst.Load() >> hstFixedShift; h == 0 || h > uint64(time.Second) {
		t.Fatalf("average %d ns after a 1 ms completion", h)
	}
}

// An error from an I/O sent before a path was reinstated (a hung I/O
// whose deadline fires late) does not fail the path again; the I/O is
// still retried.
func TestStaleErrorKeepsReinstatedPath(t *testing.T) {
	forExecs(t, func(t *testing.T, kind string) {
		f := newMemFix(t, "0 0 1 1 round-robin 0 2 1 a 1 b 1", envConfig{})
		a := f.paths[0]
		f.mustMsg("mp", "fail_path", "b")
		a.Hang(true)
		x := f.io(kind, dm.OpWrite, 0, pattern(1, 4*kib))
		testutil.Eventually(t, "x on a", func() bool { return a.Held() == 1 })
		a.Hang(false)
		f.mustMsg("mp", "reinstate_path", "b")
		f.mustMsg("mp", "fail_path", "a")
		f.mustMsg("mp", "reinstate_path", "a")
		a.ReleaseErr(syscall.EIO)
		testutil.MustErrnoIs(t, "x", x.wait(t), 0)
		if st := f.status("mp"); !strings.HasSuffix(st, "a A 1 b A 1 ") {
			t.Fatalf("status %q: the stale error failed a", st)
		}
		// A fresh error still fails it.
		a.FailNext(1, syscall.EIO)
		for a.IOs() < 2 {
			testutil.MustErrnoIs(t, "write", f.io(kind, dm.OpWrite, 0, pattern(2, 4*kib)).wait(t), 0)
		}
		if st := f.status("mp"); !strings.HasSuffix(st, "a F 2 b A 1 ") {
			t.Fatalf("status %q", st)
		}
	})
}

func TestConstructorErrors(t *testing.T) {
	env := newEnv(t, envConfig{mem: []dm.BlockDevice{dmtest.NewMemDevice("small", 512*kib), dmtest.NewMemDevice("big", mib)}})
	for _, tc := range []struct{ table, err string }{
		{"0 2048 multipath 0 0 1 1 round-robin 0 2 0 big small", "too small"},
		{"0 2048 multipath 0 0 1 1 round-robin 0 1 0 /nonexistent/path", "error getting device"},
		{"0 2048 multipath 0 0 1 1 bogus 0 1 0 big", "unknown path selector"},
		{"0 1024 multipath 0 0 1 1 round-robin 0 1 0 big\n1024 1024 linear big 0", "alone"},
	} {
		_, err := env.reg.Create(bg(), "x", "", tc.table)
		if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, syscall.EINVAL) {
			t.Errorf("create %q: %v, want EINVAL with %q", tc.table, err, tc.err)
		}
	}
	// Immutable: a live multipath table is replaced only by multipath.
	d := env.create("mp", "0 1024 multipath 0 0 1 1 round-robin 0 1 0 big")
	if err := d.Load("0 1024 linear big 0"); err == nil {
		t.Fatal("a linear table replaced a multipath one")
	}
	if err := d.Load("0 1024 multipath 0 0 1 1 round-robin 0 1 0 small"); err != nil {
		t.Fatal(err)
	}
}

// flakey under a path: always down (every I/O fails), or failing only
// writes while the checker's reads pass, so the path flaps between
// failed and reinstated; the caller sees neither.
func TestFlakeyPath(t *testing.T) {
	for _, tc := range []struct{ name, feat string }{
		{"all I/O fails", ""},
		{"writes fail, checks pass", " 1 error_writes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFix(t, false, envConfig{check: fastCheck})
			f.swap("p0", fmt.Sprintf("0 %d flakey %s 0 0 1%s", f.sectors, f.file, tc.feat))
			for i := uint64(0); i < 64; i++ {
				// Two writes and a read: round-robin sends writes to both.
				data := pattern(byte(i), 4*kib)
				testutil.MustErrnoIs(t, "write", f.write(f.loops[i%2], 8*(i%16), pattern(^byte(i), 4*kib)).wait(t), 0)
				testutil.MustErrnoIs(t, "write", f.write(f.loops[i%2], 8*(i%16), data).wait(t), 0)
				r := f.read(f.loops[(i+1)%2], 8*(i%16), 4*kib)
				testutil.MustErrnoIs(t, "read", r.wait(t), 0)
				if !bytes.Equal(r.data, data) {
					t.Fatalf("block %d read back wrong", i%16)
				}
			}
			if fails := f.target("mp").state().fails[0]; fails == 0 {
				t.Fatal("p0 never failed")
			}
		})
	}
}
