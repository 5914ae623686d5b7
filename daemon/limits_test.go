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
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/internal/testutil"
)

// controlOn serves h with lim on a fresh Unix socket and returns its path.
func controlOn(t *testing.T, h http.Handler, lim controlLimits) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := controlServer(h, context.Background(), zerolog.Nop(), lim)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
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
		release := make(chan struct{})
		h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
				io.WriteString(w, "done")
			case <-r.Context().Done():
			}
		})
		lim := defaultControlLimits
		lim.read, lim.write = 500*time.Millisecond, 500*time.Millisecond
		sock := controlOn(t, h, lim)
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		io.WriteString(conn, "GET "+c.path+" HTTP/1.1\r\nHost: x\r\n\r\n")
		// Let the request outlast both timeouts (as a wait does).
		time.Sleep(2 * time.Second)
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
