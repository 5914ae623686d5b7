package main

import (
	"context"
	"flag"
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
	fs := flag.NewFlagSet("drill", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(os.Stderr, `usage: udm drill [flags] SCENARIO|FILE...
       udm drill --all [--full] [flags]
       udm drill --list | --print SCENARIO | --actions

Runs a verified workload against a multipath device of a udm daemon while
a fault schedule plays, then prints a verdict (exit 1 on FAIL) and, with
--out, writes NAME.txt, NAME.json and NAME.svg. A SCENARIO is a built-in
(udm drill --list); a FILE is a schedule (udm drill --print NAME shows
one, udm drill --actions lists what it may do).

flags:
`)
		fs.PrintDefaults()
	}
	list := fs.Bool("list", false, "list the built-in scenarios and what each must show")
	printS := fs.String("print", "", "print a built-in scenario's schedule (with --full: its full form)")
	listActions := fs.Bool("actions", false, "list the actions a schedule may use")
	all := fs.Bool("all", false, "run every built-in scenario")
	full := fs.Bool("full", false, "run the full form of built-in scenarios (the short form takes seconds)")
	remote := fs.Bool("remote", false, "run the remote drill (remote-path-cut: NBD paths in network namespaces)")
	useFio := fs.Bool("fio", false, "run fio (nbd engine, verify=crc32c) as the workload instead of udm's perf")
	control := fs.String("control", "", "use a running daemon on this control socket instead of starting one (no restart action)")
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
	// Flags may come after the scenarios too.
	var targets []string
	for {
		if err := fs.Parse(args); err != nil {
			if err == flag.ErrHelp {
				return errHelp
			}
			return usageErr{err}
		}
		if fs.NArg() == 0 {
			break
		}
		targets = append(targets, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch {
	case *list:
		for _, s := range drill.Scenarios {
			fmt.Printf("%-28s %s\n", s.Name, s.Outcome)
			if s.NoFio != "" {
				fmt.Printf("%-28s (not with --fio: %s)\n", "", s.NoFio)
			}
		}
		return nil
	case *printS != "":
		s, ok := drill.Lookup(*printS)
		if !ok {
			return usageErr{fmt.Errorf("no built-in scenario %q (udm drill --list)", *printS)}
		}
		fmt.Print(s.Schedule(*full))
		return nil
	case *listActions:
		for _, a := range drill.Actions() {
			fmt.Println(a)
		}
		return nil
	}
	if *all {
		targets = append(targets, drill.Names()...)
	}
	if *remote {
		targets = append(targets, "remote-path-cut")
	}
	if len(targets) == 0 {
		fs.Usage()
		return usageErr{fmt.Errorf("drill: name a scenario or a schedule file (or --all, --remote)")}
	}
	opt := drill.Options{Control: *control, Fio: *useFio, Loops: *loops, Keep: *keep}
	if !*quiet {
		opt.Log = os.Stderr
	}
	sz := "64m"
	if *full {
		sz = "256m"
	}
	if *size != "" {
		sz = *size
	}
	n, err := perf.ParseSize(sz)
	if err != nil {
		return usageErr{err}
	}
	opt.Size = n
	b, err := perf.ParseSize(*bs)
	if err != nil {
		return usageErr{err}
	}
	opt.Workload = drill.Workload{RW: *rw, BlockSize: int(b), Depth: *depth, ReadPct: *mix, Seed: *seed}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var failed []string
	for _, t := range targets {
		var rep *drill.Report
		if sc, ok := drill.Lookup(t); ok {
			if *useFio && sc.NoFio != "" && *all {
				fmt.Fprintf(os.Stderr, "udm drill: %s skipped with --fio: %s\n", sc.Name, sc.NoFio)
				continue
			}
			if sc.Name == "remote-path-cut" && *all {
				if err := drill.NetnsAvailable(); err != nil {
					fmt.Fprintf(os.Stderr, "udm drill: %s skipped: %v\n", sc.Name, err)
					continue
				}
			}
			rep, err = drill.RunScenario(ctx, sc, *full, opt)
		} else {
			text, rerr := os.ReadFile(t)
			if rerr != nil {
				return fmt.Errorf("drill: %q is neither a built-in scenario (udm drill --list) nor a readable file: %v", t, rerr)
			}
			name := strings.TrimSuffix(baseName(t), ".drill")
			rep, err = drill.RunSchedule(ctx, name, string(text), opt)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", t, err)
		}
		if *asJSON {
			if err := rep.WriteJSON(os.Stdout); err != nil {
				return err
			}
		} else {
			rep.Summary(os.Stdout)
			fmt.Println()
		}
		if !rep.Pass() {
			failed = append(failed, rep.Name+": "+rep.Analysis.Reason)
			for name, log := range rep.Logs {
				lines := strings.Split(log, "\n")
				lines = lines[max(0, len(lines)-10):]
				fmt.Fprintf(os.Stderr, "--- end of %s's log (all of it with --keep, the rest in --json):\n%s\n", name, strings.Join(lines, "\n"))
			}
		}
		if *out != "" {
			files, err := rep.WriteFiles(*out)
			if err != nil {
				return err
			}
			if !*quiet {
				fmt.Fprintf(os.Stderr, "udm drill: wrote %s\n", strings.Join(files, ", "))
			}
		}
		if rep.Dir != "" {
			fmt.Fprintf(os.Stderr, "udm drill: scratch directory kept: %s\n", rep.Dir)
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("drill FAIL: %s", strings.Join(failed, "; "))
	}
	return nil
}

func baseName(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[i+1:]
	}
	return p
}
