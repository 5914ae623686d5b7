package multipath

import (
	"fmt"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/dm/filedev"
	"udm/internal/testutil"
	"udm/uring"
)

// benchSnapshot builds a ready snapshot of n paths (no devices) for the
// selectors' own cost.
func benchSnapshot(kind selKind, n int) *snapshot {
	g := &group{kind: kind}
	g.setWeights(hstWeightDefault)
	s := &snapshot{ready: true, g: g}
	for i := 0; i < n; i++ {
		p := &path{idx: i, group: g, rel: 1}
		g.paths = append(g.paths, p)
		s.active = append(s.active, p)
	}
	g.active.Store(int64(n))
	return s
}

// BenchmarkSelect is the cost of choosing a path for one I/O and
// accounting its start and end, per selector, with 2 and 8 active
// paths: serially, and from all CPUs at once (the in-flight counters
// are shared atomics; "parallel" shows what sharing them costs).
func BenchmarkSelect(b *testing.B) {
	for kind := range selectors {
		for _, n := range []int{2, 8} {
			name := fmt.Sprintf("%s/paths=%d", selectors[kind].name, n)
			b.Run(name, func(b *testing.B) {
				s := benchSnapshot(selKind(kind), n)
				c := dm.NewDetachedClone(nil, func(*dm.Clone, error) {})
				c.Len = 4096
				b.ReportAllocs()
				for b.Loop() {
					now := s.clock()
					p := s.pick(c.Len, now)
					p.start(c, now)
					p.end(c)
				}
			})
			b.Run(name+"/parallel", func(b *testing.B) {
				s := benchSnapshot(selKind(kind), n)
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					c := dm.NewDetachedClone(nil, func(*dm.Clone, error) {})
					c.Len = 4096
					for pb.Next() {
						now := s.clock()
						p := s.pick(c.Len, now)
						p.start(c, now)
						p.end(c)
					}
				})
			})
		}
	}
}

// BenchmarkMapNull is one bio through the dm core and a target to a
// device that completes at once: multipath (2 paths) against linear, to
// show what the multipath target adds to the core's fast path.
func BenchmarkMapNull(b *testing.B) {
	for _, tc := range []struct{ name, table string }{
		{"linear", "0 2048 linear n0 0"},
		{"multipath", "0 2048 multipath 0 0 1 1 round-robin 0 2 0 n0 n1"},
		{"multipath-service-time", "0 2048 multipath 0 0 1 1 service-time 0 2 0 n0 n1"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			env := newEnv(b, envConfig{mem: []dm.BlockDevice{dmtest.NewNullDevice("n0", mib), dmtest.NewNullDevice("n1", mib)}})
			d := env.create("d", tc.table)
			var end countEnd
			bio := &dm.Bio{Op: dm.OpRead, Len: 4096, Buf: make([]byte, 4096), BufIndex: -1, End: &end}
			d.Submit(bio)
			b.ReportAllocs()
			for b.Loop() {
				d.Submit(bio)
			}
			if end.err != nil {
				b.Fatal(end.err)
			}
		})
	}
}

// benchRun keeps depth 4 KiB random reads in flight on one loop until n
// have completed. Everything runs on the loop.
type benchRun struct {
	l        *uring.Loop
	d        *dm.Device
	left     int
	inflight int
	blocks   uint64
	rnd      uint64
	errs     int
	done     chan struct{}
	ios      []*benchIO
}

type benchIO struct {
	dm.Bio
	r   *benchRun
	buf uring.Buf
}

func (io *benchIO) BioEnd(_ *dm.Bio, err error) {
	r := io.r
	if err != nil {
		r.errs++
	}
	r.inflight--
	r.issue(io)
}

func (r *benchRun) issue(io *benchIO) {
	if r.left == 0 {
		if r.inflight == 0 {
			close(r.done)
		}
		return
	}
	r.left--
	r.inflight++
	r.rnd ^= r.rnd << 13
	r.rnd ^= r.rnd >> 7
	r.rnd ^= r.rnd << 17
	io.Sector = (r.rnd % r.blocks) * (4096 >> dm.SectorShift)
	r.d.Submit(&io.Bio)
}

// run does n reads at depth on d from loop l and returns the time taken.
func benchReads(tb testing.TB, l *uring.Loop, d *dm.Device, depth, n int) time.Duration {
	r := &benchRun{l: l, d: d, left: n, blocks: uint64(d.Size() / 4096), rnd: 0x9e3779b97f4a7c15, done: make(chan struct{})}
	setup := make(chan struct{})
	l.Post(func() {
		for i := 0; i < depth; i++ {
			io := &benchIO{r: r, buf: l.Arena().Get(4096)}
			io.Op, io.Len, io.Buf, io.BufIndex, io.Exec, io.End = dm.OpRead, 4096, io.buf.B, io.buf.Index, l, io
			r.ios = append(r.ios, io)
		}
		close(setup)
	})
	<-setup
	start := time.Now()
	l.Post(func() {
		for _, io := range r.ios {
			r.issue(io)
		}
	})
	<-r.done
	el := time.Since(start)
	l.Call(func() {
		for _, io := range r.ios {
			l.Arena().Put(io.buf)
		}
	})
	if r.errs != 0 {
		tb.Fatalf("%d reads failed", r.errs)
	}
	return el
}

