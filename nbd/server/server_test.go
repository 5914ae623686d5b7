package server

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/dm/filedev"
	"udm/internal/testutil"
	"udm/uring"
)

// testServer is a server on loopback TCP and a Unix socket exporting dm
// devices built from tables.
type testServer struct {
	t     testing.TB
	reg   *dm.Registry
	srv   *Server
	loops []*uring.Loop
	tcp   string // host:port
	unix  string // socket path

	mu   sync.Mutex                   // guards mems
	mems map[string]*dmtest.MemDevice // in-memory backings tables may name
}

func newTestServer(t testing.TB, nloops int, cfg Config) *testServer {
	t.Helper()
	ts := &testServer{t: t, mems: map[string]*dmtest.MemDevice{}}
	for i := 0; i < nloops; i++ {
		l, err := uring.NewLoop(uring.Config{ID: i})
		if err != nil {
			t.Fatal(err)
		}
		ts.loops = append(ts.loops, l)
	}
	files := filedev.Opener(ts.loops[0])
	ts.reg = dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Open: func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		ts.mu.Lock()
		m := ts.mems[name]
		ts.mu.Unlock()
		if m != nil {
			return dm.StaticOpener(m)(name, ro)
		}
		return files(name, ro)
	}})
	cfg.Exports = RegistryExports(ts.reg, "")
	cfg.Loops = ts.loops
	if os.Getenv("UDM_TEST_LOG") != "" {
		cfg.Log = zerolog.New(zerolog.NewConsoleWriter()).Level(zerolog.DebugLevel)
	} else {
		cfg.Log = zerolog.Nop()
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts.srv = srv
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.tcp = ln.Addr().String()
	go srv.Serve(ln)
	ts.unix = filepath.Join(t.TempDir(), "nbd.sock")
	uln, err := net.Listen("unix", ts.unix)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(uln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("server shutdown: %v", err)
		}
		ts.reg.RemoveAll(context.Background())
		for _, l := range ts.loops {
			l.Close()
		}
	})
	return ts
}

// linear creates device name as linear over a fresh tmpfs file of size
// bytes and returns the file.
func (ts *testServer) linear(name string, size int64) string {
	ts.t.Helper()
	f := testutil.TempFile(ts.t, size)
	if _, err := ts.reg.Create(context.Background(), name, "", fmt.Sprintf("0 %d linear %s 0", size/512, f)); err != nil {
		ts.t.Fatal(err)
	}
	return f
}

// memBacking makes an in-memory backing of size bytes that tables can
// name as name. It counts the I/O it gets and can be told to hang, delay
// or fail it; it completes on the bio's loop, as filedev does.
func (ts *testServer) memBacking(name string, size int64) *dmtest.MemDevice {
	m := dmtest.NewMemDevice(name, size)
	m.SetCompletion(dmtest.CompleteExec)
	// Let what a failed test left held go before the server shuts down
	// (which waits for it).
	ts.t.Cleanup(func() { m.Hang(false); m.Release() })
	ts.mu.Lock()
	ts.mems[name] = m
	ts.mu.Unlock()
	return m
}

// memDisk creates device name as linear over a fresh in-memory backing of
// size bytes and returns the backing.
func (ts *testServer) memDisk(name string, size int64) *dmtest.MemDevice {
	ts.t.Helper()
	m := ts.memBacking("mem:"+name, size)
	ts.create(name, fmt.Sprintf("0 %d linear %s 0", size/512, m.Name()))
	return m
}

// create creates device name from a table.
func (ts *testServer) create(name, table string) {
	ts.t.Helper()
	if _, err := ts.reg.Create(context.Background(), name, "", table); err != nil {
		ts.t.Fatal(err)
	}
}

func (ts *testServer) uri(export string) string {
	host, port, _ := net.SplitHostPort(ts.tcp)
	return fmt.Sprintf("nbd://%s:%s/%s", host, port, export)
}

func (ts *testServer) unixURI(export string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", export, ts.unix)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestNbdinfo(t *testing.T) {
	testutil.RequireTool(t, "nbdinfo")
	ts := newTestServer(t, 1, Config{})
	ts.linear("disk", 64<<20)
	ts.linear("other", 8<<20)
	ts.linear("ro", 4<<20)
	ro, _ := ts.reg.Get("ro")
	ro.SetReadOnly(true)
	out := run(t, "nbdinfo", "--json", ts.uri("disk"))
	for _, want := range []string{`"export-size": 67108864`, `"can_flush": true`, `"can_fua": true`, `"can_trim": true`,
		`"can_zero": true`, `"can_fast_zero": true`, `"can_multi_conn": true`, `"is_read_only": false`,
		`"block_size_minimum": 512`, `"block_size_preferred": 4096`, `"block_size_maximum": 67108864`} {
		if !strings.Contains(out, want) {
			t.Errorf("nbdinfo --json lacks %s:\n%s", want, out)
		}
	}
	out = run(t, "nbdinfo", "--list", "--json", ts.unixURI(""))
	var list struct {
		Exports []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
	got := map[string]map[string]any{}
	for _, e := range list.Exports {
		name, _ := e["export-name"].(string)
		got[name] = e
	}
	for _, want := range []struct {
		name     string
		size     float64
		readOnly bool
	}{{"disk", 64 << 20, false}, {"other", 8 << 20, false}, {"ro", 4 << 20, true}} {
		e := got[want.name]
		if e == nil {
			t.Errorf("nbdinfo --list lacks %s:\n%s", want.name, out)
			continue
		}
		if e["export-size"] != want.size || e["is_read_only"] != want.readOnly {
			t.Errorf("nbdinfo --list: %s has size %v, read-only %v; want %v, %v", want.name, e["export-size"], e["is_read_only"], want.size, want.readOnly)
		}
	}
}

func TestQemuIO(t *testing.T) {
	testutil.RequireTool(t, "qemu-io")
	ts := newTestServer(t, 2, Config{})
	ts.linear("disk", 64<<20)
	for _, uri := range []string{ts.uri("disk"), ts.unixURI("disk")} {
		out := run(t, "qemu-io", "--image-opts", "driver=nbd,"+qemuOpts(uri),
			"-c", "write -P 0xab 1M 128k", "-c", "read -P 0xab 1M 128k", "-c", "write -z 2M 64k", "-c", "read -P 0 2M 64k",
			"-c", "discard 4M 1M", "-c", "flush", "-c", "aio_write -P 0x11 8M 4k", "-c", "aio_flush", "-c", "read -P 0x11 8M 4k")
		if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "failed") {
			t.Fatalf("qemu-io on %s:\n%s", uri, out)
		}
	}
}

