package multipath

import (
	"fmt"
	"strconv"
	"strings"

	"udm/dm"
)

// Machine is the pure state of one multipath map: which paths are active
// and how often they failed, which priority groups are bypassed, the
// current and next group, queue_if_no_path and its value saved across a
// suspend. It does no I/O, takes no locks and reads no clock: methods
// take events (a path failed, a message, a suspend hook, an I/O that
// needs a group) and return what the driver must do (Actions) or decide
// (Decision). The target wraps it under its mutex and publishes an
// immutable snapshot of it for the fast path after every change.
//
// The rules are dm-mpath.c's (bio mode, no hardware handler):
//   - An I/O uses the current group while it has an active path. Else the
//     group chosen by switch_group, if it has one; else the first group
//     with an active path that is not bypassed, then bypassed ones.
//     This choice is made when an I/O asks for it (Choose), as the kernel
//     makes it in choose_pgpath, so status shows no active group until
//     I/O has flowed.
//   - With no active path an I/O is held (queue_if_no_path), pushed back
//     (during a noflush suspend) or failed.
//   - Presuspend saves queue_if_no_path and clears it; resume restores
//     it. There is no presuspend undo (as in the kernel): after an
//     interrupted suspend, queueing stays off until the next resume or a
//     queue_if_no_path message.
type Machine struct {
	spec   *Spec
	groups []mgroup
	paths  []mpath
	// cur and next are group indices, or -1.
	cur, next int
	valid     int // active paths
	queue     bool
	saved     bool
	// suspending: presuspend ran and postsuspend did not yet;
	// suspended: postsuspend ran and resume did not yet.
	suspending, suspended bool
}

type mgroup struct {
	bypassed    bool
	first, n    int // paths[first:first+n]
	activePaths int
}

type mpath struct {
	group     int
	active    bool
	failCount uint32
}

// ActionKind is something the driver must do after an event.
type ActionKind uint8

const (
	// ActTriggerEvent: bump the device's event counter (dmsetup wait).
	ActTriggerEvent ActionKind = iota
	// ActProcessQueue: map the held I/O again (a path is usable, or
	// queueing was turned off).
	ActProcessQueue
	// ActPathFailed: Path went from active to failed (log it).
	ActPathFailed
	// ActPathReinstated: Path went from failed to active (log it).
	ActPathReinstated
)

// Action is one thing to do; Path is set for path actions.
type Action struct {
	Kind ActionKind
	Path int
}

func (a Action) String() string {
	switch a.Kind {
	case ActTriggerEvent:
		return "event"
	case ActProcessQueue:
		return "process-queue"
	case ActPathFailed:
		return "path-failed " + strconv.Itoa(a.Path)
	case ActPathReinstated:
		return "path-reinstated " + strconv.Itoa(a.Path)
	}
	return "action?"
}

// Decision is what happens to an I/O.
type Decision uint8

const (
	// DecidePath: a usable path exists; pick one in Group (Machine.Group).
	DecidePath Decision = iota
	// DecideHold: keep the I/O in the target until a path comes back or
	// queueing stops.
	DecideHold
	// DecideRequeue: push the I/O back to the core (noflush suspend).
	DecideRequeue
	// DecideKill: fail the I/O with EIO.
	DecideKill
)

var decisionNames = [...]string{"path", "hold", "requeue", "kill"}

func (d Decision) String() string { return decisionNames[d] }

// NewMachine builds the state of a freshly loaded table: every path
// active, no current group, the initial group as next.
func NewMachine(spec *Spec) *Machine {
	m := &Machine{spec: spec, cur: -1, next: -1, queue: spec.QueueIfNoPath}
	for gi, g := range spec.Groups {
		m.groups = append(m.groups, mgroup{first: len(m.paths), n: len(g.Paths), activePaths: len(g.Paths)})
		for range g.Paths {
			m.paths = append(m.paths, mpath{group: gi, active: true})
		}
	}
	m.valid = len(m.paths)
	if i := int(spec.InitialPG) - 1; i >= 0 && i < len(m.groups) {
		m.next = i
	}
	return m
}

