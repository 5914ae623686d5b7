package multipath

import (
	"encoding/binary"
	"flag"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"udm/dm"
	"udm/internal/testutil"
	"udm/uring"
)

var randomSeed = flag.Uint64("mp.seed", 0, "seed of TestRandomFailover (0: from the clock)")

// The randomized failover test: workers on two uring loops and one
// goroutine without an executor run random reads and writes of
// checksummed 4 KiB blocks against a 2-path multipath device, while a
// driver fails and brings back paths at random (a path's table swapped to
// error, to a delay that hangs past the I/O deadline, fail_path and
// reinstate_path messages) and the checker polls, always keeping one
// path working. No I/O may fail, no read may see wrong data, every bio
// ends exactly once, and each loop's bios end on their loop.
func TestRandomFailover(t *testing.T) {
	seed := *randomSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	for i, sel := range Selectors() {
		t.Run(sel, func(t *testing.T) {
			s := seed + uint64(i)
			defer func() {
				if t.Failed() {
					t.Logf("seed %d: rerun with go test -run 'TestRandomFailover/%s' -mp.seed=%d", s, sel, s-uint64(i))
				}
			}()
			runRandomFailover(t, sel, s)
		})
	}
}

const (
	rfBlock   = 4 * kib
	rfBlocks  = 512        // 2 MiB of the 4 MiB file
	rfMagic   = 0x6d706174 // "mpat"
	rfDepth   = 4          // bios per loop
	rfActions = 60
)

// rfModel is what each block holds: the generation of its last
// completed write (0: never written, zeroes). Blocks are split between
// workers, so no two I/Os touch a block at once.
type rfModel struct {
	seed uint64
	gen  []atomic.Uint32
	errs atomic.Int64
	bad  atomic.Int64
	ops  atomic.Int64

	mu     sync.Mutex
	report []string
}

func (m *rfModel) fail(format string, args ...any) {
	m.mu.Lock()
	if len(m.report) < 20 {
		m.report = append(m.report, fmt.Sprintf(format, args...))
	}
	m.mu.Unlock()
}

// fill writes block blk's generation gen into b.
func (m *rfModel) fill(b []byte, blk int, gen uint32) {
	binary.LittleEndian.PutUint32(b[0:], rfMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(blk))
	binary.LittleEndian.PutUint32(b[8:], gen)
	x := m.seed ^ uint64(blk)<<32 ^ uint64(gen)
	for i := 12; i < len(b)-4; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(b[i:], x)
	}
	binary.LittleEndian.PutUint32(b[len(b)-4:], crc32.ChecksumIEEE(b[:len(b)-4]))
}

// check verifies a block read back.
func (m *rfModel) check(b []byte, blk int) {
	want := m.gen[blk].Load()
	if want == 0 {
		for _, c := range b {
			if c != 0 {
				m.bad.Add(1)
				m.fail("block %d: never written, reads non-zero", blk)
				return
			}
		}
		return
	}
	crc := binary.LittleEndian.Uint32(b[len(b)-4:])
	if binary.LittleEndian.Uint32(b) != rfMagic || crc != crc32.ChecksumIEEE(b[:len(b)-4]) {
		m.bad.Add(1)
		m.fail("block %d: checksum mismatch (want generation %d)", blk, want)
		return
	}
	if got, gen := binary.LittleEndian.Uint32(b[4:]), binary.LittleEndian.Uint32(b[8:]); int(got) != blk || gen != want {
		m.bad.Add(1)
		m.fail("block %d: holds block %d generation %d, want generation %d", blk, got, gen, want)
	}
}

// rfWorker issues one I/O at a time on its own blocks (those equal to
// id modulo nworkers).
type rfWorker struct {
	dm.Bio
	m        *rfModel
	d        *dm.Device
	loop     *uring.Loop // nil: no executor
	id, n    int
	rng      *rand.Rand
	stop     *atomic.Bool // no more I/O once set
	blk      int
	gen      uint32
	buf      uring.Buf
	data     []byte // the worker's block buffer
	inflight atomic.Bool
	// submitting and again (loop workers, on the loop): a bio ended
	// inside Submit; next (issue) is posted then.
	submitting, again bool
	next              func()
	done              chan struct{}
	ended             chan error // no executor: BioEnd reports here
}

