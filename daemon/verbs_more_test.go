package daemon_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"udm/daemon/api"
	"udm/multipath"
)

// TestRenamePersists: a renamed device is saved under its new name only,
// with its checker settings and operator marks, and comes back so after
// a restart; a rename whose state can't be saved, to a taken name, or of
// a device another table names, changes nothing.
func TestRenamePersists(t *testing.T) {
	u, dir := startScratch(t)
	a := backing(t, dir, "a", 8<<20)
	b := backing(t, dir, "b", 8<<20)
	devices := filepath.Join(u.stateDir, "devices")
	u.ok("create", "mp", "--table", "0 2048 multipath 0 0 1 1 round-robin 0 2 1 "+a+" 1 "+b+" 1")
	u.ok("checker", "mp", "polling_interval=1s")
	u.ok("fail", "path", b)
	u.ok("rename", "mp", "mq")
	if _, err := os.Stat(filepath.Join(devices, "mp.json")); !os.IsNotExist(err) {
		t.Fatalf("the old state file is still there: %v", err)
	}
	st := readState(t, u, "mq")
	if st.Name != "mq" || st.Checker == nil || st.Checker.PollingInterval != "1s" || !reflect.DeepEqual(st.FailedPaths, []string{b}) {
		t.Fatalf("state after rename: %+v", st)
	}
	check := func(when string) {
		t.Helper()
		if ls := u.ok("ls"); ls != "mq\n" {
			t.Fatalf("%s: ls %q", when, ls)
		}
		if got := u.ok("checker", "mq"); !strings.Contains(got, "polling_interval      1s\n") {
			t.Fatalf("%s: checker settings not kept:\n%s", when, got)
		}
		if l := u.pathLine(b); !strings.HasPrefix(l, "mq ") || !strings.Contains(l, "failed") || !strings.Contains(l, "(operator)") {
			t.Fatalf("%s: the operator-failed path: %q", when, l)
		}
	}
	check("after rename")
	u.stop()
	u.restart()
	check("after restart")

	// The new name's state file can't be written: nothing changes.
	blocked := filepath.Join(devices, "mr.json")
	if err := os.MkdirAll(filepath.Join(blocked, "x"), 0o700); err != nil {
		t.Fatal(err)
	}
	if r := u.udm("rename", "mq", "mr"); r.code != 1 || !strings.Contains(r.err, "device not renamed: state not saved") {
		t.Fatalf("rename with the new state unwritable: %s", r)
	}
	os.RemoveAll(blocked)
	check("after a rename that was not saved")
	if _, err := os.Stat(filepath.Join(devices, "mq.json")); err != nil {
		t.Fatal(err)
	}

	u.ok("create", "lin", "--table", "0 2048 linear "+a+" 0")
	u.ok("create", "top", "--table", "0 2048 linear /dev/mapper/lin 0")
	if r := u.udm("rename", "mq", "lin"); r.code != 1 || r.err != "udm: device \"lin\" already exists\n" {
		t.Fatalf("rename to a taken name: %s", r)
	}
	if r := u.udm("rename", "lin", "lin2"); r.code != 1 || !strings.Contains(r.err, `device "lin" is in the table of top`) {
		t.Fatalf("rename of a device a table names: %s", r)
	}
	if r := u.udm("rename", "nope", "x"); r.code != 1 || r.err != "udm: device \"nope\" not found\n" {
		t.Fatalf("rename of no device: %s", r)
	}
	if r := u.udm("rename", "mq", "a/b"); r.code != 1 || !strings.Contains(r.err, "invalid device name") {
		t.Fatalf("rename to a bad name: %s", r)
	}
	u.ok("rename", "top", "top2")
	u.okWant("ls", "lin\nmq\ntop2\n", "ls")
}

// TestRemoveAll: remove_all removes the devices not open, users before
// the devices they stack on, and fails naming those left; with --force
// it removes the open ones too.
func TestRemoveAll(t *testing.T) {
	u, dir := startScratch(t)
	a := backing(t, dir, "a", 8<<20)
	u.ok("create", "lin", "--table", "0 2048 linear "+a+" 0")
	u.ok("create", "top", "--table", "0 2048 linear /dev/mapper/lin 0")
	u.ok("create", "z", "--table", "0 2048 zero")
	cl := dialNBD(t, u.nbdUnixURI("z"))
	defer cl.Close()
	r := u.udm("remove_all")
	if r.code != 1 || r.err != "udm: remove_all: 1 device(s) left, open: z (remove_all --force removes them)\n" {
		t.Fatalf("remove_all with z open: %s", r)
	}
	u.okWant("left", "z\n", "ls")
	for _, n := range []string{"lin", "top"} {
		if _, err := os.Stat(filepath.Join(u.stateDir, "devices", n+".json")); !os.IsNotExist(err) {
			t.Fatalf("state of %s: %v", n, err)
		}
	}
	u.ok("remove_all", "--force")
	u.okWant("after remove_all --force", "No devices found\n", "ls")
	u.ok("remove_all")
}