// Spec is the table the machine was built from.
func (m *Machine) Spec() *Spec { return m.spec }

// NumPaths is the number of paths (indices are 0..NumPaths-1, in table
// order across groups).
func (m *Machine) NumPaths() int { return len(m.paths) }

// PathGroup is the group index of path i.
func (m *Machine) PathGroup(i int) int { return m.paths[i].group }

// PathActive reports whether path i is active.
func (m *Machine) PathActive(i int) bool { return m.paths[i].active }

// FailCount is how often path i failed.
func (m *Machine) FailCount(i int) uint32 { return m.paths[i].failCount }

// Valid is the number of active paths.
func (m *Machine) Valid() int { return m.valid }

// QueueIfNoPath reports whether I/O is held when no path is usable.
func (m *Machine) QueueIfNoPath() bool { return m.queue }

// QueueAfterResume is what queue_if_no_path will be once the device runs
// again: the saved value while a suspend has it saved. The table status
// prints it, so that a table read during a suspend loads back with the
// feature it was loaded with.
func (m *Machine) QueueAfterResume() bool { return m.queue || m.saved }

// Suspended reports whether postsuspend ran and resume did not yet.
func (m *Machine) Suspended() bool { return m.suspended }

// Suspending reports whether a suspend is between presuspend and
// postsuspend (or was interrupted there and not resumed since).
func (m *Machine) Suspending() bool { return m.suspending }

// Group is the group I/O goes to now, or -1 (valid when Ready).
func (m *Machine) Group() int { return m.cur }

// EffectiveGroup is the group the next I/O will use: the switch_group
// target if one is pending, else the current group (-1: none chosen yet).
func (m *Machine) EffectiveGroup() int {
	if m.next >= 0 {
		return m.next
	}
	return m.cur
}

// Bypassed reports whether group g is disabled.
func (m *Machine) Bypassed(g int) bool { return m.groups[g].bypassed }

// GroupActivePaths is the number of active paths in group g.
func (m *Machine) GroupActivePaths(g int) int { return m.groups[g].activePaths }

// Ready reports whether an I/O can take a path of Group() without
// changing the state: no switch is pending and the current group has an
// active path. The fast path maps only while the snapshot is ready.
func (m *Machine) Ready() bool {
	return m.next < 0 && m.cur >= 0 && m.groups[m.cur].activePaths > 0
}

// Choose picks the group for an I/O (the kernel's choose_pgpath, at the
// group level) and reports whether the state changed. Afterwards either
// Ready() or Valid() == 0.
func (m *Machine) Choose() bool {
	cur, next := m.cur, m.next
	m.choose()
	return cur != m.cur || next != m.next
}

func (m *Machine) choose() {
	if m.valid == 0 {
		m.cur = -1
		return
	}
	if g := m.next; g >= 0 {
		m.next = -1
		if m.groups[g].activePaths > 0 {
			m.cur = g
			return
		}
	}
	if m.cur >= 0 && m.groups[m.cur].activePaths > 0 {
		return
	}
	for _, bypassed := range []bool{false, true} {
		for g := range m.groups {
			if m.groups[g].bypassed == bypassed && m.groups[g].activePaths > 0 {
				m.cur = g
				return
			}
		}
	}
	m.cur = -1
}

// NoPath decides what happens to an I/O when no path is usable
// (Valid() == 0). During a noflush suspend it is pushed back even if
// queue_if_no_path is on (set by a message after presuspend): holding it
// would keep the suspend from draining.
func (m *Machine) NoPath(noflush bool) Decision {
	switch {
	case noflush:
		return DecideRequeue
	case m.queue:
		return DecideHold
	}
	return DecideKill
}

// Map decides for an I/O: it chooses a group if needed (reporting
// whether the state changed) and returns DecidePath when Group() has an
// active path.
func (m *Machine) Map(noflush bool) (Decision, bool) {
	changed := false
	if !m.Ready() {
		changed = m.Choose()
	}
	if m.Ready() {
		return DecidePath, changed
	}
	return m.NoPath(noflush), changed
}

