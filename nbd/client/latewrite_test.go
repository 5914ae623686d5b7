package client

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"udm/internal/testcerts"
	"udm/nbd/tlsdir"
	"udm/nbd/wire"
)

// A write that passes its deadline while on the wire must not be able to
// reach the server later (after a multipath retry elsewhere and newer
// data): its connection is reset, which drops what the kernel hasn't
// sent, and the client carries on over a new connection. A read that
// times out keeps its connection (its late reply is harmless).
func TestClientTimedOutWriteResetsConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &ctFake{t: t, ln: ln, uri: "nbd://" + ln.Addr().String() + "/", size: 1 << 20,
		flags: wire.TFlagHasFlags | wire.TFlagSendFlush | wire.TFlagSendFUA | wire.TFlagSendTrim | wire.TFlagSendWriteZeroes}
	f.data = make([]byte, f.size)
	var mu sync.Mutex
	var hung net.Conn // the connection whose write got no reply
	release := make(chan struct{})
	f.handle = func(fc *ctFakeConn, req wire.Request, payload []byte) {
		switch {
		case fc.idx == 1 && req.Offset == 4096 && req.Type == wire.CmdRead:
			return // never answered
		case fc.idx == 1 && req.Offset == 4096 && req.Type == wire.CmdWrite:
			// Never answered, and the connection is not read any more
			// (the test reads it to see how it ended).
			mu.Lock()
			hung = fc.nc
			mu.Unlock()
			<-release
			return
		}
		fc.memory(req, payload)
	}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		close(release)
		f.ln.Close()
		f.mu.Lock()
		for _, c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
	})
	c := ctDial(t, f.uri, Options{})
	ctx := ctCtx(t)

	// A read times out: same connection afterwards.
	col := newCollector(1)
	c.Start(Request{Cmd: wire.CmdRead, Offset: 4096, Buf: make([]byte, 4096), Timeout: 50 * time.Millisecond}, col, 0)
	col.wait(t)
	if err := col.errs[0]; !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("read: %v, want ETIMEDOUT", err)
	}
	if err := c.ReadAt(ctx, make([]byte, 512), 0); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Reconnects != 0 {
		t.Fatalf("a timed-out read cost the connection: %+v", st)
	}

	// A write times out: the connection is reset and replaced.
	col = newCollector(1)
	c.Start(Request{Cmd: wire.CmdWrite, Offset: 4096, Buf: make([]byte, 4096), Timeout: 50 * time.Millisecond}, col, 0)
	col.wait(t)
	if err := col.errs[0]; !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("write: %v, want ETIMEDOUT", err)
	}
	if err := c.WriteAt(ctx, make([]byte, 512), 0, false); err != nil {
		t.Fatalf("write on the next connection: %v", err)
	}
	if st := c.Stats(); st.Reconnects != 1 {
		t.Fatalf("stats %+v: want one reconnection", st)
	}
	// The server's end of the first connection was reset, not closed in
	// order: a reset is what throws away unsent data.
	mu.Lock()
	old := hung
	mu.Unlock()
	old.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.Copy(io.Discard, old)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server end of the old connection: %v, want ECONNRESET", err)
	}
}

// Under TLS too, abort resets the TCP connection under the tls.Conn (a
// reset drops unsent data; an orderly close would deliver it), without
// waiting to send a close_notify.
func TestAbortResetsTLSConnection(t *testing.T) {
	certs, err := testcerts.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	scfg, err := tlsdir.Server(certs.Server, false)
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := tlsdir.Client(certs.Anon, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan error, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer nc.Close()
		sc := tls.Server(nc, scfg)
		sc.SetDeadline(time.Now().Add(20 * time.Second))
		_, err = io.Copy(io.Discard, sc)
		got <- err
	}()
	nc, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(nc, ccfg)
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	tc.Write([]byte("x"))
	cc := &clientConn{nc: tc, dead: make(chan struct{})}
	cc.abort(errors.New("test"))
	if err := <-got; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server end after abort: %v, want ECONNRESET", err)
	}
}
