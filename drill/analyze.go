package drill

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"

	"udm/perf"
)

// ErrorGrace is how long after an expected-error window closes an error
// still counts as expected: the window closes when the daemon says the
// cause is gone, and an error the daemon sent just before reaches the
// client a little later.
const ErrorGrace = 0.5

// Analysis is what a drill's record shows: the figures of the summary,
// the checks and the verdict.
type Analysis struct {
	// Baseline is the median IOPS before the first event.
	Baseline float64 `json:"baseline_iops"`
	// ExpectedErrors fell in an expect-errors window with an expected
	// errno; UnexpectedErrors are the others (read-back errors included).
	ExpectedErrors   int64          `json:"expected_errors"`
	UnexpectedErrors int64          `json:"unexpected_errors"`
	FirstUnexpected  *perf.IOError  `json:"first_unexpected,omitempty"`
	ErrorsByErrno    map[string]int `json:"errors_by_errno,omitempty"` // of the described errors
	// LongestIO is the longest any I/O took (s); LongestGap the longest
	// stretch of intervals in which no I/O completed (s), and GapAt where
	// it began.
	LongestIO  float64 `json:"longest_io_s"`
	LongestGap float64 `json:"longest_gap_s"`
	GapAt      float64 `json:"gap_at_s"`
	// Faults measures each fault event.
	Faults  []Fault `json:"faults,omitempty"`
	Checks  []Check `json:"checks"`
	Verdict string  `json:"verdict"` // PASS or FAIL
	Reason  string  `json:"reason,omitempty"`
	Mean    float64 `json:"mean_iops"`
}

// Fault is one fault event and what followed: when the path was seen
// failed, when I/O ran normally again on the others, and when it came
// back after its repair. Times are seconds after the event (nil: it
// didn't happen, or doesn't apply).
type Fault struct {
	Path     string   `json:"path"`
	Action   string   `json:"action"`
	At       float64  `json:"at_s"`
	ToFailed *float64 `json:"to_failed_s,omitempty"`
	// Failover: to the end of the first interval that starts after the
	// path was seen failed with at least half the baseline IOPS, when
	// another path was listed active all the while.
	Failover  *float64 `json:"failover_s,omitempty"`
	Repair    string   `json:"repair,omitempty"`
	RepairAt  float64  `json:"repair_at_s,omitempty"`
	Reinstate *float64 `json:"reinstate_s,omitempty"`
}

// Check is one thing the drill must show.
type Check struct {
	Name   string `json:"name"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail,omitempty"`
}

// Analyze measures a record and judges it: the generic checks (no
// unexpected error, data verified, every event played, nothing left
// hanging), then extra (a scenario's own).
func Analyze(r *Record, extra func(*Record, *Analysis) []Check) *Analysis {
	a := &Analysis{ErrorsByErrno: map[string]int{}}
	a.Baseline = baseline(r)
	a.Mean = meanIOPS(r)
	a.LongestIO = r.MaxLatency
	a.LongestGap, a.GapAt = longestGap(r)
	classifyErrors(r, a)
	a.Faults = measureFaults(r, a.Baseline)

	// Generic checks.
	c := Check{Name: "no unexpected I/O errors", Pass: a.UnexpectedErrors == 0}
	if !c.Pass {
		c.Detail = unexpectedDetail(r, a)
	} else if a.ExpectedErrors > 0 {
		c.Detail = fmt.Sprintf("%d expected", a.ExpectedErrors)
	}
	a.Checks = append(a.Checks, c)
	c = Check{Name: "data verified", Pass: len(r.VerifyFailures) == 0 && r.VerifiedBytes > 0}
	switch {
	case len(r.VerifyFailures) > 0:
		c.Detail = fmt.Sprintf("%s (%d failures)", r.VerifyFailures[0], len(r.VerifyFailures))
	case r.VerifiedBytes == 0:
		c.Detail = "nothing was read back and checked"
	default:
		c.Detail = fmt.Sprintf("%s checked", bytesStr(r.VerifiedBytes))
	}
	a.Checks = append(a.Checks, c)
	c = Check{Name: "schedule played", Pass: true}
	for _, e := range r.Events {
		if e.Err != "" {
			c.Pass = false
			c.Detail = fmt.Sprintf("line %d at %.2f s: %s: %s", e.Line, e.Start, e.Action, e.Err)
			break
		}
	}
	a.Checks = append(a.Checks, c)
	c = Check{Name: "no I/O left hanging", Pass: r.Hung == ""}
	c.Detail = r.Hung
	a.Checks = append(a.Checks, c)
	if extra != nil {
		a.Checks = append(a.Checks, extra(r, a)...)
	}
	a.Verdict = "PASS"
	for _, c := range a.Checks {
		if !c.Pass {
			a.Verdict = "FAIL"
			a.Reason = c.Name + ": " + c.Detail
			break
		}
	}
	return a
}

