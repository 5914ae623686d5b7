package stress

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// A worker's operations. Each picks its arguments from the worker's
// generator, computes the state the model expects if the daemon says
// yes, makes the call and books the outcome: acknowledged (the model
// moves), refused (the model stays; an operation that must succeed is a
// violation), or unanswered because of a kill (in doubt until the
// restart shows which).

// heldLimit is how many operations of its worker a slot may stay
// suspended, or with every path of its map failed, before the worker
// resumes or reinstates it (held NBD requests wait meanwhile).
const heldLimit = 6

func (r *run) worker(w int, slots []*slot) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(w)+1))
	for r.ctx.Err() == nil && r.ops.Load() < int64(r.cfg.Ops) {
		for r.dying.Load() && r.ctx.Err() == nil {
			time.Sleep(time.Millisecond) // a kill is under way: the controller restarts the daemon
		}
		r.world.RLock()
		if r.ctx.Err() == nil {
			s := slots[rng.IntN(len(slots))]
			r.step(w, s, rng)
		}
		r.world.RUnlock()
		r.ops.Add(1)
	}
	// Leave nothing held: the final checks read every device.
	r.world.RLock()
	defer r.world.RUnlock()
	for _, s := range slots {
		if r.ctx.Err() != nil {
			return
		}
		if s.dev.exists && s.dev.suspended {
			r.opResume(w, s, rng, false)
		}
		for _, p := range s.livePaths(s.dev) {
			if s.dev.marks[p] && r.ctx.Err() == nil {
				r.opPath(w, s, p, false)
			}
		}
	}
}

// outcome of one call.
type outcome int

const (
	acked outcome = iota
	refused
	inDoubt
	broken // no answer with the daemon up (recorded)
)

// settle records a call's outcome in the history and the model.
func (r *run) settle(w int, s *slot, op string, err error, after devState, must bool) outcome {
	o, errno := r.classify(err)
	res := "ok"
	switch o {
	case acked:
		s.dev = after
	case refused:
		res = fmt.Sprintf("refused %s: %s", errno, clip(err.Error(), 160))
		r.mu.Lock()
		r.rejected[strings.Fields(op)[0]+":"+errno]++
		r.mu.Unlock()
		// A shutdown under way (SIGTERM) interrupts what waits: that is
		// no violation; the restart shows the device as it was.
		if must && !r.dying.Load() {
			r.violation("state", fmt.Sprintf("%s: %s was refused (%s: %v); model: %s", s.name, op, errno, err, s.describe(s.dev)))
		}
	case inDoubt:
		// Only the first: a call made after one that the kill cut off
		// found the daemon dead.
		res = "no reply (kill): in doubt"
		if s.doubt == nil {
			a := after.clone()
			s.doubt, s.doubtOp = &a, op
			r.stats.opsDoubt.Add(1)
		} else {
			res = "no reply (kill): not done (the daemon was dead)"
		}
	case broken:
		res = "no reply with the daemon up: " + err.Error()
		r.violation("state", fmt.Sprintf("%s: %s got no reply with the daemon up: %v", s.name, op, err))
	}
	r.record(fmt.Sprintf("w%d %s %s -> %s", w, s.name, op, res))
	return o
}

func (r *run) classify(err error) (outcome, string) {
	if err == nil {
		return acked, ""
	}
	if errno, ok := apiErrno(err); ok {
		return refused, errno
	}
	if r.dying.Load() || r.hung.Load() || r.ctx.Err() != nil || r.p.exited() {
		return inDoubt, ""
	}
	return broken, ""
}

// noPath reports whether st's live table is a multipath map whose every
// path an operator failed.
func (r *run) noPath(s *slot, st devState) bool {
	ps := s.livePaths(st)
	if len(ps) == 0 {
		return false
	}
	for _, p := range ps {
		if !st.marks[p] {
			return false
		}
	}
	return true
}

func isMultipath(text string) bool { return strings.Contains(text, " multipath ") }

