package uring

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"testing"
	"time"

	"udm/internal/testutil"
)

// reader keeps depth random 4 KiB reads in flight on one loop until n
// have completed: the steady read path as the dm core and NBD server
// drive it (fixed buffers, fixed file, one handler object, no closures).
type reader struct {
	l        *Loop
	deadline string // "", "link" or "swept"

	fd     int32
	fixed  bool
	bufs   []Buf
	blocks uint64
	rng    *rand.Rand
	left   int
	active int
	errs   int
	done   chan struct{}
}

func (r *reader) submit(i uint64) {
	var e SQE
	off := r.rng.Uint64N(r.blocks) * 4096
	if r.fixed {
		e.PrepReadFixed(r.fd, r.bufs[i].B, off, uint16(r.bufs[i].Index))
		e.Fixed()
	} else {
		e.PrepRead(r.fd, r.bufs[i].B, off)
	}
	var err error
	switch r.deadline {
	case "link":
		_, err = r.l.SubmitDeadline(&e, 2*time.Second, r, i)
	case "swept":
		_, err = r.l.SubmitTimed(&e, 2*time.Second, r, i)
	default:
		_, err = r.l.Submit(&e, r, i)
	}
	if err != nil {
		panic(err)
	}
	r.active++
}

func (r *reader) Complete(tag uint64, res int32, _ uint32) {
	r.active--
	if res != 4096 {
		r.errs++
	}
	if r.left > 0 {
		r.left--
		r.submit(tag)
		return
	}
	if r.active == 0 {
		close(r.done)
	}
}

func benchRead(b *testing.B, path string, depth int, fixed bool) {
	benchReadDeadline(b, path, depth, fixed, "")
}

func benchReadDeadline(b *testing.B, path string, depth int, fixed bool, deadline string) {
	r := startReader(b, path, depth, fixed, deadline)
	before := r.l.Stats()
	b.ReportAllocs()
	b.ResetTimer()
	r.runN(b.N)
	b.StopTimer()
	after := r.l.Stats()
	if r.errs > 0 {
		b.Fatalf("%d reads failed", r.errs)
	}
	b.ReportMetric(float64(after.Enters-before.Enters)/float64(b.N), "syscalls/op")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "IOPS")
}

// startReader sets up a loop and a reader of path with depth buffers,
// and warms it up with 1000 reads. The loop and file close with tb.
func startReader(tb testing.TB, path string, depth int, fixed bool, deadline string) *reader {
	l, err := NewLoop(Config{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	f, err := OpenBlock(path, OpenOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	r := &reader{l: l, fixed: fixed, deadline: deadline, blocks: uint64(f.Size / 4096), rng: rand.New(rand.NewPCG(1, 1))}
	var rerr error
	l.Call(func() {
		idx, err := l.RegisterFile(f.Fd)
		if err != nil {
			rerr = err
			return
		}
		r.fd = idx
		if !fixed {
			r.fd = int32(f.Fd)
		}
		for i := 0; i < depth; i++ {
			r.bufs = append(r.bufs, l.Arena().Get(4096))
		}
	})
	if rerr != nil {
		tb.Fatal(rerr)
	}
	r.runN(1000)
	return r
}

// runN performs n reads, len(r.bufs) at a time, and waits for them.
func (r *reader) runN(n int) {
	depth := len(r.bufs)
	r.done = make(chan struct{})
	r.left = max(0, n-depth)
	r.l.Call(func() {
		for i := 0; i < min(depth, n); i++ {
			r.submit(uint64(i))
		}
	})
	<-r.done
}

func BenchmarkRead4K(b *testing.B) {
	file := testutil.TempFile(b, 256<<20)
	fillFile(b, file)
	paths := map[string]string{"shm": file}
	if os.Geteuid() == 0 {
		paths["loop"] = testutil.LoopDevice(b, file)
	}
	for _, name := range []string{"shm", "loop"} {
		path, ok := paths[name]
		if !ok {
			continue
		}
		for _, depth := range []int{1, 32} {
			for _, fixed := range []bool{true, false} {
				kind := "fixed"
				if !fixed {
					kind = "plain"
				}
				b.Run(fmt.Sprintf("%s/qd%d/%s", name, depth, kind), func(b *testing.B) { benchRead(b, path, depth, fixed) })
			}
			for _, dl := range []string{"link", "swept"} {
				b.Run(fmt.Sprintf("%s/qd%d/fixed-deadline-%s", name, depth, dl), func(b *testing.B) { benchReadDeadline(b, path, depth, true, dl) })
			}
		}
	}
}

// fillFile writes the file so reads hit allocated pages, not holes.
func fillFile(b testing.TB, path string) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i * 7)
	}
	for off := int64(0); off < st.Size(); off += int64(len(chunk)) {
		if _, err := f.WriteAt(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPost measures Post to a busy and to an idle loop.
func BenchmarkPost(b *testing.B) {
	l, err := NewLoop(Config{ArenaSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	b.ReportAllocs()
	fn := func() {}
	for i := 0; i < b.N; i++ {
		l.Post(fn)
	}
	l.Call(func() {})
	st := l.Stats()
	b.ReportMetric(float64(st.Wakes)/float64(b.N), "wakes/op")
}

// TestSteadyReadAllocatesNothing: the steady read path (fixed buffers
// and file, a handler object, with and without deadlines) allocates
// nothing per read. Allocations are counted process-wide, so a little
// slack covers the test's own Call and the runtime; one allocation per
// read would be thousands.
func TestSteadyReadAllocatesNothing(t *testing.T) {
	file := testutil.TempFile(t, 16<<20)
	fillFile(t, file)
	const n = 20000
	for _, tc := range []struct {
		name     string
		depth    int
		fixed    bool
		deadline string
	}{
		{"qd1-fixed", 1, true, ""},
		{"qd32-fixed", 32, true, ""},
		{"qd32-plain", 32, false, ""},
		{"qd32-linked-deadline", 32, true, "link"},
		{"qd32-swept-deadline", 32, true, "swept"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startReader(t, file, tc.depth, tc.fixed, tc.deadline)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			r.runN(n)
			runtime.ReadMemStats(&after)
			if r.errs > 0 {
				t.Fatalf("%d reads failed", r.errs)
			}
			if allocs := after.Mallocs - before.Mallocs; allocs > n/100 {
				t.Fatalf("%d allocations for %d reads (%.3f per read): the steady path allocates", allocs, n, float64(allocs)/n)
			}
		})
	}
}
