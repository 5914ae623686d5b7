package tlsdir

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"testing"

	"udm/internal/testcerts"
)

func TestLoad(t *testing.T) {
	d, err := testcerts.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s, err := Server(d.Server, false)
	if err != nil || s.ClientAuth != tls.NoClientCert || len(s.Certificates) != 1 {
		t.Fatalf("server without peer verification: %v %+v", err, s)
	}
	s, err = Server(d.Server, true)
	if err != nil || s.ClientAuth != tls.RequireAndVerifyClientCert || s.ClientCAs == nil {
		t.Fatalf("server with peer verification: %v", err)
	}
	if _, err := Server(d.Client, false); err == nil {
		t.Error("a directory without server-cert.pem accepted")
	}
	c, err := Client(d.Client, "h")
	if err != nil || len(c.Certificates) != 1 || c.ServerName != "h" || c.RootCAs == nil {
		t.Fatalf("client with a certificate: %v", err)
	}
	c, err = Client(d.Anon, "h")
	if err != nil || len(c.Certificates) != 0 {
		t.Fatalf("client without a certificate: %v", err)
	}
	if _, err := Client(d.Server, "h"); err != nil {
		t.Errorf("a directory with a CA and no client certificate: %v", err)
	}
	// A certificate without its key, and a CA file without certificates.
	os.Remove(filepath.Join(d.Client, ClientKey))
	if _, err := Client(d.Client, "h"); err == nil {
		t.Error("a client certificate without its key accepted")
	}
	os.WriteFile(filepath.Join(d.Anon, CACert), []byte("nothing"), 0o644)
	if _, err := Client(d.Anon, "h"); err == nil {
		t.Error("an empty CA file accepted")
	}
	if _, err := Client(t.TempDir(), "h"); err == nil {
		t.Error("a directory without ca-cert.pem accepted")
	}
}
