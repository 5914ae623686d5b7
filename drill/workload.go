package drill

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"udm/internal/child"
	"udm/perf"
)

// Workload settings (the same for perf and fio).
type Workload struct {
	// RW is randrw (default), randwrite, ... (perf's names; fio's are
	// the same).
	RW        string
	BlockSize int   // default 4096
	Depth     int   // default 16
	ReadPct   int   // for randrw; default 50
	Size      int64 // region; default the whole device
	Seed      uint64
}

func (w *Workload) defaults() {
	if w.RW == "" {
		w.RW = "randrw"
	}
	if w.BlockSize == 0 {
		w.BlockSize = 4096
	}
	if w.Depth == 0 {
		w.Depth = 16
	}
	if w.ReadPct == 0 {
		w.ReadPct = 50
	}
	if w.Seed == 0 {
		w.Seed = uint64(time.Now().UnixNano())
	}
}

// interval is the timeline's resolution.
const interval = 100 * time.Millisecond

// runner is a running workload.
type runner interface {
	// stop asks it to finish: no new I/O; what is in flight completes.
	stop()
	// wait returns the result once it finished.
	wait() (*perf.Result, error)
	// abandon makes it give up I/O that never completes (called when
	// the drill stops waiting).
	abandon()
	// finished is closed when it has ended.
	finished() <-chan struct{}
	describe() string
}

// perfRunner is perf.Run over udm's NBD client: verified, with a
// read-back pass after the run.
type perfRunner struct {
	w      Workload
	eng    *perf.NBDEngine
	stopCh chan struct{}
	once   sync.Once
	done   chan struct{}
	res    *perf.Result
	err    error
}

func startPerf(uri string, w Workload) (*perfRunner, error) {
	eng, err := perf.NewNBDEngine(uri, 1)
	if err != nil {
		return nil, err
	}
	p := &perfRunner{w: w, eng: eng, stopCh: make(chan struct{}), done: make(chan struct{})}
	cfg := perf.Config{RW: w.RW, BlockSize: w.BlockSize, Depth: w.Depth, Loops: 1, ReadPct: w.ReadPct, Size: w.Size,
		Seed: w.Seed, Verify: true, ReadBack: true, Interval: interval, Duration: 100 * time.Hour, Stop: p.stopCh}
	go func() {
		defer close(p.done)
		p.res, p.err = perf.Run(context.Background(), cfg, eng)
	}()
	return p, nil
}

func (p *perfRunner) finished() <-chan struct{} { return p.done }

func (p *perfRunner) stop() { p.once.Do(func() { close(p.stopCh) }) }

func (p *perfRunner) wait() (*perf.Result, error) {
	<-p.done
	p.eng.Close()
	return p.res, p.err
}

// abandon closes the client: what is still in flight ends with
// ESHUTDOWN.
func (p *perfRunner) abandon() { p.eng.Close() }

func (p *perfRunner) describe() string {
	return fmt.Sprintf("perf %s %s qd%d, verified (read back after the run), udm's NBD client", p.w.RW, sizeName(p.w.BlockSize), p.w.Depth)
}

// fioRunner is fio's nbd engine with verify=crc32c. Its timeline comes
// from a per-I/O latency log; its clock starts when fio says it
// connected.
type fioRunner struct {
	w       Workload
	dir     string
	proc    *exec.Cmd
	args    []string
	mu      sync.Mutex
	stderr  strings.Builder
	started time.Time
	out     strings.Builder
	done    chan struct{}
	err     error
}

func startFio(ctx context.Context, uri, dir string, w Workload) (*fioRunner, error) {
	if _, err := exec.LookPath("fio"); err != nil {
		return nil, fmt.Errorf("drill: fio not found (apt-get install fio)")
	}
	f := &fioRunner{w: w, dir: dir, done: make(chan struct{})}
	rw := w.RW
	if rw == "randrw" {
		// fio verifies what it writes (verify_backlog reads it back);
		// its random reads are not checked, so write and read back.
		rw = "randwrite"
	}
	f.args = []string{"--name=drill", "--ioengine=nbd", "--uri=" + uri, "--rw=" + rw, "--bs=" + strconv.Itoa(w.BlockSize),
		"--iodepth=" + strconv.Itoa(w.Depth), "--time_based", "--runtime=100h", "--verify=crc32c", "--verify_state_save=0",
		"--do_verify=1", "--verify_fatal=1", "--verify_backlog=256", "--write_lat_log=" + filepath.Join(dir, "fio"),
		"--log_avg_msec=0", "--log_offset=1", "--output-format=json", "--thread", "--randseed=" + strconv.FormatUint(w.Seed, 10)}
	if w.Size > 0 {
		f.args = append(f.args, "--size="+strconv.FormatInt(w.Size, 10))
	}
	cmd := exec.Command("fio", f.args...)
	cmd.Dir = dir
	// One process (--thread) in a group of its own: a kill ends it all.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	// Our own pipes (not StdoutPipe): Wait runs as soon as fio exits
	// (child.StartLocked), and must not close them before they are read out.
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	waited := make(chan struct{})
	err = child.StartLocked(cmd, func(err error) {
		f.err = err
		close(waited)
	})
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, fmt.Errorf("drill: fio: %w", err)
	}
	f.proc = cmd
	// fio says "fio: connected to NBD server" (on stdout, before its
	// JSON report) when its job starts: the clock of its latency log.
	connected := make(chan struct{})
	var once sync.Once
	var pipes sync.WaitGroup
	pipes.Add(2)
	scan := func(r io.ReadCloser, dst *strings.Builder) {
		defer pipes.Done()
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			line := sc.Text()
			f.mu.Lock()
			if strings.Contains(line, "connected to NBD server") && f.started.IsZero() {
				f.started = time.Now()
				once.Do(func() { close(connected) })
			} else {
				dst.WriteString(line + "\n")
			}
			f.mu.Unlock()
		}
	}
	go scan(outR, &f.out)
	go scan(errR, &f.stderr)
	go func() {
		pipes.Wait()
		<-waited
		once.Do(func() { close(connected) })
		close(f.done)
	}()
	select {
	case <-connected:
	case <-time.After(30 * time.Second):
		f.abandon()
		<-f.done
		return nil, fmt.Errorf("drill: fio did not connect to %s: %s", uri, f.errText())
	case <-ctx.Done():
		f.abandon()
		<-f.done
		return nil, ctx.Err()
	}
	select {
	case <-f.done:
		return nil, fmt.Errorf("drill: fio exited at once (%v): %s", f.err, f.errText())
	default:
	}
	return f, nil
}