func (w *rfWorker) pick() {
	w.blk = w.id + w.n*w.rng.IntN(rfBlocks/w.n)
	w.Sector = uint64(w.blk) * (rfBlock >> dm.SectorShift)
	w.Len = rfBlock
	switch r := w.rng.IntN(100); {
	case r < 45:
		w.Op = dm.OpWrite
		w.gen = w.m.gen[w.blk].Load() + 1
		w.m.fill(w.Buf, w.blk, w.gen)
	case r < 97:
		w.Op = dm.OpRead
		clear(w.Buf)
	default:
		w.Op, w.Sector, w.Len = dm.OpFlush, 0, 0
	}
	if w.rng.IntN(8) == 0 {
		w.Flags = dm.FUA
	} else {
		w.Flags = 0
	}
}

// issue starts the next I/O (on the worker's loop), or ends the worker
// once told to stop. When the bio ends inside Submit (memory-backed
// files complete inline) the next one is posted, so that the worker
// neither recurses nor keeps the loop from its other work.
func (w *rfWorker) issue() {
	if w.stop.Load() {
		w.loop.Arena().Put(w.buf)
		close(w.done)
		return
	}
	w.Buf = w.data
	w.pick()
	if w.Op == dm.OpFlush {
		w.Buf = nil
	}
	w.inflight.Store(true)
	w.submitting, w.again = true, false
	w.d.Submit(&w.Bio)
	w.submitting = false
	if w.again {
		if err := w.loop.Post(w.next); err != nil {
			close(w.done)
		}
	}
}

// submitOne starts one I/O of the worker without an executor.
func (w *rfWorker) submitOne() {
	w.Buf = w.data
	w.pick()
	if w.Op == dm.OpFlush {
		w.Buf = nil
	}
	w.inflight.Store(true)
	w.d.Submit(&w.Bio)
}

func (w *rfWorker) BioEnd(_ *dm.Bio, err error) {
	if !w.inflight.CompareAndSwap(true, false) {
		w.m.bad.Add(1)
		w.m.fail("worker %d: a bio ended twice", w.id)
		return
	}
	if w.loop != nil && !w.loop.OnLoop() {
		w.m.bad.Add(1)
		w.m.fail("worker %d: a loop's bio ended off its loop", w.id)
	}
	w.m.ops.Add(1)
	switch {
	case err != nil:
		w.m.errs.Add(1)
		w.m.fail("worker %d: %s at sector %d: %v", w.id, w.Op, w.Sector, err)
		if w.Op == dm.OpWrite {
			// The block may hold either generation now: stop checking it.
			w.m.gen[w.blk].Store(1 << 31)
		}
	case w.Op == dm.OpWrite:
		w.m.gen[w.blk].Store(w.gen)
	case w.Op == dm.OpRead && w.m.gen[w.blk].Load() < 1<<31:
		w.m.check(w.data, w.blk)
	}
	if w.loop != nil {
		if w.submitting {
			w.again = true
			return
		}
		w.issue()
		return
	}
	w.ended <- err
}

// bringBack repairs path p (if its table was changed) and reinstates it.
// A check that was under way while p was broken may still fail it: p
// counts as working only after a check that started after the repair.
func (f *mpFix) bringBack(p string, repair bool) {
	if repair {
		f.repairPath(p)
		f.waitChecks(map[string]int{"p0": 0, "p1": 1}[p], 2)
	}
	f.mustMsg("mp", "reinstate_path", "/dev/mapper/"+p)
}

