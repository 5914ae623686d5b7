package client

// The client against real NBD servers (nbdkit, qemu-nbd): the handshake,
// round trips and every command, then faults: slow and hung servers,
// servers killed and restarted mid-stream, Close with requests in
// flight.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// ctServerKind names a way to serve a 64 MiB scratch export.
type ctServerKind struct {
	name  string
	start func(t *testing.T) *refserver.Server
}

// ctEachServer runs test against each of ctServers, with a client
// dialled to it.
func ctEachServer(t *testing.T, test func(t *testing.T, srv *refserver.Server, c *Client)) {
	for _, k := range ctServers() {
		t.Run(k.name, func(t *testing.T) {
			srv := k.start(t)
			test(t, srv, ctDial(t, srv.URI, Options{}))
		})
	}
}

// ctServers are the servers and transports every interop test runs
// against.
func ctServers() []ctServerKind {
	const size = 64 << 20
	return []ctServerKind{
		{"nbdkit-memory-unix", func(t *testing.T) *refserver.Server { return refserver.Nbdkit(t, true, "memory", "64M") }},
		{"nbdkit-file-tcp", func(t *testing.T) *refserver.Server {
			return refserver.Nbdkit(t, false, "file", testutil.TempFile(t, size))
		}},
		{"qemu-nbd-unix", func(t *testing.T) *refserver.Server {
			return refserver.QemuNBD(t, true, testutil.TempFile(t, size), "--discard=unmap")
		}},
		{"qemu-nbd-tcp", func(t *testing.T) *refserver.Server {
			return refserver.QemuNBD(t, false, testutil.TempFile(t, size), "--discard=unmap")
		}},
	}
}

// ctSeed returns a random seed, logged so a failure can be replayed.
func ctSeed(t *testing.T) uint64 {
	s := uint64(time.Now().UnixNano())
	if v := os.Getenv("UDM_SEED"); v != "" {
		fmt.Sscan(v, &s)
	}
	t.Logf("seed %d (UDM_SEED=%d replays it)", s, s)
	return s
}

func TestClientHandshakeMatchesNbdinfo(t *testing.T) {
	ctEachServer(t, func(t *testing.T, srv *refserver.Server, c *Client) {
		info := c.Info()
		want := refserver.Nbdinfo(t, srv.URI)
		num := func(key string) int64 { v, _ := want[key].(float64); return int64(v) }
		flag := func(key string) bool { v, _ := want[key].(bool); return v }
		if info.Size != num("export-size") {
			t.Errorf("size %d, nbdinfo says %d", info.Size, num("export-size"))
		}
		for _, f := range []struct {
			key string
			got bool
		}{
			{"is_read_only", info.ReadOnly()},
			{"can_flush", info.CanFlush()},
			{"can_fua", info.CanFUA()},
			{"can_trim", info.CanTrim()},
			{"can_zero", info.CanWriteZeroes()},
			{"can_multi_conn", info.CanMultiConn()},
			{"is_rotational", info.Flags&wire.TFlagRotational != 0},
			{"structured", info.Structured},
		} {
			if f.got != flag(f.key) {
				t.Errorf("%s: client says %v, nbdinfo %v", f.key, f.got, flag(f.key))
			}
		}
		wmin, wpref, wmax := num("block_size_minimum"), num("block_size_preferred"), num("block_size_maximum")
		if _, ok := want["block_size_minimum"]; !ok {
			wmin, wpref, wmax = 1, 4096, 32<<20 // none advertised: the protocol's defaults
		}
		if int64(info.MinBlock) != wmin || int64(info.PrefBlock) != wpref || int64(info.MaxBlock) != wmax {
			t.Errorf("block sizes %d/%d/%d, want %d/%d/%d", info.MinBlock, info.PrefBlock, info.MaxBlock, wmin, wpref, wmax)
		}
		if !info.FixedNewstyle || !info.Go {
			t.Errorf("fixed newstyle %v, NBD_OPT_GO %v: want both", info.FixedNewstyle, info.Go)
		}
		if c.Name() != srv.URI || c.Size() != info.Size || c.ReadOnly() {
			t.Errorf("device view: name %q size %d ro %v", c.Name(), c.Size(), c.ReadOnly())
		}
	})
}

