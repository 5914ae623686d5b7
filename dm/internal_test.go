package dm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// Tests and benchmarks of internals that need no test device (those that
// do are in package dm_test, with dm/dmtest).

// idExec is an executor with an ID (as uring.Loop has); nothing is
// posted to it.
type idExec struct{ id int }

func (e *idExec) Post(fn func()) error { fn(); return nil }
func (e *idExec) ID() int              { return e.id }

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
		d := NewDevice(DeviceConfig{Name: "b", Log: zerolog.Nop()})
		if err := d.Load("0 2048 zero"); err != nil {
			b.Fatal(err)
		}
		if err := d.Resume(context.Background()); err != nil {
			b.Fatal(err)
		}
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
				bio := &Bio{Exec: &idExec{id: int(ids.Add(1) - 1)}}
				for pb.Next() {
					sh := &d.shards[d.shardOf(bio)]
					sh.pending.Add(1)
					if d.Flags()&FlagBlockIO != 0 {
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
			if d.PendingSum() != 0 {
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
			if flags.Load()&FlagNoflushSuspending != 0 {
				list.push(bio)
				list.pop()
			}
			l.Unlock()
		}
		b.Run(lc.name+"/uncontended", func(b *testing.B) {
			l := lc.mk()
			var list bioList
			var flags atomic.Uint32
			flags.Store(FlagNoflushSuspending)
			bio := new(Bio)
			for i := 0; i < b.N; i++ {
				section(l, &list, &flags, bio)
			}
		})
		// Loops are goroutines locked to their threads: a mutex that
		// parks one costs a futex sleep and wake-up of the thread.
		for _, locked := range []bool{false, true} {
			name := lc.name + "/parallel"
			if locked {
				name += "-locked-threads"
			}
			b.Run(name, func(b *testing.B) {
				l := lc.mk()
				var list bioList
				var flags atomic.Uint32
				flags.Store(flagNoflushSuspending)
				b.RunParallel(func(pb *testing.PB) {
					if locked {
						runtime.LockOSThread()
						defer runtime.UnlockOSThread()
					}
					bio := new(Bio)
					for pb.Next() {
						section(l, &list, &flags, bio)
					}
				})
			})
		}
	}
}

func TestLatencyBuckets(t *testing.T) {
	for _, tc := range []struct {
		ns     int64
		bucket int
	}{
		{-5, 0}, {0, 0}, {1, 0}, {8191, 0}, {8192, 1}, {16383, 1}, {16384, 2},
		{int64(LatencyBound(NumLatencyBuckets-1)) - 1, NumLatencyBuckets - 1},
		{int64(LatencyBound(NumLatencyBuckets - 1)), NumLatencyBuckets},
		{1 << 62, NumLatencyBuckets},
	} {
		var h latHist
		h.observe(tc.ns)
		s := h.snapshot()
		for i, c := range s.Counts {
			want := uint64(0)
			if i == tc.bucket {
				want = 1
			}
			if c != want {
				t.Fatalf("%d ns: bucket %d holds %d, want it in bucket %d", tc.ns, i, c, tc.bucket)
			}
		}
		if tc.ns > 0 && s.Sum != time.Duration(tc.ns) {
			t.Fatalf("%d ns: sum %v", tc.ns, s.Sum)
		}
	}
	if LatencyBound(0) != 8192*time.Nanosecond {
		t.Fatalf("first bound %v", LatencyBound(0))
	}
}

func TestErrnoOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want syscall.Errno
	}{
		{syscall.ENOSPC, syscall.ENOSPC},
		{fmt.Errorf("x: %w", syscall.EROFS), syscall.EROFS},
		{ErrBusy, syscall.EBUSY},
		{errors.New("plain"), syscall.EIO},
		{syscall.Errno(0), syscall.EIO},
	} {
		if got := errnoOf(tc.err); got != tc.want {
			t.Errorf("errnoOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
