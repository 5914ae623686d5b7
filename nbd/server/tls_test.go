package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"udm/internal/testcerts"
	"udm/internal/testutil"
	nbdclient "udm/nbd/client"
	"udm/nbd/tlsdir"
	"udm/nbd/wire"
)

// tlsServer is a test server with TLS in mode, its certificates, and a
// device "d" of 16 MiB in memory.
type tlsServer struct {
	*testServer
	certs testcerts.Dirs
	other testcerts.Dirs // another CA's
}

func newTLSServer(t *testing.T, mode wire.TLSMode, verifyPeer bool) *tlsServer {
	t.Helper()
	root := t.TempDir()
	certs, err := testcerts.Write(root)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := testcerts.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	other, err := ca.Write(filepath.Join(root, "other"))
	if err != nil {
		t.Fatal(err)
	}
	tc, err := tlsdir.Server(certs.Server, verifyPeer)
	if err != nil {
		t.Fatal(err)
	}
	ts := newTestServer(t, 2, Config{TLSMode: mode, TLS: tc})
	ts.memDisk("d", 16<<20)
	return &tlsServer{testServer: ts, certs: certs, other: other}
}

func (ts *tlsServer) uri(dir string, unix bool) string {
	if unix {
		return "nbds+unix:///d?socket=" + ts.unix + "&tls-certificates=" + dir
	}
	return "nbds://" + ts.tcp + "/d?tls-certificates=" + dir
}

func dialNBD(uri string) (*nbdclient.Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return nbdclient.Dial(ctx, uri, nbdclient.Options{DialTimeout: 20 * time.Second, ReconnectTimeout: -1, Retries: -1})
}

