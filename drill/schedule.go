package drill

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"udm/daemon/api"
	"udm/multipath"
)

// PathKind is how a path of the drill's multipath device reaches the
// backing file.
type PathKind string

const (
	// KindDM is a dm device of the daemon (/dev/mapper/NAME), a linear
	// layer over the backing file that faults swap for error, flakey or
	// delay by a table reload.
	KindDM PathKind = "dm"
	// KindFile is a hard link to the backing file, opened directly;
	// "vanish" removes it.
	KindFile PathKind = "file"
	// KindRemote is an NBD export served from a network namespace of its
	// own (udm serve or nbdkit behind a veth pair); "cut" takes its link
	// down, "vanish" kills the server, "hang" stops it.
	KindRemote PathKind = "remote"
)

// PathSpec declares one path.
type PathSpec struct {
	Name string
	Kind PathKind
	// Spare paths are not in the initial table; a "load" brings them in.
	Spare bool
}

// Event is one line of a schedule: an action at a time.
type Event struct {
	Line int
	// At is the time from the workload's start, or, with Rel, from the
	// end of the previous event. An event never starts before the one
	// above it has ended.
	At     time.Duration
	Rel    bool
	Action string
	Args   []string
}

// String is the event's action as written ("error p0").
func (e Event) String() string { return strings.Join(append([]string{e.Action}, e.Args...), " ") }

// Schedule is a parsed drill schedule: the device to build and the
// faults to play against it. See the package documentation for the
// language.
type Schedule struct {
	Paths         []PathSpec
	QueueIfNoPath bool
	Selector      string
	// Checker holds the map's checker settings (drill defaults, then the
	// schedule's checker lines).
	Checker api.CheckerSettings
	// Remote is the server of remote paths: "udm" (udm serve),
	// "udm-tls" (udm serve --tls require --tls-verify-peer, reached over
	// nbds:// with a client certificate) or "nbdkit".
	Remote string
	// Duration is the least time the workload runs; Tail how long it
	// goes on after the last event.
	Duration, Tail time.Duration
	Events         []Event
}

// DefaultChecker are the checker settings a drill starts from: a path
// is checked every 200 ms, a check may take 500 ms, an I/O on a path 1 s.
var DefaultChecker = api.CheckerSettings{PollingInterval: "200ms", CheckTimeout: "500ms", IODeadline: "1s", NoPathRetry: "queue"}

// DefaultAwait bounds an await without "within".
const DefaultAwait = 30 * time.Second

// ErrSchedule marks schedule errors (each names its line).
var ErrSchedule = errors.New("drill: bad schedule")

// Path finds a declared path.
func (s *Schedule) Path(name string) (PathSpec, bool) {
	for _, p := range s.Paths {
		if p.Name == name {
			return p, true
		}
	}
	return PathSpec{}, false
}

// HasRemote reports whether any path is remote.
func (s *Schedule) HasRemote() bool {
	for _, p := range s.Paths {
		if p.Kind == KindRemote {
			return true
		}
	}
	return false
}

// HasAction reports whether an event uses action.
func (s *Schedule) HasAction(action string) bool {
	for _, e := range s.Events {
		if e.Action == action {
			return true
		}
	}
	return false
}

// MapConfig is the checker configuration the schedule asks for.
func (s *Schedule) MapConfig() multipath.MapConfig {
	c, _ := s.Checker.MapConfig() // validated by Parse
	return c
}

