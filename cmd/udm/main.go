// Command udm is the userspace device-mapper: `udm serve` runs the daemon,
// the dmsetup-like verbs drive it, `udm bench` and `udm drill` measure and
// prove it. This file only dispatches; the work lives in packages.
package main

import (
	"errors"
	"fmt"
	"os"
	"sort"
)

type command struct {
	run     func(args []string) error
	summary string
}

var commands = map[string]command{
	"bench": {runBench, "run a workload against a file, a dm table in process, or an NBD export"},
	"drill": {runDrill, "failover drill: a verified workload while faults play, a verdict and a report (drill --list)"},

	"serve":     {runServe, "run the daemon (control API, NBD exports, metrics)"},
	"create":    {runCreate, "create a device from a table: create NAME (--table 'LINE' | --table-file F | -)"},
	"load":      {runLoad, "load a table into a device's inactive slot"},
	"clear":     {runClear, "drop a device's inactive table"},
	"suspend":   {runSuspend, "suspend a device: suspend [--noflush] NAME"},
	"resume":    {runResume, "resume a device, swapping in its inactive table"},
	"remove":    {runRemove, "remove a device: remove [-f|--deferred] NAME"},
	"ls":        {runLs, "list the devices"},
	"table":     {runTable, "print a device's table (every device's without NAME)"},
	"status":    {runStatus, "print a device's status (every device's without NAME)"},
	"info":      {runInfo, "print dmsetup info for a device (every device without NAME)"},
	"message":   {runMessage, "send a message to a target: message NAME SECTOR MSG..."},
	"wait":      {runWait, "wait for a device's event counter to pass EVENT: wait NAME [EVENT]"},
	"targets":   {runTargets, "list the target types"},
	"show":      {runShow, "multipathd views: show paths|maps|topology"},
	"fail":      {pathVerb("fail", true), "fail path DEV: fail a multipath path and pause its checker"},
	"reinstate": {pathVerb("reinstate", false), "reinstate path DEV: reinstate a path and resume its checker"},
	"checker":   {runChecker, "show or set a multipath device's checker settings: checker NAME [KEY=VALUE...]"},
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: udm COMMAND [ARGS]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(os.Stderr, "\nThe verbs talk to the daemon on --control SOCK, else $UDM_SOCKET, else the default socket.")
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		if len(os.Args) < 2 {
			os.Exit(2)
		}
		return
	}
	cmd, ok := commands[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "udm: unknown command %q (udm help lists them)\n", os.Args[1])
		os.Exit(2)
	}
	err := cmd.run(os.Args[2:])
	var ue usageErr
	switch {
	case err == nil, errors.Is(err, errHelp):
	case errors.As(err, &ue):
		fmt.Fprintf(os.Stderr, "udm: %v\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "udm: %v\n", err)
		os.Exit(1)
	}
}
