package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"udm/daemon"
	"udm/daemon/api"
	"udm/internal/testutil"
)

// pattern is data for a test write.
func pattern(seed byte, n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = seed + byte(i%251)
	}
	return p
}

func (u *udmd) write(dev string, off int64, p []byte) {
	u.t.Helper()
	cl := dialNBD(u.t, u.nbdURI(dev))
	defer cl.Close()
	if err := cl.WriteAt(context.Background(), p, off, true); err != nil {
		u.t.Fatalf("write %s: %v", dev, err)
	}
}

func (u *udmd) read(dev string, off int64, n int) []byte {
	u.t.Helper()
	cl := dialNBD(u.t, u.nbdURI(dev))
	defer cl.Close()
	p := make([]byte, n)
	if err := cl.ReadAt(context.Background(), p, off); err != nil {
		u.t.Fatalf("read %s: %v", dev, err)
	}
	return p
}

func readState(t *testing.T, u *udmd, name string) daemon.DeviceState {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(u.stateDir, "devices", name+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var st daemon.DeviceState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// pathLine finds the `show paths` line of a path.
func (u *udmd) pathLine(path string) string {
	u.t.Helper()
	for _, l := range strings.Split(u.ok("show", "paths"), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] == path {
			return l
		}
	}
	u.t.Fatalf("no path %s in show paths:\n%s", path, u.ok("show", "paths"))
	return ""
}

// TestRestoreMissingPath: a multipath map one of whose two paths is
// missing at restart comes back serving on the other, the missing path
// failed and its state file kept; once the path's file is back, the
// checker reinstates it, and so does an operator's reinstate.
func TestRestoreMissingPath(t *testing.T) {
	u, dir := startScratch(t)
	b := backing(t, dir, "b", 8<<20)
	bl := filepath.Join(dir, "b-link")
	bm := filepath.Join(dir, "b-manual")
	for _, l := range []string{bl, bm} {
		if err := os.Link(b, l); err != nil {
			t.Fatal(err)
		}
	}
	mpTable := func(p0, p1 string) string {
		return "0 16384 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 " + p0 + " 1 " + p1 + " 1"
	}
	u.ok("create", "mp", "--table", mpTable(b, bl))
	u.ok("checker", "mp", "polling_interval=100ms")
	// mq's checker would not look again for an hour: only the operator
	// brings its path back.
	u.ok("create", "mq", "--table", mpTable(b, bm))
	u.ok("checker", "mq", "polling_interval=1h")
	data := pattern(7, 65536)
	u.write("mp", 4096, data)
	u.stop()
	saved := map[string]daemon.DeviceState{"mp": readState(t, u, "mp"), "mq": readState(t, u, "mq")}
	for _, l := range []string{bl, bm} {
		if err := os.Remove(l); err != nil {
			t.Fatal(err)
		}
	}

	u.restart()
	u.okWant("ls after restart with a path missing", "mp\nmq\n", "ls")
	for _, p := range []string{bl, bm} {
		if l := u.pathLine(p); !regexp.MustCompile(` failed `).MatchString(l) {
			t.Errorf("missing path %s not failed:\n%s", p, l)
		}
	}
	if st := u.ok("status", "mp"); !strings.Contains(st, bl+" F ") || !strings.Contains(st, b+" A ") {
		t.Errorf("status of mp with a path missing:\n%s", st)
	}
	if got := u.read("mp", 4096, len(data)); !bytes.Equal(got, data) {
		t.Fatal("data read on the remaining path differs")
	}
	for n, st := range saved {
		if got := readState(t, u, n); got.Table != st.Table {
			t.Errorf("%s's saved table changed:\n%s\nwas:\n%s", n, got.Table, st.Table)
		}
		if kept, _ := filepath.Glob(filepath.Join(u.stateDir, "devices", n+".json.corrupt-*")); len(kept) != 0 {
			t.Errorf("%s's state was set aside: %v", n, kept)
		}
	}
	if !strings.Contains(u.stderr.String(), "multipath path missing at restore") {
		t.Errorf("no log line about the missing path")
	}

	// The file is back: mp's checker reinstates its path.
	for _, l := range []string{bl, bm} {
		if err := os.Link(b, l); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the checker to reinstate "+bl, func() bool {
		return regexp.MustCompile(` active +ready `).MatchString(u.pathLine(bl))
	})
	// mq's path comes back by hand.
	if l := u.pathLine(bm); !strings.Contains(l, " failed ") {
		t.Fatalf("mq's path came back without a check or the operator:\n%s", l)
	}
	u.ok("reinstate", "path", bm)
	if l := u.pathLine(bm); !strings.Contains(l, " active ") {
		t.Fatalf("reinstate did not bring the path back:\n%s", l)
	}
	// I/O goes through both paths of each map (round-robin) and reads the data.
	for i := 0; i < 4; i++ {
		for _, m := range []string{"mp", "mq"} {
			if got := u.read(m, 4096, len(data)); !bytes.Equal(got, data) {
				t.Fatalf("%s: data differs after the path came back", m)
			}
		}
	}
	if st := u.ok("status", "mq"); !strings.Contains(st, bm+" A ") {
		t.Fatalf("mq's path failed again on I/O:\n%s", st)
	}
}