// Parse reads a schedule. Lines are directives (path, features,
// selector, checker, remote, duration, tail) or events (TIME ACTION
// ARGS); # starts a comment.
func Parse(text string) (*Schedule, error) {
	s := &Schedule{QueueIfNoPath: true, Selector: "round-robin", Checker: DefaultChecker, Remote: "udm", Tail: time.Second}
	declared := false
	for i, raw := range strings.Split(text, "\n") {
		line := i + 1
		if j := strings.IndexByte(raw, '#'); j >= 0 {
			raw = raw[:j]
		}
		f := strings.Fields(raw)
		if len(f) == 0 {
			continue
		}
		bad := func(format string, a ...any) error {
			return fmt.Errorf("%w: line %d: %s", ErrSchedule, line, fmt.Sprintf(format, a...))
		}
		if at, rel, ok := parseTime(f[0]); ok {
			if len(f) < 2 {
				return nil, bad("%s: no action", f[0])
			}
			s.Events = append(s.Events, Event{Line: line, At: at, Rel: rel, Action: f[1], Args: f[2:]})
			continue
		}
		if len(s.Events) > 0 && f[0] != "tail" && f[0] != "duration" {
			return nil, bad("directive %q after the first event (directives other than tail and duration come first)", f[0])
		}
		switch f[0] {
		case "path":
			if len(f) < 3 || len(f) > 4 || (len(f) == 4 && f[3] != "spare") {
				return nil, bad("want: path NAME dm|file|remote [spare]")
			}
			if !validName(f[1]) {
				return nil, bad("path name %q: letters, digits, - and _ only", f[1])
			}
			if _, dup := s.Path(f[1]); dup {
				return nil, bad("path %s declared twice", f[1])
			}
			k := PathKind(f[2])
			if k != KindDM && k != KindFile && k != KindRemote {
				return nil, bad("path kind %q: want dm, file or remote", f[2])
			}
			if !declared {
				s.Paths, declared = nil, true
			}
			s.Paths = append(s.Paths, PathSpec{Name: f[1], Kind: k, Spare: len(f) == 4})
		case "features":
			if len(f) != 2 || (f[1] != "queue_if_no_path" && f[1] != "none") {
				return nil, bad("want: features queue_if_no_path|none")
			}
			s.QueueIfNoPath = f[1] == "queue_if_no_path"
		case "selector":
			if len(f) != 2 || !slices.Contains(multipath.Selectors(), f[1]) {
				return nil, bad("want: selector %s", strings.Join(multipath.Selectors(), "|"))
			}
			s.Selector = f[1]
		case "checker":
			if len(f) < 2 {
				return nil, bad("want: checker KEY=VALUE...")
			}
			for _, kv := range f[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return nil, bad("checker setting %q: want KEY=VALUE", kv)
				}
				if err := s.Checker.Set(k, v); err != nil {
					return nil, bad("%v", err)
				}
			}
			if _, err := s.Checker.MapConfig(); err != nil {
				return nil, bad("%v", err)
			}
		case "remote":
			if len(f) != 2 || (f[1] != "udm" && f[1] != "udm-tls" && f[1] != "nbdkit") {
				return nil, bad("want: remote udm|udm-tls|nbdkit")
			}
			s.Remote = f[1]
		case "duration", "tail":
			if len(f) != 2 {
				return nil, bad("want: %s DURATION", f[0])
			}
			d, err := time.ParseDuration(f[1])
			if err != nil || d < 0 {
				return nil, bad("%s %q: want a duration like 2s", f[0], f[1])
			}
			if f[0] == "duration" {
				s.Duration = d
			} else {
				s.Tail = d
			}
		default:
			return nil, bad("unknown directive or bad time %q", f[0])
		}
	}
	if !declared {
		s.Paths = []PathSpec{{Name: "p0", Kind: KindDM}, {Name: "p1", Kind: KindDM}}
	}
	live := 0
	for _, p := range s.Paths {
		if !p.Spare {
			live++
		}
	}
	if live == 0 {
		return nil, fmt.Errorf("%w: every path is a spare: the table needs one", ErrSchedule)
	}
	for _, e := range s.Events {
		if err := s.check(e); err != nil {
			return nil, fmt.Errorf("%w: line %d: %s: %v", ErrSchedule, e.Line, e, err)
		}
	}
	return s, nil
}

