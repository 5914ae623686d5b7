package client

// Faults with real servers: slow and hung servers, servers killed and
// restarted mid-stream, Close with requests in flight.

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"udm/internal/refserver"
	"udm/internal/testutil"
	"udm/nbd/wire"
)

// ctTableEmpty reports whether the client holds no request (zombies
// included).
func ctTableEmpty(c *Client) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.reqs) == 0
}

// ctWaiting is how many requests wait for a connection.
func ctWaiting(c *Client) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.waiting)
}

// ctAllSent reports whether n requests are in the table, all on the wire.
func ctAllSent(c *Client, n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.reqs) != n {
		return false
	}
	for _, r := range c.reqs {
		if !r.sent {
			return false
		}
	}
	return true
}

// A request that passes its deadline ends with ETIMEDOUT (or the
// context's error), and its late reply never lands in the buffer.
func TestClientTimeoutLateReply(t *testing.T) {
	srv := refserver.Nbdkit(t, true, "--filter=delay", "memory", "1M", "delay-read=500ms")
	c := ctDial(t, srv.URI, Options{})
	ctx := ctCtx(t)
	if err := c.WriteAt(ctx, ctPattern(make([]byte, 8192), 7), 0, false); err != nil {
		t.Fatal(err)
	}
	// Through Start with a timeout.
	col := newCollector(1)
	buf := make([]byte, 8192)
	for i := range buf {
		buf[i] = 0xAA
	}
	c.Start(Request{Cmd: wire.CmdRead, Buf: buf, Timeout: 20 * time.Millisecond}, col, 0)
	col.wait(t)
	if err := col.errs[0]; !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("read: %v, want ETIMEDOUT", err)
	}
	// Through a context.
	buf2 := make([]byte, 8192)
	for i := range buf2 {
		buf2[i] = 0xBB
	}
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	err := c.ReadAt(cctx, buf2, 0)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read: %v, want the context's deadline", err)
	}
	// The late replies arrive and are dropped.
	testutil.Eventually(t, "late replies consumed", func() bool { return ctTableEmpty(c) })
	if !ctAllBytes(buf, 0xAA) || !ctAllBytes(buf2, 0xBB) {
		t.Fatal("a timed-out read wrote into its buffer")
	}
	// The connection is still good.
	if err := c.ReadAt(ctx, buf, 0); err != nil || !bytes.Equal(buf, ctPattern(make([]byte, 8192), 7)) {
		t.Fatalf("read after timeouts: %v", err)
	}
	if st := c.Stats(); st.Reconnects != 0 || st.TimedOut != 1 {
		t.Errorf("stats %+v", st)
	}
}

// Check sees a hung server (SIGSTOP) within its timeout and a healthy one
// again after SIGCONT; a client-wide RequestTimeout bounds I/O meanwhile.
func TestClientCheckHungServer(t *testing.T) {
	srv := refserver.Nbdkit(t, false, "memory", "1M")
	c := ctDial(t, srv.URI, Options{RequestTimeout: 200 * time.Millisecond})
	ctx := ctCtx(t)
	if err := c.Check(ctx, time.Second); err != nil {
		t.Fatalf("check of a healthy server: %v", err)
	}
	srv.Signal(syscall.SIGSTOP)
	if err := c.Check(ctx, 100*time.Millisecond); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("check of a hung server: %v, want ETIMEDOUT", err)
	}
	if err := c.ReadAt(ctx, make([]byte, 512), 0); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("read from a hung server: %v, want ETIMEDOUT", err)
	}
	srv.Signal(syscall.SIGCONT)
	if err := c.Check(ctx, testutil.Patience); err != nil {
		t.Fatalf("check after SIGCONT: %v", err)
	}
}

