package dmtest

import (
	"sync/atomic"
	"testing"

	"udm/dm"
	"udm/internal/testutil"
)

// Rec is a bio that records how it ended: a test submits &r.Bio, then
// waits for it and checks that it ended once.
type Rec struct {
	dm.Bio
	ends atomic.Int32
	err  error // written before done is closed
	done chan struct{}
	// OnEnd, if set, runs inside BioEnd (on the first end only).
	OnEnd func(err error)
}

// NewRec returns a bio of op at sector with a buffer of n bytes (none
// when op carries no data) and no registered buffer.
func NewRec(op dm.Op, sector uint64, n int) *Rec {
	r := &Rec{done: make(chan struct{})}
	r.Op, r.Sector, r.Len, r.BufIndex = op, sector, uint32(n), -1
	if op.HasData() {
		r.Buf = make([]byte, n)
	}
	r.End = r
	return r
}

// BioEnd records the end. Ends after the first are only counted (Ends
// reports them).
func (r *Rec) BioEnd(_ *dm.Bio, err error) {
	if r.ends.Add(1) != 1 {
		return
	}
	r.err = err
	if r.OnEnd != nil {
		r.OnEnd(err)
	}
	close(r.done)
}

// Ended reports whether the bio has ended.
func (r *Rec) Ended() bool { return testutil.Closed(r.done) }

// Ends is how many times the bio ended (more than one is a bug).
func (r *Rec) Ends() int { return int(r.ends.Load()) }

// Err is the bio's result; only meaningful once it Ended.
func (r *Rec) Err() error {
	if !r.Ended() {
		return nil
	}
	return r.err
}

// Wait waits for the bio to end (failing the test if it never does) and
// returns its result.
func (r *Rec) Wait(t testing.TB) error {
	t.Helper()
	testutil.Wait(t, "bio "+r.Op.String()+" to end", r.done)
	return r.err
}