// ctRoundTrips writes random data of random sizes at random aligned
// offsets and reads it back, also in pieces and across what was written.
func ctRoundTrips(t *testing.T, c *Client, rng *rand.Rand, n int, maxLen int) {
	t.Helper()
	ctx := ctCtx(t)
	size := c.Size()
	model := make([]byte, size) // what the export holds where we wrote
	written := make([]bool, size/512)
	for i := 0; i < n; i++ {
		l := (1 + rng.IntN(maxLen/512)) * 512
		off := rng.Int64N((size-int64(l))/512+1) * 512
		data := make([]byte, l)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		fua := rng.IntN(4) == 0
		if err := c.WriteAt(ctx, data, off, fua); err != nil {
			t.Fatalf("write %d@%d (fua %v): %v", l, off, fua, err)
		}
		copy(model[off:], data)
		for s := off / 512; s < (off+int64(l))/512; s++ {
			written[s] = true
		}
		// Read back a random window that overlaps it.
		roff := max(0, off-int64(rng.IntN(4))*512)
		rl := min(int(size-roff), l+rng.IntN(4)*512)
		got := make([]byte, rl)
		for j := range got {
			got[j] = 0xEE
		}
		if err := c.ReadAt(ctx, got, roff); err != nil {
			t.Fatalf("read %d@%d: %v", rl, roff, err)
		}
		for s := roff / 512; s < (roff+int64(rl))/512; s++ {
			if !written[s] {
				continue
			}
			a, b := s*512-roff, s*512-roff+512
			if !bytes.Equal(got[a:b], model[s*512:s*512+512]) {
				t.Fatalf("round trip %d: sector %d differs after write %d@%d", i, s, l, off)
			}
		}
	}
}

func TestClientRoundTrips(t *testing.T) {
	seed := ctSeed(t)
	ctEachServer(t, func(t *testing.T, _ *refserver.Server, c *Client) {
		ctRoundTrips(t, c, rand.New(rand.NewPCG(seed, 1)), 60, 256<<10)
		if err := c.Flush(ctCtx(t)); err != nil {
			t.Fatalf("flush: %v", err)
		}
	})
}

// ctPattern fills b with a pattern derived from v.
func ctPattern(b []byte, v byte) []byte {
	for i := range b {
		b[i] = v + byte(i*7)
	}
	return b
}

func ctAllBytes(b []byte, v byte) bool {
	for _, x := range b {
		if x != v {
			return false
		}
	}
	return true
}

func TestClientTrimZeroesFlush(t *testing.T) {
	ctEachServer(t, func(t *testing.T, srv *refserver.Server, c *Client) {
		ctx := ctCtx(t)
		buf := make([]byte, 1<<20)
		for i, tc := range []struct {
			name   string
			do     func(off int64, n uint32) error
			zeroes bool // the spec promises zeroes after it
		}{
			{"write-zeroes", func(off int64, n uint32) error { return c.WriteZeroes(ctx, off, n, false) }, true},
			{"write-zeroes-nohole", func(off int64, n uint32) error { return c.WriteZeroes(ctx, off, n, true) }, true},
			{"trim", func(off int64, n uint32) error { return c.Trim(ctx, off, n) }, false},
		} {
			off := int64(i) * (4 << 20)
			if err := c.WriteAt(ctx, ctPattern(buf, byte(i+1)), off, false); err != nil {
				t.Fatal(err)
			}
			// Zero the middle, unaligned to the 1 MiB write.
			if err := tc.do(off+64<<10, 512<<10); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			if err := c.Flush(ctx); err != nil {
				t.Fatalf("flush: %v", err)
			}
			got := make([]byte, len(buf))
			if err := c.ReadAt(ctx, got, off); err != nil {
				t.Fatal(err)
			}
			want := ctPattern(make([]byte, len(buf)), byte(i+1))
			if !bytes.Equal(got[:64<<10], want[:64<<10]) || !bytes.Equal(got[576<<10:], want[576<<10:]) {
				t.Errorf("%s: data around the range changed", tc.name)
			}
			if tc.zeroes && !ctAllBytes(got[64<<10:576<<10], 0) {
				t.Errorf("%s: range doesn't read back as zeroes", tc.name)
			}
		}
		// FUA write, then read it back on a second connection.
		if err := c.WriteAt(ctx, ctPattern(buf[:4096], 99), 12<<20, true); err != nil {
			t.Fatalf("fua write: %v", err)
		}
		c2 := ctDial(t, srv.URI, Options{})
		got := make([]byte, 4096)
		if err := c2.ReadAt(ctx, got, 12<<20); err != nil || !bytes.Equal(got, buf[:4096]) {
			t.Errorf("FUA write not visible on another connection (err %v)", err)
		}
	})
}

