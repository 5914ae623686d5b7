package daemon_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rs/zerolog"

	"udm/daemon/api"
	"udm/dm"
	"udm/multipath"
	"udm/nbd/client"
)

// TestVerbsWithClients drives the verbs where an NBD client, the path
// checker or the metrics take part (cmd/udm/testdata/script has the rest
// of the command line, against a daemon of its own): the target list,
// read-only devices, devices over NBD paths, removal of open devices,
// and a path failed by the operator, which the checker leaves alone.
func TestVerbsWithClients(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo", "--metrics", "127.0.0.1:0")
	dir := shmDir(t)
	a := backing(t, dir, "a", 8<<20)
	b := backing(t, dir, "b", 8<<20)
	c := backing(t, dir, "c", 8<<20)
	u.ok("create", "lin", "--table", "0 2048 linear "+a+" 0")

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

	t.Run("operator-fail-pauses-checker", func(t *testing.T) {
		u.ok("create", "mp2", "--table", "0 2048 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 "+a+" 1 "+c+" 1")
		u.ok("checker", "mp2", "polling_interval=50ms")
		u.ok("fail", "path", c)
		// The operator's fail pauses the path's checker: while the other
		// path is checked three more times (three polling intervals at
		// least), the failed one gets at most the check that was running
		// when it failed, and stays failed until reinstated.
		cl := api.NewClient(u.sock)
		failed, healthy := pathOf(t, cl, "mp2", c), pathOf(t, cl, "mp2", a)
		eventually(t, "three more checks of the healthy path", func() bool {
			return pathOf(t, cl, "mp2", a).Checks >= healthy.Checks+3
		})
		if p := pathOf(t, cl, "mp2", c); p.DMState != "failed" || !p.Operator || p.Checks > failed.Checks+1 {
			t.Fatalf("an operator-failed path while the checker ran: %+v (when failed: %+v)", p, failed)
		}
		if got := u.ok("status", "mp2"); !strings.Contains(got, c+" F 1 ") {
			t.Fatalf("the checker reinstated an operator-failed path: %q", got)
		}
		u.ok("reinstate", "path", c)
		if got := u.ok("status", "mp2"); !strings.Contains(got, c+" A 1 ") {
			t.Fatalf("status after reinstate path: %q", got)
		}
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
}

// pathOf is the path dev of the multipath map name, as the daemon
// reports it.
func pathOf(t *testing.T, c *api.Client, name, dev string) multipath.PathStatus {
	t.Helper()
	maps, err := c.Maps(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range multipath.Paths(maps) {
		if p.Map == name && p.Dev == dev {
			return p
		}
	}
	t.Fatalf("no path %s in map %s: %+v", dev, name, maps)
	return multipath.PathStatus{}
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
