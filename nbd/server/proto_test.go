package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

// rawClient speaks the protocol byte by byte, so tests can send what a
// well-behaved client never would.
type rawClient struct {
	t          testing.TB
	c          net.Conn
	structured bool
	size       uint64
	flags      uint16
	peeked     []byte // read by replied, not yet consumed
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	network := "tcp"
	if addr[0] == '/' {
		network = "unix"
	}
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{t: t, c: c}
	var greet [18]byte
	rc.read(greet[:])
	if binary.BigEndian.Uint64(greet[0:]) != wire.NBDMagic || binary.BigEndian.Uint64(greet[8:]) != wire.IHaveOpt {
		t.Fatalf("bad greeting % x", greet)
	}
	if f := binary.BigEndian.Uint16(greet[16:]); f&wire.FlagFixedNewstyle == 0 || f&wire.FlagNoZeroes == 0 {
		t.Fatalf("handshake flags %#x lack fixed newstyle / no zeroes", f)
	}
	rc.write(binary.BigEndian.AppendUint32(nil, wire.ClientFixedNewstyle|wire.ClientNoZeroes))
	return rc
}

func (rc *rawClient) read(b []byte) {
	rc.t.Helper()
	n := copy(b, rc.peeked)
	rc.peeked = rc.peeked[n:]
	// Each read and write is bounded (a hang fails the test), not the
	// connection's life: a slow run takes longer, and that is all.
	rc.c.SetReadDeadline(time.Now().Add(testutil.Patience))
	if _, err := io.ReadFull(rc.c, b[n:]); err != nil {
		rc.t.Fatalf("read: %v", err)
	}
}

