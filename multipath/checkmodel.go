package multipath

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// mapChecker is the checker's pure model of one live map: multipathd's
// per-path polling with back-off, check deadlines, the operator's marks,
// no_path_retry and failback. It does no I/O, takes no locks and reads
// no clock: each event comes with the time it happens and, where a
// decision depends on it, the target's state as the driver read it; each
// returns what the driver must do, in order. mapEntry (checker.go) is the
// driver; testdata/checker-*.txt are scenario scripts for the model.
//
// The state it is given (a mapState) is the model's to change: while it
// decides, it applies its own fail, reinstate and switch actions to it,
// so that later decisions of the same step see them.
//
// A table reload or new settings make a new model: everything but the
// operator's marks starts afresh, as multipathd does with a new map.
type mapChecker struct {
	cfg   MapConfig // with defaults
	paths []pathCheck
	// noPathTicks counts polling intervals without a valid path
	// (no_path_retry N); retryOff: no_path_retry turned queueing off.
	noPathTicks int
	retryOff    bool
	tickAt      time.Time // next no_path_retry tick (zero: none)
	failbackAt  time.Time // deferred failback due (zero: none)
	groups      int
	preferred   int // the group failback returns to (0-based)
}

// checkPath describes one path to the model.
type checkPath struct {
	Name  string // the device's name, for error messages
	Group int    // 0-based
	// SelfTimed: the device's own check ends by itself after the check
	// timeout (filedev's directio read, an NBD probe); the model's
	// deadline for it is a backstop half a timeout later. Other paths are
	// checked by a read that waits as long as the device takes; the
	// model's deadline is what times it out.
	SelfTimed bool
	Operator  bool // failed by the operator (the mark outlives tables)
}

// pathCheck is the model's state of one path.
type pathCheck struct {
	checkPath
	state    CheckState
	interval time.Duration // the current polling interval
	next     time.Time     // when the next check is due
	lastErr  string
	checks   int64 // verdicts given (checks done)
	// running: a check was started and its verdict is awaited (until
	// deadline). outstanding: a started check has not returned, even
	// if the model gave up on it; no other starts meanwhile.
	running, outstanding bool
	deadline             time.Time
}

// checkActKind is what the driver is asked to do.
type checkActKind uint8

const (
	// doCheck starts a check of Path; its device is given Timeout. Its
	// result comes back as checkDone, unless the model gives up on it at
	// Deadline (doCancel).
	doCheck checkActKind = iota
	// doCancel abandons Path's running check (the deadline passed): a
	// device check is canceled; a read stays outstanding until it ends.
	doCancel
	// doFail fails Path (Cause, Err); doReinstate reinstates it (Cause).
	doFail
	doReinstate
	// doQueue sets queue_if_no_path to On. Retry: no_path_retry's own
	// switch, whose result the driver reports back (queueDone).
	doQueue
	// doSwitch switches the map to Group (failback).
	doSwitch
	// doNote tells that Path's check state changed from Was to State
	// (Err: why it is not up), for the log.
	doNote
)

// checkAct is one thing to do.
type checkAct struct {
	Kind       checkActKind
	Path       int
	Group      int
	On, Retry  bool
	Deadline   time.Time
	Timeout    time.Duration
	Cause      string
	Err        error
	State, Was CheckState
}

// newMapChecker models a map whose paths are ps, with groups groups of
// which preferred is the one failback returns to, checked as cfg says
// (defaults applied here).
func newMapChecker(cfg MapConfig, ps []checkPath, groups, preferred int) *mapChecker {
	m := &mapChecker{cfg: cfg.withDefaults(), groups: groups, preferred: preferred}
	for _, p := range ps {
		m.paths = append(m.paths, pathCheck{checkPath: p, interval: m.cfg.PollingInterval})
	}
	return m
}

// off reports whether the map's paths are not checked at all (negative
// polling interval): it is only listed, and the operator's marks apply.
func (m *mapChecker) off() bool { return m.cfg.PollingInterval < 0 }

// start is the map going live at now: queueing as no_path_retry asks,
// the operator's paths failed again, every path checked at once.
func (m *mapChecker) start(now time.Time) []checkAct {
	var acts []checkAct
	switch n := m.cfg.NoPathRetry; {
	case n == NoPathRetryTable:
	case n == NoPathRetryFail:
		acts = append(acts, checkAct{Kind: doQueue, On: false})
	default:
		acts = append(acts, checkAct{Kind: doQueue, On: true})
	}
	for i := range m.paths {
		p := &m.paths[i]
		p.next = now
		if p.Operator {
			acts = append(acts, checkAct{Kind: doFail, Path: i, Cause: "operator"})
		}
	}
	if m.cfg.NoPathRetry > 0 && !m.off() {
		m.tickAt = now.Add(m.cfg.PollingInterval)
	}
	return acts
}