// FailPath marks path i failed (an I/O error on it, a failed check, a
// fail_path message). Failing a failed path does nothing.
func (m *Machine) FailPath(i int) []Action {
	p := &m.paths[i]
	if !p.active {
		return nil
	}
	p.active = false
	p.failCount++
	m.valid--
	m.groups[p.group].activePaths--
	return []Action{{Kind: ActPathFailed, Path: i}, {Kind: ActTriggerEvent}}
}

// ReinstatePath marks path i active again. When it is the only active
// path, held I/O is processed.
func (m *Machine) ReinstatePath(i int) []Action {
	p := &m.paths[i]
	if p.active {
		return nil
	}
	p.active = true
	m.valid++
	m.groups[p.group].activePaths++
	acts := []Action{{Kind: ActPathReinstated, Path: i}, {Kind: ActTriggerEvent}}
	if m.valid == 1 {
		acts = append(acts, Action{Kind: ActProcessQueue})
	}
	return acts
}

// SetQueueIfNoPath is the queue_if_no_path (on) and fail_if_no_path (off)
// messages. Turning it off also forgets a value saved by presuspend, so
// that resume doesn't turn it back on, and processes held I/O.
func (m *Machine) SetQueueIfNoPath(on bool) []Action {
	if !on {
		m.saved = false
		m.queue = false
		return []Action{{Kind: ActProcessQueue}}
	}
	m.queue = true
	return nil
}

// PreSuspend saves queue_if_no_path and clears it, so that held I/O is
// pushed back (noflush) or failed. As in the kernel, a value already
// saved by an earlier (interrupted) suspend is not overwritten by the
// cleared one.
func (m *Machine) PreSuspend() []Action {
	if m.queue || !m.saved {
		m.saved = m.queue
	}
	m.queue = false
	m.suspending = true
	return []Action{{Kind: ActProcessQueue}}
}

// PreSuspendUndo ends an interrupted suspend. queue_if_no_path stays off
// until the next resume, as in the kernel (which has no multipath
// presuspend_undo).
func (m *Machine) PreSuspendUndo() { m.suspending = false }

// PostSuspend: the device is suspended; messages are refused.
func (m *Machine) PostSuspend() {
	m.suspending = false
	m.suspended = true
}

// Resume restores the saved queue_if_no_path.
func (m *Machine) Resume() {
	if m.saved {
		m.queue = true
		m.saved = false
	}
	m.suspending = false
	m.suspended = false
}

// parseGroupNum reads a 1-based group number for a message.
func (m *Machine) parseGroupNum(s string) (int, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || len(m.groups) == 0 || n > uint64(len(m.groups)) {
		return 0, fmt.Errorf("%w %q (the map has %d)", ErrBadGroup, s, len(m.groups))
	}
	return int(n) - 1, nil
}

// SwitchGroup is the switch_group message: every group is enabled again
// and the next I/O tries group g first.
func (m *Machine) SwitchGroup(g int) []Action {
	for i := range m.groups {
		m.groups[i].bypassed = false
	}
	m.cur, m.next = -1, g
	return []Action{{Kind: ActTriggerEvent}}
}

// BypassGroup is disable_group (on) and enable_group (off): a bypassed
// group is used only when no other group has an active path. The next
// I/O chooses its group again.
func (m *Machine) BypassGroup(g int, on bool) []Action {
	m.groups[g].bypassed = on
	m.cur = -1
	return []Action{{Kind: ActTriggerEvent}}
}

