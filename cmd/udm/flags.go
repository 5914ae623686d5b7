package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// The one flag framework every verb uses: a flag.FlagSet per verb built
// by newFlags. -h and --help print the verb's usage on stdout (exit 0);
// a bad flag prints the error and the usage on stderr (exit 2); a wrong
// number of arguments prints one line (exit 2).

// usageErr marks a command-line mistake (exit status 2). usage, if not
// empty, is printed after the error.
type usageErr struct {
	error
	usage string
}

// errHelp reports that the usage was printed on request (exit status 0).
var errHelp = errors.New("help shown")

// globals are the flags that may stand before the verb (udm --control S
// ls); the verbs' own flags of the same names default to them.
var globals struct {
	control string
}

// verbFlags is a verb's flag set with its usage.
type verbFlags struct {
	*flag.FlagSet
	synopsis []string // after "udm ", one per form
	about    string   // what the verb does (paragraphs)
	control  *string  // --control, for the verbs that talk to a daemon
}

// newFlags makes the flag set of the verb name (which may be two words:
// "bench matrix"). synopsis is the first usage line after "udm "; more
// forms and a description can be added with the fields.
func newFlags(name, synopsis string) *verbFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	v := &verbFlags{FlagSet: fs, synopsis: []string{synopsis}}
	if c, ok := commands[name]; ok {
		v.about = c.summary
	}
	return v
}

// withControl adds --control (the daemon's control socket) to a verb
// that talks to a daemon; it defaults to the global --control.
func (v *verbFlags) withControl(help string) *verbFlags {
	v.control = v.String("control", globals.control, help)
	return v
}

// printUsage writes the verb's usage: its forms, what it does, and its
// flags.
func (v *verbFlags) printUsage(w io.Writer) {
	for i, s := range v.synopsis {
		lead := "usage: "
		if i > 0 {
			lead = "       "
		}
		fmt.Fprintf(w, "%sudm %s\n", lead, s)
	}
	if v.about != "" {
		fmt.Fprintf(w, "\n%s\n", strings.TrimRight(v.about, "\n"))
	}
	n := 0
	v.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		v.SetOutput(w)
		v.PrintDefaults()
		v.SetOutput(io.Discard)
	}
}

// flagErr turns a flag.Parse error into errHelp (usage printed on
// stdout) or a usage error that prints the usage on stderr.
func (v *verbFlags) flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		v.printUsage(os.Stdout)
		return errHelp
	}
	var b strings.Builder
	v.printUsage(&b)
	return usageErr{fmt.Errorf("%s: %v", v.Name(), err), b.String()}
}

// parse parses args, allowing flags after positional arguments (`udm
// remove NAME -f`); "--" ends the flags. It returns the positional
// arguments and checks their count (maxPos < 0: no limit).
func (v *verbFlags) parse(args []string, minPos, maxPos int) ([]string, error) {
	var pos []string
	for {
		if err := v.Parse(args); err != nil {
			return nil, v.flagErr(err)
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

// parseLeading parses flags only before the first positional argument
// (the rest may start with "-": udm message's words).
func (v *verbFlags) parseLeading(args []string, minPos int) ([]string, error) {
	if err := v.Parse(args); err != nil {
		return nil, v.flagErr(err)
	}
	return v.Args(), v.count(v.Args(), minPos, -1)
}

func (v *verbFlags) count(pos []string, minPos, maxPos int) error {
	switch {
	case len(pos) < minPos:
		return v.misuse("missing arguments")
	case maxPos >= 0 && len(pos) > maxPos:
		return v.misuse(fmt.Sprintf("unexpected argument %q", pos[maxPos]))
	}
	return nil
}

// misuse is a one-line usage error naming the verb's first form.
func (v *verbFlags) misuse(what string) error {
	return usageErr{error: fmt.Errorf("%s: %s (usage: udm %s)", v.Name(), what, v.synopsis[0])}
}

// set reports whether the flag name was given on the command line (or
// globally, for --control).
func (v *verbFlags) set(name string) bool {
	found := name == "control" && globals.control != ""
	v.Visit(func(f *flag.Flag) {
		if f.Name == name {
			found = true
		}
	})
	return found
}