// Requests in flight when the server dies are re-sent on the next
// connection and succeed; their data reaches the file.
func TestClientRetryInFlightAcrossRestart(t *testing.T) {
	file := testutil.TempFile(t, 4<<20)
	srv := refserver.Nbdkit(t, true, "--filter=delay", "file", file, "delay-write=10", "delay-read=10")
	c := ctDial(t, srv.URI, Options{Retries: 5})
	const n = 16
	col := newCollector(2 * n)
	data := make([][]byte, n)
	for i := range data {
		data[i] = ctPattern(make([]byte, 4096), byte(i+1))
		c.Start(Request{Cmd: wire.CmdWrite, Flags: wire.CmdFlagFUA, Offset: int64(i) * 8192, Buf: data[i]}, col, uint64(i))
	}
	reads := make([][]byte, n)
	for i := range reads {
		reads[i] = make([]byte, 4096)
		c.Start(Request{Cmd: wire.CmdRead, Offset: 1<<20 + int64(i)*4096, Buf: reads[i]}, col, uint64(n+i))
	}
	testutil.Eventually(t, "all requests on the wire", func() bool { return ctAllSent(c, 2*n) })
	// The server dies with all of them unanswered; it comes back without
	// the delay.
	srv.Kill()
	srv.WithArgs("file", file)
	srv.Start()
	col.wait(t)
	col.once(t, 2*n)
	for i, err := range col.errs {
		if err != nil {
			t.Errorf("request %d: %v", i, err)
		}
	}
	if st := c.Stats(); st.Retried != 2*n || st.Reconnects < 1 {
		t.Errorf("stats %+v: want %d retries", st, 2*n)
	}
	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for i := range data {
		if !bytes.Equal(got[i*8192:i*8192+4096], data[i]) {
			t.Errorf("write %d not in the file", i)
		}
	}
}

// A write stream survives the server being killed and restarted (twice):
// every write ends (most succeed; any failure is ENOTCONN or ETIMEDOUT),
// and every acknowledged write is in the file afterwards.
func TestClientServerRestartMidStream(t *testing.T) {
	for _, kind := range []string{"nbdkit", "qemu-nbd"} {
		t.Run(kind, func(t *testing.T) {
			seed := ctSeed(t)
			const size, bs, workers = 8 << 20, 4096, 8
			file := testutil.TempFile(t, size)
			var srv *refserver.Server
			if kind == "nbdkit" {
				srv = refserver.Nbdkit(t, false, "file", file)
			} else {
				srv = refserver.QemuNBD(t, false, file)
			}
			c := ctDial(t, srv.URI, Options{Retries: 50, ReconnectTimeout: testutil.Patience})
			type hist struct {
				acked     []byte   // last acknowledged data
				uncertain [][]byte // failed writes after it
			}
			blocks := make([]hist, size/bs)
			var stop sync.WaitGroup
			quit := make(chan struct{})
			var mu sync.Mutex
			var fails []error
			var ok int
			for w := 0; w < workers; w++ {
				stop.Add(1)
				go func(w int) {
					defer stop.Done()
					rng := rand.New(rand.NewPCG(seed, uint64(w)))
					for {
						select {
						case <-quit:
							return
						default:
						}
						blk := rng.IntN(len(blocks)/workers)*workers + w // this worker's blocks only
						data := make([]byte, bs)
						for i := range data {
							data[i] = byte(rng.Uint32())
						}
						err := c.WriteAt(context.Background(), data, int64(blk)*bs, false)
						mu.Lock()
						if err == nil {
							blocks[blk] = hist{acked: data}
							ok++
						} else {
							blocks[blk].uncertain = append(blocks[blk].uncertain, data)
							fails = append(fails, err)
						}
						mu.Unlock()
					}
				}(w)
			}
			progress := func(n int) {
				mu.Lock()
				base := ok
				mu.Unlock()
				testutil.Eventually(t, "writes progress", func() bool {
					mu.Lock()
					defer mu.Unlock()
					return ok >= base+n
				})
			}
			progress(200)
			srv.Restart()
			progress(200)
			srv.Kill()
			// Every worker's write waits for the connection while it's down.
			testutil.Eventually(t, "the writes to queue while the server is down", func() bool { return ctWaiting(c) == workers })
			srv.Start()
			progress(200)
			close(quit)
			stop.Wait()
			for _, err := range fails {
				if !errors.Is(err, syscall.ENOTCONN) && !errors.Is(err, syscall.ETIMEDOUT) {
					t.Errorf("a write failed with %v", err)
				}
			}
			got, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			for i, h := range blocks {
				on := got[i*bs : (i+1)*bs]
				if h.acked == nil && len(h.uncertain) == 0 {
					continue
				}
				match := h.acked != nil && bytes.Equal(on, h.acked)
				for _, u := range h.uncertain {
					match = match || bytes.Equal(on, u)
				}
				if !match {
					t.Fatalf("block %d holds neither its acknowledged data nor a later attempt", i)
				}
			}
			st := c.Stats()
			t.Logf("%d writes acknowledged, %d failed, stats %+v", ok, len(fails), st)
			if st.Reconnects < 2 {
				t.Errorf("%d reconnections, want 2", st.Reconnects)
			}
		})
	}
}

