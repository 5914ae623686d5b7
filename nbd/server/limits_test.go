package server

import (
	"bytes"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

func TestWatchdog(t *testing.T) {
	const s = int64(time.Second)
	w := watchdog{idle: 10 * time.Second, payload: 3 * time.Second}
	if p := w.period(); p != 750*time.Millisecond {
		t.Errorf("period %v, want a quarter of the shorter timeout", p)
	}
	w.progress(1*s, false)
	if v := w.check(10*s, true); v != wdOK {
		t.Errorf("idle 9s of 10: %d", v)
	}
	if v := w.check(11*s, false); v != wdOK {
		t.Errorf("busy: %d", v)
	}
	if v := w.check(11*s, true); v != wdIdle {
		t.Errorf("idle 10s: %d, want wdIdle", v)
	}
	// A request begun at 20s, receives armed for it at 21s and 22s: its
	// time counts from the first.
	w.progress(20*s, true)
	w.progress(21*s, true)
	w.progress(22*s, true)
	if v := w.check(22*s+s/2, false); v != wdOK {
		t.Errorf("2.5s into a request: %d", v)
	}
	if v := w.check(23*s, false); v != wdPayload {
		t.Errorf("3s into a request: %d, want wdPayload", v)
	}
	// Once it is in, the clock starts again with the next.
	w.progress(23*s, false)
	w.progress(24*s, true)
	if v := w.check(26*s, false); v != wdOK {
		t.Errorf("2s into the next request: %d", v)
	}
	none := watchdog{}
	if none.period() != 0 || none.check(1<<62, true) != wdOK {
		t.Error("a watchdog without timeouts acts")
	}
}

func TestMemBudget(t *testing.T) {
	st := &LimitStats{}
	b := memBudget{limit: 100 << 20, reserve: 4 << 20, stats: st}
	if !b.take(64<<20, 0) || !b.take(32<<20, 64<<20) {
		t.Fatal("96 MiB of 100 (4 reserved) refused")
	}
	if b.take(2<<20, 96<<20) {
		t.Error("a connection holding payload took from the reserve")
	}
	if b.take(2<<20, 0) {
		t.Error("a request over smallRequest took from the reserve")
	}
	if !b.take(1<<20, 0) {
		t.Error("a small request of a connection holding nothing was refused the reserve")
	}
	if b.take(4<<20, 0) {
		t.Error("over the limit")
	}
	b.give(97 << 20)
	if st.Memory.Load() != 0 || st.PeakMemory.Load() != 97<<20 {
		t.Errorf("memory %d, peak %d", st.Memory.Load(), st.PeakMemory.Load())
	}
}

// rss is the process's resident set (VmRSS), in bytes.
func rss(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// fds is how many file descriptors the process has open.
func fds(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// served checks that a well-behaved client gets its reads and writes
// answered, right.
func served(t *testing.T, rc *rawClient, rounds int) {
	t.Helper()
	const n = 64 << 10
	for i := range rounds {
		off := uint64(i%8) * n
		data := bytes.Repeat([]byte{byte(i + 1)}, n)
		rc.send(wire.CmdWrite, 0, 1, off, n, data)
		if _, werr, _ := rc.reply(); werr != 0 {
			t.Fatalf("write: error %d", werr)
		}
		rc.send(wire.CmdRead, 0, 2, off, n, nil)
		_, werr, _ := rc.reply()
		if werr != 0 {
			t.Fatalf("read: error %d", werr)
		}
		if got := rc.readData(n); !bytes.Equal(got, data) {
			t.Fatalf("read back something else")
		}
	}
}

// hostileSetup is a server of two loops with a small daemon-wide budget.
const (
	hostileMaxPayload = 4 << 20
	hostilePerConn    = 16 << 20
	hostileBudget     = 64 << 20
	hostileConns      = 16 // each could hold hostilePerConn: 256 MiB
)

func hostileServer(t *testing.T, lim Limits) *testServer {
	lim.MaxMemory = hostileBudget
	ts := newTestServer(t, 2, Config{MaxPayload: hostileMaxPayload, MaxInflightBytes: hostilePerConn, Limits: lim})
	m := ts.memDisk("disk", 64<<20)
	fillPattern(t, m, 0)
	return ts
}

// TestUnreadPipelinesStayInBudget: clients that pipeline big reads and
// never read a reply hold at most the daemon-wide budget between them,
// a well-behaved client is served all along, and what they held comes
// back when they go.
func TestUnreadPipelinesStayInBudget(t *testing.T) {
	ts := hostileServer(t, Limits{})
	st := ts.srv.LimitStats()
	good := dialRaw(t, ts.tcp)
	good.goExport("disk", false)
	served(t, good, 1)
	rss0, fd0 := rss(t), fds(t)
	var bad []*rawClient
	for range hostileConns {
		rc := dialRaw(t, ts.tcp)
		rc.goExport("disk", false)
		var b []byte
		for i := range 20 {
			var h [wire.RequestSize]byte
			wire.Request{Type: wire.CmdRead, Cookie: uint64(i), Offset: uint64(i%16) * hostileMaxPayload, Length: hostileMaxPayload}.Encode(h[:])
			b = append(b, h[:]...)
		}
		rc.write(b)
		bad = append(bad, rc)
	}
	testutil.Eventually(t, "the unread pipelines to fill the budget", func() bool {
		return st.MemoryWaits.Load() > 0 && st.Memory.Load() > hostileBudget-hostileBudget/16-hostileMaxPayload
	})
	served(t, good, 20)
	rss1, fd1 := rss(t), fds(t)
	peak := st.PeakMemory.Load()
	t.Logf("%d unread pipelines: payload held %d MiB (peak %d MiB, budget %d MiB); RSS %d -> %d MiB; fds %d -> %d",
		hostileConns, st.Memory.Load()>>20, peak>>20, hostileBudget>>20, rss0>>20, rss1>>20, fd0, fd1)
	if peak > hostileBudget {
		t.Errorf("payload held peaked at %d bytes, over the budget of %d", peak, hostileBudget)
	}
	// Besides the budget: the loops' arenas (32 MiB each, in the budget
	// when used) and the kept overflow buffers are the most RSS can grow.
	if grow := rss1 - rss0; grow > hostileBudget+64<<20 {
		t.Errorf("RSS grew by %d MiB with a budget of %d MiB", grow>>20, hostileBudget>>20)
	}
	for _, rc := range bad {
		rc.c.Close()
	}
	testutil.Eventually(t, "the payload held to come back", func() bool { return st.Memory.Load() == 0 })
	testutil.Eventually(t, "the connections to close", func() bool { return ts.srv.Stats().Active.Load() == 1 })
	served(t, good, 1)
	rss2, fd2 := rss(t), fds(t)
	t.Logf("after they left: RSS %d MiB, fds %d", rss2>>20, fd2)
	if fd2 > fd0 {
		t.Errorf("%d file descriptors open after the clients left, %d before", fd2, fd0)
	}
	// What stays: the arenas' registered memory (touched) and the
	// overflow buffers kept for reuse, bounded by MaxOverflowKept.
	if grow := rss2 - rss0; grow > 2*(32<<20)+2*(64<<20) {
		t.Errorf("RSS still %d MiB over what it was before the clients came", grow>>20)
	}
}

// TestStalledWritersTimeOut: clients that stop one byte short of a
// write's payload hold at most the budget, and are closed once the
// payload timeout runs out; the buffers come back.
func TestStalledWritersTimeOut(t *testing.T) {
	ts := hostileServer(t, Limits{PayloadTimeout: 2 * time.Second})
	st := ts.srv.LimitStats()
	good := dialRaw(t, ts.tcp)
	good.goExport("disk", false)
	fd0 := fds(t)
	var bad []*rawClient
	for i := range hostileConns {
		rc := dialRaw(t, ts.tcp)
		rc.goExport("disk", false)
		var h [wire.RequestSize]byte
		wire.Request{Type: wire.CmdWrite, Cookie: 1, Offset: uint64(i%16) * hostileMaxPayload, Length: hostileMaxPayload}.Encode(h[:])
		b := append(h[:], make([]byte, hostileMaxPayload-1)...)
		go rc.c.Write(b) // blocks while the server holds it back; fails when closed
		bad = append(bad, rc)
	}
	for range 5 {
		served(t, good, 4)
		if peak := st.PeakMemory.Load(); peak > hostileBudget {
			t.Fatalf("payload held peaked at %d bytes, over the budget of %d", peak, hostileBudget)
		}
	}
	for i, rc := range bad {
		if !rc.closed() {
			t.Fatalf("stalled writer %d not closed", i)
		}
		rc.c.Close()
	}
	testutil.Eventually(t, "the payload held to come back", func() bool { return st.Memory.Load() == 0 })
	served(t, good, 1)
	t.Logf("%d stalled writers: peak payload held %d MiB (budget %d MiB), %d closed by the payload timeout, %d waited for the budget",
		hostileConns, st.PeakMemory.Load()>>20, hostileBudget>>20, st.PayloadTimeouts.Load(), st.MemoryWaits.Load())
	if n := st.PayloadTimeouts.Load(); n != hostileConns {
		t.Errorf("%d payload timeouts, want %d", n, hostileConns)
	}
	testutil.Eventually(t, "the file descriptors to close", func() bool { return fds(t) <= fd0 })
}

func TestIdleTimeout(t *testing.T) {
	ts := newTestServer(t, 1, Config{Limits: Limits{IdleTimeout: 2 * time.Second}})
	ts.memDisk("disk", 1<<20)
	st := ts.srv.LimitStats()
	const idle = 20
	var rcs []*rawClient
	for range idle {
		rc := dialRaw(t, ts.unix)
		rc.goExport("disk", false)
		rcs = append(rcs, rc)
	}
	busy := dialRaw(t, ts.unix)
	busy.goExport("disk", false)
	for st.IdleClosed.Load() < idle {
		served(t, busy, 1)
	}
	for i, rc := range rcs {
		if !rc.closed() {
			t.Fatalf("idle connection %d still open", i)
		}
	}
	served(t, busy, 1)
	if n := st.IdleClosed.Load(); n != idle {
		t.Errorf("%d connections closed idle, want %d (the busy one stays)", n, idle)
	}
}

// TestNoIdleTimeoutByDefault: an idle connection stays (the kernel's
// client keeps its connections for days).
func TestNoIdleTimeoutByDefault(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	if d := ts.srv.cfg.Limits.IdleTimeout; d != 0 {
		t.Fatalf("default idle timeout %v", d)
	}
	if d := ts.srv.cfg.Limits.PayloadTimeout; d != DefaultPayloadTimeout {
		t.Fatalf("default payload timeout %v", d)
	}
}

func TestConnectionLimits(t *testing.T) {
	ts := newTestServer(t, 1, Config{Limits: Limits{MaxConns: 4, MaxConnsPerAddr: 2}})
	ts.memDisk("disk", 1<<20)
	st := ts.srv.LimitStats()
	refused := func(addr string) bool {
		network := "tcp"
		if addr[0] == '/' {
			network = "unix"
		}
		c, err := net.Dial(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(testutil.Patience))
		var b [18]byte
		_, err = c.Read(b[:])
		return err != nil // closed at once: no greeting
	}
	a := dialRaw(t, ts.tcp)
	a.goExport("disk", false)
	b := dialRaw(t, ts.tcp)
	if !refused(ts.tcp) {
		t.Fatal("a third connection from one address was let in (at most 2)")
	}
	dialRaw(t, ts.unix).goExport("disk", false)
	dialRaw(t, ts.unix)
	if !refused(ts.unix) {
		t.Fatal("a fifth connection was let in (at most 4)")
	}
	if n := st.Refused.Load(); n != 2 {
		t.Errorf("%d refused, want 2", n)
	}
	// One goes (in its handshake), and there is room again.
	b.c.Close()
	testutil.Eventually(t, "room for a new connection", func() bool { return !refused(ts.tcp) })
	served(t, a, 1)
}

// TestInfoRequestsAnsweredOnce: repeating an info type in NBD_OPT_GO
// doesn't repeat its reply.
func TestInfoRequestsAnsweredOnce(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	ts.memDisk("disk", 1<<20)
	for _, opt := range []uint32{wire.OptInfo, wire.OptGo} {
		rc := dialRaw(t, ts.unix)
		infos := make([]uint16, 30000)
		for i := range infos {
			infos[i] = []uint16{wire.InfoName, wire.InfoDescription, wire.InfoBlockSize}[i%3]
		}
		rc.option(opt, wire.AppendGoRequest(nil, wire.GoRequest{Name: "disk", Infos: infos}))
		n := 0
		rc.infoReplies("option "+strconv.Itoa(int(opt)), func([]byte) {
			n++
			if n > 10 {
				t.Fatalf("option %d: more than 10 info replies to 30000 requests of 3 types", opt)
			}
		})
		// NBD_INFO_EXPORT, NAME, DESCRIPTION, BLOCK_SIZE.
		if n != 4 {
			t.Errorf("option %d: %d info replies, want 4", opt, n)
		}
		if opt == wire.OptGo {
			rc.send(wire.CmdRead, 0, 1, 0, 4096, nil)
			if _, werr, _ := rc.reply(); werr != 0 {
				t.Fatalf("read: error %d", werr)
			}
			rc.readData(4096)
		}
	}
}
