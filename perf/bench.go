package perf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"udm/dm"
	"udm/multipath"
)

// What `udm bench` runs: one workload against one target, the
// side-by-side suites, and the floor server. cmd/udm parses the flags
// into these and calls them.

// Target names what a single bench run drives: exactly one of Raw,
// Table or NBD.
type Target struct {
	// Raw is a file or block device driven directly through the loop.
	Raw string
	// Table is a dm table in the kernel's syntax (lines separated by
	// newlines or ';'), driven in process with every target udm has
	// (multipath included), bypassing NBD.
	Table string
	// NBD is an export URI driven through udm's NBD client over Conns
	// connections.
	NBD   string
	Conns int
}

// ErrNoTarget is returned by Open for a Target that names nothing.
var ErrNoTarget = errors.New("name a target: --raw PATH, --table 'LINE' or --nbd URI")

// Open opens the target's engine. For a table it also starts cfg.Loops
// loops (the device's) and sets cfg.LoopSet to them.
func (t Target) Open(cfg *Config) (Engine, error) {
	switch {
	case t.Raw != "":
		return NewFileEngine(t.Raw)
	case t.Table != "":
		targets := dm.DefaultTargets()
		if err := multipath.Register(targets); err != nil {
			return nil, err
		}
		eng, loops, err := TableEngine(strings.ReplaceAll(t.Table, ";", "\n"), cfg.Loops, targets)
		if err != nil {
			return nil, err
		}
		cfg.LoopSet = loops
		return eng, nil
	case t.NBD != "":
		return NewNBDEngine(t.NBD, t.Conns)
	}
	return nil, ErrNoTarget
}

// ProgressLine returns a Config.Progress that rewrites one line on w.
// Done ends the line.
func ProgressLine(w io.Writer) (progress func(Progress), done func()) {
	return func(p Progress) {
			fmt.Fprintf(w, "\r%6.1fs  %9.0f IOPS  p99 %8.1fus  errors %d   ", p.Elapsed.Seconds(), p.IOPS, Micros(p.P99), p.Errors)
		}, func() {
			fmt.Fprintln(w)
		}
}

// Bench runs cfg against t and prints the result on out (a table, or
// JSON). It fails if any I/O failed or any read did not verify.
func Bench(ctx context.Context, t Target, cfg Config, out io.Writer, asJSON bool) error {
	eng, err := t.Open(&cfg)
	if err != nil {
		return err
	}
	defer eng.Close()
	res, err := Run(ctx, cfg, eng)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	WriteTable(out, []*Result{res})
	for _, f := range res.VerifyFailures {
		fmt.Fprintln(out, "verify:", f)
	}
	if res.Errors > 0 || len(res.VerifyFailures) > 0 {
		return fmt.Errorf("%d I/O errors, %d verification failures", res.Errors, len(res.VerifyFailures))
	}
	return nil
}

// SuiteOptions configure a side-by-side suite run (udm bench matrix).
type SuiteOptions struct {
	// Suite is "full" (make bench) or "uring" (the loop against fio).
	Suite string
	// Self is the udm binary the suite runs.
	Self string
	// Reps, Runtime and Ramp are per run.
	Reps          int
	Runtime, Ramp time.Duration
	// Size of the backing file.
	Size int64
	// Loops is udm serve --loops (0: its default); full suite only.
	Loops int
	// Only and Workloads keep the contenders and workloads whose names
	// contain one of their substrings (all if empty); full suite only.
	Only, Workloads []string
	// Variants are extra udm serve argument strings, each run as one
	// more contender; full suite only.
	Variants []string
	// Out is the directory for the JSON report, and for the plots
	// unless Plots is set.
	Out string
	// Plots is the directory for the latency plots the markdown report
	// links (default: Out).
	Plots string
	// MD, if set, is where the markdown report (BENCHMARKS.md) goes;
	// Command is the command line it says made it.
	MD, Command string
	// Log gets the progress lines.
	Log io.Writer
}

// RunSuite runs a suite, prints its markdown report (and, for the full
// suite, whether each target was met) on out, and writes the files
// opt.MD and opt.Out ask for. It fails if any run failed.
func RunSuite(ctx context.Context, opt SuiteOptions, out io.Writer) error {
	var m *Matrix
	var ratios func([]string) []Ratio
	switch opt.Suite {
	case "uring":
		file, loopdev, cleanup, err := SuiteTargets(opt.Size)
		if err != nil {
			return err
		}
		defer cleanup()
		m, ratios = UringSuite(opt.Self, file, loopdev), UringRatios
	case "full":
		dir, err := os.MkdirTemp("", "udm-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		s, err := FullSuite(FullOptions{Self: opt.Self, Dir: dir, Size: opt.Size, Loops: opt.Loops, Only: opt.Only, Workloads: opt.Workloads, Variants: opt.Variants})
		if err != nil {
			return err
		}
		defer s.Close()
		m, ratios = s.Matrix, FullRatios
	default:
		return fmt.Errorf("unknown suite %q (full, uring)", opt.Suite)
	}
	names := make([]string, len(m.Contenders))
	for i, c := range m.Contenders {
		names[i] = c.Name
	}
	m.Reps, m.Runtime, m.Ramp, m.Log = opt.Reps, opt.Runtime, opt.Ramp, opt.Log
	rep, err := m.Run(ctx)
	if rep == nil {
		return err
	}
	rep.Markdown(out, ratios(names))
	if opt.Suite == "full" {
		for _, c := range EvaluateTargets(rep) {
			fmt.Fprintf(out, "target %-70s met=%v  %s\n", c.Target, c.Pass && !c.Missing, c.Detail)
		}
	}
	if opt.MD != "" {
		if err := WriteBenchmarks(rep, opt.MD, opt.Out, opt.Plots, opt.Command); err != nil {
			return err
		}
	} else if opt.Out != "" {
		if err := os.MkdirAll(opt.Out, 0o755); err != nil {
			return err
		}
		if err := rep.WriteJSON(opt.Out + "/report-" + opt.Suite + ".json"); err != nil {
			return err
		}
	}
	if len(rep.Failures) > 0 {
		return fmt.Errorf("%d runs failed", len(rep.Failures))
	}
	return err
}

// ListenFloor serves file with the floor server (ServeFloor) on the TCP
// address listen or the Unix socket sock (replacing a stale one) until
// the listener fails.
func ListenFloor(listen, sock, file string) error {
	network, addr := "tcp", listen
	if sock != "" {
		network, addr = "unix", sock
		os.Remove(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	return ServeFloor(ln, file)
}

// ShellQuote is args as one shell command line (for the report to say
// how it was made).
func ShellQuote(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = a
		if strings.ContainsAny(a, " '\"") {
			quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(quoted, " ")
}
