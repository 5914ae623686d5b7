package drill

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"udm/dm"
	"udm/dm/filedev"
	"udm/fuse"
	"udm/multipath"
	"udm/uring"
)

// The real-filesystem drill: ext4 on a multipath device that the kernel
// reaches through udm's FUSE frontend and a loop device, with a real
// workload on it (tar extracts checked against a sha256 manifest, files
// written and fsynced, fio verifying on the filesystem when installed,
// and an fsync probe timing stalls) while the paths fail.

// RealFSName is the drill's name for `udm drill`.
const RealFSName = "real-fs"

// RealFSOutcome is what it must show.
const RealFSOutcome = "ext4 through the FUSE frontend and a loop device while a path fails, both fail (I/O queued) and a noflush reload adds a path: no I/O error in the kernel log or the workload, manifests intact, e2fsck clean, the longest stall reported"

// RealFSOptions configure RealFS.
type RealFSOptions struct {
	// Transport of the FUSE frontend (fuse.Auto: the ring when the
	// kernel offers it).
	Transport fuse.Transport
	// Full makes each phase wait for more of the workload (30 rounds
	// instead of 3).
	Full bool
	// Size of the device (default 256 MiB).
	Size int64
	// Log gets progress lines (nil: none).
	Log io.Writer
}

// RealFSReport is the drill's result.
type RealFSReport struct {
	Transport string
	Pass      bool
	// Reason says why it failed ("" on a pass).
	Reason string
	// Phases are the faults, in order, and how long each lasted.
	Phases []RealFSPhase
	// Extracts and Files count what the workload wrote; FioRuns the fio
	// verify jobs that completed (0 without fio).
	Extracts, Files, FioRuns int
	// LongestStall is the longest 4 KiB write + fdatasync of the probe.
	LongestStall time.Duration
	Took         time.Duration
}

// RealFSPhase is one step of the schedule.
type RealFSPhase struct {
	Name string
	Took time.Duration
}

// Summary prints the report in a few lines.
func (r *RealFSReport) Summary(w io.Writer) {
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL: " + r.Reason
	}
	fmt.Fprintf(w, "%s (FUSE %s): %s\n", RealFSName, r.Transport, verdict)
	for _, p := range r.Phases {
		fmt.Fprintf(w, "  %-34s %v\n", p.Name, p.Took.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "  workload: %d tar extracts, %d fsynced files, %d fio verify runs\n", r.Extracts, r.Files, r.FioRuns)
	fmt.Fprintf(w, "  longest stall (4 KiB write + fdatasync): %v; took %v\n", r.LongestStall.Round(time.Microsecond), r.Took.Round(time.Millisecond))
}

