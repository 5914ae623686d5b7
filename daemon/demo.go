package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"udm/daemon/api"
	"udm/nbd/wire"
)

// The built-in demo: a 1 GiB multipath device "demo" whose two paths are
// two names (a file and a hard link to it) of one sparse file, so that
// both routes reach the same data as the paths of a real multipath disk
// do. Each path is opened, checked and failed on its own.
const (
	DemoName  = "demo"
	DemoSize  = 1 << 30
	demoPath0 = "demo-path0.img"
	demoPath1 = "demo-path1.img"
)

// DemoTable is the demo device's table for the paths p0 and p1.
func DemoTable(p0, p1 string) string {
	return fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 %s 1 %s 1\n",
		DemoSize>>9, p0, p1)
}

// createDemo makes the demo's backing file and device in the state dir.
func (d *Daemon) createDemo() error {
	p0 := filepath.Join(d.cfg.StateDir, demoPath0)
	p1 := filepath.Join(d.cfg.StateDir, demoPath1)
	f, err := os.OpenFile(p0, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := f.Truncate(DemoSize); err != nil {
		f.Close()
		return fmt.Errorf("demo: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := os.Link(p0, p1); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("demo: second path: %w", err)
	}
	if _, err := d.create(context.Background(), api.CreateRequest{Name: DemoName, Table: DemoTable(p0, p1)}); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}

// DemoHelp is what `udm serve` prints about the demo device: how to reach
// it with fio, qemu-io and nbdinfo. uri is the export's NBD URI and
// control the control socket (named when it isn't the default). tlsDir,
// when not empty, is the certificate directory of a server that requires
// TLS: the commands then use nbds:// URIs with libnbd's tls-certificates
// parameter (clients look for ca-cert.pem, and client-cert.pem and
// client-key.pem if the server verifies peers, in that directory), and
// qemu-io its tls-creds-x509 object.
func DemoHelp(uri, control, tlsDir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "udm: serving the demo device %q (1 GiB, multipath over two paths to one file) at %s\n", DemoName, uri)
	libnbdURI, qemuIO := uri, "qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'read -P 0x5a 0 1M' "+uri
	if tlsDir != "" {
		sep := "?"
		if strings.Contains(uri, "?") {
			sep = "&"
		}
		libnbdURI = uri + sep + "tls-certificates=" + tlsDir
		qemuIO = "qemu-io --object tls-creds-x509,id=tls0,endpoint=client,dir=" + tlsDir +
			" --image-opts -c 'write -P 0x5a 0 1M' -c 'read -P 0x5a 0 1M' " + qemuNBDOpts(uri) + ",tls-creds=tls0"
	}
	if strings.ContainsAny(libnbdURI, "?&") {
		libnbdURI = "'" + libnbdURI + "'" // for the shell
	}
	b.WriteString("try:\n")
	fioURI, fioNote := libnbdURI, ""
	if tlsDir != "" {
		// fio's nbd engine does not let a URI name local files.
		fioURI, fioNote = uri, "  # fio reads the CA from /etc/pki/libnbd (root) or ~/.pki/libnbd"
		if strings.Contains(uri, "?") {
			fioURI = "'" + uri + "'"
		}
	}
	fmt.Fprintf(&b, "  fio --name=demo --ioengine=nbd --uri=%s --rw=randrw --bs=4k --iodepth=16 --size=256m --verify=crc32c --verify_state_save=0%s\n", fioURI, fioNote)
	fmt.Fprintf(&b, "  %s\n", qemuIO)
	fmt.Fprintf(&b, "  nbdinfo %s\n", libnbdURI)
	udm := "udm"
	if control != api.Defaults("").Control {
		udm = "UDM_SOCKET=" + control + " udm"
	}
	fmt.Fprintf(&b, "  %s show topology; %s status demo\n", udm, udm)
	return b.String()
}

// printDemo prints DemoHelp if the demo device exists and is exported.
func (d *Daemon) printDemo() {
	if _, err := d.reg.Get(DemoName); err != nil {
		return
	}
	a := d.Addrs()
	scheme, tlsDir := "nbd", ""
	if d.cfg.TLS == wire.TLSRequire {
		scheme, tlsDir = "nbds", d.cfg.TLSCertificates
	}
	var uri string
	switch {
	case a.NBD != "":
		uri = scheme + "://" + a.NBD + "/" + DemoName
	case a.NBDUnix != "":
		uri = scheme + "+unix:///" + DemoName + "?socket=" + a.NBDUnix
	default:
		return
	}
	fmt.Fprint(d.cfg.Out, DemoHelp(uri, a.Control, tlsDir))
}

// qemuNBDOpts is qemu's --image-opts for an nbd:// or nbds:// URI (TCP
// or Unix) of the demo export.
func qemuNBDOpts(uri string) string {
	if i := strings.Index(uri, "?socket="); i >= 0 {
		return "driver=nbd,server.type=unix,server.path=" + uri[i+len("?socket="):] + ",export=" + DemoName
	}
	hostport := strings.TrimPrefix(strings.TrimPrefix(uri, "nbds://"), "nbd://")
	hostport = strings.TrimSuffix(hostport, "/"+DemoName)
	host, port, _ := net.SplitHostPort(hostport)
	return "driver=nbd,server.type=inet,server.host=" + host + ",server.port=" + port + ",export=" + DemoName
}
