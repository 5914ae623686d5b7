// Package child starts the child processes that udm's drills and stress
// runs supervise (a daemon, a remote server, fio) so that they die with
// the parent.
//
// Lock order: there is none; the package holds no lock.
package child

import (
	"os/exec"
	"runtime"
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
