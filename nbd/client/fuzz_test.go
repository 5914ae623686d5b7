package client

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"udm/nbd/wire"
)

// ctFuzzReqs are the requests in flight when the fuzzed replies arrive:
// cookie, command, offset, length.
var ctFuzzReqs = []struct {
	cmd    uint16
	off    uint64
	length uint32
}{
	{wire.CmdRead, 0, 4096},
	{wire.CmdWrite, 4096, 512},
	{wire.CmdBlockStatus, 0, 65536},
	{wire.CmdRead, 8192, 1024},
	{wire.CmdFlush, 0, 0},
}

// FuzzClientReplies feeds arbitrary bytes to the client's reply reader
// with requests in flight: it must never panic, write outside a read's
// buffer, or end a request other than exactly once.
func FuzzClientReplies(f *testing.F) {
	simple := func(cookie uint64, werr uint32, data []byte) []byte {
		b := make([]byte, wire.SimpleReplySize)
		wire.PutSimpleReply(b, werr, cookie)
		return append(b, data...)
	}
	chunk := func(flags, typ uint16, cookie uint64, payload []byte) []byte {
		b := make([]byte, wire.StructReplySize)
		wire.PutStructuredHeader(b, flags, typ, cookie, uint32(len(payload)))
		return append(b, payload...)
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	f.Add(cat(simple(1, 0, make([]byte, 4096)), simple(2, 0, nil), simple(5, wire.EIO, nil)), false)
	f.Add(cat(simple(4, wire.ENOSPC, nil), simple(1, 0, make([]byte, 4096))), false)
	f.Add(cat(chunk(0, wire.ReplyOffsetHole, 1, ctHole(0, 2048)), chunk(wire.ReplyFlagDone, wire.ReplyOffsetData, 1, ctData(2048, make([]byte, 2048)))), true)
	f.Add(cat(chunk(wire.ReplyFlagDone, wire.ReplyError, 4, ctErrChunk(wire.EIO, "x")), simple(2, 0, nil)), true)
	bs := binary.BigEndian.AppendUint32(nil, 0)
	bs = binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(bs, 65536), wire.StateHole)
	f.Add(cat(chunk(wire.ReplyFlagDone, wire.ReplyBlockStatus, 3, bs), chunk(wire.ReplyFlagDone, wire.ReplyNone, 5, nil)), true)
	f.Add(cat(chunk(0, wire.ReplyOffsetData, 4, ctData(^uint64(0)-5, make([]byte, 16))), chunk(wire.ReplyFlagDone, 1<<15|9, 4, ctErrChunk(wire.EPERM, ""))), true)
	f.Add(cat(simple(1, wire.ESHUTDOWN, nil)), true)
	f.Add([]byte("garbage"), true)
	f.Fuzz(func(t *testing.T, data []byte, structured bool) {
		c := &Client{reqs: map[uint64]*creq{}, connected: make(chan struct{}), kickC: make(chan struct{}, 1)}
		c.opts.defaults()
		c.pool.New = func() any { return newCreq(c) }
		info := &Info{Size: 1 << 20, Structured: structured, BlockStatus: structured, MinBlock: 1, PrefBlock: 4096,
			MaxBlock: 32 << 20, MaxPayload: 32 << 20}
		c.info.Store(info)
		a, b := net.Pipe()
		defer b.Close()
		cc := &clientConn{c: c, nc: a, br: bufio.NewReader(bytes.NewReader(data)), info: info,
			kick: make(chan struct{}, 1), dead: make(chan struct{})}
		c.conn = cc
		col := newCollector(len(ctFuzzReqs))
		const guard = 64
		bufs := make([][]byte, len(ctFuzzReqs))
		for i, q := range ctFuzzReqs {
			r := c.getReq()
			r.h, r.tag = col, uint64(i)
			r.cmd, r.off, r.length = q.cmd, q.off, q.length
			if q.cmd == wire.CmdRead || q.cmd == wire.CmdWrite {
				bufs[i] = make([]byte, int(q.length)+2*guard)
				for j := range bufs[i] {
					bufs[i][j] = 0x5A
				}
				r.buf = bufs[i][guard : guard+int(q.length)]
			}
			r.cookie = uint64(i + 1)
			r.inTable, r.sent, r.conn = true, true, cc
			r.refs.Store(2)
			c.reqs[r.cookie] = r
		}
		for cc.readReply() == nil {
		}
		cc.fail(errShutdown)
		c.closed = true
		c.connLost(cc)
		col.wait(t)
		col.once(t, len(ctFuzzReqs))
		for i, b := range bufs {
			if b != nil && (!ctAllBytes(b[:guard], 0x5A) || !ctAllBytes(b[len(b)-guard:], 0x5A)) {
				t.Fatalf("request %d: a reply wrote outside its buffer", i)
			}
		}
		if len(c.reqs) != 0 {
			t.Fatalf("%d requests left in the table", len(c.reqs))
		}
	})
}
