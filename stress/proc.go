package stress

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"udm/internal/child"
)

// proc is the `udm serve` under test. Its stdout and stderr go to a log
// file in the run's scratch directory; it dies with the test
// (Pdeathsig).
type proc struct {
	bin      string
	stateDir string
	sock     string
	nbdUnix  string
	logPath  string

	// sig serializes the signals that end the daemon, so that a kill
	// does not cut a goroutine dump short.
	sig  sync.Mutex
	c    *child.Proc // the daemon process last started
	info daemonInfo
	args []string
}

func newProc(bin, scratch, sockDir string) *proc {
	return &proc{bin: bin, stateDir: filepath.Join(scratch, "state"), sock: filepath.Join(sockDir, "c.sock"),
		nbdUnix: filepath.Join(sockDir, "n.sock"), logPath: filepath.Join(scratch, "daemon.log")}
}

// start starts the daemon with loops uring loops and waits until its
// control API answers (within bound). A start that finds the state dir
// still locked by the process just killed is retried: notes counts
// those.
func (p *proc) start(ctx context.Context, loops int, bound time.Duration, notes func(string)) error {
	deadline := time.Now().Add(bound)
	for {
		err := p.startOnce(ctx, loops, deadline)
		if err == nil {
			return nil
		}
		if !strings.Contains(err.Error(), "another udm daemon uses the state dir") || time.Now().After(deadline) {
			return err
		}
		notes("start refused: state dir still locked after the previous daemon exited")
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *proc) startOnce(ctx context.Context, loops int, deadline time.Time) error {
	p.args = []string{"serve", "--state-dir", p.stateDir, "--control", p.sock, "--nbd", "127.0.0.1:0",
		"--nbd-unix", p.nbdUnix, "--metrics", "127.0.0.1:0", "--loops", strconv.Itoa(loops), "--no-demo",
		"--log-level", "info"}
	// The child gets Pdeathsig: it dies with the test.
	c, err := child.Start("udm serve", p.logPath, append([]string{p.bin}, p.args...),
		[]string{envSocket + "=/nonexistent/udm-stress.sock", "GOTRACEBACK=all"})
	if err != nil {
		return err
	}
	p.c = c
	startPos := c.Since
	cl := newClient(p.sock)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		info, err := cl.Daemon(cctx)
		cancel()
		if err == nil {
			p.info = info
			return nil
		}
		if p.exited() {
			return fmt.Errorf("udm serve exited (%v) before answering: %s", c.Err(), p.logSince(startPos, 2000))
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			p.kill9()
			return fmt.Errorf("udm serve did not answer on %s: %v", p.sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *proc) exited() bool { return p.c == nil || p.c.Exited() }

func (p *proc) pid() int { return p.c.Pid() }

// kill9 kills the daemon as a crash would and waits for it.
func (p *proc) kill9() {
	p.sig.Lock()
	defer p.sig.Unlock()
	p.kill9Locked()
}

func (p *proc) kill9Locked() {
	if p.exited() {
		return
	}
	p.c.Kill()
}

// quit sends SIGQUIT (the Go runtime prints every goroutine's stack to
// stderr and exits) and returns the dump.
func (p *proc) quit() string {
	p.sig.Lock()
	defer p.sig.Unlock()
	if p.exited() {
		return "(the daemon had exited: no goroutine dump)"
	}
	st, _ := os.Stat(p.logPath)
	var from int64
	if st != nil {
		from = st.Size()
	}
	p.c.Signal(syscall.SIGQUIT)
	select {
	case <-p.c.Done():
	case <-time.After(30 * time.Second):
		p.kill9Locked()
	}
	return p.logSince(from, 200000)
}

// term sends SIGTERM and waits up to bound for the daemon to exit; it
// reports how long it took and whether it exited 0.
func (p *proc) term(bound time.Duration) (time.Duration, error) {
	if p.c == nil {
		return 0, fmt.Errorf("the daemon was not started")
	}
	if p.c.Exited() {
		return 0, fmt.Errorf("the daemon had exited (%v)", p.c.Err())
	}
	t0 := time.Now()
	p.c.Signal(syscall.SIGTERM)
	select {
	case <-p.c.Done():
	case <-time.After(bound):
		dump := p.quit()
		return time.Since(t0), fmt.Errorf("no exit %v after SIGTERM; goroutines:\n%s", bound, clip(dump, 60000))
	}
	if err := p.c.Err(); err != nil {
		return time.Since(t0), fmt.Errorf("exit after SIGTERM: %v", err)
	}
	return time.Since(t0), nil
}

// logSince returns the daemon log from byte offset from (its last max
// bytes).
func (p *proc) logSince(from int64, max int) string {
	if p.c == nil {
		return ""
	}
	return p.c.LogSince(from, max)
}

// logTail returns the last max bytes of the daemon log.
func (p *proc) logTail(max int) string { return p.logSince(0, max) }

// nbdURI is the export's URI over TCP or the Unix socket.
func (p *proc) nbdURI(export string, unixSock bool) string {
	if unixSock {
		return "nbd+unix:///" + export + "?socket=" + p.nbdUnix
	}
	return "nbd://" + p.info.NBD + "/" + export
}

// counts are the daemon's resources the leak check follows.
type counts struct {
	FDs, Goroutines, Threads int
}

func (c counts) String() string {
	return fmt.Sprintf("%d fds, %d goroutines, %d threads", c.FDs, c.Goroutines, c.Threads)
}

// counts reads the daemon's open fds and threads from /proc and its
// goroutines from its metrics. The fds are counted before the metrics
// request opens a connection.
func (p *proc) counts(ctx context.Context) (counts, error) {
	var c counts
	pid := p.pid()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return c, err
	}
	c.FDs = len(ents)
	if f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "Threads:"); ok {
				c.Threads, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		f.Close()
	}
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+p.info.Metrics+"/metrics", nil)
	if err != nil {
		return c, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				return c, err
			}
			c.Goroutines = int(f)
			return c, nil
		}
	}
	return c, fmt.Errorf("no go_goroutines in the daemon's metrics")
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + fmt.Sprintf("... (%d bytes more)", len(s)-n)
}
