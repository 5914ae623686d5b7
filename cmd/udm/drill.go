package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"udm/drill"
	"udm/perf"
)

// runDrill runs failover drills: built-in scenarios or schedule files.
func runDrill(args []string) error {
	fs := newFlags("drill", "drill [flags] SCENARIO|FILE...")
	fs.synopsis = append(fs.synopsis, "drill --all [--full] [flags]", "drill --list | --print SCENARIO | --actions")
	fs.about = joinLines(
		"Runs a verified workload against a multipath device of a udm daemon while",
		"a fault schedule plays, then prints a verdict (exit 1 on FAIL) and, with",
		"--out, writes NAME.txt, NAME.json and NAME.svg. A SCENARIO is a built-in",
		"(udm drill --list); a FILE is a schedule (udm drill --print NAME shows",
		"one, udm drill --actions lists what it may do).")
	list := fs.Bool("list", false, "list the built-in scenarios and what each must show")
	printS := fs.String("print", "", "print a built-in scenario's schedule (with --full: its full form)")
	listActions := fs.Bool("actions", false, "list the actions a schedule may use")
	all := fs.Bool("all", false, "run every built-in scenario")
	full := fs.Bool("full", false, "run the full form of built-in scenarios (the short form takes seconds)")
	remote := fs.Bool("remote", false, "run the remote drills (remote-path-cut and remote-path-cut-tls: NBD paths in network namespaces, plaintext and TLS)")
	useFio := fs.Bool("fio", false, "run fio (nbd engine, verify=crc32c) as the workload instead of udm's perf")
	fs.withControl("use a running daemon on this control socket instead of starting one (no restart action)")
	out := fs.String("out", "", "write the report files (NAME.txt, NAME.json, NAME.svg) to this directory")
	asJSON := fs.Bool("json", false, "print the report as JSON instead of the summary")
	size := fs.String("size", "", "backing file size (default 64m; full form 256m)")
	bs := fs.String("bs", "4k", "block size")
	depth := fs.Int("iodepth", 16, "queue depth")
	rw := fs.String("rw", "randrw", "workload: randrw, randwrite, randread, write, read")
	mix := fs.Int("rwmixread", 50, "percent reads for randrw")
	seed := fs.Uint64("seed", 0, "random seed (default: from the clock; printed in the report)")
	loops := fs.Int("loops", 2, "uring loops of the daemon the drill starts")
	keep := fs.Bool("keep", false, "keep the scratch directory (state, logs)")
	quiet := fs.Bool("quiet", false, "no progress lines")
	targets, err := fs.parse(args, 0, -1)
	if err != nil {
		return err
	}
	switch {
	case *list:
		drill.List(os.Stdout)
		return nil
	case *printS != "":
		s, ok := drill.Lookup(*printS)
		if !ok {
			return usageErr{error: fmt.Errorf("no built-in scenario %q (udm drill --list)", *printS)}
		}
		fmt.Print(s.Schedule(*full))
		return nil
	case *listActions:
		for _, a := range drill.Actions() {
			fmt.Println(a)
		}
		return nil
	}
	opt := drill.Options{Control: *fs.control, Fio: *useFio, Loops: *loops, Keep: *keep}
	if !*quiet {
		opt.Log = os.Stderr
	}
	if *size != "" {
		if opt.Size, err = perf.ParseSize(*size); err != nil {
			return usageErr{error: err}
		}
	}
	b, err := perf.ParseSize(*bs)
	if err != nil {
		return usageErr{error: err}
	}
	opt.Workload = drill.Workload{RW: *rw, BlockSize: int(b), Depth: *depth, ReadPct: *mix, Seed: *seed}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	batch := drill.Batch{Targets: targets, All: *all, Remote: *remote, Full: *full}
	err = batch.Run(ctx, opt, drill.Output{Stdout: os.Stdout, Stderr: os.Stderr, JSON: *asJSON, Dir: *out, Quiet: *quiet})
	if errors.Is(err, drill.ErrNothingToRun) {
		var u strings.Builder
		fs.printUsage(&u)
		return usageErr{fmt.Errorf("drill: %w", err), u.String()}
	}
	return err
}
