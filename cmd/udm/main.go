// Command udm is the userspace device-mapper: `udm serve` runs the daemon,
// the dmsetup-like verbs drive it, `udm bench` and `udm drill` measure and
// prove it. This file only dispatches; the work lives in packages.
package main

import (
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
	if err := cmd.run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "udm %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
