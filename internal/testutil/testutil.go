// Package testutil holds helpers shared by udm's tests: scratch files on
// tmpfs, loop devices, and skips that say why.
//
// Lock order: there is none to keep. SyncBuffer's mutex is the only lock,
// held only to copy bytes in or out.
package testutil

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ShmDir is where scratch backing files go: tmpfs accepts O_DIRECT and
// costs no disk.
const ShmDir = "/dev/shm"

// TempFile creates a sparse file of size bytes on tmpfs (falling back to
// the test's temp dir) and removes it when the test ends.
func TempFile(t testing.TB, size int64) string {
	t.Helper()
	dir := ShmDir
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = t.TempDir()
	}
	f, err := os.CreateTemp(dir, "udm-test-*.img")
	if err != nil {
		t.Fatalf("testutil: create temp file: %v", err)
	}
	name := f.Name()
	t.Cleanup(func() { os.Remove(name) })
	if err := f.Truncate(size); err != nil {
		t.Fatalf("testutil: truncate %s: %v", name, err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return name
}

// ReadFileAt reads n bytes of file at off: what reached a backing file,
// read past the device under test.
func ReadFileAt(t testing.TB, file string, off int64, n int) []byte {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	return b
}

// RequireRoot skips the test unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (run the tests as root, as CI does)")
	}
}

// LoopDevice attaches file to a free loop device with direct I/O on and
// detaches it when the test ends. It skips the test (saying why) when
// there is no root or no loop device support.
func LoopDevice(t testing.TB, file string) string {
	t.Helper()
	dev, _ := AttachLoop(t, file)
	return dev
}

// AttachLoop is LoopDevice for a test that detaches the loop device
// itself: detach runs losetup -d and says how it failed; the end of the
// test detaches the device only if detach has not.
func AttachLoop(t testing.TB, file string) (dev string, detach func() error) {
	t.Helper()
	RequireRoot(t)
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skip("skipped: no /dev/loop-control on this machine (loop devices unavailable)")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("skipped: losetup not installed (util-linux)")
	}
	out, err := exec.Command("losetup", "--direct-io=on", "--find", "--show", file).CombinedOutput()
	if err != nil {
		t.Fatalf("testutil: losetup %s: %v: %s", file, err, out)
	}
	dev = strings.TrimSpace(string(out))
	detached := false
	detach = func() error {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			return fmt.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
		detached = true
		return nil
	}
	t.Cleanup(func() {
		if detached {
			return
		}
		if err := detach(); err != nil {
			t.Errorf("testutil: %v", err)
		}
	})
	return dev, detach
}

// RequireTool skips the test when a command isn't installed, naming the
// Debian package that has it (`make deps` installs them).
func RequireTool(t testing.TB, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		pkg := map[string]string{
			"fio": "fio", "qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "qemu-nbd": "qemu-utils",
			"nbdkit": "nbdkit", "nbdinfo": "libnbd-bin", "nbdcopy": "libnbd-bin", "nbd-server": "nbd-server",
			"promtool": "prometheus", "systemd-analyze": "systemd",
		}[tool]
		t.Skipf("skipped: %s not installed (apt-get install %s, or make deps)", tool, pkg)
	}
	return p
}

// SkipShort skips the test under go test -short, saying what it is (the
// short run, for the edit-test loop, leaves out the drills and the tests
// that start a daemon; make test runs everything).
func SkipShort(t testing.TB, what string) {
	t.Helper()
	if testing.Short() {
		t.Skipf("skipped under -short: %s (make test runs it)", what)
	}
}

// ModuleRoot returns the repository root (where go.mod is).
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("testutil: go.mod not found")
		}
		dir = parent
	}
}

// udmBin is the udm binary MainWithUDM built.
var udmBin string

// UDM returns the path of the udm binary MainWithUDM built ("" under
// -short, where it builds none).
func UDM() string { return udmBin }

// MainWithUDM is a TestMain that builds cmd/udm once into a temporary
// directory (with -race when the tests run under it: so should the daemon
// they start), for UDM to return; runs the tests and removes the build.
// Under -short it builds nothing (the tests that run udm skip there, with
// SkipShort).
func MainWithUDM(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "udm-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	udmBin = filepath.Join(dir, "udm")
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	args := []string{"build", "-o", udmBin}
	if Race {
		args = append(args, "-race")
	}
	if out, err := exec.Command(goBin, append(args, "udm/cmd/udm")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building udm: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
