package dm_test

import (
	"sync/atomic"
	"testing"

	"udm/dm"
	"udm/dm/dmtest"
)

// Submit → end through the core over NullDevice (completes inline), per
// table shape; allocs/op must be 0.
func BenchmarkSubmit(b *testing.B) {
	for _, bc := range []nullShape{
		{"linear-4k", "0 2097152 linear null 0", 8, 4096, 1},
		{"linear-split-4k", "0 1024 linear null 0\n1024 2096128 linear null 0", 1020, 4096, 2},
		{"striped-64k-16clones", "0 2097152 striped 2 8 null 0 null 0", 0, 64 << 10, 16},
		{"flush-2targets", "0 1024 linear null 0\n1024 2096128 linear null 0", 0, 0, 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var end countEnd
			d, bio := bc.setUp(b, 1<<30, &end, nil)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d.Submit(bio)
			}
			b.StopTimer()
			if end.n != b.N || end.err != nil {
				b.Fatalf("%d ends, err %v", end.n, end.err)
			}
			b.ReportMetric(float64(bc.clones), "clones/op")
		})
	}
	// From all CPUs at once, each goroutine standing for one loop (an
	// executor with an ID, like uring.Loop).
	b.Run("linear-4k-parallel", func(b *testing.B) {
		d := newDev(b, nil, "0 2097152 linear null 0", dmtest.NewNullDevice("null", 1<<30))
		var ids atomic.Int32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var end countEnd
			bio := &dm.Bio{Op: dm.OpWrite, Sector: 8, Len: 4096, Buf: make([]byte, 4096), BufIndex: -1, End: &end,
				Exec: &benchExec{id: int(ids.Add(1) - 1)}}
			for pb.Next() {
				d.Submit(bio)
			}
		})
	})
}

// benchExec is an executor with an ID (as uring.Loop has); nothing is
// posted to it in the benchmarks.
type benchExec struct{ id int }

func (e *benchExec) Post(fn func()) error { fn(); return nil }
func (e *benchExec) ID() int              { return e.id }
