package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"udm/daemon/api"
	"udm/dm"
	"udm/multipath"
)

func TestStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "devices")
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	st := DeviceState{Name: "a", UUID: "u", Table: "0 8 zero\n", Inactive: "0 16 error\n", Suspended: true, ReadOnly: true,
		Checker: &api.CheckerSettings{PollingInterval: "1s", NoPathRetry: "queue"}, FailedPaths: []string{"/p"}}
	if err := s.Save(st); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(DeviceState{Name: ".dot", Table: "0 8 zero\n"}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "a.json"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", fi, err)
	}
	// Leftovers of a crash mid-write are not states, and are cleaned.
	if err := os.WriteFile(filepath.Join(dir, ".a.json.tmp-123"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"garbage.json":  "{not json",
		"trailing.json": `{"version":1,"name":"trailing"} {}`,
		"version.json":  `{"version":99,"name":"version"}`,
		"noname.json":   `{"version":1}`,
		"other.json":    `{"version":1,"name":"someone-else"}`,
		"unknown.json":  `{"version":1,"name":"unknown","tabel":"0 8 zero"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	states, bad, err := s.LoadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(states) != 2 || states[0].Name != ".dot" || states[1].Name != "a" {
		t.Fatalf("states: %+v", states)
	}
	st.Version = stateVersion
	if !reflect.DeepEqual(states[1], st) {
		t.Fatalf("read back %+v\nwant %+v", states[1], st)
	}
	if len(bad) != 6 {
		t.Fatalf("corrupt files: %+v", bad)
	}
	now := time.Unix(1700000000, 0)
	for _, c := range bad {
		to, err := s.SetAside(c.File, now)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(to, c.File+".corrupt-1700000000") {
			t.Fatalf("set aside as %s", to)
		}
	}
	// A second file set aside in the same second gets its own name.
	os.WriteFile(filepath.Join(dir, "garbage.json"), []byte("x"), 0o600)
	to, err := s.SetAside(filepath.Join(dir, "garbage.json"), now)
	if err != nil || !strings.HasSuffix(to, ".corrupt-1700000000.1") {
		t.Fatalf("second set aside: %s %v", to, err)
	}
	s.CleanTemps()
	if _, err := os.Stat(filepath.Join(dir, ".a.json.tmp-123")); !os.IsNotExist(err) {
		t.Fatal("temporary file not cleaned")
	}
	states, bad, _ = s.LoadAll()
	if len(states) != 2 || len(bad) != 0 {
		t.Fatalf("after setting aside: %d states, %d bad", len(states), len(bad))
	}
	if err := s.Delete("a"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("a"); err != nil {
		t.Fatalf("deleting a missing state: %v", err)
	}
	states, _, _ = s.LoadAll()
	if len(states) != 1 {
		t.Fatalf("after delete: %+v", states)
	}
}

func TestRestoreOrder(t *testing.T) {
	st := func(name, table string) DeviceState { return DeviceState{Name: name, Table: table} }
	in := []DeviceState{
		st("a-top", "0 8 linear /dev/mapper/m-mid 0\n"),
		{Name: "b-inactive-user", Table: "0 8 zero\n", Inactive: "0 8 linear /dev/mapper/z-base 0\n"},
		st("c-cycle1", "0 8 linear /dev/mapper/c-cycle2 0\n"),
		st("c-cycle2", "0 8 linear /dev/mapper/c-cycle1 0\n"),
		st("m-mid", "0 4 linear /dev/mapper/z-base 0\n4 4 linear /dev/mapper/y-base 0\n"),
		st("orphan", "0 8 linear /dev/mapper/missing 0\n"),
		st("y-base", "0 8 zero\n"),
		st("z-base", "0 8 zero\n"),
	}
	out := restoreOrder(in)
	pos := map[string]int{}
	for i, s := range out {
		pos[s.Name] = i
	}
	if len(out) != len(in) || len(pos) != len(in) {
		t.Fatalf("lost or duplicated states: %v", out)
	}
	for _, dep := range [][2]string{{"z-base", "m-mid"}, {"y-base", "m-mid"}, {"m-mid", "a-top"}, {"z-base", "b-inactive-user"}} {
		if pos[dep[0]] > pos[dep[1]] {
			t.Errorf("%s restored after %s: %v", dep[0], dep[1], names(out))
		}
	}
}

func names(s []DeviceState) []string {
	var out []string
	for _, x := range s {
		out = append(out, x.Name)
	}
	return out
}

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		err    error
		name   string
		status int
		errno  syscall.Errno
		msg    string
	}{
		{fmt.Errorf("%w: x", dm.ErrNoDevice), "x", http.StatusNotFound, syscall.ENXIO, `device "x" not found`},
		{dm.ErrBusy, "x", http.StatusConflict, syscall.EBUSY, `device "x" is busy (open; remove -f forces it, --deferred removes it on last close)`},
		{fmt.Errorf("%w: x", dm.ErrExists), "x", http.StatusConflict, syscall.EEXIST, `device "x" already exists`},
		{fmt.Errorf("%w %q (line 1: 0 8 frob)", dm.ErrUnknownTarget, "frob"), "x", http.StatusBadRequest, syscall.EINVAL,
			`bad table: unknown target type "frob" (line 1: 0 8 frob)`},
		{fmt.Errorf("%w: line 2: gap", dm.ErrInvalidTable), "x", http.StatusBadRequest, syscall.EINVAL, "bad table: line 2: gap"},
		{dm.ErrSuspended, "x", http.StatusConflict, syscall.EBUSY, `device "x" is suspended`},
		{fmt.Errorf("%w: %w", dm.ErrInterrupted, errors.New("context canceled")), "x", http.StatusServiceUnavailable, syscall.EINTR,
			`device "x": suspend interrupted: context canceled`},
		{multipath.ErrSuspended, "x", http.StatusConflict, syscall.EBUSY, "multipath: device suspended"},
		{errors.New("something odd"), "x", http.StatusInternalServerError, syscall.EIO, "something odd"},
		{badRequest("bad %s", "thing"), "", http.StatusBadRequest, syscall.EINVAL, "bad thing"},
	} {
		status, errno, msg := describe(tc.err, tc.name)
		if status != tc.status || errno != tc.errno || msg != tc.msg {
			t.Errorf("%v: got %d %v %q, want %d %v %q", tc.err, status, errno, msg, tc.status, tc.errno, tc.msg)
		}
	}
}
func TestCheckName(t *testing.T) {
	for _, n := range []string{"a", "demo", "é-1.2_x", "a..b", "x.json.tmp-1", strings.Repeat("n", MaxNameLen)} {
		if err := CheckName(n); err != nil {
			t.Errorf("CheckName(%q): %v", n, err)
		}
	}
	for _, n := range []string{"", ".", "..", ".a", ".a.json.tmp-1", "a/b", "a b", "a\tb", "a\nb", "a\x00b", "a\rb",
		"\x1b[0m", "a\x7f", "a\u0085", "a\xff", strings.Repeat("n", MaxNameLen+1)} {
		err := CheckName(n)
		if err == nil || !strings.HasPrefix(err.Error(), "invalid device name") {
			t.Errorf("CheckName(%q) = %v", n, err)
		}
	}
	if err := CheckName(strings.Repeat("n", 1<<20)); len(err.Error()) > 400 {
		t.Errorf("the error repeats a long name: %d bytes", len(err.Error()))
	}
}

func TestClip(t *testing.T) {
	if got := clip("short"); got != "short" {
		t.Errorf("clip(short) = %q", got)
	}
	long := strings.Repeat("é", 200) // 400 bytes
	got := clip(long)
	if !strings.HasSuffix(got, "… (400 bytes)") || !utf8.ValidString(got) || len(got) > echoLimit+len("… (400 bytes)") {
		t.Errorf("clip of 400 bytes = %q", got)
	}
}
