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