// parseTime reads an event's time: a duration (1.5s, 500ms, 0) or +D.
func parseTime(s string) (time.Duration, bool, bool) {
	rel := strings.HasPrefix(s, "+")
	t := strings.TrimPrefix(s, "+")
	if t == "" || (t[0] < '0' || t[0] > '9') && t[0] != '.' {
		return 0, false, false
	}
	if t == "0" {
		return 0, rel, true
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 {
		return 0, false, false
	}
	return d, rel, true
}

// Actions and what they take. Path actions name a declared path of the
// kinds listed.
var actions = map[string]struct {
	usage string
	kinds []PathKind // the first argument is a path of these kinds
}{
	"fail-path":          {"fail-path PATH (message fail_path)", allKinds},
	"reinstate-path":     {"reinstate-path PATH (message reinstate_path)", allKinds},
	"operator-fail":      {"operator-fail PATH (udm fail path: the checker pauses)", allKinds},
	"operator-reinstate": {"operator-reinstate PATH", allKinds},
	"error":              {"error PATH (its layer becomes an error target)", []PathKind{KindDM}},
	"flakey":             {"flakey PATH UP DOWN [FEATURES...] (its layer becomes flakey, up/down in seconds)", []PathKind{KindDM}},
	"hang":               {"hang PATH (dm: a delay layer of an hour; remote: the server is stopped)", []PathKind{KindDM, KindRemote}},
	"restore":            {"restore PATH (back to linear, link up, server running)", []PathKind{KindDM, KindRemote}},
	"vanish":             {"vanish PATH (file: removed; remote: server killed)", []PathKind{KindFile, KindRemote}},
	"cut":                {"cut PATH (its network link goes down)", []PathKind{KindRemote}},
	"uncut":              {"uncut PATH (its link comes back)", []PathKind{KindRemote}},
	"suspend":            {"suspend [noflush]", nil},
	"resume":             {"resume", nil},
	"load":               {"load PATH... (a table with these paths, same features)", nil},
	"storm":              {"storm COUNT [noflush] [every DURATION] (suspend/resume cycles)", nil},
	"restart":            {"restart (SIGKILL the daemon, start it again on its state)", nil},
	"message":            {"message ARGS... (a multipath message)", nil},
	"checker":            {"checker KEY=VALUE...", nil},
	"await":              {"await PATH failed|active | all-failed | queued | queueing-off | queueing-on [within DURATION]", nil},
	"expect-errors":      {"expect-errors [ERRNO...] | expect-errors off", nil},
}

var allKinds = []PathKind{KindDM, KindFile, KindRemote}

// Actions lists the actions with their usage, sorted.
func Actions() []string {
	var out []string
	for _, a := range actions {
		out = append(out, a.usage)
	}
	slices.Sort(out)
	return out
}

// check validates one event against the declared paths.
func (s *Schedule) check(e Event) error {
	a, ok := actions[e.Action]
	if !ok {
		return fmt.Errorf("unknown action (one of: %s)", strings.Join(actionNames(), ", "))
	}
	if a.kinds != nil {
		if len(e.Args) < 1 {
			return fmt.Errorf("want: %s", a.usage)
		}
		p, ok := s.Path(e.Args[0])
		if !ok {
			return fmt.Errorf("no path %q declared", e.Args[0])
		}
		if !slices.Contains(a.kinds, p.Kind) {
			return fmt.Errorf("a %s path can't %s (want: %s)", p.Kind, e.Action, a.usage)
		}
	}
	n := len(e.Args)
	usage := func() error { return fmt.Errorf("want: %s", a.usage) }
	switch e.Action {
	case "fail-path", "reinstate-path", "operator-fail", "operator-reinstate", "error", "hang", "restore", "vanish", "cut", "uncut":
		if n != 1 {
			return usage()
		}
	case "flakey":
		if n < 3 {
			return usage()
		}
		up, err1 := strconv.ParseUint(e.Args[1], 10, 32)
		down, err2 := strconv.ParseUint(e.Args[2], 10, 32)
		if err1 != nil || err2 != nil || up+down == 0 {
			return fmt.Errorf("up and down are whole seconds, not both 0")
		}
	case "suspend":
		if n > 1 || (n == 1 && e.Args[0] != "noflush") {
			return usage()
		}
	case "resume", "restart":
		if n != 0 {
			return usage()
		}
	case "load":
		if n == 0 {
			return usage()
		}
		seen := map[string]bool{}
		for _, p := range e.Args {
			if _, ok := s.Path(p); !ok {
				return fmt.Errorf("no path %q declared", p)
			}
			if seen[p] {
				return fmt.Errorf("path %s twice", p)
			}
			seen[p] = true
		}
	case "storm":
		if _, _, _, err := parseStorm(e.Args); err != nil {
			return err
		}
	case "message":
		if n == 0 {
			return usage()
		}
	case "checker":
		if n == 0 {
			return usage()
		}
		c := s.Checker
		for _, kv := range e.Args {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				return usage()
			}
			if err := c.Set(k, v); err != nil {
				return err
			}
		}
		if _, err := c.MapConfig(); err != nil {
			return err
		}
	case "await":
		if _, err := parseAwait(s, e.Args); err != nil {
			return err
		}
	case "expect-errors":
		if _, _, err := parseExpect(e.Args); err != nil {
			return err
		}
	}
	return nil
}

