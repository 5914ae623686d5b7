package drill

import (
	"fmt"
	"math"
	"strings"
	"time"
)

// Scenario is a built-in drill: a schedule (short and full forms) and the
// outcome it must show, checked on top of the generic checks.
type Scenario struct {
	Name string
	// Outcome is what the drill must show, in words.
	Outcome string
	// NoFio says why the scenario can't run with fio as the workload
	// ("" if it can).
	NoFio string
	// text returns the schedule of the short or full form.
	text func(full bool) string
	// checks are the scenario's own checks.
	checks func(r *Record, a *Analysis, s *Schedule) []Check
}

// Schedule returns the scenario's schedule text (short or full form).
func (sc *Scenario) Schedule(full bool) string { return sc.text(full) }

// Checks returns the scenario's checks for a run of schedule s.
func (sc *Scenario) Checks(s *Schedule) func(*Record, *Analysis) []Check {
	if sc.checks == nil {
		return nil
	}
	return func(r *Record, a *Analysis) []Check { return sc.checks(r, a, s) }
}

// heldThen is the schedule of a scenario that holds I/O: comment, the
// paths p0 and p1 (and spare), queue_if_no_path, both paths failed and
// the I/O queued; then, at (a delay after that), the steps; and the
// tail.
func heldThen(full bool, comment, spare, at, steps string) string {
	return comment + "path p0 dm\npath p1 dm\n" + spare + "checker no_path_retry=queue\n" +
		pick(full, "1s", "3s") + `    error p0
+0    error p1
+0    await all-failed within 10s
+0    await queued within 10s
` + at + steps + "tail  " + pick(full, "1s", "3s") + "\n"
}

// pick returns short or full.
func pick[T any](full bool, short, long T) T {
	if full {
		return long
	}
	return short
}

const noFioErrors = "it expects I/O errors: fio ends its job at the first one, and its verification can't tell a failed write from lost data; run it with the perf workload"

