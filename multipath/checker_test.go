package multipath

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"udm/internal/testutil"
)

// fastCheck polls every few milliseconds so that checker tests run fast;
// nothing asserts how long anything takes.
var fastCheck = MapConfig{PollingInterval: 2 * time.Millisecond, MaxPollingInterval: 8 * time.Millisecond, CheckTimeout: 5 * time.Second}

func (f *mpFix) entry() *mapEntry {
	f.t.Helper()
	e := f.target("mp").watch.Load()
	if e == nil {
		f.t.Fatal("mp is not attached to the checker")
	}
	return e
}

// waitChecks waits until path i has been checked n more times.
func (f *mpFix) waitChecks(i int, n int64) {
	f.t.Helper()
	e := f.entry()
	want := e.pathChecks(i) + n
	testutil.Eventually(f.t, fmt.Sprintf("%d more checks of path %d", n, i), func() bool { return e.pathChecks(i) >= want })
}

func (f *mpFix) pathActive(i int) bool { return f.target("mp").state().active[i] }

func TestCheckerFailsAndReinstates(t *testing.T) {
	f := newFix(t, false, envConfig{check: fastCheck})
	ev := f.mp.Event()
	f.breakPath("p0")
	testutil.Eventually(t, "the checker to fail p0", func() bool { return !f.pathActive(0) })
	// The event follows the published state (the target triggers it
	// after unlocking, as dm-mpath does from a work item).
	testutil.Eventually(t, "an event for the failed path", func() bool { return f.mp.Event() != ev })
	// I/O goes on on p1 meanwhile.
	testutil.MustErrnoIs(t, "write", f.write(f.loops[0], 0, pattern(1, 4*kib)).wait(t), 0)
	ev = f.mp.Event()
	f.repairPath("p0")
	testutil.Eventually(t, "the checker to reinstate p0", func() bool { return f.pathActive(0) })
	testutil.Eventually(t, "an event for the reinstated path", func() bool { return f.mp.Event() != ev })
	for _, want := range []string{`"cause":"checker"`, `"message":"path failed"`, `"message":"path reinstated"`, `"checker":"faulty"`} {
		if !strings.Contains(f.logs.String(), want) {
			t.Errorf("log lacks %s", want)
		}
	}
	// A fail_path message is not the operator's: the checker brings the
	// path back.
	f.mustMsg("mp", "fail_path", "/dev/mapper/p1")
	testutil.Eventually(t, "the checker to reinstate p1", func() bool { return f.pathActive(1) })
}

// Paths that are files: a file that vanishes (its name removed) is
// found by the checker, marked gone and failed; I/O continues on the
// other path, and a new file under the old name doesn't bring it back.
func TestCheckerVanishedFile(t *testing.T) {
	f := newFix(t, false, envConfig{check: fastCheck})
	link := f.file + ".b"
	if err := os.Link(f.file, link); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(link) })
	f.swap("mp", f.mpTable(false, f.file, link))
	f.waitChecks(1, 2)
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "the vanished path to fail", func() bool { return !f.pathActive(1) })
	for i := uint64(0); i < 8; i++ {
		data := pattern(byte(i), 4*kib)
		testutil.MustErrnoIs(t, "write", f.write(f.loops[0], 8*i, data).wait(t), 0)
		r := f.read(f.loops[1], 8*i, 4*kib)
		testutil.MustErrnoIs(t, "read", r.wait(t), 0)
		if string(r.data) != string(data) {
			t.Fatal("read back wrong")
		}
	}
	// A new file by that name is another file.
	if err := os.WriteFile(link, make([]byte, fixSize), 0o600); err != nil {
		t.Fatal(err)
	}
	f.waitChecks(1, 3)
	if f.pathActive(1) {
		t.Fatal("a gone path came back")
	}
	ps := Paths(f.chk.Maps())
	if len(ps) != 2 || ps[1].Checker != "gone" || ps[1].DMState != "failed" || ps[0].Checker != "ready" {
		t.Fatalf("paths %+v", ps)
	}
}