// replied reports whether a reply starts to arrive within d; it is left
// to be read. False only says nothing came in that time.
func (rc *rawClient) replied(d time.Duration) bool {
	rc.t.Helper()
	if len(rc.peeked) > 0 {
		return true
	}
	rc.c.SetReadDeadline(time.Now().Add(d))
	var b [1]byte
	n, err := rc.c.Read(b[:])
	if n == 1 {
		rc.peeked = append(rc.peeked, b[0])
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	rc.t.Fatalf("read: %v", err)
	return false
}

func (rc *rawClient) write(b []byte) {
	rc.t.Helper()
	rc.c.SetWriteDeadline(time.Now().Add(testutil.Patience))
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

func (rc *rawClient) option(opt uint32, data []byte) {
	rc.t.Helper()
	var h [wire.OptionHeaderSize]byte
	wire.PutOptionHeader(h[:], opt, uint32(len(data)))
	rc.write(append(h[:], data...))
}

// optReply reads one option reply.
func (rc *rawClient) optReply() (wire.OptionReply, []byte) {
	rc.t.Helper()
	var h [wire.OptReplyHeaderLen]byte
	rc.read(h[:])
	r, err := wire.ParseOptionReply(h[:])
	if err != nil {
		rc.t.Fatal(err)
	}
	data := make([]byte, r.Length)
	rc.read(data)
	return r, data
}

// goExport negotiates structured replies (optionally) and GO, asking
// for the block sizes (so it is held to them).
func (rc *rawClient) goExport(name string, structured bool) {
	rc.t.Helper()
	rc.goExportInfos(name, structured, []uint16{wire.InfoBlockSize})
}

// rawDiskConfig shapes the export and the client of rawDisk.
type rawDiskConfig struct {
	structured bool // the client negotiates structured replies
	readOnly   bool // the device is read-only before the client connects
}

// rawDisk serves a linear export "disk" of size bytes on a new test
// server and returns the server and a raw client in transmission on it
// over TCP.
func rawDisk(t *testing.T, size int64, cfg rawDiskConfig) (*testServer, *rawClient) {
	t.Helper()
	ts := newTestServer(t, 1, Config{})
	ts.linear("disk", size)
	if cfg.readOnly {
		dev, _ := ts.reg.Get("disk")
		dev.SetReadOnly(true)
	}
	rc := dialRaw(t, ts.tcp)
	rc.goExport("disk", cfg.structured)
	return ts, rc
}

// goExportInfos is goExport asking for the infos given.
func (rc *rawClient) goExportInfos(name string, structured bool, infos []uint16) {
	rc.t.Helper()
	if structured {
		rc.option(wire.OptStructuredReply, nil)
		if r, _ := rc.optReply(); r.Type != wire.RepAck {
			rc.t.Fatalf("STRUCTURED_REPLY: reply type %#x", r.Type)
		}
		rc.structured = true
	}
	rc.option(wire.OptGo, wire.AppendGoRequest(nil, wire.GoRequest{Name: name, Infos: infos}))
	rc.infoReplies(fmt.Sprintf("GO %q", name), func(data []byte) {
		if binary.BigEndian.Uint16(data) == wire.InfoExport {
			rc.size = binary.BigEndian.Uint64(data[2:])
			rc.flags = binary.BigEndian.Uint16(data[10:])
		}
	})
}

// infoReplies reads the replies to an INFO or GO option (what) up to its
// ACK and hands each INFO reply's payload to info; a reply of another
// type fails the test.
func (rc *rawClient) infoReplies(what string, info func(data []byte)) {
	rc.t.Helper()
	for {
		r, data := rc.optReply()
		switch r.Type {
		case wire.RepInfo:
			info(data)
		case wire.RepAck:
			return
		default:
			rc.t.Fatalf("%s: reply type %#x: %s", what, r.Type, data)
		}
	}
}

func (rc *rawClient) send(typ, flags uint16, cookie, off uint64, length uint32, payload []byte) {
	rc.t.Helper()
	var b [wire.RequestSize]byte
	wire.Request{Flags: flags, Type: typ, Cookie: cookie, Offset: off, Length: length}.Encode(b[:])
	rc.write(append(b[:], payload...))
}

// sendReq sends r, with the payload given.
func (rc *rawClient) sendReq(r wire.Request, payload []byte) {
	rc.t.Helper()
	rc.send(r.Type, r.Flags, r.Cookie, r.Offset, r.Length, payload)
}

// reply reads one reply (simple, or a structured chunk stream ending in
// DONE) and returns its cookie, error and read data.
func (rc *rawClient) reply() (cookie uint64, werr uint32, data []byte) {
	rc.t.Helper()
	var m [4]byte
	rc.read(m[:])
	switch binary.BigEndian.Uint32(m[:]) {
	case wire.SimpleMagic:
		var h [12]byte
		rc.read(h[:])
		return binary.BigEndian.Uint64(h[4:]), binary.BigEndian.Uint32(h[0:]), nil
	case wire.StructMagic:
		for {
			var h [16]byte
			rc.read(h[:])
			flags, typ := binary.BigEndian.Uint16(h[0:]), binary.BigEndian.Uint16(h[2:])
			cookie = binary.BigEndian.Uint64(h[4:])
			body := make([]byte, binary.BigEndian.Uint32(h[12:]))
			rc.read(body)
			switch typ {
			case wire.ReplyOffsetData:
				data = append(data, body[8:]...)
			case wire.ReplyError:
				werr = binary.BigEndian.Uint32(body)
			}
			if flags&wire.ReplyFlagDone != 0 {
				return cookie, werr, data
			}
			rc.read(m[:])
		}
	default:
		rc.t.Fatalf("bad reply magic % x", m)
	}
	return
}

// readData reads a simple reply's payload of n bytes.
func (rc *rawClient) readData(n int) []byte {
	b := make([]byte, n)
	rc.read(b)
	return b
}

// closed reports whether the server closed the connection.
func (rc *rawClient) closed() bool {
	rc.c.SetReadDeadline(time.Now().Add(testutil.Patience))
	var b [1]byte
	_, err := rc.c.Read(b[:])
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err)
}

func isReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout()
}

