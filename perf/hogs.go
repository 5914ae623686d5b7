package perf

import (
	"context"
	"os/exec"
	"syscall"
	"time"
)

// hogSlack bounds how long hogs may outlive the run they were started
// for, should nobody stop them (the runner killed mid-run).
const hogSlack = 30 * time.Second

// StartHogs starts n CPU-bound processes (`sh -c 'while :; do :; done'`
// at normal priority) and returns the function that ends them and waits
// for them. They end by themselves after bound, and with the runner (a
// parent-death signal). n <= 0 starts none.
func StartHogs(n int, bound time.Duration) (stop func()) {
	if n <= 0 {
		return func() {}
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	var cmds []*exec.Cmd
	for range n {
		cmd := exec.CommandContext(ctx, "sh", "-c", "while :; do :; done")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if cmd.Start() == nil {
			cmds = append(cmds, cmd)
		}
	}
	return func() {
		cancel()
		for _, c := range cmds {
			c.Wait()
		}
	}
}
