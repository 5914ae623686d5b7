package stress

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Config is one torture run.
type Config struct {
	// Bin is the udm binary to run.
	Bin string
	// Dir is where the scratch directory goes ("": /dev/shm, else the
	// temp dir).
	Dir string
	// Seed fixes the workers' choices, the kill points and the loop
	// counts.
	Seed uint64
	// Ops is the number of worker operations in the run.
	Ops int
	// Workers run in parallel, each with Slots devices of its own.
	Workers, Slots int
	// KillEvery is the mean number of operations between two kills.
	KillEvery int
	// Clients is the number of NBD clients an attached slot runs.
	Clients int
	// CallBound bounds every control call (longer is a hang); IOBound
	// every NBD request.
	CallBound, IOBound time.Duration
	// FDSlack and GoroutineSlack are what the leak check allows above
	// the baseline.
	FDSlack, GoroutineSlack int
	// MaxViolations stops the run once that many are found.
	MaxViolations int
	// Logf, if set, gets progress lines.
	Logf func(format string, args ...any)
}

func (c *Config) defaults() {
	orDefault(&c.Ops, 3000)
	orDefault(&c.MaxViolations, 20)
	orDefault(&c.Workers, 3)
	orDefault(&c.Slots, 3)
	orDefault(&c.KillEvery, 120)
	orDefault(&c.Clients, 2)
	orDefault(&c.CallBound, 30*time.Second)
	orDefault(&c.IOBound, 60*time.Second)
	orDefault(&c.FDSlack, 4)
	orDefault(&c.GoroutineSlack, 8)
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
}

// orDefault sets *v to def unless it is positive.
func orDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Report is what a run did and found.
type Report struct {
	Seed     uint64
	Ops      int64
	Restarts int // kills followed by a start, and clean restarts
	Kills    int
	// Writes and Reads are NBD requests acknowledged; Verified the
	// reads checked against the model, FileBlocks the blocks checked
	// in the backing files after kills.
	Writes, Reads, Verified, FileBlocks int64
	// IOInDoubt are NBD requests a kill or a closing client cut off;
	// IOErrors the errors that were expected (no path, forced remove).
	IOInDoubt, IOErrors int64
	// OpsInDoubt are control operations whose reply a kill cut off.
	OpsInDoubt int64
	// Rejected counts the control calls the daemon refused, by
	// operation and errno.
	Rejected map[string]int
	// Notes counts things worth knowing that are not violations.
	Notes      map[string]int
	LeakChecks int
	Shutdowns  []time.Duration // SIGTERM to exit, under the workers and at the end
	Violations []Violation
	History    []string // the last operations
	LogTail    string   // the end of the daemon's log, on violations
	Elapsed    time.Duration
}

// Violation is a broken invariant.
type Violation struct {
	Kind string // hang, state, restore, data, io, leak, shutdown, daemon
	Msg  string
}

func (v Violation) String() string { return v.Kind + ": " + v.Msg }

// Summary is the report's figures in a few lines.
func (rep *Report) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d: %d operations (%d in doubt), %d restarts (%d after kill -9, the others after SIGTERM), %v\n",
		rep.Seed, rep.Ops, rep.OpsInDoubt, rep.Restarts, rep.Kills, rep.Elapsed.Round(time.Millisecond))
	fmt.Fprintf(&b, "NBD: %d writes and %d reads acknowledged, %d reads verified, %d file blocks verified after kills, %d requests in doubt, %d expected errors\n",
		rep.Writes, rep.Reads, rep.Verified, rep.FileBlocks, rep.IOInDoubt, rep.IOErrors)
	var longest time.Duration
	for _, d := range rep.Shutdowns {
		longest = max(longest, d)
	}
	fmt.Fprintf(&b, "leak checks: %d; %d shutdowns (SIGTERM), the longest %v\n", rep.LeakChecks, len(rep.Shutdowns), longest)
	fmt.Fprintf(&b, "refused calls: %s\n", countsLine(rep.Rejected))
	if len(rep.Notes) > 0 {
		fmt.Fprintf(&b, "notes: %s\n", countsLine(rep.Notes))
	}
	fmt.Fprintf(&b, "invariant violations: %d\n", len(rep.Violations))
	for _, v := range rep.Violations {
		fmt.Fprintf(&b, "  %s\n", clip(v.String(), 4000))
	}
	return b.String()
}

