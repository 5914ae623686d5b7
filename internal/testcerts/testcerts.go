// Package testcerts writes a certificate directory in the layout NBD
// peers use (nbdkit, qemu, libnbd, udm): ca-cert.pem, server-cert.pem,
// server-key.pem, client-cert.pem, client-key.pem. The certificates are
// what GnuTLS clients accept: a CA with basic constraints and the
// cert-sign key usage, leaves with digital-signature and
// key-encipherment usages, the server's naming 127.0.0.1, ::1 and
// localhost (plus any extra hosts). For tests and drills only.
package testcerts

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// CA is a certificate authority that can sign leaves.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

// NewCA makes a self-signed CA called name.
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := template(name)
	tmpl.IsCA = true
	tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: pemBlock("CERTIFICATE", der)}, nil
}

// template is a certificate for cn, valid from an hour ago for ten
// years, with a fresh serial number.
func template(cn string) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"udm test"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		BasicConstraintsValid: true,
	}
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n.Add(n, big.NewInt(1))
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// Leaf signs a certificate for a server (hosts are its names: IP
// addresses or DNS names) or a client; it returns the certificate and
// key in PEM.
func (ca *CA) Leaf(cn string, server bool, hosts ...string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := template(cn)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", kder), nil
}

// Dirs are certificate directories made by Write.
type Dirs struct {
	// Server has ca-cert.pem, server-cert.pem and server-key.pem.
	Server string
	// Client has ca-cert.pem, client-cert.pem and client-key.pem.
	Client string
	// Anon has only ca-cert.pem: a client without a certificate.
	Anon string
}

// Write makes a CA and, under root, the directories server/, client/
// and anon/ signed by it. The server's certificate names 127.0.0.1,
// ::1, localhost and extraHosts.
func Write(root string, extraHosts ...string) (Dirs, error) {
	ca, err := NewCA("udm test CA")
	if err != nil {
		return Dirs{}, err
	}
	return ca.Write(root, extraHosts...)
}

// Write is the package Write with the CA given.
func (ca *CA) Write(root string, extraHosts ...string) (Dirs, error) {
	d := Dirs{Server: filepath.Join(root, "server"), Client: filepath.Join(root, "client"), Anon: filepath.Join(root, "anon")}
	scert, skey, err := ca.Leaf("localhost", true, append([]string{"127.0.0.1", "::1", "localhost"}, extraHosts...)...)
	if err != nil {
		return d, err
	}
	ccert, ckey, err := ca.Leaf("udm test client", false)
	if err != nil {
		return d, err
	}
	files := map[string][]byte{
		filepath.Join(d.Server, "ca-cert.pem"):     ca.PEM,
		filepath.Join(d.Server, "server-cert.pem"): scert,
		filepath.Join(d.Server, "server-key.pem"):  skey,
		filepath.Join(d.Client, "ca-cert.pem"):     ca.PEM,
		filepath.Join(d.Client, "client-cert.pem"): ccert,
		filepath.Join(d.Client, "client-key.pem"):  ckey,
		filepath.Join(d.Anon, "ca-cert.pem"):       ca.PEM,
	}
	for _, dir := range []string{d.Server, d.Client, d.Anon} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return d, err
		}
	}
	for p, b := range files {
		mode := os.FileMode(0o644)
		if strings.HasSuffix(p, "-key.pem") {
			mode = 0o600
		}
		if err := os.WriteFile(p, b, mode); err != nil {
			return d, fmt.Errorf("testcerts: %w", err)
		}
	}
	return d, nil
}