// ctCollector records the completions of async requests.
type ctCollector struct {
	mu    sync.Mutex
	count map[uint64]int
	errs  map[uint64]error
	wg    sync.WaitGroup
}

func newCollector(n int) *ctCollector {
	k := &ctCollector{count: map[uint64]int{}, errs: map[uint64]error{}}
	k.wg.Add(n)
	return k
}

func (k *ctCollector) Done(tag uint64, err error) {
	k.mu.Lock()
	k.count[tag]++
	k.errs[tag] = err
	first := k.count[tag] == 1
	k.mu.Unlock()
	if first {
		k.wg.Done()
	}
}

// wait waits for every request to have ended once.
func (k *ctCollector) wait(t testing.TB) {
	t.Helper()
	done := make(chan struct{})
	go func() { k.wg.Wait(); close(done) }()
	testutil.Wait(t, "every request to end", done)
}

// once checks that each of n tags ended exactly once.
func (k *ctCollector) once(t testing.TB, n int) {
	t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	for i := 0; i < n; i++ {
		if c := k.count[uint64(i)]; c != 1 {
			t.Errorf("request %d ended %d times", i, c)
		}
	}
}

func TestClientManyInFlight(t *testing.T) {
	seed := ctSeed(t)
	ctEachServer(t, func(t *testing.T, _ *refserver.Server, c *Client) {
		rng := rand.New(rand.NewPCG(seed, 2))
		const n = 512
		bufs := make([][]byte, n)
		col := newCollector(n)
		for i := range bufs {
			bufs[i] = make([]byte, 4096*(1+rng.IntN(8)))
			for j := range bufs[i] {
				bufs[i][j] = byte(rng.Uint32())
			}
			c.Start(Request{Cmd: wire.CmdWrite, Offset: int64(i) * 64 << 10, Buf: bufs[i]}, col, uint64(i))
		}
		col.wait(t)
		col.once(t, n)
		for i, err := range col.errs {
			if err != nil {
				t.Fatalf("write %d: %v", i, err)
			}
		}
		// Read everything back concurrently.
		got := make([][]byte, n)
		col = newCollector(n)
		for i := range got {
			got[i] = make([]byte, len(bufs[i]))
			c.Start(Request{Cmd: wire.CmdRead, Offset: int64(i) * 64 << 10, Buf: got[i]}, col, uint64(i))
		}
		col.wait(t)
		col.once(t, n)
		for i := range got {
			if col.errs[uint64(i)] != nil || !bytes.Equal(got[i], bufs[i]) {
				t.Fatalf("read %d: %v or data differs", i, col.errs[uint64(i)])
			}
		}
	})
}

