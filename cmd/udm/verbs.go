package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"udm/daemon"
)

// The dmsetup-like verbs and the multipathd-style views. Each parses its
// flags and calls daemon.CLI, which talks to the daemon and prints.

// usageErr marks a command-line mistake (exit status 2).
type usageErr struct{ error }

// verbFlags is a verb's flag set plus the flags every verb takes.
type verbFlags struct {
	*flag.FlagSet
	synopsis string
	control  *string
}

func newVerb(name, synopsis string) *verbFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	v := &verbFlags{FlagSet: fs, synopsis: synopsis}
	v.control = fs.String("control", "", "control socket (default $"+daemon.Env+", else "+daemon.Defaults("").Control+")")
	return v
}

// parse parses args, allowing flags after positional arguments (`udm
// remove NAME -f`); "--" ends the flags. It returns the positional
// arguments and checks their count.
func (v *verbFlags) parse(args []string, minPos, maxPos int) ([]string, error) {
	var pos []string
	for {
		if err := v.Parse(args); err != nil {
			return nil, v.usage(err)
		}
		rest := v.Args()
		if len(rest) == 0 {
			break
		}
		if used := len(args) - len(rest); used > 0 && args[used-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	return pos, v.count(pos, minPos, maxPos)
}

func (v *verbFlags) count(pos []string, minPos, maxPos int) error {
	switch {
	case len(pos) < minPos:
		return usageErr{fmt.Errorf("%s: missing arguments (usage: udm %s)", v.Name(), v.synopsis)}
	case maxPos >= 0 && len(pos) > maxPos:
		return usageErr{fmt.Errorf("%s: unexpected argument %q (usage: udm %s)", v.Name(), pos[maxPos], v.synopsis)}
	}
	return nil
}

func (v *verbFlags) usage(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stdout, "usage: udm %s\n", v.synopsis)
		v.SetOutput(os.Stdout)
		v.PrintDefaults()
		return errHelp
	}
	return usageErr{fmt.Errorf("%s: %v (udm %s -h for usage)", v.Name(), err, v.Name())}
}

var errHelp = errors.New("help shown")

func (v *verbFlags) cli() daemon.CLI {
	return daemon.CLI{C: daemon.NewClient(daemon.ControlSocket(*v.control)), Out: os.Stdout}
}

// verbContext ends on SIGINT or SIGTERM (udm wait can be interrupted).
func verbContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// tableSource reads the table a verb was given: --table, --table-file,
// or "-" (standard input).
type tableSource struct {
	line, file *string
}

func (v *verbFlags) tableFlags() tableSource {
	return tableSource{
		line: v.String("table", "", "the table, in the kernel's syntax"),
		file: v.String("table-file", "", "read the table from this file"),
	}
}

func (t tableSource) read(v *verbFlags, pos []string) (string, error) {
	stdin := len(pos) > 1 && pos[1] == "-"
	if len(pos) > 1 && !stdin {
		return "", usageErr{fmt.Errorf("%s: unexpected argument %q (usage: udm %s)", v.Name(), pos[1], v.synopsis)}
	}
	n := 0
	for _, b := range []bool{*t.line != "", *t.file != "", stdin} {
		if b {
			n++
		}
	}
	if n != 1 {
		return "", usageErr{fmt.Errorf("%s: give the table once: --table 'LINE', --table-file FILE, or - for standard input", v.Name())}
	}
	switch {
	case *t.line != "":
		return *t.line, nil
	case *t.file != "":
		b, err := os.ReadFile(*t.file)
		return string(b), err
	}
	b, err := io.ReadAll(os.Stdin)
	return string(b), err
}

func runCreate(args []string) error {
	v := newVerb("create", "create NAME (--table 'LINE' | --table-file FILE | -) [--uuid UUID] [-r|--readonly]")
	src := v.tableFlags()
	uuid := v.String("uuid", "", "the device's UUID")
	ro := v.Bool("readonly", false, "make the device read-only")
	v.BoolVar(ro, "r", false, "short for --readonly")
	pos, err := v.parse(args, 1, 2)
	if err != nil {
		return err
	}
	table, err := src.read(v, pos)
	if err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	return v.cli().Create(ctx, pos[0], *uuid, table, *ro)
}

func runLoad(args []string) error {
	v := newVerb("load", "load NAME (--table 'LINE' | --table-file FILE | -)")
	src := v.tableFlags()
	pos, err := v.parse(args, 1, 2)
	if err != nil {
		return err
	}
	table, err := src.read(v, pos)
	if err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	return v.cli().Load(ctx, pos[0], table)
}

// oneName runs a verb that takes exactly one device name.
func oneName(name, synopsis string, args []string, setup func(v *verbFlags), run func(ctx context.Context, c daemon.CLI, name string) error) error {
	v := newVerb(name, synopsis)
	if setup != nil {
		setup(v)
	}
	pos, err := v.parse(args, 1, 1)
	if err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	return run(ctx, v.cli(), pos[0])
}

// optName runs a verb that takes an optional device name (all devices
// without one).
func optName(name, synopsis string, args []string, setup func(v *verbFlags), run func(ctx context.Context, c daemon.CLI, name string) error) error {
	v := newVerb(name, synopsis)
	if setup != nil {
		setup(v)
	}
	pos, err := v.parse(args, 0, 1)
	if err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	n := ""
	if len(pos) == 1 {
		n = pos[0]
	}
	return run(ctx, v.cli(), n)
}

