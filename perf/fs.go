package perf

import (
	"archive/tar"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// Ext4Workload is the real-stack row: a filesystem on the export, as a
// host would use it, 4 KiB random writes at depth 16 through the page
// cache's direct path (fio libaio, O_DIRECT, on a file in the
// filesystem).
var Ext4Workload = Workload{Name: "ext4-randwrite-4k-qd16", RW: "randwrite", BS: 4096, Depth: 16}

// TarWorkload is the other real-stack row: a source tree's tarball
// extracted into the fresh filesystem and synced (tar -xf, then sync -f),
// timed from the start of tar to the end of sync. Its IOPS are files
// extracted per second, its MB/s the tarball's bytes per second, its
// CPU per I/O the server's CPU per file.
var TarWorkload = Workload{Name: "ext4-tar-sync", RW: "tar"}

// ext4FileSize is the size of fio's file in the filesystem.
const ext4FileSize = 256 << 20

// FsContender measures ext4 on the NBD export uri: the export through
// nbdfuse (a FUSE file: the kernel here has no NBD client), a loop device
// over that file, a fresh ext4 on it for every run, and fio on a file in
// the filesystem. srv (optional) is the server, for its CPU per I/O. It
// needs root, FUSE and loop devices.
func FsContender(name, uri, dir string, srv *BgServer) Contender {
	return Contender{Name: name, Workloads: []string{Ext4Workload.Name, TarWorkload.Name}, Run: func(ctx context.Context, w Workload, runtime, ramp time.Duration) (*Result, error) {
		disk, unmount, err := NBDFuse(uri, dir)
		if err != nil {
			return nil, err
		}
		defer unmount()
		fsDir, err := os.MkdirTemp(dir, "ext4-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(fsDir)
		dev, detach, err := LoopAttach(disk)
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
		if w.RW == TarWorkload.RW {
			res, err := extractAndSync(ctx, dir, fsDir)
			if err != nil {
				return nil, err
			}
			if srv != nil {
				if after, err := srv.CPU(); err == nil {
					res.ServerCPUPerIO = float64(after-before) / 1e3 / float64(res.Ops)
				}
			}
			return res, nil
		}
		return fioServerCPU(ctx, srv, before, FioJob{Name: name, IOEngine: "libaio", Filename: filepath.Join(fsDir, "fio"), RW: w.RW,
			BlockSize: w.BS, Depth: w.Depth, ReadPct: w.ReadPct, Size: ext4FileSize, Runtime: runtime, Ramp: ramp})
	}}
}

// fioServerCPU runs job and gives the result the server's CPU per I/O
// (srv optional; before is its CPU time when the run began), counting
// only the share of the CPU used that falls in the measured runtime.
func fioServerCPU(ctx context.Context, srv *BgServer, before time.Duration, job FioJob) (*Result, error) {
	res, err := RunFio(ctx, job)
	if err != nil {
		return nil, err
	}
	if srv != nil && res.Ops > 0 {
		if after, err := srv.CPU(); err == nil {
			cpu := float64(after-before) * job.Runtime.Seconds() / (job.Runtime + job.Ramp).Seconds()
			res.ServerCPUPerIO = cpu / 1e3 / float64(res.Ops)
		}
	}
	return res, nil
}

// extractAndSync extracts the source tarball (made in dir on first use)
// into fsDir and syncs the filesystem.
func extractAndSync(ctx context.Context, dir, fsDir string) (*Result, error) {
	tarball, files, size, err := sourceTarball(dir)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if _, err := runCmd(ctx, "tar", "-xf", tarball, "-C", fsDir); err != nil {
		return nil, err
	}
	if _, err := runCmd(ctx, "sync", "-f", fsDir); err != nil {
		return nil, err
	}
	el := time.Since(start).Seconds()
	return &Result{Engine: "tar", RW: TarWorkload.RW, Seconds: el, Ops: int64(files), Writes: int64(files),
		IOPS: float64(files) / el, MBps: float64(size) / el / 1e6}, nil
}

// The source tree: srcFiles files in srcDirs directories, sized as a
// source tree's are (log-uniform from 256 B to 64 KiB, a median of about
// 4 KiB; 36 MB in all), of text-like bytes, the same on every run (a fixed seed).
const (
	srcFiles = 3000
	srcDirs  = 120
)

var tarballs sync.Map // dir → *tarball

type tarball struct {
	once        sync.Once
	path        string
	files, size int
	err         error
}

// sourceTarball writes the source tree's tarball into dir once and
// returns its path, its number of files and its bytes of content.
func sourceTarball(dir string) (string, int, int, error) {
	v, _ := tarballs.LoadOrStore(dir, &tarball{path: filepath.Join(dir, "source-tree.tar")})
	tb := v.(*tarball)
	tb.once.Do(func() { tb.files, tb.size, tb.err = writeSourceTarball(tb.path) })
	return tb.path, tb.files, tb.size, tb.err
}

func writeSourceTarball(path string) (files, size int, err error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	rng := rand.New(rand.NewPCG(2026, 12))
	const alphabet = "abcdefghijklmnopqrstuvwxyz  \n\t{}();=.,0123456789"
	buf := make([]byte, 64<<10)
	for d := 0; d < srcDirs; d++ {
		name := fmt.Sprintf("src/pkg%02d/sub%03d/", d%12, d)
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: time.Unix(1.7e9, 0)}); err != nil {
			return 0, 0, err
		}
		for i := 0; i < srcFiles/srcDirs; i++ {
			n := int(256 * float64(uint(1)<<rng.IntN(8)) * (1 + rng.Float64()))
			for j := range buf[:n] {
				buf[j] = alphabet[rng.IntN(len(alphabet))]
			}
			h := &tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sfile%03d.go", name, i), Mode: 0o644, Size: int64(n), ModTime: time.Unix(1.7e9, 0)}
			if err := tw.WriteHeader(h); err != nil {
				return 0, 0, err
			}
			if _, err := tw.Write(buf[:n]); err != nil {
				return 0, 0, err
			}
			files++
			size += n
		}
	}
	if err := tw.Close(); err != nil {
		return 0, 0, err
	}
	return files, size, f.Close()
}