// baseline is the median IOPS of the intervals before the first event,
// leaving out the first (warm-up); of all busy intervals if there are too
// few.
func baseline(r *Record) float64 {
	first := math.Inf(1)
	if len(r.Events) > 0 {
		first = r.Events[0].Start
	}
	var v []float64
	for i, p := range r.Timeline {
		if i > 0 && p.T+r.Interval <= first {
			v = append(v, p.IOPS)
		}
	}
	if len(v) < 3 {
		v = v[:0]
		for _, p := range r.Timeline {
			if p.IOPS > 0 {
				v = append(v, p.IOPS)
			}
		}
	}
	if len(v) == 0 {
		return 0
	}
	sort.Float64s(v)
	return v[len(v)/2]
}

func meanIOPS(r *Record) float64 {
	if r.End <= 0 {
		return 0
	}
	var n float64
	for _, p := range r.Timeline {
		n += p.IOPS * r.Interval
	}
	return n / r.End
}

// longestGap finds the longest run of intervals without a completion
// between the first and the last busy one.
func longestGap(r *Record) (float64, float64) {
	var best, at float64
	run, start := 0, 0.0
	for _, p := range r.Timeline {
		if p.IOPS == 0 {
			if run == 0 {
				start = p.T
			}
			run++
			if g := float64(run) * r.Interval; g > best {
				best, at = g, start
			}
		} else {
			run = 0
		}
	}
	return best, at
}

// inWindow returns the window (stretched by ErrorGrace) that covers t.
func inWindow(ws []Window, t float64) *Window {
	for i := range ws {
		if t >= ws[i].From && t <= ws[i].To+ErrorGrace {
			return &ws[i]
		}
	}
	return nil
}

// classifyErrors splits the errors into expected and unexpected. Counts
// come from the timeline (every error, per interval): an interval that
// overlaps a window is expected, unless a described error in it has an
// errno the window doesn't expect (each such error counts unexpected).
// Errors not in the timeline (the read-back pass) are unexpected.
func classifyErrors(r *Record, a *Analysis) {
	iv := r.Interval
	var inTimeline int64
	expectedIv := map[int]bool{} // intervals counted as expected
	for i, p := range r.Timeline {
		inTimeline += p.Errors
		if p.Errors == 0 {
			continue
		}
		overlaps := false
		for _, w := range r.Windows {
			if p.T+iv >= w.From && p.T <= w.To+ErrorGrace {
				overlaps = true
			}
		}
		if overlaps {
			a.ExpectedErrors += p.Errors
			expectedIv[i] = true
		} else {
			a.UnexpectedErrors += p.Errors
		}
	}
	for i := range r.IOErrors {
		e := &r.IOErrors[i]
		name := e.Errno
		if name == "" {
			name = e.Err
		}
		a.ErrorsByErrno[name]++
		w := inWindow(r.Windows, e.At.Seconds())
		ok := !e.ReadBack && w != nil && slices.Contains(w.Errnos, e.Errno)
		if ok {
			continue
		}
		if a.FirstUnexpected == nil {
			a.FirstUnexpected = e
		}
		if !e.ReadBack && iv > 0 && expectedIv[int(e.At.Seconds()/iv)] && a.ExpectedErrors > 0 {
			// Counted as expected with its interval: move it.
			a.ExpectedErrors--
			a.UnexpectedErrors++
		}
	}
	if rest := r.Errors - inTimeline; rest > 0 {
		a.UnexpectedErrors += rest
	}
}

