package multipath

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"udm/dm"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata scenario scripts")

// A scenario script (testdata/*.txt) drives a Machine, and the checker's
// model over it, event by event. Each step is a command line, a line
// "----", and the expected output up to a blank line. Lines starting
// with # outside steps are comments.
//
// Commands:
//
//	new <table args>          build a machine from a multipath table
//	status | table            the INFO or TABLE status (ends with a space)
//	state                     a summary of the machine
//	map [noflush]             an I/O asks for a path
//	io-error <dev> [noflush]  an I/O failed with a path error on dev
//	msg <args...>             a message
//	presuspend [noflush] | undo | postsuspend | resume
//
// Actions print one per line: event, process-queue, path-failed DEV,
// path-reinstated DEV.
//
// The checker's model (checker_test.go, checkerStep) has its own
// commands: checker, advance, done, operator, paths, wake.
//
// go test -run TestScenarios -rewrite rewrites the expected outputs.
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario scripts: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) { runScenario(t, file) })
	}
}

type step struct {
	line     int
	cmd      string
	expected []string
}

func parseScript(t *testing.T, text string) (steps []step, comments map[int][]string) {
	lines := strings.Split(text, "\n")
	comments = map[int][]string{}
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			comments[len(steps)] = append(comments[len(steps)], l)
			continue
		}
		st := step{line: i + 1, cmd: l}
		i++
		if i >= len(lines) || lines[i] != "----" {
			t.Fatalf("line %d: want ---- after %q", i+1, l)
		}
		for i++; i < len(lines) && lines[i] != ""; i++ {
			st.expected = append(st.expected, lines[i])
		}
		steps = append(steps, st)
	}
	return steps, comments
}

func runScenario(t *testing.T, file string) {
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	steps, comments := parseScript(t, string(data))
	sc := &scene{}
	var out strings.Builder
	for i, st := range steps {
		for _, c := range comments[i] {
			if i > 0 || strings.TrimSpace(c) != "" {
				out.WriteString(c + "\n")
			}
		}
		got := runStep(t, sc, st.cmd)
		out.WriteString(st.cmd + "\n----\n")
		for _, g := range got {
			out.WriteString(g + "\n")
		}
		out.WriteString("\n")
		if *rewrite {
			continue
		}
		if strings.Join(got, "\n") != strings.Join(st.expected, "\n") {
			t.Errorf("%s:%d: %s\n got:\n  %s\nwant:\n  %s", file, st.line, st.cmd,
				strings.Join(got, "\n  "), strings.Join(st.expected, "\n  "))
		}
	}
	if *rewrite {
		s := strings.TrimRight(out.String(), "\n") + "\n"
		if err := os.WriteFile(file, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func runStep(t *testing.T, sc *scene, cmd string) []string {
	f := strings.Fields(cmd)
	m := sc.m
	if f[0] != "new" && m == nil {
		t.Fatalf("%q before new", cmd)
	}
	if out, ok := sc.checkerStep(t, f); ok {
		return out
	}
	noflush := len(f) > 1 && f[len(f)-1] == "noflush"
	pathName := func(i int) string {
		g := m.PathGroup(i)
		gs := &m.spec.Groups[g]
		return gs.Paths[i-m.groups[g].first].Dev
	}
	resolve := func(dev string) []int {
		var out []int
		for i := 0; i < m.NumPaths(); i++ {
			if pathName(i) == dev {
				out = append(out, i)
			}
		}
		return out
	}
	acts := func(as []Action) []string {
		var out []string
		for _, a := range as {
			switch a.Kind {
			case ActPathFailed:
				out = append(out, "path-failed "+pathName(a.Path))
			case ActPathReinstated:
				sc.epoch[a.Path]++
				out = append(out, "path-reinstated "+pathName(a.Path))
			default:
				out = append(out, a.String())
			}
		}
		if len(out) == 0 {
			out = []string{"ok"}
		}
		return out
	}
	decision := func(d Decision, changed bool) string {
		s := d.String()
		if d == DecidePath {
			var names []string
			g := m.Group()
			for i := 0; i < m.NumPaths(); i++ {
				if m.PathGroup(i) == g && m.PathActive(i) {
					names = append(names, pathName(i))
				}
			}
			s = fmt.Sprintf("path pg=%d {%s}", g+1, strings.Join(names, ","))
		}
		if changed {
			s += " (group chosen)"
		}
		return s
	}
	switch f[0] {
	case "new":
		spec, err := ParseSpec(dm.SplitArgs(strings.TrimPrefix(cmd, "new")))
		if err != nil {
			*sc = scene{}
			return []string{"error: " + err.Error()}
		}
		*sc = scene{m: NewMachine(spec), epoch: make([]uint32, spec.NumPaths())}
		out := []string{"ok"}
		for _, w := range spec.Warnings {
			out = append(out, "warning: "+w)
		}
		return out
	case "status", "table":
		var s string
		if f[0] == "status" {
			s = m.StatusInfo(nil)
		} else {
			s = m.StatusTable()
		}
		if !strings.HasSuffix(s, " ") {
			t.Errorf("%s %q does not end with a space, as the kernel's does", f[0], s)
		}
		return []string{strings.TrimSuffix(s, " ")}
	case "state":
		onoff := map[bool]string{false: "off", true: "on"}
		grp := func(g int) string {
			if g < 0 {
				return "-"
			}
			return fmt.Sprint(g + 1)
		}
		susp := "no"
		switch {
		case m.Suspended():
			susp = "suspended"
		case m.Suspending():
			susp = "suspending"
		}
		return []string{fmt.Sprintf("valid=%d queue=%s saved=%s cur=%s next=%s ready=%v suspend=%s",
			m.Valid(), onoff[m.queue], onoff[m.saved], grp(m.cur), grp(m.next), m.Ready(), susp)}
	case "map":
		d, changed := m.Map(noflush)
		return []string{decision(d, changed)}
	case "io-error":
		idx := resolve(f[1])
		if len(idx) != 1 {
			t.Fatalf("io-error: %q names %d paths", f[1], len(idx))
		}
		out := acts(m.FailPath(idx[0]))
		if out[0] == "ok" {
			out = nil
		}
		if sc.c != nil {
			sc.c.ioFailed(sc.now(), idx[0])
		}
		d, changed := m.Map(noflush)
		if d == DecidePath {
			return append(out, "retry "+decision(d, changed))
		}
		return append(out, decision(d, changed))
	case "msg":
		as, err := m.Message(f[1:], resolve)
		if err != nil {
			var e syscall.Errno
			for _, x := range []syscall.Errno{syscall.EINVAL, syscall.EBUSY} {
				if errors.Is(err, x) {
					e = x
				}
			}
			return []string{fmt.Sprintf("error %s: %v", errName(e), err)}
		}
		return acts(as)
	case "presuspend":
		return acts(m.PreSuspend())
	case "undo":
		m.PreSuspendUndo()
		return []string{"ok"}
	case "postsuspend":
		m.PostSuspend()
		return []string{"ok"}
	case "resume":
		m.Resume()
		return []string{"ok"}
	}
	t.Fatalf("unknown command %q", cmd)
	return nil
}

func errName(e syscall.Errno) string {
	switch e {
	case syscall.EINVAL:
		return "EINVAL"
	case syscall.EBUSY:
		return "EBUSY"
	case syscall.EIO:
		return "EIO"
	case 0:
		return "none"
	}
	return e.Error()
}
