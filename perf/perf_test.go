package perf

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/uring"
)

func TestRawWorkloads(t *testing.T) {
	f := testutil.TempFile(t, 32<<20)
	for _, rw := range []string{"read", "write", "randread", "randwrite", "randrw"} {
		eng, err := NewFileEngine(f)
		if err != nil {
			t.Fatal(err)
		}
		res, err := Run(context.Background(), Config{RW: rw, Depth: 8, Loops: 2, TotalBytes: 8 << 20, BlockSize: 8192}, eng)
		eng.Close()
		if err != nil {
			t.Fatalf("%s: %v", rw, err)
		}
		if res.Errors != 0 || res.Ops < 1000 || res.IOPS <= 0 || res.Lat.P50 <= 0 || res.Lat.Max < res.Lat.P99 {
			t.Fatalf("%s: implausible result %+v", rw, res)
		}
		switch rw {
		case "read", "randread":
			if res.Writes != 0 {
				t.Fatalf("%s issued %d writes", rw, res.Writes)
			}
		case "write", "randwrite":
			if res.Reads != 0 {
				t.Fatalf("%s issued %d reads", rw, res.Reads)
			}
		case "randrw":
			share := float64(res.Reads) / float64(res.Ops)
			if share < 0.6 || share > 0.8 {
				t.Fatalf("randrw read share %.2f, want about 0.70", share)
			}
		}
	}
}

// fileEngine is a file engine over a scratch file of size bytes, closed
// when the test ends.
func fileEngine(t *testing.T, size int64) Engine {
	t.Helper()
	eng, err := NewFileEngine(testutil.TempFile(t, size))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

func TestVerifyRoundTripAndTimeline(t *testing.T) {
	eng := fileEngine(t, 16<<20)
	res, err := Run(context.Background(), Config{RW: "randrw", ReadPct: 50, Depth: 16, Loops: 2, Duration: 500 * time.Millisecond,
		Verify: true, Interval: 100 * time.Millisecond, Seed: 42}, eng)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || len(res.VerifyFailures) != 0 {
		t.Fatalf("verified run failed: %d errors, %v", res.Errors, res.VerifyFailures)
	}
	if res.VerifiedBytes == 0 {
		t.Fatal("nothing was verified")
	}
	if len(res.Timeline) < 4 {
		t.Fatalf("timeline of %d points for 500ms at 100ms", len(res.Timeline))
	}
}

// corruptEngine wraps a port and damages some reads.
type corruptEngine struct {
	Engine
	every int
	mode  string
}

func (c *corruptEngine) Port(l *uring.Loop) (Port, error) {
	p, err := c.Engine.Port(l)
	return &corruptPort{Port: p, e: c}, err
}

type corruptPort struct {
	Port
	e *corruptEngine
	n int
}

func (p *corruptPort) Submit(io *IO) {
	if io.Op == Read {
		p.n++
		if p.n%p.e.every == 0 {
			// Complete without reading: the buffer holds whatever the
			// last write left (stale) or is scribbled on (corrupt).
			if p.e.mode == "corrupt" {
				io.Buf.B[100] ^= 0xff
			}
			io.Done(nil)
			return
		}
	}
	p.Port.Submit(io)
}

func TestVerifyCatchesBadData(t *testing.T) {
	for _, mode := range []string{"corrupt", "stale"} {
		raw := fileEngine(t, 4<<20)
		eng := &corruptEngine{Engine: raw, every: 7, mode: mode}
		// Write everything first so every block has known content.
		if _, err := Run(context.Background(), Config{RW: "write", Depth: 4, TotalBytes: 4 << 20, Verify: true, Seed: 9}, raw); err != nil {
			t.Fatal(err)
		}
		// 2 MiB of random reads and writes: some 70 damaged reads.
		res, err := Run(context.Background(), Config{RW: "randrw", ReadPct: 50, Depth: 4, TotalBytes: 2 << 20, Verify: true, Seed: 9}, eng)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.VerifyFailures) == 0 {
			t.Fatalf("%s reads went unnoticed", mode)
		}
		t.Logf("%s: %s", mode, res.VerifyFailures[0])
	}
}

