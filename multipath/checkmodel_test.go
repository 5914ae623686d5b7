package multipath

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

// scene is a scenario script's world: a Machine (the target's state) and
// the checker's model over it, on a clock that moves only by `advance`.
type scene struct {
	m     *Machine
	c     *mapChecker
	at    time.Duration // time since the script started
	epoch []uint32      // per path: reinstatements (a check's verdict is stale if it changed)
	// tokens: each path's epoch and fail count when its check started.
	tokens []checkToken
}

var sceneStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func (sc *scene) now() time.Time { return sceneStart.Add(sc.at) }

func (sc *scene) when(t time.Time) string { return "t=" + t.Sub(sceneStart).String() }

func (sc *scene) pathName(i int) string {
	g := sc.m.PathGroup(i)
	return sc.m.spec.Groups[g].Paths[i-sc.m.groups[g].first].Dev
}

func (sc *scene) path(t *testing.T, dev string) int {
	for i := 0; i < sc.m.NumPaths(); i++ {
		if sc.pathName(i) == dev {
			return i
		}
	}
	t.Fatalf("no path %q", dev)
	return -1
}

// checkerStep runs the checker's commands (ok false: not one of them):
//
//	checker [KEY=VALUE...]   a new model (the map goes live, or was
//	                         reloaded or reconfigured: the operator's
//	                         marks carry over); keys polling_interval
//	                         (a duration or off), max_polling_interval,
//	                         check_timeout, no_path_retry, failback,
//	                         self_timed=DEV,DEV (their check times out
//	                         by itself)
//	advance DURATION         the clock moves on; the model does what is due
//	done DEV ok|error|gone   DEV's running check returns
//	operator fail|reinstate DEV
//	paths                    the model's view of each path
//	wake                     when the model next wants to run
//
// The model's actions print one per line and are applied to the Machine
// as the driver applies them to the target.
func (sc *scene) checkerStep(t *testing.T, f []string) (out []string, ok bool) {
	switch f[0] {
	case "checker", "advance", "done", "operator", "paths", "wake":
	default:
		return nil, false
	}
	if f[0] != "checker" && sc.c == nil {
		t.Fatalf("%q before checker", strings.Join(f, " "))
	}
	var st mapState
	if sc.m != nil {
		st = machineState(sc.m, 0)
	}
	var acts []checkAct
	switch f[0] {
	case "checker":
		var cfg MapConfig
		self := map[string]bool{}
		for _, kv := range f[1:] {
			k, v, _ := strings.Cut(kv, "=")
			var err error
			dur := func(to *time.Duration) {
				if *to, err = time.ParseDuration(v); err != nil {
					t.Fatalf("%s: %v", kv, err)
				}
			}
			switch k {
			case "polling_interval":
				if v == "off" {
					cfg.PollingInterval = -1
				} else {
					dur(&cfg.PollingInterval)
				}
			case "max_polling_interval":
				dur(&cfg.MaxPollingInterval)
			case "check_timeout":
				dur(&cfg.CheckTimeout)
			case "no_path_retry":
				cfg.NoPathRetry, err = ParseNoPathRetry(v)
			case "failback":
				cfg.Failback, err = ParseFailback(v)
			case "self_timed":
				for _, d := range strings.Split(v, ",") {
					self[d] = true
				}
			default:
				t.Fatalf("unknown checker setting %q", kv)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		var ps []checkPath
		for i := 0; i < sc.m.NumPaths(); i++ {
			name := sc.pathName(i)
			ps = append(ps, checkPath{Name: name, Group: sc.m.PathGroup(i), SelfTimed: self[name],
				Operator: sc.c != nil && sc.c.paths[i].Operator})
		}
		pg := int(sc.m.spec.InitialPG) - 1
		if pg < 0 || pg >= len(sc.m.groups) {
			pg = 0
		}
		sc.c = newMapChecker(cfg, ps, len(sc.m.groups), pg)
		sc.tokens = make([]checkToken, len(ps))
		acts = sc.c.start(sc.now())
	case "advance":
		d, err := time.ParseDuration(f[1])
		if err != nil || d < 0 {
			t.Fatalf("advance %q: %v", f[1], err)
		}
		sc.at += d
		acts = sc.c.tick(sc.now(), &st)
	case "done":
		i := sc.path(t, f[1])
		var err error
		switch f[2] {
		case "ok":
		case "error":
			err = fmt.Errorf("multipath: check of %s: %w", f[1], syscall.EIO)
		case "gone":
			err = fmt.Errorf("%w: %s no longer names the file that was opened", errPathGone, f[1])
		default:
			t.Fatalf("done %s: want ok, error or gone", f[2])
		}
		if !sc.c.paths[i].outstanding {
			t.Fatalf("done %s: no check of it is outstanding", f[1])
		}
		tok := sc.tokens[i]
		stale := sc.epoch[i] != tok.epoch || sc.m.FailCount(i) != tok.fails
		acts = sc.c.checkDone(sc.now(), i, err, stale, &st)
	case "operator":
		acts = sc.c.operate(sc.now(), sc.path(t, f[2]), f[1] == "fail", &st)
	case "paths":
		for i := range sc.c.paths {
			p := &sc.c.paths[i]
			s := fmt.Sprintf("%s %v interval=%v next=%s checks=%d", sc.pathName(i), p.state, p.interval, sc.when(p.next), p.checks)
			if p.running {
				s += " running until " + sc.when(p.deadline)
			} else if p.outstanding {
				s += " outstanding"
			}
			if p.Operator {
				s += " operator"
			}
			out = append(out, s)
		}
		return out, true
	case "wake":
		if w := sc.c.wake(); !w.IsZero() {
			return []string{"wake " + sc.when(w)}, true
		}
		return []string{"wake never"}, true
	}
	out = sc.apply(acts)
	if len(out) == 0 {
		out = []string{"ok"}
	}
	return out, true
}

// apply carries out the model's actions on the Machine, as the driver
// does on the target, and describes them.
func (sc *scene) apply(acts []checkAct) []string {
	var out []string
	m := sc.m
	applied := func(as []Action) {
		for _, a := range as {
			if a.Kind == ActPathReinstated {
				sc.epoch[a.Path]++
			}
		}
	}
	resolve := func(string) []int { return nil }
	for _, a := range acts {
		name := ""
		if a.Kind != doQueue && a.Kind != doSwitch {
			name = sc.pathName(a.Path)
		}
		switch a.Kind {
		case doCheck:
			sc.tokens[a.Path] = checkToken{epoch: sc.epoch[a.Path], fails: m.FailCount(a.Path)}
			out = append(out, fmt.Sprintf("check %s timeout=%v deadline %s", name, a.Timeout, sc.when(a.Deadline)))
		case doCancel:
			out = append(out, "cancel "+name)
		case doFail:
			applied(m.FailPath(a.Path))
			out = append(out, fmt.Sprintf("fail %s (%s)", name, a.Cause))
		case doReinstate:
			applied(m.ReinstatePath(a.Path))
			out = append(out, fmt.Sprintf("reinstate %s (%s)", name, a.Cause))
		case doQueue:
			msg := "fail_if_no_path"
			if a.On {
				msg = "queue_if_no_path"
			}
			_, err := m.Message([]string{msg}, resolve)
			sc.c.queueDone(a, err)
			s := msg
			if a.Retry {
				s += " (no_path_retry)"
			}
			if err != nil {
				s += ": " + err.Error()
			}
			out = append(out, s)
		case doSwitch:
			_, err := m.Message([]string{"switch_group", fmt.Sprint(a.Group + 1)}, resolve)
			s := fmt.Sprintf("switch_group %d (failback)", a.Group+1)
			if err != nil {
				s += ": " + err.Error()
			}
			out = append(out, s)
		case doNote:
			s := fmt.Sprintf("%s: %v (was %v)", name, a.State, a.Was)
			if a.Err != nil {
				s += ": " + a.Err.Error()
			}
			out = append(out, s)
		}
	}
	return out
}
