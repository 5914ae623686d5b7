package fuse

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"udm/dm"
	"udm/dm/filedev"
	"udm/internal/testutil"
	"udm/uring"
)

// env is a registry of devices over tmpfs files, loops, and a FUSE mount
// of the registry.
type env struct {
	t     *testing.T
	loops []*uring.Loop
	reg   *dm.Registry
	srv   *Server
	dir   string
}

func requireFUSE(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("skipped: no /dev/fuse (FUSE module not loaded)")
	}
}

// enableURing sets the fuse module's enable_uring for the test and puts
// the old value back after.
func enableURing(t *testing.T, on bool) {
	t.Helper()
	const p = "/sys/module/fuse/parameters/enable_uring"
	old, err := os.ReadFile(p)
	if err != nil {
		if on {
			t.Skip("skipped: this kernel has no FUSE over io_uring (CONFIG_FUSE_IO_URING)")
		}
		return
	}
	v := "N"
	if on {
		v = "Y"
	}
	if err := os.WriteFile(p, []byte(v), 0); err != nil {
		t.Fatalf("set enable_uring: %v", err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(p, bytes.TrimSpace(old), 0); err != nil {
			t.Errorf("restore enable_uring: %v", err)
		}
	})
}

func newEnv(t *testing.T, tr Transport) *env {
	t.Helper()
	return newEnvWith(t, tr, nil)
}

// newEnvWith is newEnv with cfg changing the server's Config.
func newEnvWith(t *testing.T, tr Transport, cfg func(*Config)) *env {
	t.Helper()
	requireFUSE(t)
	if tr != Auto {
		enableURing(t, tr == IOUring)
	}
	e := &env{t: t}
	for i := 0; i < 2; i++ {
		l, err := uring.NewLoop(uring.Config{ID: i, SQE128: tr != Classic})
		if err != nil {
			t.Fatal(err)
		}
		e.loops = append(e.loops, l)
		t.Cleanup(func() { l.Close() })
	}
	e.reg = dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Open: filedev.Opener(e.loops[0])})
	t.Cleanup(func() { e.reg.RemoveAll(context.Background()) })
	e.dir = t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := Config{Dir: e.dir, Devices: e.reg, Loops: e.loops, Transport: tr, Log: zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)}
	if cfg != nil {
		cfg(&c)
	}
	srv, err := Mount(ctx, c)
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	e.srv = srv
	t.Cleanup(func() { e.close() })
	return e
}

func (e *env) close() {
	if e.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.srv.Close(ctx); err != nil {
		e.t.Errorf("close: %v", err)
	}
	e.srv = nil
}

// create makes a linear device over a new tmpfs file of size bytes.
func (e *env) create(name string, size int64) string {
	e.t.Helper()
	f := testutil.TempFile(e.t, size)
	table := "0 " + strconv.FormatInt(size/512, 10) + " linear " + f + " 0"
	if _, err := e.reg.Create(context.Background(), name, "", table); err != nil {
		e.t.Fatal(err)
	}
	return f
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	return runIn(t, "", name, args...)
}

