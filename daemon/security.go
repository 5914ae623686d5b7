package daemon

import (
	"crypto/tls"
	"fmt"
	"net"
	"os/user"
	"strconv"

	"udm/nbd/tlsdir"
	"udm/nbd/wire"
)

// nbdTLS loads the NBD server's TLS configuration.
func (cfg *Config) nbdTLS() (wire.TLSMode, *tls.Config, error) {
	if cfg.TLS == wire.TLSOff {
		if cfg.TLSCertificates != "" || cfg.TLSVerifyPeer {
			return 0, nil, fmt.Errorf("nbd: TLS certificates or peer verification given, but TLS is off (--tls on or require)")
		}
		return wire.TLSOff, nil, nil
	}
	if cfg.TLSCertificates == "" {
		return 0, nil, fmt.Errorf("nbd: TLS %s needs a certificate directory (--tls-certificates DIR)", cfg.TLS)
	}
	tc, err := tlsdir.Server(cfg.TLSCertificates, cfg.TLSVerifyPeer)
	if err != nil {
		return 0, nil, fmt.Errorf("nbd: %w", err)
	}
	return cfg.TLS, tc, nil
}

// listenNBDUnix binds the NBD Unix socket: 0600, or 0660 owned by group
// (a name or a number).
func listenNBDUnix(path, group string) (net.Listener, error) {
	if group == "" {
		return listenUnixGroup(path, 0o600, -1, "NBD socket")
	}
	gid, err := lookupGroup(group)
	if err != nil {
		return nil, fmt.Errorf("NBD socket: %w", err)
	}
	return listenUnixGroup(path, 0o660, gid, "NBD socket")
}

func lookupGroup(group string) (int, error) {
	g, err := user.LookupGroup(group)
	if err != nil {
		if n, nerr := strconv.Atoi(group); nerr == nil && n >= 0 {
			return n, nil
		}
		return -1, err
	}
	return strconv.Atoi(g.Gid)
}

// loopbackOnly reports whether a listener's address reaches only this
// host.
func loopbackOnly(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return true // a Unix socket
	}
	return ta.IP.IsLoopback()
}

// warnExposed logs what listens beyond loopback without protection.
func (d *Daemon) warnExposed() {
	if d.nbdLn != nil && !loopbackOnly(d.nbdLn.Addr()) {
		switch d.cfg.TLS {
		case wire.TLSOff:
			d.log.Warn().Str("nbd", d.nbdLn.Addr().String()).
				Msg("NBD listens beyond loopback without TLS: whoever reaches it can read and write every export (--tls require --tls-certificates DIR --tls-verify-peer)")
		case wire.TLSOn:
			d.log.Warn().Str("nbd", d.nbdLn.Addr().String()).
				Msg("NBD listens beyond loopback with TLS optional: plaintext clients are served too (--tls require)")
		default:
			if !d.cfg.TLSVerifyPeer {
				d.log.Warn().Str("nbd", d.nbdLn.Addr().String()).
					Msg("NBD listens beyond loopback without client certificates: any client can connect, encrypted (--tls-verify-peer)")
			}
		}
	}
	if d.metricsLn != nil && !loopbackOnly(d.metricsLn.Addr()) {
		d.log.Warn().Str("metrics", d.metricsLn.Addr().String()).
			Msg("metrics listen beyond loopback, in plaintext and without authentication")
		if d.cfg.PProf {
			d.log.Warn().Str("metrics", d.metricsLn.Addr().String()).
				Msg("the Go profiler (/debug/pprof/: CPU profiles, traces, goroutine dumps) is served beyond loopback")
		}
	}
}
