package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"udm/daemon/api"
)

// The dmsetup-like verbs and the multipathd-style views. Each parses its
// flags and calls api.CLI, which talks to the daemon and prints.

// controlHelp describes the verbs' --control.
var controlHelp = "control socket (default $" + api.Env + ", else " + api.Defaults("").Control + ")"

// verb parses a daemon verb's command line — setup adds the verb's own
// flags, between minPos and maxPos positional arguments (maxPos < 0: no
// limit) — and calls run with a CLI on the daemon and the arguments. It
// runs until done or SIGINT/SIGTERM (udm wait can be interrupted).
func verb(name, synopsis string, args []string, minPos, maxPos int, setup func(v *verbFlags),
	run func(ctx context.Context, c api.CLI, pos []string) error) error {
	v := newFlags(name, synopsis).withControl(controlHelp)
	if setup != nil {
		setup(v)
	}
	pos, err := v.parse(args, minPos, maxPos)
	if err != nil {
		return err
	}
	return v.run(pos, run)
}

func (v *verbFlags) run(pos []string, run func(ctx context.Context, c api.CLI, pos []string) error) error {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	return run(ctx, api.CLI{C: api.NewClient(api.ControlSocket(*v.control)), Out: os.Stdout}, pos)
}

// optional is pos[i], or "" if there are fewer arguments.
func optional(pos []string, i int) string {
	if i < len(pos) {
		return pos[i]
	}
	return ""
}

// tableSource reads the table a verb was given: --table, --table-file,
// or "-" (standard input).
type tableSource struct {
	line, file *string
}

func (v *verbFlags) tableFlags() *tableSource {
	return &tableSource{
		line: v.String("table", "", "the table, in the kernel's syntax"),
		file: v.String("table-file", "", "read the table from this file"),
	}
}

