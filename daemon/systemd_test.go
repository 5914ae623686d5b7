package daemon_test

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"udm/internal/testutil"
)

// notifySocket is a fake NOTIFY_SOCKET: it keeps every datagram the
// daemon sends.
type notifySocket struct {
	path string
	mu   sync.Mutex
	msgs []string
}

func newNotifySocket(t *testing.T, dir string) *notifySocket {
	t.Helper()
	n := &notifySocket{path: filepath.Join(dir, "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: n.path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	return n
}

// count returns how many datagrams said state.
func (n *notifySocket) count(state string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, m := range n.msgs {
		for _, l := range strings.Split(m, "\n") {
			if l == state {
				c++
			}
		}
	}
	return c
}

func (n *notifySocket) String() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return strings.Join(n.msgs, " | ")
}

// TestSocketActivation starts udm serve as systemd starts a socket-
// activated service: the control, NBD (Unix and TCP) and metrics sockets
// bound beforehand and passed as fds 3-6 with LISTEN_FDS, LISTEN_PID
// (the daemon's own pid) and LISTEN_FDNAMES (one name for all, as one
// .socket unit gives them), a NOTIFY_SOCKET and WATCHDOG_USEC. The
// daemon serves on the passed sockets (binding the same addresses
// itself would fail: they are in use), says READY=1, feeds the
// watchdog, writes its pidfile, says STOPPING=1 on SIGTERM, exits 0 and
// leaves the socket files, which are systemd's, in place.
func TestSocketActivation(t *testing.T) {
	testutil.RequireTool(t, "nbdinfo")
	testutil.SkipShort(t, "an end-to-end test of udm serve")
	sd := sockDir(t)
	state := filepath.Join(t.TempDir(), "state")
	u := &udmd{t: t, stateDir: state, sock: filepath.Join(sd, "c.sock"), nbdUnix: filepath.Join(sd, "n.sock")}
	ctl, err := net.Listen("unix", u.sock)
	if err != nil {
		t.Fatal(err)
	}
	nbdU, err := net.Listen("unix", u.nbdUnix)
	if err != nil {
		t.Fatal(err)
	}
	nbdT, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	met, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	for _, ln := range []net.Listener{ctl, nbdU, nbdT, met} {
		f, err := ln.(interface{ File() (*os.File, error) }).File()
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
		t.Cleanup(func() { f.Close(); ln.Close() })
	}
	ns := newNotifySocket(t, sd)
	pidfile := filepath.Join(sd, "udm.pid")
	u.args = []string{"serve", "--state-dir", state, "--control", u.sock, "--nbd", nbdT.Addr().String(),
		"--nbd-unix", u.nbdUnix, "--metrics", met.Addr().String(), "--loops", "2", "--log-level", "debug",
		"--pidfile", pidfile, "--config", ""}
	u.stdout, u.stderr = &testutil.SyncBuffer{}, &testutil.SyncBuffer{}
	// LISTEN_PID must be the daemon's pid: the shell sets it to its own
	// and becomes the daemon.
	cmd := exec.Command("sh", append([]string{"-c", `LISTEN_PID=$$ exec "$0" "$@"`, testutil.UDM()}, u.args...)...)
	cmd.ExtraFiles = files
	u.run(cmd, "LISTEN_FDS=4", "LISTEN_FDNAMES=udm.socket:udm.socket:udm.socket:udm.socket",
		"NOTIFY_SOCKET="+ns.path, "WATCHDOG_USEC=2000000")
	t.Cleanup(func() {
		if u.running() {
			u.cmd.Process.Kill()
			<-u.done
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s\nnotifications: %s", u.stderr, ns)
		}
	})
	u.await()
	testutil.Eventually(t, "READY=1", func() bool { return ns.count("READY=1") == 1 })
	if u.info.NBD != nbdT.Addr().String() || u.info.Metrics != met.Addr().String() || u.info.NBDUnix != u.nbdUnix {
		t.Fatalf("the daemon reports other addresses than the passed sockets': %+v", u.info)
	}
	u.okWant("ls", "demo\n", "ls")
	for _, uri := range []string{u.nbdURI("demo"), "nbd+unix:///demo?socket=" + u.nbdUnix} {
		out, err := exec.Command("nbdinfo", "--size", uri).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "1073741824" {
			t.Fatalf("nbdinfo --size %s: %v: %s", uri, err, out)
		}
	}
	if n := scrape(t, met.Addr().String(), `udm_nbd_connections_accepted_total`); n < 2 {
		t.Fatalf("udm_nbd_connections_accepted_total %v after two connections", n)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(u.cmd.Process.Pid) {
		t.Fatalf("pidfile: %q (%v), want %d", b, err, u.cmd.Process.Pid)
	}
	testutil.Eventually(t, "WATCHDOG=1", func() bool { return ns.count("WATCHDOG=1") >= 1 })
	if ns.count("STOPPING=1") != 0 {
		t.Fatalf("STOPPING=1 before the daemon was stopped: %s", ns)
	}
	u.cmd.Process.Signal(syscall.SIGTERM)
	if code := u.exitCode(); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
	testutil.Eventually(t, "STOPPING=1", func() bool { return ns.count("STOPPING=1") == 1 })
	for _, p := range []string{u.sock, u.nbdUnix} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the passed socket %s was removed: %v", p, err)
		}
	}
	if _, err := os.Stat(pidfile); !os.IsNotExist(err) {
		t.Errorf("pidfile left behind: %v", err)
	}
}