func TestBadRequests(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	ts.linear("disk", 16<<20)
	const size = 16 << 20
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			rc := dialRaw(t, ts.tcp)
			rc.goExport("disk", structured)
			if rc.size != size {
				t.Fatalf("export size %d", rc.size)
			}
			cases := []struct {
				name    string
				req     wire.Request
				payload int
				want    uint32
			}{
				{"read past the end", wire.Request{Type: wire.CmdRead, Offset: size - 4096, Length: 8192}, 0, wire.EINVAL},
				{"read offset overflow", wire.Request{Type: wire.CmdRead, Offset: ^uint64(0) - 511, Length: 4096}, 0, wire.EINVAL},
				{"misaligned read offset", wire.Request{Type: wire.CmdRead, Offset: 100, Length: 4096}, 0, wire.EINVAL},
				{"misaligned read length", wire.Request{Type: wire.CmdRead, Length: 100}, 0, wire.EINVAL},
				{"zero-length read", wire.Request{Type: wire.CmdRead}, 0, wire.EINVAL},
				{"oversized read", wire.Request{Type: wire.CmdRead, Length: DefaultMaxPayload + 512}, 0, wire.EOVERFLOW},
				{"write past the end", wire.Request{Type: wire.CmdWrite, Offset: size - 4096, Length: 8192}, 8192, wire.ENOSPC},
				{"misaligned write", wire.Request{Type: wire.CmdWrite, Offset: 4097, Length: 4096}, 4096, wire.EINVAL},
				{"trim past the end", wire.Request{Type: wire.CmdTrim, Offset: size, Length: 4096}, 0, wire.EINVAL},
				{"write-zeroes past the end", wire.Request{Type: wire.CmdWriteZeroes, Offset: size - 512, Length: 1024}, 0, wire.ENOSPC},
				{"unknown command", wire.Request{Type: 42, Length: 4096}, 0, wire.EINVAL},
				{"unknown flag", wire.Request{Type: wire.CmdRead, Flags: 1 << 9, Length: 4096}, 0, wire.EINVAL},
				{"no-hole on a read", wire.Request{Type: wire.CmdRead, Flags: wire.CmdFlagNoHole, Length: 4096}, 0, wire.EINVAL},
				{"flush with flags", wire.Request{Type: wire.CmdFlush, Flags: wire.CmdFlagFUA}, 0, wire.EINVAL},
				{"block status without a meta context", wire.Request{Type: wire.CmdBlockStatus, Length: 4096}, 0, wire.EINVAL},
			}
			for i, c := range cases {
				c.req.Cookie = uint64(i + 1)
				rc.sendReq(c.req, make([]byte, c.payload))
				cookie, werr, _ := rc.reply()
				if cookie != uint64(i+1) || werr != c.want {
					t.Fatalf("%s: cookie %d error %d, want cookie %d error %d", c.name, cookie, werr, i+1, c.want)
				}
			}
			// The connection still works after all that.
			data := bytes.Repeat([]byte{0x5a}, 4096)
			rc.send(wire.CmdWrite, wire.CmdFlagFUA, 100, 4096, 4096, data)
			if _, werr, _ := rc.reply(); werr != 0 {
				t.Fatalf("write after bad requests: error %d", werr)
			}
			rc.send(wire.CmdRead, 0, 101, 4096, 4096, nil)
			_, werr, got := rc.reply()
			if !structured {
				got = rc.readData(4096)
			}
			if werr != 0 || !bytes.Equal(got, data) {
				t.Fatalf("read back: error %d, data ok %v", werr, bytes.Equal(got, data))
			}
		})
	}
}

func TestOversizedWritePayload(t *testing.T) {
	// Just over the maximum: refused, the payload drained, the connection
	// stays in sync and usable.
	ts, rc := rawDisk(t, 16<<20, rawDiskConfig{})
	n := DefaultMaxPayload + 512
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		rc.send(wire.CmdWrite, 0, 1, 0, uint32(n), make([]byte, n))
	}()
	if _, werr, _ := rc.reply(); werr != wire.EOVERFLOW {
		t.Fatalf("oversized write: error %d, want EOVERFLOW", werr)
	}
	// The refusal comes after the payload is read: it has all been sent.
	testutil.Wait(t, "the oversized write to be sent", sent)
	rc.send(wire.CmdFlush, 0, 2, 0, 0, nil)
	if cookie, werr, _ := rc.reply(); cookie != 2 || werr != 0 {
		t.Fatalf("flush after a drained payload: cookie %d error %d", cookie, werr)
	}
	// Twice the maximum: drained all the same, the reply after it.
	rc2 := dialRaw(t, ts.tcp)
	rc2.goExport("disk", false)
	n = 2 * DefaultMaxPayload
	go func() {
		rc2.send(wire.CmdWrite, 0, 3, 0, uint32(n), make([]byte, n))
		rc2.send(wire.CmdFlush, 0, 4, 0, 0, nil)
	}()
	if cookie, werr, _ := rc2.reply(); cookie != 3 || werr != wire.EOVERFLOW {
		t.Fatalf("huge write: cookie %d error %d, want EOVERFLOW", cookie, werr)
	}
	if cookie, werr, _ := rc2.reply(); cookie != 4 || werr != 0 {
		t.Fatalf("flush after a huge drained payload: cookie %d error %d", cookie, werr)
	}
}

func TestReadOnlyExport(t *testing.T) {
	_, rc := rawDisk(t, 8<<20, rawDiskConfig{readOnly: true})
	if rc.flags&wire.TFlagReadOnly == 0 {
		t.Fatalf("read-only export advertised flags %#x", rc.flags)
	}
	for i, typ := range []uint16{wire.CmdWrite, wire.CmdTrim, wire.CmdWriteZeroes} {
		var payload []byte
		if typ == wire.CmdWrite {
			payload = make([]byte, 4096)
		}
		rc.send(typ, 0, uint64(i), 0, 4096, payload)
		if _, werr, _ := rc.reply(); werr != wire.EPERM {
			t.Fatalf("command %d on a read-only export: error %d, want EPERM", typ, werr)
		}
	}
	rc.send(wire.CmdRead, 0, 9, 0, 4096, nil)
	if _, werr, _ := rc.reply(); werr != 0 {
		t.Fatalf("read from a read-only export: %d", werr)
	}
	rc.readData(4096)
}