// qemuOpts turns a URI into qemu's nbd driver options.
func qemuOpts(uri string) string {
	if strings.HasPrefix(uri, "nbd+unix") {
		// nbd+unix:///export?socket=PATH
		rest := strings.TrimPrefix(uri, "nbd+unix:///")
		export, sock, _ := strings.Cut(rest, "?socket=")
		return "server.type=unix,server.path=" + sock + ",export=" + export
	}
	rest := strings.TrimPrefix(uri, "nbd://")
	hostport, export, _ := strings.Cut(rest, "/")
	host, port, _ := net.SplitHostPort(hostport)
	return "server.type=inet,server.host=" + host + ",server.port=" + port + ",export=" + export
}

func TestFioVerify(t *testing.T) {
	testutil.SkipShort(t, "fio end to end through the server, 4 runs")
	testutil.RequireTool(t, "fio")
	for _, gather := range []bool{false, true} {
		t.Run(fmt.Sprintf("gather=%v", gather), func(t *testing.T) { testFioVerify(t, gather) })
	}
}

// testFioVerify: fio verifies its writes through the server, receiving
// at once, or with every receive gathered.
func testFioVerify(t *testing.T, gather bool) {
	ts := newTestServer(t, 2, Config{forceGather: gather})
	ts.linear("disk", 64<<20)
	for _, uri := range []string{ts.uri("disk"), ts.unixURI("disk")} {
		out := run(t, "fio", "--name=v", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite", "--bs=4k", "--iodepth=32",
			"--size=16m", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--numjobs=1")
		if !strings.Contains(out, "err= 0") {
			t.Fatalf("fio verify on %s:\n%s", uri, out)
		}
		// Several jobs at once (multi-conn), each verifying its own area.
		out = run(t, "fio", "--name=m", "--ioengine=nbd", "--uri="+uri, "--rw=randrw", "--bs=64k", "--iodepth=16",
			"--size=8m", "--offset_increment=8m", "--numjobs=4", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--group_reporting")
		if !strings.Contains(out, "err= 0") {
			t.Fatalf("fio multi-job verify on %s:\n%s", uri, out)
		}
	}
}

func contextWithTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestQemuImgConvertCompare(t *testing.T) {
	testutil.RequireTool(t, "qemu-img")
	ts := newTestServer(t, 2, Config{})
	ts.linear("disk", 32<<20)
	src := filepath.Join(t.TempDir(), "src.img")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	buf := make([]byte, 1<<20)
	for i := 0; i < 32; i++ {
		if i%4 == 3 {
			continue // leave holes: convert must zero them on the target
		}
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		f.WriteAt(buf, int64(i)<<20)
	}
	f.Truncate(32 << 20)
	f.Close()
	for _, uri := range []string{ts.uri("disk"), ts.unixURI("disk")} {
		run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, uri)
		run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	}
}

func TestNbdcopyBothWays(t *testing.T) {
	testutil.RequireTool(t, "nbdcopy")
	ts := newTestServer(t, 2, Config{})
	ts.linear("disk", 16<<20)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 16<<20)
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	os.WriteFile(src, data, 0o644)
	run(t, "nbdcopy", "--flush", src, ts.uri("disk"))
	back := filepath.Join(dir, "back.img")
	run(t, "nbdcopy", ts.unixURI("disk"), back)
	got, _ := os.ReadFile(back)
	if !bytes.Equal(got, data) {
		t.Fatal("nbdcopy round trip differs")
	}
	// Several connections at once (nbdcopy uses multi-conn when offered).
	run(t, "nbdcopy", "--connections=4", "--requests=32", ts.uri("disk"), filepath.Join(dir, "back4.img"))
	got, _ = os.ReadFile(filepath.Join(dir, "back4.img"))
	if !bytes.Equal(got, data) {
		t.Fatal("nbdcopy with 4 connections differs")
	}
}

func TestBlockStatusHoles(t *testing.T) {
	testutil.RequireTool(t, "nbdinfo")
	ts := newTestServer(t, 1, Config{})
	f := ts.linear("disk", 8<<20)
	// One data range in a sparse file: 1 MiB at 2 MiB.
	fh, err := os.OpenFile(f, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 2<<20)
	fh.Close()
	out := run(t, "nbdinfo", "--map", ts.uri("disk"))
	// nbdinfo prints: offset length type description
	want := []string{
		"0  2097152    3  hole,zero",
		"2097152  1048576    0  data",
		"3145728  5242880    3  hole,zero",
	}
	got := strings.Join(strings.Fields(out), " ")
	for _, w := range want {
		if !strings.Contains(got, strings.Join(strings.Fields(w), " ")) {
			t.Fatalf("nbdinfo --map lacks %q:\n%s", w, out)
		}
	}
}