// Scenarios are the built-in drills: the seven local ones (path loss, a
// hung path, all paths down, the noflush reload, a flush suspend,
// no_path_retry and a restart), then the remote drill and the suspend
// storm.
var Scenarios = []*Scenario{
	{
		Name:    "single-path-loss",
		Outcome: "one of two paths fails under load: zero I/O errors, I/O continues on the other path, the checker reinstates the path when it returns",
		text: breakAndRepair(`# One path's device fails (its dm layer becomes an error target) and
# comes back (linear again); the checker must bring the path back.
path p0 dm
path p1 dm
`, "error", "restore", "p0", "20s"),
		checks: failoverChecks("p0", "p1"),
	},
	{
		Name:    "hung-path",
		Outcome: "a path stops answering: its I/O is failed over within the per-I/O deadline; no stall longer than deadline + 1 s",
		text: breakAndRepair(`# One path's device hangs (a delay layer of an hour): its I/O must move
# to the other path when the per-I/O deadline (io_deadline) passes.
path p0 dm
path p1 dm
`, "hang", "restore", "p0", "20s"),
		checks: func(r *Record, a *Analysis, s *Schedule) []Check {
			dl := s.MapConfig().IODeadline
			if dl <= 0 {
				dl = time.Duration(defaultDeadline)
			}
			bound := dl.Seconds() + 1
			c := Check{Name: fmt.Sprintf("no stall longer than deadline + 1 s (%s)", fmtDur(bound)), Pass: a.LongestIO <= bound,
				Detail: fmt.Sprintf("longest I/O %s", fmtDur(a.LongestIO))}
			return []Check{failedCheck(r, "p0"), c, continuedCheck(r, "p0", "p1"), reinstatedCheck(r, a, "p0")}
		},
	},
	{
		Name:    "all-paths-down-queue",
		Outcome: "both paths fail with queue_if_no_path: I/O is held, not failed; a path returns: held I/O completes; zero errors",
		text: func(full bool) string {
			return heldThen(full, "# Both paths fail; queue_if_no_path holds the I/O until one returns.\n", "",
				pick(full, "+1s", "+5s"), `    restore p0
+0    await p0 active within 20s
+0.5s restore p1
+0    await p1 active within 20s
`)
		},
		checks: func(r *Record, a *Analysis, s *Schedule) []Check {
			return []Check{heldCheck(r, "restore"), resumedCheck(r, "restore p0")}
		},
	},
	{
		Name:    "noflush-reload",
		Outcome: "all paths down, I/O held; suspend --noflush; load a table with a new path; resume: everything held completes on the new path; zero errors, data verified",
		text: func(full bool) string {
			return heldThen(full, `# The noflush failover: with every path down and I/O held, the operator
# suspends without flushing (held I/O is pushed back, not failed), loads
# a table with a new path and resumes: the held I/O completes on it.
`, "path p2 dm spare\n", pick(full, "+0.5s", "+3s"), `    suspend noflush
+0    load p2
+0    resume
+0    await p2 active within 10s
`)
		},
		checks: func(r *Record, a *Analysis, s *Schedule) []Check {
			return []Check{heldCheck(r, "suspend"), resumedCheck(r, "resume"), tableCheck(r, []string{"p2"})}
		},
	},
	{
		Name:    "flush-suspend-fails-queued",
		Outcome: "all paths down, I/O held; a plain suspend: the held I/O fails with EIO, as the kernel does (expected errors); a table with a new path and resume: I/O completes again",
		NoFio:   noFioErrors,
		text: func(full bool) string {
			return heldThen(full, `# As noflush-reload, but the suspend flushes: the target fails what it
# holds with EIO (the kernel's behaviour). Those errors are expected.
`, "path p2 dm spare\n", pick(full, "+0.5s", "+3s"), `    expect-errors EIO
+0    suspend
+0    expect-errors off
+0    load p2
+0    resume
+0    await p2 active within 10s
`)
		},
		checks: func(r *Record, a *Analysis, s *Schedule) []Check {
			c := Check{Name: "held I/O failed with EIO on the suspend", Pass: a.ExpectedErrors > 0,
				Detail: fmt.Sprintf("%d expected errors", a.ExpectedErrors)}
			return []Check{heldCheck(r, "suspend"), c, resumedCheck(r, "resume"), tableCheck(r, []string{"p2"})}
		},
	},
	{
		Name:    "no-path-retry",
		Outcome: "with no_path_retry N, all paths down: I/O is held for N checker intervals, then fails (EIO); nothing hangs forever; queueing resumes when a path returns",
		NoFio:   noFioErrors,
		text: func(full bool) string {
			return fmt.Sprintf(`# no_path_retry %[1]s: with no path, queue for %[1]s polling intervals,
# then fail I/O (EIO, expected) until a path returns.
path p0 dm
path p1 dm
checker polling_interval=200ms no_path_retry=%[1]s
%[2]s    expect-errors EIO
+0    error p0
+0    error p1
+0    await all-failed within 10s
+0    await queueing-off within 20s
%[3]s    restore p0
+0    await p0 active within 20s
+0    await queueing-on within 10s
+0    expect-errors off
+0.5s restore p1
+0    await p1 active within 20s
tail  %[4]s
`, pick(full, "5", "10"), pick(full, "1s", "3s"), pick(full, "+1s", "+3s"), pick(full, "1s", "3s"))
		},
		checks: noPathRetryChecks,
	},
	{
		Name:    "restart",
		Outcome: "the daemon is killed (SIGKILL) during load and restarted: devices come back, I/O resumes, every acknowledged write is intact",
		NoFio:   "fio's NBD engine (libnbd) doesn't reconnect when the server restarts; run it with the perf workload",
		text: func(full bool) string {
			extra := ""
			if full {
				extra = "+3s   restart\n+0    await p0 active within 30s\n+0    await p1 active within 30s\n"
			}
			return fmt.Sprintf(`# The daemon dies under load and comes back on its state dir; the
# client reconnects and re-sends what was in flight.
path p0 dm
path p1 dm
%s    restart
+0    await p0 active within 30s
+0    await p1 active within 30s
%stail  %s
`, pick(full, "1s", "3s"), extra, pick(full, "1.5s", "3s"))
		},
		checks: func(r *Record, a *Analysis, s *Schedule) []Check {
			var cs []Check
			for i := 0; ; i++ {
				e := r.event("restart", i)
				if e == nil {
					break
				}
				c := Check{Name: fmt.Sprintf("devices back after restart %d", i+1)}
				if sm := r.firstSample(e.End, func(s Sample) bool { return allActive(s, r.Paths) }); sm != nil {
					c.Pass = true
					c.Detail = fmt.Sprintf("%s; every path active %s after", e.Detail, fmtDur(sm.T-e.End))
				} else {
					c.Detail = "the map never came back with every path active"
				}
				cs = append(cs, c, resumedAfter(r, e, fmt.Sprintf("I/O completed after restart %d", i+1)))
			}
			if len(cs) == 0 {
				cs = append(cs, Check{Name: "daemon restarted", Detail: "no restart was played"})
			}
			c := Check{Name: "acknowledged writes intact (read back after the run)", Pass: r.ReadBackBytes > 0 && len(r.VerifyFailures) == 0,
				Detail: fmt.Sprintf("%s read back", bytesStr(r.ReadBackBytes))}
			return append(cs, c)
		},
	},
	remotePathCut("remote-path-cut", "udm", "paths are NBD exports served from two network namespaces"),
	remotePathCut("remote-path-cut-tls", "udm-tls", "paths are NBD exports over TLS with client certificates (nbds://, udm serve --tls require --tls-verify-peer) from two network namespaces"),
	{
		Name:    "suspend-storm",
		Outcome: "suspend/resume storms (noflush and flush) under load with healthy paths: zero I/O errors, data verified, I/O runs after each storm",
		text: func(full bool) string {
			return fmt.Sprintf(`# Suspend and resume the map again and again under load.
path p0 dm
path p1 dm
%s    storm %s noflush every 20ms
+0.5s storm %s every 20ms
tail  %s
`, pick(full, "1s", "3s"), pick(full, "20", "200"), pick(full, "20", "200"), pick(full, "1s", "3s"))
		},
		checks: func(r *Record, a *Analysis, s *Schedule) []Check {
			return []Check{resumedCheck(r, "storm")}
		},
	},
}