// NBDFuse mounts the NBD export uri as a file through nbdfuse (the
// kernel here has no NBD client) in a fresh directory under dir, and
// returns the file and what unmounts it.
func NBDFuse(uri, dir string) (file string, unmount func(), err error) {
	mnt, err := os.MkdirTemp(dir, "nbdfuse-")
	if err != nil {
		return "", nil, err
	}
	pidFile := mnt + ".pid"
	fuse := exec.Command("nbdfuse", "-P", pidFile, mnt+"/disk", uri)
	if err := fuse.Start(); err != nil {
		os.RemoveAll(mnt)
		return "", nil, fmt.Errorf("perf: nbdfuse: %w", err)
	}
	unmount = func() {
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
		os.Remove(pidFile)
		os.RemoveAll(mnt)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(pidFile); err == nil {
			return mnt + "/disk", unmount, nil
		}
		if time.Now().After(deadline) {
			unmount()
			return "", nil, fmt.Errorf("perf: nbdfuse on %s not ready", uri)
		}
	}
}

// LoopWorkloads are the workloads of the loop-device rows (a kernel
// block device over a file of a FUSE mount).
var LoopWorkloads = []string{"randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd1", "randwrite-4k-qd32"}

// LoopFileContender measures fio (io_uring, O_DIRECT) on a loop device
// (direct I/O) over the file open returns, attached for every run and
// detached after it; open's teardown runs after the detach. srv
// (optional) is the server, for its CPU per I/O.
func LoopFileContender(name string, open func() (file string, close func(), err error), srv *BgServer) Contender {
	return Contender{Name: name, Workloads: LoopWorkloads, Run: func(ctx context.Context, w Workload, runtime, ramp time.Duration) (*Result, error) {
		file, closeFile, err := open()
		if err != nil {
			return nil, err
		}
		defer closeFile()
		dev, detach, err := LoopAttach(file)
		if err != nil {
			return nil, fmt.Errorf("perf: loop device on %s: %w", file, err)
		}
		defer detach()
		var before time.Duration
		if srv != nil {
			if before, err = srv.CPU(); err != nil {
				return nil, err
			}
		}
		return fioServerCPU(ctx, srv, before, FioJob{Name: name, Filename: dev, RW: w.RW, BlockSize: w.BS, Depth: w.Depth,
			ReadPct: w.ReadPct, Runtime: runtime, Ramp: ramp})
	}}
}
