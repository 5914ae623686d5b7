package drill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// What `udm drill` runs: a batch of built-in scenarios and schedule
// files, with the rules for which ones a batch skips and how the reports
// are printed.

// Batch is a list of drills to run.
type Batch struct {
	// Targets are built-in scenario names or schedule files.
	Targets []string
	// All adds every built-in scenario; those that cannot run here
	// (NoFio with Options.Fio, the remote drill without network
	// namespaces) are skipped with a note instead of failing.
	All bool
	// Remote adds the remote drills (remote-path-cut, remote-path-cut-tls).
	Remote bool
	// Full runs the full form of built-in scenarios.
	Full bool
}

// ErrNothingToRun is returned by Run for a batch without targets.
var ErrNothingToRun = errors.New("name a scenario or a schedule file (or --all, --remote)")

// DefaultSize is the backing file size of a drill: 64 MiB, 256 MiB for
// the full forms.
func DefaultSize(full bool) int64 {
	if full {
		return 256 << 20
	}
	return 64 << 20
}

// Output says how a batch reports.
type Output struct {
	// Stdout gets each report's summary (or JSON); Stderr the notes
	// (skips, files written, the end of a failed drill's logs).
	Stdout, Stderr io.Writer
	// JSON prints the reports as JSON instead of summaries.
	JSON bool
	// Dir, if set, receives each report's NAME.txt, NAME.json, NAME.svg.
	Dir string
	// Quiet leaves out the notes about files written.
	Quiet bool
}

// Run runs the batch's drills in order and prints their reports. It
// returns an error naming the drills that failed (after running them
// all), or the first error that kept a drill from running.
func (b Batch) Run(ctx context.Context, opt Options, out Output) error {
	targets := append([]string(nil), b.Targets...)
	if b.All {
		targets = append(targets, Names()...)
	}
	if b.Remote {
		targets = append(targets, "remote-path-cut", "remote-path-cut-tls")
	}
	if len(targets) == 0 {
		return ErrNothingToRun
	}
	if opt.Size == 0 {
		opt.Size = DefaultSize(b.Full)
	}
	var failed []string
	for _, t := range targets {
		if t == RealFSName {
			// In the process: its own loops, FUSE mount, loop device and ext4.
			rep, err := RealFS(ctx, RealFSOptions{Full: b.Full, Log: opt.Log})
			if err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			rep.Summary(out.Stdout)
			fmt.Fprintln(out.Stdout)
			if !rep.Pass {
				failed = append(failed, t+": "+rep.Reason)
			}
			continue
		}
		var rep *Report
		var err error
		if sc, ok := Lookup(t); ok {
			if why := b.skip(sc, opt); why != "" {
				fmt.Fprintf(out.Stderr, "udm drill: %s skipped%s\n", sc.Name, why)
				continue
			}
			rep, err = RunScenario(ctx, sc, b.Full, opt)
		} else {
			text, rerr := os.ReadFile(t)
			if rerr != nil {
				return fmt.Errorf("drill: %q is neither a built-in scenario (udm drill --list) nor a readable file: %v", t, rerr)
			}
			rep, err = RunSchedule(ctx, strings.TrimSuffix(filepath.Base(t), ".drill"), string(text), opt)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", t, err)
		}
		if err := out.print(rep); err != nil {
			return err
		}
		if !rep.Pass() {
			failed = append(failed, rep.Name+": "+rep.Analysis.Reason)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("drill FAIL: %s", strings.Join(failed, "; "))
	}
	return nil
}

// skip says why a batch with All leaves a scenario out ("" to run it):
// what it cannot do with fio, or why network namespaces are missing.
func (b Batch) skip(sc *Scenario, opt Options) string {
	if !b.All {
		return ""
	}
	if opt.Fio && sc.NoFio != "" {
		return " with --fio: " + sc.NoFio
	}
	if strings.HasPrefix(sc.Name, "remote-") {
		if err := NetnsAvailable(); err != nil {
			return ": " + err.Error()
		}
	}
	return ""
}

// print reports one drill: its summary or JSON, the end of its logs if it
// failed, the files written and the scratch directory kept.
func (o Output) print(rep *Report) error {
	if o.JSON {
		if err := rep.WriteJSON(o.Stdout); err != nil {
			return err
		}
	} else {
		rep.Summary(o.Stdout)
		fmt.Fprintln(o.Stdout)
	}
	if !rep.Pass() {
		for name, log := range rep.Logs {
			lines := strings.Split(log, "\n")
			lines = lines[max(0, len(lines)-10):]
			fmt.Fprintf(o.Stderr, "--- end of %s's log (all of it with --keep, the rest in --json):\n%s\n", name, strings.Join(lines, "\n"))
		}
	}
	if o.Dir != "" {
		files, err := rep.WriteFiles(o.Dir)
		if err != nil {
			return err
		}
		if !o.Quiet {
			fmt.Fprintf(o.Stderr, "udm drill: wrote %s\n", strings.Join(files, ", "))
		}
	}
	if rep.Dir != "" {
		fmt.Fprintf(o.Stderr, "udm drill: scratch directory kept: %s\n", rep.Dir)
	}
	return nil
}

// List prints the built-in scenarios and what each must show (udm drill
// --list).
func List(w io.Writer) {
	for _, s := range Scenarios {
		fmt.Fprintf(w, "%-28s %s\n", s.Name, s.Outcome)
		if s.NoFio != "" {
			fmt.Fprintf(w, "%-28s (not with --fio: %s)\n", "", s.NoFio)
		}
	}
	fmt.Fprintf(w, "%-28s %s\n", RealFSName, RealFSOutcome)
}
