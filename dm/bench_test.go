package dm

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// Submit → end through the core over NullDevice (completes inline), per
// table shape; allocs/op must be 0.
func BenchmarkSubmit(b *testing.B) {
	for _, bc := range []struct {
		name   string
		table  string
		sector uint64
		n      int
		clones float64
	}{
		{"linear-4k", "0 2097152 linear null 0", 8, 4096, 1},
		{"linear-split-4k", "0 1024 linear null 0\n1024 2096128 linear null 0", 1020, 4096, 2},
		{"striped-64k-16clones", "0 2097152 striped 2 8 null 0 null 0", 0, 64 << 10, 16},
		{"flush-2targets", "0 1024 linear null 0\n1024 2096128 linear null 0", 0, 0, 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			d := newDev(b, nil, bc.table, NewNullDevice("null", 1<<30))
			var end countEnd
			bio := &Bio{Op: OpRead, Sector: bc.sector, Len: uint32(bc.n), Buf: make([]byte, bc.n), BufIndex: -1, End: &end}
			if bc.n == 0 {
				bio.Op, bio.Buf = OpFlush, nil
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d.Submit(bio)
			}
			b.StopTimer()
			if end.n != b.N || end.err != nil {
				b.Fatalf("%d ends, err %v", end.n, end.err)
			}
			b.ReportMetric(bc.clones, "clones/op")
		})
	}
	// From all CPUs at once, each goroutine standing for one loop (an
	// executor with an ID, like uring.Loop).
	b.Run("linear-4k-parallel", func(b *testing.B) {
		d := newDev(b, nil, "0 2097152 linear null 0", NewNullDevice("null", 1<<30))
		var ids atomic.Int32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var end countEnd
			bio := &Bio{Op: OpWrite, Sector: 8, Len: 4096, Buf: make([]byte, 4096), BufIndex: -1, End: &end,
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

// The pending count, as a Device keeps it: each iteration is what Submit
// and the end of a bio do to it (pick the bio's shard by its executor's
// ID, increment, read the flags; then pendingDec: decrement, read the
// flags), from all CPUs at once, each goroutine standing for one loop.
// "sharded" is the Device as made (one shard per CPU, the real choice);
// "one-atomic" is the same Device cut down to one shard, so every loop
// adds to one shared counter: the alternative. "sum" is what the drain
// wait of a suspend pays per look: the sum of the shards.
func BenchmarkPending(b *testing.B) {
	mk := func(b *testing.B, oneAtomic bool) *Device {
		d := newDev(b, nil, "0 2048 zero")
		if oneAtomic {
			d.shards, d.shardMask = d.shards[:1], 0
		}
		return d
	}
	for _, bc := range []struct {
		name      string
		oneAtomic bool
	}{{"sharded", false}, {"one-atomic", true}} {
		b.Run(bc.name, func(b *testing.B) {
			d := mk(b, bc.oneAtomic)
			var ids atomic.Int32
			b.ReportMetric(float64(len(d.shards)), "shards")
			b.RunParallel(func(pb *testing.PB) {
				bio := &Bio{Exec: &benchExec{id: int(ids.Add(1) - 1)}}
				for pb.Next() {
					sh := &d.shards[d.shardOf(bio)]
					sh.pending.Add(1)
					if d.flags.Load()&flagBlockIO != 0 {
						b.Fatal("BLOCK_IO")
					}
					d.pendingDec(sh)
				}
			})
			if n := d.Pending(); n != 0 {
				b.Fatalf("pending %d after the benchmark", n)
			}
		})
	}
	b.Run("sum", func(b *testing.B) {
		d := mk(b, false)
		b.ReportMetric(float64(len(d.shards)), "shards")
		for i := 0; i < b.N; i++ {
			if d.pendingSum() != 0 {
				b.Fatal("sum")
			}
		}
	})
}

// The pushback lock: its critical section checks NOFLUSH_SUSPENDING and
// links a bio onto the list (here pushed and popped so the list stays
// short). Spinlock (what Device uses) against sync.Mutex, uncontended and
// from all CPUs at once.
func BenchmarkPushbackLock(b *testing.B) {
	type locker interface {
		Lock()
		Unlock()
	}
	for _, lc := range []struct {
		name string
		mk   func() locker
	}{
		{"spinlock", func() locker { return new(spinLock) }},
		{"mutex", func() locker { return new(sync.Mutex) }},
	} {
		section := func(l locker, list *bioList, flags *atomic.Uint32, bio *Bio) {
			l.Lock()
			if flags.Load()&flagNoflushSuspending != 0 {
				list.push(bio)
				list.pop()
			}
			l.Unlock()
		}
		b.Run(lc.name+"/uncontended", func(b *testing.B) {
			l := lc.mk()
			var list bioList
			var flags atomic.Uint32
			flags.Store(flagNoflushSuspending)
			bio := new(Bio)
			for i := 0; i < b.N; i++ {
				section(l, &list, &flags, bio)
			}
		})
		b.Run(lc.name+"/parallel", func(b *testing.B) {
			l := lc.mk()
			var list bioList
			var flags atomic.Uint32
			flags.Store(flagNoflushSuspending)
			b.RunParallel(func(pb *testing.PB) {
				bio := new(Bio)
				for pb.Next() {
					section(l, &list, &flags, bio)
				}
			})
		})
		// Loops are goroutines locked to their threads: a mutex that
		// parks one costs a futex sleep and wake-up of the thread.
		b.Run(lc.name+"/parallel-locked-threads", func(b *testing.B) {
			l := lc.mk()
			var list bioList
			var flags atomic.Uint32
			flags.Store(flagNoflushSuspending)
			b.RunParallel(func(pb *testing.PB) {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				bio := new(Bio)
				for pb.Next() {
					section(l, &list, &flags, bio)
				}
			})
		})
	}
}
