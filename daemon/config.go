package daemon

import (
	"fmt"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"udm/nbd/server"
	"udm/nbd/wire"
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
	// NBDUnix is the Unix socket NBD is served on ("" disables it). It
	// is mode 0600 (root, or the daemon's user, only) unless
	// NBDUnixGroup names a group: then 0660 and owned by that group.
	NBDUnix      string
	NBDUnixGroup string
	// TLS is NBD's TLS mode (wire.TLSOff, TLSOn: STARTTLS offered,
	// TLSRequire: nothing is served without it), with the certificates
	// from the directory TLSCertificates (ca-cert.pem, server-cert.pem,
	// server-key.pem; see package tlsdir). TLSVerifyPeer requires a
	// client certificate signed by the CA.
	TLS             wire.TLSMode
	TLSCertificates string
	TLSVerifyPeer   bool
	// PProf serves the Go profiler (/debug/pprof/) on the metrics
	// listener.
	PProf bool
	// Metrics is the address of the Prometheus endpoint ("" disables it).
	Metrics string
	// FUSE is a directory where every device is served to the kernel as
	// a file of its size, through a FUSE mount ("" disables it). See
	// package fuse.
	FUSE string
	// Loops is the number of uring loops (default: the number of CPUs).
	Loops int
	// Spin is how long a loop that just did work polls for more before
	// sleeping (0: uring.DefaultSpin; negative: never). See uring.Config.
	Spin time.Duration
	// Slice is the scheduler time slice a loop's thread asks for (0:
	// uring.DefaultSlice; negative: the kernel's). See uring.Config.
	Slice time.Duration
	// Nice is the nice value a loop's thread asks for (0:
	// uring.DefaultNice; uring.NiceKeep: the daemon's). See uring.Config.
	Nice int
	// Gather is how long an NBD connection whose client keeps many
	// requests in flight lets them gather before taking them in (0:
	// server.DefaultGatherWindow; negative: never). See server.Config.
	Gather time.Duration
	// ConfigFile is the configuration file (see conffile.go; "" for
	// none). It is applied at start, and again on Reconfigure.
	ConfigFile string
	// ConfigOptional: a ConfigFile that doesn't exist is no error (the
	// default file).
	ConfigOptional bool
	// NBDLimits bound what NBD clients may take: memory, connections,
	// time (zero fields: the defaults; see server.Limits).
	NBDLimits server.Limits
	// NoDemo skips the built-in demo device on a fresh state dir.
	NoDemo bool
	// Log is where the daemon logs; children carry "component".
	Log zerolog.Logger
	// Out receives the human-facing notes (how to reach the demo).
	Out interface{ Write([]byte) (int, error) }
	// Listeners are sockets bound already (systemd's socket activation
	// passes them): each one set is served instead of binding its
	// address, and its socket file is left in place at exit.
	Listeners Listeners
	// Ready, if set, is called once everything serves; Stopping when
	// the shutdown starts.
	Ready, Stopping func()
}

// SuggestedMetrics is the metrics address the documentation suggests.
const SuggestedMetrics = "127.0.0.1:9810"

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