// The operator's fail path stops checks of that path until reinstate
// path; the operator can also act while the map is suspended.
func TestCheckerOperator(t *testing.T) {
	f := newFix(t, false, envConfig{check: fastCheck})
	if err := f.chk.FailPath("mp", "/dev/mapper/p0"); err != nil {
		t.Fatal(err)
	}
	if f.pathActive(0) {
		t.Fatal("p0 still active")
	}
	f.waitChecks(1, 5)
	if f.pathActive(0) {
		t.Fatal("the checker reinstated an operator-failed path")
	}
	ps := Paths(f.chk.Maps())
	if !ps[0].Operator || ps[1].Operator {
		t.Fatalf("paths %+v", ps)
	}
	var out strings.Builder
	if err := FormatPaths(&out, f.chk.Maps()); err != nil || !strings.Contains(out.String(), "(operator)") {
		t.Fatalf("show paths:\n%s", out.String())
	}
	if err := f.chk.ReinstatePath("", "/dev/mapper/p0"); err != nil {
		t.Fatal(err)
	}
	if !f.pathActive(0) {
		t.Fatal("p0 not reinstated")
	}
	// It is checked again: breaking it fails it.
	f.breakPath("p0")
	testutil.Eventually(t, "the checker to fail p0", func() bool { return !f.pathActive(0) })
	// Errors.
	if err := f.chk.FailPath("mp", "/dev/nosuch"); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("unknown path: %v", err)
	}
	if err := f.chk.FailPath("nomap", "/dev/mapper/p0"); !errors.Is(err, ErrNoMap) {
		t.Fatalf("unknown map: %v", err)
	}
	// While suspended (messages would be EBUSY).
	if err := f.mp.Suspend(bg(), true); err != nil {
		t.Fatal(err)
	}
	if err := f.chk.FailPath("mp", "/dev/mapper/p1"); err != nil {
		t.Fatal(err)
	}
	if f.pathActive(1) {
		t.Fatal("p1 still active")
	}
	if err := f.mp.Resume(bg()); err != nil {
		t.Fatal(err)
	}
	// The operator's mark outlives a table reload.
	f.swap("mp", f.mpTable(false, "/dev/mapper/p0", "/dev/mapper/p1"))
	f.repairPath("p0")
	f.waitChecks(0, 3)
	if f.pathActive(1) || !Paths(f.chk.Maps())[1].Operator {
		t.Fatal("the operator's mark was lost with the table")
	}
}