// step does one operation on s.
func (r *run) step(w int, s *slot, rng *rand.Rand) {
	st := s.dev
	if !st.exists {
		r.opCreate(w, s, rng)
		return
	}
	if st.suspended || r.noPath(s, st) {
		s.heldOps++
	} else {
		s.heldOps = 0
	}
	if s.heldOps > heldLimit {
		if st.suspended {
			r.opResume(w, s, rng, rng.IntN(2) == 0)
		} else {
			ps := s.livePaths(st)
			r.opPath(w, s, ps[rng.IntN(len(ps))], false)
		}
		return
	}
	if st.deferred && s.ioSet != nil && rng.IntN(3) == 0 {
		r.opDetach(w, s, rng)
		return
	}
	mp := isMultipath(st.live)
	type choice struct {
		weight int
		do     func()
	}
	choices := []choice{
		{10, func() { r.opLoad(w, s, rng) }},
		{4, func() { r.opClear(w, s) }},
		{6, func() { r.opSuspend(w, s, false) }},
		{6, func() { r.opSuspend(w, s, true) }},
		{8, func() { r.opResume(w, s, rng, false) }},
		{6, func() { r.opResume(w, s, rng, true) }},
		{3, func() { r.opRemove(w, s, false, false) }},
		{1, func() { r.opRemove(w, s, true, false) }},
		{3, func() { r.opRemove(w, s, false, true) }},
		{4, func() { r.opChecker(w, s, rng) }},
		{5, func() { r.opVerify(w, s) }},
		{3, func() { r.opMessage(w, s, rng) }},
	}
	if mp {
		ps := s.livePaths(st)
		choices = append(choices,
			choice{8, func() { r.opPath(w, s, ps[rng.IntN(len(ps))], true) }},
			choice{8, func() { r.opPath(w, s, ps[rng.IntN(len(ps))], false) }})
	}
	if s.ioSet == nil {
		choices = append(choices, choice{10, func() { r.opAttach(w, s, rng) }})
	} else {
		choices = append(choices, choice{4, func() { r.opDetach(w, s, rng) }})
	}
	total := 0
	for _, c := range choices {
		total += c.weight
	}
	n := rng.IntN(total)
	for _, c := range choices {
		if n < c.weight {
			c.do()
			return
		}
		n -= c.weight
	}
}

// pickTable draws a table: one that maps the slot's data while clients
// are attached (or may be, after the inactive table goes live), any
// otherwise.
func (s *slot) pickTable(rng *rand.Rand, identityOnly bool) table {
	for {
		t := s.tables[rng.IntN(len(s.tables))]
		if t.identity || (!identityOnly && rng.IntN(2) == 0) {
			return t
		}
	}
}

func (r *run) opCreate(w int, s *slot, rng *rand.Rand) {
	t := s.pickTable(rng, false)
	after := devState{exists: true, live: t.text, marks: map[string]bool{}}
	err := r.call(r.ctx, "create "+s.name, func(ctx context.Context) error {
		_, err := r.c.Create(ctx, createReq(s.name, t.text))
		return err
	})
	r.settle(w, s, "create "+t.key, err, after, true)
}

// opLoad loads a table. A live multipath table (an immutable target
// type) may only be replaced by another or by error (a wildcard): now
// and then the worker tries another type, which must be refused.
func (r *run) opLoad(w int, s *slot, rng *rand.Rand) {
	t := s.pickTable(rng, s.ioSet != nil)
	immutable := isMultipath(s.dev.live)
	for immutable && !isMultipath(t.text) && rng.IntN(8) != 0 {
		t = s.pickTable(rng, s.ioSet != nil)
	}
	// error is a wildcard target: it may replace any table.
	refuse := immutable && !isMultipath(t.text) && t.key != "err"
	after := s.dev.clone()
	after.inactive = t.text
	err := r.call(r.ctx, "load "+s.name, func(ctx context.Context) error { return r.c.Load(ctx, s.name, t.text) })
	if refuse {
		after = s.dev
	}
	if o := r.settle(w, s, "load "+t.key, err, after, !refuse); o == acked && refuse {
		r.violation("state", fmt.Sprintf("%s: a %s table replaced the live multipath one (immutable target type)", s.name, t.key))
	}
}

func (r *run) opClear(w int, s *slot) {
	after := s.dev.clone()
	after.inactive = ""
	err := r.call(r.ctx, "clear "+s.name, func(ctx context.Context) error { return r.c.Clear(ctx, s.name) })
	r.settle(w, s, "clear", err, after, true)
}

func (r *run) opSuspend(w int, s *slot, noflush bool) {
	after := s.dev.clone()
	after.suspended = true
	op := "suspend"
	if noflush {
		op += " --noflush"
	}
	if !noflush && s.ioSet != nil && isMultipath(s.dev.live) {
		// A flush suspend fails what a map without a path holds.
		s.ioSet.tolerant.Store(true)
	}
	err := r.call(r.ctx, op+" "+s.name, func(ctx context.Context) error {
		_, err := r.c.Suspend(ctx, s.name, noflush)
		return err
	})
	r.settle(w, s, op, err, after, true)
}