// failoverChecks: path failed, I/O went on on other meanwhile, and the
// checker reinstated path.
func failoverChecks(path, other string) func(*Record, *Analysis, *Schedule) []Check {
	return func(r *Record, a *Analysis, s *Schedule) []Check {
		return []Check{failedCheck(r, path), continuedCheck(r, path, other), reinstatedCheck(r, a, path)}
	}
}

// breakAndRepair is the schedule (short or full) of a drill that breaks path p with the
// action fault under load, waits for the map to fail it, repairs it with
// repair and waits (up to activeWithin) for the checker to reinstate it;
// head declares the paths.
func breakAndRepair(head, fault, repair, p, activeWithin string) func(full bool) string {
	return func(full bool) string {
		return head + fmt.Sprintf(`%s    %s %s
+0    await %s failed within 10s
%s    %s %s
+0    await %s active within %s
tail  %s
`, pick(full, "1s", "3s"), fault, p, p, pick(full, "+1.5s", "+5s"), repair, p, p, activeWithin, pick(full, "1s", "3s"))
	}
}

// defaultDeadline is multipath.DefaultIODeadline in nanoseconds (used
// when a schedule turns the deadline off but a check needs a bound).
const defaultDeadline = 2 * time.Second

// Lookup finds a built-in scenario.
func Lookup(name string) (*Scenario, bool) {
	for _, s := range Scenarios {
		if s.Name == name {
			return s, true
		}
	}
	return nil, false
}

// Names lists the built-in scenarios.
func Names() []string {
	var n []string
	for _, s := range Scenarios {
		n = append(n, s.Name)
	}
	return n
}

func allActive(s Sample, paths []string) bool {
	n := 0
	for _, p := range paths {
		switch s.Paths[p] {
		case StateActive:
			n++
		case "":
		default:
			return false
		}
	}
	return n > 0
}

// failedCheck: the path was seen failed after its fault.
func failedCheck(r *Record, path string) Check {
	c := Check{Name: path + " failed"}
	for _, e := range r.Events {
		if a, p := splitAction(e.Action); isFault(a) && p == path {
			if s := r.firstSample(e.Start, func(s Sample) bool { return down(s.Paths[path]) }); s != nil {
				c.Pass = true
				c.Detail = fmt.Sprintf("%s after %s", fmtDur(s.T-e.Start), e.Action)
			} else {
				c.Detail = "never seen failed after " + e.Action
			}
			return c
		}
	}
	c.Detail = "no fault on " + path + " was played"
	return c
}