func TestNoPathRetry(t *testing.T) {
	t.Run("N intervals, then fail, then queue again", func(t *testing.T) {
		cfg := fastCheck
		cfg.NoPathRetry = 3
		forExecs(t, func(t *testing.T, kind string) {
			f := newFix(t, false, envConfig{check: cfg})
			mp := f.target("mp")
			if !strings.Contains(f.table("mp"), "1 queue_if_no_path") {
				t.Fatalf("no_path_retry 3 should queue: %q", f.table("mp"))
			}
			f.breakPath("p0")
			f.breakPath("p1")
			w := f.write(f.exec(kind), 0, pattern(1, 4*kib))
			testutil.MustErrnoIs(t, "queued write", w.wait(t), syscall.EIO)
			if st := mp.state(); st.queue {
				t.Fatal("still queueing after no_path_retry ran out")
			}
			f.repairPath("p1")
			testutil.Eventually(t, "queueing to come back with the path", func() bool { return mp.state().queue })
			// And again.
			f.breakPath("p1")
			w = f.write(f.exec(kind), 0, pattern(2, 4*kib))
			testutil.MustErrnoIs(t, "second queued write", w.wait(t), syscall.EIO)
		})
	})
	t.Run("held I/O waits N intervals, not fewer", func(t *testing.T) {
		// The intervals pass on the checker's clock, a fake one moved by
		// hand (paths fail by I/O here).
		const n = 3
		cfg := fastCheck
		cfg.PollingInterval, cfg.MaxPollingInterval, cfg.NoPathRetry = time.Hour, time.Hour, n
		forExecs(t, func(t *testing.T, kind string) {
			clk := newFakeClock()
			f := newFix(t, false, envConfig{check: cfg, clock: clk})
			e, mp := f.entry(), f.target("mp")
			testutil.Eventually(t, "the first checks, at attach", func() bool { return e.pathChecks(0) > 0 && e.pathChecks(1) > 0 })
			w := f.queued(f.exec(kind), 8, pattern(4, 4*kib))
			// interval ends one polling interval; the no_path_retry tick
			// runs in it (runDue returns once it has).
			interval := func() {
				clk.Advance(cfg.PollingInterval)
				e.runDue()
			}
			for i := 1; i < n; i++ {
				interval()
				if w.ended() || mp.Held() != 1 || !mp.state().queue {
					t.Fatalf("after %d of %d intervals: ended %v, held %d", i, n, w.ended(), mp.Held())
				}
			}
			interval()
			testutil.MustErrnoIs(t, "held write after N intervals", w.wait(t), syscall.EIO)
			if mp.state().queue || mp.Held() != 0 {
				t.Fatal("still queueing after no_path_retry ran out")
			}
		})
	})
	t.Run("a path back within N keeps the I/O", func(t *testing.T) {
		cfg := fastCheck
		cfg.NoPathRetry = 1000000
		f := newFix(t, false, envConfig{check: cfg})
		f.breakPath("p0")
		f.breakPath("p1")
		data := pattern(3, 4*kib)
		w := f.write(f.loops[0], 0, data)
		testutil.Eventually(t, "the write to be held", func() bool { return f.target("mp").Held() == 1 })
		f.repairPath("p0")
		testutil.MustErrnoIs(t, "write", w.wait(t), 0)
		if !f.onFile(0, data) {
			t.Fatal("data not in the file")
		}
	})
	t.Run("fail and queue set the feature when the map goes live", func(t *testing.T) {
		for _, tc := range []struct {
			n     NoPathRetry
			queue bool
			want  string
		}{
			{NoPathRetryFail, true, "multipath 0 0 1 1"},
			{NoPathRetryQueue, false, "multipath 1 queue_if_no_path 0 1 1"},
			{NoPathRetryTable, true, "multipath 1 queue_if_no_path 0 1 1"},
			{NoPathRetryTable, false, "multipath 0 0 1 1"},
		} {
			cfg := fastCheck
			cfg.NoPathRetry = tc.n
			f := newFix(t, tc.queue, envConfig{check: cfg})
			if got := f.table("mp"); !strings.Contains(got, tc.want) {
				t.Errorf("no_path_retry %v over a table with queueing %v: %q", tc.n, tc.queue, got)
			}
		}
	})
}

func TestParseCheckerSettings(t *testing.T) {
	for s, want := range map[string]NoPathRetry{"": NoPathRetryTable, "fail": NoPathRetryFail, "queue": NoPathRetryQueue, "12": 12} {
		got, err := ParseNoPathRetry(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("ParseNoPathRetry(%q) = %v, %v", s, got, err)
		}
	}
	for _, s := range []string{"0", "-1", "x"} {
		if _, err := ParseNoPathRetry(s); err == nil {
			t.Errorf("ParseNoPathRetry(%q) accepted", s)
		}
	}
	for s, want := range map[string]Failback{"manual": {}, "immediate": {Mode: FailbackImmediate},
		"followover": {Mode: FailbackFollowover}, "30": {Mode: FailbackDeferred, Delay: 30 * time.Second},
		"20ms": {Mode: FailbackDeferred, Delay: 20 * time.Millisecond}, "1.5s": {Mode: FailbackDeferred, Delay: 1500 * time.Millisecond}} {
		got, err := ParseFailback(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("ParseFailback(%q) = %v, %v", s, got, err)
		}
	}
	// Durations are read too; whole seconds print as seconds.
	for s, want := range map[string]string{"5s": "5", "2m": "120", "1h0m0.5s": "1h0m0.5s", "+7": "7"} {
		got, err := ParseFailback(s)
		if err != nil || got.String() != want {
			t.Errorf("ParseFailback(%q) = %v, %v; want %s", s, got, err, want)
		}
	}
	for _, s := range []string{"0", "0s", "-1", "-20ms", "soon", "5x", "9223372037", "99999999999999999999"} {
		if _, err := ParseFailback(s); err == nil {
			t.Errorf("ParseFailback(%q) accepted", s)
		}
	}
}

