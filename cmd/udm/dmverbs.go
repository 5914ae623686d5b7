package main

import (
	"context"
	"fmt"

	"udm/daemon/api"
)

// The verbs' output options (-o json, --json) and the dmsetup and
// multipathd verbs beyond the basic ones: reload, rename, deps,
// remove_all; add path, del path, resize map, switch group, disable and
// restore queueing.

// outFlags are -o and --json.
type outFlags struct {
	o    *string
	json *bool
}

// outputFlags adds -o (help says what it takes) and --json.
func (v *verbFlags) outputFlags(help string) outFlags {
	return outFlags{o: v.String("o", "", help), json: v.Bool("json", false, "print JSON (as -o json)")}
}

func (o outFlags) isJSON() bool { return *o.json || *o.o == "json" }

// plainOnly refuses an -o other than json (verbs whose only output
// option is JSON).
func (o outFlags) plainOnly(v *verbFlags) error {
	if *o.o != "" && *o.o != "json" {
		return v.misuse(fmt.Sprintf("-o takes json, not %q", *o.o))
	}
	return nil
}

// linesVerb is table or status: [--target TYPE] [-o json] [NAME...].
func linesVerb(name, synopsis string, args []string, inactive bool,
	run func(c api.CLI, ctx context.Context, o api.LinesOpts) error) error {
	var in *bool
	var typ *string
	var out outFlags
	var v *verbFlags
	return verb(name, synopsis, args, 0, -1, func(fv *verbFlags) {
		v = fv
		if inactive {
			in = fv.Bool("inactive", false, "show the inactive table")
		}
		typ = fv.String("target", "", "only the lines of this target type")
		out = fv.outputFlags("json: print JSON")
	}, func(ctx context.Context, c api.CLI, pos []string) error {
		if err := out.plainOnly(v); err != nil {
			return err
		}
		o := api.LinesOpts{Names: pos, Target: *typ, JSON: out.isJSON()}
		if in != nil {
			o.Inactive = *in
		}
		return run(c, ctx, o)
	})
}

func runReload(args []string) error {
	return tableVerb("reload", "reload NAME (--table 'LINE' | --table-file FILE | -)  (dmsetup's name for load)", args, nil,
		func(ctx context.Context, c api.CLI, name, table string) error { return c.Load(ctx, name, table) })
}

func runRename(args []string) error {
	return verb("rename", "rename NAME NEW_NAME", args, 2, 2, nil, func(ctx context.Context, c api.CLI, pos []string) error {
		return c.Rename(ctx, pos[0], pos[1])
	})
}

func runDeps(args []string) error {
	var out outFlags
	var v *verbFlags
	return verb("deps", "deps [-o json] [NAME...]", args, 0, -1, func(fv *verbFlags) {
		v, out = fv, fv.outputFlags("json: print JSON (devname, dmsetup's other option, is what udm prints anyway)")
	}, func(ctx context.Context, c api.CLI, pos []string) error {
		if *out.o == "devname" {
			*out.o = ""
		}
		if err := out.plainOnly(v); err != nil {
			return err
		}
		return c.Deps(ctx, pos, out.isJSON())
	})
}

func runRemoveAll(args []string) error {
	var force *bool
	return verb("remove_all", "remove_all [-f|--force]", args, 0, 0, func(v *verbFlags) {
		force = v.Bool("force", false, "remove open devices too (an error table swapped in first)")
		v.BoolVar(force, "f", false, "short for --force")
	}, func(ctx context.Context, c api.CLI, _ []string) error {
		return c.RemoveAll(ctx, *force)
	})
}

// keyword checks that pos[0] is the word multipathd's syntax has there
// (add PATH, resize MAP, ...).
func keyword(v *verbFlags, pos []string, want string) error {
	if pos[0] != want {
		return v.misuse(fmt.Sprintf("want %q, got %q", want, pos[0]))
	}
	return nil
}

func runAdd(args []string) error {
	var group *int
	var v *verbFlags
	return verb("add", "add path DEV MAP [--group N]", args, 3, 3, func(fv *verbFlags) {
		v, group = fv, fv.Int("group", 0, "the path group to add it to (1-based; default: the last)")
	}, func(ctx context.Context, c api.CLI, pos []string) error {
		if err := keyword(v, pos, "path"); err != nil {
			return err
		}
		return c.AddPath(ctx, pos[2], pos[1], *group)
	})
}

func runDel(args []string) error {
	var v *verbFlags
	return verb("del", "del path DEV [MAP]", args, 2, 3, func(fv *verbFlags) { v = fv }, func(ctx context.Context, c api.CLI, pos []string) error {
		if err := keyword(v, pos, "path"); err != nil {
			return err
		}
		return c.DelPath(ctx, optional(pos, 2), pos[1])
	})
}

func runResize(args []string) error {
	var v *verbFlags
	return verb("resize", "resize map MAP", args, 2, 2, func(fv *verbFlags) { v = fv }, func(ctx context.Context, c api.CLI, pos []string) error {
		if err := keyword(v, pos, "map"); err != nil {
			return err
		}
		return c.ResizeMap(ctx, pos[1])
	})
}

// runSwitch is `switch group MAP N` (or multipathd's `switch group map
// MAP group N`).
func runSwitch(args []string) error {
	return switchVerb("switch", "switch group MAP N", args, true)
}

// runSwitchgroup is `switchgroup MAP N` (or `switchgroup map MAP group N`).
func runSwitchgroup(args []string) error {
	return switchVerb("switchgroup", "switchgroup MAP N", args, false)
}

func switchVerb(name, synopsis string, args []string, word bool) error {
	var v *verbFlags
	lead := 0
	if word {
		lead = 1
	}
	return verb(name, synopsis, args, lead+2, lead+4, func(fv *verbFlags) { v = fv }, func(ctx context.Context, c api.CLI, pos []string) error {
		if word {
			if err := keyword(v, pos, "group"); err != nil {
				return err
			}
			pos = pos[1:]
		}
		switch {
		case len(pos) == 4 && pos[0] == "map" && pos[2] == "group":
			pos = []string{pos[1], pos[3]}
		case len(pos) != 2:
			return v.misuse("want MAP N, or map MAP group N")
		}
		return c.SwitchGroup(ctx, pos[0], pos[1])
	})
}

func runDisable(args []string) error { return queueingVerb("disable", args, false) }
func runRestore(args []string) error { return queueingVerb("restore", args, true) }

// queueingVerb is `disable|restore queueing [map MAP | MAP]`: without a
// map, every multipath map.
func queueingVerb(name string, args []string, on bool) error {
	var v *verbFlags
	return verb(name, name+" queueing [map MAP]", args, 1, 3, func(fv *verbFlags) { v = fv }, func(ctx context.Context, c api.CLI, pos []string) error {
		if err := keyword(v, pos, "queueing"); err != nil {
			return err
		}
		pos = pos[1:]
		if len(pos) == 2 {
			if pos[0] != "map" {
				return v.misuse(fmt.Sprintf("want %q, got %q", "map", pos[0]))
			}
			pos = pos[1:]
		}
		return c.Queueing(ctx, optional(pos, 0), on)
	})
}