func (r *run) opResume(w int, s *slot, rng *rand.Rand, noflush bool) {
	after := s.dev.clone()
	after.suspended = false
	if after.inactive != "" {
		after.live, after.inactive = after.inactive, ""
	}
	op := "resume"
	if noflush {
		op += " --noflush"
	}
	err := r.call(r.ctx, op+" "+s.name, func(ctx context.Context) error {
		_, err := r.c.Resume(ctx, s.name, noflush)
		return err
	})
	if r.settle(w, s, op, err, after, true) == acked {
		r.markTolerant(s)
	}
}

// markTolerant lets the slot's clients see errors from now on if its
// map has no path left.
func (r *run) markTolerant(s *slot) {
	if s.ioSet != nil && r.noPath(s, s.dev) {
		s.ioSet.tolerant.Store(true)
	}
}

func (r *run) opRemove(w int, s *slot, force, deferred bool) {
	op := "remove"
	switch {
	case force:
		op += " -f"
	case deferred:
		op += " --deferred"
	}
	open := s.ioSet != nil
	after := devState{marks: map[string]bool{}}
	if deferred && open {
		after = s.dev.clone()
		after.deferred = true
	}
	if force && open {
		s.ioSet.tolerant.Store(true)
	}
	err := r.call(r.ctx, op+" "+s.name, func(ctx context.Context) error { return r.c.Remove(ctx, s.name, force, deferred) })
	o := r.settle(w, s, op, err, after, !open || force || deferred)
	if o == refused && open && !force && !deferred && !errnoIs(err, syscall.EBUSY) {
		r.violation("state", fmt.Sprintf("%s: remove while open was refused with %v, want EBUSY", s.name, err))
	}
	if o == acked && open && !force && !deferred {
		r.violation("state", fmt.Sprintf("%s: remove of a device with NBD clients attached succeeded", s.name))
	}
	if force && open && (o == acked || o == inDoubt) {
		s.ioSet.close()
		s.ioSet = nil
	}
}

// opPath fails or reinstates a path of the live map, as an operator
// does (udm fail path / reinstate path).
func (r *run) opPath(w int, s *slot, p string, fail bool) {
	after := s.dev.clone()
	after.marks[p] = fail
	if !fail {
		delete(after.marks, p)
	}
	op := "reinstate path " + filepath.Base(p)
	if fail {
		op = "fail path " + filepath.Base(p)
		// Failing the last path: the map queues, or fails I/O (no
		// queue_if_no_path, or no_path_retry runs out).
		if s.ioSet != nil && r.noPath(s, after) {
			s.ioSet.tolerant.Store(true)
		}
	}
	err := r.call(r.ctx, op+" "+s.name, func(ctx context.Context) error {
		if fail {
			return r.c.FailPath(ctx, s.name, p)
		}
		return r.c.ReinstatePath(ctx, s.name, p)
	})
	if r.settle(w, s, op, err, after, false) == acked {
		r.markTolerant(s)
	}
}

func (r *run) opMessage(w int, s *slot, rng *rand.Rand) {
	msgs := [][]string{{"queue_if_no_path"}, {"fail_if_no_path"}, {"switch_group", "1"}, {"switch_group", "2"},
		{"disable_group", "2"}, {"enable_group", "2"}, {"@cancel_deferred_remove"}}
	args := msgs[rng.IntN(len(msgs))]
	after := s.dev.clone()
	if args[0] == "@cancel_deferred_remove" {
		after.deferred = false
	}
	if args[0] == "fail_if_no_path" && s.ioSet != nil {
		s.ioSet.tolerant.Store(true)
	}
	op := "message 0 " + strings.Join(args, " ")
	err := r.call(r.ctx, op+" "+s.name, func(ctx context.Context) error {
		_, err := r.c.Message(ctx, s.name, 0, args)
		return err
	})
	r.settle(w, s, op, err, after, false)
}

// checker settings to draw from: valid ones, and some the daemon must
// refuse.
var (
	goodPolling = []string{"", "1s", "2s", "off"}
	badPolling  = []string{"1us", "-1s", "often"}
	goodNPR     = []string{"", "queue", "fail", "2"}
	goodFB      = []string{"", "manual", "immediate", "3"}
	goodIODl    = []string{"", "5s", "-1s"}
)