func countsLine(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var parts []string
	for _, k := range ks {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return strings.Join(parts, " ")
}

// run is one torture run in progress.
type run struct {
	cfg    Config
	ctx    context.Context
	cancel context.CancelFunc
	p      *proc
	c      *apiClient
	slots  []*slot

	// world: workers hold it shared for each operation; the controller
	// holds it exclusively to kill, restart and check.
	world sync.RWMutex
	epoch atomic.Int64 // daemon starts
	dying atomic.Bool  // a kill is under way: unanswered calls are in doubt
	hung  atomic.Bool
	ops   atomic.Int64

	stats struct {
		writes, reads, verified, fileBlocks, ioDoubt, ioErrors, opsDoubt atomic.Int64
	}

	mu         sync.Mutex // guards the following
	violations []Violation
	rejected   map[string]int
	notes      map[string]int

	histMu sync.Mutex // guards hist
	hist   []string

	rep Report
}

const historyLen = 2000

// Run runs the torture test and reports. err is for a run that could not
// be set up; broken invariants are in the report's Violations.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	t0 := time.Now()
	base := cfg.Dir
	if base == "" {
		base = "/dev/shm"
		if st, err := os.Stat(base); err != nil || !st.IsDir() {
			base = os.TempDir()
		}
	}
	scratch, err := os.MkdirTemp(base, "udm-stress-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(scratch)
	sockDir, err := os.MkdirTemp("", "udm-st")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(sockDir)

	r := &run{cfg: cfg, p: newProc(cfg.Bin, scratch, sockDir), rejected: map[string]int{}, notes: map[string]int{}}
	r.ctx, r.cancel = context.WithCancel(ctx)
	defer r.cancel()
	r.rep.Seed = cfg.Seed
	for i := 0; i < cfg.Workers*cfg.Slots; i++ {
		s, err := newSlot(i, scratch)
		if err != nil {
			return nil, err
		}
		r.slots = append(r.slots, s)
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0))
	if err := r.p.start(r.ctx, 1+rng.IntN(2), cfg.CallBound, r.note); err != nil {
		return nil, err
	}
	r.epoch.Add(1)
	defer r.p.kill9()
	r.c = newClient(r.p.sock)
	r.watchCrash()

	var wg sync.WaitGroup
	for w := 0; w < cfg.Workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.worker(w, r.slots[w*cfg.Slots:(w+1)*cfg.Slots])
		}()
	}
	workersDone := make(chan struct{})
	go func() { wg.Wait(); close(workersDone) }()
	r.control(rng, workersDone)
	<-workersDone
	r.finish(rng)

	r.rep.Elapsed = time.Since(t0)
	r.rep.Ops = r.ops.Load()
	r.rep.Writes, r.rep.Reads, r.rep.Verified = r.stats.writes.Load(), r.stats.reads.Load(), r.stats.verified.Load()
	r.rep.FileBlocks, r.rep.IOInDoubt, r.rep.IOErrors = r.stats.fileBlocks.Load(), r.stats.ioDoubt.Load(), r.stats.ioErrors.Load()
	r.rep.OpsInDoubt = r.stats.opsDoubt.Load()
	r.mu.Lock()
	r.rep.Violations = append([]Violation(nil), r.violations...)
	r.rep.Rejected, r.rep.Notes = r.rejected, r.notes
	r.mu.Unlock()
	r.histMu.Lock()
	r.rep.History = append([]string(nil), r.hist...)
	r.histMu.Unlock()
	if log := r.p.logTail(1 << 30); strings.Contains(log, "WARNING: DATA RACE") {
		i := strings.Index(log, "WARNING: DATA RACE")
		r.rep.Violations = append(r.rep.Violations, Violation{Kind: "daemon", Msg: "the daemon (a race build) reported a data race:\n" + clip(log[i:], 20000)})
	}
	if len(r.rep.Violations) > 0 {
		r.rep.LogTail = r.p.logTail(20000)
	}
	return &r.rep, nil
}

// watchCrash turns a daemon exit nobody asked for into a violation.
func (r *run) watchCrash() {
	p, c, epoch := r.p, r.p.c, r.epoch.Load()
	go func() {
		select {
		case <-c.Done():
		case <-r.ctx.Done():
			return
		}
		if !r.dying.Load() && r.epoch.Load() == epoch && r.ctx.Err() == nil {
			r.violation("daemon", fmt.Sprintf("the daemon exited by itself (%v): %s", c.Err(), p.logTail(8000)))
			r.cancel()
		}
	}()
}