// The checker's durations are refused out of their bounds, and
// polling_interval=off turns checking off.
func TestParseCheckerDurations(t *testing.T) {
	for _, tc := range []struct {
		parse func(string) (time.Duration, error)
		s     string
		want  time.Duration
	}{
		{ParsePollingInterval, "", 0}, {ParsePollingInterval, "5s", 5 * time.Second}, {ParsePollingInterval, "50ms", 50 * time.Millisecond},
		{ParsePollingInterval, "24h", 24 * time.Hour}, {ParsePollingInterval, "off", -1}, {ParsePollingInterval, "200ms", 200 * time.Millisecond},
		{ParseMaxPollingInterval, "", 0}, {ParseMaxPollingInterval, "20s", 20 * time.Second},
		{ParseCheckTimeout, "", 0}, {ParseCheckTimeout, "500ms", 500 * time.Millisecond},
	} {
		if got, err := tc.parse(tc.s); err != nil || got != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.s, got, err, tc.want)
		}
	}
	for _, parse := range []func(string) (time.Duration, error){ParsePollingInterval, ParseMaxPollingInterval, ParseCheckTimeout} {
		for _, s := range []string{"1us", "49ms", "0", "0s", "-1s", "25h", "5", "soon", "1e9h"} {
			if d, err := parse(s); err == nil || !strings.Contains(err.Error(), "from 50ms to 24h") {
				t.Errorf("%q accepted (%v) or unclear error: %v", s, d, err)
			}
		}
	}
	if _, err := ParseCheckTimeout("off"); err == nil {
		t.Error("check_timeout off accepted")
	}
}

// Every failback policy prints as a string ParseFailback reads back as
// the same policy, sub-second delays included.
func TestFailbackRoundTrip(t *testing.T) {
	fbs := []Failback{{}, {Mode: FailbackImmediate}, {Mode: FailbackFollowover}}
	for _, d := range []time.Duration{1, time.Microsecond, 20 * time.Millisecond, 999 * time.Millisecond, time.Second,
		1500 * time.Millisecond, 90 * time.Second, 36 * time.Hour, time.Duration(math.MaxInt64/time.Second) * time.Second,
		math.MaxInt64} {
		fbs = append(fbs, Failback{Mode: FailbackDeferred, Delay: d})
	}
	rng := rand.New(rand.NewPCG(5, 0)) // fixed: FuzzParseFailback explores
	for range 1000 {
		d := time.Duration(rng.Int64N(int64(time.Hour))) + 1
		if rng.IntN(2) == 0 {
			d = d.Round(time.Millisecond) + time.Millisecond
		}
		fbs = append(fbs, Failback{Mode: FailbackDeferred, Delay: d})
	}
	for _, fb := range fbs {
		got, err := ParseFailback(fb.String())
		if err != nil || got != fb {
			t.Fatalf("%+v prints as %q, which reads back as %+v, %v", fb, fb.String(), got, err)
		}
	}
}