// TestRestoreMissingBacking: a device whose backing file is gone at
// restart comes back in an error state — listed, `udm info` says why,
// its state file untouched, its export refused — and so does a device
// stacked on it; with the file back, a resume or a restart brings them
// up with their data.
func TestRestoreMissingBacking(t *testing.T) {
	u, dir := startScratch(t)
	a := backing(t, dir, "a", 8<<20)
	u.ok("create", "lin", "--table", "0 16384 linear "+a+" 0")
	u.ok("create", "top", "--table", "0 8192 linear /dev/mapper/lin 8192")
	u.ok("create", "other", "--table", "0 2048 zero")
	u.ok("load", "other", "--table", "0 4096 linear "+a+" 0")
	u.ok("create", "cleared", "--table", "0 2048 zero")
	u.ok("load", "cleared", "--table", "0 4096 linear "+a+" 0")
	data := pattern(3, 65536)
	u.write("top", 0, data)
	u.stop()
	files := map[string][]byte{}
	for _, n := range []string{"lin", "top", "other"} {
		b, err := os.ReadFile(filepath.Join(u.stateDir, "devices", n+".json"))
		if err != nil {
			t.Fatal(err)
		}
		files[n] = b
	}
	away := a + ".away"
	if err := os.Rename(a, away); err != nil {
		t.Fatal(err)
	}

	u.restart()
	u.okWant("ls after restart without the backing file", "cleared\nlin\nother\ntop\n", "ls")
	info := u.ok("info", "lin")
	if !regexp.MustCompile(`Error: +live table: .*` + regexp.QuoteMeta(a) + `.*no such file`).MatchString(info) {
		t.Errorf("info of lin does not say why:\n%s", info)
	}
	if !strings.Contains(u.ok("info", "top"), "Error:             live table:") {
		t.Errorf("info of top does not say why:\n%s", u.ok("info", "top"))
	}
	if info := u.ok("info", "other"); !strings.Contains(info, "Error:             inactive table:") || !strings.Contains(info, "Tables present:    LIVE\n") {
		t.Errorf("info of other:\n%s", info)
	}
	if r := u.udm("status", "other"); r.code != 0 || r.out != "0 2048 zero \n" {
		t.Errorf("other's live table: %s", r)
	}
	if r := runNbdinfo(t, u.nbdURI("lin")); r == nil {
		t.Errorf("the export of a device in error was not refused")
	}
	// A clear drops the inactive table that did not load.
	u.ok("clear", "cleared")
	if info := u.ok("info", "cleared"); strings.Contains(info, "Error:") {
		t.Errorf("cleared is still in error:\n%s", info)
	}
	if st := readState(t, u, "cleared"); st.Inactive != "" {
		t.Errorf("cleared's inactive table is still saved: %+v", st)
	}
	// Operations that don't touch the missing part keep it as saved.
	u.ok("suspend", "other")
	u.ok("resume", "other")
	u.kill9()
	for n, want := range files {
		b, err := os.ReadFile(filepath.Join(u.stateDir, "devices", n+".json"))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, want) {
			t.Errorf("%s's state changed:\n%s\nwas:\n%s", n, b, want)
		}
		if kept, _ := filepath.Glob(filepath.Join(u.stateDir, "devices", n+".json.corrupt-*")); len(kept) != 0 {
			t.Errorf("%s's state was set aside: %v", n, kept)
		}
	}

	// The file is back: resume brings lin up (it retries the saved
	// table), a restart the others.
	u.restart()
	if err := os.Rename(away, a); err != nil {
		t.Fatal(err)
	}
	u.ok("resume", "lin")
	if info := u.ok("info", "lin"); strings.Contains(info, "Error:") {
		t.Errorf("lin still in error after resume:\n%s", info)
	}
	u.stop()
	u.restart()
	for _, n := range []string{"lin", "top", "other"} {
		if info := u.ok("info", n); strings.Contains(info, "Error:") {
			t.Errorf("%s still in error after the file came back:\n%s", n, info)
		}
	}
	if !strings.Contains(u.ok("info", "cleared"), "Tables present:    LIVE\n") {
		t.Errorf("cleared's inactive table came back:\n%s", u.ok("info", "cleared"))
	}
	if !strings.Contains(u.ok("info", "other"), "LIVE & INACTIVE") {
		t.Errorf("other's inactive table did not come back:\n%s", u.ok("info", "other"))
	}
	if got := u.read("top", 0, len(data)); !bytes.Equal(got, data) {
		t.Fatal("top's data differs")
	}
	if got := u.read("lin", 8192*512, len(data)); !bytes.Equal(got, data) {
		t.Fatal("lin's data differs")
	}
}