// runIn runs a command in dir (where tools such as fio leave files).
func runIn(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestFilesFollowDevices(t *testing.T) {
	e := newEnv(t, Classic)
	e.create("alpha", 8<<20)
	st, err := os.Stat(filepath.Join(e.dir, "alpha"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 8<<20 || !st.Mode().IsRegular() {
		t.Fatalf("alpha: size %d mode %v", st.Size(), st.Mode())
	}
	e.create("beta", 4<<20)
	ents, err := os.ReadDir(e.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range ents {
		names = append(names, d.Name())
	}
	if strings.Join(names, ",") != "alpha,beta" {
		t.Fatalf("readdir: %v", names)
	}
	if err := e.reg.Remove(context.Background(), "beta", false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "beta")); !os.IsNotExist(err) {
		t.Fatalf("beta after remove: %v", err)
	}
	// A read-only device is a read-only file.
	e.create("ro", 1<<20)
	rodev, err := e.reg.Get("ro")
	if err != nil {
		t.Fatal(err)
	}
	rodev.SetReadOnly(true)
	if st, err := os.Stat(filepath.Join(e.dir, "ro")); err != nil || st.Mode().Perm() != 0o444 {
		t.Fatalf("ro: %v %v", st.Mode(), err)
	}
	if _, err := os.OpenFile(filepath.Join(e.dir, "ro"), os.O_RDWR, 0); !errors.Is(err, unix.EROFS) {
		t.Fatalf("open ro for writing: %v, want EROFS", err)
	}
	// Data written through the file is on the device, and reads back.
	f, err := os.OpenFile(filepath.Join(e.dir, "alpha"), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := alignedBuf(64 << 10)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	if _, err := f.WriteAt(buf, 1<<20); err != nil {
		t.Fatal(err)
	}
	got := alignedBuf(64 << 10)
	if _, err := f.ReadAt(got, 1<<20); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, buf) {
		t.Fatal("read back differs")
	}
	// An unaligned read gets the bytes asked for.
	small := make([]byte, 100)
	g, err := os.Open(filepath.Join(e.dir, "alpha"))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if _, err := g.ReadAt(small, 1<<20+3); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(small, buf[3:103]) {
		t.Fatal("unaligned read differs")
	}
}

func alignedBuf(n int) []byte {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		panic(err)
	}
	return b
}

// ext4 checks a filesystem on a loop device over the device's file:
// mkfs, mount, files written and synced, unmount, fsck clean, and the
// files' contents back after a remount.
func ext4(t *testing.T, e *env, during func(stop <-chan struct{})) {
	testutil.RequireTool(t, "mkfs.ext4")
	e.create("demo", 256<<20)
	loop := testutil.LoopDevice(t, filepath.Join(e.dir, "demo"))
	if dio, err := os.ReadFile("/sys/block/" + filepath.Base(loop) + "/loop/dio"); err != nil || strings.TrimSpace(string(dio)) != "1" {
		t.Fatalf("%s: direct I/O not on (%q, %v)", loop, dio, err)
	}
	run(t, "mkfs.ext4", "-q", "-F", loop)
	mnt := t.TempDir()
	run(t, "mount", loop, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	})
	stop := make(chan struct{})
	bgDone := make(chan struct{})
	if during != nil {
		go func() { defer close(bgDone); during(stop) }()
	} else {
		close(bgDone)
	}
	want := map[string][]byte{}
	for i := 0; i < 20; i++ {
		name := filepath.Join(mnt, "f"+strconv.Itoa(i))
		data := bytes.Repeat([]byte{byte(i), byte(i * 3), 0x5a}, 100000+i*4099)
		writeSync(t, name, data)
		want[name] = data
	}
	run(t, "sync", "-f", mnt)
	close(stop)
	<-bgDone
	run(t, "umount", mnt)
	mounted = false
	run(t, "e2fsck", "-fn", loop)
	// Right after the unmount, on a busy machine, something may still hold
	// the loop device for a moment (udev probing it after the change):
	// mount says "already mounted or mount point busy". Wait for it to be
	// free rather than fail.
	var mountOut []byte
	testutil.Eventually(t, "the read-only remount of "+loop, func() bool {
		var err error
		mountOut, err = exec.Command("mount", "-o", "ro", loop, mnt).CombinedOutput()
		if err != nil && !bytes.Contains(mountOut, []byte("busy")) {
			t.Fatalf("mount -o ro %s: %v\n%s", loop, err, mountOut)
		}
		return err == nil
	})
	mounted = true
	for name, data := range want {
		got, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s differs after remount", name)
		}
	}
	run(t, "umount", mnt)
	mounted = false
}

func TestExt4Classic(t *testing.T) {
	e := newEnv(t, Classic)
	if e.srv.Transport() != Classic {
		t.Fatalf("transport %v", e.srv.Transport())
	}
	ext4(t, e, nil)
	if st := e.srv.Stats(); st.Bios == 0 || st.Errors != 0 || st.RingRequests != 0 {
		t.Fatalf("stats %+v: want bios, no errors, nothing through the ring", st)
	}
}

func TestExt4IOUring(t *testing.T) {
	e := newEnv(t, IOUring)
	if e.srv.Transport() != IOUring {
		t.Fatalf("transport %v", e.srv.Transport())
	}
	ext4(t, e, nil)
	st := e.srv.Stats()
	if st.Bios == 0 || st.Errors != 0 || st.RingRequests < st.Requests/2 {
		t.Fatalf("stats %+v: want bios, no errors, most requests through the ring", st)
	}
	t.Logf("stats %+v", st)
}

