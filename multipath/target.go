package multipath

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
)

// DefaultIODeadline bounds each I/O on a path unless Options say
// otherwise: a path that holds an I/O longer is failed and the I/O is
// retried on another path.
const DefaultIODeadline = 2 * time.Second

// Options configure the multipath target type. They are udm's own knobs;
// the table syntax stays the kernel's.
type Options struct {
	// IODeadline bounds every I/O on a path whose device supports it
	// (dm.DeadlineSetter: files, block devices, stacked dm devices): an
	// I/O still running after it ends with ETIMEDOUT, which fails the
	// path. 0 means DefaultIODeadline; negative means no deadline. Paths
	// are shared between tables that name the same device, so the
	// deadline applies to their other users too.
	IODeadline time.Duration
	// Checker, if not nil, is told about each multipath map that goes
	// live, checks its paths, and lists it.
	Checker *Checker
}

func (o Options) deadline() time.Duration {
	switch {
	case o.IODeadline == 0:
		return DefaultIODeadline
	case o.IODeadline < 0:
		return 0
	}
	return o.IODeadline
}

// Register adds the multipath target type to reg with default Options.
func Register(reg *dm.TargetRegistry) error { return RegisterOptions(reg, Options{}) }

// RegisterOptions adds the multipath target type to reg. Like the
// kernel's it is a singleton (alone in its table) and immutable (a live
// multipath table is replaced only by another multipath table, or an
// error table on forced removal).
func RegisterOptions(reg *dm.TargetRegistry, opt Options) error {
	return reg.Register(dm.TargetType{
		Name:      "multipath",
		Version:   [3]int{1, 15, 0},
		Singleton: true,
		Immutable: true,
		New: func(ctx *dm.TargetContext, args []string) (dm.Target, error) {
			return newMultipath(ctx, args, opt)
		},
	})
}

// Multipath is a constructed multipath target. See the package
// documentation for the life of a bio through it, the snapshot, and the
// lock order.
type Multipath struct {
	ctx     *dm.TargetContext
	log     zerolog.Logger
	spec    *Spec
	paths   []*path
	groups  []*group
	checker *Checker

	// snap is what Map reads; replaced (under mu) after every change of
	// the machine.
	snap atomic.Pointer[snapshot]
	// watch is the checker's interest in this map while it is attached.
	watch atomic.Pointer[mapEntry]

	mu struct {
		sync.Mutex // guards the following
		m          *Machine
		held       []*dm.Clone // I/O waiting for a path (queue_if_no_path)
	}
}

func newMultipath(ctx *dm.TargetContext, args []string, opt Options) (*Multipath, error) {
	spec, err := ParseSpec(args)
	if err != nil {
		return nil, err
	}
	for _, w := range spec.Warnings {
		ctx.Log.Warn().Msg(w)
	}
	t := &Multipath{ctx: ctx, log: ctx.Log, spec: spec, checker: opt.Checker}
	dl := opt.deadline()
	for gi := range spec.Groups {
		gs := &spec.Groups[gi]
		g := &group{idx: gi, kind: gs.kind, threshold: uint64(gs.threshold)}
		g.setWeights(uint64(gs.baseWeight))
		for _, ps := range gs.Paths {
			dev, err := ctx.Devices.GetDevice(ps.Dev, ctx.ReadOnly())
			if err != nil {
				return nil, fmt.Errorf("error getting device %s: %w", ps.Dev, err)
			}
			if need := int64(ctx.Len) << dm.SectorShift; dev.Size() < need {
				return nil, fmt.Errorf("device %s too small for target: %d bytes, need %d", ps.Dev, dev.Size(), need)
			}
			if ds, ok := dev.(dm.DeadlineSetter); ok {
				ds.SetIODeadline(dl)
			}
			p := &path{dev: dev, name: ps.Dev, idx: len(t.paths), group: g, rel: int64(ps.RelThroughput)}
			t.paths = append(t.paths, p)
			g.paths = append(g.paths, p)
		}
		t.groups = append(t.groups, g)
	}
	t.mu.m = NewMachine(spec)
	t.publishLocked()
	return t, nil
}

// publishLocked replaces the fast path's snapshot with one of the
// machine's current state.
func (t *Multipath) publishLocked() {
	m := t.mu.m
	s := &snapshot{ready: m.Ready()}
	for _, g := range t.groups {
		g.active.Store(int64(m.GroupActivePaths(g.idx)))
	}
	if s.ready {
		s.g = t.groups[m.Group()]
		for _, p := range s.g.paths {
			if m.PathActive(p.idx) {
				s.active = append(s.active, p)
			}
		}
	}
	t.snap.Store(s)
}