// runNbdinfo returns the error of an NBD handshake with uri (nil if the
// export was served).
func runNbdinfo(t *testing.T, uri string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), safety)
	defer cancel()
	return exec.CommandContext(ctx, "nbdinfo", "--size", uri).Run()
}

// TestUnsavedOperationsFail: an operation whose state can't be written
// fails with the reason and is undone, so the daemon and the state dir
// agree — here the state file's name is taken by a directory.
func TestUnsavedOperationsFail(t *testing.T) {
	u, dir := startScratch(t)
	b := backing(t, dir, "b", 8<<20)
	bl := filepath.Join(dir, "b-link")
	if err := os.Link(b, bl); err != nil {
		t.Fatal(err)
	}
	devices := filepath.Join(u.stateDir, "devices")
	block := func(name string) (restore func()) {
		t.Helper()
		f := filepath.Join(devices, name+".json")
		saved, err := os.ReadFile(f)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		os.Remove(f)
		// A directory with a file in it: neither renamed over nor removed.
		if err := os.MkdirAll(filepath.Join(f, "x"), 0o700); err != nil {
			t.Fatal(err)
		}
		return func() {
			t.Helper()
			if err := os.RemoveAll(f); err != nil {
				t.Fatal(err)
			}
			if saved != nil {
				if err := os.WriteFile(f, saved, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	fails := func(args ...string) {
		t.Helper()
		r := u.udm(args...)
		if r.code == 0 || !strings.Contains(r.err, "state not") {
			t.Fatalf("udm %s with its state unwritable: %s", strings.Join(args, " "), r)
		}
	}
	// The time to the next check moves; a restart resets event numbers.
	clean := regexp.MustCompile(`\d+(\.\d+)?(ms|s|µs|m)\S*|Event number: +\d+`)
	view := func(name string) string {
		v := clean.ReplaceAllString(u.ok("info", name)+u.ok("table", name)+u.ok("table", "--inactive", name)+u.ok("show", "paths"), "T")
		// An operator-failed path is not checked after a restart.
		v = regexp.MustCompile(`(ready|undef) \(operator\)`).ReplaceAllString(v, "? (operator)")
		return regexp.MustCompile(`[ \t]+`).ReplaceAllString(v, " ")
	}

	unblock := block("x")
	fails("create", "x", "--table", "0 2048 zero")
	unblock()
	u.okWant("a create that was not saved left a device", "No devices found\n", "ls")

	u.ok("create", "y", "--table", "0 16384 multipath 0 0 1 1 round-robin 0 2 1 "+b+" 1 "+bl+" 1")
	u.ok("load", "y", "--table", "0 16384 multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 "+b+" 1")
	before := view("y")
	for _, op := range [][]string{
		{"load", "y", "--table", "0 16384 multipath 0 0 1 1 round-robin 0 1 1 " + bl + " 1"},
		{"clear", "y"},
		{"suspend", "y"},
		{"suspend", "--noflush", "y"},
		{"resume", "y"},
		{"fail", "path", bl},
		{"remove", "y"},
		{"remove", "--deferred", "y"},
		{"checker", "y", "polling_interval=1s"},
	} {
		unblock := block("y")
		fails(op...)
		unblock()
		if now := view("y"); now != before {
			t.Fatalf("udm %s was not undone:\n%s\nbefore:\n%s", strings.Join(op, " "), now, before)
		}
	}
	// The same with the path failed (reinstate) and suspended (resume).
	u.ok("fail", "path", bl)
	u.ok("suspend", "y")
	before = view("y")
	for _, op := range [][]string{{"reinstate", "path", bl}, {"resume", "y"}} {
		unblock := block("y")
		fails(op...)
		unblock()
		if now := view("y"); now != before {
			t.Fatalf("udm %s was not undone:\n%s\nbefore:\n%s", strings.Join(op, " "), now, before)
		}
	}
	u.kill9()
	u.restart()
	if now := view("y"); now != before {
		t.Fatalf("after a restart:\n%s\nbefore:\n%s", now, before)
	}
}

// TestCreateOutOfFiles: a create whose state can't be saved because
// the daemon has no file descriptor left fails, and the device is not
// there, now or after a restart.
func TestCreateOutOfFiles(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo")
	c := api.NewClient(u.sock)
	ctx := context.Background()
	if _, err := c.Daemon(ctx); err != nil { // a connection to reuse
		t.Fatal(err)
	}
	pid := u.cmd.Process.Pid
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	used := map[int]bool{}
	for _, e := range ents {
		n, _ := strconv.Atoi(e.Name())
		used[n] = true
	}
	free := 0
	for used[free] {
		free++
	}
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: uint64(free), Max: old.Max}, nil); err != nil {
		t.Fatal(err)
	}
	_, err = c.Create(ctx, api.CreateRequest{Name: "nofd", Table: "0 2048 zero"})
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
		t.Fatal(err)
	}
	if err == nil || !strings.Contains(err.Error(), "too many open files") {
		t.Fatalf("create with no descriptor left: %v", err)
	}
	u.okWant("ls", "No devices found\n", "ls")
	u.kill9()
	u.restart()
	u.okWant("ls after restart", "No devices found\n", "ls")
}

// TestNames: names the daemon can't keep are refused with a clear
// error; every name it accepts comes back after a restart.
func TestNames(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo")
	c := api.NewClient(u.sock)
	ctx := context.Background()
	for _, n := range []string{"", "a\x00b", "cr\rx", "esc\x1b[31m", "del\x7f", "c1\u0085", "bad\xffutf8", ".hid.json.tmp-1",
		".", "..", ".x", "a/b", "sp ace", strings.Repeat("n", 128), strings.Repeat("n", 1<<20)} {
		_, err := c.Create(ctx, api.CreateRequest{Name: n, Table: "0 8 zero"})
		if err == nil || !strings.HasPrefix(err.Error(), "invalid device name") || !errors.Is(err, syscall.EINVAL) {
			t.Errorf("create %q: %.300v", clipName(n), err)
		}
		if err != nil && len(err.Error()) > 400 {
			t.Errorf("the error repeats all of a %d-byte name", len(n))
		}
	}
	// Invalid UTF-8 from the command line is refused before it is sent
	// (JSON would carry it as U+FFFD).
	if r := u.udm("create", "bad\xff", "--table", "0 8 zero"); r.code == 0 || !strings.Contains(r.err, "UTF-8") {
		t.Errorf("create with an invalid UTF-8 name: %s", r)
	}
	good := []string{"hid.json.tmp-1", "é-ok_1.2", "x.json.corrupt-1", "lock", strings.Repeat("n", 127), "a..b"}
	for _, n := range good {
		if _, err := c.Create(ctx, api.CreateRequest{Name: n, Table: "0 8 zero"}); err != nil {
			t.Errorf("create %q: %v", n, err)
		}
	}
	list := func() []string {
		devs, err := api.NewClient(u.sock).List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, d := range devs {
			out = append(out, d.Name)
		}
		return out
	}
	before := list()
	if len(before) != len(good) {
		t.Fatalf("devices: %q", before)
	}
	u.kill9()
	u.restart()
	if after := list(); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Fatalf("after restart: %q, before: %q", after, before)
	}
}

