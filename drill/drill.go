package drill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"sync"
	"time"

	"udm/daemon/api"
	"udm/multipath"
)

// Options configure a drill.
type Options struct {
	// UDM is the udm binary for the daemon the drill starts (and for
	// remote udm servers). Default: this executable.
	UDM string
	// Control, if set, is the control socket of a running daemon: the
	// drill makes its devices there (named drill<pid>...) and removes
	// them after. A restart can't be played then.
	Control string
	// Dir is where the scratch directory goes (default /dev/shm).
	Dir string
	// Size of the backing file in bytes (default 64 MiB).
	Size int64
	// Workload is what runs against the map.
	Workload Workload
	// Fio runs fio (nbd engine, verify=crc32c) instead of perf.
	Fio bool
	// Loops of the daemon the drill starts (default 2).
	Loops int
	// Poll is the path-state polling interval (default 100 ms).
	Poll time.Duration
	// Log receives progress lines (nil: none).
	Log io.Writer
	// Keep leaves the scratch directory (state, logs) in place.
	Keep bool
}

func (o *Options) defaults() error {
	if o.UDM == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.UDM = exe
	}
	if o.Size == 0 {
		o.Size = 64 << 20
	}
	if o.Size%4096 != 0 || o.Size < 1<<20 {
		return fmt.Errorf("drill: size %d: want a multiple of 4 KiB, at least 1 MiB", o.Size)
	}
	if o.Loops == 0 {
		o.Loops = 2
	}
	if o.Poll == 0 {
		o.Poll = interval
	}
	o.Workload.defaults()
	return nil
}

// Report is a drill's outcome: what ran, what was seen, the verdict.
type Report struct {
	Name string `json:"name"`
	// Form is short or full for a built-in scenario, custom for a
	// schedule file.
	Form     string    `json:"form"`
	Outcome  string    `json:"outcome,omitempty"`
	Started  time.Time `json:"started"`
	Workload string    `json:"workload"`
	Seed     uint64    `json:"seed"`
	// Table is the map's initial table; PathDevs each path's device in it.
	Table    string              `json:"table"`
	PathDevs map[string]string   `json:"path_devices"`
	Checker  api.CheckerSettings `json:"checker"`
	Schedule string              `json:"schedule"`
	Record   *Record             `json:"record"`
	Analysis *Analysis           `json:"analysis"`
	// Logs are the ends of the logs of the processes the drill ran, kept
	// when the verdict is FAIL.
	Logs map[string]string `json:"logs,omitempty"`
	// Dir is the scratch directory when it was kept.
	Dir string `json:"dir,omitempty"`
}

// Pass reports whether the verdict is PASS.
func (r *Report) Pass() bool { return r.Analysis != nil && r.Analysis.Verdict == "PASS" }

// RunScenario runs a built-in scenario, short or full.
func RunScenario(ctx context.Context, sc *Scenario, full bool, opt Options) (*Report, error) {
	if opt.Fio && sc.NoFio != "" {
		return nil, fmt.Errorf("drill: %s can't run with fio: %s", sc.Name, sc.NoFio)
	}
	text := sc.Schedule(full)
	s, err := Parse(text)
	if err != nil {
		return nil, fmt.Errorf("drill: built-in %s: %w", sc.Name, err)
	}
	form := "short"
	if full {
		form = "full"
	}
	return run(ctx, sc.Name, form, sc.Outcome, text, s, sc.Checks(s), opt)
}

// RunSchedule runs a schedule (the text of a schedule file); name labels
// the report.
func RunSchedule(ctx context.Context, name, text string, opt Options) (*Report, error) {
	s, err := Parse(text)
	if err != nil {
		return nil, err
	}
	return run(ctx, name, "custom", "", text, s, nil, opt)
}

