package daemon_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"udm/internal/testcerts"
	"udm/internal/testutil"
)

// fioProc is fio running in the background.
type fioProc struct {
	cmd  *exec.Cmd
	out  *testutil.SyncBuffer
	done chan struct{}
	err  error
}

func startFio(t *testing.T, args ...string) *fioProc {
	t.Helper()
	fio := testutil.RequireTool(t, "fio")
	f := &fioProc{out: &testutil.SyncBuffer{}, done: make(chan struct{})}
	f.cmd = exec.Command(fio, args...)
	f.cmd.Dir = t.TempDir() // anything fio leaves behind goes there
	f.cmd.Stdout, f.cmd.Stderr = f.out, f.out
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		f.err = f.cmd.Wait()
		close(f.done)
	}()
	t.Cleanup(func() {
		if !f.exited() {
			f.cmd.Process.Kill()
			<-f.done
		}
	})
	return f
}

func (f *fioProc) exited() bool { return testutil.Closed(f.done) }

// wait waits for fio and checks it exited 0 with no I/O or verify error.
func (f *fioProc) wait(t *testing.T) {
	t.Helper()
	select {
	case <-f.done:
	case <-time.After(3 * testutil.Patience):
		t.Fatalf("fio did not finish:\n%s", f.out)
	}
	out := f.out.String()
	if f.err != nil {
		t.Fatalf("fio: %v\n%s", f.err, out)
	}
	if !regexp.MustCompile(`err= *0\b`).MatchString(out) || regexp.MustCompile(`err= *[1-9]`).MatchString(out) {
		t.Fatalf("fio reported errors:\n%s", out)
	}
	if strings.Contains(out, "verify:") && strings.Contains(out, "bad") {
		t.Fatalf("fio verification failed:\n%s", out)
	}
}

// scrape reads one sample from the daemon's metrics endpoint: metric is
// NAME{label="value",...} with the labels in any order (-1 if missing).
func scrape(t *testing.T, addr, metric string) float64 {
	t.Helper()
	name, want := parseSample(metric)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		n, labels := parseSample(line[:i])
		if n != name || len(labels) != len(want) {
			continue
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metric %s: %v", line, err)
		}
		return v
	}
	return -1
}

// parseSample splits NAME{a="b",c="d"} (values without commas or quotes).
func parseSample(s string) (string, map[string]string) {
	name, rest, ok := strings.Cut(s, "{")
	labels := map[string]string{}
	if !ok {
		return s, labels
	}
	for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			labels[k] = strings.Trim(v, `"`)
		}
	}
	return name, labels
}