func (r *run) note(what string) {
	r.mu.Lock()
	r.notes[what]++
	r.mu.Unlock()
}

func (r *run) violation(kind, msg string) {
	r.mu.Lock()
	r.violations = append(r.violations, Violation{Kind: kind, Msg: msg})
	n := len(r.violations)
	r.mu.Unlock()
	r.record(fmt.Sprintf("VIOLATION %s: %s", kind, clip(msg, 300)))
	r.cfg.Logf("violation %s: %s", kind, clip(msg, 2000))
	if n >= r.cfg.MaxViolations {
		r.cancel() // enough to go on with
	}
}

// hang records a call that did not answer, dumps the daemon's
// goroutines (SIGQUIT) and stops the run.
func (r *run) hang(msg string) {
	if r.hung.Swap(true) {
		return
	}
	r.dying.Store(true)
	dump := r.p.quit()
	r.violation("hang", msg+"\ndaemon goroutines (SIGQUIT):\n"+clip(dump, 120000))
	r.cancel()
}

func (r *run) record(line string) {
	r.histMu.Lock()
	defer r.histMu.Unlock()
	r.hist = append(r.hist, fmt.Sprintf("%s e%d %s", time.Now().UTC().Format("15:04:05.000"), r.epoch.Load(), line))
	if len(r.hist) > historyLen {
		r.hist = r.hist[len(r.hist)-historyLen:]
	}
}

// call runs one control call under CallBound; a call that runs out of
// time with the daemon up is a hang.
func (r *run) call(ctx context.Context, what string, f func(context.Context) error) error {
	ep := r.epoch.Load()
	cctx, cancel := context.WithTimeout(ctx, r.cfg.CallBound)
	defer cancel()
	t0 := time.Now()
	err := f(cctx)
	if err != nil && errors.Is(cctx.Err(), context.DeadlineExceeded) && ctx.Err() == nil && !r.dying.Load() && r.epoch.Load() == ep {
		r.hang(fmt.Sprintf("%s did not answer in %v", what, time.Since(t0).Round(time.Millisecond)))
	}
	return err
}

func errnoIs(err error, errnos ...syscall.Errno) bool {
	for _, e := range errnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// control kills and restarts the daemon at seeded points until the
// workers are done.
func (r *run) control(rng *rand.Rand, workersDone <-chan struct{}) {
	next := r.drawKill(rng)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-workersDone:
			return
		case <-r.ctx.Done():
			return
		case <-tick.C:
		}
		if r.ops.Load() < next {
			continue
		}
		quiet := rng.IntN(3) == 0
		if !r.restart(rng, quiet) {
			return
		}
		next = r.ops.Load() + r.drawKill(rng)
	}
}

func (r *run) drawKill(rng *rand.Rand) int64 {
	k := r.cfg.KillEvery
	return int64(k/2 + rng.IntN(k+1))
}

// restart kills the daemon (quiet: after stopping the workers and
// checking for leaks; else under them), starts it again and checks
// every slot. It returns false if the run can't go on.
func (r *run) restart(rng *rand.Rand, quiet bool) bool {
	var before counts
	if quiet {
		r.world.Lock()
		var ok bool
		if before, ok = r.leakCheck(); !ok {
			r.world.Unlock()
			return false
		}
		r.record("controller: kill -9 (workers stopped)")
		r.dying.Store(true)
		r.p.kill9()
	} else {
		if r.hung.Load() {
			return false
		}
		r.dying.Store(true)
		if rng.IntN(8) == 0 {
			// A clean shutdown under the workers: bounded, and what it
			// saved comes back.
			r.record("controller: SIGTERM (under the workers)")
			took, err := r.p.term(r.cfg.CallBound)
			r.rep.Shutdowns = append(r.rep.Shutdowns, took.Round(time.Millisecond))
			r.record(fmt.Sprintf("controller: exited after %v (%v)", took.Round(time.Millisecond), err))
			if err != nil {
				r.violation("shutdown", "SIGTERM under the workers: "+err.Error())
				r.p.kill9()
			}
		} else {
			r.record("controller: kill -9 (under the workers)")
			r.p.kill9()
			r.rep.Kills++
		}
		r.world.Lock()
	}
	defer r.world.Unlock()
	if quiet {
		r.rep.Kills++
	}
	for _, s := range r.slots {
		if s.ioSet != nil {
			s.ioSet.close()
			s.ioSet = nil
		}
	}
	r.checkFiles()
	if r.ctx.Err() != nil {
		return false
	}
	if !r.startAgain(rng) {
		return false
	}
	r.checkAll(true)
	if quiet {
		r.compareRestarted(before)
	}
	return r.ctx.Err() == nil
}

