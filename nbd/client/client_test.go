package client

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

// ctServers are the servers and transports every interop test runs
// against.
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
