package daemon_test

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

// nbdGo connects to addr and negotiates export name with NBD_OPT_GO
// (simple replies).
func nbdGo(t *testing.T, addr, name string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(testutil.Patience))
	defer c.SetDeadline(time.Time{})
	var greet [18]byte
	ioOK(t)(io.ReadFull(c, greet[:]))
	ioOK(t)(c.Write(binary.BigEndian.AppendUint32(nil, wire.ClientFixedNewstyle|wire.ClientNoZeroes)))
	data := wire.AppendGoRequest(nil, wire.GoRequest{Name: name})
	var h [wire.OptionHeaderSize]byte
	wire.PutOptionHeader(h[:], wire.OptGo, uint32(len(data)))
	ioOK(t)(c.Write(append(h[:], data...)))
	for {
		var rh [wire.OptReplyHeaderLen]byte
		ioOK(t)(io.ReadFull(c, rh[:]))
		r, err := wire.ParseOptionReply(rh[:])
		if err != nil {
			t.Fatal(err)
		}
		ioOK(t)(io.ReadFull(c, make([]byte, r.Length)))
		switch r.Type {
		case wire.RepAck:
			return c
		case wire.RepInfo:
		default:
			t.Fatalf("GO: reply %#x", r.Type)
		}
	}
}

// ioOK returns a check of an I/O call's results: ioOK(t)(c.Write(b)).
func ioOK(t *testing.T) func(int, error) {
	return func(_ int, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func nbdRequest(typ uint16, cookie, off uint64, n uint32) []byte {
	var b [wire.RequestSize]byte
	wire.Request{Type: typ, Cookie: cookie, Offset: off, Length: n}.Encode(b[:])
	return b[:]
}

// nbdRead reads n bytes at off and checks the reply.
func nbdRead(t *testing.T, c net.Conn, off uint64, n uint32) {
	t.Helper()
	c.SetDeadline(time.Now().Add(testutil.Patience))
	ioOK(t)(c.Write(nbdRequest(wire.CmdRead, 9, off, n)))
	var h [wire.SimpleReplySize]byte
	ioOK(t)(io.ReadFull(c, h[:]))
	if e := binary.BigEndian.Uint32(h[4:]); e != 0 {
		t.Fatalf("read: NBD error %d", e)
	}
	ioOK(t)(io.ReadFull(c, make([]byte, n)))
}

// TestUnreadPipelinesRSS: `udm serve --nbd-memory 128M` with clients
// that pipeline 32 MiB reads and never read a reply (they ask for 24
// times the budget): the daemon's RSS stays within the budget and its
// arenas, another client is served meanwhile, and what they took comes
// back when they go.
func TestUnreadPipelinesRSS(t *testing.T) {
	const budget, req, conns, depth = 128 << 20, 32 << 20, 12, 8
	u, dir := startScratch(t, "--nbd-memory", "128M", "--metrics", "127.0.0.1:0")
	f := backing(t, dir, "d.img", 2*req)
	u.ok("create", "d", "--table", fmt.Sprintf("0 %d linear %s 0", 2*req/512, f))
	pid := u.cmd.Process.Pid
	good := nbdGo(t, u.info.Addrs.NBD, "d")
	nbdRead(t, good, 0, 64<<10)
	rss0, fd0 := testutil.ProcStatus(t, pid, "VmRSS"), testutil.ProcFDs(t, pid)
	var bad []net.Conn
	for range conns {
		c := nbdGo(t, u.info.Addrs.NBD, "d")
		var b []byte
		for i := range depth {
			b = append(b, nbdRequest(wire.CmdRead, uint64(i), uint64(i%2)*req, req)...)
		}
		ioOK(t)(c.Write(b))
		bad = append(bad, c)
	}
	testutil.Eventually(t, "the unread pipelines to fill the budget", func() bool {
		return scrape(t, u.info.Addrs.Metrics, "udm_nbd_payload_waits_total") > 0 &&
			scrape(t, u.info.Addrs.Metrics, "udm_nbd_payload_bytes") >= budget-budget/16-req
	})
	nbdRead(t, good, req, 64<<10)
	rss1, fd1 := testutil.ProcStatus(t, pid, "VmRSS"), testutil.ProcFDs(t, pid)
	peak := scrape(t, u.info.Addrs.Metrics, "udm_nbd_payload_peak_bytes")
	t.Logf("%d connections x %d unread reads of %d MiB: payload peak %.0f MiB (budget %d MiB); daemon RSS %d -> %d MiB, fds %d -> %d",
		conns, depth, req>>20, peak/(1<<20), budget>>20, rss0>>20, rss1>>20, fd0, fd1)
	if peak > budget {
		t.Errorf("payload peaked at %.0f bytes, budget %d", peak, budget)
	}
	// The budget, and the two loops' 64 MiB arenas (the buffers come
	// from them first, so they overlap the budget).
	if grow := rss1 - rss0; grow > budget+2*(64<<20) {
		t.Errorf("daemon RSS grew by %d MiB; budget %d MiB", grow>>20, budget>>20)
	}
	for _, c := range bad {
		c.Close()
	}
	testutil.Eventually(t, "the payload to come back", func() bool {
		return scrape(t, u.info.Addrs.Metrics, "udm_nbd_payload_bytes") == 0
	})
	testutil.Eventually(t, "the daemon to close the connections", func() bool { return testutil.ProcFDs(t, pid) <= fd0 })
	nbdRead(t, good, 0, 64<<10)
	rss2 := testutil.ProcStatus(t, pid, "VmRSS")
	t.Logf("after they left: RSS %d MiB, fds %d", rss2>>20, testutil.ProcFDs(t, pid))
	// Kept: the arenas (touched) and at most MaxOverflowKept (64 MiB)
	// of overflow buffers per loop.
	if grow := rss2 - rss0; grow > 4*(64<<20) {
		t.Errorf("daemon RSS %d MiB over what it was before the clients came", grow>>20)
	}
}
