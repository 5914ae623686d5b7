package drill

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"udm/daemon/api"
	"udm/internal/testutil"
)

// These tests run the short form of every built-in scenario against a
// real `udm serve` (built once by TestMain) and require its outcome; and
// show that a drill whose outcome is wrong fails, saying why in one line.

func TestMain(m *testing.M) { testutil.MainWithUDM(m) }

func testOptions(t *testing.T) Options {
	testutil.SkipShort(t, "a drill starts udm serve")
	return Options{UDM: testutil.UDM(), Log: testLog{t}, Size: 32 << 20, Workload: Workload{Seed: uint64(time.Now().UnixNano())}}
}

// testLog sends progress lines to the test's log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runScenario runs a built-in's short form and fails the test unless it
// passes, printing the summary (and the daemon's log on failure).
func runScenario(t *testing.T, name string, opt Options) *Report {
	t.Helper()
	sc, ok := Lookup(name)
	if !ok {
		t.Fatalf("no scenario %s", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := RunScenario(ctx, sc, false, opt)
	if err != nil {
		t.Fatalf("%s (seed %d): %v", name, opt.Workload.Seed, err)
	}
	mustPass(t, rep)
	return rep
}

// mustPass fails the test unless rep passed, printing the summary (and
// the daemons' logs on failure); it returns the summary.
func mustPass(t *testing.T, rep *Report) string {
	t.Helper()
	var b bytes.Buffer
	rep.Summary(&b)
	if !rep.Pass() {
		for n, l := range rep.Logs {
			t.Logf("end of %s's log:\n%s", n, l)
		}
		t.Fatalf("%s", b.String())
	}
	t.Logf("\n%s", b.String())
	return b.String()
}

// passSchedule runs a schedule and fails the test unless it passes.
func passSchedule(t *testing.T, name, text string) (*Report, string) {
	t.Helper()
	rep, err := RunSchedule(context.Background(), name, text, testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	return rep, mustPass(t, rep)
}

func TestScenarios(t *testing.T) {
	for _, sc := range Scenarios {
		t.Run(sc.Name, func(t *testing.T) {
			if strings.HasPrefix(sc.Name, "remote-") {
				if err := NetnsAvailable(); err != nil {
					t.Skipf("skipped: %v", err)
				}
			}
			rep := runScenario(t, sc.Name, testOptions(t))
			// Each report says what it measured.
			if rep.Record.Ops == 0 || len(rep.Record.Samples) < 10 || len(rep.Record.Timeline) < 10 {
				t.Fatalf("thin record: %d ops, %d samples, %d intervals", rep.Record.Ops, len(rep.Record.Samples), len(rep.Record.Timeline))
			}
		})
	}
}

// The drill with fio as the workload (nbd engine, verify=crc32c).
func TestScenariosFio(t *testing.T) {
	testutil.RequireTool(t, "fio")
	for _, name := range []string{"single-path-loss", "noflush-reload"} {
		t.Run(name, func(t *testing.T) {
			opt := testOptions(t)
			opt.Fio = true
			rep := runScenario(t, name, opt)
			if !strings.HasPrefix(rep.Workload, "fio") || rep.Record.VerifiedBytes == 0 {
				t.Fatalf("workload %q verified %d bytes", rep.Workload, rep.Record.VerifiedBytes)
			}
		})
	}
	sc, _ := Lookup("no-path-retry")
	opt := testOptions(t)
	opt.Fio = true
	if _, err := RunScenario(context.Background(), sc, false, opt); err == nil || !strings.Contains(err.Error(), "can't run with fio") {
		t.Fatalf("no-path-retry with fio: %v", err)
	}
}

// A drill whose device fails I/O it should hold fails, and says which
// I/O, where and when, in one line.
func TestDrillFailsOnUnexpectedErrors(t *testing.T) {
	text := `# Both paths die and nothing queues: I/O fails with EIO.
features none
checker no_path_retry=fail
1s    error p0
+0    error p1
+0    await all-failed within 10s
+0.5s restore p0
+0    await p0 active within 20s
`
	rep, err := RunSchedule(context.Background(), "no-queueing", text, testOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	rep.Summary(&b)
	t.Logf("\n%s", b.String())
	if rep.Pass() {
		t.Fatal("a drill with unexpected I/O errors passed")
	}
	first, _, _ := strings.Cut(b.String(), "\n")
	for _, want := range []string{"udm drill no-queueing (custom): FAIL: no unexpected I/O errors: ", " at offset ", " (4096 bytes) failed at ", " s after ", "outside any expected-error window"} {
		if !strings.Contains(first, want) {
			t.Errorf("first line lacks %q: %s", want, first)
		}
	}
	if rep.Analysis.FirstUnexpected == nil || rep.Analysis.FirstUnexpected.Errno != "EIO" {
		t.Errorf("first unexpected error: %+v", rep.Analysis.FirstUnexpected)
	}
}

// A drill against a daemon it didn't start (--control): its devices are
// made there and removed after; a restart is refused.
func TestDrillExternalDaemon(t *testing.T) {
	testutil.SkipShort(t, "a drill against a running udm serve")
	state := t.TempDir()
	sock := filepath.Join(t.TempDir(), "c.sock")
	if len(sock) > 100 {
		sock = filepath.Join(testutil.SockDir(t), "c.sock")
	}
	p, err := startDaemon(context.Background(), "udm serve", filepath.Join(state, "log"),
		[]string{testutil.UDM(), "serve", "--state-dir", state, "--control", sock, "--nbd", "127.0.0.1:0", "--nbd-unix", "", "--no-demo"}, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop(10 * time.Second)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the daemon's log:\n%s", tail(p, 20000))
		}
	})
	c := api.NewClient(sock)
	if _, err := c.Create(context.Background(), api.CreateRequest{Name: "other", Table: "0 2048 zero"}); err != nil {
		t.Fatal(err)
	}
	opt := testOptions(t)
	opt.Control = sock
	runScenario(t, "single-path-loss", opt)
	devs, err := c.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 1 || devs[0].Name != "other" {
		t.Fatalf("devices after the drill: %+v", devs)
	}
	sc, _ := Lookup("restart")
	if _, err := RunScenario(context.Background(), sc, false, opt); err == nil || !strings.Contains(err.Error(), "restart needs a daemon the drill starts") {
		t.Fatalf("restart against a running daemon: %v", err)
	}
}

// A schedule that can't parse says where.
func TestRunScheduleErrors(t *testing.T) {
	_, err := RunSchedule(context.Background(), "x", "1s explode p0\n", Options{Log: testLog{t}})
	if !errors.Is(err, ErrSchedule) || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("bad schedule: %v", err)
	}
}

// The README's example schedule is testdata/example.drill, and it passes.
func TestExampleSchedule(t *testing.T) {
	text, err := os.ReadFile("testdata/example.drill")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(testutil.ModuleRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var indented strings.Builder
	for _, l := range strings.SplitAfter(strings.TrimSuffix(string(text), "\n"), "\n") {
		indented.WriteString("    " + l)
	}
	if !strings.Contains(string(readme), indented.String()+"\n") {
		t.Fatal("README.md doesn't show testdata/example.drill as its example schedule")
	}
	passSchedule(t, "example", string(text))
}

// The actions the built-ins don't use, end to end: messages, the
// operator's fail and reinstate, a file path that vanishes, a flakey
// layer, checker changes, raw messages.
func TestScheduleActions(t *testing.T) {
	text := `path p0 dm
path p1 dm
path f0 file
1s    fail-path p0                 # a message: the next passing check reinstates it
+0    await p0 failed within 5s
+0    await p0 active within 10s
+0.3s operator-fail p1             # the checker leaves it failed
+0    await p1 failed within 5s
+0.6s operator-reinstate p1
+0    await p1 active within 5s
+0.3s vanish f0                    # the checker marks it gone
+0    await f0 failed within 5s
+0.3s flakey p0 0 5                # down at once: every I/O fails
+0    await p0 failed within 10s
+0.3s restore p0
+0    await p0 active within 10s
+0    checker polling_interval=300ms
+0    message fail_if_no_path
+0    message queue_if_no_path
+0    reinstate-path p0
tail 1s
`
	rep, _ := passSchedule(t, "actions", text)
	if len(rep.Analysis.Faults) != 4 {
		t.Fatalf("faults: %+v", rep.Analysis.Faults)
	}
	last := rep.Record.lastSample()
	if last == nil || last.Paths["f0"] != StateGone || last.Paths["p0"] != StateActive || last.Paths["p1"] != StateActive {
		t.Fatalf("last sample %+v", last)
	}
}

// A remote path served by nbdkit whose server is killed and started
// again.
func TestRemoteNbdkitVanish(t *testing.T) {
	testutil.RequireTool(t, "nbdkit")
	if err := NetnsAvailable(); err != nil {
		t.Skipf("skipped: %v", err)
	}
	text := `remote nbdkit
path r0 remote
path r1 remote
1s    vanish r0
+0    await r0 failed within 10s
+1s   restore r0
+0    await r0 active within 30s
`
	rep, sum := passSchedule(t, "nbdkit", text)
	if !strings.Contains(rep.PathDevs["r0"], "nbd://169.254.") || !strings.Contains(sum, "server restarted") {
		t.Fatalf("paths %v", rep.PathDevs)
	}
}

// `udm drill --json --out DIR FILE`, the built binary end to end: stdout
// is the report as JSON (the verdict and what the summary shows), and
// DIR gets NAME.txt, NAME.json (the same JSON) and NAME.svg.
func TestDrillCLI(t *testing.T) {
	testutil.SkipShort(t, "udm drill runs a drill")
	dir := t.TempDir()
	sched := filepath.Join(dir, "cli-smoke.drill")
	text := `# One path fails by message and comes back.
path p0 dm
path p1 dm
0.5s  fail-path p0
+0    await p0 failed within 10s
+0    reinstate-path p0
+0    await p0 active within 10s
tail  0.5s
`
	if err := os.WriteFile(sched, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "reports")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testutil.UDM(), "drill", "--json", "--out", out, "--size", "16m", sched)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("udm drill: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	var rep struct {
		Name     string `json:"name"`
		Form     string `json:"form"`
		Workload string `json:"workload"`
		Seed     uint64 `json:"seed"`
		Table    string `json:"table"`
		Record   struct {
			Ops     int64         `json:"ops"`
			Paths   []string      `json:"paths"`
			Events  []EventRecord `json:"events"`
			Samples []Sample      `json:"samples"`
		} `json:"record"`
		Analysis struct {
			Verdict          string  `json:"verdict"`
			UnexpectedErrors *int64  `json:"unexpected_errors"`
			Checks           []Check `json:"checks"`
		} `json:"analysis"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("stdout is not the report as JSON: %v\n%s", err, stdout.String())
	}
	a := rep.Analysis
	if rep.Name != "cli-smoke" || rep.Form != "custom" || rep.Workload == "" || rep.Seed == 0 ||
		!strings.Contains(rep.Table, " multipath ") || a.Verdict != "PASS" || a.UnexpectedErrors == nil ||
		*a.UnexpectedErrors != 0 || len(a.Checks) == 0 || rep.Record.Ops == 0 || len(rep.Record.Events) != 4 ||
		len(rep.Record.Samples) == 0 || strings.Join(rep.Record.Paths, " ") != "p0 p1" {
		t.Fatalf("report:\n%s", stdout.String())
	}
	for _, c := range a.Checks {
		if !c.Pass {
			t.Errorf("check %s failed: %s", c.Name, c.Detail)
		}
	}

	base := filepath.Join(out, "cli-smoke")
	if !strings.Contains(stderr.String(), "udm drill: wrote "+base+".txt, "+base+".json, "+base+".svg") {
		t.Errorf("stderr does not name the files written:\n%s", stderr.String())
	}
	txt, err := os.ReadFile(base + ".txt")
	if err != nil {
		t.Fatal(err)
	}
	if first, _, _ := strings.Cut(string(txt), "\n"); first != "udm drill cli-smoke (custom): PASS" || !strings.Contains(string(txt), "  verdict   PASS\n") {
		t.Errorf("%s.txt:\n%s", base, txt)
	}
	js, err := os.ReadFile(base + ".json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(js, stdout.Bytes()) {
		t.Errorf("%s.json differs from what --json printed", base)
	}
	svg, err := os.ReadFile(base + ".svg")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(svg, []byte("<svg")) || !bytes.HasSuffix(bytes.TrimSpace(svg), []byte("</svg>")) {
		t.Errorf("%s.svg is not an SVG:\n%.200s", base, svg)
	}
}