func TestClientReadOnly(t *testing.T) {
	ctx := ctCtx(t)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) *refserver.Server
	}{
		{"nbdkit", func(t *testing.T) *refserver.Server { return refserver.Nbdkit(t, true, "-r", "memory", "1M") }},
		{"qemu-nbd", func(t *testing.T) *refserver.Server {
			return refserver.QemuNBD(t, true, testutil.TempFile(t, 1<<20), "-r")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := tc.start(t)
			c := ctDial(t, srv.URI, Options{})
			if !c.Info().ReadOnly() || !c.ReadOnly() {
				t.Fatalf("export not seen as read-only (flags %#x)", c.Info().Flags)
			}
			buf := make([]byte, 4096)
			for name, err := range map[string]error{
				"write":        c.WriteAt(ctx, buf, 0, false),
				"trim":         c.Trim(ctx, 0, 4096),
				"write-zeroes": c.WriteZeroes(ctx, 0, 4096, false),
			} {
				if !errors.Is(err, syscall.EPERM) {
					t.Errorf("%s on a read-only export: %v, want EPERM", name, err)
				}
			}
			if err := c.ReadAt(ctx, buf, 0); err != nil {
				t.Errorf("read: %v", err)
			}
		})
	}
	// The client's own read-only option.
	srv := refserver.Nbdkit(t, true, "memory", "1M")
	c := ctDial(t, srv.URI, Options{ReadOnly: true})
	if err := c.WriteAt(ctx, make([]byte, 512), 0, false); !errors.Is(err, syscall.EPERM) || !c.ReadOnly() {
		t.Errorf("write with Options.ReadOnly: %v, want EPERM", err)
	}
}

// Errors the server returns come back as errnos, with structured and
// with simple replies, and the stream stays usable.
func TestClientServerErrors(t *testing.T) {
	ctx := ctCtx(t)
	for _, tc := range []struct {
		name string
		args []string
		opts Options
		want syscall.Errno
		op   string
	}{
		{"read-EIO-structured", []string{"error=EIO", "error-pread-rate=1"}, Options{}, syscall.EIO, "read"},
		{"read-EIO-simple", []string{"error=EIO", "error-pread-rate=1"}, Options{NoStructuredReply: true}, syscall.EIO, "read"},
		{"write-EPERM", []string{"error=EPERM", "error-pwrite-rate=1"}, Options{}, syscall.EPERM, "write"},
		{"write-ENOSPC", []string{"error=ENOSPC", "error-pwrite-rate=1"}, Options{}, syscall.ENOSPC, "write"},
		{"zero-EINVAL", []string{"error=EINVAL", "error-zero-rate=1"}, Options{}, syscall.EINVAL, "zero"},
		{"trim-ENOMEM", []string{"error=ENOMEM", "error-trim-rate=1"}, Options{}, syscall.ENOMEM, "trim"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--filter=error", "memory", "1M"}, tc.args...)
			srv := refserver.Nbdkit(t, true, args...)
			c := ctDial(t, srv.URI, tc.opts)
			buf := make([]byte, 8192)
			for i := 0; i < 3; i++ { // the connection survives errors
				var err error
				switch tc.op {
				case "read":
					err = c.ReadAt(ctx, buf, 4096)
				case "write":
					err = c.WriteAt(ctx, buf, 4096, false)
				case "zero":
					err = c.WriteZeroes(ctx, 4096, 8192, false)
				case "trim":
					err = c.Trim(ctx, 4096, 8192)
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("%s: %v, want %v", tc.op, err, tc.want)
				}
			}
			if tc.op != "read" {
				if err := c.ReadAt(ctx, buf, 0); err != nil {
					t.Fatalf("read after errors: %v", err)
				}
			}
			if st := c.Stats(); st.Reconnects != 0 {
				t.Errorf("errors cost %d reconnections", st.Reconnects)
			}
		})
	}
}