// continuedCheck: while path was failed, I/O completed (on the others)
// and no other path failed. Every span in which path was failed counts:
// a checker result from before the fault may reinstate the path for a
// moment after its I/O deadline failed it (seen beside CPU hogs: failed
// and active again within one sample, then failed for the rest of the
// fault), and that flicker alone has no room for an I/O.
func continuedCheck(r *Record, path, other string) Check {
	c := Check{Name: fmt.Sprintf("I/O continued on %s while %s was failed", other, path)}
	var n, d float64
	spans := 0
	for t := 0.0; ; {
		from := r.firstSample(t, func(s Sample) bool { return down(s.Paths[path]) })
		if from == nil {
			break
		}
		end := r.End
		if to := r.firstSample(from.T, func(s Sample) bool { return s.Paths[path] == StateActive }); to != nil {
			end = to.T
		}
		spans++
		n += r.completions(from.T, end)
		d += end - from.T
		if end >= r.End {
			break
		}
		t = end
	}
	if spans == 0 {
		c.Detail = path + " never failed"
		return c
	}
	otherDown := r.anySample(0, r.End, func(s Sample) bool { return down(s.Paths[other]) })
	c.Pass = n > 0 && !otherDown
	c.Detail = fmt.Sprintf("%.0f I/Os completed in %.1f s", n, d)
	if spans > 1 {
		c.Detail += fmt.Sprintf(" (%d spans failed)", spans)
	}
	if otherDown {
		c.Detail += "; but " + other + " failed too"
	}
	return c
}

// reinstatedCheck: the checker brought the path back after its repair.
func reinstatedCheck(r *Record, a *Analysis, path string) Check {
	c := Check{Name: "the checker reinstated " + path}
	for _, f := range a.Faults {
		if f.Path == path && f.Repair != "" {
			if f.Reinstate != nil {
				c.Pass = true
				c.Detail = fmt.Sprintf("%s after %s", fmtDur(*f.Reinstate), f.Repair)
			} else {
				c.Detail = "not active again after " + f.Repair
			}
			return c
		}
	}
	c.Detail = "no repair of " + path + " was played"
	return c
}

// heldCheck: I/O was held in the target (queued) before the first event
// with action until.
func heldCheck(r *Record, until string) Check {
	c := Check{Name: "I/O held, not failed, while every path was down"}
	end := r.End
	if e := r.event(until, 0); e != nil {
		end = e.Start
	}
	max := 0
	for _, s := range r.Samples {
		if s.OK && s.T <= end && s.Queued > max {
			max = s.Queued
		}
	}
	c.Pass = max > 0
	c.Detail = fmt.Sprintf("up to %d I/Os queued in the target", max)
	return c
}

// resumedCheck: I/O completed after the last event matching what (its
// text or its action) ended.
func resumedCheck(r *Record, what string) Check {
	var e *EventRecord
	for i := len(r.Events) - 1; i >= 0; i-- {
		if r.Events[i].Action == what || actionOf(r.Events[i].Action) == what {
			e = &r.Events[i]
			break
		}
	}
	if e == nil {
		return Check{Name: "I/O completed after " + what, Detail: what + " was not played"}
	}
	return resumedAfter(r, e, "I/O completed after "+what)
}

// resumedAfter: I/O completed in the intervals after e ended (until the
// next event, or the end).
func resumedAfter(r *Record, e *EventRecord, name string) Check {
	c := Check{Name: name}
	from := math.Ceil(e.End/r.Interval-1e-9) * r.Interval
	to := r.End
	for _, e2 := range r.Events {
		if e2.Start > e.End && actionOf(e2.Action) != "await" && e2.Start < to {
			to = e2.Start
		}
	}
	n := r.completions(from, to)
	c.Pass = n > 0
	c.Detail = fmt.Sprintf("%.0f I/Os in the %.1f s after it", n, to-from)
	return c
}

// tableCheck: at the end the live table has exactly these paths, all
// active.
func tableCheck(r *Record, want []string) Check {
	c := Check{Name: "live table on " + strings.Join(want, ", ")}
	s := r.lastSample()
	if s == nil {
		c.Detail = "no answer from the daemon"
		return c
	}
	var got []string
	for _, p := range r.Paths {
		if st := s.Paths[p]; st != "" {
			got = append(got, p+" "+st)
		}
	}
	var exp []string
	for _, p := range want {
		exp = append(exp, p+" "+StateActive)
	}
	c.Pass = strings.Join(got, ",") == strings.Join(exp, ",")
	c.Detail = "paths: " + strings.Join(got, ", ")
	return c
}

