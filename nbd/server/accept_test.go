package server

import (
	"encoding/binary"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

// emfileListener fails its first n Accepts with EMFILE, as a listener of
// a process out of file descriptors does.
type emfileListener struct {
	net.Listener
	n atomic.Int32
}

func (l *emfileListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

func TestAcceptOutOfFilesBacksOffAndLogsOnce(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	ts.linear("d", 1<<20)
	var logs testutil.SyncBuffer
	srv, err := New(Config{Exports: RegistryExports(ts.reg, ""), Loops: ts.loops, Log: zerolog.New(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &emfileListener{Listener: inner}
	ln.n.Store(6)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-served; err != ErrClosed {
			t.Errorf("Serve returned %v, want ErrClosed", err)
		}
	})

	// The connection waits in the backlog through the failures and is
	// then served: its greeting arrives.
	nc, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	greet := make([]byte, 8)
	if _, err := io.ReadFull(nc, greet); err != nil {
		t.Fatal(err)
	}
	if binary.BigEndian.Uint64(greet) != wire.NBDMagic {
		t.Fatalf("greeting %q", greet)
	}
	testutil.Eventually(t, "the recovery logged", func() bool { return strings.Contains(logs.String(), "accept works again") })
	out := logs.String()
	if n := strings.Count(out, "accept failed"); n != 1 {
		t.Errorf("%d accept-failure lines for one episode of 6 failures, want 1:\n%s", n, out)
	}
	if !strings.Contains(out, "too many open files") || !strings.Contains(out, `"failures":6`) {
		t.Errorf("log lacks the error or the count:\n%s", out)
	}
}
