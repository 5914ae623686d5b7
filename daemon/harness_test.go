package daemon_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"udm/daemon/api"
	"udm/internal/testutil"
)

// These tests run the real binary: TestMain builds cmd/udm once, each
// test starts `udm serve` as a subprocess with its own state dir, control
// socket and ports (TCP port 0: the daemon reports what it bound), and
// drives it with the CLI as an operator would.

func TestMain(m *testing.M) { testutil.MainWithUDM(m) }

// sockDir returns a short directory for Unix sockets.
func sockDir(t *testing.T) string { return testutil.SockDir(t) }

// udmd is one `udm serve` subprocess.
type udmd struct {
	t        *testing.T
	stateDir string
	sock     string // control socket
	nbdUnix  string
	args     []string
	cmd      *exec.Cmd
	stdout   *testutil.SyncBuffer
	stderr   *testutil.SyncBuffer
	done     chan struct{}
	waitErr  error
	info     api.DaemonInfo
}

// startUDM starts a daemon on stateDir, with NBD on a free loopback port
// and a Unix socket, no metrics, no configuration file and no demo unless
// extra says otherwise.
func startUDM(t *testing.T, stateDir string, extra ...string) *udmd {
	t.Helper()
	u := launchUDM(t, stateDir, extra...)
	u.await()
	return u
}

// startScratch starts a daemon without the demo device (extra: more
// flags), and returns it with a directory on tmpfs for its backing files.
func startScratch(t *testing.T, extra ...string) (*udmd, string) {
	t.Helper()
	u := startUDM(t, t.TempDir(), append([]string{"--no-demo"}, extra...)...)
	return u, shmDir(t)
}

// launchUDM is startUDM without waiting for the daemon to answer.
func launchUDM(t *testing.T, stateDir string, extra ...string) *udmd {
	t.Helper()
	testutil.SkipShort(t, "an end-to-end test of udm serve")
	sd := sockDir(t)
	u := &udmd{t: t, stateDir: stateDir, sock: filepath.Join(sd, "c.sock"), nbdUnix: filepath.Join(sd, "n.sock")}
	u.args = append([]string{"serve", "--state-dir", stateDir, "--control", u.sock, "--nbd", "127.0.0.1:0",
		"--nbd-unix", u.nbdUnix, "--loops", "2", "--log-level", "debug",
		"--config", ""}, extra...) // not the machine's /etc/udm/udm.conf; a test's --config comes later and wins
	u.launch()
	t.Cleanup(func() {
		if u.running() {
			u.cmd.Process.Kill()
			<-u.done
		}
		if strings.Contains(u.stderr.String(), "WARNING: DATA RACE") {
			t.Errorf("the daemon reported a data race")
		}
		if t.Failed() {
			t.Logf("daemon log (%s):\n%s", u.stateDir, u.stderr.String())
		}
	})
	return u
}

func (u *udmd) start() {
	u.t.Helper()
	u.launch()
	u.await()
}

// launch starts the daemon process; await waits until it answers.
func (u *udmd) launch() {
	t := u.t
	t.Helper()
	// Every test that runs udm serve comes through here: -short skips it.
	testutil.SkipShort(t, "an end-to-end test of udm serve")
	u.stdout, u.stderr = &testutil.SyncBuffer{}, &testutil.SyncBuffer{}
	u.run(exec.Command(testutil.UDM(), u.args...))
}

// run starts cmd (the daemon, or a wrapper that becomes it) with the
// daemon's outputs, the environment plus env, and no fallback control
// socket; and reaps it in the background.
func (u *udmd) run(cmd *exec.Cmd, env ...string) {
	u.t.Helper()
	u.cmd = cmd
	u.cmd.Stdout, u.cmd.Stderr = u.stdout, u.stderr
	u.cmd.Env = append(append(os.Environ(), "UDM_SOCKET=/nonexistent/never-used.sock"), env...)
	if err := u.cmd.Start(); err != nil {
		u.t.Fatal(err)
	}
	u.done = make(chan struct{})
	go func() {
		u.waitErr = u.cmd.Wait()
		close(u.done)
	}()
}