func (r *run) startAgain(rng *rand.Rand) bool {
	loops := 1 + rng.IntN(2)
	r.epoch.Add(1)
	if err := r.p.start(r.ctx, loops, r.cfg.CallBound, r.note); err != nil {
		if r.ctx.Err() == nil {
			r.violation("daemon", "restart: "+err.Error())
		}
		r.cancel()
		return false
	}
	r.dying.Store(false)
	r.rep.Restarts++
	r.record(fmt.Sprintf("controller: started, %d loops, pid %d", loops, r.p.pid()))
	r.watchCrash()
	return true
}

// checkFiles verifies every slot's backing file (the daemon is down or
// has no clients).
func (r *run) checkFiles() {
	for _, s := range r.slots {
		n, bad := s.book.checkFile(s.files[0])
		r.stats.fileBlocks.Add(int64(n))
		for i, msg := range bad {
			if i == 5 {
				r.violation("data", fmt.Sprintf("%s: backing file: %d more bad blocks", s.name, len(bad)-i))
				break
			}
			r.violation("data", fmt.Sprintf("%s: backing file: %s", s.name, msg))
		}
	}
}

// checkAll compares every slot with the model (after a restart: a
// device marked for deferred removal is gone, and an operation in doubt
// may have happened or not). The state found becomes the model.
func (r *run) checkAll(restarted bool) {
	names := map[string]bool{}
	for _, s := range r.slots {
		names[s.name] = true
		want := s.dev
		if restarted && want.deferred {
			want = devState{marks: map[string]bool{}}
		}
		var alt *devState
		if s.doubt != nil {
			a := *s.doubt
			if restarted && a.deferred {
				a = devState{marks: map[string]bool{}}
			}
			alt = &a
		}
		got, err := r.observe(r.ctx, s)
		if err != nil {
			if r.ctx.Err() == nil {
				r.violation("state", fmt.Sprintf("%s: reading its state: %v", s.name, err))
			}
			return
		}
		what := "live"
		if restarted {
			what = "after restart"
		}
		switch d := s.diff(want, got, !restarted); {
		case d == "":
			s.dev = want
		case alt != nil && s.diff(*alt, got, !restarted) == "":
			s.dev = *alt
			r.record(fmt.Sprintf("%s: the operation in doubt (%s) happened", s.name, s.doubtOp))
		default:
			kind := "state"
			if restarted {
				kind = "restore"
			}
			switch {
			case !want.exists && got.exists && s.dev.deferred:
				d = "a device marked for deferred removal (its clients gone with the kill) came back: " + s.describe(got)
			case !want.exists && got.exists && (alt == nil || !alt.exists):
				d = "a removed device came back: " + s.describe(got)
			}
			msg := fmt.Sprintf("%s %s: %s (model: %s", s.name, what, d, s.describe(want))
			if alt != nil {
				msg += fmt.Sprintf("; or, had %q happened: %s", s.doubtOp, s.describe(*alt))
			}
			r.violation(kind, msg+")")
			got.marks = mergeMarks(want.marks, got, s)
			s.dev = got
		}
		s.doubt, s.doubtOp = nil, ""
		s.heldOps = 0
	}
	var devs []string
	if err := r.call(r.ctx, "ls", func(ctx context.Context) error {
		l, err := r.c.List(ctx)
		for _, d := range l {
			devs = append(devs, d.Name)
		}
		return err
	}); err != nil {
		if r.ctx.Err() == nil {
			r.violation("state", "ls: "+err.Error())
		}
		return
	}
	for _, n := range devs {
		if !names[n] {
			r.violation("restore", fmt.Sprintf("a device no slot made is listed: %q", n))
		}
	}
}

// mergeMarks adopts the observed marks on the live table's paths and
// keeps the model's on the others.
func mergeMarks(model map[string]bool, got devState, s *slot) map[string]bool {
	out := map[string]bool{}
	live := map[string]bool{}
	for _, p := range s.livePaths(got) {
		live[p] = true
	}
	for p, on := range model {
		if on && !live[p] {
			out[p] = true
		}
	}
	for p := range got.marks {
		out[p] = true
	}
	return out
}

