// Command udm is the userspace device-mapper: `udm serve` runs the daemon,
// the dmsetup-like verbs drive it, `udm bench` and `udm drill` measure and
// prove it. This package only parses flags and calls packages.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"udm/daemon/api"
)

type command struct {
	run     func(args []string) error
	summary string
}

// commands is filled in init: the verbs look their summaries up in it.
var commands map[string]command

func init() {
	commands = map[string]command{
		"bench": {runBench, "run a workload against a file, a dm table in process, or an NBD export (bench matrix: the side-by-side suites)"},
		"drill": {runDrill, "failover drill: a verified workload while faults play, a verdict and a report (drill --list)"},

		"serve":       {runServe, "run the daemon (control API, NBD exports, metrics)"},
		"version":     {runVersion, "print udm's version and build information"},
		"help":        {runHelp, "print this list, or a verb's usage: help [VERB]"},
		"create":      {runCreate, "create a device from a table: create NAME (--table 'LINE' | --table-file F | -)"},
		"load":        {runLoad, "load a table into a device's inactive slot"},
		"clear":       {runClear, "drop a device's inactive table"},
		"suspend":     {runSuspend, "suspend a device: suspend [--noflush] NAME"},
		"resume":      {runResume, "resume a device, swapping in its inactive table"},
		"remove":      {runRemove, "remove a device: remove [-f|--deferred] NAME"},
		"ls":          {runLs, "list the devices"},
		"table":       {runTable, "print a device's table (every device's without NAME)"},
		"status":      {runStatus, "print a device's status (every device's without NAME)"},
		"info":        {runInfo, "print dmsetup info for a device (every device without NAME)"},
		"message":     {runMessage, "send a message to a target: message NAME SECTOR MSG..."},
		"wait":        {runWait, "wait for a device's event counter to pass EVENT: wait NAME [EVENT]"},
		"targets":     {runTargets, "list the target types"},
		"show":        {runShow, "multipathd views: show paths|maps|topology|config|wildcards (format FMT, json)"},
		"reconfigure": {runReconfigure, "re-read the daemon's configuration file and bring its devices to it (what was created, changed, left alone, and why)"},
		"fail":        {pathVerb("fail", true), "fail path DEV: fail a multipath path and pause its checker"},
		"reinstate":   {pathVerb("reinstate", false), "reinstate path DEV: reinstate a path and resume its checker"},
		"checker":     {runChecker, "show or set a multipath device's checker settings: checker NAME [KEY=VALUE...]"},

		"reload":      {runReload, "load a table into a device's inactive slot (dmsetup's name for load)"},
		"rename":      {runRename, "rename a device: rename NAME NEW_NAME"},
		"deps":        {runDeps, "list what devices' tables use: deps [NAME...]"},
		"remove_all":  {runRemoveAll, "remove every device not open (-f: open ones too)"},
		"add":         {runAdd, "add path DEV MAP: add a path to a multipath map (a noflush reload)"},
		"del":         {runDel, "del path DEV [MAP]: take a path out of a map, or of every map (a noflush reload)"},
		"resize":      {runResize, "resize map MAP: give a map the size of its smallest path"},
		"switch":      {runSwitch, "switch group MAP N: make group N the map's next path group"},
		"switchgroup": {runSwitchgroup, "switchgroup MAP N: same as switch group"},
		"disable":     {runDisable, "disable queueing [map MAP]: fail I/O when no path is left (every map without MAP)"},
		"restore":     {runRestore, "restore queueing [map MAP]: queue I/O when no path is left (every map without MAP)"},
	}
}

// topFlags are the flags before the verb.
func topFlags() (*flag.FlagSet, *bool) {
	fs := flag.NewFlagSet("udm", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&globals.control, "control", "", "control socket the verbs talk to and udm serve listens on (default $"+api.Env+", else "+api.Defaults("").Control+")")
	version := fs.Bool("version", false, "print the version and build information")
	return fs, version
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: udm [--control SOCK] COMMAND [ARGS]\n       udm --version\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	width := 10
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		fmt.Fprintf(w, "  %-*s %s\n", width, n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nThe verbs talk to the daemon on --control SOCK, else $"+api.Env+", else the default socket.")
	fmt.Fprintln(w, "udm COMMAND -h prints a command's usage and flags.")
	fs, _ := topFlags()
	fmt.Fprintln(w, "\nflags:")
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// udm runs the command line args (without the program name) and returns
// the exit status: 0, 1 when the command failed, 2 on a usage error.
func udm(args []string) int {
	fs, version := topFlags()
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		usage(os.Stdout)
		return 0
	case err != nil:
		fmt.Fprintf(os.Stderr, "udm: %v\n", err)
		usage(os.Stderr)
		return 2
	case *version:
		err = runVersion(fs.Args())
	case fs.NArg() == 0:
		usage(os.Stderr)
		return 2
	default:
		cmd, ok := commands[fs.Arg(0)]
		if !ok {
			fmt.Fprintf(os.Stderr, "udm: unknown command %q (udm help lists them)\n", fs.Arg(0))
			return 2
		}
		err = cmd.run(fs.Args()[1:])
	}
	var ue usageErr
	switch {
	case err == nil, errors.Is(err, errHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "udm: %v\n", err)
		if ue.usage != "" {
			fmt.Fprint(os.Stderr, "\n"+ue.usage)
		}
		return 2
	default:
		fmt.Fprintf(os.Stderr, "udm: %v\n", err)
		return 1
	}
}

func main() { os.Exit(udm(os.Args[1:])) }

// runHelp is `udm help [VERB]`.
func runHelp(args []string) error {
	v := newFlags("help", "help [VERB]")
	pos, err := v.parse(args, 0, 1)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		usage(os.Stdout)
		return nil
	}
	cmd, ok := commands[pos[0]]
	if !ok || pos[0] == "help" {
		if !ok {
			return usageErr{error: fmt.Errorf("help: unknown command %q (udm help lists them)", pos[0])}
		}
		v.printUsage(os.Stdout)
		return nil
	}
	return cmd.run([]string{"-h"})
}

// joinLines is the text of paragraphs given line by line.
func joinLines(lines ...string) string { return strings.Join(lines, "\n") }
