package daemon_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"udm/internal/testutil"
)

// TestServeFUSE: `udm serve --fuse DIR` shows each device as a file of
// its size that comes and goes with the device, a loop device over one
// works, and shutdown unmounts DIR.
func TestServeFUSE(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("skipped: no /dev/fuse (FUSE module not loaded)")
	}
	state := t.TempDir()
	dir := filepath.Join(t.TempDir(), "devs")
	u := startUDM(t, state, "--fuse", dir)
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) }) // only if the test failed before stop
	a := backing(t, shmDir(t), "a.img", 8<<20)
	u.ok("create", "lin", "--table", "0 16384 linear "+a+" 0")
	st, err := os.Stat(filepath.Join(dir, "lin"))
	if err != nil || st.Size() != 8<<20 {
		t.Fatalf("lin: %v %v", st, err)
	}
	loop, detach := testutil.AttachLoop(t, filepath.Join(dir, "lin"))
	if out, err := exec.Command("dd", "if=/dev/urandom", "of="+loop, "bs=64k", "count=16", "oflag=direct").CombinedOutput(); err != nil {
		t.Fatalf("dd to %s: %v\n%s", loop, err, out)
	}
	// The device is open while the loop device holds its file.
	if r := u.udm("remove", "lin"); r.err == "" {
		t.Fatalf("remove of a device a loop device uses: %q, want it refused", r.out)
	}
	if err := detach(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the loop device to let go of the file", func() bool {
		return u.udm("remove", "lin").err == ""
	})
	if _, err := os.Stat(filepath.Join(dir, "lin")); !os.IsNotExist(err) {
		t.Fatalf("lin after remove: %v", err)
	}
	u.stop()
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(mounts), " "+dir+" ") {
		t.Fatalf("%s still mounted after shutdown", dir)
	}
}
