package drill

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestBatchPolicy(t *testing.T) {
	out := Output{Stdout: io.Discard, Stderr: io.Discard}
	if err := (Batch{}).Run(context.Background(), Options{}, out); !errors.Is(err, ErrNothingToRun) {
		t.Fatalf("an empty batch: %v", err)
	}
	err := (Batch{Targets: []string{"/nonexistent/x.drill"}}).Run(context.Background(), Options{}, out)
	if err == nil || !strings.Contains(err.Error(), "neither a built-in scenario") {
		t.Fatalf("a missing schedule file: %v", err)
	}
	if DefaultSize(false) != 64<<20 || DefaultSize(true) != 256<<20 {
		t.Fatalf("default sizes %d, %d", DefaultSize(false), DefaultSize(true))
	}
	var noFio *Scenario
	for _, s := range Scenarios {
		if s.NoFio != "" {
			noFio = s
			break
		}
	}
	if noFio == nil {
		t.Fatal("no scenario has a NoFio reason")
	}
	if why := (Batch{All: true}).skip(noFio, Options{Fio: true}); !strings.Contains(why, noFio.NoFio) {
		t.Errorf("--all --fio runs %s (skip reason %q)", noFio.Name, why)
	}
	// Named, a scenario runs: a drill that cannot run fails instead of
	// being skipped.
	if why := (Batch{Targets: []string{noFio.Name}}).skip(noFio, Options{Fio: true}); why != "" {
		t.Errorf("a named scenario is skipped: %q", why)
	}
	if why := (Batch{All: true}).skip(noFio, Options{}); why != "" {
		t.Errorf("--all without --fio skips %s: %q", noFio.Name, why)
	}
}