// RealFS runs the drill in this process (loops, registry, FUSE mount,
// loop device, ext4) and cleans up after itself. It needs root, /dev/fuse,
// losetup, mkfs.ext4 and e2fsck. An error is a drill that could not run;
// a failed verdict is a report with Pass false.
func RealFS(ctx context.Context, opt RealFSOptions) (rep *RealFSReport, err error) {
	start := time.Now()
	if opt.Size == 0 {
		opt.Size = 256 << 20
	}
	rounds := 3
	if opt.Full {
		rounds = 30
	}
	logf := func(format string, a ...any) {
		if opt.Log != nil {
			fmt.Fprintf(opt.Log, "real-fs: "+format+"\n", a...)
		}
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck", "mount", "umount", "tar"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("real-fs: %s not installed", tool)
		}
	}
	scratch, err := os.MkdirTemp(shmOrTemp(), "udm-realfs-")
	if err != nil {
		return nil, err
	}
	var cleanups []func()
	defer func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		os.RemoveAll(scratch)
	}()

	var loops []*uring.Loop
	for i := 0; i < 2; i++ {
		l, err := uring.NewLoop(uring.Config{ID: i, SQE128: opt.Transport != fuse.Classic && fuse.URingEnabled()})
		if err != nil {
			return nil, err
		}
		loops = append(loops, l)
		cleanups = append(cleanups, func() { l.Close() })
	}
	targets := dm.DefaultTargets()
	if err := multipath.Register(targets); err != nil {
		return nil, err
	}
	reg := dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Targets: targets, Open: filedev.Opener(loops[0])})
	cleanups = append(cleanups, func() { reg.RemoveAll(context.Background()) })
	backing := filepath.Join(scratch, "backing.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		return nil, err
	}
	if err := os.Truncate(backing, opt.Size); err != nil {
		return nil, err
	}
	sectors := opt.Size / 512
	linear := fmt.Sprintf("0 %d linear %s 0", sectors, backing)
	errTable := fmt.Sprintf("0 %d error", sectors)
	for _, p := range []string{"p0", "p1", "p2"} {
		if _, err := reg.Create(ctx, "realfs-"+p, "", linear); err != nil {
			return nil, err
		}
	}
	mpTable := func(paths ...string) string {
		s := fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 %d 1", sectors, len(paths))
		for _, p := range paths {
			s += " /dev/mapper/realfs-" + p + " 1"
		}
		return s
	}
	mp, err := reg.Create(ctx, "realfs", "", mpTable("p0", "p1"))
	if err != nil {
		return nil, err
	}
	mountDir := filepath.Join(scratch, "fuse")
	if err := os.Mkdir(mountDir, 0o755); err != nil {
		return nil, err
	}
	mctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	srv, err := fuse.Mount(mctx, fuse.Config{Dir: mountDir, Devices: reg, Loops: loops, Transport: opt.Transport, Log: zerolog.Nop()})
	cancel()
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		srv.Close(cctx)
	})
	rep = &RealFSReport{Transport: srv.Transport().String()}
	logf("FUSE mounted at %s (%s)", mountDir, rep.Transport)

	out, err := exec.Command("losetup", "--direct-io=on", "--find", "--show", filepath.Join(mountDir, "realfs")).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	cleanups = append(cleanups, func() { exec.Command("losetup", "-d", loop).Run() })
	kmsgBefore, kerr := kernelIOErrors(loop)
	if err := runCmd("mkfs.ext4", "-q", "-F", loop); err != nil {
		return nil, err
	}
	mnt := filepath.Join(scratch, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return nil, err
	}
	if err := runCmd("mount", loop, mnt); err != nil {
		return nil, err
	}
	mounted := true
	cleanups = append(cleanups, func() {
		if mounted {
			exec.Command("umount", mnt).Run()
		}
	})
	logf("ext4 on %s over %s", loop, filepath.Join(mountDir, "realfs"))

	w := newFSWorkload(mnt)
	wctx, stopWork := context.WithCancel(ctx)
	defer stopWork()
	werr := w.start(wctx)

	fail := func(format string, a ...any) (*RealFSReport, error) {
		st, _ := mp.Status()
		logf("failing: map %s, pending %d, status %q; FUSE %+v", mp.Info().State(), mp.Pending(), st, srv.Stats())
		for _, p := range []string{"p0", "p1", "p2"} {
			if d, err := reg.Get("realfs-" + p); err == nil {
				logf("  path %s: %s, pending %d", p, d.Info().State(), d.Pending())
			}
		}
		stopWork()
		w.wait()
		rep.Pass, rep.Reason = false, fmt.Sprintf(format, a...)
		rep.Took = time.Since(start)
		return rep, nil
	}
	phase := func(name string, fn func() error) error {
		t0 := time.Now()
		logf("%s", name)
		err := fn()
		rep.Phases = append(rep.Phases, RealFSPhase{Name: name, Took: time.Since(t0)})
		return err
	}
	progress := func() error {
		n := w.rounds()
		return waitFor(ctx, time.Minute, "the workload to progress", func() bool {
			select {
			case <-werr:
				return true // reported below
			default:
			}
			return w.rounds() >= n+rounds
		})
	}
	setPath := func(p, table string) error {
		d, err := reg.Get("realfs-" + p)
		if err != nil {
			return err
		}
		if err := d.Load(table); err != nil {
			return err
		}
		return d.Resume(ctx)
	}
	pathState := func(p string) string {
		st, err := mp.Status()
		if err != nil {
			return ""
		}
		f := strings.Fields(strings.Join(st, " "))
		for i := range f {
			if f[i] == "/dev/mapper/realfs-"+p && i+1 < len(f) {
				return f[i+1]
			}
		}
		return ""
	}
	reinstate := func(ps ...string) error {
		for _, p := range ps {
			if _, err := mp.Message(ctx, 0, []string{"reinstate_path", "/dev/mapper/realfs-" + p}); err != nil {
				return err
			}
		}
		return nil
	}
	steps := []struct {
		name string
		fn   func() error
	}{
		{"workload running", progress},
		{"fail p0 (error target)", func() error {
			if err := setPath("p0", errTable); err != nil {
				return err
			}
			return waitFor(ctx, time.Minute, "p0 to fail", func() bool { return pathState("p0") == "F" })
		}},
		{"I/O on p1 alone", progress},
		{"restore and reinstate p0", func() error {
			if err := setPath("p0", linear); err != nil {
				return err
			}
			if err := reinstate("p0"); err != nil {
				return err
			}
			return progress()
		}},
		{"fail both paths (I/O queued)", func() error {
			if err := setPath("p0", errTable); err != nil {
				return err
			}
			if err := setPath("p1", errTable); err != nil {
				return err
			}
			return waitFor(ctx, time.Minute, "both paths to fail", func() bool { return pathState("p0") == "F" && pathState("p1") == "F" })
		}},
		{"restore and reinstate both", func() error {
			if err := setPath("p0", linear); err != nil {
				return err
			}
			if err := setPath("p1", linear); err != nil {
				return err
			}
			if err := reinstate("p0", "p1"); err != nil {
				return err
			}
			return progress()
		}},
		{"suspend --noflush, load +p2, resume", func() error {
			if err := mp.Suspend(ctx, true); err != nil {
				return err
			}
			if err := mp.Load(mpTable("p0", "p1", "p2")); err != nil {
				mp.Resume(ctx)
				return err
			}
			if err := mp.Resume(ctx); err != nil {
				return err
			}
			return progress()
		}},
	}
	for _, st := range steps {
		if err := phase(st.name, st.fn); err != nil {
			return fail("%s: %v", st.name, err)
		}
		select {
		case err := <-werr:
			return fail("workload: %v", err)
		default:
		}
	}
	stopWork()
	if err := w.wait(); err != nil {
		return fail("workload: %v", err)
	}
	rep.Extracts, rep.Files, rep.FioRuns, rep.LongestStall = w.summary()
	if err := runCmd("umount", mnt); err != nil {
		return fail("%v", err)
	}
	mounted = false
	if err := runCmd("e2fsck", "-fn", loop); err != nil {
		return fail("e2fsck: %v", err)
	}
	if err := runCmd("mount", "-o", "ro", loop, mnt); err != nil {
		return fail("%v", err)
	}
	mounted = true
	if err := w.verify(); err != nil {
		return fail("manifest: %v", err)
	}
	if err := runCmd("umount", mnt); err != nil {
		return fail("%v", err)
	}
	mounted = false
	if kerr == nil {
		after, err := kernelIOErrors(loop)
		if err == nil && after > kmsgBefore {
			return fail("the kernel logged %d I/O errors for %s", after-kmsgBefore, loop)
		}
	} else {
		logf("kernel log unreadable (%v): not checked", kerr)
	}
	if st := srv.Stats(); st.Errors != 0 {
		return fail("the FUSE frontend answered %d requests with an error", st.Errors)
	}
	rep.Pass = true
	rep.Took = time.Since(start)
	return rep, nil
}