func TestHandshakeOptions(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	ts.linear("disk", 8<<20)
	rc := dialRaw(t, ts.unix)
	// Unknown option: refused, the handshake goes on.
	rc.option(4242, []byte("whatever"))
	if r, _ := rc.optReply(); r.Type != wire.RepErrUnsup || r.Option != 4242 {
		t.Fatalf("unknown option: reply %+v", r)
	}
	// TLS is refused by policy.
	rc.option(wire.OptStartTLS, nil)
	if r, _ := rc.optReply(); r.Type != wire.RepErrPolicy {
		t.Fatalf("STARTTLS: reply %+v", r)
	}
	// Malformed GO.
	rc.option(wire.OptGo, []byte{0, 0, 0, 9, 'x'})
	if r, _ := rc.optReply(); r.Type != wire.RepErrInvalid {
		t.Fatalf("malformed GO: reply %+v", r)
	}
	// Unknown export.
	rc.option(wire.OptInfo, wire.AppendGoRequest(nil, wire.GoRequest{Name: "nope"}))
	if r, _ := rc.optReply(); r.Type != wire.RepErrUnknown {
		t.Fatalf("INFO for an unknown export: reply %+v", r)
	}
	// LIST.
	rc.option(wire.OptList, nil)
	r, data := rc.optReply()
	if r.Type != wire.RepServer || string(data[4:]) != "disk" {
		t.Fatalf("LIST: %+v %q", r, data)
	}
	if r, _ := rc.optReply(); r.Type != wire.RepAck {
		t.Fatalf("LIST end: %+v", r)
	}
	// Meta contexts need structured replies first.
	rc.option(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Export: "disk", Queries: []string{wire.MetaBaseAllocation}}))
	if r, _ := rc.optReply(); r.Type != wire.RepErrInvalid {
		t.Fatalf("SET_META_CONTEXT before STRUCTURED_REPLY: %+v", r)
	}
	rc.option(wire.OptStructuredReply, nil)
	rc.optReply()
	rc.option(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Export: "disk", Queries: []string{wire.MetaBaseAllocation, "qemu:dirty-bitmap:x"}}))
	r, data = rc.optReply()
	if r.Type != wire.RepMetaContext || string(data[4:]) != wire.MetaBaseAllocation {
		t.Fatalf("SET_META_CONTEXT: %+v %q", r, data)
	}
	if r, _ := rc.optReply(); r.Type != wire.RepAck {
		t.Fatalf("SET_META_CONTEXT end: %+v", r)
	}
	rc.structured = true
	rc.goExport("disk", false)
	rc.send(wire.CmdBlockStatus, 0, 7, 0, 8<<20, nil)
	var m [4]byte
	rc.read(m[:])
	var h [16]byte
	rc.read(h[:])
	body := make([]byte, binary.BigEndian.Uint32(h[12:]))
	rc.read(body)
	if binary.BigEndian.Uint16(h[2:]) != wire.ReplyBlockStatus || binary.BigEndian.Uint32(body) != wire.MetaContextID {
		t.Fatalf("BLOCK_STATUS reply type %d context %d", binary.BigEndian.Uint16(h[2:]), binary.BigEndian.Uint32(body))
	}
	var total uint64
	for i := 4; i+8 <= len(body); i += 8 {
		total += uint64(binary.BigEndian.Uint32(body[i:]))
	}
	if total != 8<<20 {
		t.Fatalf("BLOCK_STATUS extents cover %d bytes, want %d", total, 8<<20)
	}
	// ABORT in the transmission phase isn't an option; DISC closes.
	rc.send(wire.CmdDisc, 0, 8, 0, 0, nil)
	if !rc.closed() {
		t.Fatal("connection open after DISC")
	}
}

func TestExportNameAndAbort(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	ts.linear("disk", 8<<20)
	rc := dialRaw(t, ts.tcp)
	rc.option(wire.OptExportName, []byte("disk"))
	var b [10]byte
	rc.read(b[:])
	if binary.BigEndian.Uint64(b[:]) != 8<<20 {
		t.Fatalf("EXPORT_NAME size %d", binary.BigEndian.Uint64(b[:]))
	}
	rc.send(wire.CmdRead, 0, 1, 0, 512, nil)
	if _, werr, _ := rc.reply(); werr != 0 {
		t.Fatal(werr)
	}
	rc.readData(512)
	// An unknown export name can only be answered by closing.
	rc2 := dialRaw(t, ts.tcp)
	rc2.option(wire.OptExportName, []byte("nope"))
	if !rc2.closed() {
		t.Fatal("EXPORT_NAME of an unknown export left the connection open")
	}
	rc3 := dialRaw(t, ts.tcp)
	rc3.option(wire.OptAbort, nil)
	rc3.optReply()
	if !rc3.closed() {
		t.Fatal("ABORT left the connection open")
	}
}

