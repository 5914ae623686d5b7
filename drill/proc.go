package drill

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"udm/daemon/api"
	"udm/internal/child"
)

// proc is a process the drill started: a daemon, a remote server, fio.
// Its output goes to a log file in the drill's directory. It dies with
// the drill (Pdeathsig), and Stop ends it.
type proc struct {
	name string
	argv []string
	log  string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startProc(name, logPath string, argv []string) (*proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "--- %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	p := &proc{name: name, argv: argv, log: logPath, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	p.cmd.Env = append(os.Environ(), api.Env+"=/nonexistent/udm-drill.sock")
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := child.StartLocked(p.cmd, func(err error) {
		p.err = err
		lf.Close()
		close(p.done)
	}); err != nil {
		lf.Close()
		return nil, fmt.Errorf("drill: start %s: %w", name, err)
	}
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends sig unless the process has exited.
func (p *proc) signal(sig syscall.Signal) error {
	if p.exited() {
		return fmt.Errorf("drill: %s has exited (%v)", p.name, p.err)
	}
	return p.cmd.Process.Signal(sig)
}

// kill ends the process with SIGKILL and waits for it.
func (p *proc) kill() {
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGCONT) // a stopped process dies only once it runs
		p.cmd.Process.Kill()
	}
	<-p.done
}

// stop asks the process to end (SIGTERM), and kills it after grace.
func (p *proc) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill()
	}
}

// tail returns the end of the process's log, for error messages.
func (p *proc) tail(n int) string {
	b, _ := os.ReadFile(p.log)
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// startDaemon starts `udm serve` and waits until its control API
// answers.
func startDaemon(ctx context.Context, name, logPath string, argv []string, sock string) (*proc, error) {
	p, err := startProc(name, logPath, argv)
	if err != nil {
		return nil, err
	}
	if err := waitAPI(ctx, p, sock); err != nil {
		p.kill()
		return nil, err
	}
	return p, nil
}

// waitAPI waits until the daemon answers on sock (or exits).
func waitAPI(ctx context.Context, p *proc, sock string) error {
	c := api.NewClient(sock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.Daemon(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("drill: %s exited before answering (%v): %s", p.name, p.err, p.tail(2000))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drill: %s did not answer on %s: %v", p.name, sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shortDir makes a directory for Unix sockets, whose paths are limited to
// 108 bytes.
func shortDir() (string, error) {
	return os.MkdirTemp("", "udmd")
}

// scratchDir makes the drill's directory on tmpfs (O_DIRECT works there
// and nothing touches a disk), or in the temp dir without /dev/shm.
func scratchDir(base string) (string, error) {
	if base == "" {
		base = "/dev/shm"
		if st, err := os.Stat(base); err != nil || !st.IsDir() {
			base = os.TempDir()
		}
	}
	return os.MkdirTemp(base, "udm-drill-")
}

// sparseFile makes a sparse file of size bytes.
func sparseFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