func shmOrTemp() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

func runCmd(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// waitFor polls cond every 10 ms until it holds, ctx ends or d passes.
func waitFor(ctx context.Context, d time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// kernelIOErrors counts kernel log lines reporting an I/O error (or an
// ext4 error) on dev.
func kernelIOErrors(dev string) (int, error) {
	out, err := exec.Command("dmesg").Output()
	if err != nil {
		return 0, err
	}
	name := regexp.MustCompile(`\b` + regexp.QuoteMeta(filepath.Base(dev)) + `\b`)
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		if name.MatchString(line) && (strings.Contains(line, "I/O error") || strings.Contains(line, "EXT4-fs error") || strings.Contains(line, "Buffer I/O")) {
			n++
		}
	}
	return n, nil
}

// fsWorkload is the drill's workload on the mounted filesystem: tar
// extracts of a generated tree, files written and fsynced, fio verify
// jobs (when fio is installed) and the fsync probe, each in a goroutine
// until the context ends.
type fsWorkload struct {
	dir     string
	archive []byte
	members map[string][32]byte // the archive's files and their sums

	mu       sync.Mutex
	extracts int
	files    map[string][32]byte
	fioRuns  int
	stall    time.Duration
	n        int // rounds of all kinds
	wg       sync.WaitGroup
	err      error
}

func newFSWorkload(dir string) *fsWorkload {
	w := &fsWorkload{dir: dir, members: map[string][32]byte{}, files: map[string][32]byte{}}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 120; i++ {
		name := fmt.Sprintf("src/d%02d/f%03d.txt", i%12, i)
		data := make([]byte, 200+rng.IntN(40<<10))
		for j := range data {
			data[j] = byte('a' + rng.IntN(26))
		}
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
		w.members[name] = sha256.Sum256(data)
	}
	tw.Close()
	w.archive = buf.Bytes()
	return w
}

func (w *fsWorkload) rounds() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

func (w *fsWorkload) summary() (extracts, files, fio int, stall time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.extracts, len(w.files), w.fioRuns, w.stall
}

// start runs the workload's goroutines; the channel gets the first error.
func (w *fsWorkload) start(ctx context.Context) <-chan error {
	errc := make(chan error, 4)
	run := func(fn func(context.Context) error) {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				w.mu.Lock()
				if w.err == nil {
					w.err = err
				}
				w.mu.Unlock()
				errc <- err
			}
		}()
	}
	run(w.extractLoop)
	run(w.fileLoop)
	run(w.probeLoop)
	if _, err := exec.LookPath("fio"); err == nil {
		run(w.fioLoop)
	}
	return errc
}

