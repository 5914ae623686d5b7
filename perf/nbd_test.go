package perf

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"udm/internal/testutil"
)

// startNbdkitUnix serves a scratch file with nbdkit on a unix socket and
// returns its URI.
func startNbdkitUnix(t *testing.T, size int64) string {
	t.Helper()
	bin := testutil.RequireTool(t, "nbdkit")
	dir := testutil.SockDir(t)
	sock, pid := filepath.Join(dir, "s.sock"), filepath.Join(dir, "pid")
	cmd := exec.Command(bin, "--exit-with-parent", "-f", "-U", sock, "-P", pid, "file", testutil.TempFile(t, size))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	testutil.Eventually(t, "nbdkit to write its pid file (it serves then)", func() bool {
		b, err := os.ReadFile(pid)
		return err == nil && len(b) > 0
	})
	return "nbd+unix:///?socket=" + sock
}

// The NBD engine runs a verified mixed workload through udm's client on
// two loops over two connections.
func TestNBDEngineVerify(t *testing.T) {
	verifyThroughNBD(t, startNbdkitUnix(t, 16<<20), 16<<20,
		Config{RW: "randrw", ReadPct: 50, Depth: 16, Loops: 2, TotalBytes: 16 << 20, Verify: true, Seed: 7})
}

// verifyThroughNBD runs cfg (a verified mix) on an NBD engine with two
// connections to uri, an export of size bytes, and wants it clean.
func verifyThroughNBD(t *testing.T, uri string, size int64, cfg Config) {
	t.Helper()
	eng, err := NewNBDEngine(uri, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	if eng.Size() != size {
		t.Fatalf("size %d", eng.Size())
	}
	res, err := Run(context.Background(), cfg, eng)
	if err != nil {
		t.Fatal(err)
	}
	if res.Errors != 0 || len(res.VerifyFailures) != 0 || res.Ops < 1000 || res.Reads == 0 || res.Writes == 0 || res.VerifiedBytes == 0 {
		t.Fatalf("result %+v (failures %v)", res, res.VerifyFailures)
	}
}
