package dm

import (
	"context"
	"testing"
	"time"
)

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

// TestLatencyCountsEachBioOnce: every ended bio lands in its op's
// histogram once, and a bio held across a suspend is counted once, with
// the time it waited.
func TestLatencyCountsEachBioOnce(t *testing.T) {
	d := newDev(t, nil, "0 64 zero")
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if err := d.SubmitWait(ctx, &newRec(OpRead, 0, 4096).Bio); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.SubmitWait(ctx, &newRec(OpWrite, 8, 512).Bio); err != nil {
		t.Fatal(err)
	}
	if err := d.SubmitWait(ctx, &newRec(OpFlush, 0, 0).Bio); err != nil {
		t.Fatal(err)
	}
	// Out of range: ends with an error, still counted.
	if err := d.SubmitWait(ctx, &newRec(OpRead, 64, 512).Bio); err == nil {
		t.Fatal("read past the end succeeded")
	}
	l := d.Latency()
	if n := l[LatRead].Count(); n != 4 {
		t.Fatalf("read histogram counts %d, want 4", n)
	}
	if n := l[LatWrite].Count(); n != 1 {
		t.Fatalf("write histogram counts %d, want 1", n)
	}
	if n := l[LatOther].Count(); n != 1 {
		t.Fatalf("other histogram counts %d, want 1", n)
	}

	if err := d.Suspend(ctx, false); err != nil {
		t.Fatal(err)
	}
	r := newRec(OpRead, 0, 512)
	d.Submit(&r.Bio)
	held := time.Now()
	time.Sleep(2 * time.Millisecond)
	waited := time.Since(held)
	if err := d.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.wait(t); err != nil {
		t.Fatal(err)
	}
	l2 := d.Latency()
	if n := l2[LatRead].Count(); n != 5 {
		t.Fatalf("read histogram counts %d after a deferred read, want 5", n)
	}
	if got := l2[LatRead].Sum - l[LatRead].Sum; got < waited {
		t.Fatalf("deferred read took %v by the histogram, but waited at least %v", got, waited)
	}
	// The stamp is cleared at the end: the bio can be reused.
	if r.Bio.core.start != 0 {
		t.Fatal("start stamp left on an ended bio")
	}
}
