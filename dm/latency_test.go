package dm_test

import (
	"context"
	"testing"
	"time"

	"udm/dm"
	"udm/dm/dmtest"
)

// TestLatencyCountsEachBioOnce: every ended bio lands in its op's
// histogram once, and a bio held across a suspend is counted once, with
// the time it waited.
func TestLatencyCountsEachBioOnce(t *testing.T) {
	d := newDev(t, nil, "0 64 zero")
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := d.SubmitWait(ctx, &dmtest.NewRec(dm.OpRead, 0, 4096).Bio); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SubmitWait(ctx, &dmtest.NewRec(dm.OpWrite, 8, 512).Bio); err != nil {
		t.Fatal(err)
	}
	if err := d.SubmitWait(ctx, &dmtest.NewRec(dm.OpFlush, 0, 0).Bio); err != nil {
		t.Fatal(err)
	}
	// Out of range: ends with an error, still counted.
	if err := d.SubmitWait(ctx, &dmtest.NewRec(dm.OpRead, 64, 512).Bio); err == nil {
		t.Fatal("read past the end succeeded")
	}
	l := d.Latency()
	if n := l[dm.LatRead].Count(); n != 4 {
		t.Fatalf("read histogram counts %d, want 4", n)
	}
	if n := l[dm.LatWrite].Count(); n != 1 {
		t.Fatalf("write histogram counts %d, want 1", n)
	}
	if n := l[dm.LatOther].Count(); n != 1 {
		t.Fatalf("other histogram counts %d, want 1", n)
	}

	if err := d.Suspend(ctx, false); err != nil {
		t.Fatal(err)
	}
	r := dmtest.NewRec(dm.OpRead, 0, 512)
	d.Submit(&r.Bio)
	held := time.Now()
	time.Sleep(2 * time.Millisecond)
	waited := time.Since(held)
	if err := d.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Wait(t); err != nil {
		t.Fatal(err)
	}
	l2 := d.Latency()
	if n := l2[dm.LatRead].Count(); n != 5 {
		t.Fatalf("read histogram counts %d after a deferred read, want 5", n)
	}
	if got := l2[dm.LatRead].Sum - l[dm.LatRead].Sum; got < waited {
		t.Fatalf("deferred read took %v by the histogram, but waited at least %v", got, waited)
	}
	// The stamp is cleared at the end: the bio can be reused.
	if r.Bio.StartStamp() != 0 {
		t.Fatal("start stamp left on an ended bio")
	}
}