// Map sends a clone down a path of the current group, or holds, requeues
// or fails it when there is none. On the fast path it reads the snapshot,
// picks a path and submits: no lock, no allocation.
func (t *Multipath) Map(c *dm.Clone) dm.MapResult {
	if s := t.snap.Load(); s.ready {
		t.submit(s, c)
		return dm.MapSubmitted
	}
	return t.route(c)
}

// submit sends c to a path of the ready snapshot s. The target submits
// itself (MapSubmitted) rather than letting the core do it, so that a
// clone it accounted for in the selector always comes back through
// EndIO.
func (t *Multipath) submit(s *snapshot, c *dm.Clone) {
	now := s.clock()
	p := s.pick(c.Len, now)
	p.start(c, now)
	c.Dev, c.Ctx = p.dev, p
	p.dev.Submit(c)
}

// route maps c: submitted (to a path, or held in the target), requeue or
// kill. The slow path takes mu.
func (t *Multipath) route(c *dm.Clone) dm.MapResult {
	for {
		if s := t.snap.Load(); s.ready {
			t.submit(s, c)
			return dm.MapSubmitted
		}
		t.mu.Lock()
		// NOFLUSH_SUSPENDING is set before presuspend takes mu, so
		// reading it under mu can't miss a suspend that already cleared
		// queueing.
		d, changed := t.mu.m.Map(t.ctx.NoflushSuspending())
		if changed {
			t.publishLocked()
		}
		switch d {
		case DecidePath:
			t.mu.Unlock()
			continue
		case DecideHold:
			t.mu.held = append(t.mu.held, c)
			t.mu.Unlock()
			return dm.MapSubmitted
		case DecideRequeue:
			t.mu.Unlock()
			return dm.MapRequeue
		}
		t.mu.Unlock()
		return dm.MapKill
	}
}

// remap maps a clone the target holds (held, or taken back from a failed
// path) again, on its bio's executor, and ends it if it can't go on.
func (t *Multipath) remap(c *dm.Clone) {
	if c.Canceled() {
		c.Finish(dm.ErrCanceled)
		return
	}
	switch t.route(c) {
	case dm.MapRequeue:
		c.Finish(dm.ErrRequeue)
	case dm.MapKill:
		c.Finish(dm.ErrIO)
	}
}

// remapOnExec runs remap on c's executor (the threading contract: a
// clone of a loop's bio is submitted and ended on that loop), or here if
// it has none.
func (t *Multipath) remapOnExec(c *dm.Clone) {
	ex := c.Exec()
	if ex == nil {
		t.remap(c)
		return
	}
	if err := ex.Post(func() { t.remap(c) }); err != nil {
		// The loop is gone: nothing can run the clone there.
		c.Finish(dm.ErrIO)
	}
}

// EndIO sees each clone back from its path. Success and errors that are
// not the path's go to the caller; a path error fails the path and the
// clone is mapped again: to another path, held, pushed back, or failed
// (EIO) when no path is left.
func (t *Multipath) EndIO(c *dm.Clone, err error) (dm.EndIOResult, error) {
	p, _ := c.Ctx.(*path)
	if p != nil {
		p.end(c)
		c.Ctx = nil
	}
	if err == nil || !IsPathError(err, c.Canceled()) {
		return dm.EndIODone, err
	}
	if p != nil && p.current(c.CtxU) {
		t.failPath(p.idx, "I/O error", err, true)
	}
	if ex := c.Exec(); ex != nil {
		// The completion may run off the loop (a deadline timer): decide
		// on the loop.
		if ex.Post(func() { t.remap(c) }) != nil {
			return dm.EndIODone, dm.ErrIO
		}
		return dm.EndIOIncomplete, nil
	}
	if c.Canceled() {
		return dm.EndIODone, dm.ErrCanceled
	}
	switch t.route(c) {
	case dm.MapSubmitted:
		return dm.EndIOIncomplete, nil
	case dm.MapRequeue:
		return dm.EndIORequeue, nil
	}
	return dm.EndIODone, dm.ErrIO
}

// failPath fails path i (an I/O error, a failed check, the operator). It
// works while suspended too: only messages are refused then.
func (t *Multipath) failPath(i int, cause string, err error, fromIO bool) {
	if !t.pathChange((*Machine).FailPath, i, cause, err) {
		return
	}
	if w := t.watch.Load(); w != nil && fromIO {
		w.pathFailedByIO(i)
	}
}

// reinstatePath reinstates path i (a passing check, the operator).
func (t *Multipath) reinstatePath(i int, cause string) {
	t.pathChange((*Machine).ReinstatePath, i, cause, nil)
}

