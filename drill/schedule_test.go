package drill

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseSchedule(t *testing.T) {
	s, err := Parse(`# a comment
path a dm
path b file
path c dm spare
features none
selector queue-length
checker polling_interval=1s no_path_retry=3
0.5s  error a          # trailing comment
+0    await a failed within 2s
+250ms fail-path b
1.5s  load c b
+0    storm 3 noflush every 10ms
+0    expect-errors EIO ENOSPC
+0    expect-errors off
tail 2s
`)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Paths) != 3 || s.Paths[1] != (PathSpec{Name: "b", Kind: KindFile}) || !s.Paths[2].Spare {
		t.Fatalf("paths %+v", s.Paths)
	}
	if s.QueueIfNoPath || s.Selector != "queue-length" || s.Tail != 2*time.Second {
		t.Fatalf("directives: %+v", s)
	}
	if s.Checker.PollingInterval != "1s" || s.Checker.NoPathRetry != "3" || s.Checker.IODeadline != DefaultChecker.IODeadline {
		t.Fatalf("checker %+v", s.Checker)
	}
	if c := s.MapConfig(); c.PollingInterval != time.Second || c.NoPathRetry != 3 {
		t.Fatalf("map config %+v", c)
	}
	want := []Event{
		{Line: 8, At: 500 * time.Millisecond, Action: "error", Args: []string{"a"}},
		{Line: 9, Rel: true, Action: "await", Args: []string{"a", "failed", "within", "2s"}},
		{Line: 10, At: 250 * time.Millisecond, Rel: true, Action: "fail-path", Args: []string{"b"}},
		{Line: 11, At: 1500 * time.Millisecond, Action: "load", Args: []string{"c", "b"}},
	}
	for i, w := range want {
		g := s.Events[i]
		if g.Line != w.Line || g.At != w.At || g.Rel != w.Rel || g.String() != w.String() {
			t.Errorf("event %d: %+v, want %+v", i, g, w)
		}
	}
	if len(s.Events) != 7 {
		t.Fatalf("%d events", len(s.Events))
	}

	// Defaults: two dm paths, queue_if_no_path, the drill's checker.
	s, err = Parse("1s restart\n")
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Paths) != 2 || s.Paths[0].Kind != KindDM || !s.QueueIfNoPath || s.Checker != DefaultChecker || s.Tail != time.Second {
		t.Fatalf("defaults %+v", s)
	}
}

func TestParseScheduleErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"path a dm\npath a dm\n", "line 2: path a declared twice"},
		{"path a nvme\n", "line 1: path kind"},
		{"path a/b dm\n", "letters, digits"},
		{"path a dm spare\n", "every path is a spare"},
		{"1s explode p0\n", "line 1: explode p0: unknown action"},
		{"1s error p9\n", `no path "p9" declared`},
		{"path f file\n1s error f\n", "a file path can't error"},
		{"1s cut p0\n", "a dm path can't cut"},
		{"1s error\n", "want: error PATH"},
		{"1s error p0 p1\n", "want: error PATH"},
		{"1s flakey p0 0 0\n", "not both 0"},
		{"1s suspend now\n", "want: suspend [noflush]"},
		{"1s load p0 p0\n", "path p0 twice"},
		{"1s storm 0\n", "storm count"},
		{"1s storm 2 every soon\n", "storm every"},
		{"1s await p0 gone\n", "want: await"},
		{"1s await queued within -1s\n", "within"},
		{"1s expect-errors eio\n", "errno name"},
		{"1s checker polling_interval=fast\n", "polling_interval"},
		{"checker colour=blue\n", "unknown checker setting"},
		{"1s\n", "no action"},
		{"1s error p0\npath x dm\n", "after the first event"},
		{"wat\n", "unknown directive or bad time"},
		{"features maybe\n", "features queue_if_no_path|none"},
		{"remote ssh\n", "remote udm|udm-tls|nbdkit"},
		{"tail forever\n", "tail"},
	} {
		_, err := Parse(tc.text)
		if err == nil || !errors.Is(err, ErrSchedule) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%q) = %v, want an ErrSchedule with %q", tc.text, err, tc.want)
		}
	}
}

// Every built-in scenario parses in both forms, and names only actions
// its paths can take.
func TestBuiltinsParse(t *testing.T) {
	for _, sc := range Scenarios {
		for _, full := range []bool{false, true} {
			s, err := Parse(sc.Schedule(full))
			if err != nil {
				t.Fatalf("%s (full %v): %v", sc.Name, full, err)
			}
			if len(s.Events) == 0 || sc.Outcome == "" || sc.checks == nil {
				t.Fatalf("%s: incomplete", sc.Name)
			}
		}
		if got, ok := Lookup(sc.Name); !ok || got != sc {
			t.Fatalf("Lookup(%s)", sc.Name)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, sc := range Scenarios {
		f.Add(sc.Schedule(false))
	}
	f.Add("path a remote\npath b file spare\n1s vanish b\n+0 hang a\n+1.5s restore a\n")
	f.Add("1s storm 3 noflush every 1ms\n+0 expect-errors\n+0 message queue_if_no_path\n")
	f.Fuzz(func(t *testing.T, text string) {
		s, err := Parse(text)
		if err != nil {
			if !errors.Is(err, ErrSchedule) {
				t.Fatalf("error without ErrSchedule: %v", err)
			}
			return
		}
		live := 0
		for _, p := range s.Paths {
			if !p.Spare {
				live++
			}
		}
		if live == 0 {
			t.Fatal("a schedule with no path in its table parsed")
		}
		for _, e := range s.Events {
			if _, ok := actions[e.Action]; !ok {
				t.Fatalf("unknown action %q parsed", e.Action)
			}
			if a := actions[e.Action]; a.kinds != nil {
				if _, ok := s.Path(e.Args[0]); !ok {
					t.Fatalf("%s on an undeclared path parsed", e)
				}
			}
			if e.At < 0 {
				t.Fatalf("negative time: %+v", e)
			}
		}
	})
}
