package perf

import (
	"context"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"udm/internal/refserver"
	"udm/internal/testutil"
)

// The NBD engine runs a verified mixed workload through udm's client on
// two loops over two connections.
func TestNBDEngineVerify(t *testing.T) {
	verifyThroughNBD(t, refserver.Nbdkit(t, true, "file", testutil.TempFile(t, 16<<20)).URI, 16<<20,
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
