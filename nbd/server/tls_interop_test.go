package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

// runErr runs a tool and returns its output and error.
func runErr(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// qemuArgs are qemu-io/qemu-img arguments for export d of ts over TLS
// with the certificates of dir (nil dir: plaintext).
func (ts *tlsServer) qemuArgs(dir string, unix bool) []string {
	host, port, _ := net.SplitHostPort(ts.tcp)
	opts := "driver=nbd,export=d,host=" + host + ",port=" + port
	if unix {
		opts = "driver=nbd,export=d,path=" + ts.unix
	}
	if dir == "" {
		return []string{"--image-opts", opts}
	}
	opts += ",tls-creds=tls0"
	if unix {
		opts += ",tls-hostname=localhost" // qemu has no host name to check otherwise
	}
	return []string{"--object", "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir, "--image-opts", opts}
}

// qemu-io, qemu-img convert, nbdinfo and nbdcopy against a server that
// requires TLS and client certificates: with a certificate of the CA
// they work (data round trips), without one, with another CA's, or in
// plaintext they are refused.
func TestTLSInteropVerifyPeer(t *testing.T) {
	testutil.RequireTool(t, "qemu-io")
	testutil.RequireTool(t, "qemu-img")
	testutil.RequireTool(t, "nbdinfo")
	testutil.RequireTool(t, "nbdcopy")
	ts := newTLSServer(t, wire.TLSRequire, true)
	ts.linear("d2", 8<<20) // not used: a second export to list
	dir := t.TempDir()

	for _, unix := range []bool{false, true} {
		args := append(ts.qemuArgs(ts.certs.Client, unix), "-c", "write -P 0x5a 0 1M", "-c", "read -P 0x5a 0 1M")
		if out, err := runErr("qemu-io", args...); err != nil || !strings.Contains(out, "read 1048576/1048576") {
			t.Errorf("qemu-io with a client certificate (unix %v): %v\n%s", unix, err, out)
		}
	}
	refused := map[string][]string{
		"no client certificate":    ts.qemuArgs(ts.certs.Anon, false),
		"another CA's certificate": ts.qemuArgs(ts.other.Client, false),
		"plaintext":                ts.qemuArgs("", false),
	}
	for name, args := range refused {
		if out, err := runErr("qemu-io", append(args, "-c", "read 0 4k")...); err == nil {
			t.Errorf("qemu-io with %s: served\n%s", name, out)
		}
	}

	// qemu-img convert there and back.
	src := filepath.Join(dir, "src.img")
	data := make([]byte, 8<<20)
	rand.Read(data)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	to := ts.qemuArgs(ts.certs.Client, false)
	if out, err := runErr("qemu-img", "convert", "-n", "-f", "raw", to[0], to[1], "--target-image-opts", src, to[3]); err != nil {
		t.Fatalf("qemu-img convert to udm: %v\n%s", err, out)
	}
	back := filepath.Join(dir, "back.img")
	if out, err := runErr("qemu-img", append([]string{"convert"}, append(to, "-O", "raw", back)...)...); err != nil {
		t.Fatalf("qemu-img convert from udm: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got[:len(data)], data) {
		t.Error("qemu-img round trip: data differs")
	}

	// nbdcopy there and back, nbdinfo.
	uri := "nbds://" + ts.tcp + "/d?tls-certificates=" + ts.certs.Client
	rand.Read(data)
	os.WriteFile(src, data, 0o600)
	if out, err := runErr("nbdcopy", src, uri); err != nil {
		t.Fatalf("nbdcopy to udm: %v\n%s", err, out)
	}
	back2 := filepath.Join(dir, "back2.img")
	if out, err := runErr("nbdcopy", "nbds+unix:///d?socket="+ts.unix+"&tls-certificates="+ts.certs.Client, back2); err != nil {
		t.Fatalf("nbdcopy from udm: %v\n%s", err, out)
	}
	if got, _ := os.ReadFile(back2); len(got) < len(data) || !bytes.Equal(got[:len(data)], data) {
		t.Error("nbdcopy round trip: data differs")
	}
	if out, err := runErr("nbdinfo", uri); err != nil || !strings.Contains(out, "with TLS") {
		t.Errorf("nbdinfo with a client certificate: %v\n%s", err, out)
	}
	for name, u := range map[string]string{
		"no client certificate":    "nbds://" + ts.tcp + "/d?tls-certificates=" + ts.certs.Anon,
		"another CA's certificate": "nbds://" + ts.tcp + "/d?tls-certificates=" + ts.other.Client,
		"plaintext":                "nbd://" + ts.tcp + "/d",
	} {
		if out, err := runErr("nbdinfo", u); err == nil {
			t.Errorf("nbdinfo with %s: served\n%s", name, out)
		}
	}
	if out, err := runErr("nbdcopy", src, "nbd://"+ts.tcp+"/d"); err == nil {
		t.Errorf("nbdcopy in plaintext: served\n%s", out)
	}
}

// Without --tls-verify-peer a client without a certificate is served
// over TLS (qemu-io, nbdinfo), and a client that doesn't trust the
// server's CA refuses it.
func TestTLSInteropNoClientCert(t *testing.T) {
	testutil.RequireTool(t, "qemu-io")
	testutil.RequireTool(t, "nbdinfo")
	ts := newTLSServer(t, wire.TLSRequire, false)
	args := append(ts.qemuArgs(ts.certs.Anon, false), "-c", "write -P 0x33 4096 64k", "-c", "read -P 0x33 4096 64k")
	if out, err := runErr("qemu-io", args...); err != nil || !strings.Contains(out, "read 65536/65536") {
		t.Errorf("qemu-io without a client certificate: %v\n%s", err, out)
	}
	if out, err := runErr("nbdinfo", "nbds+unix:///d?socket="+ts.unix+"&tls-certificates="+ts.certs.Anon); err != nil || !strings.Contains(out, "with TLS") {
		t.Errorf("nbdinfo without a client certificate: %v\n%s", err, out)
	}
	if out, err := runErr("nbdinfo", "nbds://"+ts.tcp+"/d?tls-certificates="+ts.other.Anon); err == nil {
		t.Errorf("nbdinfo trusting another CA: served\n%s", out)
	}
	if out, err := runErr("qemu-io", append(ts.qemuArgs(ts.other.Anon, false), "-c", "read 0 4k")...); err == nil {
		t.Errorf("qemu-io trusting another CA: served\n%s", out)
	}
}
