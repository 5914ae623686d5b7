package perf

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"udm/internal/testutil"
)

// hogsRunning counts this process's children that are hog shells.
func hogsRunning(t *testing.T) int {
	t.Helper()
	me := strconv.Itoa(os.Getpid())
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	n := 0
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		// state ppid ...; zombies (Z) have ended.
		if len(f) < 2 || f[1] != me || f[0] == "Z" {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join(filepath.Dir(st), "cmdline"))
		if strings.Contains(string(cmd), "while :; do :; done") {
			n++
		}
	}
	return n
}

// waitHogs polls until want hogs run.
func waitHogs(t *testing.T, want int) {
	t.Helper()
	testutil.Eventually(t, fmt.Sprintf("%d hogs running", want), func() bool { return hogsRunning(t) == want })
}

// StartHogs starts n CPU-bound children; stop ends them, and so does
// the bound if nobody calls stop.
func TestHogsStartAndEnd(t *testing.T) {
	stop := StartHogs(2, time.Minute)
	waitHogs(t, 2)
	stop()
	if n := hogsRunning(t); n != 0 {
		t.Fatalf("%d hogs still running after stop", n)
	}
	stop = StartHogs(1, 100*time.Millisecond)
	defer stop()
	waitHogs(t, 0) // ended by the bound (reaped or a zombie)
	StartHogs(0, time.Minute)()
}

// A shared-CPU workload runs only its contenders, with hogs beside each
// run; its table leaves the others out and lists every repetition, and
// the targets check udm against nbdkit and udm's stability.
func TestSharedWorkloadRowsAndTargets(t *testing.T) {
	hogsSeen := map[string]int{}
	mk := func(name string, iops ...float64) Contender {
		rep := 0
		return Contender{Name: name, Run: func(ctx context.Context, w Workload, _, _ time.Duration) (*Result, error) {
			if w.Hogs > 0 {
				hogsSeen[name] = hogsRunning(t)
			}
			x := iops[rep%len(iops)]
			rep++
			return &Result{IOPS: x, Lat: Latency{P50: 100 / x}}, nil
		}}
	}
	shared := Workload{Name: "shared-randread-4k-qd1", RW: "randread", BS: 4096, Depth: 1, Hogs: 2,
		For: []string{CUdmLinTCP, CNbdkitTCP}}
	mx := &Matrix{Workloads: []Workload{shared},
		Contenders: []Contender{mk(CUdmLinTCP, 100, 40, 110), mk(CNbdkitTCP, 90), mk(CQemuThrTCP, 500)}, Reps: 3}
	rep, err := mx.Run(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ran := hogsSeen[CQemuThrTCP]; ran || len(rep.Runs[shared.Name][2]) != 0 {
		t.Fatalf("a contender outside the workload's For ran it")
	}
	for _, c := range []string{CUdmLinTCP, CNbdkitTCP} {
		if hogsSeen[c] != 2 {
			t.Errorf("%s ran beside %d hogs, want 2", c, hogsSeen[c])
		}
	}
	if n := hogsRunning(t); n != 0 {
		t.Fatalf("%d hogs left after the matrix", n)
	}
	var b bytes.Buffer
	rep.Markdown(&b, FullRatios(rep.Contenders))
	md := b.String()
	if strings.Contains(md, CQemuThrTCP) {
		t.Errorf("the table lists a contender that does not run the workload:\n%s", md)
	}
	if !strings.Contains(md, "- "+CUdmLinTCP+": 100, 40, 110; 0.40") {
		t.Errorf("the table does not list udm's repetitions and spread:\n%s", md)
	}
	checks := map[string]Check{}
	for _, c := range EvaluateTargets(rep) {
		checks[c.Target] = c
	}
	if c, ok := checks["IOPS ≥ best peer: shared-randread-4k-qd1 over tcp"]; !ok || !c.Pass {
		t.Errorf("IOPS check %+v: udm's median 100 against nbdkit's 90 passes", c)
	}
	if c, ok := checks["no repetition below 0.8× udm's median: shared-randread-4k-qd1 over tcp"]; !ok || c.Pass {
		t.Errorf("stability check %+v: a repetition at 0.4× the median fails", c)
	}
	for target := range checks {
		if strings.Contains(target, "shared") && (strings.HasPrefix(target, "p50") || strings.HasPrefix(target, "server CPU")) {
			t.Errorf("quiet-machine target applied to a shared-CPU workload: %s", target)
		}
	}
}

// The shared-CPU workloads of make bench run udm's linear export, its
// variants and nbdkit, over both transports, and nothing else.
func TestSharedWorkloadsContenders(t *testing.T) {
	n := 0
	for _, w := range FullWorkloads {
		if w.Hogs == 0 {
			continue
		}
		n++
		for _, c := range []string{CUdmLinTCP, CUdmLinUnix, "udm nbd linear [--spin 0], tcp", CNbdkitTCP, CNbdkitUnix} {
			if !w.Runs(c) {
				t.Errorf("%s does not run %s", w.Name, c)
			}
		}
		for _, c := range []string{CUdmMpTCP, CQemuThrUnix, CFioFile, CUdmLinLoop, CNbdkitExt4} {
			if w.Runs(c) {
				t.Errorf("%s runs %s", w.Name, c)
			}
		}
	}
	if n != 4 {
		t.Fatalf("%d shared-CPU workloads, want 4 (randread and randwrite at depth 1 and 32)", n)
	}
}
