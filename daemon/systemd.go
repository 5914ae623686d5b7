package daemon

import (
	"context"
	"fmt"
	"net"
)

// Listeners are sockets bound by someone else (systemd's socket
// activation) for the daemon to serve on; see Config.Listeners.
type Listeners struct {
	Control, NBD, NBDUnix, Metrics net.Listener
}

// LoopsAlive posts an empty function to every loop and waits until each
// has run it, or ctx ends: a loop stuck in a handler fails it. The
// watchdog (systemd's WatchdogSec) is fed only while it succeeds.
func (d *Daemon) LoopsAlive(ctx context.Context) error {
	done := make(chan int, len(d.loops))
	for i, l := range d.loops {
		if err := l.Post(func() { done <- i }); err != nil {
			return fmt.Errorf("loop %d: %w", i, err)
		}
	}
	for range d.loops {
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("a loop did not run a posted function: %w", ctx.Err())
		}
	}
	return nil
}