func clipName(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

// TestOperatorMarks: a path the operator failed stays failed until
// reinstated, across a reload without it and a restart; the state file
// keeps the mark; a reinstate of a path no table names drops it.
func TestOperatorMarks(t *testing.T) {
	u, dir := startScratch(t)
	b := backing(t, dir, "b", 8<<20)
	bl := filepath.Join(dir, "b-link")
	if err := os.Link(b, bl); err != nil {
		t.Fatal(err)
	}
	both := "0 16384 multipath 0 0 1 1 round-robin 0 2 1 " + b + " 1 " + bl + " 1"
	one := "0 16384 multipath 0 0 1 1 round-robin 0 1 1 " + b + " 1"
	reload := func(table string) {
		u.ok("suspend", "--noflush", "mp")
		u.ok("load", "mp", "--table", table)
		u.ok("resume", "mp")
	}
	operatorFailed := func() bool {
		return regexp.MustCompile(` failed +\S+ ?\(operator\) `).MatchString(u.pathLine(bl))
	}
	u.ok("create", "mp", "--table", both)
	u.ok("fail", "path", bl)
	reload(one)
	if st := readState(t, u, "mp"); strings.Join(st.FailedPaths, ",") != bl {
		t.Fatalf("the mark is not saved while the table lacks the path: %+v", st)
	}
	u.kill9()
	u.restart()
	reload(both)
	if !operatorFailed() {
		t.Fatalf("the operator's mark did not survive a reload and a restart:\n%s", u.pathLine(bl))
	}
	u.kill9()
	u.restart()
	if !operatorFailed() {
		t.Fatalf("the operator's mark did not survive a restart:\n%s", u.pathLine(bl))
	}

	// Reinstated while no table names it: the mark goes, here and in
	// the state file.
	reload(one)
	u.ok("reinstate", "path", bl)
	if st := readState(t, u, "mp"); len(st.FailedPaths) != 0 {
		t.Fatalf("the mark is still saved: %+v", st)
	}
	u.kill9()
	u.restart()
	reload(both)
	if l := u.pathLine(bl); !strings.Contains(l, " active ") {
		t.Fatalf("a reinstated path came back failed:\n%s", l)
	}
	// A removed map's marks go with it.
	u.ok("fail", "path", bl)
	u.ok("remove", "mp")
	u.ok("create", "mp", "--table", both)
	if l := u.pathLine(bl); !strings.Contains(l, " active ") {
		t.Fatalf("a new map of a removed map's name has its marks:\n%s", l)
	}
}

// TestPermissionDenied: a user who may not use the control socket is
// told so, not that the daemon isn't running.
func TestPermissionDenied(t *testing.T) {
	setpriv := requireTool(t, "setpriv")
	u := startUDM(t, t.TempDir(), "--no-demo")
	// A copy of the binary the unprivileged user can run.
	bin := filepath.Join(sockDir(t), "udm")
	copyFile(t, testutil.UDM(), bin, 0o755)
	os.Chmod(filepath.Dir(bin), 0o755)
	os.Chmod(filepath.Dir(u.sock), 0o755) // the socket itself is 0600, root's
	cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin, "ls")
	cmd.Env = append(os.Environ(), "UDM_SOCKET="+u.sock)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "permission denied") || strings.Contains(string(out), "not running") {
		t.Fatalf("udm ls as nobody: %v\n%s", err, out)
	}
}

