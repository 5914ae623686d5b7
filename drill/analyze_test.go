package drill

import (
	"bytes"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"udm/perf"
)

// steady is a record of n 100 ms intervals at 1000 IOPS with two paths
// always active, verified.
func steady(n int) *Record {
	r := &Record{Interval: 0.1, Paths: []string{"p0", "p1"}, VerifiedBytes: 1 << 20, End: float64(n) / 10}
	for i := 0; i < n; i++ {
		r.Timeline = append(r.Timeline, perf.Point{T: float64(i) / 10, IOPS: 1000, P99: 500, Max: 900})
		r.Samples = append(r.Samples, Sample{T: float64(i) / 10, OK: true, Paths: map[string]string{"p0": StateActive, "p1": StateActive}, Queueing: true})
		r.Ops += 100
	}
	r.MaxLatency = 0.0009
	return r
}

// setPath marks path p as st in the samples from t on.
func setPath(r *Record, p, st string, from float64) {
	for i := range r.Samples {
		if r.Samples[i].T >= from-1e-9 {
			r.Samples[i].Paths[p] = st
		}
	}
}

func ioErr(op string, off int64, at time.Duration, errno string) perf.IOError {
	return perf.IOError{Op: op, Offset: off, Len: 4096, At: at, Latency: 3 * time.Millisecond, Err: strings.ToLower(errno), Errno: errno}
}

func TestAnalyzeFaultFigures(t *testing.T) {
	r := steady(40)
	r.Events = []EventRecord{{Line: 3, Action: "error p0", Start: 1.0, End: 1.02}, {Line: 4, Action: "restore p0", Start: 2.5, End: 2.52}}
	setPath(r, "p0", StateFailed, 1.1)
	setPath(r, "p0", StateActive, 2.7)
	r.Timeline[11].IOPS = 100 // the failover dip
	a := Analyze(r, nil)
	if a.Verdict != "PASS" || a.Reason != "" {
		t.Fatalf("verdict %s: %s", a.Verdict, a.Reason)
	}
	if a.Baseline != 1000 || len(a.Faults) != 1 {
		t.Fatalf("baseline %v, faults %+v", a.Baseline, a.Faults)
	}
	f := a.Faults[0]
	near := func(p *float64, want float64) bool { return p != nil && *p > want-1e-6 && *p < want+1e-6 }
	if !near(f.ToFailed, 0.1) || !near(f.Failover, 0.3) || f.Repair != "restore p0" || !near(f.Reinstate, 0.2) {
		t.Fatalf("fault %+v (failed %v failover %v reinstate %v)", f, *f.ToFailed, *f.Failover, *f.Reinstate)
	}
	// The scenario's own checks pass on it too.
	sc, _ := Lookup("single-path-loss")
	s, _ := Parse(sc.Schedule(false))
	a = Analyze(r, sc.Checks(s))
	if a.Verdict != "PASS" {
		t.Fatalf("single-path-loss checks: %s", a.Reason)
	}
	// ...and fail when p1 fails too, or p0 never comes back.
	setPath(r, "p1", StateFailed, 3.5)
	if a = Analyze(r, sc.Checks(s)); a.Verdict != "FAIL" || !strings.Contains(a.Reason, "but p1 failed too") {
		t.Fatalf("p1 failing too: %s %s", a.Verdict, a.Reason)
	}
	setPath(r, "p1", StateActive, 0)
	setPath(r, "p0", StateFailed, 1.1)
	if a = Analyze(r, sc.Checks(s)); a.Verdict != "FAIL" || !strings.Contains(a.Reason, "reinstated p0: not active again after restore p0") {
		t.Fatalf("p0 not back: %s %s", a.Verdict, a.Reason)
	}
}