// Whatever ParseFailback accepts prints as a string it reads back as the
// same policy.
func FuzzParseFailback(f *testing.F) {
	for _, s := range []string{"", "manual", "immediate", "followover", "30", "20ms", "1.5s", "0", "-5", "1h2m3.000000004s", "+7"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		fb, err := ParseFailback(s)
		if err != nil {
			return
		}
		if fb.Mode == FailbackDeferred && fb.Delay <= 0 {
			t.Fatalf("%q: delay %v", s, fb.Delay)
		}
		again, err := ParseFailback(fb.String())
		if err != nil || again != fb {
			t.Fatalf("%q reads as %+v, prints as %q, reads back as %+v, %v", s, fb, fb.String(), again, err)
		}
	})
}

// Failback: group 1 (p0 and p2) is preferred, group 2 (p1) takes over
// when group 1 has no path.
func TestFailback(t *testing.T) {
	setup := func(t *testing.T, fb Failback) *mpFix {
		cfg := fastCheck
		cfg.Failback = fb
		f := newFix(t, false, envConfig{check: cfg})
		f.create("p2", f.linear())
		f.swap("mp", fmt.Sprintf("0 %d multipath 0 0 2 1 round-robin 0 2 1 /dev/mapper/p0 1 /dev/mapper/p2 1 round-robin 0 1 1 /dev/mapper/p1 1", f.sectors))
		return f
	}
	group := func(f *mpFix) int {
		// An I/O makes a pending switch happen.
		testutil.MustErrnoIs(f.t, "write", f.write(f.loops[0], 0, pattern(5, 4*kib)).wait(f.t), 0)
		return f.target("mp").state().cur + 1
	}
	// failover breaks group 1 and waits for I/O to move to group 2.
	failover := func(f *mpFix) {
		f.breakPath("p0")
		f.breakPath("p2")
		testutil.Eventually(f.t, "group 1 to fail", func() bool { st := f.target("mp").state(); return st.groupActive[0] == 0 })
		if g := group(f); g != 2 {
			f.t.Fatalf("I/O on group %d after group 1 failed", g)
		}
	}
	for _, tc := range []struct {
		fb   Failback
		back bool
	}{
		{Failback{}, false},
		{Failback{Mode: FailbackImmediate}, true},
		{Failback{Mode: FailbackFollowover}, true},
		{Failback{Mode: FailbackDeferred, Delay: 20 * time.Millisecond}, true},
	} {
		t.Run(tc.fb.String(), func(t *testing.T) {
			f := setup(t, tc.fb)
			failover(f)
			f.repairPath("p0")
			testutil.Eventually(t, "p0 to be reinstated", func() bool { return f.pathActive(0) })
			if tc.back {
				testutil.Eventually(t, "failback to group 1", func() bool { return f.target("mp").state().eff == 0 })
				if g := group(f); g != 1 {
					t.Fatalf("I/O on group %d after failback", g)
				}
				return
			}
			f.waitChecks(0, 5)
			if g := group(f); g != 2 {
				t.Fatalf("manual failback moved I/O to group %d", g)
			}
		})
	}
	// followover fails back only when the group's first path returns:
	// after the operator moved I/O to group 2 while group 1 still had a
	// path, another group-1 path coming back doesn't move it.
	for _, tc := range []struct {
		mode FailbackMode
		back bool
	}{{FailbackFollowover, false}, {FailbackImmediate, true}} {
		t.Run(Failback{Mode: tc.mode}.String()+" after a manual switch", func(t *testing.T) {
			f := setup(t, Failback{Mode: tc.mode})
			if g := group(f); g != 1 {
				t.Fatalf("starts on group %d", g)
			}
			f.mustMsg("mp", "switch_group", "2")
			if g := group(f); g != 2 {
				t.Fatalf("switch_group 2: on group %d", g)
			}
			f.breakPath("p2")
			testutil.Eventually(t, "p2 to fail", func() bool { return !f.pathActive(2 - 1) })
			f.repairPath("p2")
			testutil.Eventually(t, "p2 to come back", func() bool { return f.pathActive(1) })
			if tc.back {
				testutil.Eventually(t, "failback to group 1", func() bool { return f.target("mp").state().eff == 0 })
				return
			}
			f.waitChecks(1, 5)
			if g := group(f); g != 2 {
				t.Fatalf("followover failed back to group %d", g)
			}
		})
	}
}