func TestVerifierSectorChecks(t *testing.T) {
	v := newVerifier(Config{Seed: 5, BlockSize: 4096}, 4)
	buf := uring.Buf{B: make([]byte, 4096)}
	io := &IO{Op: Write, Off: 8192, Buf: buf, block: 2}
	v.fill(io, 0)
	v.settle(io, nil)
	rd := &IO{Op: Read, Off: 8192, Buf: buf, block: 2}
	v.check(rd, 0)
	if f := v.failures(); len(f) != 0 {
		t.Fatalf("good block failed: %v", f)
	}
	// Misdirected: the same data read at another block.
	mis := &IO{Op: Read, Off: 12288, Buf: uring.Buf{B: append([]byte(nil), buf.B...)}, block: 3}
	v.gens[3] = 1
	v.check(mis, 0)
	if f := v.failures(); len(f) != 1 || !strings.Contains(f[0], "misdirected") {
		t.Fatalf("misdirected block: %v", f)
	}
	// A failed write makes either generation acceptable.
	io2 := &IO{Op: Write, Off: 8192, Buf: uring.Buf{B: make([]byte, 4096)}, block: 2}
	v.fill(io2, 0)
	v.settle(io2, fmt.Errorf("EIO"))
	v.check(&IO{Op: Read, Off: 8192, Buf: buf, block: 2}, 0) // old content
	v.check(&IO{Op: Read, Off: 8192, Buf: io2.Buf, block: 2}, 0)
	if f := v.failures(); len(f) != 1 {
		t.Fatalf("after a failed write, old or new content must pass: %v", f)
	}
}

