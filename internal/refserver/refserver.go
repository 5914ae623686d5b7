// Package refserver runs the reference NBD servers (nbdkit, qemu-nbd)
// that udm's tests compare with or connect to: on a Unix socket or a free
// loopback port, restartable on the same address, stoppable with
// SIGSTOP; and finds free ports and the tools' answers (nbdinfo).
//
// Lock order: there is one lock, Server.mu, a leaf held only to read or
// swap the running process.
package refserver

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// Server is an external NBD server process that a test can kill,
// restart (on the same address), stop and continue.
type Server struct {
	URI  string // where it serves, as an NBD URI
	Port int    // its loopback TCP port (0 on a unix socket)

	t       testing.TB
	kind    string
	pidfile string
	sock    string          // the unix socket, if any
	base    []string        // the command line before the plugin arguments
	argv    func() []string // the command line for the next start

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	stderr *testutil.SyncBuffer
}

// FreePort returns a TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// newServer prepares a server of kind (its binary bin, skipping the
// test without it) on a unix socket or a free loopback port; where are
// the arguments that say so, with the server's flags for a socket and
// for a bind address.
func newServer(t testing.TB, kind string, unix bool, sockFlag, addrFlag string) (s *Server, bin string, where []string) {
	t.Helper()
	bin = testutil.RequireTool(t, kind)
	dir := testutil.SockDir(t)
	s = &Server{t: t, kind: kind, pidfile: filepath.Join(dir, "pid")}
	if unix {
		s.sock = filepath.Join(dir, "s.sock")
		s.URI = "nbd+unix:///?socket=" + s.sock
		return s, bin, []string{sockFlag, s.sock}
	}
	s.Port = FreePort(t)
	s.URI = fmt.Sprintf("nbd://127.0.0.1:%d/", s.Port)
	return s, bin, []string{addrFlag, "127.0.0.1", "-p", strconv.Itoa(s.Port)}
}

// Nbdkit starts nbdkit with plugin args (e.g. "memory", "64M") on a
// unix socket or a loopback TCP port.
func Nbdkit(t testing.TB, unix bool, args ...string) *Server {
	t.Helper()
	s, bin, where := newServer(t, "nbdkit", unix, "-U", "-i")
	s.base = append([]string{bin, "--exit-with-parent", "-f", "-P", s.pidfile}, where...)
	s.WithArgs(args...)
	s.Start()
	t.Cleanup(s.Kill)
	return s
}

// QemuNBD serves file (raw) with qemu-nbd, persistent and shared.
func QemuNBD(t testing.TB, unix bool, file string, args ...string) *Server {
	t.Helper()
	s, bin, where := newServer(t, "qemu-nbd", unix, "-k", "-b")
	argv := append([]string{bin, "-f", "raw", "--persistent", "--shared=32", "--pid-file=" + s.pidfile}, where...)
	argv = append(append(argv, args...), file)
	s.setArgs(argv)
	s.Start()
	t.Cleanup(s.Kill)
	return s
}

// setArgs fixes the command line of later starts.
func (s *Server) setArgs(argv []string) {
	s.argv = func() []string { return argv }
}

// WithArgs sets nbdkit's plugin (and filter) arguments for later starts.
func (s *Server) WithArgs(args ...string) {
	s.setArgs(append(append([]string{}, s.base...), args...))
}

// Start launches the server (again, after Kill) and waits until it
// listens (its pid file appears).
func (s *Server) Start() {
	s.t.Helper()
	os.Remove(s.pidfile)
	if s.sock != "" {
		os.Remove(s.sock) // left behind by a killed server
	}
	argv := s.argv()
	cmd := exec.Command(argv[0], argv[1:]...)
	stderr := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.kind, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited, s.stderr = cmd, exited, stderr
	s.mu.Unlock()
	testutil.Eventually(s.t, s.kind+" to write its pid file: "+strings.Join(argv, " "), func() bool {
		select {
		case <-exited:
			s.t.Fatalf("%s exited at start: %s\n%s", s.kind, strings.Join(argv, " "), stderr.String())
		default:
		}
		b, err := os.ReadFile(s.pidfile)
		return err == nil && len(bytes.TrimSpace(b)) > 0
	})
}

// Kill ends the server with SIGKILL (as a crash would) and reaps it.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGCONT)
	cmd.Process.Kill()
	<-exited
}

// Restart kills the server and starts it again on the same address.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.Start()
}

// Signal sends sig (SIGSTOP to hang the server, SIGCONT to resume it).
// After SIGSTOP it waits until every thread of the server has stopped.
func (s *Server) Signal(sig syscall.Signal) {
	s.t.Helper()
	s.mu.Lock()
	cmd := s.cmd
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(sig)
	if sig != syscall.SIGSTOP {
		return
	}
	dir := fmt.Sprintf("/proc/%d/task", cmd.Process.Pid)
	testutil.Eventually(s.t, s.kind+" stopped", func() bool {
		tasks, err := os.ReadDir(dir)
		if err != nil {
			return false
		}
		for _, task := range tasks {
			b, err := os.ReadFile(filepath.Join(dir, task.Name(), "stat"))
			if err != nil {
				return false
			}
			// pid (comm) STATE ...: comm may hold spaces; the state follows
			// the last ')'.
			i := bytes.LastIndexByte(b, ')')
			if i < 0 || i+2 >= len(b) || b[i+2] != 'T' && b[i+2] != 't' {
				return false
			}
		}
		return true
	})
}

// Nbdinfo runs nbdinfo --json on uri and returns its first export.
func Nbdinfo(t testing.TB, uri string) map[string]any {
	t.Helper()
	bin := testutil.RequireTool(t, "nbdinfo")
	out, err := exec.Command(bin, "--json", uri).Output()
	if err != nil {
		t.Fatalf("nbdinfo %s: %v", uri, err)
	}
	var v struct {
		Structured bool             `json:"structured"`
		Protocol   string           `json:"protocol"`
		Exports    []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal(out, &v); err != nil || len(v.Exports) == 0 {
		t.Fatalf("nbdinfo %s: %v: %s", uri, err, out)
	}
	e := v.Exports[0]
	e["structured"] = v.Structured
	e["protocol"] = v.Protocol
	return e
}

// Log returns what the server has written to stdout and stderr since it
// last started.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stderr == nil {
		return ""
	}
	return s.stderr.String()
}
