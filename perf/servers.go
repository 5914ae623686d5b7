package perf

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BgServer is a server process the benchmark runs clients against; its
// CPU time is read from /proc so a run can report server CPU per I/O.
type BgServer struct {
	Name   string
	cmd    *exec.Cmd
	log    *os.File
	pid    int
	exited chan struct{} // closed once the process has been reaped
}

// StartServer starts argv and waits until addr (host:port or a Unix
// socket path) accepts connections.
func StartServer(name, logDir string, argv []string, addr string) (*BgServer, error) {
	lf, err := os.Create(filepath.Join(logDir, strings.NewReplacer(" ", "-", "/", "-").Replace(name)+".log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	// Pdeathsig fires when the thread that forked the child exits, not
	// the process: fork from a thread locked for the child's whole life
	// (a Go thread can exit when a locked goroutine ends).
	started := make(chan error, 1)
	exited := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		lf.Close()
		return nil, fmt.Errorf("perf: start %s: %w", name, err)
	}
	s := &BgServer{Name: name, cmd: cmd, log: lf, pid: cmd.Process.Pid, exited: exited}
	if err := WaitListening(addr, 15*time.Second); err != nil {
		s.Stop()
		out, _ := os.ReadFile(lf.Name())
		return nil, fmt.Errorf("perf: %s not listening on %s: %v\n%s", name, addr, err, out)
	}
	return s, nil
}

// WaitListening polls addr until a connection succeeds.
func WaitListening(addr string, timeout time.Duration) error {
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CPU returns the process's user+system time so far (all threads).
func (s *BgServer) CPU() (time.Duration, error) { return ProcCPU(s.pid) }

// ProcCPU reads utime+stime of pid from /proc/PID/stat.
func ProcCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may contain spaces) start at
	// the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("perf: odd /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("perf: short /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("perf: bad /proc/%d/stat times", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// clockTicks is USER_HZ, 100 on every Linux platform Go supports.
const clockTicks = 100

// Stop ends the server (SIGTERM, then SIGKILL).
func (s *BgServer) Stop() {
	if s.cmd.Process == nil {
		return
	}
	syscall.Kill(-s.pid, syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		syscall.Kill(-s.pid, syscall.SIGKILL)
		<-s.exited
	}
	s.log.Close()
}

// NBDContender measures fio's nbd engine against uri, adding the server's
// CPU time per I/O and, when allocs is set, its heap allocations per I/O.
func NBDContender(name, uri string, srv *BgServer, allocs func() (float64, error)) Contender {
	return Contender{Name: name, Run: func(ctx context.Context, w Workload, runtime, ramp time.Duration) (*Result, error) {
		var before time.Duration
		if srv != nil {
			var err error
			if before, err = srv.CPU(); err != nil {
				return nil, fmt.Errorf("%s: server gone: %w", srv.Name, err)
			}
		}
		// Two scrapes back to back tell what a scrape itself allocates in
		// the daemon; that is taken off the run's count.
		var a0, scrape float64
		if allocs != nil {
			first, err := allocs()
			if err != nil {
				return nil, err
			}
			if a0, err = allocs(); err != nil {
				return nil, err
			}
			scrape = a0 - first
		}
		j := FioJob{Name: name, IOEngine: "nbd", URI: uri, RW: w.RW, BlockSize: w.BS, Depth: w.Depth,
			ReadPct: w.ReadPct, Runtime: runtime, Ramp: ramp}
		res, err := RunFio(ctx, j)
		if err != nil {
			return nil, err
		}
		res.ServerAllocsPerIO = -1
		if allocs != nil {
			a1, err := allocs()
			if err != nil {
				return nil, err
			}
			// The count includes the ramp's I/O: count it in, as a rate.
			total := float64(res.Ops) * (runtime + ramp).Seconds() / runtime.Seconds()
			if total > 0 {
				res.ServerAllocsPerIO = max(0, a1-a0-scrape) / total
			}
		}
		if srv != nil {
			after, err := srv.CPU()
			if err != nil {
				return nil, fmt.Errorf("%s: server gone: %w", srv.Name, err)
			}
			// fio's ops exclude the ramp; server time includes it. Scale
			// by the measured share of the run.
			total := runtime + ramp
			cpu := float64(after-before) * runtime.Seconds() / total.Seconds()
			if res.Ops > 0 {
				res.ServerCPUPerIO = cpu / 1e3 / float64(res.Ops)
			}
		}
		return res, nil
	}}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// MetricsCounter returns a function reading one counter (e.g.
// go_memstats_mallocs_total) from a Prometheus text endpoint.
func MetricsCounter(url, name string) func() (float64, error) {
	return func() (float64, error) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return 0, err
		}
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, name+" ") {
				return strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(l, name)), 64)
			}
		}
		return 0, fmt.Errorf("perf: %s has no %s", url, name)
	}
}
