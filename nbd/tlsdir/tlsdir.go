// Package tlsdir loads TLS configurations for NBD from a certificate
// directory in the layout nbdkit, qemu and libnbd share:
//
//	ca-cert.pem                      the CA both peers trust
//	server-cert.pem, server-key.pem  the server's certificate and key
//	client-cert.pem, client-key.pem  the client's (optional)
//
// Pre-shared keys (GnuTLS's PSK) are not offered: Go's crypto/tls has
// no TLS-PSK cipher suites.
package tlsdir

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// File names in a certificate directory.
const (
	CACert     = "ca-cert.pem"
	ServerCert = "server-cert.pem"
	ServerKey  = "server-key.pem"
	ClientCert = "client-cert.pem"
	ClientKey  = "client-key.pem"
)

func loadCA(dir string) (*x509.CertPool, error) {
	b, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls: %s: no certificate in it", filepath.Join(dir, CACert))
	}
	return pool, nil
}

// Server is the server's configuration from dir. verifyPeer requires
// every client to present a certificate signed by dir's CA; without it
// client certificates are not asked for (anyone may connect, the
// traffic is encrypted).
func Server(dir string, verifyPeer bool) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey))
	if err != nil {
		return nil, fmt.Errorf("tls: server certificate in %s: %w", dir, err)
	}
	cfg := &tls.Config{
		Certificates:                []tls.Certificate{cert},
		MinVersion:                  tls.VersionTLS12,
		DynamicRecordSizingDisabled: true,
	}
	if verifyPeer {
		pool, err := loadCA(dir)
		if err != nil {
			return nil, err
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// Client is the client's configuration from dir for a server reached as
// host (its certificate must name it). The client's certificate is
// presented when dir has one.
func Client(dir, host string) (*tls.Config, error) {
	pool, err := loadCA(dir)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS12, DynamicRecordSizingDisabled: true}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, ClientCert), filepath.Join(dir, ClientKey))
	switch {
	case err == nil:
		cfg.Certificates = []tls.Certificate{cert}
	case errors.Is(err, fs.ErrNotExist):
		if _, serr := os.Stat(filepath.Join(dir, ClientCert)); serr == nil {
			return nil, fmt.Errorf("tls: client certificate in %s: %w", dir, err)
		}
		// No client certificate: anonymous unless the server insists.
	default:
		return nil, fmt.Errorf("tls: client certificate in %s: %w", dir, err)
	}
	return cfg, nil
}