func TestManyInFlightOutOfOrder(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	// Reads of the first half are held by their backing until released;
	// reads of the second half complete at once.
	const half = 4 << 20
	slow, fast := ts.memBacking("mem:slow", half), ts.memBacking("mem:fast", half)
	ts.create("disk", fmt.Sprintf("0 %d linear %s 0\n%d %d linear %s 0", half/512, slow.Name(), half/512, half/512, fast.Name()))
	fillPattern(t, slow, 0)
	fillPattern(t, fast, half)
	slow.Hang(true)
	rc := dialRaw(t, ts.tcp)
	rc.goExport("disk", true)
	// Every request is on the wire before a reply is read: even cookies
	// read the held half, odd ones the other.
	const n = 320
	off := func(cookie uint64) uint64 { return cookie%2*half + cookie/2*4096 }
	var reqs []byte
	for i := uint64(0); i < n; i++ {
		var b [wire.RequestSize]byte
		wire.Request{Type: wire.CmdRead, Cookie: i, Offset: off(i), Length: 4096}.Encode(b[:])
		reqs = append(reqs, b[:]...)
	}
	rc.write(reqs)
	seen := map[uint64]bool{}
	answer := func() uint64 {
		t.Helper()
		cookie, werr, data := rc.reply()
		if werr != 0 || seen[cookie] || cookie >= n {
			t.Fatalf("reply for cookie %d: error %d, duplicate %v", cookie, werr, seen[cookie])
		}
		if !bytes.Equal(data, pattern(off(cookie), 4096)) {
			t.Fatalf("reply for cookie %d: wrong data", cookie)
		}
		seen[cookie] = true
		return cookie
	}
	// The immediate half is answered while the held half waits: replies
	// out of order, and the read side did not stall behind the first
	// held read.
	for i := 0; i < n/2; i++ {
		if cookie := answer(); cookie%2 == 0 {
			t.Fatalf("reply %d is for held read %d", i, cookie)
		}
	}
	// The server took in every held read before answering one: they are
	// all at the backing together.
	testutil.Eventually(t, "every held read at the backing at once", func() bool { return slow.Held() == n/2 })
	slow.Hang(false)
	slow.Release()
	for len(seen) < n {
		answer()
	}
}

func TestClientVanishesMidRequest(t *testing.T) {
	// An acknowledged write, then a write whose payload never finishes.
	ts, rc := rawDisk(t, 16<<20, rawDiskConfig{})
	want := bytes.Repeat([]byte("acked!!!"), 512)
	rc.send(wire.CmdWrite, 0, 1, 0, 4096, want)
	if _, werr, _ := rc.reply(); werr != 0 {
		t.Fatal(werr)
	}
	rc.send(wire.CmdWrite, 0, 2, 0, 1<<20, make([]byte, 1000))
	rc.c.Close()
	// And a client that queues reads and leaves without reading replies.
	rc2 := dialRaw(t, ts.tcp)
	rc2.goExport("disk", false)
	for i := 0; i < 64; i++ {
		rc2.send(wire.CmdRead, 0, uint64(i), 0, 1<<20, nil)
	}
	rc2.c.Close()
	// The server carries on and the acknowledged write is there.
	rc3 := dialRaw(t, ts.tcp)
	rc3.goExport("disk", false)
	rc3.send(wire.CmdRead, 0, 3, 0, 4096, nil)
	if _, werr, _ := rc3.reply(); werr != 0 {
		t.Fatal(werr)
	}
	if got := rc3.readData(4096); !bytes.Equal(got, want) {
		t.Fatal("acknowledged write lost after a client vanished")
	}
	testutil.Eventually(t, "the vanished clients' connections to be cleaned up (one left active)", func() bool { return ts.srv.Stats().Active.Load() == 1 })
}

