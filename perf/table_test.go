package perf

import (
	"bytes"
	"strings"
	"testing"
)

// TestWriteTableAligned: with an engine name longer than the header and
// figures of different widths, every line is as long as the header, the
// engine and rw columns start where their headers do, and each figure
// ends where its header ends.
func TestWriteTableAligned(t *testing.T) {
	rs := []*Result{
		{Engine: "udm multipath, 2 paths over nbd+unix, 4 conns", RW: "randread", BlockSize: 4096, Depth: 1,
			IOPS: 12, MBps: 0.1, Lat: Latency{P50: 1.5, P99: 20, P999: 30, Max: 40}, CPUPerIO: 1.25},
		{Engine: "fio io_uring, file", RW: "write", BlockSize: 1 << 20, Depth: 128,
			IOPS: 1234567, MBps: 98765.4, Lat: Latency{P50: 123456.7, P99: 1e6, P999: 2e6, Max: 3e7}, CPUPerIO: 0.01, Errors: 12345},
	}
	var b bytes.Buffer
	WriteTable(&b, rs)
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines:\n%s", len(lines), b.String())
	}
	head := lines[0]
	for _, l := range lines[1:] {
		if len(l) != len(head) {
			t.Errorf("line of %d bytes, header of %d:\n%s", len(l), len(head), b.String())
		}
	}
	// Where each header word ends; the figures are right-aligned there.
	for _, col := range []string{"bs", "qd", "IOPS", "MB/s", "p50us", "p99us", "p99.9us", "maxus", "cpu/io", "errors"} {
		end := strings.Index(head, " "+col) + 1 + len(col)
		for _, l := range lines[1:] {
			if end > len(l) || l[end-1] == ' ' || (end < len(l) && l[end] != ' ') {
				t.Errorf("column %s does not end at %d:\n%s", col, end, b.String())
			}
		}
	}
	for _, col := range []string{"rw"} {
		start := strings.Index(head, " "+col+" ") + 1
		for _, l := range lines[1:] {
			if l[start-1] != ' ' || l[start] == ' ' {
				t.Errorf("column %s does not start at %d:\n%s", col, start, b.String())
			}
		}
	}
}

// TestMarkdownTarRowHasNoLatencies: the tar row's table names what it
// measures, shows "–" for the latencies it has none of (not 0.0 and a
// NaN ratio) and lists its repetitions.
func TestMarkdownTarRowHasNoLatencies(t *testing.T) {
	w := tarWorkload()
	r := &Report{Reps: 2, Workloads: []Workload{w}, Contenders: []string{CUdmExt4, CNbdkitExt4},
		Runs: map[string][][]*Result{w.Name: {
			{{Engine: CUdmExt4, IOPS: 7000}, {Engine: CUdmExt4, IOPS: 8000}},
			{{Engine: CNbdkitExt4, IOPS: 6000}, {Engine: CNbdkitExt4, IOPS: 6100}}}},
		Median: map[string][]*Result{w.Name: {{Engine: CUdmExt4, IOPS: 7500, MBps: 90}, {Engine: CNbdkitExt4, IOPS: 6050, MBps: 72}}},
	}
	var b bytes.Buffer
	r.Markdown(&b, []Ratio{{Label: "nbdkit", Ref: RefByName(r.Contenders, CNbdkitExt4)}})
	md := b.String()
	for _, want := range []string{"source tree, then sync", "| " + CUdmExt4 + " | 7500 | 90.0 | – | – | – |", " 1.24 | – |", "- " + CUdmExt4 + ": 7000, 8000; 0.93"} {
		if !strings.Contains(md, want) {
			t.Errorf("no %q in\n%s", want, md)
		}
	}
	if strings.Contains(md, "NaN") || hasLatencies(r, w.Name) {
		t.Errorf("NaN or latencies in\n%s", md)
	}
}