func run(ctx context.Context, name, form, outcome, text string, s *Schedule, checks func(*Record, *Analysis) []Check, opt Options) (*Report, error) {
	if err := opt.defaults(); err != nil {
		return nil, err
	}
	if s.HasAction("restart") && opt.Control != "" {
		return nil, errors.New("drill: a restart needs a daemon the drill starts itself (drop --control)")
	}
	if opt.Fio && s.HasAction("restart") {
		return nil, errors.New("drill: fio's NBD engine doesn't reconnect after a restart: use the perf workload")
	}
	e, err := setup(ctx, s, opt)
	if err != nil {
		return nil, err
	}
	defer e.teardown()
	rep := &Report{Name: name, Form: form, Outcome: outcome, Started: time.Now(), Seed: opt.Workload.Seed, Schedule: text,
		Checker: e.checker, PathDevs: map[string]string{}}
	for _, n := range e.order {
		rep.PathDevs[n] = e.paths[n].dev
	}
	var live []string
	for _, p := range s.Paths {
		if !p.Spare {
			live = append(live, p.Name)
		}
	}
	rep.Table = e.mapTable(live)
	if opt.Keep {
		rep.Dir = e.dir
	}
	rec, wdesc, err := e.play(ctx)
	if err != nil {
		return nil, err
	}
	rep.Workload = wdesc
	rep.Record = rec
	rep.Analysis = Analyze(rec, checks)
	if !rep.Pass() {
		rep.Logs = e.logs(4000)
	}
	return rep, nil
}

// timed is a sample or an event on the wall clock, before the workload's
// clock is known.
type timedSample struct {
	at time.Time
	s  Sample
}

type timedEvent struct {
	ev         Event
	start, end time.Time
	detail     string
	err        error
}