// wake is when the model next has something to do (zero: nothing until
// another event).
func (m *mapChecker) wake() time.Time {
	if m.off() {
		return time.Time{}
	}
	var at time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (at.IsZero() || t.Before(at)) {
			at = t
		}
	}
	for i := range m.paths {
		p := &m.paths[i]
		if p.running {
			earliest(p.deadline)
		} else {
			earliest(p.next)
		}
	}
	earliest(m.tickAt)
	earliest(m.failbackAt)
	return at
}

// tick does what is due at now: checks whose deadline passed time out,
// due paths are checked (an operator's path is skipped; a path whose
// earlier check is still outstanding fails its check at once), and the
// no_path_retry tick and a deferred failback run.
func (m *mapChecker) tick(now time.Time, st *mapState) []checkAct {
	if m.off() {
		return nil
	}
	var acts []checkAct
	for i := range m.paths {
		p := &m.paths[i]
		if p.running && !p.deadline.After(now) {
			p.running = false // outstanding until it returns
			timeout, cause := m.cfg.CheckTimeout, error(syscall.ETIMEDOUT)
			if p.SelfTimed {
				timeout, cause = backstop(timeout), context.DeadlineExceeded
			}
			acts = append(acts, checkAct{Kind: doCancel, Path: i})
			err := fmt.Errorf("multipath: check of %s: no answer in %v: %w", p.Name, timeout, cause)
			acts = append(acts, m.verdict(now, i, err, false, st)...)
		}
		if p.running || p.next.After(now) {
			continue
		}
		switch {
		case p.Operator:
			p.next = now.Add(p.interval)
		case p.outstanding:
			err := fmt.Errorf("multipath: check of %s: earlier check still outstanding: %w", p.Name, syscall.ETIMEDOUT)
			acts = append(acts, m.verdict(now, i, err, false, st)...)
		default:
			p.running, p.outstanding = true, true
			timeout := m.cfg.CheckTimeout
			p.deadline = now.Add(timeout)
			if p.SelfTimed {
				p.deadline = now.Add(backstop(timeout))
			}
			acts = append(acts, checkAct{Kind: doCheck, Path: i, Timeout: timeout, Deadline: p.deadline})
		}
	}
	if !m.tickAt.IsZero() && !m.tickAt.After(now) {
		m.tickAt = m.tickAt.Add(m.cfg.PollingInterval)
		if !m.tickAt.After(now) { // late: ticks are dropped, not bunched
			m.tickAt = now.Add(m.cfg.PollingInterval)
		}
		acts = append(acts, m.noPathTick(st)...)
	}
	if !m.failbackAt.IsZero() && !m.failbackAt.After(now) {
		m.failbackAt = time.Time{}
		acts = append(acts, m.failback(st)...)
	}
	return acts
}

// backstop is the deadline of a check that times out by itself.
func backstop(timeout time.Duration) time.Duration { return timeout + timeout/2 }

// checkDone is path i's check returning err at now. stale: the path was
// failed or reinstated while the check ran, so its verdict is about the
// past. A check the model gave up on is only no longer outstanding.
func (m *mapChecker) checkDone(now time.Time, i int, err error, stale bool, st *mapState) []checkAct {
	p := &m.paths[i]
	p.outstanding = false
	if !p.running {
		return nil
	}
	p.running = false
	return m.verdict(now, i, err, stale, st)
}

// verdict acts on a check of path i that ended at now with err.
func (m *mapChecker) verdict(now time.Time, i int, err error, stale bool, st *mapState) []checkAct {
	p := &m.paths[i]
	p.checks++
	if p.Operator {
		return nil // the operator failed it while it was checked
	}
	if stale {
		p.next = now.Add(m.cfg.PollingInterval)
		return nil
	}
	active := st.active[i]
	prev := p.state
	switch {
	case err == nil:
		p.state, p.lastErr = CheckUp, ""
	case errors.Is(err, errPathGone):
		p.state, p.lastErr = CheckGone, err.Error()
	default:
		p.state, p.lastErr = CheckDown, err.Error()
	}
	// The interval doubles while the path stays healthy and active; any
	// change, or a path that is down, checks at the base interval.
	if p.state == CheckUp && prev == CheckUp && active {
		if p.interval > m.cfg.MaxPollingInterval/2 { // (no overflow)
			p.interval = m.cfg.MaxPollingInterval
		} else {
			p.interval = min(2*p.interval, m.cfg.MaxPollingInterval)
		}
	} else {
		p.interval = m.cfg.PollingInterval
	}
	p.next = now.Add(p.interval)
	var acts []checkAct
	if p.state != prev {
		acts = append(acts, checkAct{Kind: doNote, Path: i, State: p.state, Was: prev, Err: err})
	}
	switch {
	case p.state == CheckUp && !active:
		acts = append(acts, checkAct{Kind: doReinstate, Path: i, Cause: "checker"})
		st.reinstated(i, p.Group)
		acts = append(acts, m.afterReinstate(now, i, st)...)
	case p.state != CheckUp && active:
		acts = append(acts, checkAct{Kind: doFail, Path: i, Cause: "checker", Err: err})
		st.failed(i, p.Group)
	}
	return acts
}