// TestMapEdits: add path, del path, switch group, resize map (also after
// the backing grew underneath) and
// disable/restore queueing change a multipath map while a client writes
// and reads it back, without an I/O error, and each change is saved.
func TestMapEdits(t *testing.T) {
	u, dir := startScratch(t)
	a := backing(t, dir, "a", 8<<20)
	// Every path the same file under another name: the same data under
	// every path, as multipath assumes.
	link := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.Link(a, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	b, c, bl := link("b"), link("c"), link("a-link")
	u.ok("create", "mp", "--table", "0 2048 multipath 1 queue_if_no_path 0 2 1 round-robin 0 1 1 "+a+" 1 round-robin 0 1 1 "+b+" 1")
	cl := dialNBD(t, u.nbdUnixURI("mp"))
	defer cl.Close()

	var stop atomic.Bool
	var wg sync.WaitGroup
	var ioErr atomic.Value
	var rounds atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		ctx := context.Background()
		buf, got := make([]byte, 64<<10), make([]byte, 64<<10)
		for i := 0; !stop.Load(); i++ {
			off := int64(i%16) * int64(len(buf))
			for j := range buf {
				buf[j] = byte(i + j)
			}
			if err := cl.WriteAt(ctx, buf, off, false); err != nil {
				ioErr.Store(err)
				return
			}
			if err := cl.ReadAt(ctx, got, off); err != nil {
				ioErr.Store(err)
				return
			}
			if !bytes.Equal(buf, got) {
				ioErr.Store(os.ErrInvalid)
				return
			}
			rounds.Add(1)
		}
	}()
	table := func(want string) {
		t.Helper()
		if got := u.ok("table", "mp"); got != want {
			t.Fatalf("table:\n%q\nwant\n%q", got, want)
		}
		if st := readState(t, u, "mp"); st.Table != strings.TrimSuffix(want, " \n")+"\n" && st.Table != want {
			t.Fatalf("saved table:\n%q\nwant\n%q", st.Table, want)
		}
	}
	head := "0 2048 multipath 1 queue_if_no_path 0 "
	u.ok("add", "path", c, "mp", "--group", "1")
	table(head + "2 1 round-robin 0 2 1 " + a + " 1 " + c + " 1 round-robin 0 1 1 " + b + " 1 \n")
	u.ok("add", "path", bl, "mp")
	table(head + "2 1 round-robin 0 2 1 " + a + " 1 " + c + " 1 round-robin 0 2 1 " + b + " 1 " + bl + " 1 \n")
	u.ok("del", "path", b)
	table(head + "2 1 round-robin 0 2 1 " + a + " 1 " + c + " 1 round-robin 0 1 1 " + bl + " 1 \n")
	u.ok("switch", "group", "mp", "2")
	if st := u.ok("status", "mp"); !strings.Contains(st, " 2 2 ") {
		t.Fatalf("status after switch group 2: %q", st)
	}
	u.ok("switchgroup", "map", "mp", "group", "1")
	u.ok("del", "path", a, "mp")
	u.ok("del", "path", bl, "mp")
	table(head + "1 1 round-robin 0 1 1 " + c + " 1 \n")
	if r := u.udm("del", "path", c, "mp"); r.code != 1 || !strings.Contains(r.err, "is the map's last path") {
		t.Fatalf("del of the last path: %s", r)
	}
	if r := u.udm("del", "path", "/no/such", "mp"); r.code != 1 || r.err != "udm: the map has no path \"/no/such\"\n" {
		t.Fatalf("del of an unknown path: %s", r)
	}
	u.ok("disable", "queueing")
	table("0 2048 multipath 0 0 1 1 round-robin 0 1 1 " + c + " 1 \n")
	u.ok("restore", "queueing", "map", "mp")
	table(head + "1 1 round-robin 0 1 1 " + c + " 1 \n")
	u.ok("resize", "map", "mp")
	table("0 16384 multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 " + c + " 1 \n")
	if r := u.udm("resize", "map", "nope"); r.code != 1 || r.err != "udm: device \"nope\" not found\n" {
		t.Fatalf("resize of no map: %s", r)
	}
	// The backing grown underneath (an extended LUN or volume): resize
	// map reads each path's size again and takes the new one.
	if err := os.Truncate(a, 16<<20); err != nil {
		t.Fatal(err)
	}
	u.ok("resize", "map", "mp")
	table("0 32768 multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 " + c + " 1 \n")
	n := rounds.Load()
	eventually(t, "more I/O after the edits", func() bool { return rounds.Load() > n+2 || ioErr.Load() != nil })
	stop.Store(true)
	wg.Wait()
	if err := ioErr.Load(); err != nil {
		t.Fatalf("I/O during the edits: %v", err)
	}
	u.stop()
	u.restart()
	table("0 32768 multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 " + c + " 1 \n")
}