func (r *run) opChecker(w int, s *slot, rng *rand.Rand) {
	pick := func(v []string) string { return v[rng.IntN(len(v))] }
	cs := checkerSettings{PollingInterval: pick(goodPolling), NoPathRetry: pick(goodNPR), Failback: pick(goodFB),
		IODeadline: pick(goodIODl)}
	bad := rng.IntN(8) == 0
	if bad {
		cs.PollingInterval = pick(badPolling)
	}
	if cs.NoPathRetry == "fail" && s.ioSet != nil {
		s.ioSet.tolerant.Store(true)
	}
	after := s.dev.clone()
	after.checker = cs
	op := fmt.Sprintf("checker %+v", cs)
	err := r.call(r.ctx, "checker "+s.name, func(ctx context.Context) error { return r.c.SetChecker(ctx, s.name, cs) })
	if bad {
		after = s.dev
	}
	o := r.settle(w, s, op, err, after, !bad)
	if bad && o == acked {
		r.violation("state", fmt.Sprintf("%s: checker accepted polling_interval=%q", s.name, cs.PollingInterval))
	}
}

func (r *run) opVerify(w int, s *slot) {
	got, err := r.observe(r.ctx, s)
	if o, _ := r.classify(err); err != nil {
		if o != inDoubt {
			r.violation("state", fmt.Sprintf("%s: reading its state: %v", s.name, err))
		}
		return
	}
	d := s.diff(s.dev, got, true)
	r.record(fmt.Sprintf("w%d %s verify -> %s", w, s.name, map[bool]string{true: "as modelled", false: d}[d == ""]))
	if d != "" {
		r.violation("state", fmt.Sprintf("%s live: %s (model: %s)", s.name, d, s.describe(s.dev)))
		got.marks = mergeMarks(s.dev.marks, got, s)
		s.dev = got
	}
}

func (r *run) opAttach(w int, s *slot, rng *rand.Rand) {
	st := s.dev
	lt, it := s.tableByText(st.live), s.tableByText(st.inactive)
	if st.deferred || lt == nil || !lt.identity || (st.inactive != "" && (it == nil || !it.identity)) {
		r.opVerify(w, s)
		return
	}
	set, err := r.attach(r.ctx, s, r.cfg.Clients, rng)
	res := "ok"
	if err != nil {
		res = err.Error()
		if o, _ := r.classify(err); o == broken {
			r.violation("io", fmt.Sprintf("%s: attaching NBD clients with the daemon up: %v", s.name, err))
		}
	} else {
		s.ioSet = set
		r.markTolerant(s)
	}
	r.record(fmt.Sprintf("w%d %s attach %d clients -> %s", w, s.name, r.cfg.Clients, res))
}

// opDetach closes the slot's NBD clients and waits for the daemon to
// let go of the device. Requests held by a suspended device or a map
// without a path keep it open until they end (as a kernel block device
// stays open while its I/O is in flight), so the worker resumes or
// reinstates first.
func (r *run) opDetach(w int, s *slot, rng *rand.Rand) {
	if s.dev.suspended {
		r.opResume(w, s, rng, rng.IntN(2) == 0)
		return
	}
	if r.noPath(s, s.dev) {
		ps := s.livePaths(s.dev)
		r.opPath(w, s, ps[rng.IntN(len(ps))], false)
		return
	}
	s.ioSet.close()
	s.ioSet = nil
	r.record(fmt.Sprintf("w%d %s detach", w, s.name))
	r.afterDetach(s)
}

// afterDetach waits for the daemon to see the clients gone: the open
// count drops to 0, and a device marked for deferred removal goes.
func (r *run) afterDetach(s *slot) {
	var last string
	ok := r.waitFor(r.cfg.CallBound, func() bool {
		var info struct {
			open int
			err  error
		}
		info.err = r.call(r.ctx, "info "+s.name, func(ctx context.Context) error {
			i, err := r.c.Info(ctx, s.name)
			info.open = i.OpenCount
			return err
		})
		switch {
		case errnoIs(info.err, syscall.ENXIO, syscall.ENOENT, syscall.ENODEV):
			last = "gone"
			return true
		case info.err != nil:
			last = info.err.Error()
			o, _ := r.classify(info.err)
			return o != acked && o != refused // no answer: nothing more to learn
		}
		last = fmt.Sprintf("open count %d", info.open)
		return info.open == 0 && !s.dev.deferred
	})
	if r.dying.Load() || r.ctx.Err() != nil {
		return
	}
	if last == "gone" && s.dev.deferred {
		s.dev = devState{marks: map[string]bool{}}
		r.record(fmt.Sprintf("%s: removed at last close (deferred)", s.name))
		return
	}
	if !ok {
		what := "its open count to drop to 0"
		if s.dev.deferred {
			what = "its deferred removal at last close"
		}
		r.violation("state", fmt.Sprintf("%s: the NBD clients left, waited %v for %s: %s", s.name, r.cfg.CallBound, what, last))
	}
}
