package uring

import "time"

// spinPolicy decides how long a loop that just did work polls for more
// before it sleeps in the ring (see Loop.spin), from what it observes:
// whether polling found work and how soon, and whether the loop's thread
// is kept from its CPU. It is a plain state machine on a clock given by
// the caller, so that tests drive it deterministically; the loop feeds it
// every spin's outcome and, once per spinWindow, its thread's scheduler
// counters (involuntary context switches, run delay).
//
// Why: polling pays on a machine with a CPU to spare, where waking a
// halted vCPU costs tens of µs; it costs where the CPUs are shared. There
// the spinning thread holds a CPU its client or neighbours need (the
// client's next request may wait for the spin to end), the scheduler
// preempts it at the end of its slice, and its next wake-up then queues
// behind the other runnable threads. The rules, after Linux's hybrid
// block polling (poll only about as long as completions take to come)
// and NAPI's busy-poll budgets (poll a bounded amount, then fall back to
// interrupts), with SPDK's interrupt mode as the fallback state:
//
//   - the budget follows how soon polling finds work: spinHitFactor times
//     the smoothed time to a hit, between spinMinBudget and Config.Spin;
//   - a spin that finds nothing is judged when the loop next wakes: if
//     work came within spinNearFactor budgets of the spin's end, the spin
//     only just missed it (a client at depth 1 whose round trip is about
//     the budget) and it counts as a near miss, not against spinning;
//     spinMissLimit real misses in a row halve the budget; below
//     spinMinBudget polling doesn't pay: rest (no spinning) for a back-off;
//   - a window in which the thread was preempted spinContendedSwitches
//     times or more, or waited on a run queue at least 1/spinDelayShare of
//     the window, is contended; spinContendedWindows in a row: rest;
//   - a rest lasts spinRestMin at first and doubles with every rest, up
//     to spinRestMax, until a window without contention in which polling
//     found work resets it. After a rest the loop tries the full budget
//     again.
type spinPolicy struct {
	max    int64 // Config.Spin
	budget int64 // ns to poll at most; max when nothing is known
	avgHit int64 // smoothed ns from the start of a spin to its hit; 0: none yet
	misses int   // spins in a row that found nothing
	missAt int64 // when the last spin missed, until the loop woke; 0: none

	restUntil int64 // no spinning before this (clock ns)
	backoff   int64 // the next rest's length

	// The current window, from winStart (0: no baseline: take one).
	winStart           int64
	nivcsw, runDelay   int64 // the counters at winStart
	spins, hits        int
	contended          int    // contended windows in a row
	rests, contentions uint64 // rests taken, and among them for contention
	near               uint64 // misses that work followed soon after
}

const (
	spinMinBudget         = int64(3 * time.Microsecond)
	spinHitFactor         = 3
	spinMissLimit         = 4
	spinWindow            = int64(2 * time.Millisecond)
	spinContendedSwitches = 2
	spinDelayShare        = 8
	spinContendedWindows  = 2
	spinNearFactor        = 4
	spinRestMin           = int64(20 * time.Millisecond)
	spinRestMax           = int64(time.Second)
)

func newSpinPolicy(max time.Duration) spinPolicy {
	return spinPolicy{max: int64(max), budget: int64(max), backoff: spinRestMin}
}

// allowance is how long a spin starting at now may poll; 0: don't spin,
// sleep in the ring.
func (p *spinPolicy) allowance(now int64) int64 {
	if p.max <= 0 || now < p.restUntil {
		return 0
	}
	return p.budget
}

// spun notes a spin that polled for d ns and found work (hit) or not.
func (p *spinPolicy) spun(now, d int64, hit bool) {
	p.spins++
	if hit {
		p.hits++
		p.misses = 0
		if p.avgHit == 0 {
			p.avgHit = d
		} else {
			p.avgHit = (3*p.avgHit + d) / 4
		}
		p.budget = min(p.max, max(spinMinBudget, spinHitFactor*p.avgHit+spinMinBudget))
		return
	}
	p.missAt = now
}

// woke notes that the loop, asleep after a spin, woke at now with work.
// A miss whose work came soon after it is a near miss and ends the run
// of misses, as a hit does; a miss followed by a long sleep counts.
func (p *spinPolicy) woke(now int64) {
	if p.missAt == 0 {
		return
	}
	gap := now - p.missAt
	p.missAt = 0
	if gap <= spinNearFactor*p.budget {
		p.near++
		p.misses = 0
		return
	}
	if p.misses++; p.misses < spinMissLimit {
		return
	}
	p.misses = 0
	p.budget /= 2
	if p.budget < spinMinBudget {
		p.rest(now, false)
	}
}

// sampleDue reports whether the loop should read its thread's scheduler
// counters and pass them to sample.
func (p *spinPolicy) sampleDue(now int64) bool {
	return p.winStart == 0 || now-p.winStart >= spinWindow
}

// sample takes the thread's involuntary context switches and run delay
// (ns spent runnable, waiting for a CPU) so far, at now: the end of a
// window and the start of the next.
func (p *spinPolicy) sample(now, nivcsw, runDelay int64) {
	if p.winStart == 0 {
		p.winStart, p.nivcsw, p.runDelay = now, nivcsw, runDelay
		p.spins, p.hits = 0, 0
		return
	}
	dt, dsw, ddel := now-p.winStart, nivcsw-p.nivcsw, runDelay-p.runDelay
	hits := p.hits
	p.winStart, p.nivcsw, p.runDelay = now, nivcsw, runDelay
	p.spins, p.hits = 0, 0
	if dsw >= spinContendedSwitches || (ddel > 0 && ddel*spinDelayShare >= dt) {
		if p.contended++; p.contended >= spinContendedWindows {
			p.rest(now, true)
		}
		return
	}
	p.contended = 0
	if hits > 0 {
		p.backoff = spinRestMin
	}
}

// rest stops spinning until now+backoff; the next rest is longer unless
// a clean window resets it.
func (p *spinPolicy) rest(now int64, contended bool) {
	p.rests++
	if contended {
		p.contentions++
	}
	p.restUntil = now + p.backoff
	p.backoff = min(2*p.backoff, spinRestMax)
	p.budget, p.misses, p.missAt, p.avgHit, p.contended = p.max, 0, 0, 0, 0
	p.winStart = 0 // the counters over the rest say nothing of spinning
}
