package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sd "github.com/coreos/go-systemd/v22/daemon"
	"github.com/rs/zerolog"

	"udm/daemon"
)

// systemd integration: socket activation (LISTEN_PID, LISTEN_FDS,
// LISTEN_FDNAMES), sd_notify (READY=1, STOPPING=1) and the watchdog
// (WATCHDOG_USEC). Without those variables udm serve binds its own
// sockets and notifies nobody.

// activated takes the sockets systemd passed (none: a zero Listeners)
// and says which is which. A socket named (FileDescriptorName=)
// "control", "nbd", "nbd-unix" or "metrics" is that one; any other is
// recognized by its address: a Unix socket at the --control or
// --nbd-unix path, a TCP socket on the --metrics port is the metrics
// endpoint, any other TCP socket the NBD one. A socket that fits none,
// or two that fit the same role, is an error.
func activated(control, nbdUnix, metrics string) (daemon.Listeners, error) {
	var ls daemon.Listeners
	byName, err := activation.ListenersWithNames()
	if err != nil {
		return ls, fmt.Errorf("socket activation: %w", err)
	}
	_, metricsPort, _ := net.SplitHostPort(metrics)
	set := func(slot *net.Listener, role string, ln net.Listener) error {
		if *slot != nil {
			return fmt.Errorf("socket activation: two sockets for %s (%s, %s)", role, (*slot).Addr(), ln.Addr())
		}
		*slot = ln
		return nil
	}
	for name, lns := range byName {
		for _, ln := range lns {
			var err error
			switch addr := ln.Addr(); {
			case name == "control":
				err = set(&ls.Control, "the control API", ln)
			case name == "nbd-unix":
				err = set(&ls.NBDUnix, "NBD over a Unix socket", ln)
			case name == "metrics":
				err = set(&ls.Metrics, "metrics", ln)
			case name == "nbd" && addr.Network() == "unix":
				err = set(&ls.NBDUnix, "NBD over a Unix socket", ln)
			case name == "nbd":
				err = set(&ls.NBD, "NBD over TCP", ln)
			case addr.Network() == "unix" && samePath(addr.String(), control):
				err = set(&ls.Control, "the control API", ln)
			case addr.Network() == "unix" && samePath(addr.String(), nbdUnix):
				err = set(&ls.NBDUnix, "NBD over a Unix socket", ln)
			case addr.Network() == "unix":
				err = fmt.Errorf("socket activation: Unix socket %s (%s) is neither --control %s nor --nbd-unix %s", addr, name, control, nbdUnix)
			case metricsPort != "" && tcpPort(addr) == metricsPort:
				err = set(&ls.Metrics, "metrics", ln)
			default:
				err = set(&ls.NBD, "NBD over TCP", ln)
			}
			if err != nil {
				return ls, err
			}
		}
	}
	return ls, nil
}

func samePath(a, b string) bool { return b != "" && filepath.Clean(a) == filepath.Clean(b) }

func tcpPort(a net.Addr) string {
	if ta, ok := a.(*net.TCPAddr); ok {
		return strconv.Itoa(ta.Port)
	}
	return ""
}

// notify sends state to the service manager (NOTIFY_SOCKET), if any.
func notify(log zerolog.Logger, state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		log.Warn().Err(err).Str("state", state).Msg("sd_notify failed")
	}
}

// watchdog feeds systemd's watchdog (WATCHDOG=1) at half the interval
// WATCHDOG_USEC asks for, as long as every loop runs a posted function
// within that half; it returns when ctx ends. Without WATCHDOG_USEC (or
// with a WATCHDOG_PID that is not ours) it returns at once.
func watchdog(ctx context.Context, log zerolog.Logger, d *daemon.Daemon) {
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn().Err(err).Msg("watchdog: bad WATCHDOG_USEC; not fed")
		return
	}
	if interval <= 0 {
		return
	}
	every := interval / 2
	log.Debug().Dur("every", every).Msg("watchdog: feeding")
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, every)
		err := d.LoopsAlive(cctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			log.Error().Err(err).Msg("watchdog: not fed")
		} else {
			notify(log, sd.SdNotifyWatchdog)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// writePidfile writes the daemon's pid to path (through a temporary file
// renamed into place, so that a reader never sees it half written).
func writePidfile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("pidfile: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pidfile: %w", err)
	}
	return nil
}

// removePidfile removes path if it still holds our pid.
func removePidfile(path string) {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		os.Remove(path)
	}
}
