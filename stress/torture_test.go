package stress_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/stress"
)

// The short form (the defaults) runs in make test; make stress runs the
// long form (-stress.ops=N and the other flags).
var (
	seedFlag    = flag.Uint64("stress.seed", 0, "the torture run's seed (0: drawn from the clock and printed)")
	opsFlag     = flag.Int("stress.ops", 0, "worker operations in the run (0: the short form's 3000)")
	maxFlag     = flag.Int("stress.max-violations", 0, "stop the run after this many violations (0: 20)")
	workersFlag = flag.Int("stress.workers", 0, "parallel workers (0: 3)")
	slotsFlag   = flag.Int("stress.slots", 0, "devices per worker (0: 3)")
	killFlag    = flag.Int("stress.kill-every", 0, "mean operations between kills of the daemon (0: 120)")
	udmFlag     = flag.String("stress.udm", "", "the udm binary to torture (default: built from this tree)")
	verbose     = flag.Bool("stress.v", false, "log every violation as it is found and the whole history at the end")
)

func TestMain(m *testing.M) {
	flag.Parse()
	if *udmFlag != "" {
		os.Exit(m.Run())
	}
	testutil.MainWithUDM(m)
}

// udmBin is the binary to torture: -stress.udm's, or the one built here.
func udmBin() string {
	if *udmFlag != "" {
		return *udmFlag
	}
	return testutil.UDM()
}

// TestTorture runs the control-plane torture test against a daemon built
// from this tree: parallel workers change devices, NBD clients write and
// verify data, the daemon is killed and restarted at seeded points, and
// every invariant of the package doc is checked. It fails with the seed,
// the violations and the tail of the operation history.
func TestTorture(t *testing.T) {
	testutil.SkipShort(t, "the torture test runs a daemon through kills and restarts for up to a minute")
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("torture seed %d (rerun with: go test ./stress/ -run TestTorture -stress.seed=%d)", seed, seed)
	cfg := stress.Config{
		Bin:           udmBin(),
		Seed:          seed,
		Ops:           *opsFlag,
		Workers:       *workersFlag,
		Slots:         *slotsFlag,
		KillEvery:     *killFlag,
		MaxViolations: *maxFlag,
	}
	if testutil.Race {
		cfg.CallBound, cfg.IOBound = 60*time.Second, 120*time.Second
	}
	if *verbose {
		cfg.Logf = t.Logf
	}
	rep, err := stress.Run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	t.Logf("%s", rep.Summary())
	if rep.Restarts == 0 || rep.Verified == 0 || rep.FileBlocks == 0 {
		t.Errorf("seed %d: the run proved little: %d restarts, %d reads verified, %d file blocks verified",
			seed, rep.Restarts, rep.Verified, rep.FileBlocks)
	}
	if len(rep.Violations) == 0 && !*verbose {
		return
	}
	hist := rep.History
	if !*verbose && len(hist) > 120 {
		hist = hist[len(hist)-120:]
	}
	t.Logf("operation history (last %d):\n%s", len(hist), strings.Join(hist, "\n"))
	if len(rep.Violations) > 0 {
		t.Logf("daemon log tail:\n%s", rep.LogTail)
		if f, err := os.CreateTemp("", fmt.Sprintf("udm-stress-%d-*.txt", seed)); err == nil {
			fmt.Fprintf(f, "%s\n", rep.Summary())
			for _, v := range rep.Violations {
				fmt.Fprintf(f, "=== %s\n", v)
			}
			fmt.Fprintf(f, "=== history\n%s\n=== daemon log tail\n%s\n", strings.Join(rep.History, "\n"), rep.LogTail)
			f.Close()
			t.Logf("the whole report (violations in full, the history, the daemon log tail): %s", f.Name())
		}
		t.Errorf("seed %d: %d invariant violations (rerun with -stress.seed=%d); first: %s",
			seed, len(rep.Violations), seed, firstLine(rep.Violations[0].String()))
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
