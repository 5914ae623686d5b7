package main

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"udm/perf"
)

// benchContext ends on SIGINT or SIGTERM.
func benchContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func runBench(args []string) error {
	if globals.control != "" {
		return usageErr{error: errors.New("bench: --control does not apply (bench --nbd URI drives an export)")}
	}
	if len(args) > 0 && args[0] == "matrix" {
		return runMatrix(args[1:])
	}
	if len(args) > 0 && args[0] == "floor-server" {
		return runFloorServer(args[1:])
	}
	fs := newFlags("bench", "bench (--raw PATH | --table 'LINE' | --nbd URI) [flags]")
	fs.synopsis = append(fs.synopsis, "bench matrix [flags]   (udm bench matrix -h)", "bench floor-server (--listen ADDR | --unix PATH) FILE")
	var t perf.Target
	fs.StringVar(&t.Raw, "raw", "", "file or block device to drive directly through the loop")
	fs.StringVar(&t.Table, "table", "", "dm table (kernel syntax, lines separated by newlines or ';') to drive in process, bypassing NBD")
	fs.StringVar(&t.NBD, "nbd", "", "NBD export to drive through udm's NBD client (nbd://HOST:PORT/EXPORT or nbd+unix:///EXPORT?socket=PATH)")
	fs.IntVar(&t.Conns, "conns", 1, "client connections for --nbd (loops share them round-robin)")
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
	if _, err := fs.parse(args, 0, 0); err != nil {
		return err
	}
	bsz, err := perf.ParseSize(*bs)
	if err != nil {
		return usageErr{error: err}
	}
	cfg := perf.Config{RW: *rw, BlockSize: int(bsz), Depth: *depth, Loops: *loops, Duration: *runtime,
		Ramp: *ramp, ReadPct: *mix, Seed: *seed, Verify: *verify}
	if *total != "" {
		n, err := perf.ParseSize(*total)
		if err != nil {
			return usageErr{error: err}
		}
		cfg.TotalBytes, cfg.Duration = n, 0
	}
	if t == (perf.Target{Conns: t.Conns}) {
		return fs.misuse(perf.ErrNoTarget.Error())
	}
	// The progress line rewrites itself with \r: only for a person
	// watching (stdout and stderr terminals), never into a file or pipe.
	if !*quiet && isTerminal(os.Stdout) && isTerminal(os.Stderr) {
		var done func()
		cfg.Progress, done = perf.ProgressLine(os.Stderr)
		defer done()
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	ctx, stop := benchContext()
	defer stop()
	return perf.Bench(ctx, t, cfg, os.Stdout, *asJSON)
}

// runMatrix runs a side-by-side suite and writes its report.
func runMatrix(args []string) error {
	fs := newFlags("bench matrix", "bench matrix [flags]")
	fs.about = "Runs a side-by-side suite of contenders and workloads and prints its report."
	opt := perf.SuiteOptions{Log: os.Stderr, Command: "udm bench matrix " + perf.ShellQuote(args)}
	fs.StringVar(&opt.Suite, "suite", "full", "suite: full (make bench) or uring (the loop against fio)")
	fs.IntVar(&opt.Reps, "reps", 3, "repetitions (order rotated each time)")
	fs.DurationVar(&opt.Runtime, "runtime", 5*time.Second, "measured time per run")
	fs.DurationVar(&opt.Ramp, "ramp", time.Second, "warm-up per run")
	fs.StringVar(&opt.Out, "out", "", "directory for the JSON report, and the plots unless --plots (make bench: perf/out)")
	fs.StringVar(&opt.Plots, "plots", "", "directory for the latency plots the markdown report links (default: --out; make bench: perf/results)")
	fs.StringVar(&opt.MD, "md", "", "write the markdown report here (full suite: BENCHMARKS.md)")
	size := fs.String("size", "1g", "backing file size")
	fs.IntVar(&opt.Loops, "loops", 0, "udm serve --loops (0: its default)")
	only := fs.String("only", "", "comma-separated substrings: run only matching contenders")
	workloads := fs.String("workloads", "", "comma-separated substrings: run only matching workloads")
	fs.Func("variant", "full suite: also run a udm serve with these extra arguments (e.g. '--gather 0'), linear export only; repeatable", func(v string) error {
		opt.Variants = append(opt.Variants, v)
		return nil
	})
	if _, err := fs.parse(args, 0, 0); err != nil {
		return err
	}
	var err error
	if opt.Size, err = perf.ParseSize(*size); err != nil {
		return usageErr{error: err}
	}
	if opt.Self, err = os.Executable(); err != nil {
		return err
	}
	opt.Only, opt.Workloads = commaList(*only), commaList(*workloads)
	ctx, stop := benchContext()
	defer stop()
	return perf.RunSuite(ctx, opt, os.Stdout)
}

func commaList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// runFloorServer: `udm bench floor-server (--listen ADDR | --unix PATH)
// FILE`, the minimal busy-polling NBD server that make bench measures as
// a reference (perf.ServeFloor). It runs until killed.
func runFloorServer(args []string) error {
	fs := newFlags("bench floor-server", "bench floor-server (--listen ADDR | --unix PATH) FILE")
	fs.about = "Serves FILE over NBD with the minimal busy-polling server make bench measures as a floor."
	listen := fs.String("listen", "", "TCP address to listen on (HOST:PORT)")
	sock := fs.String("unix", "", "Unix socket to listen on")
	pos, err := fs.parse(args, 1, 1)
	if err != nil {
		return err
	}
	if (*listen == "") == (*sock == "") {
		return fs.misuse("give one of --listen and --unix")
	}
	return perf.ListenFloor(*listen, *sock, pos[0])
}