// pathChange runs change (the Machine's FailPath or ReinstatePath) on
// path i under t.mu, follows it and acts on it unlocked. It reports
// false, having done nothing, when the path was already in that state.
func (t *Multipath) pathChange(change func(*Machine, int) []Action, i int, cause string, err error) bool {
	t.mu.Lock()
	acts := change(t.mu.m, i)
	if len(acts) == 0 {
		t.mu.Unlock()
		return false
	}
	held := t.applyLocked(acts)
	t.mu.Unlock()
	t.act(acts, held, cause, err)
	return true
}

// applyLocked follows a machine change: a reinstated path starts a new
// epoch, the snapshot is published, and the held clones are taken if
// the actions ask to process them (the caller maps them, unlocked).
func (t *Multipath) applyLocked(acts []Action) []*dm.Clone {
	var held []*dm.Clone
	for _, a := range acts {
		switch a.Kind {
		case ActPathReinstated:
			t.paths[a.Path].epoch.Add(1)
		case ActProcessQueue:
			held = t.mu.held
			t.mu.held = nil
		}
	}
	t.publishLocked()
	return held
}

// act carries out a machine's actions, with mu not held.
func (t *Multipath) act(acts []Action, held []*dm.Clone, cause string, err error) {
	for _, a := range acts {
		switch a.Kind {
		case ActTriggerEvent:
			t.ctx.TriggerEvent()
		case ActPathFailed, ActPathReinstated:
			t.logPath(a, cause, err)
		}
	}
	for _, c := range held {
		t.remapOnExec(c)
	}
}

func (t *Multipath) logPath(a Action, cause string, err error) {
	t.mu.Lock()
	fails, valid := t.mu.m.FailCount(a.Path), t.mu.m.Valid()
	t.mu.Unlock()
	var e *zerolog.Event
	if a.Kind == ActPathFailed {
		e = t.log.Warn()
	} else {
		e = t.log.Info()
	}
	e = e.Str("path", t.paths[a.Path].name).Int("group", t.paths[a.Path].group.idx+1).
		Uint32("fail_count", fails).Int("valid_paths", valid).Str("cause", cause)
	if err != nil {
		e = e.Err(err)
	}
	if a.Kind == ActPathFailed {
		e.Msg("path failed")
	} else {
		e.Msg("path reinstated")
	}
}

// Status prints the kernel's INFO or TABLE status.
func (t *Multipath) Status(st dm.StatusType) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st == dm.StatusTable {
		return t.mu.m.StatusTable()
	}
	return t.mu.m.StatusInfo(func(i int) string { return t.paths[i].info() })
}

// Message takes the kernel's multipath messages: queue_if_no_path,
// fail_if_no_path, fail_path DEV, reinstate_path DEV, switch_group N,
// disable_group N, enable_group N. Bad arguments are EINVAL, any message
// once the device is suspended EBUSY.
func (t *Multipath) Message(args []string) (string, error) {
	var idx []int
	if len(args) == 2 {
		idx = t.resolve(args[1])
	}
	t.mu.Lock()
	acts, err := t.mu.m.Message(args, func(string) []int { return idx })
	if err != nil {
		t.mu.Unlock()
		return "", err
	}
	held := t.applyLocked(acts)
	t.mu.Unlock()
	t.act(acts, held, "message", nil)
	return "", nil
}

// resolve finds the paths a message's device argument names: the name
// as in the table, the same path written differently, or the same file
// or block device.
func (t *Multipath) resolve(dev string) []int {
	var out []int
	for _, p := range t.paths {
		if p.name == dev {
			out = append(out, p.idx)
		}
	}
	if len(out) > 0 {
		return out
	}
	clean := filepath.Clean(dev)
	st, statErr := os.Stat(dev)
	for _, p := range t.paths {
		if filepath.Clean(p.name) == clean {
			out = append(out, p.idx)
			continue
		}
		if statErr == nil {
			if pst, err := os.Stat(p.name); err == nil && os.SameFile(st, pst) {
				out = append(out, p.idx)
			}
		}
	}
	return out
}

// PreSuspend saves queue_if_no_path and clears it: held I/O is mapped
// again, and with no path it is pushed back (noflush) or failed.
func (t *Multipath) PreSuspend() {
	t.mu.Lock()
	acts := t.mu.m.PreSuspend()
	held := t.applyLocked(acts)
	t.mu.Unlock()
	t.act(acts, held, "presuspend", nil)
}

// PreSuspendUndo ends an interrupted suspend (queueing stays off until
// resume, as in the kernel).
func (t *Multipath) PreSuspendUndo() {
	t.mu.Lock()
	t.mu.m.PreSuspendUndo()
	t.mu.Unlock()
}

// PostSuspend marks the map suspended: messages get EBUSY.
func (t *Multipath) PostSuspend() {
	t.mu.Lock()
	t.mu.m.PostSuspend()
	t.mu.Unlock()
}