func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed", name)
	}
	return p
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// TestServeBindsFirst: a daemon that can't bind its NBD port leaves a
// fresh state dir with no demo and no state, and the next start there
// makes the demo.
func TestServeBindsFirst(t *testing.T) {
	testutil.SkipShort(t, "an end-to-end test of udm serve")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	state := filepath.Join(t.TempDir(), "state")
	sock := filepath.Join(sockDir(t), "c.sock")
	r := runUDM(t, nil, "", "serve", "--state-dir", state, "--control", sock, "--nbd", ln.Addr().String(), "--nbd-unix", "")
	if r.code == 0 || !strings.Contains(r.err, "address already in use") {
		t.Fatalf("serve on a taken port: %s", r)
	}
	ents, _ := os.ReadDir(state)
	for _, e := range ents {
		if e.Name() != "lock" {
			t.Errorf("a serve that could not bind left %s in its state dir", e.Name())
		}
	}
	u := startUDM(t, state)
	u.okWant("the next start made no demo", "demo\n", "ls")
}

// TestEchoIsCapped: error replies and log lines repeat at most a few
// hundred bytes of an input, however long.
func TestEchoIsCapped(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo")
	c := api.NewClient(u.sock)
	ctx := context.Background()
	huge := strings.Repeat("x", 15<<20)
	var errs []error
	_, err := c.Create(ctx, api.CreateRequest{Name: "big", Table: "0 8 " + huge})
	errs = append(errs, err)
	errs = append(errs, c.Load(ctx, "nosuch"+huge[:1<<10], "0 8 zero"))
	u.ok("create", "mp", "--table", "0 8 zero")
	_, err = c.Message(ctx, "mp", 0, []string{huge[:1<<20]})
	errs = append(errs, err)
	for i, err := range errs {
		if err == nil {
			t.Fatalf("request %d did not fail", i)
		}
		if len(err.Error()) > 2048 {
			t.Errorf("request %d: a %d-byte error", i, len(err.Error()))
		}
	}
	// A table of 100000 lines, logged when created.
	var tb strings.Builder
	for i := 0; i < 100000; i++ {
		tb.WriteString(strconv.Itoa(i*8) + " 8 zero\n")
	}
	if _, err := c.Create(ctx, api.CreateRequest{Name: "long", Table: tb.String()}); err != nil {
		t.Fatal(err)
	}
	u.ok("ls")
	for _, l := range strings.Split(u.stderr.String(), "\n") {
		if len(l) > 4096 {
			t.Errorf("a %d-byte log line: %.200s…", len(l), l)
		}
	}
}