func runClear(args []string) error {
	return oneName("clear", "clear NAME", args, nil, func(ctx context.Context, c daemon.CLI, n string) error {
		return c.Clear(ctx, n)
	})
}

func runSuspend(args []string) error {
	var noflush *bool
	return oneName("suspend", "suspend [--noflush] NAME", args, func(v *verbFlags) {
		noflush = v.Bool("noflush", false, "let targets push back held I/O instead of failing it")
	}, func(ctx context.Context, c daemon.CLI, n string) error {
		return c.Suspend(ctx, n, *noflush)
	})
}

func runResume(args []string) error {
	var noflush *bool
	return oneName("resume", "resume [--noflush] NAME", args, func(v *verbFlags) {
		noflush = v.Bool("noflush", false, "suspend with noflush before swapping in the inactive table")
	}, func(ctx context.Context, c daemon.CLI, n string) error {
		return c.Resume(ctx, n, *noflush)
	})
}

func runRemove(args []string) error {
	var force, deferred *bool
	return oneName("remove", "remove [-f|--force] [--deferred] NAME", args, func(v *verbFlags) {
		force = v.Bool("force", false, "remove even if open: swap in an error table first")
		v.BoolVar(force, "f", false, "short for --force")
		deferred = v.Bool("deferred", false, "if open, remove on last close")
	}, func(ctx context.Context, c daemon.CLI, n string) error {
		return c.Remove(ctx, n, *force, *deferred)
	})
}

func runLs(args []string) error {
	v := newVerb("ls", "ls")
	if _, err := v.parse(args, 0, 0); err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	return v.cli().Ls(ctx)
}

func runTable(args []string) error {
	var inactive *bool
	return optName("table", "table [--inactive] [NAME]", args, func(v *verbFlags) {
		inactive = v.Bool("inactive", false, "show the inactive table")
	}, func(ctx context.Context, c daemon.CLI, n string) error {
		return c.Table(ctx, n, *inactive)
	})
}

func runStatus(args []string) error {
	return optName("status", "status [NAME]", args, nil, func(ctx context.Context, c daemon.CLI, n string) error {
		return c.Status(ctx, n)
	})
}

func runInfo(args []string) error {
	return optName("info", "info [NAME]", args, nil, func(ctx context.Context, c daemon.CLI, n string) error {
		return c.Info(ctx, n)
	})
}

func runMessage(args []string) error {
	v := newVerb("message", "message NAME SECTOR MESSAGE...")
	// Flags only before NAME: the message's own words may start with "-".
	if err := v.Parse(args); err != nil {
		return v.usage(err)
	}
	pos := v.Args()
	if err := v.count(pos, 3, -1); err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	return v.cli().Message(ctx, pos[0], pos[1], pos[2:])
}

func runWait(args []string) error {
	v := newVerb("wait", "wait NAME [EVENT_NR]")
	pos, err := v.parse(args, 1, 2)
	if err != nil {
		return err
	}
	ev := ""
	if len(pos) == 2 {
		ev = pos[1]
	}
	ctx, cancel := verbContext()
	defer cancel()
	return v.cli().Wait(ctx, pos[0], ev)
}

func runTargets(args []string) error {
	v := newVerb("targets", "targets")
	if _, err := v.parse(args, 0, 0); err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	return v.cli().Targets(ctx)
}

// runShow is multipathd's `show paths|maps|topology`.
func runShow(args []string) error {
	v := newVerb("show", "show paths|maps|topology")
	pos, err := v.parse(args, 1, 1)
	if err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	c := v.cli()
	switch pos[0] {
	case "paths":
		return c.ShowPaths(ctx)
	case "maps":
		return c.ShowMaps(ctx)
	case "topology":
		return c.ShowTopology(ctx)
	}
	return usageErr{fmt.Errorf("show: unknown view %q (paths, maps, topology)", pos[0])}
}

// pathVerb is `fail path DEV` and `reinstate path DEV`.
func pathVerb(name string, fail bool) func(args []string) error {
	return func(args []string) error {
		v := newVerb(name, name+" path DEV")
		pos, err := v.parse(args, 2, 2)
		if err != nil {
			return err
		}
		if pos[0] != "path" {
			return usageErr{fmt.Errorf("%s: want %q, got %q (usage: udm %s)", name, "path", pos[0], v.synopsis)}
		}
		ctx, cancel := verbContext()
		defer cancel()
		if fail {
			return v.cli().FailPath(ctx, pos[1])
		}
		return v.cli().ReinstatePath(ctx, pos[1])
	}
}

// runChecker shows or changes a multipath device's path checker settings.
func runChecker(args []string) error {
	v := newVerb("checker", "checker NAME [KEY=VALUE...]  (polling_interval, max_polling_interval, check_timeout, no_path_retry, failback, io_deadline)")
	pos, err := v.parse(args, 1, -1)
	if err != nil {
		return err
	}
	ctx, cancel := verbContext()
	defer cancel()
	return v.cli().Checker(ctx, pos[0], pos[1:])
}