// leakCheck runs with the workers stopped: it detaches every slot, takes
// the daemon's counts (the baseline), attaches probe clients to every
// slot that can serve, detaches them, and waits for the counts to come
// back to the baseline.
func (r *run) leakCheck() (counts, bool) {
	r.rep.LeakChecks++
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(1000+r.rep.LeakChecks)))
	for _, s := range r.slots {
		if s.ioSet == nil {
			continue
		}
		for i := 0; i < 4 && s.dev.exists && (s.dev.suspended || r.noPath(s, s.dev)); i++ {
			r.opDetach(-1, s, rng) // resumes or reinstates: held requests keep the device open
		}
		if s.ioSet != nil {
			r.opDetach(-1, s, rng)
		}
	}
	if r.ctx.Err() != nil {
		return counts{}, false
	}
	base, err := r.p.counts(r.ctx)
	if err != nil {
		r.violation("leak", "reading the daemon's counts: "+err.Error())
		return counts{}, false
	}
	probed := 0
	for _, s := range r.slots {
		st := s.dev
		t := s.tableByText(st.live)
		if !st.exists || st.suspended || st.deferred || t == nil || !t.identity || r.noPath(s, st) {
			continue
		}
		set, err := r.attach(r.ctx, s, r.cfg.Clients, rng)
		if err != nil {
			r.violation("io", fmt.Sprintf("%s: probe clients: %v", s.name, err))
			continue
		}
		probed++
		// Let each client do some I/O: the counters move.
		target := r.stats.reads.Load() + r.stats.writes.Load() + 8
		r.waitFor(r.cfg.IOBound, func() bool { return r.stats.reads.Load()+r.stats.writes.Load() >= target || r.ctx.Err() != nil })
		set.close()
		r.afterDetach(s)
	}
	var now counts
	ok := r.waitFor(r.cfg.IOBound, func() bool {
		now, err = r.p.counts(r.ctx)
		return err == nil && now.FDs <= base.FDs+r.cfg.FDSlack && now.Goroutines <= base.Goroutines+r.cfg.GoroutineSlack
	})
	r.record(fmt.Sprintf("controller: leak check: %d slots probed; before %v; after %v", probed, base, now))
	if !ok && r.ctx.Err() == nil {
		dump := r.p.quit()
		r.violation("leak", fmt.Sprintf("after %d slots' clients left the daemon holds %v, before they came %v; goroutines:\n%s",
			probed, now, base, clip(dump, 60000)))
		return base, false
	}
	return base, r.ctx.Err() == nil
}

// compareRestarted checks that the daemon before the kill held no more
// than the one restarted on the same state.
func (r *run) compareRestarted(before counts) {
	var now counts
	var err error
	ok := r.waitFor(5*time.Second, func() bool {
		now, err = r.p.counts(r.ctx)
		return err == nil && before.FDs <= now.FDs+r.cfg.FDSlack && before.Goroutines <= now.Goroutines+r.cfg.GoroutineSlack
	})
	r.record(fmt.Sprintf("controller: counts before the kill %v, after the restart %v", before, now))
	if !ok && r.ctx.Err() == nil {
		r.violation("leak", fmt.Sprintf("the daemon held %v before the kill, a restart on the same state %v (err %v)", before, now, err))
	}
}

// waitFor polls cond until it holds or bound passes.
func (r *run) waitFor(bound time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) || r.ctx.Err() != nil {
			return cond()
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// finish ends a run: a last leak check and comparison, then SIGTERM
// (bounded), a clean restart that must find every device as the model
// has it, and SIGTERM again.
func (r *run) finish(rng *rand.Rand) {
	r.world.Lock()
	defer r.world.Unlock()
	if r.ctx.Err() != nil {
		return
	}
	if _, ok := r.leakCheck(); !ok {
		return
	}
	r.checkAll(false)
	for i := 0; i < 2 && r.ctx.Err() == nil; i++ {
		r.dying.Store(true)
		took, err := r.p.term(r.cfg.CallBound)
		r.rep.Shutdowns = append(r.rep.Shutdowns, took.Round(time.Millisecond))
		r.record(fmt.Sprintf("controller: SIGTERM: exited after %v (%v)", took.Round(time.Millisecond), err))
		if err != nil {
			r.violation("shutdown", err.Error())
			return
		}
		r.checkFiles()
		if i == 1 || !r.startAgain(rng) {
			return
		}
		r.checkAll(true)
	}
}
