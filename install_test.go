package udm_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"udm/internal/testutil"
)

// TestMakeInstall runs make install PREFIX=/usr DESTDIR=tmp: the binary,
// both units and the example configuration land under DESTDIR, udm.service runs the installed
// binary (by its path without DESTDIR), the binary runs, and
// systemd-analyze verify finds nothing wrong with the units.
func TestMakeInstall(t *testing.T) {
	testutil.SkipShort(t, "make install builds udm")
	testutil.RequireTool(t, "make")
	dest := t.TempDir()
	cmd := exec.Command("make", "-s", "install", "PREFIX=/usr", "DESTDIR="+dest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	bin := filepath.Join(dest, "usr/bin/udm")
	units := filepath.Join(dest, "usr/lib/systemd/system")
	for _, f := range []string{bin, filepath.Join(units, "udm.service"), filepath.Join(units, "udm.socket"),
		filepath.Join(dest, "etc/udm/udm.conf.example")} {
		if _, err := os.Stat(f); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(bin, "version").CombinedOutput(); err != nil {
		t.Fatalf("installed udm version: %v\n%s", err, out)
	}
	svc, err := os.ReadFile(filepath.Join(units, "udm.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(svc), "\nExecStart=/usr/bin/udm serve ") || strings.Contains(string(svc), "@") {
		t.Fatalf("udm.service does not run /usr/bin/udm serve:\n%s", svc)
	}
	// systemd-analyze checks that ExecStart's binary exists: point it
	// at the installed one.
	check := t.TempDir()
	os.WriteFile(filepath.Join(check, "udm.service"), []byte(strings.ReplaceAll(string(svc), "/usr/bin/udm", bin)), 0o644)
	sock, _ := os.ReadFile(filepath.Join(units, "udm.socket"))
	os.WriteFile(filepath.Join(check, "udm.socket"), sock, 0o644)
	analyze := testutil.RequireTool(t, "systemd-analyze")
	out, err := exec.Command(analyze, "verify", filepath.Join(check, "udm.socket"), filepath.Join(check, "udm.service")).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}
