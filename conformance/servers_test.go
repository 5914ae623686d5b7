package conformance

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"udm/daemon/api"
	"udm/internal/refserver"
	"udm/internal/testutil"
)

func TestMain(m *testing.M) { testutil.MainWithUDM(m) }

const (
	diskSize = 128 << 20
	roSize   = 16 << 20
	roSeed   = 0x52 // cases.py's ro_pattern
)

// endpoint is where one export of a server listens.
type endpoint struct {
	Host string
	Port int
}

func (e endpoint) MarshalJSON() ([]byte, error) {
	return []byte(fmt.Sprintf("[%q, %d]", e.Host, e.Port)), nil
}

// server is one NBD server under test: it serves the read-write export
// "disk" (diskSize bytes, sparse) and the read-only export "ro" (roSize
// bytes of the ro pattern), each backed by a file of its own.
type server struct {
	name     string
	disk, ro endpoint
	dir      string // its backing files
	log      func() string
}

// pattern is cases.py's pattern(): 8-byte big-endian words naming their
// offset, xor the seed in the top byte.
func pattern(off, n int64, seed uint64) []byte {
	b := make([]byte, n)
	for i := int64(0); i < n; i += 8 {
		binary.BigEndian.PutUint64(b[i:], uint64(off+i)^seed<<56)
	}
	return b
}