func (u *udmd) await() {
	t := u.t
	t.Helper()
	c := api.NewClient(u.sock)
	testutil.Eventually(t, "udm serve to answer on "+u.sock, func() bool {
		select {
		case <-u.done:
			t.Fatalf("udm serve exited (%v) before answering:\n%s%s", u.waitErr, u.stdout, u.stderr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		info, err := c.Daemon(ctx)
		u.info = info
		return err == nil
	})
}

func (u *udmd) running() bool { return !testutil.Closed(u.done) }

// exitCode waits for the daemon to exit and returns its status.
func (u *udmd) exitCode() int {
	u.t.Helper()
	select {
	case <-u.done:
	case <-time.After(testutil.Patience):
		u.t.Fatalf("udm serve did not exit\n%s", u.stderr)
	}
	var ee *exec.ExitError
	if errors.As(u.waitErr, &ee) {
		return ee.ExitCode()
	}
	if u.waitErr != nil {
		u.t.Fatal(u.waitErr)
	}
	return 0
}

// stop sends SIGTERM and expects a clean exit.
func (u *udmd) stop() {
	u.t.Helper()
	u.cmd.Process.Signal(syscall.SIGTERM)
	if code := u.exitCode(); code != 0 {
		u.t.Fatalf("udm serve exited %d after SIGTERM\n%s", code, u.stderr)
	}
}

// kill9 kills the daemon as a crash would.
func (u *udmd) kill9() {
	u.t.Helper()
	u.cmd.Process.Signal(syscall.SIGKILL)
	u.exitCode()
}

// restart starts the daemon again with the same arguments.
func (u *udmd) restart() {
	u.t.Helper()
	if u.running() {
		u.t.Fatal("restart of a running daemon")
	}
	u.start()
}

func (u *udmd) nbdURI(export string) string { return "nbd://" + u.info.NBD + "/" + export }

func (u *udmd) nbdUnixURI(export string) string {
	return "nbd+unix:///" + export + "?socket=" + u.nbdUnix
}

// result is what one CLI run printed.
type result struct {
	out, err string
	code     int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.err)
}

// udm runs the CLI against u (through $UDM_SOCKET).
func (u *udmd) udm(args ...string) result {
	u.t.Helper()
	return runUDM(u.t, []string{"UDM_SOCKET=" + u.sock}, "", args...)
}

// udmIn is udm with standard input.
func (u *udmd) udmIn(stdin string, args ...string) result {
	u.t.Helper()
	return runUDM(u.t, []string{"UDM_SOCKET=" + u.sock}, stdin, args...)
}

// ok runs the CLI and fails the test unless it exits 0 with nothing on
// stderr; it returns stdout.
func (u *udmd) ok(args ...string) string {
	u.t.Helper()
	r := u.udm(args...)
	if r.code != 0 || r.err != "" {
		u.t.Fatalf("udm %s: %s", strings.Join(args, " "), r)
	}
	return r.out
}

// okWant runs the CLI as ok does and fails the test, naming the check
// what, unless stdout is want.
func (u *udmd) okWant(what, want string, args ...string) {
	u.t.Helper()
	if got := u.ok(args...); got != want {
		u.t.Fatalf("%s: udm %s printed\n%s\nwant\n%s", what, strings.Join(args, " "), got, want)
	}
}

func runUDM(t *testing.T, env []string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	cmd := exec.CommandContext(ctx, testutil.UDM(), args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = strings.NewReader(stdin)
	err := cmd.Run()
	r := result{out: out.String(), err: errb.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("udm %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// backing makes a sparse file of size bytes for a test (on tmpfs, which
// takes O_DIRECT) and returns its path.
func backing(t *testing.T, dir, name string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// shmDir is a directory on tmpfs (O_DIRECT works there) removed after the
// test; the test's temp dir if there is no /dev/shm.
func shmDir(t *testing.T) string {
	t.Helper()
	base := "/dev/shm"
	if st, err := os.Stat(base); err != nil || !st.IsDir() {
		return t.TempDir()
	}
	d, err := os.MkdirTemp(base, "udm-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// safety and eventually are the shared test helpers under the names the
// CLI tests use.
const safety = testutil.Patience

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	testutil.Eventually(t, what, cond)
}