func TestAnalyzeErrors(t *testing.T) {
	// An error outside any window: FAIL, and the reason says which I/O,
	// where and when.
	r := steady(30)
	r.Timeline[15].Errors = 1
	r.Errors = 1
	r.IOErrors = []perf.IOError{ioErr("write", 8192, 1550*time.Millisecond, "EIO")}
	a := Analyze(r, nil)
	if a.Verdict != "FAIL" || a.UnexpectedErrors != 1 || a.ExpectedErrors != 0 {
		t.Fatalf("%+v", a)
	}
	want := "no unexpected I/O errors: write at offset 8192 (4096 bytes) failed at 1.550 s after 3 ms: eio (outside any expected-error window); 1 unexpected in all"
	if a.Reason != want {
		t.Fatalf("reason:\n%s\nwant:\n%s", a.Reason, want)
	}

	// The same error inside a window expecting EIO: PASS.
	r.Windows = []Window{{From: 1.5, To: 1.52, Errnos: []string{"EIO"}}}
	if a = Analyze(r, nil); a.Verdict != "PASS" || a.ExpectedErrors != 1 {
		t.Fatalf("expected error: %+v", a)
	}
	// ...but not with another errno.
	r.IOErrors[0].Errno = "ETIMEDOUT"
	if a = Analyze(r, nil); a.Verdict != "FAIL" || !strings.Contains(a.Reason, "ETIMEDOUT is not an expected errno (EIO)") || a.ExpectedErrors != 0 {
		t.Fatalf("wrong errno: %+v", a)
	}

	// An error storm: counts come from the timeline, not from the few
	// errors described; one late error outside the window is caught.
	r = steady(30)
	r.Windows = []Window{{From: 1.0, To: 2.0, Errnos: []string{"EIO"}}}
	for i := 10; i < 20; i++ {
		r.Timeline[i].Errors = 5000
		r.Errors += 5000
		r.IOErrors = append(r.IOErrors, ioErr("read", int64(i)*4096, time.Duration(i)*100*time.Millisecond+time.Millisecond, "EIO"))
	}
	if a = Analyze(r, nil); a.Verdict != "PASS" || a.ExpectedErrors != 50000 {
		t.Fatalf("storm: %+v", a)
	}
	r.Timeline[27].Errors = 3
	r.Errors += 3
	a = Analyze(r, nil)
	if a.Verdict != "FAIL" || a.UnexpectedErrors != 3 || !strings.Contains(a.Reason, "3 I/O errors at 2.7–2.8 s, outside any expected-error window") {
		t.Fatalf("late errors: %s (%+v)", a.Reason, a)
	}

	// Errors of the read-back pass are never expected.
	r = steady(10)
	r.Errors = 2
	r.IOErrors = []perf.IOError{ioErr("read", 0, 2*time.Second, "EIO")}
	r.IOErrors[0].ReadBack = true
	r.Windows = []Window{{From: 0, To: 100, Errnos: []string{"EIO"}}}
	if a = Analyze(r, nil); a.Verdict != "FAIL" || a.UnexpectedErrors != 2 || !strings.Contains(a.Reason, "in the read-back pass") {
		t.Fatalf("read-back: %s (%+v)", a.Reason, a)
	}
}

func TestAnalyzeGenericChecks(t *testing.T) {
	r := steady(10)
	r.VerifyFailures = []string{"read at offset 4096 (sector 8) after 0.5s: stale data: generation 1, want 2"}
	if a := Analyze(r, nil); a.Verdict != "FAIL" || !strings.HasPrefix(a.Reason, "data verified: read at offset 4096") {
		t.Fatalf("verify: %s", a.Reason)
	}
	r = steady(10)
	r.VerifiedBytes = 0
	if a := Analyze(r, nil); a.Verdict != "FAIL" || !strings.Contains(a.Reason, "nothing was read back") {
		t.Fatalf("nothing verified: %s", a.Reason)
	}
	r = steady(10)
	r.Events = []EventRecord{{Line: 7, Action: "await p0 failed", Start: 0.5, End: 10.5, Err: "not within 10s"}}
	if a := Analyze(r, nil); a.Verdict != "FAIL" || a.Reason != "schedule played: line 7 at 0.50 s: await p0 failed: not within 10s" {
		t.Fatalf("event error: %s", a.Reason)
	}
	r = steady(10)
	r.Hung = "I/O still outstanding 20s after the workload stopped"
	if a := Analyze(r, nil); a.Verdict != "FAIL" || !strings.HasPrefix(a.Reason, "no I/O left hanging: I/O still") {
		t.Fatalf("hung: %s", a.Reason)
	}
}

