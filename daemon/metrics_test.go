package daemon_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"udm/internal/testutil"
)

// TestMetrics checks the values of the I/O metrics against workloads
// whose effect is known: bytes counted per device, errors per path, and
// the in-flight and pushback gauges while I/O is held, and back at 0
// when idle.
func TestMetrics(t *testing.T) {
	u, dir := startScratch(t, "--metrics", "127.0.0.1:0")
	m := func(metric string) float64 { return scrape(t, u.info.Metrics, metric) }
	ctx := context.Background()

	t.Run("bytes", func(t *testing.T) {
		a := backing(t, dir, "lin", 8<<20)
		u.ok("create", "lin", "--table", "0 16384 linear "+a+" 0")
		cl := dialNBD(t, u.nbdURI("lin"))
		var wrote, read float64
		for i, n := range []int{4096, 12288, 65536, 512, 131072} {
			if err := cl.WriteAt(ctx, make([]byte, n), int64(i)<<20, i%2 == 0); err != nil {
				t.Fatal(err)
			}
			wrote += float64(n)
		}
		for i, n := range []int{8192, 1024, 262144} {
			if err := cl.ReadAt(ctx, make([]byte, n), int64(i)<<20); err != nil {
				t.Fatal(err)
			}
			read += float64(n)
		}
		if err := cl.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if got := m(`udm_device_bytes_total{device="lin",op="write"}`); got != wrote {
			t.Errorf("bytes_total write = %v, want %v", got, wrote)
		}
		if got := m(`udm_device_bytes_total{device="lin",op="read"}`); got != read {
			t.Errorf("bytes_total read = %v, want %v", got, read)
		}
		if got := m(`udm_device_inflight{device="lin"}`); got != 0 {
			t.Errorf("inflight = %v with nothing in flight", got)
		}
		cl.Close()
		testutil.Eventually(t, "lin to close", func() bool { return strings.Contains(u.ok("info", "lin"), "Open count:        0\n") })
		u.ok("remove", "lin")
	})

	t.Run("path-errors", func(t *testing.T) {
		// Two paths to two files; p0's file shrinks under its table, so
		// a read past its new end fails there (EIO) and is retried on p1.
		p0, p1 := backing(t, dir, "e0", 8<<20), backing(t, dir, "e1", 8<<20)
		u.ok("create", "em", "--table", "0 16384 multipath 0 0 1 1 round-robin 0 2 1 "+p0+" 1 "+p1+" 1")
		u.ok("checker", "em", "polling_interval=off") // no checker: nothing reinstates p0
		if err := os.Truncate(p0, 1<<20); err != nil {
			t.Fatal(err)
		}
		p0Errors := `udm_path_errors_total{device="em",path="` + p0 + `"}`
		if got := m(p0Errors); got != 0 {
			t.Fatalf("%s = %v before any I/O", p0Errors, got)
		}
		cl := dialNBD(t, u.nbdURI("em"))
		for i := 0; i < 4; i++ { // round-robin: p0 gets one of the first two
			if err := cl.ReadAt(ctx, make([]byte, 4096), 4<<20); err != nil {
				t.Fatalf("read %d: %v (the path error must be retried on p1)", i, err)
			}
		}
		if got := m(p0Errors); got < 1 {
			t.Errorf("%s = %v after a read failed on it", p0Errors, got)
		}
		for metric, want := range map[string]float64{
			`udm_path_errors_total{device="em",path="` + p1 + `"}`:             0,
			`udm_path_failures_total{device="em",path="` + p0 + `",group="1"}`: 1,
			`udm_path_active{device="em",path="` + p0 + `",group="1"}`:         0,
			`udm_device_errors_total{device="em"}`:                             0,
			`udm_device_inflight{device="em"}`:                                 0,
			`udm_path_inflight{device="em",path="` + p0 + `"}`:                 0,
			`udm_path_inflight{device="em",path="` + p1 + `"}`:                 0,
		} {
			if got := m(metric); got != want {
				t.Errorf("%s = %v, want %v", metric, got, want)
			}
		}
		cl.Close()
		testutil.Eventually(t, "em to close", func() bool { return strings.Contains(u.ok("info", "em"), "Open count:        0\n") })
		u.ok("remove", "em")
	})

	t.Run("inflight-pushback", func(t *testing.T) {
		// mp's one path is /dev/mapper/hang, which becomes a delay of an
		// hour: a write sent there stays in flight in both devices. The
		// path is failed and a second write queues in mp. A noflush
		// suspend of mp pushes the second back and waits for the first:
		// the pushback depth is 1 until hang is suspended (releasing the
		// first), then the pushed-back write is deferred. A table with
		// the file as path and a resume complete it.
		f := backing(t, dir, "f", 8<<20)
		u.ok("create", "hang", "--table", "0 16384 linear "+f+" 0")
		hang := "/dev/mapper/hang"
		u.ok("create", "mp", "--table", "0 16384 multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 "+hang+" 1")
		// No checker (its reads would be held too) and no per-I/O
		// deadline (it would fail the held write over).
		u.ok("checker", "mp", "polling_interval=off", "io_deadline=-1s")
		u.ok("load", "hang", "--table", "0 16384 delay "+f+" 0 3600000")
		u.ok("resume", "hang")
		cl := dialNBD(t, u.nbdURI("mp"))
		first, second := bytes.Repeat([]byte{0xa1}, 4096), bytes.Repeat([]byte{0xb2}, 4096)
		done := make(chan error, 2)
		go func() { done <- cl.WriteAt(ctx, first, 0, false) }()
		testutil.Eventually(t, "the first write to be held in hang", func() bool { return u.ok("status", "hang") == "0 16384 delay 0 1 0\n" })
		for metric, want := range map[string]float64{`udm_device_inflight{device="hang"}`: 1, `udm_device_inflight{device="mp"}`: 1} {
			if got := m(metric); got != want {
				t.Errorf("%s = %v while one write is held, want %v", metric, got, want)
			}
		}
		u.ok("fail", "path", hang)
		go func() { done <- cl.WriteAt(ctx, second, 4096, false) }()
		testutil.Eventually(t, "the second write to queue in mp", func() bool { return m(`udm_multipath_queued{device="mp"}`) == 1 })
		if got := m(`udm_device_inflight{device="mp"}`); got != 2 {
			t.Errorf("mp inflight = %v with one write held below and one queued, want 2", got)
		}
		if got := m(`udm_device_pushback{device="mp"}`); got != 0 {
			t.Errorf("pushback = %v before any suspend", got)
		}

		susp := exec.Command(testutil.UDM(), "suspend", "--noflush", "mp")
		susp.Env = append(os.Environ(), "UDM_SOCKET="+u.sock)
		var suspOut bytes.Buffer
		susp.Stdout, susp.Stderr = &suspOut, &suspOut
		if err := susp.Start(); err != nil {
			t.Fatal(err)
		}
		suspended := make(chan error, 1)
		go func() { suspended <- susp.Wait() }()
		testutil.Eventually(t, "the queued write to be pushed back", func() bool { return m(`udm_device_pushback{device="mp"}`) == 1 })
		for metric, want := range map[string]float64{
			`udm_device_inflight{device="mp"}`:        1, // the held write, which the suspend waits for
			`udm_device_pushbacks_total{device="mp"}`: 1,
			`udm_device_suspended{device="mp"}`:       0,
		} {
			if got := m(metric); got != want {
				t.Errorf("%s = %v during the noflush suspend, want %v", metric, got, want)
			}
		}
		select {
		case err := <-suspended:
			t.Fatalf("suspend --noflush returned (%v) with a write in flight: %s", err, suspOut.String())
		default:
		}

		u.ok("suspend", "hang") // releases the first write
		if err := <-suspended; err != nil {
			t.Fatalf("suspend --noflush mp: %v: %s", err, suspOut.String())
		}
		if err := <-done; err != nil {
			t.Fatalf("the first write: %v", err)
		}
		for metric, want := range map[string]float64{
			`udm_device_pushback{device="mp"}`:  0, // merged into deferred
			`udm_device_deferred{device="mp"}`:  1,
			`udm_device_inflight{device="mp"}`:  0,
			`udm_device_suspended{device="mp"}`: 1,
		} {
			if got := m(metric); got != want {
				t.Errorf("%s = %v once suspended, want %v", metric, got, want)
			}
		}
		u.ok("load", "mp", "--table", "0 16384 multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 "+f+" 1")
		u.ok("resume", "mp")
		if err := <-done; err != nil {
			t.Fatalf("the second write: %v", err)
		}
		u.ok("resume", "hang")
		got := testutil.ReadFileAt(t, f, 0, 8192)
		if !bytes.Equal(got[:4096], first) || !bytes.Equal(got[4096:], second) {
			t.Fatal("the writes are not on the file")
		}
		// Idle again: every in-flight gauge is back at 0.
		for _, metric := range []string{`udm_device_inflight{device="mp"}`, `udm_device_inflight{device="hang"}`,
			`udm_device_pushback{device="mp"}`, `udm_device_deferred{device="mp"}`,
			`udm_path_inflight{device="mp",path="` + f + `"}`} {
			if got := m(metric); got != 0 {
				t.Errorf("%s = %v when idle", metric, got)
			}
		}
		if got := m(`udm_device_bytes_total{device="mp",op="write"}`); got != 8192 {
			t.Errorf("mp bytes_total write = %v, want 8192 (a pushed-back write counts once)", got)
		}
		if got := m(`udm_device_errors_total{device="mp"}`); got != 0 {
			t.Errorf("mp errors_total = %v", got)
		}
	})
}