func TestFioJSON(t *testing.T) {
	out, err := os.ReadFile("testdata/fio-randread.json")
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseFioJSON(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.IOPS < 1000 || r.Lat.P50 <= 0 || r.Lat.P999 < r.Lat.P50 || r.Reads == 0 || r.CPUPerIO <= 0 {
		t.Fatalf("parsed %+v", r)
	}
	if _, err := ParseFioJSON([]byte("fio: not json")); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestFioRunsWhenInstalled(t *testing.T) {
	testutil.RequireTool(t, "fio")
	f := testutil.TempFile(t, 16<<20)
	r, err := RunFio(context.Background(), FioJob{Filename: f, RW: "randread", BlockSize: 4096, Depth: 4, Runtime: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops == 0 || r.Lat.P50 <= 0 {
		t.Fatalf("fio result %+v", r)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "4k": 4096, "128K": 128 << 10, "1m": 1 << 20, "2g": 2 << 30, "1GiB": 1 << 30, "512b": 512} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "k", "-1", "1x", "4kk"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestMedianAndMatrix(t *testing.T) {
	rs := []*Result{{IOPS: 10, Lat: Latency{P50: 3}}, {IOPS: 30, Lat: Latency{P50: 1}}, {IOPS: 20, Lat: Latency{P50: 2}}}
	m := Median(rs)
	if m.IOPS != 20 || m.Lat.P50 != 2 {
		t.Fatalf("median %+v", m)
	}
	var order []string
	mk := func(name string, iops float64) Contender {
		return Contender{Name: name, Run: func(ctx context.Context, w Workload, _, _ time.Duration) (*Result, error) {
			order = append(order, name)
			return &Result{IOPS: iops, Lat: Latency{P50: 100 / iops}}, nil
		}}
	}
	mx := &Matrix{Workloads: []Workload{{Name: "w", RW: "randread", BS: 4096, Depth: 1}},
		Contenders: []Contender{mk("a", 100), mk("b", 50), mk("c", 25)}, Reps: 3}
	rep, err := mx.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// The order rotates: abc, bca, cab.
	if got := strings.Join(order, ""); got != "abcbcacab" {
		t.Fatalf("run order %s, want rotation abcbcacab", got)
	}
	var b bytes.Buffer
	rep.Markdown(&b, []Ratio{{Label: "a", Ref: RefByName(rep.Contenders, "a")}})
	if !strings.Contains(b.String(), "| b | 50 |") || !strings.Contains(b.String(), " 0.50 |") {
		t.Fatalf("report:\n%s", b.String())
	}
}

// failEngine wraps a port and fails every nth I/O with EIO.
// failEngine fails every every-th I/O of each port with EIO; with stop
// set, it closes stop once its ports have been given stopAfter I/Os.
type failEngine struct {
	Engine
	every     int
	stopAfter int64
	stop      chan struct{}
	submitted atomic.Int64
	once      sync.Once
}

func (f *failEngine) Port(l *uring.Loop) (Port, error) {
	p, err := f.Engine.Port(l)
	return &failPort{Port: p, every: f.every, e: f}, err
}

type failPort struct {
	Port
	every, n int
	e        *failEngine
}

func (p *failPort) Submit(io *IO) {
	p.n++
	if e := p.e; e.stop != nil && e.submitted.Add(1) == e.stopAfter {
		e.once.Do(func() { close(e.stop) })
	}
	if p.n%p.every == 0 {
		io.Done(syscall.EIO)
		return
	}
	p.Port.Submit(io)
}

// A run ended by Config.Stop reads back every block it wrote; failed
// I/O is described in IOErrors with its errno, time and offset.
func TestStopReadBackAndIOErrors(t *testing.T) {
	raw := fileEngine(t, 8<<20)
	// Stopped after 2000 I/Os (40 of them failed), however long they take.
	stop := make(chan struct{})
	before := time.Now()
	res, err := Run(context.Background(), Config{RW: "randrw", ReadPct: 30, Depth: 8, Loops: 2, Duration: time.Hour,
		Verify: true, ReadBack: true, Interval: 100 * time.Millisecond, Stop: stop}, &failEngine{Engine: raw, every: 50, stopAfter: 2000, stop: stop})
	if err != nil {
		t.Fatal(err)
	}
	if res.Started.Before(before) || res.Started.After(time.Now()) {
		t.Fatalf("Started %v is not within the run", res.Started)
	}
	if res.Seconds > 600 {
		t.Fatalf("Stop did not end the run (%.1fs)", res.Seconds)
	}
	if len(res.VerifyFailures) != 0 {
		t.Fatalf("verify failures: %v", res.VerifyFailures)
	}
	if res.Errors == 0 || len(res.IOErrors) == 0 {
		t.Fatalf("no errors recorded: %d, %v", res.Errors, res.IOErrors)
	}
	var rbErrs int
	for i, e := range res.IOErrors {
		if e.Errno != "EIO" || e.Len != 4096 || e.Offset%4096 != 0 || e.At <= 0 || (i > 0 && e.At < res.IOErrors[i-1].At) {
			t.Fatalf("error %d: %+v", i, e)
		}
		if e.ReadBack {
			rbErrs++
		}
	}
	// Blocks written: at most one per write; the pass reads each once
	// (some of those reads fail: they are errors, not verified bytes).
	if res.ReadBackBytes == 0 || rbErrs == 0 {
		t.Fatalf("read-back: %d bytes, %d errors", res.ReadBackBytes, rbErrs)
	}
	if res.ReadBackBytes > res.Writes*4096 {
		t.Fatalf("read back %d bytes after %d writes", res.ReadBackBytes, res.Writes)
	}

	// The pass catches a block whose acknowledged write was lost.
	lost := &corruptEngine{Engine: raw, every: 5, mode: "stale"}
	res, err = Run(context.Background(), Config{RW: "randwrite", Depth: 4, TotalBytes: 1 << 20, Verify: true, ReadBack: true, Seed: 3}, lost)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.VerifyFailures) == 0 {
		t.Fatal("read-back found nothing wrong with stale blocks")
	}
}

// Every interval with errors keeps at least one described error, however
// many came before.
func TestIOErrorsPerInterval(t *testing.T) {
	raw := fileEngine(t, 4<<20)
	// 4096 reads, half of them failed: more than the 100 a worker keeps
	// plus one an interval, unless the run takes minutes.
	res, err := Run(context.Background(), Config{RW: "randread", Depth: 4, TotalBytes: 16 << 20,
		Interval: 50 * time.Millisecond}, &failEngine{Engine: raw, every: 2})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, e := range res.IOErrors {
		seen[int(e.At/(50*time.Millisecond))] = true
	}
	for _, p := range res.Timeline {
		if i := int(p.T/0.05 + 0.5); p.Errors > 0 && !seen[i] {
			t.Fatalf("interval %d had %d errors and none is described (%d kept of %d)", i, p.Errors, len(res.IOErrors), res.Errors)
		}
	}
	if int64(len(res.IOErrors)) >= res.Errors {
		t.Fatalf("kept all %d errors; the test wants more than the cap", res.Errors)
	}
}

// inlineEngine completes every I/O inside Submit, as filedev does for
// memory-backed files, and records how deeply Submit calls nest.
type inlineEngine struct {
	size  int64
	depth *int
	max   *int
}

func (e inlineEngine) Name() string                     { return "inline" }
func (e inlineEngine) Size() int64                      { return e.size }
func (e inlineEngine) Close() error                     { return nil }
func (e inlineEngine) Port(l *uring.Loop) (Port, error) { return inlinePort{e}, nil }

type inlinePort struct{ e inlineEngine }

func (p inlinePort) Submit(io *IO) {
	*p.e.depth++
	*p.e.max = max(*p.e.max, *p.e.depth)
	io.Done(nil)
	*p.e.depth--
}
func (inlinePort) Close() {}

func TestInlineCompletionsDoNotRecurse(t *testing.T) {
	// A million I/Os completing inside Submit: recursing per I/O would
	// need a stack of gigabytes.
	var depth, deepest int
	res, err := Run(context.Background(), Config{RW: "randread", Depth: 4, TotalBytes: 1 << 20 * 4096},
		inlineEngine{size: 1 << 30, depth: &depth, max: &deepest})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops+res.RampOps < 1<<20-4 || res.Errors != 0 {
		t.Fatalf("%d I/Os, %d errors", res.Ops, res.Errors)
	}
	if deepest > 1 {
		t.Fatalf("Submit calls nested %d deep: completions recurse into submissions", deepest)
	}
}

// A NaN breaks a timeline's line; markers are drawn with their labels
// inside the plot.
func TestPlotTimelineGapsAndMarkers(t *testing.T) {
	var b strings.Builder
	pts := [][2]float64{{0, 1}, {1, 2}, {2, math.NaN()}, {3, 4}, {4, 5}}
	if err := PlotTimeline(&b, "t", "y", []Series{{Name: "s", Points: pts}}, true, []Marker{{X: 2, Label: "cut r0"}}); err != nil {
		t.Fatal(err)
	}
	svg := b.String()
	if n := strings.Count(svg, `d="M`); n != 1 {
		t.Fatalf("%d paths, want 1", n)
	}
	i := strings.Index(svg, `d="M`)
	d := svg[i : i+strings.Index(svg[i:], `"/>`)]
	if strings.Count(d, "M") != 2 || strings.Count(d, "L") != 2 || strings.Contains(d, "NaN") {
		t.Fatalf("line with a gap: %s", d)
	}
	if !strings.Contains(svg, `text-anchor="end" transform="rotate(-90`) || !strings.Contains(svg, "cut r0") {
		t.Fatal("marker label missing or outside the plot")
	}
}