// noPathRetryChecks: held for N intervals, then EIO, nothing hangs,
// queueing back once a path returns.
func noPathRetryChecks(r *Record, a *Analysis, s *Schedule) []Check {
	cfg := s.MapConfig()
	n := int(cfg.NoPathRetry)
	p := cfg.PollingInterval.Seconds()
	var cs []Check
	// The last path fault: queueing can't end before (N-1) ticks after it
	// (the first tick may come at once).
	var last *EventRecord
	for i := range r.Events {
		if isFault(actionOf(r.Events[i].Action)) {
			last = &r.Events[i]
		}
	}
	if last == nil || n <= 0 {
		return []Check{{Name: "no_path_retry N", Detail: "the schedule has no fault, or no_path_retry is not a count"}}
	}
	low := last.Start + float64(n-1)*p
	first := math.Inf(1)
	for _, e := range r.IOErrors {
		first = math.Min(first, e.At.Seconds())
	}
	for _, pt := range r.Timeline {
		if pt.Errors > 0 {
			first = math.Min(first, pt.T+r.Interval) // at the latest
			break
		}
	}
	c := Check{Name: fmt.Sprintf("I/O held for %d checker intervals (%s) before failing", n, fmtDur(float64(n)*p))}
	switch {
	case math.IsInf(first, 1):
		c.Detail = "no I/O failed"
	case first < low:
		c.Detail = fmt.Sprintf("first error at %.3f s, before %.3f s (%s + %d × %s)", first, low, last.Action, n-1, fmtDur(p))
	default:
		c.Pass = true
		c.Detail = fmt.Sprintf("first error %s after %s", fmtDur(first-last.Start), last.Action)
	}
	cs = append(cs, c)
	cs = append(cs, Check{Name: "then I/O failed with EIO", Pass: a.ExpectedErrors > 0, Detail: fmt.Sprintf("%d expected errors", a.ExpectedErrors)})
	dl := cfg.IODeadline.Seconds()
	if dl <= 0 {
		dl = defaultDeadline.Seconds()
	}
	bound := float64(n)*p + dl + 5
	cs = append(cs, Check{Name: "nothing hung", Pass: a.LongestIO <= bound && r.Hung == "",
		Detail: fmt.Sprintf("longest I/O %s (bound N × interval + deadline + 5 s = %s)", fmtDur(a.LongestIO), fmtDur(bound))})
	rep := r.event("restore", 0)
	c = Check{Name: "queueing back and I/O completing once a path returned"}
	if rep == nil {
		c.Detail = "no path was restored"
	} else if sm := r.firstSample(rep.Start, func(s Sample) bool { return s.Queueing }); sm == nil {
		c.Detail = "queue_if_no_path never came back"
	} else {
		n := r.completions(math.Ceil(sm.T/r.Interval-1e-9)*r.Interval, r.End)
		c.Pass = n > 0
		c.Detail = fmt.Sprintf("queueing %s after %s; %.0f I/Os after", fmtDur(sm.T-rep.Start), rep.Action, n)
	}
	return append(cs, c)
}

// remotePathCut is the remote-path-cut scenario with remote paths served
// by remote (a schedule's remote line).
func remotePathCut(name, remote, what string) *Scenario {
	return &Scenario{
		Name:    name,
		Outcome: what + "; one link is cut under load: zero I/O errors, I/O continues on the other path, the checker reinstates the path when the link returns",
		text: breakAndRepair(`# Two remote paths: udm serve in two network namespaces (veth pairs,
# link-local addresses), one export each over the same file. One link
# goes down and comes back.
#
# A check or an I/O of a remote path crosses the network stack and two
# more processes (the remote server, whose loop then does the read): on
# a busy machine each hop waits for a CPU, and a healthy path can take
# longer than the 500 ms and 1 s that suit local paths, which fails it
# (the map then has no path). Remote paths get the daemon's defaults.
remote `+remote+`
checker check_timeout=2s io_deadline=2s
path r0 remote
path r1 remote
`, "cut", "uncut", "r0", "30s"),
		checks: failoverChecks("r0", "r1"),
	}
}