// ioFailed is I/O failing path i at now: check it again one polling
// interval from now, not after a long healthy interval.
func (m *mapChecker) ioFailed(now time.Time, i int) {
	p := &m.paths[i]
	p.interval = m.cfg.PollingInterval
	if n := now.Add(p.interval); n.Before(p.next) {
		p.next = n
	}
}

// operate is the operator failing (fail) or reinstating path i at now.
// A failed path is not checked until reinstated; a reinstated one is
// checked again from one polling interval on.
func (m *mapChecker) operate(now time.Time, i int, fail bool, st *mapState) []checkAct {
	p := &m.paths[i]
	var acts []checkAct
	if fail {
		acts = append(acts, checkAct{Kind: doFail, Path: i, Cause: "operator"})
		st.failed(i, p.Group)
	} else {
		acts = append(acts, checkAct{Kind: doReinstate, Path: i, Cause: "operator"})
		st.reinstated(i, p.Group)
	}
	p.Operator = fail
	p.interval = m.cfg.PollingInterval
	p.next = now
	if !fail {
		p.next = now.Add(p.interval)
		acts = append(acts, m.afterReinstate(now, i, st)...)
	}
	return acts
}

// afterReinstate applies failback after path i came back at now.
func (m *mapChecker) afterReinstate(now time.Time, i int, st *mapState) []checkAct {
	fb := m.cfg.Failback
	if fb.Mode == FailbackManual || m.groups < 2 {
		return nil
	}
	pg := m.preferred
	if m.paths[i].Group != pg || st.eff == pg {
		return nil
	}
	switch fb.Mode {
	case FailbackFollowover:
		if st.groupActive[pg] != 1 {
			return nil // not the group's first path back
		}
	case FailbackDeferred:
		if m.failbackAt.IsZero() {
			m.failbackAt = now.Add(fb.Delay)
		}
		return nil
	}
	return m.failback(st)
}

// failback switches to the preferred group if it is not in use and has
// a path.
func (m *mapChecker) failback(st *mapState) []checkAct {
	pg := m.preferred
	if st.eff == pg || st.groupActive[pg] == 0 {
		return nil
	}
	st.eff = pg
	return []checkAct{{Kind: doSwitch, Group: pg}}
}

// noPathTick is one polling interval of no_path_retry N: after N in a
// row without a valid path, queueing is turned off (held I/O fails);
// the first interval with a path turns it on again.
func (m *mapChecker) noPathTick(st *mapState) []checkAct {
	n := m.cfg.NoPathRetry
	if n <= 0 {
		return nil
	}
	if st.valid > 0 {
		m.noPathTicks = 0
	} else {
		m.noPathTicks++
	}
	switch {
	case st.valid > 0 && m.retryOff:
		return []checkAct{{Kind: doQueue, On: true, Retry: true}}
	case st.valid == 0 && m.noPathTicks >= int(n) && !m.retryOff:
		return []checkAct{{Kind: doQueue, On: false, Retry: true}}
	}
	return nil
}

// queueDone is the driver reporting how a doQueue went: no_path_retry's
// own switch counts only if it took.
func (m *mapChecker) queueDone(a checkAct, err error) {
	if a.Retry && err == nil {
		m.retryOff = !a.On
	}
}

// reinstated and failed apply the target's own bookkeeping of path i of
// group g to the model's copy of its state.
func (st *mapState) reinstated(i, g int) {
	if st.active[i] {
		return
	}
	st.active[i] = true
	st.valid++
	st.groupActive[g]++
}

func (st *mapState) failed(i, g int) {
	if !st.active[i] {
		return
	}
	st.active[i] = false
	st.valid--
	st.groupActive[g]--
}