// Older negotiation paths: no structured replies, NBD_OPT_EXPORT_NAME,
// and a server that isn't fixed newstyle at all.
func TestClientNegotiationFallbacks(t *testing.T) {
	seed := ctSeed(t)
	for _, tc := range []struct {
		name       string
		args       []string
		opts       Options
		structured bool
		goOpt      bool
		fixed      bool
	}{
		{"no-structured-by-client", nil, Options{NoStructuredReply: true}, false, true, true},
		{"no-structured-by-server", []string{"--no-sr"}, Options{}, false, true, true},
		{"export-name", nil, Options{NoOptGo: true}, true, false, true},
		{"not-fixed-newstyle", []string{"--mask-handshake=0"}, Options{}, false, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := refserver.Nbdkit(t, false, append(tc.args, "memory", "8M")...)
			c := ctDial(t, srv.URI, tc.opts)
			info := c.Info()
			if info.Structured != tc.structured || info.Go != tc.goOpt || info.FixedNewstyle != tc.fixed {
				t.Fatalf("structured %v go %v fixed %v, want %v %v %v", info.Structured, info.Go, info.FixedNewstyle,
					tc.structured, tc.goOpt, tc.fixed)
			}
			if info.Size != 8<<20 || !info.CanFlush() {
				t.Fatalf("size %d flags %#x", info.Size, info.Flags)
			}
			ctRoundTrips(t, c, rand.New(rand.NewPCG(seed, 3)), 20, 64<<10)
		})
	}
}

func TestClientNoSuchExport(t *testing.T) {
	srv := refserver.QemuNBD(t, true, testutil.TempFile(t, 1<<20), "-x", "disk")
	for _, opts := range []Options{{}, {NoOptGo: true}} {
		ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
		_, err := Dial(ctx, srv.URI[:len("nbd+unix:///")]+"nope"+srv.URI[len("nbd+unix:///"):], opts)
		cancel()
		if !errors.Is(err, errNoExport) {
			t.Errorf("dial a missing export (NoOptGo %v): %v, want errNoExport", opts.NoOptGo, err)
		}
	}
	u := srv.URI[:len("nbd+unix:///")] + "disk" + srv.URI[len("nbd+unix:///"):]
	c := ctDial(t, u, Options{})
	if c.Size() != 1<<20 {
		t.Errorf("size %d", c.Size())
	}
}

// Block size constraints: alignment to the minimum is enforced, and
// requests above the maximum are split (the server would refuse them).
func TestClientBlockSizeConstraints(t *testing.T) {
	seed := ctSeed(t)
	srv := refserver.Nbdkit(t, true, "--filter=blocksize-policy", "memory", "16M", "blocksize-minimum=4096",
		"blocksize-preferred=16384", "blocksize-maximum=65536", "blocksize-error-policy=error")
	c := ctDial(t, srv.URI, Options{})
	info := c.Info()
	if info.MinBlock != 4096 || info.PrefBlock != 16384 || info.MaxBlock != 65536 || info.MaxPayload != 65536 || c.BlockSize() != 4096 {
		t.Fatalf("block sizes %+v", info)
	}
	ctx := ctCtx(t)
	if err := c.ReadAt(ctx, make([]byte, 512), 0); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("512-byte read: %v, want EINVAL", err)
	}
	if err := c.WriteAt(ctx, make([]byte, 4096), 512, false); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("misaligned write: %v, want EINVAL", err)
	}
	rng := rand.New(rand.NewPCG(seed, 4))
	big := make([]byte, 1<<20+4096)
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	if err := c.WriteAt(ctx, big, 8192, true); err != nil {
		t.Fatalf("write of %d bytes: %v", len(big), err)
	}
	got := make([]byte, len(big))
	if err := c.ReadAt(ctx, got, 8192); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("read of %d bytes: %v (equal %v)", len(got), err, bytes.Equal(got, big))
	}
	if err := c.WriteZeroes(ctx, 8192, 1<<20, false); err != nil {
		t.Fatalf("write-zeroes of 1 MiB: %v", err)
	}
	if err := c.ReadAt(ctx, got, 8192); err != nil || !ctAllBytes(got[:1<<20], 0) || !bytes.Equal(got[1<<20:], big[1<<20:]) {
		t.Fatalf("after write-zeroes: %v", err)
	}
}