// roundTrip writes and reads back, from several goroutines at once,
// requests of 4 KiB up to 4 MiB (more than a TLS record and than the
// relay's buffers).
func roundTrip(t *testing.T, c *nbdclient.Client) {
	t.Helper()
	if !c.Info().TLS {
		t.Errorf("connection not over TLS")
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			base := int64(g) * (2 << 20)
			for i := range 24 {
				n := 4096 << rng.IntN(6) // 4 KiB .. 128 KiB
				if g == 0 && i%8 == 0 {
					n = 2 << 20
				}
				off := base + int64(rng.IntN((2<<20-n)/4096+1))*4096
				w := make([]byte, n)
				for j := range w {
					w[j] = byte(g*31 + i + j)
				}
				if err := c.WriteAt(ctx, w, off, false); err != nil {
					errs <- fmt.Errorf("write %d at %d: %w", n, off, err)
					return
				}
				r := make([]byte, n)
				if err := c.ReadAt(ctx, r, off); err != nil {
					errs <- fmt.Errorf("read %d at %d: %w", n, off, err)
					return
				}
				if !bytes.Equal(r, w) {
					errs <- fmt.Errorf("read %d at %d: data differs", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	big := bytes.Repeat([]byte{0xa5}, 4<<20)
	if err := c.WriteAt(ctx, big, 12<<20, true); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(big))
	if err := c.ReadAt(ctx, got, 12<<20); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("4 MiB read back: %v, equal %v", err, bytes.Equal(got, big))
	}
}

// Under TLS require, clients with certificates of the CA are served over
// TCP and Unix sockets; a plaintext client is refused (TLS_REQD) before
// it sees an export.
func TestTLSRequire(t *testing.T) {
	ts := newTLSServer(t, wire.TLSRequire, false)
	for _, unix := range []bool{false, true} {
		for _, dir := range []string{ts.certs.Client, ts.certs.Anon} {
			c, err := dialNBD(ts.uri(dir, unix))
			if err != nil {
				t.Fatalf("unix %v, %s: %v", unix, filepath.Base(dir), err)
			}
			roundTrip(t, c)
			c.Close()
		}
	}
	for _, uri := range []string{"nbd://" + ts.tcp + "/d", "nbd+unix:///d?socket=" + ts.unix} {
		if c, err := dialNBD(uri); !errors.Is(err, syscall.EPROTONOSUPPORT) {
			if c != nil {
				c.Close()
			}
			t.Errorf("plaintext %s: %v, want TLS required", uri, err)
		}
	}
	rc := dialRaw(t, ts.unix)
	rc.option(wire.OptGo, wire.AppendGoRequest(nil, wire.GoRequest{Name: "d"}))
	if r, _ := rc.optReply(); r.Type != wire.RepErrTLSReqd {
		t.Errorf("plaintext GO: reply %+v, want TLS_REQD", r)
	}
	rc.option(wire.OptExportName, []byte("d"))
	if !rc.closed() {
		t.Errorf("plaintext EXPORT_NAME: connection not closed")
	}
	// A client that trusts another CA refuses the server.
	if c, err := dialNBD(ts.uri(ts.other.Client, false)); err == nil {
		c.Close()
		t.Errorf("a client of another CA accepted the server's certificate")
	}
	testutil.Eventually(t, "the TLS connections are gone", func() bool { return ts.active() == 0 })
}

// active counts the connections in the transmission phase.
func (ts *tlsServer) active() int { return int(ts.srv.Stats().Active.Load()) }

// With --tls-verify-peer only clients with a certificate of the CA get
// through the TLS handshake.
func TestTLSVerifyPeer(t *testing.T) {
	ts := newTLSServer(t, wire.TLSRequire, true)
	c, err := dialNBD(ts.uri(ts.certs.Client, true))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
	c.Close()
	for name, dir := range map[string]string{"no certificate": ts.certs.Anon, "another CA's certificate": ts.other.Client} {
		// The other CA's client also distrusts the server: give it ours
		// to trust and keep its own certificate.
		cfg, err := tlsdir.Client(dir, "localhost")
		if err != nil {
			t.Fatal(err)
		}
		ours, err := tlsdir.Client(ts.certs.Anon, "localhost")
		if err != nil {
			t.Fatal(err)
		}
		cfg.RootCAs = ours.RootCAs
		if err := rawTLSGo(t, ts.unix, cfg); err == nil {
			t.Errorf("%s: served", name)
		}
	}
	// The server counts a refusal after the client has seen it: wait for
	// the count.
	testutil.Eventually(t, "the two refusals counted as handshake errors", func() bool {
		return ts.srv.Stats().HandshakeErr.Load() >= 2
	})
}

// rawTLSGo starts TLS on a raw connection and asks for export d: nil if
// it gets to the transmission phase.
func rawTLSGo(t *testing.T, sock string, cfg *tls.Config) error {
	rc := dialRaw(t, sock)
	rc.option(wire.OptStartTLS, nil)
	if r, _ := rc.optReply(); r.Type != wire.RepAck {
		return fmt.Errorf("STARTTLS: %+v", r)
	}
	tc := tls.Client(rc.c, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	data := wire.AppendGoRequest(nil, wire.GoRequest{Name: "d"})
	b := make([]byte, wire.OptionHeaderSize, wire.OptionHeaderSize+len(data))
	wire.PutOptionHeader(b, wire.OptGo, uint32(len(data)))
	if _, err := tc.Write(append(b, data...)); err != nil {
		return err // the refusal of the certificate may arrive here
	}
	var hdr [wire.OptReplyHeaderLen]byte
	if _, err := readFull(tc, hdr[:]); err != nil {
		return err // or here (TLS 1.3: the server checks it after the client is done)
	}
	return nil
}

func readFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := c.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Under TLS on, plaintext and TLS clients are both served.
func TestTLSOptional(t *testing.T) {
	ts := newTLSServer(t, wire.TLSOn, false)
	c, err := dialNBD("nbd://" + ts.tcp + "/d")
	if err != nil {
		t.Fatal(err)
	}
	if c.Info().TLS {
		t.Error("plaintext client reports TLS")
	}
	c.Close()
	c, err = dialNBD(ts.uri(ts.certs.Anon, false))
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
	c.Close()
}

// Close ends TLS connections whose client neither sends nor reads.
func TestTLSCloseWithClients(t *testing.T) {
	ts := newTLSServer(t, wire.TLSRequire, false)
	var cs []*nbdclient.Client
	for range 3 {
		c, err := dialNBD(ts.uri(ts.certs.Client, false))
		if err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	testutil.Eventually(t, "three TLS connections", func() bool { return ts.active() == 3 })
	ts.srv.Close()
	if n := ts.active(); n != 0 {
		t.Errorf("%d connections left after Close", n)
	}
	for _, c := range cs {
		err := c.ReadAt(context.Background(), make([]byte, 4096), 0)
		if err == nil {
			t.Error("a read succeeded after the server closed")
		}
		c.Close()
	}
}

// Close returns while a TLS client pipelines reads and reads no reply
// (its replies back up in the socket).
func TestTLSCloseStuckClient(t *testing.T) {
	ts := newTLSServer(t, wire.TLSRequire, false)
	rc := dialRaw(t, ts.unix)
	rc.option(wire.OptStartTLS, nil)
	if r, _ := rc.optReply(); r.Type != wire.RepAck {
		t.Fatalf("STARTTLS: %+v", r)
	}
	cfg, err := tlsdir.Client(ts.certs.Anon, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(rc.c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	rc.c = tc
	rc.goExport("d", false)
	var req [wire.RequestSize]byte
	for i := range 64 {
		wire.Request{Type: wire.CmdRead, Cookie: uint64(i), Offset: 0, Length: 1 << 20}.Encode(req[:])
		rc.write(req[:])
	}
	testutil.Eventually(t, "replies backed up", func() bool {
		return ts.srv.Stats().Requests.Load() >= 8 && ts.active() == 1
	})
	done := make(chan struct{})
	go func() { ts.srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(testutil.Patience):
		t.Fatal("Close hangs on a TLS client that reads nothing")
	}
	if n := ts.active(); n != 0 {
		t.Errorf("%d connections left", n)
	}
}