// With the server gone longer than ReconnectTimeout, waiting requests
// fail with ENOTCONN, later ones fail at once, Check fails; once the
// server is back, Check passes and I/O works.
func TestClientServerGone(t *testing.T) {
	srv := refserver.Nbdkit(t, true, "memory", "1M")
	c := ctDial(t, srv.URI, Options{ReconnectTimeout: 100 * time.Millisecond})
	ctx := ctCtx(t)
	if err := c.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("read while the server is gone: %v, want ENOTCONN", err)
	}
	testutil.Eventually(t, "the client gives up waiting", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.down
	})
	if err := c.WriteAt(ctx, make([]byte, 4096), 0, false); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("write while down: %v, want ENOTCONN", err)
	}
	if err := c.Check(ctx, time.Second); err == nil {
		t.Fatal("check passed with no server")
	}
	srv.Start()
	testutil.Eventually(t, "check passes again", func() bool { return c.Check(ctx, time.Second) == nil })
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read after the server came back: %v", err)
	}
}

// Close with requests in flight (and queued while reconnecting) ends each
// exactly once; later requests fail with ESHUTDOWN.
func TestClientCloseInFlight(t *testing.T) {
	srv := refserver.Nbdkit(t, true, "--filter=delay", "memory", "1M", "delay-read=10")
	c := ctDial(t, srv.URI, Options{})
	const n = 200
	col := newCollector(n + 1)
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
		c.Start(Request{Cmd: wire.CmdRead, Offset: int64(i%256) * 4096, Buf: bufs[i]}, col, uint64(i))
	}
	testutil.Eventually(t, "requests on the wire", func() bool { return ctAllSent(c, n) })
	c.Close()
	c.Start(Request{Cmd: wire.CmdRead, Buf: make([]byte, 512)}, col, n)
	col.wait(t)
	col.once(t, n+1)
	for i, err := range col.errs {
		if !errors.Is(err, syscall.ESHUTDOWN) {
			t.Errorf("request %d: %v, want ESHUTDOWN", i, err)
		}
	}
	if !ctTableEmpty(c) {
		t.Error("requests left in the table after Close")
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := c.ReadAt(context.Background(), make([]byte, 512), 0); !errors.Is(err, syscall.ESHUTDOWN) || !errors.Is(errClosed, syscall.ESHUTDOWN) {
		t.Errorf("read after Close: %v", err)
	}
}

// Close while the client is reconnecting ends the waiting requests.
func TestClientCloseWhileReconnecting(t *testing.T) {
	srv := refserver.Nbdkit(t, true, "memory", "1M")
	c := ctDial(t, srv.URI, Options{ReconnectTimeout: time.Hour})
	srv.Kill()
	const n = 20
	col := newCollector(n)
	for i := 0; i < n; i++ {
		c.Start(Request{Cmd: wire.CmdRead, Buf: make([]byte, 512)}, col, uint64(i))
	}
	testutil.Eventually(t, "the connection is seen lost", func() bool { return !c.Connected() })
	c.Close()
	col.wait(t)
	col.once(t, n)
	for i, err := range col.errs {
		if !errors.Is(err, syscall.ESHUTDOWN) {
			t.Errorf("request %d: %v, want ESHUTDOWN", i, err)
		}
	}
}