// play runs the workload, the path-state poller and the schedule, and
// returns what they saw.
func (e *env) play(ctx context.Context) (*Record, string, error) {
	// The poller; awaits add what they see.
	pollCtx, stopPoll := context.WithCancel(context.Background())
	var mu sync.Mutex
	var samples []timedSample
	e.observe = func(at time.Time, ms *multipath.MapStatus) {
		s := e.sample(ms)
		mu.Lock()
		samples = append(samples, timedSample{at: at, s: s})
		mu.Unlock()
	}
	defer func() { e.observe = nil }()
	var pollWG sync.WaitGroup
	pollWG.Add(1)
	go func() {
		defer pollWG.Done()
		t := time.NewTicker(e.opt.Poll)
		defer t.Stop()
		for {
			ms, err := e.mapStatus(pollCtx)
			if err != nil {
				ms = nil
			}
			e.observe(time.Now(), ms)
			select {
			case <-pollCtx.Done():
				return
			case <-t.C:
			}
		}
	}()
	defer func() { stopPoll(); pollWG.Wait() }()

	// The workload.
	w := e.opt.Workload
	if w.Size == 0 || w.Size > e.opt.Size {
		w.Size = e.opt.Size
	}
	var wl runner
	var err error
	if e.opt.Fio {
		wl, err = startFio(ctx, e.uri(), e.dir, w)
	} else {
		wl, err = startPerf(e.uri(), w)
	}
	if err != nil {
		return nil, "", err
	}
	t0 := time.Now()
	e.logf("drill: workload running: %s", wl.describe())

	// The schedule.
	var played []timedEvent
	var windows []Window
	var openWin *timedEvent
	var openErrnos []string
	prevEnd := t0
	for _, ev := range e.sched.Events {
		at := t0.Add(ev.At)
		if ev.Rel {
			at = prevEnd.Add(ev.At)
		}
		if err := sleepCtx(ctx, time.Until(at)); err != nil {
			wl.stop()
			wl.abandon()
			wl.wait()
			return nil, "", err
		}
		te := timedEvent{ev: ev, start: time.Now()}
		switch ev.Action {
		case "await":
			c, _ := parseAwait(e.sched, ev.Args)
			te.detail, te.err = e.await(ctx, c)
		case "expect-errors":
			on, errnos, _ := parseExpect(ev.Args)
			if on && openWin == nil {
				openWin, openErrnos = &te, errnos
			} else if !on && openWin != nil {
				windows = append(windows, Window{From: openWin.start.Sub(t0).Seconds(), To: te.start.Sub(t0).Seconds(), Errnos: openErrnos})
				openWin = nil
			}
		default:
			ctx2, cancel := context.WithTimeout(ctx, 2*time.Minute)
			te.detail, te.err = e.do(ctx2, ev)
			cancel()
		}
		te.end = time.Now()
		if te.err != nil {
			e.logf("drill: %6.2fs %s: %v", te.start.Sub(t0).Seconds(), ev, te.err)
		} else {
			e.logf("drill: %6.2fs %s %s", te.start.Sub(t0).Seconds(), ev, te.detail)
		}
		played = append(played, te)
		prevEnd = te.end
	}
	end := prevEnd.Add(e.sched.Tail)
	if d := t0.Add(e.sched.Duration); d.After(end) {
		end = d
	}
	if err := sleepCtx(ctx, time.Until(end)); err != nil {
		wl.stop()
		wl.abandon()
		wl.wait()
		return nil, "", err
	}
	stopAt := time.Now()
	wl.stop()
	hung := e.drain(wl)
	res, err := wl.wait()
	if err != nil {
		return nil, "", err
	}
	stopPoll()
	pollWG.Wait()

	// Everything on the workload's clock.
	base := res.Started
	if base.IsZero() {
		base = t0
	}
	rel := func(t time.Time) float64 { return t.Sub(base).Seconds() }
	off := t0.Sub(base).Seconds()
	for i := range windows {
		windows[i].From += off
		windows[i].To += off
	}
	if openWin != nil {
		windows = append(windows, Window{From: rel(openWin.start), To: rel(stopAt) + 3600, Errnos: openErrnos})
	}
	r := &Record{Interval: interval.Seconds(), Timeline: res.Timeline, Ops: res.Ops, Reads: res.Reads, Writes: res.Writes,
		Errors: res.Errors, IOErrors: res.IOErrors, MaxLatency: res.Lat.Max / 1e6, VerifiedBytes: res.VerifiedBytes,
		ReadBackBytes: res.ReadBackBytes, VerifyFailures: res.VerifyFailures, End: rel(stopAt), Hung: hung,
		Paths: e.order, Windows: windows}
	for _, te := range played {
		er := EventRecord{Line: te.ev.Line, Action: te.ev.String(), Start: rel(te.start), End: rel(te.end), Detail: te.detail}
		if te.err != nil {
			er.Err = te.err.Error()
		}
		r.Events = append(r.Events, er)
	}
	mu.Lock()
	sort.SliceStable(samples, func(i, j int) bool { return samples[i].at.Before(samples[j].at) })
	for _, ts := range samples {
		s := ts.s
		s.T = rel(ts.at)
		r.Samples = append(r.Samples, s)
	}
	mu.Unlock()
	return r, wl.describe(), nil
}

// drainWait bounds how long the drill waits for outstanding I/O once the
// workload was told to stop.
const drainWait = 20 * time.Second

// drain waits for the workload to finish after stop. I/O still held
// after drainWait is released (resume, fail_if_no_path); after as long
// again the workload gives up on it. It returns what it had to do ("" if
// nothing).
func (e *env) drain(wl runner) string {
	done := wl.finished()
	select {
	case <-done:
		return ""
	case <-time.After(drainWait):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var st string
	if ms, err := e.mapStatus(ctx); err == nil {
		st = fmt.Sprintf(" (queued %d, suspended %v, paths: %s)", ms.Queued, ms.Suspended, describeMap(ms))
		if ms.Suspended {
			e.ctl.Resume(ctx, e.mapName, false)
		}
	}
	e.ctl.Message(ctx, e.mapName, 0, []string{"fail_if_no_path"})
	msg := fmt.Sprintf("I/O still outstanding %s after the workload stopped%s; released with fail_if_no_path", drainWait, st)
	select {
	case <-done:
		return msg
	case <-time.After(drainWait):
	}
	wl.abandon()
	<-done
	return msg + "; then abandoned"
}
