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
