package server

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
	"udm/nbd/wire"
	"udm/uring"
)

// pattern is the content fillPattern gives the bytes [off, off+n) of an
// export: each 8-byte word holds its own offset.
func pattern(off uint64, n int) []byte {
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.BigEndian.PutUint64(b[i:], off+uint64(i))
	}
	return b
}

// fillPattern fills m, which holds the export's bytes from base on.
func fillPattern(t testing.TB, m *dmtest.MemDevice, base uint64) {
	t.Helper()
	const chunk = 1 << 20
	for off := int64(0); off < m.Size(); off += chunk {
		if _, err := m.WriteAt(pattern(base+uint64(off), int(min(chunk, m.Size()-off))), off); err != nil {
			t.Fatal(err)
		}
	}
}

// backingIO is an I/O as a backing device received it.
type backingIO struct {
	dev   string
	op    dm.Op
	flags dm.BioFlags
}

// durable reports whether ios make an op on dev durable: the op with FUA,
// or the op followed by a flush of dev. For op OpFlush, a flush of dev.
func durable(ios []backingIO, dev string, op dm.Op) bool {
	pending := false
	for _, x := range ios {
		switch {
		case x.dev != dev:
		case x.op == dm.OpFlush && (pending || op == dm.OpFlush):
			return true
		case x.op == op && x.flags&dm.FUA != 0:
			return true
		case x.op == op:
			pending = true
		}
	}
	return false
}

// TestFlushAndFUAReachBacking holds every I/O at the backings until the
// test releases it, and checks that a FLUSH, or a write with FUA, is made
// durable on each backing it touches — a flush, or the write with FUA —
// and not answered before the backing has completed that.
func TestFlushAndFUAReachBacking(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	const half = 4 << 20
	a, b := ts.memBacking("mem:a", half), ts.memBacking("mem:b", half)
	ts.create("disk", fmt.Sprintf("0 %d linear %s 0\n%d %d linear %s 0", half/512, a.Name(), half/512, half/512, b.Name()))
	var mu sync.Mutex
	var ios []backingIO // guarded by mu
	for _, m := range []*dmtest.MemDevice{a, b} {
		m.SetSubmitHook(func(c *dm.Clone) {
			mu.Lock()
			ios = append(ios, backingIO{m.Name(), c.Op, c.Flags})
			mu.Unlock()
		})
		m.Hang(true)
	}
	rc := dialRaw(t, ts.tcp)
	rc.goExport("disk", false)
	cases := []struct {
		name    string
		req     wire.Request
		op      dm.Op               // what the backings must make durable
		devs    []*dmtest.MemDevice // where
		payload []byte
	}{
		{name: "flush", req: wire.Request{Type: wire.CmdFlush}, op: dm.OpFlush, devs: []*dmtest.MemDevice{a, b}},
		{name: "write with FUA", req: wire.Request{Type: wire.CmdWrite, Flags: wire.CmdFlagFUA, Offset: 8192, Length: 8192}, op: dm.OpWrite,
			devs: []*dmtest.MemDevice{a}, payload: bytes.Repeat([]byte{0xf1}, 8192)},
		{name: "write with FUA across both backings", req: wire.Request{Type: wire.CmdWrite, Flags: wire.CmdFlagFUA, Offset: half - 4096, Length: 8192},
			op: dm.OpWrite, devs: []*dmtest.MemDevice{a, b}, payload: bytes.Repeat([]byte{0xf2}, 8192)},
		{name: "write-zeroes with FUA", req: wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagFUA, Offset: half + 4096, Length: 4096},
			op: dm.OpWriteZeroes, devs: []*dmtest.MemDevice{b}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mu.Lock()
			ios = nil
			mu.Unlock()
			cookie := uint64(i + 1)
			c.req.Cookie = cookie
			rc.sendReq(c.req, c.payload)
			// Release what the backings hold, round by round, until the
			// reply comes; note what had been released by then. (One
			// loop submits everything, so ios is in the order held.)
			var released []backingIO
			for !rc.replied(50 * time.Millisecond) {
				var n int
				testutil.Eventually(t, "the backings to hold what they were sent", func() bool {
					mu.Lock()
					n = len(ios)
					mu.Unlock()
					return a.Held()+b.Held() == n-len(released)
				})
				if n == len(released) {
					continue
				}
				k := len(released) + a.Release() + b.Release()
				mu.Lock()
				released = slices.Clone(ios[:k])
				mu.Unlock()
			}
			got, werr, _ := rc.reply()
			if got != cookie || werr != 0 {
				t.Fatalf("reply: cookie %d error %d", got, werr)
			}
			for _, m := range c.devs {
				if !durable(released, m.Name(), c.op) {
					t.Errorf("answered before %s made it durable; it had completed %+v", m.Name(), released)
				}
			}
			for _, m := range c.devs {
				if m.Held() != 0 {
					t.Errorf("%s still holds %d I/Os after the reply", m.Name(), m.Held())
				}
			}
		})
	}
	// The data went where it should.
	for _, w := range []struct {
		m   *dmtest.MemDevice
		off int64
		n   int
		v   byte
	}{{a, 8192, 8192, 0xf1}, {a, half - 4096, 4096, 0xf2}, {b, 0, 4096, 0xf2}} {
		got := make([]byte, w.n)
		w.m.ReadAt(got, w.off)
		if !bytes.Equal(got, bytes.Repeat([]byte{w.v}, w.n)) {
			t.Errorf("%s at %d: not the data written", w.m.Name(), w.off)
		}
	}
}