// TestNoflushReloadUnderFio is the noflush-reload failover through NBD: a multipath device
// with queue_if_no_path over two paths; fio writing with verify; both
// paths fail; a noflush suspend; a table with a new path is loaded and
// the device resumed; fio finishes with no error and its data verifies
// (verify_backlog: fio reads back what it wrote all along, not only at
// the end).
// The three path names are hard links to one file: three routes to the
// same disk.
func TestNoflushReloadUnderFio(t *testing.T) {
	testutil.RequireTool(t, "fio")
	u, dir := startScratch(t, "--metrics", "127.0.0.1:0")
	const size = 256 << 20
	p0 := backing(t, dir, "path0", size)
	p1, p2 := filepath.Join(dir, "path1"), filepath.Join(dir, "path2")
	for _, p := range []string{p1, p2} {
		if err := os.Link(p0, p); err != nil {
			t.Fatal(err)
		}
	}
	sectors := size >> 9
	u.ok("create", "mp", "--table", fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 %s 1 %s 1", sectors, p0, p1))

	args := []string{"--name=noflush-reload", "--ioengine=nbd", "--uri=" + u.nbdURI("mp"), "--rw=randwrite", "--bs=4k",
		"--iodepth=16", fmt.Sprintf("--size=%d", size), "--verify=crc32c", "--verify_state_save=0", "--do_verify=1",
		"--verify_fatal=1", "--verify_backlog=512"}
	if testutil.Race {
		// Each udm command takes a while under -race: keep fio from
		// finishing before they are done.
		args = append(args, "--rate_iops=5000")
	}
	fio := startFio(t, args...)
	metrics := u.info.Metrics
	writes := func() float64 { return scrape(t, metrics, `udm_device_io_total{device="mp",op="write"}`) }
	ios := func() float64 { return writes() + scrape(t, metrics, `udm_device_io_total{device="mp",op="read"}`) }
	testutil.Eventually(t, "fio to write through both paths", func() bool { return writes() >= 2000 || fio.exited() })
	if fio.exited() {
		t.Fatalf("fio finished before the paths failed (make the job larger):\n%s", fio.out)
	}

	// Both paths fail: I/O queues in the target.
	u.ok("fail", "path", p0)
	u.ok("fail", "path", p1)
	if got := u.ok("status", "mp"); !strings.Contains(got, p0+" F 1 ") || !strings.Contains(got, p1+" F 1 ") {
		t.Fatalf("status with both paths failed: %q", got)
	}
	testutil.Eventually(t, "I/O to queue in the target", func() bool {
		return scrape(t, metrics, `udm_multipath_queued{device="mp"}`) > 0
	})
	before := ios()

	// The operator's repair: suspend without flushing (held I/O is pushed
	// back, not failed), load a table with a new path, resume.
	u.ok("suspend", "--noflush", "mp")
	if got := u.ok("info", "mp"); !strings.Contains(got, "State:             SUSPENDED\n") {
		t.Fatalf("info after suspend:\n%s", got)
	}
	if scrape(t, metrics, `udm_device_deferred{device="mp"}`) <= 0 {
		t.Fatal("no I/O was pushed back and deferred across the suspend")
	}
	if scrape(t, metrics, `udm_device_suspended{device="mp"}`) != 1 {
		t.Fatal("metrics don't show the device suspended")
	}
	newTable := fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 1 1 %s 1", sectors, p2)
	u.ok("load", "mp", "--table", newTable)
	u.ok("resume", "mp")
	u.okWant("table after resume", newTable+" \n", "table", "mp")

	fio.wait(t)
	if got := ios(); got <= before {
		t.Fatalf("no I/O ended after the repair (%v before, %v after)", before, got)
	}
	if n := scrape(t, metrics, `udm_device_errors_total{device="mp"}`); n != 0 {
		t.Fatalf("%v bios ended in error", n)
	}
	if n := scrape(t, metrics, `udm_device_pushbacks_total{device="mp"}`); n <= 0 {
		t.Fatalf("pushbacks_total = %v after a noflush suspend with queued I/O", n)
	}
	// fio's randwrite writes each block of its size once; a write pushed
	// back and re-issued ends (and counts) once.
	if n := scrape(t, metrics, `udm_device_bytes_total{device="mp",op="write"}`); n != size {
		t.Errorf("bytes_total write = %v, want fio's %d", n, size)
	}
	// Idle: nothing in flight or parked, and the new path never failed.
	for _, m := range []string{`udm_device_inflight{device="mp"}`, `udm_device_pushback{device="mp"}`,
		`udm_device_deferred{device="mp"}`, `udm_path_inflight{device="mp",path="` + p2 + `"}`,
		`udm_path_errors_total{device="mp",path="` + p2 + `"}`} {
		if n := scrape(t, metrics, m); n != 0 {
			t.Errorf("%s = %v after fio finished", m, n)
		}
	}
	if got := u.ok("status", "mp"); !strings.Contains(got, p2+" A 0 ") {
		t.Fatalf("status after the repair: %q", got)
	}
	// One log line for each step of the drill.
	logs := u.stderr.String()
	for _, msg := range []string{`"message":"path failed"`, `"message":"device suspended"`,
		`"message":"table loaded (inactive)"`, `"message":"table swapped"`, `"message":"device resumed"`} {
		if !strings.Contains(logs, msg) {
			t.Errorf("no %s log line", msg)
		}
	}
	u.stop()
}

// TestRestart creates devices of every kind of state, kills the daemon
// with SIGKILL, starts it again on the same state dir, and finds the
// devices and their data as they were. A corrupt state file is set aside
// and reported, and the other devices come back; a device whose backing
// file is gone comes back in an error state.
func TestRestart(t *testing.T) {
	u, dir := startScratch(t)
	a := backing(t, dir, "a", 8<<20)
	b := backing(t, dir, "b", 8<<20)
	bl := filepath.Join(dir, "b-link")
	if err := os.Link(b, bl); err != nil {
		t.Fatal(err)
	}
	u.ok("create", "lin", "--table", "0 16384 linear "+a+" 0", "--uuid", "UDM-lin")
	u.ok("create", "top", "--table", "0 8192 linear /dev/mapper/lin 8192") // stacked: restored after lin
	u.ok("create", "susp", "--table", "0 2048 zero")
	u.ok("suspend", "susp")
	u.ok("create", "inact", "--table", "0 2048 zero")
	u.ok("load", "inact", "--table", "0 4096 error")
	u.ok("create", "ro", "--table", "0 2048 zero", "-r")
	u.ok("create", "mp", "--table", "0 16384 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 "+b+" 1 "+bl+" 1")
	u.ok("checker", "mp", "polling_interval=1s", "no_path_retry=queue")
	u.ok("fail", "path", bl)
	u.ok("create", "empty", "--table-file", writeFile(t, "# no targets\n"))

	// Data through NBD, on the plain and the stacked device.
	ctx := context.Background()
	data := func(seed byte, n int) []byte {
		p := make([]byte, n)
		for i := range p {
			p[i] = seed + byte(i%251)
		}
		return p
	}
	writes := []struct {
		dev  string
		off  int64
		seed byte
	}{{"lin", 0, 1}, {"top", 4096, 2}, {"mp", 65536, 3}}
	for _, w := range writes {
		cl := dialNBD(t, u.nbdURI(w.dev))
		if err := cl.WriteAt(ctx, data(w.seed, 65536), w.off, true); err != nil {
			t.Fatalf("write %s: %v", w.dev, err)
		}
		cl.Close()
	}

	// A state file that is not JSON, beside the good ones.
	devices := filepath.Join(u.stateDir, "devices")
	if err := os.WriteFile(filepath.Join(devices, "broken.json"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}

	snapshot := func() map[string]string {
		m := map[string]string{}
		for _, verb := range []string{"ls", "table", "status", "info"} {
			m[verb] = u.ok(verb)
		}
		m["inactive"] = u.ok("table", "--inactive", "inact")
		m["checker"] = u.ok("checker", "mp")
		// The time to the next check moves (and with it the columns'
		// widths); an operator-failed path is not checked after a
		// restart (its checker stays paused).
		paths := regexp.MustCompile(`\d+(\.\d+)?(ms|s|µs)`).ReplaceAllString(u.ok("show", "paths"), "T")
		paths = regexp.MustCompile(` +`).ReplaceAllString(paths, " ")
		m["paths"] = regexp.MustCompile(`(ready|undef) \(operator\)`).ReplaceAllString(paths, "? (operator)")
		// Event numbers count events since the daemon started.
		m["info"] = regexp.MustCompile(`Event number: +\d+`).ReplaceAllString(m["info"], "Event number: N")
		return m
	}
	checked := func() {
		testutil.Eventually(t, "the checker to check "+b, func() bool {
			return regexp.MustCompile(regexp.QuoteMeta(b) + ` +1 +active +ready `).MatchString(u.ok("show", "paths"))
		})
	}
	checked()
	before := snapshot()
	u.kill9()
	u.restart()
	for _, want := range []string{"Name:              susp\nState:             SUSPENDED\n", "Name:              inact\nState:             ACTIVE\nTables present:    LIVE & INACTIVE\n",
		"Name:              ro\nState:             ACTIVE (READ-ONLY)\n", "Name:              empty\nState:             ACTIVE\nTables present:    None\n"} {
		if info := u.ok("info"); !strings.Contains(info, want) {
			t.Errorf("info after restart lacks %q:\n%s", want, info)
		}
	}
	if !regexp.MustCompile(regexp.QuoteMeta(bl) + ` +1 +failed +\S+ \(operator\) +1 `).MatchString(u.ok("show", "paths")) {
		t.Errorf("the operator-failed path is not failed after restart:\n%s", u.ok("show", "paths"))
	}
	for _, w := range writes {
		cl := dialNBD(t, u.nbdURI(w.dev))
		got := make([]byte, 65536)
		if err := cl.ReadAt(ctx, got, w.off); err != nil {
			t.Fatalf("read %s after restart: %v", w.dev, err)
		}
		if string(got) != string(data(w.seed, 65536)) {
			t.Fatalf("%s: data differs after restart", w.dev)
		}
		cl.Close()
	}
	// Compared after the reads (multipath picks its group lazily, at the
	// first I/O, and status shows it) and after the first check of the
	// healthy path.
	checked()
	after := snapshot()
	for k, v := range before {
		if after[k] != v {
			t.Errorf("%s after restart:\n%s\nbefore:\n%s", k, after[k], v)
		}
	}
	// The stacked write landed in lin at 8192 sectors + 4096 bytes.
	cl := dialNBD(t, u.nbdURI("lin"))
	got := make([]byte, 65536)
	if err := cl.ReadAt(ctx, got, 8192*512+4096); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(data(2, 65536)) {
		t.Fatal("top's data is not in lin where its table maps it")
	}
	cl.Close()

	// The corrupt file was set aside (kept) and reported.
	kept, _ := filepath.Glob(filepath.Join(devices, "broken.json.corrupt-*"))
	if len(kept) != 1 {
		t.Fatalf("corrupt state file not set aside: %v", kept)
	}
	if _, err := os.Stat(filepath.Join(devices, "broken.json")); !os.IsNotExist(err) {
		t.Fatalf("corrupt state file still in place: %v", err)
	}
	if logs := u.stderr.String(); !strings.Contains(logs, "corrupt state file set aside") || !strings.Contains(logs, "broken.json") {
		t.Fatalf("no log line about the corrupt state file:\n%s", logs)
	}

	// A device whose table no longer loads comes back in an error state
	// (TestRestoreMissingBacking has the details), its state kept.
	u.stop()
	if err := os.Remove(a); err != nil { // lin's backing file is gone
		t.Fatal(err)
	}
	u.restart()
	ls := u.ok("ls")
	for _, n := range []string{"lin", "top", "susp", "mp"} {
		if !strings.Contains(ls, n+"\n") {
			t.Fatalf("%s did not come back:\n%s", n, ls)
		}
	}
	for _, n := range []string{"lin", "top"} {
		if !strings.Contains(u.ok("info", n), "Error:") {
			t.Errorf("%s is not in an error state:\n%s", n, u.ok("info", n))
		}
		if kept, _ := filepath.Glob(filepath.Join(devices, n+".json.corrupt-*")); len(kept) != 0 {
			t.Errorf("%s's state was set aside: %v", n, kept)
		}
		if _, err := os.Stat(filepath.Join(devices, n+".json")); err != nil {
			t.Errorf("%s's state is gone: %v", n, err)
		}
	}
}

// TestShutdown: SIGTERM or SIGINT lets NBD requests in flight finish,
// flushes every device and exits 0, every acknowledged write on the
// backing file; a second signal exits at once, even while requests can't
// finish.
func TestShutdown(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run("graceful-"+unix.SignalName(sig), func(t *testing.T) { testGracefulShutdown(t, sig) })
	}
	t.Run("second-signal", func(t *testing.T) {
		u, dir := startScratch(t, "--metrics", "127.0.0.1:0")
		a := backing(t, dir, "a", 8<<20)
		// A write held for ten minutes below the device: not I/O that
		// shutdown fails (that is what a map without a path queues, or
		// a suspended device defers), it just doesn't finish.
		u.ok("create", "slow", "--table", "0 16384 delay "+a+" 0 600000")
		cl := dialNBD(t, u.nbdURI("slow"))
		held := make(chan error, 1)
		go func() { held <- cl.WriteAt(context.Background(), make([]byte, 4096), 0, false) }()
		testutil.Eventually(t, "the write to be held", func() bool {
			return scrape(t, u.info.Metrics, `udm_device_inflight{device="slow"}`) == 1
		})
		u.cmd.Process.Signal(syscall.SIGTERM)
		testutil.Eventually(t, "shutdown to start", func() bool { return strings.Contains(u.stderr.String(), `"message":"shutting down"`) })
		// The held write keeps the NBD shutdown waiting; a second
		// signal ends it.
		u.cmd.Process.Signal(syscall.SIGTERM)
		if code := u.exitCode(); code != 1 {
			t.Fatalf("exit %d after a second signal, want 1\n%s", code, u.stderr)
		}
		cl.Close()
		<-held
	})
}

// testGracefulShutdown signals the daemon while eight writers keep
// 64 KiB writes in flight, each writer to offsets of its own, every
// write with a pattern of its own.
func testGracefulShutdown(t *testing.T, sig syscall.Signal) {
	u, dir := startScratch(t)
	const size, bs, writers = 64 << 20, 65536, 8
	a := backing(t, dir, "a", size)
	u.ok("create", "d", "--table", fmt.Sprintf("0 %d linear %s 0", size>>9, a))
	cl := dialNBD(t, u.nbdURI("d"))
	pattern := func(seq uint64) []byte {
		p := make([]byte, bs)
		for i := 0; i < bs; i += 8 {
			binary.LittleEndian.PutUint64(p[i:], seq)
		}
		return p
	}
	// acked[off] is the last write acknowledged there; maybe[off] the one
	// that failed (the daemon went away): it may or may not have landed.
	var wg sync.WaitGroup
	var mu sync.Mutex // guards ok, acked, maybe
	var ok int64
	acked, maybe := map[int64]uint64{}, map[int64]uint64{}
	stop := make(chan struct{})
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for n, off := uint64(1), int64(i)*bs; ; n, off = n+1, (off+writers*bs)%size {
				select {
				case <-stop:
					return
				default:
				}
				seq := n<<8 | uint64(i)
				err := cl.WriteAt(context.Background(), pattern(seq), off, false)
				mu.Lock()
				if err != nil {
					maybe[off] = seq
				} else {
					acked[off] = seq
					ok++
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}(i)
	}
	testutil.Eventually(t, "writes to flow", func() bool { mu.Lock(); defer mu.Unlock(); return ok > 50 })
	u.cmd.Process.Signal(sig)
	if code := u.exitCode(); code != 0 {
		t.Fatalf("exit %d after %v with I/O in flight\n%s", code, sig, u.stderr)
	}
	close(stop)
	cl.Close()
	wg.Wait()
	logs := u.stderr.String()
	for _, want := range []string{`"signal":"` + sig.String() + `"`, `"message":"shutting down"`, `"message":"stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("no %s log line", want)
		}
	}
	// The shutdown flushed the device, without error.
	if !regexp.MustCompile(`"dev":"d".*"message":"flushed at shutdown"`).MatchString(logs) {
		t.Errorf("no log line of the shutdown flush of d")
	}
	if strings.Contains(logs, "flush at shutdown") {
		t.Errorf("the shutdown flush failed or did not finish")
	}
	// Every acknowledged write is on the backing file.
	data, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	for off, seq := range acked {
		got := data[off : off+bs]
		if bytes.Equal(got, pattern(seq)) {
			continue
		}
		if m, ok := maybe[off]; ok && bytes.Equal(got, pattern(m)) {
			continue
		}
		t.Fatalf("offset %d: the write acknowledged there (seq %#x) is not on the file after the shutdown", off, seq)
	}
	if _, err := os.Stat(u.sock); !os.IsNotExist(err) {
		t.Errorf("control socket left behind: %v", err)
	}
	// It comes back with its device.
	u.restart()
	u.okWant("ls after restart", "d\n", "ls")
}

// queued reports whether show topology shows held I/O.
func queued(topo string) bool {
	m := regexp.MustCompile(`queued=(\d+)`).FindStringSubmatch(topo)
	return m != nil && m[1] != "0"
}

// TestMakeRun is what `make run` does on a fresh checkout: serve the demo
// on an empty state dir. The printed fio command works (at the port the
// daemon bound), and so do nbdinfo and qemu-io.
func TestMakeRun(t *testing.T) {
	testutil.RequireTool(t, "fio")
	state := filepath.Join(t.TempDir(), "state") // does not exist yet
	u := startUDM(t, state, "--metrics", "127.0.0.1:0")
	testutil.Eventually(t, "the demo instructions", func() bool { return strings.Contains(u.stdout.String(), "nbdinfo ") })
	out := u.stdout.String()
	uri := u.nbdURI("demo")
	if !strings.Contains(out, "at "+uri+"\n") {
		t.Fatalf("udm serve does not say where the demo is (%s):\n%s", uri, out)
	}
	u.okWant("ls", "demo\n", "ls")
	p0, p1 := filepath.Join(state, "demo-path0.img"), filepath.Join(state, "demo-path1.img")
	wantTable := "0 2097152 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 " + p0 + " 1 " + p1 + " 1 \n"
	if got := u.ok("table", "demo"); got != wantTable {
		t.Fatalf("demo table:\n%q\nwant\n%q", got, wantTable)
	}
	s0, err := os.Stat(p0)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := os.Stat(p1)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(s0, s1) || s0.Size() != 1<<30 {
		t.Fatalf("the demo's paths are not one 1 GiB file under two names: %v %v", s0, s1)
	}

	runDemoCommands(t, out, "fio", "qemu-io", "nbdinfo")
	if n := scrape(t, u.info.Metrics, `udm_device_errors_total{device="demo"}`); n != 0 {
		t.Fatalf("%v errors on the demo device", n)
	}
	// Both paths carried I/O and neither failed.
	for _, p := range []string{p0, p1} {
		for _, m := range []string{
			`udm_path_io_total{device="demo",path="` + p + `",op="write"}`,
			`udm_path_io_total{device="demo",path="` + p + `",op="read"}`,
			`udm_path_latency_seconds_count{device="demo",path="` + p + `",op="read"}`,
			`udm_path_bytes_total{device="demo",path="` + p + `",op="write"}`,
			`udm_path_active{device="demo",path="` + p + `",group="1"}`,
			`udm_path_checker_state{device="demo",path="` + p + `",state="ready"}`,
		} {
			if v := scrape(t, u.info.Metrics, m); v <= 0 {
				t.Errorf("%s = %v", m, v)
			}
		}
		if v := scrape(t, u.info.Metrics, `udm_path_failures_total{device="demo",path="`+p+`",group="1"}`); v != 0 {
			t.Errorf("path %s failed %v times", p, v)
		}
		// No I/O failed on it, and none is left in flight.
		for _, m := range []string{`udm_path_errors_total{device="demo",path="` + p + `"}`,
			`udm_path_inflight{device="demo",path="` + p + `"}`} {
			if v := scrape(t, u.info.Metrics, m); v != 0 {
				t.Errorf("%s = %v", m, v)
			}
		}
	}
	for _, m := range []string{`udm_device_latency_seconds_count{device="demo",op="write"}`, `udm_nbd_requests_total`, `udm_nbd_receives_total`,
		`udm_loop_cqes_completed_total{loop="0"}`, `udm_device_io_total{device="demo",op="read"}`} {
		if v := scrape(t, u.info.Metrics, m); v <= 0 {
			t.Errorf("%s = %v", m, v)
		}
	}
	// qemu-io alone wrote and read 1 MiB; nothing is in flight now.
	for _, op := range []string{"read", "write"} {
		if v := scrape(t, u.info.Metrics, `udm_device_bytes_total{device="demo",op="`+op+`"}`); v < 1<<20 {
			t.Errorf("udm_device_bytes_total{op=%q} = %v, want at least qemu-io's 1 MiB", op, v)
		}
	}
	for _, m := range []string{`udm_device_inflight{device="demo"}`, `udm_device_pushback{device="demo"}`} {
		if v := scrape(t, u.info.Metrics, m); v != 0 {
			t.Errorf("%s = %v when idle", m, v)
		}
	}
	topo := u.ok("show", "topology")
	if strings.Count(topo, "active ready fail_count=0") != 2 {
		t.Fatalf("demo topology after the workloads:\n%s", topo)
	}
	u.stop()

	// A second start does not make the demo again, but still says how
	// to reach it.
	u.restart()
	testutil.Eventually(t, "the demo instructions", func() bool { return strings.Contains(u.stdout.String(), "nbdinfo ") })
	u.okWant("ls after restart", "demo\n", "ls")
	u.stop()
}

// TestServeRefuses: a second daemon on the same control socket or the
// same state dir refuses to start (one line, non-zero exit); a stale
// socket file left by a crash is taken over.
func TestServeRefuses(t *testing.T) {
	u := startUDM(t, t.TempDir(), "--no-demo")
	serve := func(args ...string) result {
		return runUDM(t, nil, "", append([]string{"serve", "--nbd", "127.0.0.1:0", "--nbd-unix", "", "--no-demo"}, args...)...)
	}
	r := serve("--state-dir", t.TempDir(), "--control", u.sock)
	if r.code != 1 || !strings.Contains(r.err, "udm: control socket: another daemon is answering on "+u.sock+"\n") {
		t.Fatalf("second daemon on the same socket: %s", r)
	}
	r = serve("--state-dir", u.stateDir, "--control", filepath.Join(sockDir(t), "other.sock"))
	if r.code != 1 || !strings.Contains(r.err, "udm: another udm daemon uses the state dir "+u.stateDir+"\n") {
		t.Fatalf("second daemon on the same state dir: %s", r)
	}
	// The first is unharmed.
	u.ok("ls")
	u.kill9()
	if _, err := os.Stat(u.sock); err != nil {
		t.Fatalf("after SIGKILL the socket file should still be there: %v", err)
	}
	u.restart() // takes over the stale socket
	u.ok("ls")
	if fi, err := os.Stat(u.sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("control socket mode: %v %v", fi, err)
	}
	r = serve("--log-level", "loud")
	if r.code != 2 || !strings.HasPrefix(r.err, "udm: unknown log level") {
		t.Fatalf("bad log level: %s", r)
	}
}

// runDemoCommands runs the fio, qemu-io and nbdinfo commands that udm
// serve printed about the demo (out), as a user pasting them would, and
// checks what they report.
func runDemoCommands(t *testing.T, out string, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		line := ""
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), tool+" ") {
				line = strings.TrimSpace(l)
			}
		}
		if line == "" {
			t.Fatalf("no %s command printed:\n%s", tool, out)
		}
		testutil.RequireTool(t, tool)
		cmd := exec.Command("sh", "-c", line)
		cmd.Dir = t.TempDir()
		res, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", line, err, res)
		}
		switch tool {
		case "fio":
			if !regexp.MustCompile(`err= *0\b`).Match(res) || regexp.MustCompile(`err= *[1-9]`).Match(res) {
				t.Fatalf("fio:\n%s", res)
			}
		case "nbdinfo":
			if !strings.Contains(string(res), "1073741824") {
				t.Fatalf("nbdinfo does not report 1 GiB:\n%s", res)
			}
		case "qemu-io":
			if strings.Contains(string(res), "Pattern verification failed") {
				t.Fatalf("qemu-io:\n%s", res)
			}
		}
	}
}

// TestMakeRunTLS: with --tls require the demo commands udm serve prints
// use nbds:// and the certificate directory, and they work as printed.
func TestMakeRunTLS(t *testing.T) {
	testutil.RequireTool(t, "fio")
	dirs, err := testcerts.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	u := startUDM(t, filepath.Join(t.TempDir(), "state"), "--tls", "require", "--tls-certificates", dirs.Server)
	testutil.Eventually(t, "the demo instructions", func() bool { return strings.Contains(u.stdout.String(), "nbdinfo ") })
	out := u.stdout.String()
	if !strings.Contains(out, "at nbds://"+u.info.NBD+"/demo\n") || strings.Contains(out, "nbd://") {
		t.Fatalf("udm serve --tls require does not print nbds:// URIs:\n%s", out)
	}
	if !strings.Contains(out, "fio --name=demo --ioengine=nbd --uri=nbds://"+u.info.NBD+"/demo ") {
		t.Fatalf("no fio command with the nbds:// URI:\n%s", out)
	}
	// fio's nbd engine takes the CA only from libnbd's default
	// directories, which a test doesn't write: the other two run.
	runDemoCommands(t, out, "qemu-io", "nbdinfo")
}
