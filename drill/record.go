package drill

import (
	"slices"
	"strings"

	"udm/perf"
)

// Record is what a drill observed, on the workload's clock (seconds from
// its start). It is the input of Analyze, which does no I/O.
type Record struct {
	// Interval is the timeline's interval in seconds (0.1).
	Interval float64 `json:"interval_s"`
	// Timeline: IOPS, errors, p99 and max latency per interval, by
	// completion time.
	Timeline []perf.Point `json:"timeline"`
	// Ops, Reads, Writes and Errors count the workload's I/O; Errors
	// includes the read-back pass.
	Ops    int64 `json:"ops"`
	Reads  int64 `json:"reads"`
	Writes int64 `json:"writes"`
	Errors int64 `json:"errors"`
	// IOErrors describes failed I/Os (see perf.Result.IOErrors).
	IOErrors []perf.IOError `json:"io_errors,omitempty"`
	// MaxLatency is the longest any I/O took, in seconds.
	MaxLatency float64 `json:"max_latency_s"`
	// VerifiedBytes were read back and checked (ReadBackBytes of them in
	// the pass after the run).
	VerifiedBytes  int64    `json:"verified_bytes"`
	ReadBackBytes  int64    `json:"read_back_bytes"`
	VerifyFailures []string `json:"verify_failures,omitempty"`
	// End is when the workload stopped issuing I/O.
	End float64 `json:"end_s"`
	// Hung: I/O was still outstanding long after the workload was told
	// to stop, and had to be released (fail_if_no_path) or abandoned.
	Hung string `json:"hung,omitempty"`

	// Paths are the paths' names in declaration order.
	Paths   []string      `json:"paths"`
	Events  []EventRecord `json:"events"`
	Samples []Sample      `json:"samples"`
	// Windows are the times when errors were expected.
	Windows []Window `json:"expected_error_windows,omitempty"`
}

// EventRecord is one event of the schedule as it was played.
type EventRecord struct {
	Line   int     `json:"line"`
	Action string  `json:"action"` // as written: "error p0"
	Start  float64 `json:"start_s"`
	End    float64 `json:"end_s"`
	// Detail is what the action did, when there is more to say (the
	// daemon's new pid after a restart).
	Detail string `json:"detail,omitempty"`
	Err    string `json:"error,omitempty"`
}

// Sample is the daemon's view of the map at one moment (polled every
// interval).
type Sample struct {
	T float64 `json:"t_s"`
	// OK: the daemon answered and the map exists.
	OK bool `json:"ok"`
	// Paths maps a path's name to active, failed or gone ("" when it is
	// not in the live table).
	Paths     map[string]string `json:"paths,omitempty"`
	Queued    int               `json:"queued"`
	Queueing  bool              `json:"queue_if_no_path"`
	Suspended bool              `json:"suspended"`
}

// Window is a time when I/O errors with these errnos are expected.
type Window struct {
	From   float64  `json:"from_s"`
	To     float64  `json:"to_s"`
	Errnos []string `json:"errnos"`
}

// Path states in samples.
const (
	StateActive = "active"
	StateFailed = "failed"
	StateGone   = "gone"
)

// down reports whether a sampled path state counts as failed.
func down(st string) bool { return st == StateFailed || st == StateGone }

// firstSample returns the first sample at or after t that satisfies f,
// or nil.
func (r *Record) firstSample(t float64, f func(Sample) bool) *Sample {
	for i := range r.Samples {
		if s := &r.Samples[i]; s.T >= t && s.OK && f(*s) {
			return s
		}
	}
	return nil
}

// anySample reports whether a sample in [from, to] satisfies f.
func (r *Record) anySample(from, to float64, f func(Sample) bool) bool {
	for _, s := range r.Samples {
		if s.T >= from && s.T <= to && s.OK && f(s) {
			return true
		}
	}
	return false
}

// lastSample is the last sample in which the daemon answered.
func (r *Record) lastSample() *Sample {
	for i := len(r.Samples) - 1; i >= 0; i-- {
		if r.Samples[i].OK {
			return &r.Samples[i]
		}
	}
	return nil
}

// completions counts I/Os completed in the intervals that lie within
// [from, to].
func (r *Record) completions(from, to float64) float64 {
	var n float64
	for _, p := range r.Timeline {
		if p.T >= from-1e-9 && p.T+r.Interval <= to+1e-9 {
			n += p.IOPS * r.Interval
		}
	}
	return n
}

// event finds the nth (0-based) played event with this action, or nil.
func (r *Record) event(action string, nth int) *EventRecord {
	for i := range r.Events {
		if actionOf(r.Events[i].Action) == action {
			if nth == 0 {
				return &r.Events[i]
			}
			nth--
		}
	}
	return nil
}

func actionOf(s string) string { a, _ := splitAction(s); return a }

// splitAction returns an event's action and first argument.
func splitAction(s string) (action, arg string) {
	f := strings.Fields(s)
	if len(f) == 0 {
		return "", ""
	}
	if len(f) == 1 {
		return f[0], ""
	}
	return f[0], f[1]
}

// faultActions make a path fail; repairActions bring it back.
var (
	faultActions  = []string{"error", "flakey", "hang", "vanish", "cut", "fail-path", "operator-fail"}
	repairActions = []string{"restore", "uncut", "reinstate-path", "operator-reinstate"}
)

func isFault(a string) bool  { return slices.Contains(faultActions, a) }
func isRepair(a string) bool { return slices.Contains(repairActions, a) }
