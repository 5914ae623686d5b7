package daemon_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/multipath"
	"udm/nbd/client"
)

// TestVerbs drives every verb against one daemon, checking dmsetup's
// output byte for byte and each error case's one line on stderr.
func TestVerbs(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo", "--metrics", "127.0.0.1:0")
	dir := shmDir(t)
	a := backing(t, dir, "a", 8<<20)
	b := backing(t, dir, "b", 8<<20)
	c := backing(t, dir, "c", 8<<20)

	t.Run("targets", func(t *testing.T) {
		reg := dm.DefaultTargets()
		if err := multipath.Register(reg); err != nil {
			t.Fatal(err)
		}
		var want strings.Builder
		for _, tt := range reg.Types() {
			fmt.Fprintf(&want, "%-16s v%d.%d.%d\n", tt.Name, tt.Version[0], tt.Version[1], tt.Version[2])
		}
		if got := u.ok("targets"); got != want.String() {
			t.Fatalf("udm targets:\n%q\nwant\n%q", got, want.String())
		}
		if !strings.Contains(want.String(), "multipath        v") || !strings.Contains(want.String(), "linear           v") {
			t.Fatalf("targets lack multipath or linear:\n%s", want.String())
		}
	})

	t.Run("empty", func(t *testing.T) {
		for _, verb := range []string{"ls", "table", "status", "info"} {
			if got := u.ok(verb); got != "No devices found\n" {
				t.Fatalf("udm %s with no devices: %q", verb, got)
			}
		}
	})

	// The kernel's table and status lines for the same tables (dmsetup
	// prints a space after the type even when there are no parameters).
	formats := []struct {
		name, table, wantTable, wantStatus string
	}{
		{"lin", "0 2048 linear " + a + " 0", "0 2048 linear " + a + " 0", "0 2048 linear "},
		{"str", "0 4096 striped 2 128 " + a + " 2048 " + b + " 0", "0 4096 striped 2 128 " + a + " 2048 " + b + " 0",
			"0 4096 striped 2 " + a + " " + b + " 1 AA"},
		{"err", "0 2048 error", "0 2048 error ", "0 2048 error "},
		{"zer", "0 2048 zero", "0 2048 zero ", "0 2048 zero "},
		{"fla", "0 2048 flakey " + c + " 0 5 0 0", "0 2048 flakey " + c + " 0 5 0 0", "0 2048 flakey "},
		{"fla2", "0 2048 flakey " + c + " 0 5 1 1 drop_writes", "0 2048 flakey " + c + " 0 5 1 1 drop_writes", "0 2048 flakey "},
		// dm-delay: INFO is the bios held per class (reads writes
		// flushes) whatever the form; TABLE gives the classes given.
		{"del", "0 2048 delay " + c + " 0 10", "0 2048 delay " + c + " 0 10", "0 2048 delay 0 0 0"},
		{"del2", "0 2048 delay " + c + " 0 10 " + b + " 0 20", "0 2048 delay " + c + " 0 10 " + b + " 0 20", "0 2048 delay 0 0 0"},
		{"del3", "0 2048 delay " + c + " 0 10 " + b + " 8 20 " + a + " 16 0", "0 2048 delay " + c + " 0 10 " + b + " 8 20 " + a + " 16 0",
			"0 2048 delay 0 0 0"},
		{"mp", "0 2048 multipath 0 0 2 1 round-robin 0 1 1 " + a + " 1 service-time 0 1 2 " + b + " 1 5",
			"0 2048 multipath 0 0 2 1 round-robin 0 1 1 " + a + " 1 service-time 0 1 2 " + b + " 1 5 ",
			"0 2048 multipath 2 0 0 0 2 1 E 0 1 0 " + a + " A 0 E 0 1 2 " + b + " A 0 0 5 "},
		{"two", "0 1024 linear " + a + " 0\n1024 1024 zero\n", "0 1024 linear " + a + " 0\n1024 1024 zero ",
			"0 1024 linear \n1024 1024 zero "},
	}
	t.Run("formats", func(t *testing.T) {
		for _, f := range formats {
			if f.name == "two" {
				u.ok("create", f.name, "--table-file", writeFile(t, f.table))
			} else {
				u.ok("create", f.name, "--table", f.table)
			}
			if got := u.ok("table", f.name); got != f.wantTable+"\n" {
				t.Errorf("udm table %s:\n%q\nwant\n%q", f.name, got, f.wantTable+"\n")
			}
			if got := u.ok("status", f.name); got != f.wantStatus+"\n" {
				t.Errorf("udm status %s:\n%q\nwant\n%q", f.name, got, f.wantStatus+"\n")
			}
			// The table output loads back to the same table.
			u.ok("load", f.name, "--table-file", writeFile(t, u.ok("table", f.name)))
			u.ok("resume", f.name)
			if got := u.ok("table", f.name); got != f.wantTable+"\n" {
				t.Errorf("udm table %s after reloading its own output:\n%q", f.name, got)
			}
		}
		var wantTables, wantStatus, wantLs strings.Builder
		names := []string{}
		for _, f := range formats {
			names = append(names, f.name)
		}
		sort.Strings(names)
		byName := map[string]int{}
		for i, f := range formats {
			byName[f.name] = i
		}
		for _, n := range names {
			f := formats[byName[n]]
			for _, l := range strings.Split(f.wantTable, "\n") {
				fmt.Fprintf(&wantTables, "%s: %s\n", n, l)
			}
			for _, l := range strings.Split(f.wantStatus, "\n") {
				fmt.Fprintf(&wantStatus, "%s: %s\n", n, l)
			}
			fmt.Fprintf(&wantLs, "%s\n", n)
		}
		if got := u.ok("table"); got != wantTables.String() {
			t.Errorf("udm table:\n%s\nwant\n%s", got, wantTables.String())
		}
		if got := u.ok("status"); got != wantStatus.String() {
			t.Errorf("udm status:\n%s\nwant\n%s", got, wantStatus.String())
		}
		if got := u.ok("ls"); got != wantLs.String() {
			t.Errorf("udm ls:\n%s\nwant\n%s", got, wantLs.String())
		}
	})

	t.Run("create-stdin-uuid-readonly", func(t *testing.T) {
		u.udmInOK(t, "# a comment\n0 2048 linear "+b+" 0\n", "create", "ro", "--uuid", "UDM-test-1", "-r", "-")
		want := "Name:              ro\n" +
			"State:             ACTIVE (READ-ONLY)\n" +
			"Tables present:    LIVE\n" +
			"Open count:        0\n" +
			"Event number:      1\n" +
			"Number of targets: 1\n" +
			"UUID: UDM-test-1\n\n"
		if got := u.ok("info", "ro"); got != want {
			t.Fatalf("udm info ro:\n%s\nwant\n%s", got, want)
		}
		// Writes to a read-only device fail; reads work.
		cl := dialNBD(t, u.nbdUnixURI("ro"))
		buf := make([]byte, 4096)
		if err := cl.ReadAt(context.Background(), buf, 0); err != nil {
			t.Fatalf("read from read-only device: %v", err)
		}
		if err := cl.WriteAt(context.Background(), buf, 0, false); err == nil {
			t.Fatal("write to a read-only device succeeded")
		}
		cl.Close()
		eventually(t, "the NBD connection to close", func() bool { return strings.Contains(u.ok("info", "ro"), "Open count:        0\n") })
		u.ok("remove", "ro")
	})

	t.Run("load-clear-suspend-resume-info", func(t *testing.T) {
		u.ok("create", "sw", "--table", "0 2048 linear "+a+" 0")
		u.ok("load", "sw", "--table", "0 4096 zero")
		if got := u.ok("table", "--inactive", "sw"); got != "0 4096 zero \n" {
			t.Fatalf("inactive table: %q", got)
		}
		if got := u.ok("table", "sw"); got != "0 2048 linear "+a+" 0\n" {
			t.Fatalf("live table changed by load: %q", got)
		}
		info := u.ok("info", "sw")
		if !strings.Contains(info, "Tables present:    LIVE & INACTIVE\n") || !strings.Contains(info, "State:             ACTIVE\n") {
			t.Fatalf("info after load:\n%s", info)
		}
		u.ok("clear", "sw")
		if got := u.ok("table", "--inactive", "sw"); got != "\n" {
			t.Fatalf("inactive table after clear: %q", got)
		}
		if !strings.Contains(u.ok("info", "sw"), "Tables present:    LIVE\n") {
			t.Fatal("clear left an inactive table")
		}
		u.ok("suspend", "sw")
		if !strings.Contains(u.ok("info", "sw"), "State:             SUSPENDED\n") {
			t.Fatal("suspend did not suspend")
		}
		u.ok("suspend", "--noflush", "sw") // a suspended device: nothing to do
		u.ok("load", "sw", "--table", "0 4096 zero")
		u.ok("resume", "sw")
		info = u.ok("info", "sw")
		if !strings.Contains(info, "State:             ACTIVE\n") || !strings.Contains(info, "Tables present:    LIVE\n") {
			t.Fatalf("info after resume with a new table:\n%s", info)
		}
		if got := u.ok("table", "sw"); got != "0 4096 zero \n" {
			t.Fatalf("table after swap: %q", got)
		}
		u.ok("suspend", "sw", "--noflush") // flags after the name work too
		u.ok("resume", "sw")
		u.ok("remove", "sw")
	})

	t.Run("message-and-wait", func(t *testing.T) {
		before := eventNumber(t, u, "mp")
		// wait with the current number blocks until the next event.
		waiter := exec.Command(udmBin, "wait", "mp", fmt.Sprint(before))
		waiter.Env = append(os.Environ(), "UDM_SOCKET="+u.sock)
		var wout strings.Builder
		waiter.Stdout = &wout
		if err := waiter.Start(); err != nil {
			t.Fatal(err)
		}
		u.ok("message", "mp", "0", "fail_path", a)
		if err := waiter.Wait(); err != nil {
			t.Fatalf("udm wait: %v", err)
		}
		after := eventNumber(t, u, "mp")
		if after <= before || strings.TrimSpace(wout.String()) == "" {
			t.Fatalf("event %d -> %d, wait printed %q", before, after, wout.String())
		}
		if got := u.ok("status", "mp"); !strings.Contains(got, a+" F 1 ") {
			t.Fatalf("status after fail_path: %q", got)
		}
		// wait NAME EVENT with an older number returns at once.
		if got := u.ok("wait", "mp", "0"); strings.TrimSpace(got) != fmt.Sprint(after) {
			t.Fatalf("udm wait mp 0 printed %q, want %d", got, after)
		}
		u.ok("message", "mp", "0", "reinstate_path", a)
		if got := u.ok("status", "mp"); !strings.Contains(got, a+" A 1 ") {
			t.Fatalf("status after reinstate_path: %q", got)
		}
		u.ok("message", "mp", "0", "fail_if_no_path")
		if got := u.ok("table", "mp"); !strings.HasPrefix(got, "0 2048 multipath 0 0 2 1 ") {
			t.Fatalf("table after fail_if_no_path: %q", got)
		}
		u.ok("message", "mp", "0", "queue_if_no_path")
		if got := u.ok("table", "mp"); !strings.HasPrefix(got, "0 2048 multipath 1 queue_if_no_path 0 2 1 ") {
			t.Fatalf("table after queue_if_no_path: %q", got)
		}
	})

	t.Run("multipathd-views", func(t *testing.T) {
		u.ok("create", "mp2", "--table", "0 2048 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 "+a+" 1 "+c+" 1")
		topo := u.ok("show", "topology")
		for _, want := range []string{"mp2", "size=1.0M features='1 queue_if_no_path' hwhandler='0'", a + " active", c + " active"} {
			if !strings.Contains(topo, want) {
				t.Fatalf("show topology lacks %q:\n%s", want, topo)
			}
		}
		if maps := u.ok("show", "maps"); !strings.Contains(maps, "mp2") || !strings.Contains(maps, "mp ") {
			t.Fatalf("show maps:\n%s", maps)
		}
		u.ok("fail", "path", c)
		paths := u.ok("show", "paths")
		if !regexp.MustCompile(`mp2 +` + regexp.QuoteMeta(c) + ` +1 +failed`).MatchString(paths) {
			t.Fatalf("show paths after fail path:\n%s", paths)
		}
		if got := u.ok("status", "mp2"); !strings.Contains(got, c+" F 1 ") {
			t.Fatalf("status after fail path: %q", got)
		}
		// The operator's fail pauses the checker: even with a fast
		// polling interval the path stays failed until reinstated.
		u.ok("checker", "mp2", "polling_interval=50ms")
		if got := u.ok("checker", "mp2"); !strings.Contains(got, "polling_interval      50ms\n") {
			t.Fatalf("checker settings: %q", got)
		}
		time.Sleep(300 * time.Millisecond) // several check intervals (a slow machine only weakens this check)
		if got := u.ok("status", "mp2"); !strings.Contains(got, c+" F 1 ") {
			t.Fatalf("the checker reinstated an operator-failed path: %q", got)
		}
		u.ok("reinstate", "path", c)
		if got := u.ok("status", "mp2"); !strings.Contains(got, c+" A 1 ") {
			t.Fatalf("status after reinstate path: %q", got)
		}
		// A path failed by message is the checker's to bring back.
		u.ok("message", "mp2", "0", "fail_path", c)
		eventually(t, "the checker to reinstate a path failed by message", func() bool {
			return strings.Contains(u.ok("status", "mp2"), c+" A 2 ")
		})
		u.ok("remove", "mp2")
	})

	t.Run("nbd-path", func(t *testing.T) {
		// A device over another export of the same daemon, reached as a
		// remote path through the NBD client.
		u.ok("create", "remote", "--table", "0 2048 linear "+u.nbdUnixURI("lin")+" 0")
		if got := u.ok("table", "remote"); got != "0 2048 linear "+u.nbdUnixURI("lin")+" 0\n" {
			t.Fatalf("table: %q", got)
		}
		cl := dialNBD(t, u.nbdURI("remote"))
		data := make([]byte, 8192)
		for i := range data {
			data[i] = byte(i * 7)
		}
		ctx := context.Background()
		if err := cl.WriteAt(ctx, data, 4096, false); err != nil {
			t.Fatal(err)
		}
		if err := cl.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		cl.Close()
		got := make([]byte, len(data))
		f, err := os.Open(a)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.ReadAt(got, 4096); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(data) {
			t.Fatal("data written through the NBD path did not reach the file under the lower device")
		}
		eventually(t, "remote to close", func() bool { return strings.Contains(u.ok("info", "remote"), "Open count:        0\n") })
		u.ok("remove", "remote")

		// A multipath path over NBD, with its I/O in the path metrics.
		uri := u.nbdUnixURI("lin")
		u.ok("create", "rmp", "--table", "0 2048 multipath 0 0 1 1 round-robin 0 1 1 "+uri+" 1")
		cl = dialNBD(t, u.nbdURI("rmp"))
		if err := cl.ReadAt(ctx, got, 4096); err != nil {
			t.Fatal(err)
		}
		if string(got) != string(data) {
			t.Fatal("read through an NBD multipath path returned other data")
		}
		cl.Close()
		for _, m := range []string{`udm_path_io_total{device="rmp",path="` + uri + `",op="read"}`,
			`udm_path_bytes_total{device="rmp",path="` + uri + `",op="read"}`,
			`udm_path_latency_seconds_count{device="rmp",path="` + uri + `",op="read"}`} {
			if v := scrape(t, u.info.Metrics, m); v <= 0 {
				t.Errorf("%s = %v", m, v)
			}
		}
		eventually(t, "rmp to close", func() bool { return strings.Contains(u.ok("info", "rmp"), "Open count:        0\n") })
		u.ok("remove", "rmp")
	})

	t.Run("remove", func(t *testing.T) {
		u.ok("create", "busy", "--table", "0 2048 zero")
		cl := dialNBD(t, u.nbdURI("busy"))
		r := u.udm("remove", "busy")
		if r.code != 1 || !strings.HasPrefix(r.err, `udm: device "busy" is busy`) || strings.Count(r.err, "\n") != 1 {
			t.Fatalf("remove of an open device: %s", r)
		}
		u.ok("remove", "--deferred", "busy")
		if got := u.ok("info", "busy"); !strings.Contains(got, "State:             ACTIVE (DEFERRED REMOVE)\n") {
			t.Fatalf("info after deferred remove:\n%s", got)
		}
		if _, err := os.Stat(filepath.Join(u.stateDir, "devices", "busy.json")); err != nil {
			t.Fatalf("state of a device pending removal: %v", err)
		}
		cl.Close()
		eventually(t, "the deferred removal", func() bool { return !strings.Contains(u.ok("ls"), "busy") })
		eventually(t, "the removed device's state file to go", func() bool {
			_, err := os.Stat(filepath.Join(u.stateDir, "devices", "busy.json"))
			return os.IsNotExist(err)
		})

		u.ok("create", "busy2", "--table", "0 2048 zero")
		cl = dialNBD(t, u.nbdURI("busy2"))
		u.ok("remove", "-f", "busy2")
		if strings.Contains(u.ok("ls"), "busy2") {
			t.Fatal("forced remove left the device")
		}
		buf := make([]byte, 512)
		if err := cl.ReadAt(context.Background(), buf, 0); err == nil {
			t.Fatal("I/O to a force-removed device succeeded")
		}
		cl.Close()
		u.ok("create", "gone", "--table", "0 8 zero")
		u.ok("remove", "gone")
		if _, err := os.Stat(filepath.Join(u.stateDir, "devices", "gone.json")); !os.IsNotExist(err) {
			t.Fatalf("state file of a removed device: %v", err)
		}
	})

	t.Run("errors", func(t *testing.T) {
		missing := `udm: device "nope" not found` + "\n"
		for _, args := range [][]string{
			{"info", "nope"}, {"table", "nope"}, {"status", "nope"}, {"suspend", "nope"}, {"resume", "nope"},
			{"remove", "nope"}, {"clear", "nope"}, {"load", "nope", "--table", "0 8 zero"},
			{"message", "nope", "0", "fail_if_no_path"}, {"wait", "nope"}, {"checker", "nope"},
		} {
			if r := u.udm(args...); r.code != 1 || r.err != missing || r.out != "" {
				t.Errorf("udm %s: %s", strings.Join(args, " "), r)
			}
		}
		oneLine := func(what string, r result, prefix string) {
			t.Helper()
			if r.code != 1 || !strings.HasPrefix(r.err, prefix) || strings.Count(r.err, "\n") != 1 || r.out != "" {
				t.Errorf("%s: want one line starting %q and exit 1, got %s", what, prefix, r)
			}
		}
		oneLine("unknown target", u.udm("create", "x", "--table", "0 100 lineer "+a+" 0"), `udm: bad table: unknown target type "lineer"`)
		r := u.udm("create", "x", "--table", "0 100 linear /nonexistent/file 0")
		oneLine("missing backing file", r, "udm: bad table: ")
		if !strings.Contains(r.err, "/nonexistent/file") {
			t.Errorf("bad table error does not name the file: %s", r)
		}
		r = u.udm("create", "x", "--table", "0 100 linear "+a+" zz")
		oneLine("bad offset", r, "udm: bad table: ")
		if !strings.Contains(r.err, "zz") {
			t.Errorf("bad table error does not name the offending word: %s", r)
		}
		oneLine("gap", u.udm("create", "x", "--table-file", writeFile(t, "0 8 zero\n16 8 zero\n")), "udm: bad table: ")
		oneLine("bad load", u.udm("load", "lin", "--table", "0 8 frob"), `udm: bad table: unknown target type "frob"`)
		oneLine("duplicate", u.udm("create", "lin", "--table", "0 8 zero"), `udm: device "lin" already exists`)
		oneLine("bad name", u.udm("create", "a/b", "--table", "0 8 zero"), "udm: invalid device name")
		oneLine("message to linear", u.udm("message", "lin", "0", "hello"), "udm: invalid message")
		oneLine("fail unknown path", u.udm("fail", "path", "/no/such/path"), `udm: no multipath map has a path "/no/such/path"`)
		oneLine("bad checker setting", u.udm("checker", "mp", "polling_interval=soon"), "udm: bad polling_interval")
		if strings.Contains(u.ok("ls"), "x\n") {
			t.Error("a failed create left a device")
		}

		sock := filepath.Join(sockDir(t), "none.sock")
		want := "udm: daemon not running (no answer on " + sock + ")\n"
		if r := runUDM(t, []string{"UDM_SOCKET=" + sock}, "", "ls"); r.code != 1 || r.err != want {
			t.Errorf("no daemon (UDM_SOCKET): %s", r)
		}
		if r := runUDM(t, nil, "", "ls", "--control", sock); r.code != 1 || r.err != want {
			t.Errorf("no daemon (--control): %s", r)
		}
		// --control wins over UDM_SOCKET.
		if r := runUDM(t, []string{"UDM_SOCKET=" + sock}, "", "ls", "--control", u.sock); r.code != 0 {
			t.Errorf("--control over UDM_SOCKET: %s", r)
		}

		for _, args := range [][]string{
			{"create", "x"}, {"create", "x", "--table", "0 8 zero", "-"}, {"suspend"}, {"remove", "a", "b"},
			{"show", "things"}, {"fail", "map", "x"}, {"message", "lin", "0"}, {"ls", "--bogus"}, {"wait", "lin", "x"},
		} {
			r := u.udm(args...)
			if r.code == 0 || !strings.HasPrefix(r.err, "udm: ") || strings.Count(r.err, "\n") != 1 {
				t.Errorf("udm %s: want a one-line usage error, got %s", strings.Join(args, " "), r)
			}
		}
	})
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "table-*")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return f.Name()
}

func (u *udmd) udmInOK(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	r := u.udmIn(stdin, args...)
	if r.code != 0 || r.err != "" {
		t.Fatalf("udm %s: %s", strings.Join(args, " "), r)
	}
	return r.out
}

func eventNumber(t *testing.T, u *udmd, name string) int {
	t.Helper()
	m := regexp.MustCompile(`Event number: +(\d+)`).FindStringSubmatch(u.ok("info", name))
	if m == nil {
		t.Fatalf("no event number in udm info %s", name)
	}
	var n int
	fmt.Sscan(m[1], &n)
	return n
}

// dialNBD connects to an export with udm's own NBD client.
func dialNBD(t *testing.T, uri string) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	cl, err := client.Dial(ctx, uri, client.Options{Log: zerolog.Nop(), ReconnectTimeout: -1, Retries: -1})
	if err != nil {
		t.Fatalf("nbd dial %s: %v", uri, err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}
