package perf

import (
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"udm/internal/testutil"
)

func startFloor(t *testing.T, size int64) (uri, file string) {
	t.Helper()
	file = testutil.TempFile(t, size)
	sock := filepath.Join(t.TempDir(), "floor.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go ServeFloor(ln, file)
	return "nbd+unix:///?socket=" + sock, file
}

// The floor server serves a verified mixed workload over two connections
// (each busy-polls a CPU: kept small).
func TestFloorServerVerify(t *testing.T) {
	uri, _ := startFloor(t, 16<<20)
	verifyThroughNBD(t, uri, 16<<20, Config{RW: "randrw", ReadPct: 50, Depth: 8, Loops: 2, TotalBytes: 4 << 20, Verify: true, Seed: 3})
}

// fio's nbd engine, the client make bench uses, writes and verifies
// through it.
func TestFloorServerFio(t *testing.T) {
	fio := testutil.RequireTool(t, "fio")
	uri, _ := startFloor(t, 8<<20)
	out, err := exec.Command(fio, "--name=floor", "--ioengine=nbd", "--uri="+uri, "--rw=randwrite", "--bs=4k",
		"--iodepth=4", "--size=8m", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "err= 0") {
		t.Fatalf("fio: %v\n%s", err, out)
	}
}
