package perf

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"udm/internal/testutil"
)

// FsContender runs fio, and a tar extract and sync, on a fresh ext4 on an
// NBD export (nbdfuse and a loop device) and reports the server's CPU per
// I/O; it leaves no mount,
// loop device or nbdfuse behind.
func TestFsContenderOnNbdkit(t *testing.T) {
	testutil.SkipShort(t, "mkfs and fio through FUSE take seconds")
	testutil.RequireRoot(t)
	for _, tool := range []string{"nbdkit", "nbdfuse", "mkfs.ext4", "fio", "losetup"} {
		testutil.RequireTool(t, tool)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "nbd.sock")
	srv, err := StartServer("nbdkit", dir, []string{"nbdkit", "-f", "-U", sock, "memory", "512M"}, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	c := FsContender(CNbdkitExt4, "nbd+unix:///?socket="+sock, dir, srv)
	if !c.runs(ext4Workload()) || !c.runs(tarWorkload()) || c.runs(FullWorkloads[0]) {
		t.Fatalf("the ext4 contender must run the ext4 workloads only")
	}
	w := ext4Workload()
	w.Depth = 4
	res, err := c.Run(context.Background(), w, time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops == 0 || res.Writes != res.Ops || res.ServerCPUPerIO <= 0 {
		t.Fatalf("result %+v: want writes only, and the server's CPU per I/O", res)
	}
	tr, err := c.Run(context.Background(), tarWorkload(), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Ops != srcFiles || tr.MBps <= 0 || tr.ServerCPUPerIO <= 0 {
		t.Fatalf("tar result %+v: want %d files and the server's CPU per file", tr, srcFiles)
	}
	if out, _ := runCmd(context.Background(), "losetup", "-a"); strings.Contains(string(out), dir) {
		t.Fatalf("loop devices left: %s", out)
	}
	if mounts, _ := os.ReadFile("/proc/self/mounts"); strings.Contains(string(mounts), dir) {
		t.Fatalf("mounts left under %s:\n%s", dir, mounts)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "ext4-*")); len(m) != 0 {
		t.Fatalf("mount points left: %v", m)
	}
}