func TestListings(t *testing.T) {
	f := newFix(t, true, envConfig{check: fastCheck})
	// Break the path before failing it: the other way round, a check in
	// between sees it healthy and reinstates it (fail_count 2).
	f.breakPath("p1")
	f.mustMsg("mp", "fail_path", "/dev/mapper/p1")
	testutil.Eventually(t, "p1 checked faulty and p0 ready", func() bool {
		ps := Paths(f.chk.Maps())
		return ps[1].Checker == "faulty" && ps[0].Checker == "ready"
	})
	maps := f.chk.Maps()
	if len(maps) != 1 {
		t.Fatalf("maps %+v", maps)
	}
	m := maps[0]
	if m.Name != "mp" || m.Size != fixSize || m.Features != "1 queue_if_no_path" || m.HWHandler != "0" ||
		!m.QueueIfNoPath || m.ValidPaths != 1 || m.NoPathRetry != "table" || m.Failback != "manual" ||
		len(m.Groups) != 1 || m.Groups[0].Selector != "round-robin 0" || len(m.Groups[0].Paths) != 2 {
		t.Fatalf("map %+v", m)
	}
	p0, p1 := m.Groups[0].Paths[0], m.Groups[0].Paths[1]
	if p0.Dev != "/dev/mapper/p0" || p0.DMState != "active" || p0.Checker != "ready" ||
		p1.DMState != "failed" || p1.Checker != "faulty" || p1.FailCount != 1 || p1.LastError == "" {
		t.Fatalf("paths %+v %+v", p0, p1)
	}
	var b strings.Builder
	if err := FormatMaps(&b, maps); err != nil {
		t.Fatal(err)
	}
	if err := FormatPaths(&b, maps); err != nil {
		t.Fatal(err)
	}
	if err := FormatTopology(&b, maps); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"name  uuid  size  features",
		"mp    -     4.0M  1 queue_if_no_path",
		"/dev/mapper/p1  1   failed  faulty",
		"size=4.0M features='1 queue_if_no_path' hwhandler='0' queued=0\n`-+- policy='round-robin 0' status=enabled\n  |- /dev/mapper/p0 active ready fail_count=0\n  `- /dev/mapper/p1 failed faulty fail_count=1\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("listing lacks %q:\n%s", want, out)
		}
	}
	// A target's own status, without a checker.
	ms := f.target("mp").MapStatus()
	if ms.Groups[0].Paths[0].Checker != "" || ms.ValidPaths != 1 {
		t.Fatalf("%+v", ms)
	}
}

// The checker follows tables: a new table replaces the old one's
// entry, removal detaches it, Close stops everything.
func TestCheckerLifecycle(t *testing.T) {
	f := newFix(t, false, envConfig{check: fastCheck})
	old := f.entry()
	f.swap("mp", f.mpTable(false, "/dev/mapper/p1"))
	if f.entry() == old || old.ctx.Err() == nil {
		t.Fatal("the old table is still checked")
	}
	if _, ok := f.chk.Map("mp"); !ok {
		t.Fatal("new table not attached")
	}
	// A table that is only loaded is not checked.
	if err := f.mp.Load(f.mpTable(false, "/dev/mapper/p0")); err != nil {
		t.Fatal(err)
	}
	if got := f.target("mp").PathName(0); got != "/dev/mapper/p1" {
		t.Fatalf("the inactive table is attached (%s)", got)
	}
	f.mp.Clear()
	e := f.entry()
	if err := f.reg.Remove(bg(), "mp", false, false); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.chk.Map("mp"); ok || e.ctx.Err() == nil {
		t.Fatal("removed map still checked")
	}
	f.create("mp", f.mpTable(false, "/dev/mapper/p0"))
	e = f.entry()
	f.chk.Close()
	f.chk.Close()
	if e.ctx.Err() == nil {
		t.Fatal("Close left a map checked")
	}
	// A closed checker takes no new maps.
	f.create("mp2", f.mpTable(false, "/dev/mapper/p0"))
	if _, ok := f.chk.Map("mp2"); ok {
		t.Fatal("closed checker attached a map")
	}
}

