package fuse

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/filedev"
	"udm/internal/testutil"
	"udm/multipath"
	"udm/uring"
)

// TestRealFSMultipathFaults runs ext4 on a multipath device through a
// loop device over its FUSE file while a workload writes and fsyncs
// files, and the paths fail: one path fails (its device turns into an
// error target) and is reinstated; both fail, I/O queues
// (queue_if_no_path) until they come back; the map is suspended with
// noflush, loaded with a table naming a new path, and resumed. The
// workload sees no error, the kernel logs no I/O error, e2fsck finds
// the filesystem clean after unmount and every file's sha256 matches.
// The longest write+fsync is logged (the stall the faults caused).
func TestRealFSMultipathFaults(t *testing.T) {
	for _, tr := range []Transport{Classic, IOUring} {
		t.Run(tr.String(), func(t *testing.T) { realFS(t, tr) })
	}
}

func realFS(t *testing.T, tr Transport) {
	requireFUSE(t)
	testutil.RequireTool(t, "mkfs.ext4")
	enableURing(t, tr == IOUring)
	var loops []*uring.Loop
	for i := 0; i < 2; i++ {
		l, err := uring.NewLoop(uring.Config{ID: i, SQE128: tr == IOUring})
		if err != nil {
			t.Fatal(err)
		}
		loops = append(loops, l)
		t.Cleanup(func() { l.Close() })
	}
	targets := dm.DefaultTargets()
	if err := multipath.Register(targets); err != nil {
		t.Fatal(err)
	}
	reg := dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Targets: targets, Open: filedev.Opener(loops[0])})
	t.Cleanup(func() { reg.RemoveAll(context.Background()) })
	ctx := context.Background()
	const size = 256 << 20
	backing := testutil.TempFile(t, size)
	sectors := size / 512
	linear := fmt.Sprintf("0 %d linear %s 0", sectors, backing)
	for _, p := range []string{"p0", "p1", "p2"} {
		if _, err := reg.Create(ctx, p, "", linear); err != nil {
			t.Fatal(err)
		}
	}
	mpTable := func(paths ...string) string {
		s := fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 %d 1", sectors, len(paths))
		for _, p := range paths {
			s += " /dev/mapper/" + p + " 1"
		}
		return s
	}
	mp, err := reg.Create(ctx, "mp", "", mpTable("p0", "p1"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	srv, err := Mount(mctx, Config{Dir: dir, Devices: reg, Loops: loops, Transport: tr, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := srv.Close(cctx); err != nil {
			t.Errorf("close: %v", err)
		}
	})

	loop := testutil.LoopDevice(t, filepath.Join(dir, "mp"))
	kmsgBefore := kernelIOErrors(t, loop)
	run(t, "mkfs.ext4", "-q", "-F", loop)
	mnt := t.TempDir()
	run(t, "mount", loop, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	})

	// The workload: files of 64 KiB to 1 MiB, each written and fsynced,
	// until told to stop; their sums go in the manifest.
	w := &fsWorkload{dir: mnt, sums: map[string][32]byte{}}
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- w.run(stop) }()

	progress := func(what string) {
		t.Helper()
		n := w.count()
		eventually(t, what, func() bool { return w.count() >= n+3 })
	}
	setPath := func(p, table string) {
		t.Helper()
		d, err := reg.Get(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Load(table); err != nil {
			t.Fatal(err)
		}
		if err := d.Resume(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pathState := func(p string) string {
		st, err := mp.Status()
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(strings.Join(st, " "))
		for i := range f {
			if f[i] == "/dev/mapper/"+p && i+1 < len(f) {
				return f[i+1]
			}
		}
		return ""
	}
	reinstate := func(p string) {
		t.Helper()
		if _, err := mp.Message(ctx, 0, []string{"reinstate_path", "/dev/mapper/" + p}); err != nil {
			t.Fatal(err)
		}
	}
	errTable := fmt.Sprintf("0 %d error", sectors)

	progress("the workload to start")
	// One path fails and is reinstated.
	setPath("p0", errTable)
	eventually(t, "p0 to fail", func() bool { return pathState("p0") == "F" })
	progress("I/O on p1 alone")
	setPath("p0", linear)
	reinstate("p0")
	progress("I/O after p0 came back")
	// Both fail: I/O queues until they are back.
	setPath("p0", errTable)
	setPath("p1", errTable)
	eventually(t, "both paths to fail", func() bool { return pathState("p0") == "F" && pathState("p1") == "F" })
	setPath("p0", linear)
	setPath("p1", linear)
	reinstate("p0")
	reinstate("p1")
	progress("I/O after both paths came back")
	// A noflush reload that adds a path.
	if err := mp.Suspend(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := mp.Load(mpTable("p0", "p1", "p2")); err != nil {
		t.Fatal(err)
	}
	if err := mp.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	progress("I/O after the noflush reload")
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("workload: %v", err)
	}
	run(t, "umount", mnt)
	mounted = false
	run(t, "e2fsck", "-fn", loop)
	run(t, "mount", "-o", "ro", loop, mnt)
	mounted = true
	for name, sum := range w.sums {
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != sum {
			t.Fatalf("%s: contents differ from the manifest", name)
		}
	}
	run(t, "umount", mnt)
	mounted = false
	if after := kernelIOErrors(t, loop); after > kmsgBefore {
		t.Fatalf("the kernel logged %d I/O errors for %s", after-kmsgBefore, loop)
	}
	if st := srv.Stats(); st.Errors != 0 {
		t.Fatalf("server stats %+v: errors", st)
	}
	t.Logf("%d files, longest write+fsync %v", len(w.sums), w.longest())
}

// kernelIOErrors counts kernel log lines reporting an I/O error on dev
// (or a filesystem error on it).
func kernelIOErrors(t *testing.T, dev string) int {
	out, err := exec.Command("dmesg").Output()
	if err != nil {
		t.Skipf("skipped: dmesg unreadable (%v): the kernel log is part of the verdict", err)
	}
	name := regexp.MustCompile(`\b` + regexp.QuoteMeta(filepath.Base(dev)) + `\b`)
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if name.MatchString(line) && (strings.Contains(line, "I/O error") || strings.Contains(line, "EXT4-fs error") || strings.Contains(line, "Buffer I/O")) {
			n++
		}
	}
	return n
}

type fsWorkload struct {
	dir  string
	mu   sync.Mutex
	sums map[string][32]byte // guarded by mu
	max  time.Duration       // guarded by mu
}

func (w *fsWorkload) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.sums)
}

func (w *fsWorkload) longest() time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.max
}

func (w *fsWorkload) run(stop <-chan struct{}) error {
	for i := 0; ; i++ {
		select {
		case <-stop:
			return nil
		default:
		}
		name := fmt.Sprintf("f%04d", i)
		data := bytes.Repeat([]byte(fmt.Sprintf("%s-%d|", name, i*7919)), (64<<10+(i%16)*(60<<10))/12)
		start := time.Now()
		f, err := os.Create(filepath.Join(w.dir, name))
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			return err
		}
		if err := f.Sync(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		d := time.Since(start)
		w.mu.Lock()
		w.sums[name] = sha256.Sum256(data)
		w.max = max(w.max, d)
		w.mu.Unlock()
	}
}

// eventually polls cond until it holds, failing the test after a minute.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
