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

	"udm/daemon"
	"udm/daemon/api"
)

// A device removed with --deferred while an NBD client holds it goes
// when the client closes. That last close runs on the connection's
// loop; with one loop, every other export is served by that loop too, so
// a removal that waited for the loop there stopped them all. Here: the
// other export keeps serving, the device leaves ls and its state file is
// deleted, SIGTERM exits without waiting out a grace period, and the
// device stays gone after a restart.
func TestDeferredRemoveOnLastCloseKeepsTheLoopServing(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo", "--loops", "1")
	dir := shmDir(t)
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
	u := startUDM(t, t.TempDir(), "--no-demo", "--metrics", "127.0.0.1:0")
	dir := shmDir(t)
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
	if got := u.ok("ls"); got != "healthy\nmp\nsus\n" {
		t.Fatalf("ls after restart: %q", got)
	}
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
	if got := u.ok("ls"); got != "No devices found\n" {
		t.Fatalf("ls after refused creates: %q", got)
	}
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