func (w *fsWorkload) wait() error {
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *fsWorkload) extractLoop(ctx context.Context) error {
	for i := 0; ctx.Err() == nil; i++ {
		dst := filepath.Join(w.dir, fmt.Sprintf("x%03d", i))
		if err := os.Mkdir(dst, 0o755); err != nil {
			return err
		}
		cmd := exec.Command("tar", "-x", "-C", dst)
		cmd.Stdin = bytes.NewReader(w.archive)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("tar -x: %v: %s", err, out)
		}
		if err := runCmd("sync", "-f", dst); err != nil {
			return err
		}
		w.mu.Lock()
		w.extracts++
		w.n++
		w.mu.Unlock()
	}
	return nil
}

func (w *fsWorkload) fileLoop(ctx context.Context) error {
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("f%05d", i)
		data := bytes.Repeat([]byte(fmt.Sprintf("%s-%d|", name, i*7919)), (64<<10+(i%16)*(60<<10))/12)
		f, err := os.Create(filepath.Join(w.dir, name))
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		w.mu.Lock()
		w.files[name] = sha256.Sum256(data)
		w.n++
		w.mu.Unlock()
	}
	return nil
}

// probeLoop writes 4 KiB and fdatasyncs, over and over, timing each:
// the longest is the stall a user of the filesystem saw.
func (w *fsWorkload) probeLoop(ctx context.Context) error {
	f, err := os.OpenFile(filepath.Join(w.dir, "probe"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for i := 0; ctx.Err() == nil; i++ {
		t0 := time.Now()
		if _, err := f.WriteAt(buf, int64(i%256)*4096); err != nil {
			return err
		}
		if err := fdatasync(f); err != nil {
			return err
		}
		d := time.Since(t0)
		w.mu.Lock()
		w.stall = max(w.stall, d)
		w.mu.Unlock()
		if err := sleepCtx(ctx, 5*time.Millisecond); err != nil {
			return nil
		}
	}
	return nil
}

func (w *fsWorkload) fioLoop(ctx context.Context) error {
	for i := 0; ctx.Err() == nil; i++ {
		cmd := exec.CommandContext(ctx, "fio", "--name=realfs", "--directory="+w.dir, fmt.Sprintf("--filename=fio%d", i%2),
			"--size=16m", "--rw=randwrite", "--bs=4k", "--ioengine=psync", "--direct=1", "--fsync=16",
			"--verify=crc32c", "--verify_fatal=1", "--do_verify=1", "--randrepeat=0", "--verify_state_save=0")
		cmd.Dir = w.dir // where fio would leave anything it writes
		// fio runs its job in a child process: stop the whole group with
		// SIGINT (fio ends its job cleanly), killing it only if it lingers.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) }
		cmd.WaitDelay = 20 * time.Second
		out, err := cmd.CombinedOutput()
		if cmd.Process != nil {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // nothing of the group outlives the run
		}
		if ctx.Err() != nil {
			return nil // stopped mid-run: not a verdict
		}
		if err != nil {
			return fmt.Errorf("fio verify: %v: %s", err, lastLines(string(out), 5))
		}
		w.mu.Lock()
		w.fioRuns++
		w.mu.Unlock()
	}
	return nil
}

// verify checks every extract and every file against the manifest.
func (w *fsWorkload) verify() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	var bad []string
	for i := 0; i < w.extracts; i++ {
		for name, sum := range w.members {
			b, err := os.ReadFile(filepath.Join(w.dir, fmt.Sprintf("x%03d", i), name))
			if err != nil || sha256.Sum256(b) != sum {
				bad = append(bad, fmt.Sprintf("x%03d/%s", i, name))
			}
		}
	}
	for name, sum := range w.files {
		b, err := os.ReadFile(filepath.Join(w.dir, name))
		if err != nil || sha256.Sum256(b) != sum {
			bad = append(bad, name)
		}
	}
	if len(bad) > 0 {
		sort.Strings(bad)
		return errors.New(strings.Join(bad[:min(len(bad), 5)], ", ") + fmt.Sprintf(" (%d files) differ", len(bad)))
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func fdatasync(f *os.File) error { return unix.Fdatasync(int(f.Fd())) }