// unexpectedDetail says which I/O failed, where and when.
func unexpectedDetail(r *Record, a *Analysis) string {
	if e := a.FirstUnexpected; e != nil {
		why := "outside any expected-error window"
		if w := inWindow(r.Windows, e.At.Seconds()); w != nil && !e.ReadBack {
			why = fmt.Sprintf("%s is not an expected errno (%s)", errnoOr(e), strings.Join(w.Errnos, ", "))
		}
		if e.ReadBack {
			why = "in the read-back pass after the run"
		}
		return fmt.Sprintf("%s at offset %d (%d bytes) failed at %.3f s after %s: %s (%s); %d unexpected in all",
			e.Op, e.Offset, e.Len, e.At.Seconds(), fmtDur(e.Latency.Seconds()), e.Err, why, a.UnexpectedErrors)
	}
	for _, p := range r.Timeline {
		if p.Errors > 0 && inWindow(r.Windows, p.T) == nil {
			return fmt.Sprintf("%d I/O errors at %.1f–%.1f s, outside any expected-error window; %d unexpected in all",
				p.Errors, p.T, p.T+r.Interval, a.UnexpectedErrors)
		}
	}
	return fmt.Sprintf("%d unexpected I/O errors", a.UnexpectedErrors)
}

func errnoOr(e *perf.IOError) string {
	if e.Errno != "" {
		return e.Errno
	}
	return e.Err
}

// measureFaults measures every fault event: time to the path failed,
// time to failover, and time to reinstate after its repair.
func measureFaults(r *Record, base float64) []Fault {
	var out []Fault
	for i, e := range r.Events {
		act, path := splitAction(e.Action)
		if !isFault(act) || e.Err != "" {
			continue
		}
		f := Fault{Path: path, Action: e.Action, At: e.Start}
		if s := r.firstSample(e.Start, func(s Sample) bool { return down(s.Paths[path]) }); s != nil {
			d := s.T - e.Start
			f.ToFailed = &d
			if base > 0 {
				from := math.Ceil(s.T/r.Interval-1e-9) * r.Interval
				for _, p := range r.Timeline {
					if p.T >= from-1e-9 && p.IOPS >= base/2 {
						// A failover only if another path was listed
						// active all along until then.
						if !r.anySample(s.T, p.T+r.Interval, func(s Sample) bool { return !otherActive(s, path) }) {
							fo := p.T + r.Interval - e.Start
							f.Failover = &fo
						}
						break
					}
				}
			}
		}
		// The first repair of this path after the fault (before it
		// faults again).
		for _, e2 := range r.Events[i+1:] {
			a2, p2 := splitAction(e2.Action)
			if p2 != path {
				continue
			}
			if isFault(a2) {
				break
			}
			if isRepair(a2) && e2.Err == "" {
				f.Repair, f.RepairAt = e2.Action, e2.Start
				if s := r.firstSample(e2.Start, func(s Sample) bool { return s.Paths[path] == StateActive }); s != nil {
					d := s.T - e2.Start
					f.Reinstate = &d
				}
				break
			}
		}
		out = append(out, f)
	}
	return out
}

// otherActive reports whether a path other than path is listed active.
func otherActive(s Sample, path string) bool {
	for p, st := range s.Paths {
		if p != path && st == StateActive {
			return true
		}
	}
	return false
}

func bytesStr(n int64) string {
	switch {
	case n >= 10<<30:
		return fmt.Sprintf("%.0f GiB", float64(n)/(1<<30))
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// fmtDur prints seconds as ms below one second.
func fmtDur(s float64) string {
	if s < 0.9995 {
		return fmt.Sprintf("%.0f ms", s*1000)
	}
	return fmt.Sprintf("%.2f s", s)
}
