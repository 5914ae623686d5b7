package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/internal/testutil"
)

// controlOn serves h with lim on a fresh Unix socket and returns its path.
func controlOn(t *testing.T, h http.Handler, lim controlLimits) string {
	sock, _ := controlOnConns(t, h, lim)
	return sock
}

// controlOnConns is controlOn, also returning the server's side of each
// connection it accepts, as a conn whose deadlines the test can make pass.
func controlOnConns(t *testing.T, h http.Handler, lim controlLimits) (string, <-chan *deadlineConn) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan *deadlineConn, 4)
	srv := controlServer(h, context.Background(), zerolog.Nop(), lim)
	go srv.Serve(deadlineListener{ln, conns})
	t.Cleanup(func() { srv.Close() })
	return sock, conns
}

// deadlineListener hands the server deadlineConns and the test a copy.
type deadlineListener struct {
	net.Listener
	conns chan<- *deadlineConn
}

func (l deadlineListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	dc := &deadlineConn{Conn: c}
	select {
	case l.conns <- dc:
	default:
	}
	return dc, nil
}

// deadlineConn remembers the read and write deadlines set on it; pass
// makes those set now pass at once, as if their time had come (a zero
// deadline, none, stays none).
type deadlineConn struct {
	net.Conn
	mu          sync.Mutex
	read, write time.Time
}

func (c *deadlineConn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read, c.write = t, t
	return c.Conn.SetDeadline(t)
}

func (c *deadlineConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.read = t
	return c.Conn.SetReadDeadline(t)
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.write = t
	return c.Conn.SetWriteDeadline(t)
}

func (c *deadlineConn) pass() {
	c.mu.Lock()
	defer c.mu.Unlock()
	past := time.Unix(1, 0)
	if !c.read.IsZero() {
		c.Conn.SetReadDeadline(past)
	}
	if !c.write.IsZero() {
		c.Conn.SetWriteDeadline(past)
	}
}

// TestControlStalledBodyDropped: a request whose body stops coming is
// answered with an error and its connection closed once the read
// timeout runs out, instead of being held.
func TestControlStalledBodyDropped(t *testing.T) {
	called := make(chan struct{}, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { called <- struct{}{} })
	lim := defaultControlLimits
	lim.header, lim.read = time.Second, time.Second
	sock := controlOn(t, h, lim)
	for _, req := range []string{
		"POST /v1/devices HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"name\":", // body stalls
		"POST /v1/devices HTTP/1.1\r\nHost: x\r\n",                                      // headers stall
	} {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(testutil.Patience))
		_, err = io.ReadAll(c) // until the server closes
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("%q: still held after %v", req, testutil.Patience)
		}
	}
	select {
	case <-called:
		t.Error("the handler ran for a request whose body never came")
	default:
	}
}

func TestControlBodyCap(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%d", len(b))
	})
	lim := defaultControlLimits
	lim.body = 1 << 10
	sock := controlOn(t, h, lim)
	cl := http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for _, c := range []struct {
		n    int
		want int
	}{{1 << 10, http.StatusOK}, {1<<10 + 1, http.StatusRequestEntityTooLarge}} {
		resp, err := cl.Post("http://udm/v1/devices", "application/json", strings.NewReader(strings.Repeat(" ", c.n)))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%d-byte body: status %d (%s), want %d", c.n, resp.StatusCode, body, c.want)
		}
	}
}

// TestControlWaitOutlivesWriteTimeout: a wait request is not cut by the
// write (or read) timeout; another request that takes as long is.
func TestControlWaitOutlivesWriteTimeout(t *testing.T) {
	for _, c := range []struct {
		path string
		cut  bool
	}{{"/v1/devices/a/wait", false}, {"/v1/devices/a/status", true}} {
		started, release := make(chan struct{}), make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(started)
			select {
			case <-release:
				io.WriteString(w, "done")
			case <-r.Context().Done():
			}
		})
		// Timeouts far off in wall-clock time; the test makes them pass.
		lim := defaultControlLimits
		lim.read, lim.write = testutil.Patience, testutil.Patience
		sock, conns := controlOnConns(t, h, lim)
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET "+c.path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		// The request outlasts both timeouts (as a wait does): once the
		// handler runs, whatever deadline the connection still has passes.
		sc := testutil.Wait(t, "the server to accept", conns)
		testutil.Wait(t, "the handler to run", started)
		sc.pass()
		close(release)
		conn.SetReadDeadline(time.Now().Add(testutil.Patience))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if c.cut {
			if err == nil {
				t.Errorf("%s: answered %d after its write timeout", c.path, resp.StatusCode)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: cut: %v", c.path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || string(body) != "done" {
			t.Errorf("%s: status %d, body %q", c.path, resp.StatusCode, body)
		}
	}
}