// backings makes dir/disk (sparse) and dir/ro (the ro pattern).
func backings(t *testing.T, dir string) (disk, ro string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	disk, ro = filepath.Join(dir, "disk"), filepath.Join(dir, "ro")
	if err := os.WriteFile(ro, pattern(0, roSize, roSeed), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(disk)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(diskSize); err != nil {
		t.Fatal(err)
	}
	f.Close()
	return disk, ro
}

// waitListening polls addr until it accepts a connection.
func waitListening(t *testing.T, addr string, exited <-chan struct{}, log func() string) {
	t.Helper()
	testutil.Eventually(t, "a server listening on "+addr, func() bool {
		if testutil.Closed(exited) {
			t.Fatalf("server for %s exited:\n%s", addr, log())
		}
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

// startProc runs argv until the test ends.
func startProc(t *testing.T, argv ...string) (exited <-chan struct{}, log func() string) {
	t.Helper()
	out := &testutil.SyncBuffer{}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	return done, out.String
}

// startNbdkit serves dir's disk and ro with nbdkit's file plugin, one
// process each (the read-only one with -r), exports named by file.
func startNbdkit(t *testing.T, dir string) *server {
	t.Helper()
	backings(t, dir)
	s := &server{name: "nbdkit", dir: dir}
	var logs []func() string
	for _, e := range []struct {
		ep   *endpoint
		file string
		ro   bool
	}{{&s.disk, "disk", false}, {&s.ro, "ro", true}} {
		sub := filepath.Join(dir, e.file+".d")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, e.file), filepath.Join(sub, e.file)); err != nil {
			t.Fatal(err)
		}
		var args []string
		if e.ro {
			args = append(args, "-r")
		}
		srv := refserver.Nbdkit(t, false, append(args, "file", "dir="+sub)...)
		logs = append(logs, srv.Log)
		*e.ep = endpoint{"127.0.0.1", srv.Port}
	}
	s.log = func() string { return logs[0]() + logs[1]() }
	return s
}

// startNbdServer serves dir's disk and ro with nbd-server from a config
// file. nbd-server 3.24 can only stay in the foreground for a single
// connection (-d), so it daemonizes; its process group is killed at the
// end (it writes its pid to a file).
func startNbdServer(t *testing.T, dir string) *server {
	t.Helper()
	testutil.RequireTool(t, "nbd-server")
	disk, ro := backings(t, dir)
	port := refserver.FreePort(t)
	conf := filepath.Join(dir, "nbd-server.conf")
	pidFile := filepath.Join(dir, "nbd-server.pid")
	logFile := filepath.Join(dir, "nbd-server.log")
	cfg := fmt.Sprintf(`[generic]
	allowlist = true
	listenaddr = 127.0.0.1
	port = %d
[disk]
	exportname = %s
	flush = true
	fua = true
	trim = true
[ro]
	exportname = %s
	readonly = true
	flush = true
	fua = true
`, port, disk, ro)
	if err := os.WriteFile(conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	lf, err := os.Create(logFile)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nbd-server", "-C", conf, "-p", pidFile)
	cmd.Stdout, cmd.Stderr = lf, lf
	err = cmd.Run()
	lf.Close()
	log := func() string { b, _ := os.ReadFile(logFile); return string(b) }
	if err != nil {
		t.Fatalf("nbd-server: %v\n%s", err, log())
	}
	t.Cleanup(func() {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			t.Errorf("nbd-server left no pid file: %v", err)
			return
		}
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid <= 1 {
			return
		}
		// The daemon leads its own session: its group holds the children
		// serving connections.
		syscall.Kill(-pid, syscall.SIGTERM)
		syscall.Kill(pid, syscall.SIGTERM)
		// Killed after Patience if it does not end.
		testutil.Poll(func() bool { return syscall.Kill(pid, 0) != nil })
		syscall.Kill(-pid, syscall.SIGKILL)
	})
	never := make(chan struct{})
	waitListening(t, fmt.Sprintf("127.0.0.1:%d", port), never, log)
	ep := endpoint{"127.0.0.1", port}
	return &server{name: "nbd-server", disk: ep, ro: ep, dir: dir, log: log}
}

// udmd is a running `udm serve`.
type udmd struct {
	*server
	ctl *api.Client
	nbd string // host:port
}

// startUDM runs `udm serve` (no demo) and creates disk (linear over the
// disk file) and ro (read-only linear over the ro file) in it.
func startUDM(t *testing.T, dir string, extra ...string) *udmd {
	return startUDMDemo(t, dir, false, extra...)
}

// startUDMDemo is startUDM, with the built-in demo device if demo is set.
func startUDMDemo(t *testing.T, dir string, demo bool, extra ...string) *udmd {
	t.Helper()
	disk, ro := backings(t, dir)
	sock := filepath.Join(testutil.SockDir(t), "c.sock")
	argv := append([]string{testutil.UDM(), "serve", "--state-dir", filepath.Join(dir, "state"), "--control", sock,
		"--nbd", "127.0.0.1:0", "--nbd-unix", "", "--loops", "2", "--log-level", "debug"}, extra...)
	if !demo {
		argv = append(argv, "--no-demo")
	}
	exited, log := startProc(t, argv...)
	t.Cleanup(func() {
		if strings.Contains(log(), "WARNING: DATA RACE") {
			t.Errorf("udm reported a data race:\n%s", log())
		}
	})
	ctl := api.NewClient(sock)
	var info api.DaemonInfo
	testutil.Eventually(t, "udm serve to answer on "+sock, func() bool {
		if testutil.Closed(exited) {
			t.Fatalf("udm serve exited:\n%s", log())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var err error
		info, err = ctl.Daemon(ctx)
		return err == nil
	})
	u := &udmd{server: &server{name: "udm", dir: dir, log: log}, ctl: ctl, nbd: info.NBD}
	u.create(t, "disk", fmt.Sprintf("0 %d linear %s 0", diskSize>>9, disk), false)
	u.create(t, "ro", fmt.Sprintf("0 %d linear %s 0", roSize>>9, ro), true)
	host, p, err := net.SplitHostPort(info.NBD)
	if err != nil {
		t.Fatal(err)
	}
	port, _ := strconv.Atoi(p)
	u.disk = endpoint{host, port}
	u.ro = u.disk
	return u
}

func (u *udmd) create(t *testing.T, name, table string, ro bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := u.ctl.Create(ctx, api.CreateRequest{Name: name, Table: table, ReadOnly: ro}); err != nil {
		t.Fatalf("udm create %s: %v\n%s", name, err, u.log())
	}
}

// python returns a python3 that can import libnbd's module, or skips.
func python(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3", "python3"} {
		if exec.Command(p, "-I", "-c", "import nbd; nbd.NBD()").Run() == nil {
			return p
		}
	}
	t.Skip("skipped: no python3 with libnbd's module (apt-get install python3-libnbd)")
	return ""
}

var errTimeout = errors.New("timed out")