func TestScenarioChecks(t *testing.T) {
	// hung-path: the stall bound is deadline + 1 s.
	sc, _ := Lookup("hung-path")
	s, _ := Parse(sc.Schedule(false))
	r := steady(40)
	r.Events = []EventRecord{{Action: "hang p0", Start: 1}, {Action: "restore p0", Start: 2.5}}
	setPath(r, "p0", StateFailed, 1.9)
	setPath(r, "p0", StateActive, 2.7)
	r.MaxLatency = 1.2
	if a := Analyze(r, sc.Checks(s)); a.Verdict != "PASS" {
		t.Fatalf("hung-path: %s", a.Reason)
	}
	r.MaxLatency = 2.5
	if a := Analyze(r, sc.Checks(s)); a.Verdict != "FAIL" || a.Reason != "no stall longer than deadline + 1 s (2.00 s): longest I/O 2.50 s" {
		t.Fatalf("hung-path stall: %s", a.Reason)
	}

	// no-path-retry 5 at 200 ms: no error before 0.8 s after the last
	// fault.
	sc, _ = Lookup("no-path-retry")
	s, _ = Parse(sc.Schedule(false))
	r = steady(50)
	r.Events = []EventRecord{{Action: "expect-errors EIO", Start: 1}, {Action: "error p0", Start: 1}, {Action: "error p1", Start: 1},
		{Action: "restore p0", Start: 3}, {Action: "expect-errors off", Start: 3.3}}
	r.Windows = []Window{{From: 1, To: 3.3, Errnos: []string{"EIO"}}}
	setPath(r, "p0", StateFailed, 1)
	setPath(r, "p1", StateFailed, 1)
	setPath(r, "p0", StateActive, 3.1)
	for i := range r.Samples {
		if r.Samples[i].T >= 2 && r.Samples[i].T < 3.2 {
			r.Samples[i].Queueing = false
		}
	}
	r.MaxLatency = 1.0
	at := func(sec float64) {
		r.Timeline = steady(50).Timeline
		r.Timeline[int(sec*10)].Errors = 10
		r.Errors = 10
		r.IOErrors = []perf.IOError{ioErr("write", 0, time.Duration(sec*float64(time.Second)), "EIO")}
	}
	at(2.0)
	if a := Analyze(r, sc.Checks(s)); a.Verdict != "PASS" {
		t.Fatalf("no-path-retry: %s", a.Reason)
	}
	at(1.3)
	if a := Analyze(r, sc.Checks(s)); a.Verdict != "FAIL" || !strings.Contains(a.Reason, "first error at 1.300 s, before 1.800 s") {
		t.Fatalf("no-path-retry, early error: %s", a.Reason)
	}
	at(2.0)
	r.MaxLatency = 9
	if a := Analyze(r, sc.Checks(s)); a.Verdict != "FAIL" || !strings.HasPrefix(a.Reason, "nothing hung") {
		t.Fatalf("no-path-retry, long I/O: %s", a.Reason)
	}
}

