package multipath

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/dm/filedev"
	"udm/internal/testutil"
	"udm/uring"
)

const (
	kib = 1 << 10
	mib = 1 << 20
)

func bg() context.Context { return context.Background() }

// env is a registry with the dm targets and multipath, whose tables open
// files and block devices with filedev (real io_uring I/O), the named
// in-memory devices, and /dev/mapper/NAME of its own devices. Every map
// is attached to a Checker (only listing, unless the test's MapConfig
// polls).
type env struct {
	t     testing.TB
	reg   *dm.Registry
	chk   *Checker
	log   zerolog.Logger
	logs  *testutil.SyncBuffer // printed if the test failed: goroutines may log after t.Log is no longer allowed
	mem   map[string]dm.BlockDevice
	loops []*uring.Loop
}

type envConfig struct {
	opt Options
	// check configures the checker (default: no polling).
	check MapConfig
	// clock is the checker's (default: the wall clock).
	clock Clock
	mem   []dm.BlockDevice
	loops int
}

func newEnv(t testing.TB, cfg envConfig) *env {
	e := &env{t: t, logs: &testutil.SyncBuffer{}, mem: map[string]dm.BlockDevice{}}
	start := time.Now()
	e.log = zerolog.New(e.logs).Hook(zerolog.HookFunc(func(ev *zerolog.Event, _ zerolog.Level, _ string) {
		ev.Str("t", time.Since(start).Round(time.Microsecond).String())
	}))
	for _, d := range cfg.mem {
		e.mem[d.Name()] = d
	}
	for i := 0; i < cfg.loops; i++ {
		l, err := uring.NewLoop(uring.Config{ID: i, ArenaSize: 16 * mib})
		if err != nil {
			t.Fatalf("uring loop: %v", err)
		}
		e.loops = append(e.loops, l)
		t.Cleanup(func() { l.Close() })
	}
	if cfg.check.PollingInterval == 0 {
		cfg.check.PollingInterval = -1
	}
	e.chk = NewChecker(CheckerConfig{Log: e.log, Default: cfg.check, Clock: cfg.clock})
	t.Cleanup(func() { e.chk.Close() })
	opt := cfg.opt
	opt.Checker = e.chk
	targets := dm.DefaultTargets()
	if err := RegisterOptions(targets, opt); err != nil {
		t.Fatal(err)
	}
	files := filedev.Opener(nil)
	open := func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		if d, ok := e.mem[name]; ok {
			return d, io.NopCloser(nil), nil
		}
		return files(name, ro)
	}
	e.reg = dm.NewRegistry(dm.Config{Log: e.log, Targets: targets, Open: open})
	t.Cleanup(func() {
		if err := e.reg.RemoveAll(bg()); err != nil {
			t.Errorf("remove all: %v", err)
		}
		if t.Failed() {
			t.Logf("log:\n%s", e.logs.String())
		}
	})
	return e
}

func (e *env) create(name, table string) *dm.Device {
	e.t.Helper()
	d, err := e.reg.Create(bg(), name, "", table)
	if err != nil {
		e.t.Fatalf("create %s (%s): %v", name, table, err)
	}
	return d
}

