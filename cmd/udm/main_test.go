package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"udm/daemon/api"
	"udm/internal/testutil"
)

// The command line is tested with scripts (testdata/script/*.txtar): each
// runs udm — this package's main, in the test binary — as a program,
// starts a daemon of its own when it needs one (udm serve in the
// background, with its state and sockets in the script's $WORK), and
// checks stdout, stderr and exit statuses.

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"udm": func() { os.Exit(udm(os.Args[1:])) },
	})
}

func TestScripts(t *testing.T) {
	root, err := os.MkdirTemp("", "udm-ts") // short: Unix socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	testscript.Run(t, testscript.Params{
		Dir:         "testdata/script",
		WorkdirRoot: root,
		Setup: func(e *testscript.Env) error {
			e.Setenv(api.Env, e.WorkDir+"/c.sock")
			if os.Getenv("GORACE") == "" {
				// A race-detector build sleeps a second at exit by
				// default (to catch late reports); the scripts run udm
				// hundreds of times. A race still exits 66, which
				// fails the script.
				e.Setenv("GORACE", "atexit_sleep_ms=50")
			}
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exits":      cmdExits,
			"sparse":     cmdSparse,
			"waitdaemon": cmdWaitDaemon,
			"eventually": cmdEventually,
			"expand":     cmdExpand,
		},
	})
}

// exits N PROG [ARGS...] runs PROG and checks that it exits with status
// N; its stdout and stderr are then those of stdout and stderr.
func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits N PROG [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exits: bad status %q", args[0])
	}
	err = ts.Exec(args[1], args[2:]...)
	got := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		got = ee.ExitCode()
	case err != nil:
		ts.Fatalf("exits: %v", err)
	}
	if got != want {
		ts.Fatalf("%s exited %d, want %d", strings.Join(args[1:], " "), got, want)
	}
}

// sparse FILE SIZE makes a sparse file of SIZE bytes (a backing file).
func cmdSparse(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: sparse FILE SIZE")
	}
	size, err := strconv.ParseInt(args[1], 0, 64)
	ts.Check(err)
	f, err := os.Create(ts.MkAbs(args[0]))
	ts.Check(err)
	ts.Check(f.Truncate(size))
	ts.Check(f.Close())
}

// waitdaemon SOCK waits until a daemon answers on the control socket
// SOCK.
func cmdWaitDaemon(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitdaemon SOCK")
	}
	c := api.NewClient(ts.MkAbs(args[0]))
	var err error
	if testutil.Poll(func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = c.Daemon(ctx)
		return err == nil
	}) {
		return
	}
	ts.Fatalf("no daemon answered on %s: %v", args[0], err)
}

// eventually REGEXP PROG [ARGS...] runs PROG until it succeeds with a
// stdout that matches REGEXP (environment variables expanded).
func cmdEventually(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: eventually REGEXP PROG [ARGS...]")
	}
	re, err := regexp.Compile(`(?m)` + args[0])
	ts.Check(err)
	var out string
	if testutil.Poll(func() bool {
		err = ts.Exec(args[1], args[2:]...)
		out = ts.ReadFile("stdout")
		return err == nil && re.MatchString(out)
	}) {
		return
	}
	ts.Fatalf("%s never printed a match for %q; last: %v\n%s", strings.Join(args[1:], " "), args[0], err, out)
}

// expand FILE... replaces $VAR and ${VAR} in the files with the
// script's environment variables (the tables name files in $WORK).
func cmdExpand(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) == 0 {
		ts.Fatalf("usage: expand FILE...")
	}
	for _, f := range args {
		text := os.Expand(ts.ReadFile(f), ts.Getenv)
		ts.Check(os.WriteFile(ts.MkAbs(f), []byte(text), 0o644))
	}
}