func writeSync(t *testing.T, name string, data []byte) {
	t.Helper()
	f, err := os.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestExt4NoflushReload suspends with noflush, loads the same table
// again and resumes, over and over while ext4 writes and fsyncs files:
// the bios held in the core meanwhile reach the device after the resume,
// and the filesystem sees no error.
func TestExt4NoflushReload(t *testing.T) {
	for _, tr := range []Transport{Classic, IOUring} {
		t.Run(tr.String(), func(t *testing.T) { noflushReload(t, tr) })
	}
}

func noflushReload(t *testing.T, tr Transport) {
	e := newEnv(t, tr)
	if e.srv.Transport() != tr {
		t.Fatalf("transport %v, want %v", e.srv.Transport(), tr)
	}
	cycles := 0
	ext4(t, e, func(stop <-chan struct{}) {
		dev, err := e.reg.Get("demo")
		if err != nil {
			t.Error(err)
			return
		}
		table, err := dev.Table(false)
		if err != nil {
			t.Error(err)
			return
		}
		ctx := context.Background()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := dev.Suspend(ctx, true); err != nil {
				t.Error(err)
				return
			}
			if err := dev.Load(strings.Join(table, "\n")); err != nil {
				t.Error(err)
			}
			if err := dev.Resume(ctx); err != nil {
				t.Error(err)
				return
			}
			cycles++
		}
	})
	if cycles == 0 {
		t.Fatal("no suspend/reload/resume cycle ran during the workload")
	}
	if st := e.srv.Stats(); st.Errors != 0 {
		t.Fatalf("stats %+v: errors", st)
	}
	t.Logf("%d noflush reload cycles", cycles)
}

// TestFioVerify writes random 4 KiB-64 KiB blocks at depth 32 through a
// loop device over a device's file, then reads every block back and
// checks it (fio's verify), on both transports.
func TestFioVerify(t *testing.T) {
	testutil.RequireTool(t, "fio")
	for _, tr := range []Transport{Classic, IOUring} {
		t.Run(tr.String(), func(t *testing.T) {
			e := newEnv(t, tr)
			e.create("v", 64<<20)
			loop := testutil.LoopDevice(t, filepath.Join(e.dir, "v"))
			runIn(t, t.TempDir(), "fio", "--name=verify", "--filename="+loop, "--ioengine=io_uring", "--direct=1",
				"--rw=randwrite", "--bsrange=4k-64k", "--iodepth=32", "--size=64m", "--verify=crc32c",
				"--verify_fatal=1", "--do_verify=1", "--randrepeat=0", "--verify_state_save=0")
			st := e.srv.Stats()
			if st.Errors != 0 || (tr == IOUring && st.RingRequests == 0) {
				t.Fatalf("stats %+v", st)
			}
		})
	}
}

// TestCloseBusy closes the server while a loop device holds a file: the
// mount is detached lazily and the connection aborted, so the loop
// device's I/O fails instead of hanging, and it can still be detached.
func TestCloseBusy(t *testing.T) {
	for _, tr := range []Transport{Classic, IOUring} {
		t.Run(tr.String(), func(t *testing.T) {
			e := newEnv(t, tr)
			e.create("busy", 8<<20)
			out, err := exec.Command("losetup", "--direct-io=on", "--find", "--show", filepath.Join(e.dir, "busy")).CombinedOutput()
			if err != nil {
				t.Fatalf("losetup: %v\n%s", err, out)
			}
			loop := strings.TrimSpace(string(out))
			detached := false
			t.Cleanup(func() {
				if !detached {
					exec.Command("losetup", "-d", loop).Run()
				}
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			busy, err := e.srv.Close(ctx)
			e.srv = nil
			if err != nil || !busy {
				t.Fatalf("close: busy %v, %v; want busy and no error", busy, err)
			}
			f, err := os.OpenFile(loop, os.O_RDONLY|unix.O_DIRECT, 0)
			if err != nil {
				t.Fatal(err)
			}
			_, rerr := f.ReadAt(alignedBuf(4096), 0)
			f.Close()
			if rerr == nil {
				t.Fatal("a read of the loop device succeeded after the server closed")
			}
			if out, err := exec.Command("losetup", "-d", loop).CombinedOutput(); err != nil {
				t.Fatalf("losetup -d: %v\n%s", err, out)
			}
			detached = true
			if mountDev(e.dir) != 0 {
				t.Fatalf("%s still mounted", e.dir)
			}
		})
	}
}

// TestRingDepth holds a device's bios (suspended) while fio keeps 32
// reads in flight on a loop device over its file: all 32 reach the
// server, though the kernel gives a request only to the queue of the
// CPU that submitted it, and only 4 entries of a queue have arena
// buffers.
func TestRingDepth(t *testing.T) {
	testutil.RequireTool(t, "fio")
	e := newEnvWith(t, IOUring, func(c *Config) { c.Slots = 4 })
	e.create("deep", 64<<20)
	loop := testutil.LoopDevice(t, filepath.Join(e.dir, "deep"))
	dev, err := e.reg.Get("deep")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := dev.Suspend(ctx, true); err != nil {
		t.Fatal(err)
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := dev.Resume(ctx); err != nil {
				t.Error(err)
			}
		}
	}
	defer resume()
	cmd := exec.Command("fio", "--name=depth", "--filename="+loop, "--ioengine=io_uring", "--direct=1", "--bs=4k",
		"--iodepth=32", "--rw=randread", "--number_ios=256", "--size=64m", "--norandommap", "--randrepeat=0")
	cmd.Dir = t.TempDir()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "32 reads held by the server", func() bool { return e.srv.Stats().Held >= 32 })
	resume()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("fio: %v\n%s", err, out.String())
	}
	if st := e.srv.Stats(); st.Errors != 0 || st.Peak < 32/uint64(len(e.loops)) {
		t.Fatalf("stats %+v", st)
	}
}