// TestVerbsJSON checks that each verb's -o json output decodes into the
// API's types with the same values as the API's own reply.
func TestVerbsJSON(t *testing.T) {
	u, dir := startScratch(t)
	a := backing(t, dir, "a", 8<<20)
	b := backing(t, dir, "b", 8<<20)
	u.ok("create", "lin", "--table", "0 2048 linear "+a+" 0")
	u.ok("create", "top", "--uuid", "UDM-top", "--table", "0 1024 linear /dev/mapper/lin 0\n1024 1024 zero")
	u.ok("create", "mp", "--table", "0 2048 multipath 1 queue_if_no_path 0 2 1 round-robin 0 1 1 "+a+" 1 round-robin 0 1 1 "+b+" 1")
	// The checker off: the paths' next check and check count hold still
	// between the verb's reply and the API's.
	u.ok("checker", "mp", "polling_interval=off")
	cl := api.NewClient(u.sock)
	ctx := context.Background()

	// decode runs the verb with -o json and decodes its output into out,
	// refusing fields the type does not have.
	decode := func(t *testing.T, out any, args ...string) {
		t.Helper()
		got := u.ok(append(args, "-o", "json")...)
		dec := json.NewDecoder(strings.NewReader(got))
		dec.DisallowUnknownFields()
		if err := dec.Decode(out); err != nil {
			t.Fatalf("udm %s -o json: %v\n%s", strings.Join(args, " "), err, got)
		}
		if again := u.ok(append(args, "--json")...); again != got {
			t.Fatalf("udm %s: --json printed\n%s\n-o json\n%s", strings.Join(args, " "), again, got)
		}
	}
	same := func(t *testing.T, what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: -o json gave\n%+v\nthe API\n%+v", what, got, want)
		}
	}
	list, err := cl.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("devices: %+v", list)
	}

	t.Run("ls", func(t *testing.T) {
		var got []api.DeviceInfo
		decode(t, &got, "ls")
		same(t, "ls", got, list)
	})
	t.Run("info", func(t *testing.T) {
		var got []api.DeviceInfo
		decode(t, &got, "info")
		same(t, "info", got, list)
		decode(t, &got, "info", "top", "lin")
		top, _ := cl.Info(ctx, "top")
		lin, _ := cl.Info(ctx, "lin")
		same(t, "info top lin", got, []api.DeviceInfo{top, lin})
		if top.UUID != "UDM-top" || top.Targets != 2 || lin.OpenCount != 1 {
			t.Fatalf("info: top %+v, lin %+v", top, lin)
		}
	})
	for _, verb := range []string{"table", "status"} {
		t.Run(verb, func(t *testing.T) {
			get := func(n string) []string {
				var l []string
				var err error
				if verb == "table" {
					l, err = cl.Table(ctx, n, false)
				} else {
					l, err = cl.Status(ctx, n)
				}
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			var want []api.DeviceLines
			for _, d := range list {
				want = append(want, api.DeviceLines{Name: d.Name, Lines: get(d.Name)})
			}
			var got []api.DeviceLines
			decode(t, &got, verb)
			same(t, verb, got, want)
			decode(t, &got, verb, "top")
			same(t, verb+" top", got, []api.DeviceLines{{Name: "top", Lines: get("top")}})
			decode(t, &got, verb, "--target", "zero")
			same(t, verb+" --target zero", got, []api.DeviceLines{{Name: "top", Lines: get("top")[1:]}})
		})
	}
	t.Run("deps", func(t *testing.T) {
		var got []api.DepsReply
		decode(t, &got, "deps")
		var want []api.DepsReply
		for _, d := range list {
			deps, err := cl.Deps(ctx, d.Name)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, api.DepsReply{Name: d.Name, Deps: deps})
		}
		same(t, "deps", got, want)
		if !reflect.DeepEqual(want[2].Deps, []string{"/dev/mapper/lin"}) || !reflect.DeepEqual(want[1].Deps, []string{a, b}) {
			t.Fatalf("deps: %+v", want)
		}
	})
	maps, err := cl.Maps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, view := range []string{"maps", "topology"} {
		t.Run("show-"+view, func(t *testing.T) {
			var got api.MapsReply
			decode(t, &got, "show", view)
			same(t, "show "+view, got.Maps, maps)
			if len(maps) != 1 || maps[0].Name != "mp" || len(maps[0].Groups) != 2 {
				t.Fatalf("maps: %+v", maps)
			}
		})
	}
	t.Run("show-paths", func(t *testing.T) {
		var got api.PathsReply
		decode(t, &got, "show", "paths")
		same(t, "show paths", got.Paths, multipath.Paths(maps))
		if len(got.Paths) != 2 {
			t.Fatalf("paths: %+v", got.Paths)
		}
	})
	t.Run("checker", func(t *testing.T) {
		var got api.CheckerSettings
		decode(t, &got, "checker", "mp")
		want, err := cl.Checker(ctx, "mp")
		if err != nil {
			t.Fatal(err)
		}
		same(t, "checker", got, want)
		if want.PollingInterval != "off" {
			t.Fatalf("checker: %+v", want)
		}
		// KEY=VALUE with -o json prints the settings as changed.
		decode(t, &got, "checker", "mp", "failback=immediate")
		if want, _ = cl.Checker(ctx, "mp"); !reflect.DeepEqual(got, want) || want.Failback != "immediate" {
			t.Fatalf("checker after failback=immediate: printed %+v, the API %+v", got, want)
		}
	})
}
