package filedev

import (
	"bytes"
	"testing"

	"udm/dm"
	"udm/internal/testutil"
	"udm/uring"
)

// TestIOStats: what reaches the file is counted by class, with bytes,
// errors and a latency sample each, on two loops, and nothing is left in
// flight. Both modes: a latency sample is never zero, also when the I/O
// runs inline within one loop callback (the loop's clock is renewed after
// the copy).
func TestIOStats(t *testing.T) {
	for _, mode := range []Mode{ModeUring, ModeInline} {
		t.Run(mode.String(), func(t *testing.T) { testIOStats(t, mode) })
	}
}

func testIOStats(t *testing.T, mode Mode) {
	var _ dm.IOStatser = (*Device)(nil)
	l0, l1 := newLoop(t, 0), newLoop(t, 1)
	d, err := Open(testutil.TempFile(t, 1<<20), Options{Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	sub := submitter{d}
	data := bytes.Repeat([]byte{7}, 8192)
	for _, l := range []*uring.Loop{l0, l1} {
		if _, err := ioOn(t, l, sub, dm.OpWrite, 0, data, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := ioOn(t, l, sub, dm.OpRead, 0, make([]byte, 4096), 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ioOn(t, l0, sub, dm.OpFlush, 0, nil, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := ioOn(t, l1, sub, dm.OpWriteZeroes, 16, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	s := d.IOStats()
	if s.Ops != [3]uint64{2, 2, 2} || s.ReadBytes != 8192 || s.WriteBytes != 16384 || s.Errors != 0 || s.InFlight != 0 {
		t.Fatalf("stats: %+v", s)
	}
	for i, h := range s.Latency {
		if h.Count() != s.Ops[i] || h.Sum <= 0 {
			t.Fatalf("latency %d: %d samples, sum %v (ops %d)", i, h.Count(), h.Sum, s.Ops[i])
		}
	}
	// A read past the end fails before reaching the file: not counted.
	if _, err := ioOn(t, l0, sub, dm.OpRead, (1<<20)/512, make([]byte, 4096), 0); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if s2 := d.IOStats(); s2.Ops != s.Ops {
		t.Fatalf("a refused I/O was counted: %+v", s2)
	}
}