// TestInflightByteBudget pipelines many requests of the largest size at
// a backing that holds them until a releaser lets them go: the server
// must take no more than MaxInflightBytes of them at once, yet answer
// every one, correctly.
func TestInflightByteBudget(t *testing.T) {
	const maxPayload, budget, n = 4 << 20, 16 << 20, 24 // 96 MiB asked for
	ts := newTestServer(t, 1, Config{MaxPayload: maxPayload, MaxInflightBytes: budget})
	m := ts.memDisk("disk", n*maxPayload)
	for _, c := range []struct {
		name string
		typ  uint16
	}{{"reads", wire.CmdRead}, {"writes", wire.CmdWrite}} {
		typ := c.typ
		t.Run(c.name, func(t *testing.T) {
			fillPattern(t, m, 0)
			ts.srv.Stats().PeakInflightBytes.Store(0)
			m.Hang(true)
			// Slowly: the client has time to fill the server's
			// receive buffer while the budget holds requests back.
			stopReleasing := releaseEvery(t, m, 10*time.Millisecond)
			rc := dialRaw(t, ts.tcp)
			rc.goExport("disk", false)
			data := func(i int) []byte { return bytes.Repeat([]byte{byte(i + 1)}, maxPayload) }
			sent := make(chan error, 1)
			go func() {
				// One write of everything: the server's backpressure holds it
				// in the socket.
				var b []byte
				for i := 0; i < n; i++ {
					var h [wire.RequestSize]byte
					wire.Request{Type: typ, Cookie: uint64(i), Offset: uint64(i) * maxPayload, Length: maxPayload}.Encode(h[:])
					b = append(b, h[:]...)
					if typ == wire.CmdWrite {
						b = append(b, data(i)...)
					}
				}
				_, err := rc.c.Write(b)
				sent <- err
			}()
			seen := make([]bool, n)
			for range n {
				cookie, werr, _ := rc.reply()
				if werr != 0 || cookie >= n || seen[cookie] {
					t.Fatalf("reply for cookie %d: error %d (or a duplicate)", cookie, werr)
				}
				seen[cookie] = true
				if typ == wire.CmdRead {
					if got := rc.readData(maxPayload); !bytes.Equal(got, pattern(cookie*maxPayload, maxPayload)) {
						t.Fatalf("read %d: wrong data", cookie)
					}
				}
			}
			if err := <-sent; err != nil {
				t.Fatal(err)
			}
			maxHeld := stopReleasing()
			m.Hang(false)
			peak := ts.srv.Stats().PeakInflightBytes.Load()
			t.Logf("peak %d MiB in flight, at most %d requests at the backing at once", peak>>20, maxHeld)
			if peak > budget || maxHeld > budget/maxPayload {
				t.Errorf("%d bytes in flight (%d requests at the backing at once), budget %d", peak, maxHeld, budget)
			}
			if typ == wire.CmdRead && peak < 2*maxPayload {
				t.Errorf("at most %d bytes in flight: the budget should let several requests go at once", peak)
			}
			if typ == wire.CmdWrite {
				for i := 0; i < n; i++ {
					got := make([]byte, maxPayload)
					m.ReadAt(got, int64(i)*maxPayload)
					if !bytes.Equal(got, data(i)) {
						t.Fatalf("write %d: not the data sent", i)
					}
				}
			}
		})
	}
}

