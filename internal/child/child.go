// Package child starts the child processes that udm's drills and stress
// runs supervise (a daemon, a remote server, fio) so that they die with
// the parent.
//
// Lock order: there is none; the package holds no lock.
package child

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// StartLocked starts cmd and calls done, from a goroutine of its own,
// with its Wait's result. A child with Pdeathsig gets it when the OS
// thread that forked it exits, not the process — and Go ends a thread
// whose goroutine exits locked to it (the uring loops of a perf run do,
// when the run ends). So the fork and the wait run on a thread locked
// for the child's whole life: the child dies with the parent, never with
// one of its loops.
func StartLocked(cmd *exec.Cmd, done func(error)) error {
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		done(cmd.Wait())
	}()
	return <-started
}

// Proc is a child that dies with the parent (Pdeathsig, started by
// StartLocked), its output appended to a log file after a line naming
// the time and the command.
type Proc struct {
	Name  string
	Argv  []string
	Log   string // the log file
	Since int64  // the log's size when this process started
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
}

// Start runs argv, with env added to the environment, as a Proc called
// name logging to logPath.
func Start(name, logPath string, argv, env []string) (*Proc, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(lf, "--- %s: %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(argv, " "))
	since, _ := lf.Seek(0, io.SeekEnd)
	p := &Proc{Name: name, Argv: argv, Log: logPath, Since: since, done: make(chan struct{})}
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = lf, lf
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := StartLocked(p.cmd, func(err error) {
		p.err = err
		lf.Close()
		close(p.done)
	}); err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return p, nil
}

// Pid is the process's id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed once the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports, without waiting, whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is how the process exited (Wait's result), once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Signal sends sig unless the process has exited.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p.Exited() {
		return fmt.Errorf("%s has exited (%v)", p.Name, p.err)
	}
	return p.cmd.Process.Signal(sig)
}

// Kill ends the process with SIGKILL (as a crash would) and waits for
// it.
func (p *Proc) Kill() {
	if !p.Exited() {
		p.cmd.Process.Signal(syscall.SIGCONT) // a stopped process dies only once it runs
		p.cmd.Process.Kill()
	}
	<-p.done
}

// Stop asks the process to end (SIGTERM), and kills it after grace.
func (p *Proc) Stop(grace time.Duration) {
	if p.Exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGCONT)
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.Kill()
	}
}

// LogSince returns the log from byte offset from on, its last max bytes
// (after "..." if cut).
func (p *Proc) LogSince(from int64, max int) string {
	b, err := os.ReadFile(p.Log)
	if err != nil || from > int64(len(b)) {
		return ""
	}
	b = b[from:]
	if len(b) > max {
		b = append([]byte("..."), b[len(b)-max:]...)
	}
	return string(b)
}