func TestStalledClientDoesNotBlockOthers(t *testing.T) {
	ts := newTestServer(t, 1, Config{}) // one loop: both clients share it
	ts.linear("disk", 64<<20)
	stalled := dialRaw(t, ts.tcp)
	stalled.goExport("disk", false)
	// Ask for far more data than the socket buffers hold, read nothing.
	go func() {
		for i := 0; i < 256; i++ {
			var b [wire.RequestSize]byte
			wire.Request{Type: wire.CmdRead, Cookie: uint64(i), Offset: 0, Length: 1 << 20}.Encode(b[:])
			if _, err := stalled.c.Write(b[:]); err != nil {
				return
			}
		}
	}()
	// Stalled: the server holds tens of MiB of replies it cannot send.
	testutil.Eventually(t, "the stalled connection to fill its in-flight budget", func() bool {
		return ts.srv.Stats().PeakInflightBytes.Load() >= 32<<20
	})
	rc := dialRaw(t, ts.tcp)
	rc.goExport("disk", false)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 200; i++ {
		off := rng.Uint64N(16000) * 4096
		rc.send(wire.CmdRead, 0, uint64(i), off, 4096, nil)
		if _, werr, _ := rc.reply(); werr != 0 {
			t.Fatal(werr)
		}
		rc.readData(4096)
	}
}

func TestMultiConnConsistency(t *testing.T) {
	ts := newTestServer(t, 2, Config{})
	ts.linear("disk", 16<<20)
	a, b, c := dialRaw(t, ts.tcp), dialRaw(t, ts.unix), dialRaw(t, ts.tcp)
	for _, rc := range []*rawClient{a, b, c} {
		rc.goExport("disk", false)
		if rc.flags&wire.TFlagCanMultiConn == 0 {
			t.Fatal("CAN_MULTI_CONN not advertised")
		}
	}
	data := bytes.Repeat([]byte{0xc3}, 64<<10)
	a.send(wire.CmdWrite, 0, 1, 1<<20, uint32(len(data)), data)
	if _, werr, _ := a.reply(); werr != 0 {
		t.Fatal(werr)
	}
	b.send(wire.CmdFlush, 0, 2, 0, 0, nil)
	if _, werr, _ := b.reply(); werr != 0 {
		t.Fatal(werr)
	}
	c.send(wire.CmdRead, 0, 3, 1<<20, uint32(len(data)), nil)
	if _, werr, _ := c.reply(); werr != 0 {
		t.Fatal(werr)
	}
	if got := c.readData(len(data)); !bytes.Equal(got, data) {
		t.Fatal("write on one connection, flush on a second: a third doesn't see it")
	}
}

func TestShutdownAnswersInFlight(t *testing.T) {
	ts, rc := rawDisk(t, 16<<20, rawDiskConfig{})
	for i := 0; i < 32; i++ {
		rc.send(wire.CmdRead, 0, uint64(i), uint64(i)*4096, 4096, nil)
	}
	testutil.Eventually(t, "the server to take in the 32 reads", func() bool { return ts.srv.Stats().Requests.Load() >= 32 })
	done := make(chan error, 1)
	go func() { done <- ts.srv.Shutdown(contextWithTimeout(t, 10*time.Second)) }()
	for i := 0; i < 32; i++ {
		if _, werr, _ := rc.reply(); werr != 0 {
			t.Fatal(werr)
		}
		rc.readData(4096)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !rc.closed() {
		t.Fatal("connection open after Shutdown")
	}
}

// TestSendDFOnlyWithStructuredReplies: NBD_FLAG_SEND_DF is offered only
// once structured replies are negotiated (proto.md: the server MUST leave
// it clear otherwise), by INFO, GO and EXPORT_NAME alike; and a DF read is
// refused where the flag was not offered.
func TestSendDFOnlyWithStructuredReplies(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	ts.linear("disk", 8<<20)
	for _, how := range []string{"INFO", "GO", "EXPORT_NAME"} {
		for _, structured := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/structured=%v", how, structured), func(t *testing.T) {
				rc := dialRaw(t, ts.tcp)
				if structured {
					rc.option(wire.OptStructuredReply, nil)
					if r, _ := rc.optReply(); r.Type != wire.RepAck {
						t.Fatalf("STRUCTURED_REPLY: reply type %#x", r.Type)
					}
					rc.structured = true
				}
				var flags uint16
				switch how {
				case "INFO":
					rc.option(wire.OptInfo, wire.AppendGoRequest(nil, wire.GoRequest{Name: "disk"}))
					rc.infoReplies("INFO", func(data []byte) {
						if binary.BigEndian.Uint16(data) == wire.InfoExport {
							flags = binary.BigEndian.Uint16(data[10:])
						}
					})
				case "GO":
					rc.goExport("disk", false)
					flags = rc.flags
				case "EXPORT_NAME":
					rc.option(wire.OptExportName, []byte("disk"))
					var b [10]byte
					rc.read(b[:])
					flags = binary.BigEndian.Uint16(b[8:])
				}
				if flags&wire.TFlagHasFlags == 0 {
					t.Fatalf("flags %#x: no transmission flags seen", flags)
				}
				if got := flags&wire.TFlagSendDF != 0; got != structured {
					t.Fatalf("flags %#x: SEND_DF %v with structured replies %v", flags, got, structured)
				}
				if how == "INFO" {
					return
				}
				want := wire.EINVAL
				if structured {
					want = 0
				}
				rc.send(wire.CmdRead, wire.CmdFlagDF, 1, 0, 4096, nil)
				_, werr, data := rc.reply()
				if werr != want {
					t.Fatalf("DF read: error %d, want %d", werr, want)
				}
				if werr == 0 && len(data) != 4096 {
					t.Fatalf("DF read: %d bytes", len(data))
				}
			})
		}
	}
}