// releaseEvery lets what m holds go every period until the returned stop
// is called (at the latest when t ends); stop returns the most m held at
// one look.
func releaseEvery(t testing.TB, m *dmtest.MemDevice, period time.Duration) (stop func() int) {
	quit, done := make(chan struct{}), make(chan struct{})
	most := 0
	go func() {
		defer close(done)
		for {
			select {
			case <-quit:
				return
			case <-time.After(period):
			}
			most = max(most, m.Held())
			m.Release()
		}
	}()
	var once sync.Once
	stop = func() int {
		once.Do(func() { close(quit); <-done })
		return most
	}
	t.Cleanup(func() { stop() })
	return stop
}

func TestInflightByteBudgetDefaults(t *testing.T) {
	for _, c := range []struct {
		maxPayload, budget, want int
	}{
		{0, 0, 64 << 20},                // the default
		{0, 1 << 20, DefaultMaxPayload}, // never below the largest request
		{1 << 20, 8 << 20, 8 << 20},     // as asked
		{16 << 20, 4 << 20, 16 << 20},   // raised to MaxPayload
	} {
		s, err := New(Config{Exports: RegistryExports(dm.NewRegistry(dm.Config{}), ""), Loops: []*uring.Loop{nil},
			MaxPayload: c.maxPayload, MaxInflightBytes: c.budget})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.cfg.MaxInflightBytes; got != c.want {
			t.Errorf("MaxPayload %d, MaxInflightBytes %d: budget %d, want %d", c.maxPayload, c.budget, got, c.want)
		}
	}
}

// TestBufferAllocationFailure: a request whose buffer can't be had is
// refused with ENOMEM (a write's payload drained), and the connection goes
// on.
func TestBufferAllocationFailure(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	ts.memDisk("disk", 16<<20)
	ts.srv.mu.Lock()
	ts.srv.getBuf = func(a *uring.Arena, n int) (uring.Buf, error) {
		if n > 1<<20 {
			return uring.Buf{}, syscall.ENOMEM
		}
		return arenaGet(a, n)
	}
	ts.srv.mu.Unlock()
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			rc := dialRaw(t, ts.tcp)
			rc.goExport("disk", structured)
			cases := []struct {
				name    string
				req     wire.Request
				payload int
				want    uint32
			}{
				{"big read", wire.Request{Type: wire.CmdRead, Length: 2 << 20}, 0, wire.ENOMEM},
				{"big write", wire.Request{Type: wire.CmdWrite, Length: 2 << 20}, 2 << 20, wire.ENOMEM},
				{"small write", wire.Request{Type: wire.CmdWrite, Length: 4096}, 4096, 0},
				{"small read", wire.Request{Type: wire.CmdRead, Length: 4096}, 0, 0},
			}
			for i, c := range cases {
				c.req.Cookie = uint64(i)
				rc.sendReq(c.req, bytes.Repeat([]byte{0x3c}, c.payload))
				cookie, werr, _ := rc.reply()
				if cookie != uint64(i) || werr != c.want {
					t.Fatalf("%s: cookie %d error %d, want cookie %d error %d", c.name, cookie, werr, i, c.want)
				}
				if c.req.Type == wire.CmdRead && werr == 0 && !structured {
					rc.readData(int(c.req.Length))
				}
			}
		})
	}
}

// TestArenaGetNoMemory: a failed mmap of a buffer becomes ENOMEM,
// and the arena still works.
func TestArenaGetNoMemory(t *testing.T) {
	a, err := uring.NewArena(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := arenaGet(a, 1<<50); err != syscall.ENOMEM {
		t.Fatalf("a 1 PiB buffer: error %v, want ENOMEM", err)
	}
	b, err := arenaGet(a, 8192)
	if err != nil || len(b.B) != 8192 {
		t.Fatalf("after a failure: %d bytes, %v", len(b.B), err)
	}
	a.Put(b)
}