// readStack is one contender of BenchmarkRandRead4K: a device in its own
// registry (so that a path's deadline doesn't reach the other's devices).
type readStack struct {
	name  string
	table func(a, b string) string
	opt   Options
}

var readStacks = []readStack{
	{"linear", func(a, _ string) string { return fmt.Sprintf("0 %d linear %s 0", benchFileSize>>9, a) }, Options{}},
	{"multipath", func(a, b string) string {
		return fmt.Sprintf("0 %d multipath 0 0 1 1 round-robin 0 2 1 %s 1 %s 1", benchFileSize>>9, a, b)
	}, Options{}},
	{"multipath-nodeadline", func(a, b string) string {
		return fmt.Sprintf("0 %d multipath 0 0 1 1 round-robin 0 2 1 %s 1 %s 1", benchFileSize>>9, a, b)
	}, Options{IODeadline: -1}},
}

const benchFileSize = 256 * mib

type benchEnv struct {
	loop *uring.Loop
	devs map[string]*dm.Device
}

func newBenchEnv(b *testing.B) *benchEnv {
	testutil.RequireRoot(b)
	dir := os.Getenv("UDM_BENCH_DIR") // a disk-backed directory, if set
	var file string
	if dir != "" {
		f, err := os.CreateTemp(dir, "udm-mp-bench-*.img")
		if err != nil {
			b.Fatal(err)
		}
		file = f.Name()
		b.Cleanup(func() { os.Remove(file) })
		if err := f.Truncate(benchFileSize); err != nil {
			b.Fatal(err)
		}
		f.Close()
	} else {
		file = testutil.TempFile(b, benchFileSize)
	}
	// Real data, so that reads are not of holes.
	fh, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	chunk := make([]byte, mib)
	for i := range chunk {
		chunk[i] = byte(i * 31)
	}
	for off := int64(0); off < benchFileSize; off += mib {
		fh.WriteAt(chunk, off)
	}
	fh.Close()
	la, lb := testutil.LoopDevice(b, file), testutil.LoopDevice(b, file)
	l, err := uring.NewLoop(uring.Config{ID: 0, ArenaSize: 8 * mib})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	e := &benchEnv{loop: l, devs: map[string]*dm.Device{}}
	for _, st := range readStacks {
		targets := dm.DefaultTargets()
		if err := RegisterOptions(targets, st.opt); err != nil {
			b.Fatal(err)
		}
		reg := dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Targets: targets, Open: filedev.Opener(l)})
		d, err := reg.Create(bg(), st.name, "", st.table(la, lb))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { reg.RemoveAll(bg()) })
		e.devs[st.name] = d
	}
	return e
}

// BenchmarkRandRead4K: 4 KiB random reads at depth 1 and 32 from one
// loop, through multipath over two loop-device paths (round-robin, with
// and without the per-I/O deadline) and through linear over one of them,
// in the same run. ns/op is per read (inverse throughput at depth 32);
// the "overhead" case interleaves the contenders in many short rounds
// and reports the median of multipath's time per read relative to
// linear's in the same round.
func BenchmarkRandRead4K(b *testing.B) {
	e := newBenchEnv(b)
	for _, depth := range []int{1, 32} {
		for _, st := range readStacks {
			b.Run(fmt.Sprintf("depth=%d/%s", depth, st.name), func(b *testing.B) {
				d := e.devs[st.name]
				benchReads(b, e.loop, d, depth, 2000) // warm up
				el := benchReads(b, e.loop, d, depth, b.N)
				b.ReportMetric(float64(el.Nanoseconds())/float64(b.N), "ns/op")
				b.ReportMetric(float64(b.N)/el.Seconds(), "IOPS")
			})
		}
		b.Run(fmt.Sprintf("depth=%d/overhead", depth), func(b *testing.B) {
			// Many short rounds, the contenders back to back in a rotating
			// order; each round gives multipath/linear time ratios, and the
			// medians of those are reported: drifts of a shared machine
			// cancel out within a round.
			const rounds, n = 41, 3000
			for b.Loop() {
				var lin []float64
				ratio := map[string][]float64{}
				for r := 0; r < rounds; r++ {
					t := map[string]float64{}
					for k := range readStacks {
						st := readStacks[(k+r)%len(readStacks)]
						t[st.name] = float64(benchReads(b, e.loop, e.devs[st.name], depth, n).Nanoseconds()) / n
					}
					lin = append(lin, t["linear"])
					for _, st := range readStacks[1:] {
						ratio[st.name] = append(ratio[st.name], t[st.name]/t["linear"])
					}
				}
				med := func(xs []float64) float64 { sort.Float64s(xs); return xs[len(xs)/2] }
				b.ReportMetric(med(lin), "linear-ns/read")
				b.ReportMetric((med(ratio["multipath"])-1)*100, "mp-overhead-%")
				b.ReportMetric((med(ratio["multipath-nodeadline"])-1)*100, "mp-nodeadline-overhead-%")
			}
		})
	}
}