func (e *env) dev(name string) *dm.Device {
	e.t.Helper()
	d, err := e.reg.Get(name)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

// swap loads table into name and resumes it (a table swap).
func (e *env) swap(name, table string) {
	e.t.Helper()
	d := e.dev(name)
	if err := d.Load(table); err != nil {
		e.t.Fatalf("load %s: %v", name, err)
	}
	if err := d.Resume(bg()); err != nil {
		e.t.Fatalf("resume %s: %v", name, err)
	}
}

// target is the live multipath target of device name.
func (e *env) target(name string) *Multipath {
	e.t.Helper()
	t, ok := e.chk.Map(name)
	if !ok {
		e.t.Fatalf("no live multipath map %s", name)
	}
	return t
}

func (e *env) msg(name string, args ...string) error {
	_, err := e.dev(name).Message(bg(), 0, args)
	return err
}

func (e *env) mustMsg(name string, args ...string) {
	e.t.Helper()
	if err := e.msg(name, args...); err != nil {
		e.t.Fatalf("message %s %q: %v", name, args, err)
	}
}

func (e *env) status(name string) string {
	e.t.Helper()
	s, err := e.dev(name).Status()
	if err != nil || len(s) != 1 {
		e.t.Fatalf("status %s: %q %v", name, s, err)
	}
	return s[0]
}

func (e *env) table(name string) string {
	e.t.Helper()
	s, err := e.dev(name).Table(false)
	if err != nil || len(s) != 1 {
		e.t.Fatalf("table %s: %q %v", name, s, err)
	}
	return s[0]
}

// bio is a test bio (a dmtest.Rec) that keeps what it read, and checks
// that a bio of a loop ends on that loop.
type bio struct {
	*dmtest.Rec
	loop  *uring.Loop
	ub    uring.Buf
	data  []byte      // written, or read back
	wrong atomic.Bool // ended off its loop
}

func newBio(l *uring.Loop, op dm.Op, sector uint64, data []byte) *bio {
	b := &bio{Rec: dmtest.NewRec(op, sector, 0), loop: l, data: data}
	b.Len = uint32(len(data))
	b.OnEnd = b.ending
	return b
}

// ending copies what was read to data and gives the loop its buffer back.
func (b *bio) ending(err error) {
	if b.loop != nil {
		if !b.loop.OnLoop() {
			b.wrong.Store(true)
			return
		}
		if b.Op == dm.OpRead && err == nil {
			copy(b.data, b.ub.B)
		}
		b.loop.Arena().Put(b.ub)
	} else if b.Op == dm.OpRead && err == nil {
		copy(b.data, b.Buf)
	}
}

func (b *bio) ended() bool { return b.Ended() }

func (b *bio) wait(t testing.TB) error {
	t.Helper()
	err := b.Wait(t)
	if b.wrong.Load() {
		t.Errorf("%s@%d ended off its loop", b.Op, b.Sector)
	}
	return err
}

// ledger tracks a test's bios: each must end exactly once.
type ledger struct {
	mu  sync.Mutex
	all []*bio
}

func (l *ledger) add(b *bio) {
	l.mu.Lock()
	l.all = append(l.all, b)
	l.mu.Unlock()
}

func (l *ledger) checkOnce(t testing.TB) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range l.all {
		if n := b.Ends(); n > 1 {
			t.Errorf("%s@%d ended %d times", b.Op, b.Sector, n)
		}
		if b.wrong.Load() {
			t.Errorf("%s@%d ended off its loop", b.Op, b.Sector)
		}
	}
}

