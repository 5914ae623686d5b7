package conformance

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"

	"udm/daemon"
	"udm/internal/refserver"
	"udm/internal/testutil"
)

// TestMultipathMapMatchesLinear: base:allocation on the demo device (a
// multipath map over two names of one sparse file) reports the file's
// holes as a linear export of the same file does, and as nbdkit serving
// the file does.
func TestMultipathMapMatchesLinear(t *testing.T) {
	testutil.SkipShort(t, "runs udm serve and nbdkit")
	testutil.RequireTool(t, "nbdinfo")
	testutil.RequireTool(t, "nbdkit")
	py := python(t)
	dir := t.TempDir()
	u := startUDMDemo(t, filepath.Join(dir, "udm"), true)
	demoURI := "nbd://" + u.nbd + "/" + daemon.DemoName
	// Data in a few places of the 1 GiB file, holes elsewhere.
	script := `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for off, n in [(0, 1 << 20), (100 << 20, 4 << 20), (513 << 20, 64 << 10), ((1 << 30) - (1 << 20), 1 << 20)]:
    h.pwrite(b"\x5a" * n, off)
h.flush()
h.shutdown()
`
	if out, err := exec.Command(py, "-I", "-c", script, demoURI).CombinedOutput(); err != nil {
		t.Fatalf("writing through the demo: %v\n%s", err, out)
	}
	file := filepath.Join(dir, "udm", "state", "demo-path0.img")
	u.create(t, "lin", fmt.Sprintf("0 %d linear %s 0", daemon.DemoSize>>9, file), false)
	kit := refserver.Nbdkit(t, false, "-r", "file", file)

	maps := map[string]string{}
	for name, uri := range map[string]string{"multipath": demoURI, "linear": "nbd://" + u.nbd + "/lin",
		"nbdkit": kit.URI} {
		out, err := exec.Command("nbdinfo", "--map", uri).CombinedOutput()
		if err != nil {
			t.Fatalf("nbdinfo --map %s: %v\n%s", uri, err, out)
		}
		maps[name] = string(out)
	}
	if maps["multipath"] != maps["linear"] || maps["linear"] != maps["nbdkit"] {
		t.Errorf("nbdinfo --map differs:\nmultipath:\n%s\nlinear:\n%s\nnbdkit:\n%s", maps["multipath"], maps["linear"], maps["nbdkit"])
	}
	t.Logf("nbdinfo --map:\n%s", maps["linear"])
}