// TestCacheAndFastZero checks CACHE (advisory: success within the export,
// EINVAL outside it or with a flag) and the answers proto.md allows
// WRITE_ZEROES with FAST_ZERO: done (and fast) where the backing zeroes
// fast, NBD_ENOTSUP at once where it can't, the export untouched; and
// NBD_ENOTSUP for nothing else.
func TestCacheAndFastZero(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	const size = 8 << 20
	m := ts.memDisk("disk", size)
	ts.linear("file", size) // tmpfs: no FALLOC_FL_ZERO_RANGE
	rc := dialRaw(t, ts.tcp)
	rc.goExport("disk", false)
	if rc.flags&wire.TFlagSendCache == 0 || rc.flags&wire.TFlagSendFastZero == 0 || rc.flags&wire.TFlagSendWriteZeroes == 0 {
		t.Fatalf("flags %#x lack SEND_CACHE, SEND_FAST_ZERO or SEND_WRITE_ZEROES", rc.flags)
	}
	cases := []struct {
		name   string
		req    wire.Request
		fail   syscall.Errno // the backing fails the I/O with this
		want   uint32
		zeroed bool // the range reads back as zeroes
	}{
		{name: "cache", req: wire.Request{Type: wire.CmdCache, Offset: 1 << 20, Length: 1 << 20}},
		{name: "cache of the whole export", req: wire.Request{Type: wire.CmdCache, Length: size}},
		{name: "cache past the end", req: wire.Request{Type: wire.CmdCache, Offset: size - 4096, Length: 8192}, want: wire.EINVAL},
		{name: "cache beyond the end", req: wire.Request{Type: wire.CmdCache, Offset: size, Length: 512}, want: wire.EINVAL},
		{name: "cache offset overflow", req: wire.Request{Type: wire.CmdCache, Offset: ^uint64(0) - 511, Length: 4096}, want: wire.EINVAL},
		{name: "cache with a flag", req: wire.Request{Type: wire.CmdCache, Flags: wire.CmdFlagFUA, Length: 4096}, want: wire.EINVAL},
		{name: "fast zero", req: wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagFastZero, Offset: 4096, Length: 8192}, zeroed: true},
		{name: "fast zero, no hole", req: wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagFastZero | wire.CmdFlagNoHole, Offset: 1 << 20, Length: 4096}, zeroed: true},
		{name: "fast zero the backing can't do fast", req: wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagFastZero, Offset: 2 << 20, Length: 4096},
			fail: syscall.EOPNOTSUPP, want: wire.ENOTSUP},
		{name: "zero the backing can't do", req: wire.Request{Type: wire.CmdWriteZeroes, Offset: 2 << 20, Length: 4096}, fail: syscall.EOPNOTSUPP, want: wire.EIO},
		{name: "trim the backing can't do", req: wire.Request{Type: wire.CmdTrim, Offset: 2 << 20, Length: 4096}, fail: syscall.EOPNOTSUPP},
		{name: "fast zero past the end", req: wire.Request{Type: wire.CmdWriteZeroes, Flags: wire.CmdFlagFastZero, Offset: size, Length: 4096}, want: wire.ENOSPC},
	}
	for i, c := range cases {
		fillPattern(t, m, 0)
		if c.fail != 0 {
			m.FailNext(1, c.fail)
		}
		c.req.Cookie = uint64(i)
		rc.sendReq(c.req, nil)
		cookie, werr, _ := rc.reply()
		m.FailNext(0, 0)
		if cookie != uint64(i) || werr != c.want {
			t.Errorf("%s: cookie %d error %d, want cookie %d error %d", c.name, cookie, werr, i, c.want)
			continue
		}
		r := c.req
		if r.Offset >= size || uint64(r.Length) > size-r.Offset {
			continue
		}
		got := make([]byte, r.Length)
		m.ReadAt(got, int64(r.Offset))
		switch {
		case c.zeroed && !bytes.Equal(got, make([]byte, r.Length)):
			t.Errorf("%s: not zeroed", c.name)
		case !c.zeroed && r.Type != wire.CmdTrim && !bytes.Equal(got, pattern(r.Offset, int(r.Length))):
			t.Errorf("%s: the export changed", c.name)
		}
	}
	// On a real file whose file system can't zero a range, FAST_ZERO is
	// either done or refused with NBD_ENOTSUP leaving the data alone.
	rf := dialRaw(t, ts.unix)
	rf.goExport("file", false)
	data := bytes.Repeat([]byte{0x77}, 8192)
	rf.send(wire.CmdWrite, 0, 1, 0, 8192, data)
	if _, werr, _ := rf.reply(); werr != 0 {
		t.Fatalf("write: error %d", werr)
	}
	rf.send(wire.CmdWriteZeroes, wire.CmdFlagFastZero, 2, 0, 8192, nil)
	_, werr, _ := rf.reply()
	rf.send(wire.CmdRead, 0, 3, 0, 8192, nil)
	if _, rerr, _ := rf.reply(); rerr != 0 {
		t.Fatalf("read: error %d", rerr)
	}
	got := rf.readData(8192)
	switch {
	case werr == 0 && !bytes.Equal(got, make([]byte, 8192)):
		t.Error("file: FAST_ZERO answered success but the range is not zero")
	case werr == wire.ENOTSUP && !bytes.Equal(got, data):
		t.Error("file: FAST_ZERO refused but the data changed")
	case werr != 0 && werr != wire.ENOTSUP:
		t.Errorf("file: FAST_ZERO answered error %d, want success or ENOTSUP", werr)
	}
	t.Logf("FAST_ZERO on a tmpfs file: error %d", werr)
	// Without FAST_ZERO it is done, never refused as "not fast".
	rf.send(wire.CmdWriteZeroes, 0, 4, 0, 8192, nil)
	if _, werr, _ := rf.reply(); werr != 0 {
		t.Fatalf("file: plain WRITE_ZEROES: error %d", werr)
	}
}