func (f *fioRunner) finished() <-chan struct{} { return f.done }

func (f *fioRunner) errText() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.TrimSpace(f.stderr.String())
}

// stop ends fio's job like its runtime would (SIGINT: it stops, reports
// and writes its logs).
func (f *fioRunner) stop() {
	select {
	case <-f.done:
	default:
		f.proc.Process.Signal(syscall.SIGINT)
	}
}

func (f *fioRunner) abandon() {
	select {
	case <-f.done:
	default:
		syscall.Kill(-f.proc.Process.Pid, syscall.SIGKILL)
	}
}

func (f *fioRunner) describe() string {
	return fmt.Sprintf("fio nbd randwrite %s qd%d, verify=crc32c (verify_backlog)", sizeName(f.w.BlockSize), f.w.Depth)
}

var fioVerifyLine = regexp.MustCompile(`(?i)verify|bad (magic|header)|crc32c`)

func (f *fioRunner) wait() (*perf.Result, error) {
	<-f.done
	f.mu.Lock()
	out := f.out.String()
	f.mu.Unlock()
	res, err := perf.ParseFioJSON([]byte(out))
	if err != nil {
		return nil, fmt.Errorf("%w\nfio said: %s", err, f.errText())
	}
	res.Engine = "fio"
	res.Started = f.started
	// The stderr lines carry fio's errors (I/O errors with offsets,
	// verify failures).
	for _, line := range strings.Split(f.errText(), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.Contains(line, "connected to NBD server") || strings.Contains(line, "terminating on signal") {
			continue
		}
		if fioVerifyLine.MatchString(line) {
			res.VerifyFailures = append(res.VerifyFailures, "fio: "+line)
		} else if res.Errors > 0 {
			res.ErrorLog = append(res.ErrorLog, "fio: "+line)
		}
	}
	if res.Errors > 0 && len(res.VerifyFailures) == 0 && strings.Contains(res.FirstError, "84") {
		res.VerifyFailures = append(res.VerifyFailures, "fio: verification failed (job error 84, EILSEQ)")
	}
	if len(res.VerifyFailures) > 0 && res.Errors > 0 && strings.Contains(res.FirstError, "84") {
		res.Errors-- // the verify failure, not an I/O error
	}
	if len(res.VerifyFailures) == 0 {
		res.VerifiedBytes = res.Reads * int64(f.w.BlockSize)
	}
	tl, maxLat, err := fioTimeline(filepath.Join(f.dir, "fio_lat.1.log"))
	if err != nil {
		return nil, err
	}
	res.Timeline = tl
	if maxLat > 0 {
		res.Lat.Max = maxLat
	}
	return res, nil
}

// fioTimeline reads a per-I/O latency log (time ms, latency ns, dir, bs,
// offset) into a timeline of IOPS, p99 and max per interval; it also
// returns the longest latency in µs.
func fioTimeline(path string) ([]perf.Point, float64, error) {
	fl, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("drill: fio latency log: %w", err)
	}
	defer fl.Close()
	hs := map[int]*hdrhistogram.Histogram{}
	maxIdx := 0
	var maxLat int64
	sc := bufio.NewScanner(fl)
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		if len(f) < 2 {
			continue
		}
		ms, err1 := strconv.ParseInt(strings.TrimSpace(f[0]), 10, 64)
		ns, err2 := strconv.ParseInt(strings.TrimSpace(f[1]), 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		idx := int(time.Duration(ms) * time.Millisecond / interval)
		h := hs[idx]
		if h == nil {
			h = hdrhistogram.New(100, int64(10*time.Minute), 2)
			hs[idx] = h
		}
		h.RecordValue(min(max(ns, 100), int64(10*time.Minute)))
		maxIdx = max(maxIdx, idx)
		maxLat = max(maxLat, ns)
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	idxs := make([]int, 0, len(hs))
	for i := range hs {
		idxs = append(idxs, i)
	}
	sort.Ints(idxs)
	pts := make([]perf.Point, maxIdx+1)
	for i := range pts {
		pts[i].T = (time.Duration(i) * interval).Seconds()
		if h := hs[i]; h != nil {
			pts[i].IOPS = float64(h.TotalCount()) / interval.Seconds()
			pts[i].P99 = float64(h.ValueAtQuantile(99)) / 1e3
			pts[i].Max = float64(h.Max()) / 1e3
		}
	}
	return pts, float64(maxLat) / 1e3, nil
}

func sizeName(n int) string {
	if n%1024 == 0 {
		return strconv.Itoa(n/1024) + "k"
	}
	return strconv.Itoa(n)
}
