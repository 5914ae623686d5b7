package uring

import (
	"testing"
	"time"

	"udm/internal/testutil"
)

const us = int64(time.Microsecond)

// policyAt returns a policy with max 50µs whose first window started at
// t0 (counters 0), as the loop leaves it after its first sample.
func policyAt(t0 int64) spinPolicy {
	p := newSpinPolicy(50 * time.Microsecond)
	p.sample(t0, 0, 0)
	return p
}

// The budget follows how soon spinning finds work (spinHitFactor times the
// smoothed time to a hit, plus spinMinBudget), within [spinMinBudget,
// Config.Spin].
func TestSpinBudgetFollowsHits(t *testing.T) {
	p := policyAt(1)
	now := int64(1000 * us)
	if got := p.allowance(now); got != 50*us {
		t.Fatalf("allowance before any spin = %d, want the full 50µs", got)
	}
	for range 20 {
		p.spun(now, 4*us, true)
	}
	if got, want := p.allowance(now), 3*4*us+spinMinBudget; got != want {
		t.Fatalf("allowance after hits at 4µs = %dns, want %dns", got, want)
	}
	for range 20 {
		p.spun(now, 40*us, true)
	}
	if got := p.allowance(now); got != 50*us {
		t.Fatalf("allowance after hits at 40µs = %dns, want the 50µs cap", got)
	}
	for range 60 {
		p.spun(now, 0, true)
	}
	if got := p.allowance(now); got != spinMinBudget {
		t.Fatalf("allowance after immediate hits = %dns, want spinMinBudget", got)
	}
}

// miss notes a spin at now that found nothing, followed by a sleep of
// gap before work came.
func miss(p *spinPolicy, now, d, gap int64) {
	p.spun(now, d, false)
	p.woke(now + gap)
}

// Spins that find nothing, each followed by a long sleep, halve the
// budget every spinMissLimit in a row; once it is below spinMinBudget the
// loop rests for spinRestMin, then tries the full budget again. A hit in
// between resets the count.
func TestSpinMissesHalveThenRest(t *testing.T) {
	p := policyAt(1)
	now := int64(1000 * us)
	long := int64(time.Millisecond)
	for range spinMissLimit - 1 {
		miss(&p, now, 50*us, long)
	}
	p.spun(now, 5*us, true)
	for range spinMissLimit - 1 {
		miss(&p, now, 50*us, long)
	}
	if got := p.allowance(now); got != 3*5*us+spinMinBudget {
		t.Fatalf("allowance = %dns: misses broken by a hit must not halve it", got)
	}
	p = policyAt(1)
	want := 50 * us
	for want >= spinMinBudget {
		if got := p.allowance(now); got != want {
			t.Fatalf("allowance = %dns, want %dns", got, want)
		}
		for range spinMissLimit {
			miss(&p, now, want, long)
		}
		want /= 2
	}
	now += long
	if got := p.allowance(now); got != 0 {
		t.Fatalf("allowance after the budget fell below the minimum = %dns, want 0 (rest)", got)
	}
	if got := p.allowance(now + spinRestMin - 1); got != 0 {
		t.Fatalf("allowance just before the rest ends = %dns, want 0", got)
	}
	if got := p.allowance(now + spinRestMin); got != 50*us {
		t.Fatalf("allowance after the rest = %dns, want the full 50µs again", got)
	}
	if p.rests != 1 || p.contentions != 0 {
		t.Fatalf("rests %d contentions %d, want 1 and 0", p.rests, p.contentions)
	}
}

// A miss after which work came within spinNearFactor budgets (a client
// at depth 1 whose round trip is about the budget) does not count against
// spinning: a run of them never halves the budget, and it ends a run of
// real misses as a hit does.
func TestSpinNearMissesKeepSpinning(t *testing.T) {
	p := policyAt(1)
	now := int64(1000 * us)
	for range 100 * spinMissLimit {
		miss(&p, now, 50*us, spinNearFactor*50*us)
		now += 100 * us
	}
	if got := p.allowance(now); got != 50*us {
		t.Fatalf("allowance after near misses = %dns, want the full 50µs", got)
	}
	for range 10 {
		for range spinMissLimit - 1 {
			miss(&p, now, 50*us, int64(time.Millisecond))
		}
		miss(&p, now, 50*us, 10*us)
	}
	if got := p.allowance(now); got != 50*us || p.rests != 0 || p.near != 100*spinMissLimit+10 {
		t.Fatalf("allowance %dns rests %d near %d: near misses must end runs of misses", got, p.rests, p.near)
	}
	// Without a wake-up in between, a miss is judged at the next one.
	p.spun(now, 50*us, false)
	if p.misses != 0 {
		t.Fatalf("a miss counted before the loop woke")
	}
}

