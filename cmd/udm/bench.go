package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"udm/dm"
	"udm/multipath"
	"udm/perf"
	"udm/uring"
)

func runBench(args []string) error {
	if len(args) > 0 && args[0] == "matrix" {
		return runMatrix(args[1:])
	}
	if len(args) > 0 && args[0] == "floor-server" {
		return runFloorServer(args[1:])
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	raw := fs.String("raw", "", "file or block device to drive directly through the loop")
	table := fs.String("table", "", "dm table (kernel syntax, lines separated by newlines or ';') to drive in process, bypassing NBD")
	nbdURI := fs.String("nbd", "", "NBD export to drive through udm's NBD client (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)")
	conns := fs.Int("conns", 1, "client connections for --nbd (loops share them round-robin)")
	rw := fs.String("rw", "randread", "workload: read, write, randread, randwrite, randrw")
	bs := fs.String("bs", "4k", "block size")
	depth := fs.Int("iodepth", 1, "queue depth per loop")
	loops := fs.Int("loops", 1, "loops (threads) sharing the work")
	runtime := fs.Duration("runtime", 10*time.Second, "how long to run")
	ramp := fs.Duration("ramp", 0, "warm-up excluded from the results")
	total := fs.String("total", "", "stop after this many bytes instead")
	mix := fs.Int("rwmixread", 70, "percent reads for randrw")
	seed := fs.Uint64("seed", 1, "random seed")
	verify := fs.Bool("verify", false, "write verifiable blocks and check every read")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	quiet := fs.Bool("quiet", false, "no progress line")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bsz, err := perf.ParseSize(*bs)
	if err != nil {
		return err
	}
	cfg := perf.Config{RW: *rw, BlockSize: int(bsz), Depth: *depth, Loops: *loops, Duration: *runtime,
		Ramp: *ramp, ReadPct: *mix, Seed: *seed, Verify: *verify}
	if *total != "" {
		n, err := perf.ParseSize(*total)
		if err != nil {
			return err
		}
		cfg.TotalBytes, cfg.Duration = n, 0
	}
	var eng perf.Engine
	switch {
	case *raw != "":
		eng, err = perf.NewFileEngine(*raw)
	case *table != "":
		var loops []*uring.Loop
		targets := dm.DefaultTargets()
		if err := multipath.Register(targets); err != nil {
			return err
		}
		eng, loops, err = perf.TableEngine(strings.ReplaceAll(*table, ";", "\n"), cfg.Loops, targets)
		cfg.LoopSet = loops
	case *nbdURI != "":
		eng, err = perf.NewNBDEngine(*nbdURI, *conns)
	default:
		return fmt.Errorf("name a target: --raw PATH, --table 'LINE' or --nbd URI")
	}
	if err != nil {
		return err
	}
	defer eng.Close()
	if !*quiet {
		cfg.Progress = func(p perf.Progress) {
			fmt.Fprintf(os.Stderr, "\r%6.1fs  %9.0f IOPS  p99 %8.1fus  errors %d   ", p.Elapsed.Seconds(), p.IOPS, perf.Micros(p.P99), p.Errors)
		}
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := perf.Run(ctx, cfg, eng)
	if !*quiet {
		fmt.Fprintln(os.Stderr)
	}
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	perf.WriteTable(os.Stdout, []*perf.Result{res})
	for _, f := range res.VerifyFailures {
		fmt.Println("verify:", f)
	}
	if res.Errors > 0 || len(res.VerifyFailures) > 0 {
		return fmt.Errorf("%d I/O errors, %d verification failures", res.Errors, len(res.VerifyFailures))
	}
	return nil
}

// runMatrix runs a side-by-side suite and writes its report.
func runMatrix(args []string) error {
	fs := flag.NewFlagSet("bench matrix", flag.ContinueOnError)
	suite := fs.String("suite", "full", "suite: full (make bench) or uring (the loop against fio)")
	reps := fs.Int("reps", 3, "repetitions (order rotated each time)")
	runtime := fs.Duration("runtime", 5*time.Second, "measured time per run")
	ramp := fs.Duration("ramp", time.Second, "warm-up per run")
	out := fs.String("out", "", "directory for the JSON report, and the plots unless --plots (make bench: perf/out)")
	plots := fs.String("plots", "", "directory for the latency plots the markdown report links (default: --out; make bench: perf/results)")
	md := fs.String("md", "", "write the markdown report here (full suite: BENCHMARKS.md)")
	size := fs.String("size", "1g", "backing file size")
	loops := fs.Int("loops", 0, "udm serve --loops (0: its default)")
	only := fs.String("only", "", "comma-separated substrings: run only matching contenders")
	workloads := fs.String("workloads", "", "comma-separated substrings: run only matching workloads")
	var variants []string
	fs.Func("variant", "full suite: also run a udm serve with these extra arguments (e.g. '--gather 0'), linear export only; repeatable", func(v string) error {
		variants = append(variants, v)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	sz, err := perf.ParseSize(*size)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	split := func(s string) []string {
		if s == "" {
			return nil
		}
		return strings.Split(s, ",")
	}
	var m *perf.Matrix
	var ratios []perf.Ratio
	switch *suite {
	case "uring":
		file, loopdev, cleanup, err := perf.SuiteTargets(sz)
		if err != nil {
			return err
		}
		defer cleanup()
		m = perf.UringSuite(self, file, loopdev)
		names := make([]string, len(m.Contenders))
		for i, c := range m.Contenders {
			names[i] = c.Name
		}
		ratios = perf.UringRatios(names)
	case "full":
		dir, err := os.MkdirTemp("", "udm-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		s, err := perf.FullSuite(perf.FullOptions{Self: self, Dir: dir, Size: sz, Loops: *loops, Only: split(*only), Workloads: split(*workloads), Variants: variants})
		if err != nil {
			return err
		}
		defer s.Close()
		m = s.Matrix
		names := make([]string, len(m.Contenders))
		for i, c := range m.Contenders {
			names[i] = c.Name
		}
		ratios = perf.FullRatios(names)
	default:
		return fmt.Errorf("unknown suite %q (full, uring)", *suite)
	}
	m.Reps, m.Runtime, m.Ramp, m.Log = *reps, *runtime, *ramp, os.Stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := m.Run(ctx)
	if rep == nil {
		return err
	}
	rep.Markdown(os.Stdout, ratios)
	if *suite == "full" {
		for _, c := range perf.EvaluateTargets(rep) {
			fmt.Printf("target %-70s met=%v  %s\n", c.Target, c.Pass && !c.Missing, c.Detail)
		}
	}
	if *md != "" {
		quoted := make([]string, len(args))
		for i, a := range args {
			quoted[i] = a
			if strings.ContainsAny(a, " '\"") {
				quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
			}
		}
		cmdline := "udm bench matrix " + strings.Join(quoted, " ")
		if err := perf.WriteBenchmarks(rep, *md, *out, *plots, cmdline); err != nil {
			return err
		}
	} else if *out != "" {
		if err := os.MkdirAll(*out, 0o755); err != nil {
			return err
		}
		if err := rep.WriteJSON(*out + "/report-" + *suite + ".json"); err != nil {
			return err
		}
	}
	if len(rep.Failures) > 0 {
		return fmt.Errorf("%d runs failed", len(rep.Failures))
	}
	return err
}

// runFloorServer: `udm bench floor-server (--listen ADDR | --unix PATH)
// FILE`, the minimal busy-polling NBD server that make bench measures as
// a reference (perf.ServeFloor). It runs until killed.
func runFloorServer(args []string) error {
	fs := flag.NewFlagSet("bench floor-server", flag.ContinueOnError)
	listen := fs.String("listen", "", "TCP address to listen on (HOST:PORT)")
	sock := fs.String("unix", "", "Unix socket to listen on")
	if err := fs.Parse(args); err != nil {
		return usageErr{err}
	}
	if fs.NArg() != 1 || (*listen == "") == (*sock == "") {
		return usageErr{fmt.Errorf("usage: udm bench floor-server (--listen ADDR | --unix PATH) FILE")}
	}
	network, addr := "tcp", *listen
	if *sock != "" {
		network, addr = "unix", *sock
		os.Remove(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	return perf.ServeFloor(ln, fs.Arg(0))
}