func (t *tableSource) read(v *verbFlags, pos []string) (string, error) {
	stdin := len(pos) > 1 && pos[1] == "-"
	if len(pos) > 1 && !stdin {
		return "", v.misuse(fmt.Sprintf("unexpected argument %q", pos[1]))
	}
	n := 0
	for _, b := range []bool{*t.line != "", *t.file != "", stdin} {
		if b {
			n++
		}
	}
	if n != 1 {
		return "", usageErr{error: fmt.Errorf("%s: give the table once: --table 'LINE', --table-file FILE, or - for standard input", v.Name())}
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

// tableVerb is a verb that takes NAME and a table (create, load).
func tableVerb(name, synopsis string, args []string, setup func(v *verbFlags),
	run func(ctx context.Context, c api.CLI, name, table string) error) error {
	var src *tableSource
	var v *verbFlags
	return verb(name, synopsis, args, 1, 2, func(fv *verbFlags) {
		v, src = fv, fv.tableFlags()
		if setup != nil {
			setup(fv)
		}
	}, func(ctx context.Context, c api.CLI, pos []string) error {
		table, err := src.read(v, pos)
		if err != nil {
			return err
		}
		return run(ctx, c, pos[0], table)
	})
}

func runCreate(args []string) error {
	var uuid *string
	var ro *bool
	return tableVerb("create", "create NAME (--table 'LINE' | --table-file FILE | -) [--uuid UUID] [-r|--readonly]", args, func(v *verbFlags) {
		uuid = v.String("uuid", "", "the device's UUID")
		ro = v.Bool("readonly", false, "make the device read-only")
		v.BoolVar(ro, "r", false, "short for --readonly")
	}, func(ctx context.Context, c api.CLI, name, table string) error {
		return c.Create(ctx, name, *uuid, table, *ro)
	})
}

func runLoad(args []string) error {
	return tableVerb("load", "load NAME (--table 'LINE' | --table-file FILE | -)", args, nil, func(ctx context.Context, c api.CLI, name, table string) error {
		return c.Load(ctx, name, table)
	})
}

func runClear(args []string) error {
	return verb("clear", "clear NAME", args, 1, 1, nil, func(ctx context.Context, c api.CLI, pos []string) error {
		return c.Clear(ctx, pos[0])
	})
}

func runSuspend(args []string) error {
	return suspendVerb("suspend", "let targets push back held I/O instead of failing it", args, api.CLI.Suspend)
}

func runResume(args []string) error {
	return suspendVerb("resume", "suspend with noflush before swapping in the inactive table", args, api.CLI.Resume)
}

// suspendVerb is suspend or resume: [--noflush] NAME.
func suspendVerb(name, noflushHelp string, args []string, op func(c api.CLI, ctx context.Context, name string, noflush bool) error) error {
	var noflush *bool
	return verb(name, name+" [--noflush] NAME", args, 1, 1, func(v *verbFlags) {
		noflush = v.Bool("noflush", false, noflushHelp)
	}, func(ctx context.Context, c api.CLI, pos []string) error {
		return op(c, ctx, pos[0], *noflush)
	})
}

func runRemove(args []string) error {
	var force, deferred *bool
	return verb("remove", "remove [-f|--force] [--deferred] NAME", args, 1, 1, func(v *verbFlags) {
		force = v.Bool("force", false, "remove even if open: swap in an error table first")
		v.BoolVar(force, "f", false, "short for --force")
		deferred = v.Bool("deferred", false, "if open, remove on last close")
	}, func(ctx context.Context, c api.CLI, pos []string) error {
		return c.Remove(ctx, pos[0], *force, *deferred)
	})
}

func runLs(args []string) error {
	var tree *bool
	var out outFlags
	var v *verbFlags
	return verb("ls", "ls [--tree] [-o json]", args, 0, 0, func(fv *verbFlags) {
		v, out = fv, fv.outputFlags("json: print the devices' info as JSON")
		tree = fv.Bool("tree", false, "show what each device stacks on, as a tree")
	}, func(ctx context.Context, c api.CLI, _ []string) error {
		switch err := out.plainOnly(v); {
		case err != nil:
			return err
		case out.isJSON():
			return c.LsJSON(ctx)
		case *tree:
			return c.LsTree(ctx)
		}
		return c.Ls(ctx)
	})
}

func runTable(args []string) error {
	return linesVerb("table", "table [--inactive] [--target TYPE] [-o json] [NAME...]", args, true, api.CLI.TableLines)
}

func runStatus(args []string) error {
	return linesVerb("status", "status [--target TYPE] [-o json] [NAME...]", args, false, api.CLI.StatusLines)
}

func runInfo(args []string) error {
	var cols, noHead *bool
	var sep *string
	var out outFlags
	return verb("info", "info [-c [-o FIELDS] [--noheadings] [--separator S]] [-o json] [NAME...]", args, 0, -1, func(v *verbFlags) {
		cols = v.Bool("c", false, "one row per device, in columns (-o FIELDS picks them; -o help lists them)")
		v.BoolVar(cols, "C", false, "same as -c")
		v.BoolVar(cols, "columns", false, "same as -c")
		noHead = v.Bool("noheadings", false, "with -c: no heading line")
		sep = v.String("separator", "", "with -c: separate the fields with this instead of aligning them")
		out = v.outputFlags("json: print JSON; with -c, the fields to show (" + api.DefaultInfoFields + ")")
	}, func(ctx context.Context, c api.CLI, pos []string) error {
		switch {
		case out.isJSON():
			return c.InfoJSON(ctx, pos)
		case *cols && *out.o == "help":
			_, err := fmt.Fprint(os.Stdout, api.InfoFieldsHelp())
			return err
		case *cols:
			return c.InfoColumns(ctx, pos, api.ColumnOpts{Fields: *out.o, NoHeadings: *noHead, Separator: *sep})
		case *out.o != "":
			return usageErr{error: fmt.Errorf("info: -o takes json, or fields with -c")}
		}
		return c.InfoNames(ctx, pos)
	})
}

func runMessage(args []string) error {
	v := newFlags("message", "message NAME SECTOR MESSAGE...").withControl(controlHelp)
	// Flags only before NAME: the message's own words may start with "-".
	pos, err := v.parseLeading(args, 3)
	if err != nil {
		return err
	}
	return v.run(pos, func(ctx context.Context, c api.CLI, pos []string) error {
		return c.Message(ctx, pos[0], pos[1], pos[2:])
	})
}

func runWait(args []string) error {
	return verb("wait", "wait NAME [EVENT_NR]", args, 1, 2, nil, func(ctx context.Context, c api.CLI, pos []string) error {
		return c.Wait(ctx, pos[0], optional(pos, 1))
	})
}

func runTargets(args []string) error {
	return verb("targets", "targets", args, 0, 0, nil, func(ctx context.Context, c api.CLI, _ []string) error {
		return c.Targets(ctx)
	})
}

// runShow is multipathd's `show paths|maps|topology`, with `format
// FMT` or `json`, and `show wildcards`.
func runShow(args []string) error {
	var out outFlags
	return verb("show", "show paths|maps [format FMT] | topology | config | wildcards  [-o json | json]", args, 1, 3, func(v *verbFlags) {
		out = v.outputFlags("json: print JSON")
	}, func(ctx context.Context, c api.CLI, pos []string) error {
		view, rest := pos[0], pos[1:]
		asJSON := out.isJSON()
		if len(rest) == 1 && rest[0] == "json" {
			asJSON, rest = true, nil
		}
		format := ""
		switch {
		case len(rest) == 2 && rest[0] == "format" && (view == "paths" || view == "maps"):
			format = rest[1]
		case len(rest) > 0:
			return usageErr{error: fmt.Errorf("show %s: unexpected %q (usage: udm show paths|maps [format FMT] | topology | config | wildcards)", view, rest[0])}
		}
		switch {
		case view == "wildcards":
			return c.ShowWildcards()
		case asJSON && (view == "paths" || view == "maps" || view == "topology"):
			return c.ShowJSON(ctx, view)
		case format != "":
			return c.ShowFormat(ctx, view, format)
		}
		switch view {
		case "paths":
			return c.ShowPaths(ctx)
		case "maps":
			return c.ShowMaps(ctx)
		case "topology":
			return c.ShowTopology(ctx)
		case "config":
			return c.ShowConfig(ctx)
		}
		return usageErr{error: fmt.Errorf("show: unknown view %q (paths, maps, topology, config, wildcards)", pos[0])}
	})
}

// pathVerb is `fail path DEV` and `reinstate path DEV`.
func pathVerb(name string, fail bool) func(args []string) error {
	return func(args []string) error {
		synopsis := name + " path DEV"
		return verb(name, synopsis, args, 2, 2, nil, func(ctx context.Context, c api.CLI, pos []string) error {
			if pos[0] != "path" {
				return usageErr{error: fmt.Errorf("%s: want %q, got %q (usage: udm %s)", name, "path", pos[0], synopsis)}
			}
			if fail {
				return c.FailPath(ctx, pos[1])
			}
			return c.ReinstatePath(ctx, pos[1])
		})
	}
}

// runChecker shows or changes a multipath device's path checker settings.
func runChecker(args []string) error {
	var out outFlags
	var v *verbFlags
	return verb("checker", "checker NAME [KEY=VALUE...] [-o json]  (polling_interval, max_polling_interval, check_timeout, no_path_retry, failback, io_deadline)",
		args, 1, -1, func(fv *verbFlags) { v, out = fv, fv.outputFlags("json: print the settings as JSON") }, func(ctx context.Context, c api.CLI, pos []string) error {
			if err := out.plainOnly(v); err != nil {
				return err
			}
			if out.isJSON() {
				return c.CheckerJSON(ctx, pos[0], pos[1:])
			}
			return c.Checker(ctx, pos[0], pos[1:])
		})
}