// spinContendedWindows windows in a row in which the thread was preempted
// spinContendedSwitches times stop spinning; windows with fewer
// preemptions don't, nor (if more than one is needed) contended windows
// that are not consecutive.
func TestSpinStopsWhenPreempted(t *testing.T) {
	p := policyAt(1)
	now, sw := int64(1), int64(0)
	window := func(dsw int64) {
		now += spinWindow
		sw += dsw
		p.spun(now-1, 5*us, true)
		if !p.sampleDue(now) {
			t.Fatalf("no sample due a window after the last")
		}
		p.sample(now, sw, 0)
	}
	for range 10 {
		window(spinContendedSwitches - 1)
	}
	for range 3 {
		for range spinContendedWindows - 1 {
			window(spinContendedSwitches)
		}
		window(0)
	}
	if p.allowance(now) == 0 {
		t.Fatalf("resting without %d contended windows in a row", spinContendedWindows)
	}
	for range spinContendedWindows {
		window(spinContendedSwitches)
	}
	if p.allowance(now) != 0 {
		t.Fatalf("still spinning after %d contended windows in a row", spinContendedWindows)
	}
	if p.rests != 1 || p.contentions != 1 {
		t.Fatalf("rests %d contentions %d, want 1 and 1", p.rests, p.contentions)
	}
	if !p.sampleDue(now + spinRestMin) {
		t.Fatalf("after a rest the policy must take a new baseline first")
	}
}

// Waiting on a run queue for 1/spinDelayShare of a window counts as
// contention, as preemptions do; less does not.
func TestSpinStopsOnRunDelay(t *testing.T) {
	p := policyAt(1)
	now, delay := int64(1), int64(0)
	for range 10 {
		now += spinWindow
		delay += spinWindow/spinDelayShare - 1
		p.sample(now, 0, delay)
	}
	if p.allowance(now) == 0 {
		t.Fatalf("resting with run delay below 1/%d of the time", spinDelayShare)
	}
	for range spinContendedWindows {
		now += spinWindow
		delay += spinWindow / spinDelayShare
		p.sample(now, 0, delay)
	}
	if p.allowance(now) != 0 {
		t.Fatalf("still spinning with run delay at 1/%d of the time", spinDelayShare)
	}
}

// Each rest doubles the next, up to spinRestMax; a window without
// contention in which spinning found work sets it back to spinRestMin.
func TestSpinRestBacksOff(t *testing.T) {
	p := policyAt(1)
	now, sw := int64(1), int64(0)
	contend := func() int64 { // returns the rest's length
		t.Helper()
		p.sample(now, sw, 0) // the baseline after the previous rest
		for range spinContendedWindows {
			now += spinWindow
			sw += spinContendedSwitches
			p.sample(now, sw, 0)
		}
		if p.allowance(now) != 0 {
			t.Fatalf("not resting after contended windows")
		}
		start := now
		for p.allowance(now) == 0 {
			now += int64(time.Millisecond)
		}
		return now - start
	}
	want := spinRestMin
	for range 10 {
		if got := contend(); got != want {
			t.Fatalf("rest = %v, want %v", time.Duration(got), time.Duration(want))
		}
		want = min(2*want, spinRestMax)
	}
	// A clean window with hits: the back-off starts over.
	p.sample(now, sw, 0)
	p.spun(now+1, 5*us, true)
	now += spinWindow
	p.sample(now, sw, 0)
	if got := contend(); got != spinRestMin {
		t.Fatalf("rest after a clean window = %v, want %v", time.Duration(got), time.Duration(spinRestMin))
	}
}

// A negative Config.Spin never spins, whatever happens.
func TestSpinNeverWhenDisabled(t *testing.T) {
	p := newSpinPolicy(-1)
	p.sample(1, 0, 0)
	p.spun(2, 1*us, true)
	if got := p.allowance(3); got != 0 {
		t.Fatalf("allowance with Spin < 0 = %d, want 0", got)
	}
}

func TestSchedstatDelay(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
	}{
		{"1234 5678 9\n", 5678},
		{"0 0 0\n", 0},
		{"1234", 0},
		{"", 0},
		{"12 x 3", 0},
	} {
		if got := schedstatDelay([]byte(c.in)); got != c.want {
			t.Errorf("schedstatDelay(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}

// On a running loop: work posted while it spins is a hit, a spin that
// finds nothing is a miss, and the thread's scheduler counters can be
// read (the run time in schedstat grows).
func TestLoopCountsSpins(t *testing.T) {
	l := newLoop(t, Config{Spin: 2 * time.Second})
	if err := l.Call(func() {}); err != nil {
		t.Fatal(err)
	}
	// The Call's function was work: the loop now spins for up to 2s, and
	// the next Post arrives within it unless the policy rests.
	testutil.Eventually(t, "a spin hit", func() bool {
		l.Call(func() {})
		return l.Stats().SpinHits > 0
	})
	var fd int
	l.Call(func() { fd = l.schedFd })
	if fd < 0 {
		t.Fatalf("the loop could not open its thread's schedstat")
	}
	m := newLoop(t, Config{Spin: 20 * time.Microsecond})
	testutil.Eventually(t, "a spin miss", func() bool {
		m.Call(func() {})
		return m.Stats().SpinMisses > 0
	})
}
