package perf

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Ext4Workload is the real-stack row: a filesystem on the export, as a
// host would use it, 4 KiB random writes at depth 16 through the page
// cache's direct path (fio libaio, O_DIRECT, on a file in the
// filesystem).
var Ext4Workload = Workload{Name: "ext4-randwrite-4k-qd16", RW: "randwrite", BS: 4096, Depth: 16}

// ext4FileSize is the size of fio's file in the filesystem.
const ext4FileSize = 256 << 20

// FsContender measures ext4 on the NBD export uri: the export through
// nbdfuse (a FUSE file: the kernel here has no NBD client), a loop device
// over that file, a fresh ext4 on it for every run, and fio on a file in
// the filesystem. srv (optional) is the server, for its CPU per I/O. It
// needs root, FUSE and loop devices.
func FsContender(name, uri, dir string, srv *BgServer) Contender {
	return Contender{Name: name, Workloads: []string{Ext4Workload.Name}, Run: func(ctx context.Context, w Workload, runtime, ramp time.Duration) (*Result, error) {
		mnt, err := os.MkdirTemp(dir, "nbdfuse-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(mnt)
		fsDir, err := os.MkdirTemp(dir, "ext4-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(fsDir)
		pidFile := mnt + ".pid"
		defer os.Remove(pidFile)
		fuse := exec.Command("nbdfuse", "-P", pidFile, mnt+"/disk", uri)
		if err := fuse.Start(); err != nil {
			return nil, fmt.Errorf("perf: nbdfuse: %w", err)
		}
		defer func() {
			// The loop device's detach may still hold the FUSE file, so a
			// plain unmount can fail busy; a lazy one after nbdfuse is gone
			// always detaches the mount (otherwise a dead FUSE mount is left,
			// "transport endpoint is not connected").
			plain := exec.Command("umount", mnt).Run()
			fuse.Process.Kill()
			fuse.Wait()
			if plain != nil {
				exec.Command("umount", "-l", mnt).Run()
			}
		}()
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, err := os.Stat(pidFile); err == nil {
				break
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("perf: nbdfuse on %s not ready", uri)
			}
		}
		dev, detach, err := LoopAttach(mnt + "/disk")
		if err != nil {
			return nil, fmt.Errorf("perf: loop device on nbdfuse: %w", err)
		}
		defer detach()
		if _, err := runCmd(ctx, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev); err != nil {
			return nil, err
		}
		if _, err := runCmd(ctx, "mount", dev, fsDir); err != nil {
			return nil, err
		}
		defer exec.Command("umount", fsDir).Run()
		var before time.Duration
		if srv != nil {
			if before, err = srv.CPU(); err != nil {
				return nil, err
			}
		}
		res, err := RunFio(ctx, FioJob{Name: name, IOEngine: "libaio", Filename: filepath.Join(fsDir, "fio"), RW: w.RW,
			BlockSize: w.BS, Depth: w.Depth, ReadPct: w.ReadPct, Size: ext4FileSize, Runtime: runtime, Ramp: ramp})
		if err != nil {
			return nil, err
		}
		if srv != nil && res.Ops > 0 {
			if after, err := srv.CPU(); err == nil {
				cpu := float64(after-before) * runtime.Seconds() / (runtime + ramp).Seconds()
				res.ServerCPUPerIO = cpu / 1e3 / float64(res.Ops)
			}
		}
		return res, nil
	}}
}