// Resume restores queue_if_no_path and, the table being live, hands the
// map to the checker.
func (t *Multipath) Resume() {
	t.mu.Lock()
	t.mu.m.Resume()
	t.publishLocked()
	t.mu.Unlock()
	if t.checker != nil {
		t.checker.attach(t)
	}
}

// Destroy detaches the map from the checker. Nothing is held by then (the
// table was suspended, or never live); anything that is ends with EIO.
func (t *Multipath) Destroy() {
	if t.checker != nil {
		t.checker.detach(t)
	}
	t.mu.Lock()
	held := t.mu.held
	t.mu.held = nil
	t.mu.Unlock()
	for _, c := range held {
		finishOnExec(c, dm.ErrIO)
	}
}

// finishOnExec ends a held clone on its bio's executor.
func finishOnExec(c *dm.Clone, err error) {
	if ex := c.Exec(); ex != nil && ex.Post(func() { c.Finish(err) }) == nil {
		return
	}
	c.Finish(err)
}

// Name is the map's device name ("" without a device).
func (t *Multipath) Name() string {
	if t.ctx.Device == nil {
		return ""
	}
	return t.ctx.Device.Name()
}

// Device is the dm device the map belongs to (nil in bare tests).
func (t *Multipath) Device() *dm.Device { return t.ctx.Device }

// Spec is the map's parsed table.
func (t *Multipath) Spec() *Spec { return t.spec }

// NumPaths is the number of paths.
func (t *Multipath) NumPaths() int { return len(t.paths) }

// PathDevice is path i's device.
func (t *Multipath) PathDevice(i int) dm.BlockDevice { return t.paths[i].dev }

// PathName is path i's name as in the table.
func (t *Multipath) PathName(i int) string { return t.paths[i].name }

// ValidPaths is the number of active paths.
func (t *Multipath) ValidPaths() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.m.Valid()
}

// failCount is how often path i failed.
func (t *Multipath) failCount(i int) uint32 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.mu.m.FailCount(i)
}

// Held is the number of I/Os waiting in the target for a path.
func (t *Multipath) Held() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.mu.held)
}

// FailPath fails the paths dev names, as the fail_path message does
// (EINVAL for an unknown path, EBUSY once suspended).
func (t *Multipath) FailPath(dev string) error {
	_, err := t.Message([]string{"fail_path", dev})
	return err
}

// ReinstatePath reinstates the paths dev names, as reinstate_path does.
func (t *Multipath) ReinstatePath(dev string) error {
	_, err := t.Message([]string{"reinstate_path", dev})
	return err
}

// SetQueueIfNoPath sends queue_if_no_path (on) or fail_if_no_path (off).
func (t *Multipath) SetQueueIfNoPath(on bool) error {
	msg := "fail_if_no_path"
	if on {
		msg = "queue_if_no_path"
	}
	_, err := t.Message([]string{msg})
	return err
}

// failPathIdx and reinstatePathIdx are the checker's and the operator's.
// Unlike messages they work while the device is suspended: a path
// repaired during a noflush suspend is usable when the device resumes.
func (t *Multipath) failPathIdx(i int, cause string, err error) {
	t.failPath(i, cause, err, false)
}

func (t *Multipath) reinstatePathIdx(i int, cause string) {
	t.reinstatePath(i, cause)
}

// switchGroup is failback's switch_group (g 0-based).
func (t *Multipath) switchGroup(g int) error {
	_, err := t.Message([]string{"switch_group", fmt.Sprint(g + 1)})
	return err
}

// state returns a copy of what listings need, under mu.
func (t *Multipath) state() mapState {
	t.mu.Lock()
	defer t.mu.Unlock()
	return machineState(t.mu.m, len(t.mu.held))
}

// machineState is the state of m, which holds held I/Os.
func machineState(m *Machine, held int) mapState {
	st := mapState{
		queue:     m.QueueIfNoPath(),
		queueNext: m.QueueAfterResume(),
		valid:     m.Valid(),
		cur:       m.Group(),
		eff:       m.EffectiveGroup(),
		held:      held,
		suspended: m.Suspended(),
	}
	for g := range m.groups {
		st.bypassed = append(st.bypassed, m.Bypassed(g))
		st.groupActive = append(st.groupActive, m.GroupActivePaths(g))
	}
	for i := range m.paths {
		st.active = append(st.active, m.PathActive(i))
		st.fails = append(st.fails, m.FailCount(i))
	}
	return st
}

type mapState struct {
	queue, queueNext bool
	valid, cur, eff  int
	held             int
	suspended        bool
	bypassed         []bool
	groupActive      []int
	active           []bool
	fails            []uint32
}