// Message applies a dmsetup message. resolve maps a device argument to
// the indices of the paths it names (none: EINVAL). Errors wrap
// ErrBadMessage, ErrUnknownPath or ErrBadGroup (all EINVAL), or
// ErrSuspended (EBUSY) once postsuspend ran.
func (m *Machine) Message(args []string, resolve func(dev string) []int) ([]Action, error) {
	if m.suspended {
		return nil, ErrSuspended
	}
	if len(args) == 1 {
		switch strings.ToLower(args[0]) {
		case "queue_if_no_path":
			return m.SetQueueIfNoPath(true), nil
		case "fail_if_no_path":
			return m.SetQueueIfNoPath(false), nil
		}
	}
	if len(args) != 2 {
		return nil, fmt.Errorf("%w: expected 2 arguments, got %d (%q)", ErrBadMessage, len(args), args)
	}
	verb := strings.ToLower(args[0])
	switch verb {
	case "disable_group", "enable_group", "switch_group":
		g, err := m.parseGroupNum(args[1])
		if err != nil {
			return nil, err
		}
		if verb == "switch_group" {
			return m.SwitchGroup(g), nil
		}
		return m.BypassGroup(g, verb == "disable_group"), nil
	case "fail_path", "reinstate_path":
		idx := resolve(args[1])
		if len(idx) == 0 {
			return nil, fmt.Errorf("%w: %q", ErrUnknownPath, args[1])
		}
		var acts []Action
		for _, i := range idx {
			if verb == "fail_path" {
				acts = append(acts, m.FailPath(i)...)
			} else {
				acts = append(acts, m.ReinstatePath(i)...)
			}
		}
		return acts, nil
	}
	return nil, fmt.Errorf("%w: unrecognised multipath message %q", ErrBadMessage, args[0])
}

// PathInfo supplies a selector's per-path status for StatusInfo (the
// in-flight counters live outside the machine). It returns the
// selector's info fields for path i, each followed by a space.
type PathInfo func(i int) string

// StatusInfo prints the kernel's INFO status (dmsetup status):
//
//	2 <queue_io> <pg_init_count> 0 <#pgs> <pg> {A|D|E <ps status> <#paths> <#info args> {<dev> A|F <fail_count> <ps info>}}
//
// queue_io and pg_init_count are 0 (no hardware handler). Like the
// kernel's, the line ends with a space.
func (m *Machine) StatusInfo(info PathInfo) string {
	var b strings.Builder
	b.WriteString("2 0 0 0 ")
	m.formatGroupHead(&b)
	for gi := range m.groups {
		g := &m.groups[gi]
		gs := &m.spec.Groups[gi]
		switch {
		case g.bypassed:
			b.WriteString("D ")
		case gi == m.cur:
			b.WriteString("A ")
		default:
			b.WriteString("E ")
		}
		gs.formatSelector(&b)
		fmt.Fprintf(&b, "%d %d ", g.n, selectors[gs.kind].infoArgs)
		for j := 0; j < g.n; j++ {
			i := g.first + j
			p := &m.paths[i]
			st := "F"
			if p.active {
				st = "A"
			}
			fmt.Fprintf(&b, "%s %s %d ", dm.QuoteArg(gs.Paths[j].Dev), st, p.failCount)
			if info != nil {
				b.WriteString(info(i))
			} else {
				b.WriteString(zeroPathInfo(gs, j))
			}
		}
	}
	return b.String()
}

// zeroPathInfo is a selector's per-path info with nothing in flight.
func zeroPathInfo(gs *GroupSpec, j int) string {
	switch gs.kind {
	case selQueueLength:
		return "0 "
	case selServiceTime:
		return "0 " + strconv.FormatUint(uint64(gs.Paths[j].RelThroughput), 10) + " "
	case selHistorical:
		return "0 0 0 "
	}
	return ""
}

// StatusTable prints the kernel's TABLE status (dmsetup table), which
// loads back.
func (m *Machine) StatusTable() string { return m.spec.Format(m.QueueAfterResume()) }

// formatGroupHead prints "<#pgs> <pg> ": the pending switch target, else
// the current group, else 1.
func (m *Machine) formatGroupHead(b *strings.Builder) {
	pg := 0
	switch {
	case m.next >= 0:
		pg = m.next + 1
	case m.cur >= 0:
		pg = m.cur + 1
	case len(m.groups) > 0:
		pg = 1
	}
	fmt.Fprintf(b, "%d %d ", len(m.groups), pg)
}