// SetMapConfig applies to a live map.
func TestSetMapConfig(t *testing.T) {
	f := newFix(t, true, envConfig{})
	if f.entry().cfg.PollingInterval >= 0 {
		t.Fatal("polling")
	}
	cfg := fastCheck
	cfg.NoPathRetry = NoPathRetryFail
	f.chk.SetMapConfig("mp", cfg)
	if f.entry().cfg.PollingInterval != fastCheck.PollingInterval || f.target("mp").state().queue {
		t.Fatal("configuration not applied")
	}
	f.breakPath("p0")
	testutil.Eventually(t, "the checker to fail p0", func() bool { return !f.pathActive(0) })
}

// A path over a loop device (a real block device) is checked with the
// directio checker like a file.
func TestCheckerLoopDevice(t *testing.T) {
	testutil.RequireRoot(t)
	f := newFix(t, false, envConfig{check: fastCheck})
	lo := testutil.LoopDevice(t, f.file)
	f.swap("mp", f.mpTable(false, lo, "/dev/mapper/p1"))
	f.waitChecks(0, 3)
	if !f.pathActive(0) || Paths(f.chk.Maps())[0].Checker != "ready" {
		t.Fatalf("loop device path %+v", Paths(f.chk.Maps())[0])
	}
	data := pattern(9, 4*kib)
	for i := 0; i < 4; i++ {
		testutil.MustErrnoIs(t, "write", f.write(f.loops[0], 0, data).wait(t), 0)
	}
	if !f.onFile(0, data) {
		t.Fatal("data not in the file")
	}
}

