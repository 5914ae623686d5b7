package perf

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestWriteBenchmarksSplitsJSONAndPlots: the raw JSON report goes to
// its directory, the plots to theirs, and the markdown links the plots
// where they are, relative to itself.
func TestWriteBenchmarksSplitsJSONAndPlots(t *testing.T) {
	root := t.TempDir()
	wl := Workload{Name: "randread-4k-qd1", RW: "randread", BS: 4096, Depth: 1}
	res := &Result{IOPS: 1000, Lat: Latency{Count: 10, P50: 10, Percentiles: [][2]float64{{50, 10}, {99, 20}}}}
	rep := &Report{Started: time.Now(), Reps: 1, RuntimeS: 1, Workloads: []Workload{wl},
		Contenders: []string{CUdmLinTCP},
		Runs:       map[string][][]*Result{wl.Name: {{res}}},
		Median:     map[string][]*Result{wl.Name: {res}}}
	md := filepath.Join(root, "BENCHMARKS.md")
	jsonDir, plotDir := filepath.Join(root, "perf", "out"), filepath.Join(root, "perf", "results")
	if err := WriteBenchmarks(rep, md, jsonDir, plotDir, "udm bench matrix"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{filepath.Join(jsonDir, "report.json"), filepath.Join(plotDir, wl.Name+".svg")} {
		if _, err := os.Stat(want); err != nil {
			t.Errorf("not written: %v", err)
		}
	}
	for _, dir := range []string{jsonDir, plotDir} {
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 {
			t.Errorf("%s holds %d files, want 1", dir, len(ents))
		}
	}
	text, err := os.ReadFile(md)
	if err != nil {
		t.Fatal(err)
	}
	if link := "(perf/results/" + wl.Name + ".svg)"; !strings.Contains(string(text), link) {
		t.Errorf("BENCHMARKS.md does not link %s", link)
	}

	// Without a plot directory, both go to the JSON directory.
	one := filepath.Join(root, "one")
	if err := WriteBenchmarks(rep, md, one, "", "udm bench matrix"); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(one); len(ents) != 2 {
		t.Errorf("%s holds %d files, want the report and the plot", one, len(ents))
	}
}

// TestFuseTargets: the FUSE frontend's row is checked against both
// nbdfuse rows and the loop device on the backing, IOPS at depth 32 and
// p50 at depth 1, each pass or fail by its own threshold.
func TestFuseTargets(t *testing.T) {
	r := func(iops, p50 float64) *Result { return &Result{IOPS: iops, Lat: Latency{P50: p50}} }
	rep := &Report{Contenders: []string{CUdmFuseLoop, CUdmNbdfuse, CNbdkitNbdfuse, CFioLoop},
		Median: map[string][]*Result{
			"randread-4k-qd32": {r(20000, 0), r(10000, 0), r(10001, 0), r(40001, 0)},
			"randread-4k-qd1":  {r(0, 60), r(0, 100), r(0, 99), r(0, 30)},
		}}
	want := map[string]bool{
		"FUSE frontend IOPS ≥ 2× " + CUdmNbdfuse + ": randread-4k-qd32":           true,
		"FUSE frontend IOPS ≥ 2× " + CNbdkitNbdfuse + ": randread-4k-qd32":        false,
		"FUSE frontend IOPS ≥ ½ the loop device on the backing: randread-4k-qd32": false,
		"FUSE frontend p50 ≤ 0.6× " + CUdmNbdfuse + ": randread-4k-qd1":           true,
		"FUSE frontend p50 ≤ 0.6× " + CNbdkitNbdfuse + ": randread-4k-qd1":        false,
		"FUSE frontend p50 ≤ 2× the loop device on the backing: randread-4k-qd1":  true,
	}
	cs := fuseTargets(rep)
	if len(cs) != len(want) {
		t.Fatalf("%d checks, want %d: %+v", len(cs), len(want), cs)
	}
	for _, c := range cs {
		if p, ok := want[c.Target]; !ok || p != c.Pass || c.Missing {
			t.Errorf("%+v: want pass=%v (known %v)", c, p, ok)
		}
	}
}