func TestClientBlockStatus(t *testing.T) {
	file := testutil.TempFile(t, 4<<20)
	srv := refserver.QemuNBD(t, true, file)
	c := ctDial(t, srv.URI, Options{BlockStatus: true})
	if !c.Info().BlockStatus {
		t.Fatal("base:allocation not negotiated")
	}
	ctx := ctCtx(t)
	if err := c.WriteAt(ctx, ctPattern(make([]byte, 64<<10), 1), 1<<20, false); err != nil {
		t.Fatal(err)
	}
	ext, err := c.BlockStatus(ctx, 0, 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	// Walk the extents: [0,1M) a hole, [1M,1M+64K) data.
	var pos uint64
	for _, e := range ext {
		if e.Length == 0 {
			t.Fatalf("zero-length extent in %v", ext)
		}
		end := pos + uint64(e.Length)
		hole := e.Flags&wire.StateHole != 0
		if pos < 1<<20 && !hole || pos >= 1<<20 && end <= 1<<20+64<<10 && hole {
			t.Errorf("extent [%d,%d) flags %#x is wrong", pos, end, e.Flags)
		}
		pos = end
	}
	if pos < 1<<20+64<<10 {
		t.Errorf("extents cover only %d bytes: %v", pos, ext)
	}
	// Without negotiation: EOPNOTSUPP.
	c2 := ctDial(t, srv.URI, Options{})
	if _, err := c2.BlockStatus(ctx, 0, 4096); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("block status without the context: %v", err)
	}
	// A read of the sparse region (qemu-nbd answers with holes) zeroes
	// what the buffer held.
	got := make([]byte, 2<<20)
	for i := range got {
		got[i] = 0xFF
	}
	if err := c.ReadAt(ctx, got, 0); err != nil {
		t.Fatal(err)
	}
	if !ctAllBytes(got[:1<<20], 0) || !ctAllBytes(got[1<<20+64<<10:], 0) || !bytes.Equal(got[1<<20:1<<20+64<<10], ctPattern(make([]byte, 64<<10), 1)) {
		t.Error("sparse read returned wrong data")
	}
}

// The steady state of the synchronous API allocates (almost) nothing:
// requests, timers and buffers are reused.
func TestClientAllocations(t *testing.T) {
	if testutil.Race {
		t.Skip("skipped: allocation counts are meaningless under the race detector (sync.Pool drops items)")
	}
	srv := refserver.Nbdkit(t, true, "memory", "1M")
	c := ctDial(t, srv.URI, Options{RequestTimeout: time.Minute})
	ctx := ctCtx(t)
	buf := make([]byte, 4096)
	for i := 0; i < 100; i++ { // warm the pools
		c.WriteAt(ctx, buf, 0, false)
		c.ReadAt(ctx, buf, 0)
	}
	allocs := testing.AllocsPerRun(500, func() {
		if err := c.WriteAt(ctx, buf, 4096, false); err != nil {
			t.Fatal(err)
		}
		if err := c.ReadAt(ctx, buf, 4096); err != nil {
			t.Fatal(err)
		}
	})
	t.Logf("%.2f allocations per write+read", allocs)
	if allocs >= 0.5 {
		t.Errorf("%.2f allocations per write+read, want none", allocs)
	}
}

// ctDial dials uri with test-friendly reconnection settings on top of
// opts.
func ctDial(t testing.TB, uri string, opts Options) *Client {
	t.Helper()
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 100 * time.Millisecond
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 5 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	c, err := Dial(ctx, uri, opts)
	if err != nil {
		t.Fatalf("Dial %s: %v", uri, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ctCtx is a context bounded by testutil.Patience.
func ctCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	t.Cleanup(cancel)
	return ctx
}

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