// TestUnalignedWrites writes bytes at odd offsets through files opened
// without O_DIRECT (os.File, dd bs=1, a shell redirection), and from
// concurrent writers into the same sectors, each its own bytes: every
// byte reads back as its last writer wrote it (read-modify-write of the
// covering sectors, none lost to another).
func TestUnalignedWrites(t *testing.T) {
	for _, tr := range []Transport{Classic, IOUring} {
		t.Run(tr.String(), func(t *testing.T) { unalignedWrites(t, tr) })
	}
}

func unalignedWrites(t *testing.T, tr Transport) {
	e := newEnv(t, tr)
	const size = 1 << 20
	e.create("u", size)
	name := filepath.Join(e.dir, "u")
	want := make([]byte, size)
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	writeAt := func(b []byte, off int64) {
		t.Helper()
		if n, err := f.WriteAt(b, off); err != nil || n != len(b) {
			t.Fatalf("write %d bytes at %d: %d, %v", len(b), off, n, err)
		}
		copy(want[off:], b)
	}
	writeAt([]byte{0xa1}, 3)
	writeAt([]byte("across"), 509)               // two sectors, both partial
	writeAt(bytes.Repeat([]byte{7}, 1000), 1234) // head, a whole sector, tail
	writeAt(bytes.Repeat([]byte{9}, 512), 4096)  // aligned, between the others
	writeAt(bytes.Repeat([]byte{5}, 100), size-100)
	if _, err := f.WriteAt([]byte{1, 2}, size-1); err == nil {
		t.Fatal("a write past the device's end succeeded")
	}
	run(t, "dd", "if=/dev/zero", "of="+name, "bs=1", "seek=3", "count=1", "conv=notrunc", "status=none")
	want[3] = 0
	run(t, "sh", "-c", "printf xy > "+name) // O_TRUNC: a device's size stays
	copy(want, "xy")
	if st, err := os.Stat(name); err != nil || st.Size() != size {
		t.Fatalf("after O_TRUNC: %v %v, want size %d", st, err, size)
	}

	// Concurrent writers, byte by byte, interleaved in the same sectors.
	const writers, per = 8, 128
	base := int64(64 << 10)
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g, err := os.OpenFile(name, os.O_RDWR, 0)
			if err != nil {
				errs <- err
				return
			}
			defer g.Close()
			for k := 0; k < per; k++ {
				if _, err := g.WriteAt([]byte{byte(0x10 + w)}, base+int64(k*writers+w)*3); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for w := 0; w < writers; w++ {
		for k := 0; k < per; k++ {
			want[base+int64(k*writers+w)*3] = byte(0x10 + w)
		}
	}
	got, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != size {
		t.Fatalf("read %d bytes, want %d", len(got), size)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("byte %d: %#x, want %#x", i, got[i], want[i])
		}
	}
	if st := e.srv.Stats(); st.Errors == 0 {
		t.Fatalf("stats %+v: want the write past the end counted as an error", st)
	}
}
