package daemon

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/rs/zerolog"
)

// Config configures a Daemon (the flags of `udm serve`).
type Config struct {
	// StateDir holds the device state files, the lock and the demo's
	// backing files.
	StateDir string
	// Control is the control API's Unix socket.
	Control string
	// NBD is the TCP address NBD is served on ("" disables TCP).
	NBD string
	// NBDUnix is the Unix socket NBD is served on ("" disables it).
	NBDUnix string
	// Metrics is the address of the Prometheus endpoint ("" disables it).
	Metrics string
	// Loops is the number of uring loops (default: the number of CPUs).
	Loops int
	// Spin is how long a loop that just did work polls for more before
	// sleeping (0: uring.DefaultSpin; negative: never). See uring.Config.
	Spin time.Duration
	// Gather is how long an NBD connection whose client keeps many
	// requests in flight lets them gather before taking them in (0:
	// server.DefaultGatherWindow; negative: never). See server.Config.
	Gather time.Duration
	// NoDemo skips the built-in demo device on a fresh state dir.
	NoDemo bool
	// Log is where the daemon logs; children carry "component".
	Log zerolog.Logger
	// Out receives the human-facing notes (how to reach the demo).
	Out interface{ Write([]byte) (int, error) }
}

// Paths are the defaults that both the daemon and the CLI use, so that
// a plain `udm ls` finds a plain `udm serve`.
type Paths struct {
	StateDir string
	Control  string
	NBD      string
	NBDUnix  string
	Metrics  string
	Loops    int
}

// DefaultNBD is where NBD is served by default (the IANA port).
const DefaultNBD = "127.0.0.1:10809"

// SuggestedMetrics is the metrics address the documentation suggests.
const SuggestedMetrics = "127.0.0.1:9810"

// Env names the environment variable that selects the control socket
// when --control isn't given.
const Env = "UDM_SOCKET"

// Defaults computes the default paths for the current user. stateDir, if
// not empty, is the state dir chosen on the command line: the paths that
// default to a place inside the state dir follow it.
func Defaults(stateDir string) Paths {
	home, _ := os.UserHomeDir()
	return defaultsFor(os.Geteuid(), os.Getenv, home, stateDir)
}

// defaultsFor is Defaults with its inputs spelled out (for tests).
//
//   - state dir: /var/lib/udm as root, else $XDG_STATE_HOME/udm, else
//     ~/.local/state/udm;
//   - control socket: /run/udm/control.sock as root, else
//     $XDG_RUNTIME_DIR/udm/control.sock, else <state dir>/control.sock;
//   - NBD over TCP: 127.0.0.1:10809;
//   - NBD over a Unix socket: /run/udm/nbd.sock as root, else
//     <state dir>/nbd.sock;
//   - metrics: off;
//   - loops: one per CPU.
func defaultsFor(uid int, getenv func(string) string, home, stateDir string) Paths {
	p := Paths{NBD: DefaultNBD, Loops: runtime.NumCPU(), StateDir: stateDir}
	if p.StateDir == "" {
		switch {
		case uid == 0:
			p.StateDir = "/var/lib/udm"
		case getenv("XDG_STATE_HOME") != "":
			p.StateDir = filepath.Join(getenv("XDG_STATE_HOME"), "udm")
		default:
			p.StateDir = filepath.Join(home, ".local", "state", "udm")
		}
	}
	switch {
	case uid == 0:
		p.Control = "/run/udm/control.sock"
		p.NBDUnix = "/run/udm/nbd.sock"
	case getenv("XDG_RUNTIME_DIR") != "":
		p.Control = filepath.Join(getenv("XDG_RUNTIME_DIR"), "udm", "control.sock")
		p.NBDUnix = filepath.Join(p.StateDir, "nbd.sock")
	default:
		p.Control = filepath.Join(p.StateDir, "control.sock")
		p.NBDUnix = filepath.Join(p.StateDir, "nbd.sock")
	}
	return p
}

// ControlSocket is the socket the CLI talks to: flag (if set), else
// $UDM_SOCKET, else the default.
func ControlSocket(flag string) string {
	if flag != "" {
		return flag
	}
	if s := os.Getenv(Env); s != "" {
		return s
	}
	return Defaults("").Control
}

// ParseLevel reads a --log-level value (trace, debug, info, warn, error).
func ParseLevel(s string) (zerolog.Level, error) {
	switch strings.ToLower(s) {
	case "trace":
		return zerolog.TraceLevel, nil
	case "debug":
		return zerolog.DebugLevel, nil
	case "", "info":
		return zerolog.InfoLevel, nil
	case "warn", "warning":
		return zerolog.WarnLevel, nil
	case "error":
		return zerolog.ErrorLevel, nil
	}
	return zerolog.NoLevel, fmt.Errorf("unknown log level %q (trace, debug, info, warn, error)", s)
}
