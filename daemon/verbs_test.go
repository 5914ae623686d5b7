package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/daemon"
	"udm/daemon/api"
	"udm/dm"
	"udm/internal/testutil"
	"udm/multipath"
	"udm/nbd/client"
)

// TestVerbsWithClients drives the verbs where an NBD client, the path
// checker or the metrics take part (cmd/udm/testdata/script has the rest
// of the command line, against a daemon of its own): the target list,
// read-only devices, devices over NBD paths, removal of open devices,
// and a path failed by the operator, which the checker leaves alone.
func TestVerbsWithClients(t *testing.T) {
	u, dir := startScratch(t, "--metrics", "127.0.0.1:0")
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
		u.okWant("table", "0 2048 linear "+u.nbdUnixURI("lin")+" 0\n", "table", "remote")
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
		got := testutil.ReadFileAt(t, a, 4096, len(data))
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

// A device removed with --deferred while an NBD client holds it goes
// when the client closes. That last close runs on the connection's
// loop; with one loop, every other export is served by that loop too, so
// a removal that waited for the loop there stopped them all. Here: the
// other export keeps serving, the device leaves ls and its state file is
// deleted, SIGTERM exits without waiting out a grace period, and the
// device stays gone after a restart.
func TestDeferredRemoveOnLastCloseKeepsTheLoopServing(t *testing.T) {
	u, dir := startScratch(t, "--loops", "1")
	r := backing(t, dir, "r.img", 16<<20)
	o := backing(t, dir, "o.img", 1<<20)
	u.ok("create", "r", "--table", "0 32768 linear "+r+" 0")
	u.ok("create", "other", "--table", "0 2048 linear "+o+" 0")
	state := filepath.Join(u.stateDir, "devices", "r.json")

	cl := dialNBD(t, u.nbdURI("r"))
	if err := cl.WriteAt(context.Background(), bytes.Repeat([]byte{0xa5}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	u.ok("remove", "--deferred", "r")
	if got := u.ok("info", "r"); !strings.Contains(got, "(DEFERRED REMOVE)") {
		t.Fatalf("info after remove --deferred:\n%s", got)
	}
	cl.Close() // the last close: the removal runs now

	eventually(t, "r to leave ls", func() bool { return u.ok("ls") == "other\n" })
	eventually(t, "r's state file to go", func() bool {
		_, err := os.Stat(state)
		return os.IsNotExist(err)
	})
	if res := u.udm("remove", "r"); res.code == 0 || !strings.Contains(res.err, "r") {
		t.Fatalf("remove of the removed device: %s", res)
	}
	// The loop serves the other export, on new connections too.
	for i := 0; i < 2; i++ {
		oc := dialNBD(t, u.nbdURI("other"))
		want := bytes.Repeat([]byte{byte(i + 1)}, 4096)
		if err := oc.WriteAt(context.Background(), want, 8192, false); err != nil {
			t.Fatalf("write to other after the deferred removal: %v", err)
		}
		got := make([]byte, 4096)
		if err := oc.ReadAt(context.Background(), got, 8192); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read of other after the deferred removal: %v", err)
		}
		oc.Close()
	}
	if !regexp.MustCompile(`"dev":"r".*"message":"device removed"`).MatchString(u.stderr.String()) {
		t.Error("no log line of r's removal")
	}

	start := time.Now()
	u.stop()
	if took := time.Since(start); took >= daemon.ShutdownGrace {
		t.Errorf("SIGTERM took %v, as long as the NBD grace (%v): something was still waiting", took, daemon.ShutdownGrace)
	}
	u.restart()
	if got := u.ok("ls"); got != "other\n" {
		t.Fatalf("ls after restart: %q (the removed device came back?)", got)
	}
}

// At shutdown, I/O that only the daemon could complete fails with EIO:
// a write queued by a multipath map with no usable path, and one
// deferred on a suspended device. The shutdown doesn't wait out the NBD
// grace for them, flushes the healthy device without complaint, and
// saves the state as it was: at restart the map queues again and the
// device is suspended.
func TestShutdownFailsHeldIO(t *testing.T) {
	u, dir := startScratch(t, "--metrics", "127.0.0.1:0")
	a := backing(t, dir, "a", 8<<20)
	b := backing(t, dir, "b", 8<<20)
	c := backing(t, dir, "c", 8<<20)
	u.ok("create", "healthy", "--table", "0 16384 linear "+a+" 0")
	u.ok("create", "mp", "--table", "0 16384 multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 "+b+" 1")
	u.ok("create", "sus", "--table", "0 16384 linear "+c+" 0")
	u.ok("fail", "path", b)

	hc := dialNBD(t, u.nbdURI("healthy"))
	if err := hc.WriteAt(context.Background(), bytes.Repeat([]byte{7}, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	write := func(export string) <-chan error {
		cl := dialNBD(t, u.nbdURI(export))
		done := make(chan error, 1)
		go func() { done <- cl.WriteAt(context.Background(), make([]byte, 4096), 0, false) }()
		return done
	}
	queuedW := write("mp")
	eventually(t, "the write to queue", func() bool { return queued(u.ok("show", "topology")) })
	u.ok("suspend", "sus")
	deferredW := write("sus")
	eventually(t, "the write to be deferred", func() bool {
		return scrape(t, u.info.Metrics, `udm_device_deferred{device="sus"}`) == 1
	})

	start := time.Now()
	u.stop()
	took := time.Since(start)
	for what, ch := range map[string]<-chan error{"queued write": queuedW, "deferred write": deferredW} {
		select {
		case err := <-ch:
			if !errors.Is(err, syscall.EIO) {
				t.Errorf("%s ended with %v, want EIO", what, err)
			}
		case <-time.After(safety):
			t.Fatalf("%s never ended", what)
		}
	}
	if took >= daemon.ShutdownGrace {
		t.Errorf("SIGTERM took %v: held I/O kept it waiting the whole NBD grace (%v)", took, daemon.ShutdownGrace)
	}
	logs := u.stderr.String()
	for _, re := range []string{
		`"dev":"healthy".*"message":"flushed at shutdown"`,
		`"dev":"mp".*"failed":1.*"message":"I/O queued for want of a path failed at shutdown"`,
		`"dev":"sus".*"failed":1.*"message":"I/O deferred on a suspended device failed at shutdown"`,
	} {
		if !regexp.MustCompile(re).MatchString(logs) {
			t.Errorf("no log line matching %s", re)
		}
	}
	if strings.Contains(logs, "did not finish") {
		t.Error("a shutdown step did not finish")
	}
	if regexp.MustCompile(`"dev":"healthy".*flush at shutdown failed`).MatchString(logs) {
		t.Error("the healthy device's flush failed")
	}

	u.restart()
	u.okWant("ls after restart", "healthy\nmp\nsus\n", "ls")
	if got := u.ok("table", "mp"); !strings.Contains(got, "queue_if_no_path") {
		t.Errorf("mp after restart no longer queues: %q", got)
	}
	if got := u.ok("info", "sus"); !strings.Contains(got, "SUSPENDED") {
		t.Errorf("sus after restart:\n%s", got)
	}
}

// Sizes the kernel would refuse are refused with a clear error, and the
// largest it takes has a positive size everywhere: the API, the metrics
// and the NBD export.
func TestDeviceSizeLimits(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo", "--metrics", "127.0.0.1:0")
	for _, sectors := range []string{"18446744073709551615", "36028797018963968", "18014398509481984"} {
		res := u.udm("create", "big", "--table", "0 "+sectors+" zero")
		if res.code == 0 || !strings.Contains(res.err, "too large") {
			t.Errorf("create of %s sectors: %s", sectors, res)
		}
	}
	u.okWant("ls after refused creates", "No devices found\n", "ls")
	const largest = 1<<54 - 1
	u.ok("create", "big", "--table", fmt.Sprintf("0 %d zero", largest))
	want := int64(largest) * 512
	info, err := api.NewClient(u.sock).Info(context.Background(), "big")
	if err != nil {
		t.Fatal(err)
	}
	if info.Size != want {
		t.Errorf("API size %d, want %d", info.Size, want)
	}
	if got := scrape(t, u.info.Metrics, `udm_device_size_bytes{device="big"}`); got != float64(want) {
		t.Errorf("metric size %v, want %v", got, float64(want))
	}
	cl := dialNBD(t, u.nbdURI("big"))
	if got := cl.Info().Size; got != want {
		t.Errorf("NBD export size %d, want %d", got, want)
	}
	buf := make([]byte, 4096)
	if err := cl.ReadAt(context.Background(), buf, want-4096); err != nil {
		t.Errorf("read of the last 4 KiB: %v", err)
	}
}