// A check that gets no answer (a read held by a delay target far longer
// than the test) fails the path at check_timeout after it started, on
// the checker's clock (a fake one here); while that read is still
// outstanding, later checks fail at once without sending another; once
// it is answered, checks read again.
func TestCheckerTimeout(t *testing.T) {
	cfg := fastCheck
	cfg.CheckTimeout = 100 * time.Millisecond
	clk := newFakeClock()
	f := newFix(t, false, envConfig{check: cfg, clock: clk})
	e := f.entry()
	// step moves the clock one base interval on and runs what is due.
	step := func() {
		clk.Advance(cfg.PollingInterval)
		e.runDue()
	}
	lastErr := func() string {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.mu.m.paths[0].lastErr
	}
	running := func() (bool, time.Time) {
		e.mu.Lock()
		defer e.mu.Unlock()
		p := &e.mu.m.paths[0]
		return p.running, p.deadline
	}
	// stepChecks steps until p0 has been checked n more times.
	stepChecks := func(n int64) {
		want := e.pathChecks(0) + n
		testutil.Eventually(t, fmt.Sprintf("%d more checks of p0", n), func() bool {
			if e.pathChecks(0) >= want {
				return true
			}
			step()
			return false
		})
	}
	// startCheck steps until a check of p0 is under way and returns its
	// deadline.
	startCheck := func() time.Time {
		var dl time.Time
		testutil.Eventually(t, "a check of p0 to start", func() bool {
			var ok bool
			if ok, dl = running(); ok {
				return true
			}
			step()
			return false
		})
		return dl
	}
	// The check at attach: counted from zero, since it may have ended
	// before this line (waitChecks counts from now, and on the fake clock
	// no later check would come).
	testutil.Eventually(t, "the check of p0 at attach", func() bool { return e.pathChecks(0) >= 1 })
	f.swap("p0", fmt.Sprintf("0 %d delay %s 0 600000", f.sectors, f.file))
	dl := startCheck()
	testutil.Eventually(t, "a check read held on p0", func() bool { return f.held("p0") == 1 })
	// Not failed a nanosecond before check_timeout; failed at it. The
	// read is still held: it was the timeout that failed the path.
	clk.Advance(dl.Sub(clk.Now()) - 1)
	e.runDue()
	if !f.pathActive(0) {
		t.Fatal("p0 failed before check_timeout")
	}
	clk.Advance(1)
	e.runDue()
	if f.pathActive(0) {
		t.Fatal("p0 not failed at check_timeout")
	}
	if n := f.held("p0"); n != 1 {
		t.Fatalf("%d reads held on p0 when it failed", n)
	}
	// The checker logs the failing check's error once, when the path
	// goes faulty (later checks overwrite lastErr).
	want := fmt.Sprintf("no answer in %v: %v", cfg.CheckTimeout, syscall.ETIMEDOUT)
	if logs := f.logs.String(); !strings.Contains(logs, `"checker":"faulty"`) || !strings.Contains(logs, want) {
		t.Fatalf("log lacks the check timeout (%q):\n%s", want, logs)
	}
	// The next checks find the read outstanding and send no other.
	stepChecks(3)
	if err := lastErr(); !strings.Contains(err, "earlier check still outstanding") {
		t.Fatalf("check with a read outstanding: %q", err)
	}
	if n := f.held("p0"); n != 1 || f.pathActive(0) {
		t.Fatalf("%d reads held on p0 (want the first only), active %v", n, f.pathActive(0))
	}
	// The held read is answered (the release waits for it): the next
	// check sends a read again, which hangs in turn.
	f.release("p0")
	testutil.Eventually(t, "the held read to return", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		return !e.mu.m.paths[0].outstanding
	})
	startCheck()
	testutil.Eventually(t, "a new check read held on p0", func() bool { return f.held("p0") == 1 })
	stepChecks(3)
	if n := f.held("p0"); n != 1 || f.pathActive(0) {
		t.Fatalf("%d reads held on p0, active %v", n, f.pathActive(0))
	}
	// A working path again: reinstated.
	f.repairPath("p0")
	testutil.Eventually(t, "the checker to reinstate p0", func() bool {
		step()
		return f.pathActive(0)
	})
}

// A check's verdict is dropped when the path was failed or reinstated
// while the check ran: it describes the path as it was.
func TestCheckerDiscardsStaleVerdict(t *testing.T) {
	f := newMemFix(t, "0 0 1 1 round-robin 0 2 1 a 1 b 1", envConfig{check: fastCheck})
	a := f.paths[0]
	mp := f.target("mp")
	e := mp.watch.Load()
	a.Hang(true)
	testutil.Eventually(t, "a check read held on a", func() bool { return a.Held() == 1 })
	checks := e.pathChecks(0)
	// The operator (here by message) fails and reinstates a meanwhile.
	f.mustMsg("mp", "fail_path", "a")
	f.mustMsg("mp", "reinstate_path", "a")
	// The check fails; the next one hangs, so no later verdict interferes.
	a.ReleaseErr(syscall.EIO)
	testutil.Eventually(t, "the check to end", func() bool { return e.pathChecks(0) > checks })
	testutil.Eventually(t, "the next check held", func() bool { return a.Held() == 1 })
	if !mp.state().active[0] {
		t.Fatal("a stale check failed the reinstated path")
	}
	// A fresh failing check fails it.
	a.FailAll(syscall.EIO)
	a.Hang(false)
	a.ReleaseErr(syscall.EIO)
	testutil.Eventually(t, "a to fail", func() bool { return !mp.state().active[0] })
	a.FailAll(0)
	testutil.Eventually(t, "a to come back", func() bool { return mp.state().active[0] })
}