// TestBigWritesReceivedIntoTheirBuffers: a burst of big writes, with small
// writes, a read and a flush among them, all on the wire before the first
// reply is read. Every write lands; and after the first big write the
// connection takes one header at a time, so the payloads of the big writes
// after it are received into their buffers instead of being copied out of
// the receive buffer (at most two receive buffers' worth are copied;
// without it, 1.9 of the 2.1 MiB were).
func TestBigWritesReceivedIntoTheirBuffers(t *testing.T) {
	ts, rc := rawDisk(t, 16<<20, rawDiskConfig{structured: true})
	type w struct {
		off  uint64
		data []byte
	}
	var writes []w
	var burst []byte
	add := func(typ uint16, cookie, off uint64, n uint32, payload []byte) {
		var b [wire.RequestSize]byte
		wire.Request{Type: typ, Cookie: cookie, Offset: off, Length: n}.Encode(b[:])
		burst = append(append(burst, b[:]...), payload...)
	}
	cookie := uint64(0)
	write := func(off uint64, n int) {
		d := pattern(off^0x5a5a, n)
		writes = append(writes, w{off, d})
		add(wire.CmdWrite, cookie, off, uint32(n), d)
		cookie++
	}
	write(0, 4096)
	for i := uint64(0); i < 16; i++ {
		write((1+i)*128<<10, 128<<10)
		if i == 7 {
			write(8<<20, 4096)
			add(wire.CmdRead, cookie, 0, 4096, nil)
			cookie++
			write(9<<20, 64<<10)
		}
	}
	add(wire.CmdFlush, cookie, 0, 0, nil)
	cookie++
	rc.write(burst)
	for i := uint64(0); i < cookie; i++ {
		if c, werr, _ := rc.reply(); werr != 0 {
			t.Fatalf("request %d: error %d", c, werr)
		}
	}
	for _, x := range writes {
		rc.send(wire.CmdRead, 0, 1000, x.off, uint32(len(x.data)), nil)
		if _, werr, data := rc.reply(); werr != 0 || !bytes.Equal(data, x.data) {
			t.Fatalf("read back %d bytes at %d: error %d, equal %v", len(x.data), x.off, werr, bytes.Equal(data, x.data))
		}
	}
	// A receive of the whole buffer happens twice: at the start, and after
	// the small requests in the middle.
	if got, most := ts.srv.Stats().PayloadCopied.Load(), int64(2*rbufSize+8192); got > most {
		t.Fatalf("%d payload bytes copied out of the receive buffer, want at most %d", got, most)
	}
}