// submit sends a bio to d: from loop l (its buffer from l's arena) or,
// with l nil, from this goroutine with no executor.
func (e *env) submit(d *dm.Device, l *uring.Loop, op dm.Op, sector uint64, data []byte) *bio {
	b := newBio(l, op, sector, data)
	if l == nil {
		if op.HasData() {
			b.Buf = alignedBuf(len(data))
			copy(b.Buf, data)
		}
		d.Submit(&b.Bio)
		return b
	}
	err := l.Post(func() {
		b.Exec = l
		if op.HasData() {
			b.ub = l.Arena().Get(len(data))
			copy(b.ub.B, data)
			b.Buf, b.BufIndex = b.ub.B[:len(data)], b.ub.Index
		}
		d.Submit(&b.Bio)
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *env) write(d *dm.Device, l *uring.Loop, sector uint64, data []byte) *bio {
	return e.submit(d, l, dm.OpWrite, sector, data)
}

func (e *env) read(d *dm.Device, l *uring.Loop, sector uint64, n int) *bio {
	return e.submit(d, l, dm.OpRead, sector, make([]byte, n))
}

// pattern is n bytes derived from seed.
func pattern(seed byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed ^ byte(i*7) ^ byte(i>>9)
	}
	return b
}

// execs is the two ways bios arrive: from a uring loop, or from a
// goroutine with no executor.
var execs = []string{"loop", "noexec"}

func (e *env) exec(kind string) *uring.Loop {
	if kind == "loop" {
		return e.loops[0]
	}
	return nil
}

// mpFix is the usual stack: one backing file, two dm devices p0 and p1
// mapping it linearly (two paths to the same data), and a multipath map
// mp over /dev/mapper/p0 and /dev/mapper/p1.
type mpFix struct {
	*env
	file    string
	sectors uint64
	mp      *dm.Device
	l       ledger
}

const fixSize = 4 * mib

func newFix(t testing.TB, queue bool, cfg envConfig) *mpFix {
	if cfg.loops == 0 {
		cfg.loops = 2
	}
	if cfg.opt.IODeadline == 0 {
		cfg.opt.IODeadline = -1 // tests that need a deadline set one
	}
	f := &mpFix{env: newEnv(t, cfg), file: testutil.TempFile(t, fixSize), sectors: fixSize >> dm.SectorShift}
	for _, p := range []string{"p0", "p1"} {
		f.create(p, f.linear())
	}
	f.mp = f.create("mp", f.mpTable(queue, "/dev/mapper/p0", "/dev/mapper/p1"))
	t.Cleanup(func() { f.l.checkOnce(t) })
	return f
}

func (f *mpFix) linear() string { return fmt.Sprintf("0 %d linear %s 0", f.sectors, f.file) }
func (f *mpFix) errTable() string {
	return fmt.Sprintf("0 %d error", f.sectors)
}

func (f *mpFix) mpTable(queue bool, paths ...string) string {
	feat := "0"
	if queue {
		feat = "1 queue_if_no_path"
	}
	return fmt.Sprintf("0 %d multipath %s 0 1 1 round-robin 0 %d 1 %s 1", f.sectors, feat, len(paths),
		strings.Join(paths, " 1 "))
}

// breakPath makes every I/O on a path fail (its table becomes error).
func (f *mpFix) breakPath(p string) { f.swap(p, f.errTable()) }

// repairPath gives a path its linear table back.
func (f *mpFix) repairPath(p string) { f.swap(p, f.linear()) }

func (f *mpFix) write(l *uring.Loop, sector uint64, data []byte) *bio {
	b := f.env.write(f.mp, l, sector, data)
	f.l.add(b)
	return b
}

func (f *mpFix) read(l *uring.Loop, sector uint64, n int) *bio {
	b := f.env.read(f.mp, l, sector, n)
	f.l.add(b)
	return b
}

// onFile reports whether data is in the backing file at sector.
func (f *mpFix) onFile(sector uint64, data []byte) bool {
	return bytes.Equal(testutil.ReadFileAt(f.t, f.file, int64(sector)<<dm.SectorShift, len(data)), data)
}

// queued breaks both paths and submits a write, which fails on both and
// is held by the target (queue_if_no_path).
func (f *mpFix) queued(l *uring.Loop, sector uint64, data []byte) *bio {
	f.t.Helper()
	f.breakPath("p0")
	f.breakPath("p1")
	b := f.write(l, sector, data)
	mp := f.target("mp")
	testutil.Eventually(f.t, "the write to be held", func() bool { return mp.Held() == 1 })
	if b.ended() {
		f.t.Fatalf("write ended (%v) instead of being queued", b.Err())
	}
	if v := mp.ValidPaths(); v != 0 {
		f.t.Fatalf("%d valid paths after both failed", v)
	}
	return b
}

// settledStats returns d's stats once its in-flight count is back to 0: a
// bio's end callback runs just before the core drops the count, so a
// waiter woken by the callback can read the stats a moment early.
func settledStats(t testing.TB, d *dm.Device) dm.Stats {
	t.Helper()
	testutil.Eventually(t, "the in-flight count to drop to 0", func() bool { return d.Stats().InFlight == 0 })
	return d.Stats()
}
