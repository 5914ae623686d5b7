package drill

import (
	"bytes"
	"context"
	"os"
	"testing"

	"udm/fuse"
)

// TestRealFS runs the real-filesystem drill's short form on both FUSE
// transports (enable_uring flipped for each, put back after).
func TestRealFS(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: needs root (FUSE mount, loop device, mkfs)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("skipped: no /dev/fuse (FUSE module not loaded)")
	}
	const param = "/sys/module/fuse/parameters/enable_uring"
	old, perr := os.ReadFile(param)
	for _, tr := range []fuse.Transport{fuse.Classic, fuse.IOUring} {
		t.Run(tr.String(), func(t *testing.T) {
			if tr == fuse.IOUring {
				if perr != nil {
					t.Skip("skipped: this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING)")
				}
				if err := os.WriteFile(param, []byte("Y"), 0); err != nil {
					t.Fatal(err)
				}
				defer os.WriteFile(param, bytes.TrimSpace(old), 0)
			}
			var log bytes.Buffer
			rep, err := RealFS(context.Background(), RealFSOptions{Transport: tr, Log: &log})
			if err != nil {
				t.Fatalf("%v\n%s", err, log.String())
			}
			var sum bytes.Buffer
			rep.Summary(&sum)
			t.Log(sum.String())
			if !rep.Pass {
				t.Fatalf("drill failed: %s\n%s", rep.Reason, log.String())
			}
			if rep.Transport != tr.String() || rep.Extracts == 0 || rep.Files == 0 || len(rep.Phases) != 7 {
				t.Fatalf("report %+v", rep)
			}
		})
	}
}
