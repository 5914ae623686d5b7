package api

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

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
//   - NBD over a Unix socket: next to the control socket (NBDUnixFor);
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
	case getenv("XDG_RUNTIME_DIR") != "":
		p.Control = filepath.Join(getenv("XDG_RUNTIME_DIR"), "udm", "control.sock")
	default:
		p.Control = filepath.Join(p.StateDir, "control.sock")
	}
	p.NBDUnix = NBDUnixFor(p.Control)
	return p
}

// NBDUnixFor is the default NBD Unix socket of a daemon whose control
// socket is control: nbd.sock in the same directory when the control
// socket is called control.sock, else the control socket's name with
// .nbd before its .sock (ctl.sock: ctl.nbd.sock). Two daemons with
// different control sockets so get different NBD sockets.
func NBDUnixFor(control string) string {
	dir, base := filepath.Split(control)
	if base == "control.sock" {
		return filepath.Join(dir, "nbd.sock")
	}
	return filepath.Join(dir, strings.TrimSuffix(base, ".sock")+".nbd.sock")
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