// TestMessageLogArgs: a message's log line carries its arguments under
// their own key, so that the JSON has one "message".
func TestMessageLogArgs(t *testing.T) {
	u, dir := startScratch(t)
	b := backing(t, dir, "b", 8<<20)
	u.ok("create", "mp", "--table", "0 16384 multipath 0 0 1 1 round-robin 0 1 1 "+b+" 1")
	u.ok("message", "mp", "0", "fail_path", b)
	var line string
	eventually(t, "the message's log line", func() bool {
		for _, l := range strings.Split(u.stderr.String(), "\n") {
			if strings.Contains(l, `"message":"message"`) {
				line = l
				return true
			}
		}
		return false
	})
	if strings.Count(line, `"message":`) != 1 || !strings.Contains(line, `"args":["fail_path",`) {
		t.Fatalf("message log line: %s", line)
	}
}

// TestLockWait: a daemon whose state dir is still locked by one that is
// exiting waits for the lock, then serves.
func TestLockWait(t *testing.T) {
	state := t.TempDir()
	f, err := os.OpenFile(filepath.Join(state, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	u := launchUDM(t, state, "--no-demo")
	eventually(t, "the daemon to wait for the lock", func() bool {
		return strings.Contains(u.stderr.String(), "waiting for its holder to exit")
	})
	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	u.await()
	u.ok("ls")
	if !strings.Contains(u.stderr.String(), "waiting for its holder to exit") {
		t.Fatalf("the daemon did not wait for the lock:\n%s", u.stderr)
	}
}

// TestDeferredRemoveRestart: a device whose removal waits for its last
// close does not come back after a crash (the restart leaves it no
// user), and its state goes.
func TestDeferredRemoveRestart(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo")
	u.ok("create", "busy", "--table", "0 2048 zero")
	u.ok("create", "stay", "--table", "0 2048 zero")
	cl := dialNBD(t, u.nbdURI("busy"))
	u.ok("remove", "--deferred", "busy")
	if st := readState(t, u, "busy"); !st.DeferredRemove {
		t.Fatalf("the deferred removal is not saved: %+v", st)
	}
	u.kill9()
	cl.Close()
	u.restart()
	u.okWant("ls after a restart", "stay\n", "ls")
	if _, err := os.Stat(filepath.Join(u.stateDir, "devices", "busy.json")); !os.IsNotExist(err) {
		t.Fatalf("the state of a device removed on last close is still there: %v", err)
	}
}

// A state file from a udm that spelled "not checked" as a negative
// polling interval restores with the checker off, not with the settings
// refused.
func TestRestoreLegacyNegativePollingInterval(t *testing.T) {
	u, dir := startScratch(t)
	b := backing(t, dir, "b", 8<<20)
	u.ok("create", "mp", "--table", "0 16384 multipath 0 0 1 1 round-robin 0 1 1 "+b+" 1")
	u.ok("checker", "mp", "polling_interval=off")
	u.stop()
	st := readState(t, u, "mp")
	if st.Checker == nil || st.Checker.PollingInterval != "off" {
		t.Fatalf("saved checker settings %+v, want polling_interval off", st.Checker)
	}
	st.Checker.PollingInterval = "-1s"
	raw, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(u.stateDir, "devices", "mp.json"), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	u.restart()
	if out := u.ok("checker", "mp"); !regexp.MustCompile(`(?m)^polling_interval +off$`).MatchString(out) {
		t.Errorf("checker after restoring polling_interval -1s:\n%s", out)
	}
	if info := u.ok("info", "mp"); strings.Contains(info, "checker settings") {
		t.Errorf("restore refused the legacy settings:\n%s", info)
	}
}
