package dm_test

import (
	"sync/atomic"
	"testing"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
	"udm/uring"
)

// A uring.Loop is an Executor, and numbers itself for the counters'
// shards.
var (
	_ dm.Executor   = (*uring.Loop)(nil)
	_ dm.IDExecutor = (*uring.Loop)(nil)
)

// With a real loop as the bio's executor, completions posted by the
// device and deferred bios re-issued at resume run on the loop's thread.
func TestUringLoopExecutor(t *testing.T) {
	l, err := uring.NewLoop(uring.Config{ID: 1, Entries: 8, ArenaSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	m := dmtest.NewMemDevice("m", MiB)
	m.SetCompletion(dmtest.CompleteExec)
	d := newDev(t, nil, "0 64 linear m 0", m)

	submitOnLoop := func(r *dmtest.Rec) *atomic.Bool {
		var onLoop atomic.Bool
		r.Exec = l
		r.OnEnd = func(error) { onLoop.Store(l.OnLoop()) }
		return &onLoop
	}
	r := dmtest.NewRec(dm.OpWrite, 0, 4096)
	on := submitOnLoop(r)
	if err := l.Post(func() { d.Submit(&r.Bio) }); err != nil {
		t.Fatal(err)
	}
	testutil.MustErrno(t, "write", r.Wait(t), 0)
	if !on.Load() {
		t.Fatal("the write did not end on the loop")
	}

	mustSuspend(t, d, false)
	r2 := dmtest.NewRec(dm.OpRead, 0, 4096)
	on2 := submitOnLoop(r2)
	d.Submit(&r2.Bio) // from this goroutine: deferred
	posted := l.Stats().Posted
	mustResume(t, d)
	testutil.MustErrno(t, "deferred read", r2.Wait(t), 0)
	if !on2.Load() || l.Stats().Posted == posted {
		t.Fatal("the deferred read was not re-issued through the loop")
	}
	waitIdle(t, d)
	if d.ShardOps(&r2.Bio, dm.OpRead) != 1 {
		t.Fatal("the read was not counted in its loop's shard")
	}
}