func runRandomFailover(t *testing.T, sel string, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	// A hung path fails its I/O after the deadline. Only the path being
	// hung has one: a working path's I/O may take that long too on a
	// loaded machine, which would fail the one good path.
	const deadline = 300 * time.Millisecond
	f := newFix(t, false, envConfig{
		check: MapConfig{PollingInterval: 3 * time.Millisecond, CheckTimeout: 5 * time.Second},
	})
	f.swap("mp", fmt.Sprintf("0 %d multipath 0 0 1 1 %s 0 2 0 /dev/mapper/p0 /dev/mapper/p1", f.sectors, sel))
	mp := f.target("mp")
	setDeadline := func(p string, dl time.Duration) {
		mp.PathDevice(map[string]int{"p0": 0, "p1": 1}[p]).(dm.DeadlineSetter).SetIODeadline(dl)
	}
	m := &rfModel{seed: seed, gen: make([]atomic.Uint32, rfBlocks)}

	// Workers: rfDepth per loop, and one without an executor.
	var ws []*rfWorker
	var stop atomic.Bool
	n := rfDepth*len(f.loops) + 1
	for i := 0; i < n; i++ {
		w := &rfWorker{m: m, d: f.mp, id: i, n: n, stop: &stop, done: make(chan struct{}),
			rng: rand.New(rand.NewPCG(seed, uint64(i)))}
		w.End, w.BufIndex = w, -1
		ws = append(ws, w)
	}
	for i, w := range ws {
		if i == n-1 {
			w.ended = make(chan error, 1)
			w.data = alignedBuf(rfBlock)
			go func() {
				for !stop.Load() {
					w.submitOne()
					<-w.ended
				}
				close(w.done)
			}()
			continue
		}
		w.loop = f.loops[i%len(f.loops)]
		w.next = w.issue
		if err := w.loop.Post(func() {
			w.Exec = w.loop
			w.buf = w.loop.Arena().Get(rfBlock)
			w.data, w.BufIndex = w.buf.B, w.buf.Index
			w.issue()
		}); err != nil {
			t.Fatal(err)
		}
	}

	// The driver: paths break and come back; at every moment one of them
	// is good (its table works and it is known active), and only the
	// other is touched.
	type pstate struct{ broken, failed, hung bool }
	ps := map[string]*pstate{"p0": {}, "p1": {}}
	names := [2]string{"p0", "p1"}
	hangs := 0
	good := func(p string) bool { s := ps[p]; return !s.broken && !s.failed && !s.hung }
	actions := rfActions
	if testing.Short() {
		actions = rfActions / 4 // the edit-test loop; make test runs them all
	}
	for a := 0; a < actions; a++ {
		i := rng.IntN(2)
		p, q := names[i], names[1-i]
		s := ps[p]
		if !good(q) {
			// Bring q back first.
			p, s = q, ps[q]
		} else if good(p) {
			switch r := rng.IntN(10); {
			case r < 4:
				f.breakPath(p)
				s.broken = true
			case r < 7 || hangs >= 2:
				f.mustMsg("mp", "fail_path", "/dev/mapper/"+p)
				s.failed = true
			default:
				setDeadline(p, deadline)
				f.swap(p, fmt.Sprintf("0 %d delay %s 0 600000", f.sectors, f.file))
				s.hung = true
				hangs++
				if rng.IntN(2) == 0 {
					// Hang past the deadline: its I/O times out (or, if
					// none was sent there, its check does), which fails
					// it.
					testutil.Eventually(t, p+" to fail while it hangs", func() bool { return !f.target("mp").state().active[i] })
				}
			}
			time.Sleep(time.Duration(rng.IntN(4000)) * time.Microsecond)
			continue
		}
		// Repair p: a working table, then reinstate it.
		setDeadline(p, 0)
		f.bringBack(p, s.broken || s.hung)
		*s = pstate{}
		time.Sleep(time.Duration(rng.IntN(4000)) * time.Microsecond)
	}
	for _, p := range names {
		if !good(p) {
			setDeadline(p, 0)
			f.bringBack(p, ps[p].broken || ps[p].hung)
		}
	}
	stop.Store(true)
	for _, w := range ws {
		select {
		case <-w.done:
		case <-time.After(2 * testutil.Patience):
			t.Fatalf("worker %d did not finish", w.id)
		}
	}
	// Every block reads back right, through the map and in the file.
	for blk := 0; blk < rfBlocks; blk++ {
		b := f.read(f.loops[blk%2], uint64(blk)*(rfBlock>>dm.SectorShift), rfBlock)
		if err := b.wait(t); err != nil {
			t.Fatalf("final read of block %d: %v", blk, err)
		}
		if m.gen[blk].Load() >= 1<<31 {
			continue // a write to it failed: either content is possible
		}
		m.check(b.data, blk)
		m.check(testutil.ReadFileAt(t, f.file, int64(blk)*rfBlock, rfBlock), blk)
	}
	t.Logf("%s: %d I/Os, %d path actions (%d hangs, %d I/O deadlines passed); status %s", sel, m.ops.Load(), actions, hangs,
		strings.Count(f.logs.String(), "timed out"), f.status("mp"))
	if m.errs.Load() != 0 || m.bad.Load() != 0 {
		t.Errorf("%d I/O errors, %d wrong: %q", m.errs.Load(), m.bad.Load(), m.report)
	}
	if m.ops.Load() < int64(n) {
		t.Errorf("only %d I/Os", m.ops.Load())
	}
}