func TestReportRendering(t *testing.T) {
	r := steady(30)
	r.Events = []EventRecord{{Action: "error p0", Start: 1}, {Action: "error p1", Start: 1.01}, {Action: "await all-failed", Start: 1.02}, {Action: "restore p0", Start: 2}}
	setPath(r, "p0", StateFailed, 1.1)
	r.Samples[25].OK = false
	rep := &Report{Name: "t", Form: "short", Record: r, Analysis: Analyze(r, nil), PathDevs: map[string]string{"p0": "/dev/mapper/a", "p1": "/dev/mapper/b"}}
	var txt bytes.Buffer
	rep.Summary(&txt)
	if first, _, _ := strings.Cut(txt.String(), "\n"); first != "udm drill t (short): PASS" {
		t.Fatalf("first line %q", first)
	}
	for _, want := range []string{"p0 = /dev/mapper/a", "error p0 at 1.00 s: failed after 100 ms", "verdict   PASS"} {
		if !strings.Contains(txt.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, txt.String())
		}
	}
	var svg bytes.Buffer
	if err := rep.Plot(&svg); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(svg.Bytes()))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("the SVG is not well-formed XML: %v", err)
		}
	}
	s := svg.String()
	// Markers merged within 50 ms, awaits left out; the band has the
	// failed state and the daemon's silence.
	for _, want := range []string{"error p0; error p1", "restore p0", bandColors[StateFailed], bandColors["down"]} {
		if !strings.Contains(s, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if strings.Contains(s, "await") {
		t.Error("an await is drawn as an event")
	}
}

// No failover is reported when no other path was there to take the I/O
// (both failed; I/O came back through a reload).
func TestAnalyzeNoFailoverWithoutAPath(t *testing.T) {
	r := steady(40)
	r.Events = []EventRecord{{Action: "error p0", Start: 1}, {Action: "error p1", Start: 1}, {Action: "resume", Start: 3}}
	setPath(r, "p0", StateFailed, 1.1)
	setPath(r, "p1", StateFailed, 1.2)
	for i := 11; i < 31; i++ {
		r.Timeline[i].IOPS = 0
	}
	a := Analyze(r, nil)
	if len(a.Faults) != 2 || a.Faults[0].Failover != nil || a.Faults[1].Failover != nil || a.Faults[0].ToFailed == nil {
		t.Fatalf("faults %+v", a.Faults)
	}
	if a.LongestGap < 1.99 || a.LongestGap > 2.01 || a.GapAt < 1.09 || a.GapAt > 1.11 {
		t.Fatalf("gap %v at %v", a.LongestGap, a.GapAt)
	}
}

// A drill whose workload fio ran says so in the titles of its summary
// and of its plot.
func TestReportTitleNamesFio(t *testing.T) {
	r := steady(30)
	rep := &Report{Name: "t", Form: "full", Workload: "fio nbd randwrite 4k qd8, verify=crc32c (verify_backlog)", Record: r, Analysis: Analyze(r, nil)}
	var txt, svg bytes.Buffer
	rep.Summary(&txt)
	if first, _, _ := strings.Cut(txt.String(), "\n"); first != "udm drill t (full, fio workload): PASS" {
		t.Errorf("first line %q", first)
	}
	if err := rep.Plot(&svg); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(svg.String(), ">udm drill t (full, fio workload): PASS<") {
		t.Errorf("the plot's title does not name fio:\n%.600s", svg.String())
	}
}

// A failed path that the checker reinstates for a moment right after its
// deadline failed it (a check from before the fault) still has I/O
// continuing on the other path judged over every span it was failed.
func TestContinuedOverFlickeringFailure(t *testing.T) {
	r := steady(40)
	setPath(r, "p0", StateFailed, 1.0)
	setPath(r, "p0", StateActive, 1.1) // one sample failed, in which no I/O ended
	r.Timeline[10].IOPS = 0
	setPath(r, "p0", StateFailed, 1.5)
	setPath(r, "p0", StateActive, 3.0)
	if c := continuedCheck(r, "p0", "p1"); !c.Pass || !strings.Contains(c.Detail, "2 spans") {
		t.Fatalf("%+v", c)
	}
	// The flicker alone is not enough.
	r = steady(40)
	setPath(r, "p0", StateFailed, 1.0)
	setPath(r, "p0", StateActive, 1.1)
	r.Timeline[10].IOPS = 0
	if c := continuedCheck(r, "p0", "p1"); c.Pass {
		t.Fatalf("a 0.1 s failure passed: %+v", c)
	}
	// Nor is I/O while the other path failed too.
	r = steady(40)
	setPath(r, "p0", StateFailed, 1.0)
	setPath(r, "p1", StateFailed, 2.0)
	if c := continuedCheck(r, "p0", "p1"); c.Pass {
		t.Fatalf("passed with p1 failed too: %+v", c)
	}
	if c := continuedCheck(steady(10), "p0", "p1"); c.Pass || c.Detail != "p0 never failed" {
		t.Fatalf("%+v", c)
	}
}