func parseStorm(args []string) (count int, noflush bool, every time.Duration, err error) {
	bad := fmt.Errorf("want: %s", actions["storm"].usage)
	if len(args) == 0 {
		return 0, false, 0, bad
	}
	count, err = strconv.Atoi(args[0])
	if err != nil || count < 1 || count > 10000 {
		return 0, false, 0, fmt.Errorf("storm count %q: want 1..10000", args[0])
	}
	rest := args[1:]
	if len(rest) > 0 && rest[0] == "noflush" {
		noflush, rest = true, rest[1:]
	}
	switch {
	case len(rest) == 0:
	case len(rest) == 2 && rest[0] == "every":
		every, err = time.ParseDuration(rest[1])
		if err != nil || every < 0 {
			return 0, false, 0, fmt.Errorf("storm every %q: want a duration", rest[1])
		}
	default:
		return 0, false, 0, bad
	}
	return count, noflush, every, nil
}

// awaitCond is a parsed await.
type awaitCond struct {
	path   string // for failed/active
	state  string // failed, active, all-failed, queued, queueing-off, queueing-on
	within time.Duration
}

func (a awaitCond) String() string {
	if a.path != "" {
		return a.path + " " + a.state
	}
	return a.state
}

func parseAwait(s *Schedule, args []string) (awaitCond, error) {
	c := awaitCond{within: DefaultAwait}
	if n := len(args); n >= 2 && args[n-2] == "within" {
		d, err := time.ParseDuration(args[n-1])
		if err != nil || d <= 0 {
			return c, fmt.Errorf("within %q: want a duration", args[n-1])
		}
		c.within, args = d, args[:n-2]
	}
	switch {
	case len(args) == 1 && (args[0] == "all-failed" || args[0] == "queued" || args[0] == "queueing-off" || args[0] == "queueing-on"):
		c.state = args[0]
	case len(args) == 2 && (args[1] == "failed" || args[1] == "active"):
		if _, ok := s.Path(args[0]); !ok {
			return c, fmt.Errorf("no path %q declared", args[0])
		}
		c.path, c.state = args[0], args[1]
	default:
		return c, fmt.Errorf("want: %s", actions["await"].usage)
	}
	return c, nil
}

// parseExpect reads expect-errors' arguments: off, or the errnos that
// are expected (EIO when none is named).
func parseExpect(args []string) (on bool, errnos []string, err error) {
	if len(args) == 1 && args[0] == "off" {
		return false, nil, nil
	}
	for _, a := range args {
		if !strings.HasPrefix(a, "E") || strings.ToUpper(a) != a || len(a) < 3 {
			return false, nil, fmt.Errorf("%q is not an errno name like EIO", a)
		}
	}
	if len(args) == 0 {
		args = []string{"EIO"}
	}
	return true, args, nil
}

func actionNames() []string {
	var out []string
	for n := range actions {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func validName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
