package client

// Scripted in-process NBD servers for the protocol corners real servers
// don't reach on demand. ctFake serves transmission: hole and error
// chunks, chunks out of order or out of range, replies that stall
// halfway, unknown cookies, ESHUTDOWN. ctScript runs a test's own server
// side, from the greeting on: option fallbacks, failed handshakes, an
// export that changes size across a reconnection. Both speak through
// ctGreet, ctOption and ctRequest.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

// ctFake serves one export; handle answers each request (it runs on the
// connection's goroutine and may stall).
type ctFake struct {
	t          testing.TB
	ln         net.Listener
	uri        string
	size       uint64
	flags      uint16
	structured bool
	data       []byte    // the export's content, for memory
	bs         [3]uint32 // block sizes to advertise (none if zero)
	handle     func(fc *ctFakeConn, req wire.Request, payload []byte)

	mu    sync.Mutex
	conns []net.Conn
	n     atomic.Int32 // connections accepted
	wg    sync.WaitGroup
}

type ctFakeConn struct {
	f   *ctFake
	nc  net.Conn
	wmu sync.Mutex
	idx int32 // 1 for the first connection
}

func newCtFake(t testing.TB, structured bool, handle func(fc *ctFakeConn, req wire.Request, payload []byte)) *ctFake {
	t.Helper()
	return newCtFakeSize(t, structured, 1<<20, handle)
}

func newCtFakeSize(t testing.TB, structured bool, size uint64, handle func(fc *ctFakeConn, req wire.Request, payload []byte)) *ctFake {
	t.Helper()
	return newCtFakeBlocks(t, structured, size, [3]uint32{}, handle)
}

// newCtFakeBlocks also advertises block sizes (min, preferred, max) when
// bs is not zero.
func newCtFakeBlocks(t testing.TB, structured bool, size uint64, bs [3]uint32, handle func(fc *ctFakeConn, req wire.Request, payload []byte)) *ctFake {
	t.Helper()
	sock := filepath.Join(testutil.SockDir(t), "fake.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &ctFake{t: t, ln: ln, uri: "nbd+unix:///?socket=" + sock, size: size,
		flags:      wire.TFlagHasFlags | wire.TFlagSendFlush | wire.TFlagSendFUA | wire.TFlagSendTrim | wire.TFlagSendWriteZeroes,
		structured: structured, handle: handle, bs: bs}
	f.data = make([]byte, f.size)
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *ctFake) accept() {
	defer f.wg.Done()
	for {
		nc, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, nc)
		f.mu.Unlock()
		fc := &ctFakeConn{f: f, nc: nc, idx: f.n.Add(1)}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer nc.Close()
			fc.serve()
		}()
	}
}

// dropAll closes every connection (the server "restarts").
func (f *ctFake) dropAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
}

func (f *ctFake) close() {
	f.ln.Close()
	f.dropAll()
	f.wg.Wait()
}

func (fc *ctFakeConn) serve() {
	f := fc.f
	br := bufio.NewReader(fc.nc)
	if _, ok := ctGreet(fc.nc, br, wire.FlagFixedNewstyle|wire.FlagNoZeroes); !ok {
		return
	}
	for done := false; !done; {
		opt, _, ok := ctOption(br)
		if !ok {
			return
		}
		switch opt {
		case wire.OptStructuredReply:
			if f.structured {
				fc.nc.Write(wire.AppendOptionReply(nil, opt, wire.RepAck, nil))
			} else {
				fc.nc.Write(wire.AppendOptionReply(nil, opt, wire.RepErrUnsup, nil))
			}
		case wire.OptGo:
			reply := wire.AppendOptionReply(nil, opt, wire.RepInfo, ctInfoExport(f.size, f.flags))
			if f.bs[0] != 0 {
				reply = wire.AppendOptionReply(reply, opt, wire.RepInfo, ctInfoBlockSize(f.bs[0], f.bs[1], f.bs[2]))
			}
			fc.nc.Write(wire.AppendOptionReply(reply, opt, wire.RepAck, nil))
			done = true
		default:
			fc.nc.Write(wire.AppendOptionReply(nil, opt, wire.RepErrUnsup, nil))
		}
	}
	for {
		req, ok := ctRequest(br)
		if !ok {
			return
		}
		var payload []byte
		if req.Type == wire.CmdWrite {
			payload = make([]byte, req.Length)
			if _, err := io.ReadFull(br, payload); err != nil {
				return
			}
		}
		if req.Type == wire.CmdDisc {
			return
		}
		f.handle(fc, req, payload)
	}
}

// simple sends a simple reply (with data, for a read).
func (fc *ctFakeConn) simple(cookie uint64, werr uint32, data []byte) {
	b := make([]byte, wire.SimpleReplySize, wire.SimpleReplySize+len(data))
	wire.PutSimpleReply(b, werr, cookie)
	fc.write(append(b, data...))
}

// chunk sends one structured reply chunk.
func (fc *ctFakeConn) chunk(flags, typ uint16, cookie uint64, payload []byte) {
	b := make([]byte, wire.StructReplySize, wire.StructReplySize+len(payload))
	wire.PutStructuredHeader(b, flags, typ, cookie, uint32(len(payload)))
	fc.write(append(b, payload...))
}

func (fc *ctFakeConn) write(b []byte) {
	fc.wmu.Lock()
	defer fc.wmu.Unlock()
	fc.nc.Write(b)
}

func ctData(off uint64, data []byte) []byte {
	return append(binary.BigEndian.AppendUint64(nil, off), data...)
}

func ctHole(off uint64, n uint32) []byte {
	return binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint64(nil, off), n)
}

func ctErrChunk(werr uint32, msg string) []byte {
	b := binary.BigEndian.AppendUint32(nil, werr)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// memory answers like a plain memory export: the default behaviour.
func (fc *ctFakeConn) memory(req wire.Request, payload []byte) {
	f := fc.f
	switch req.Type {
	case wire.CmdRead:
		d := f.data[req.Offset : req.Offset+uint64(req.Length)]
		if f.structured {
			fc.chunk(wire.ReplyFlagDone, wire.ReplyOffsetData, req.Cookie, ctData(req.Offset, d))
		} else {
			fc.simple(req.Cookie, 0, d)
		}
	case wire.CmdWrite:
		copy(f.data[req.Offset:], payload)
		fc.simple(req.Cookie, 0, nil)
	default:
		fc.simple(req.Cookie, 0, nil)
	}
}

func TestClientStructuredChunks(t *testing.T) {
	pat := ctPattern(make([]byte, 8192), 5)
	f := newCtFake(t, true, func(fc *ctFakeConn, req wire.Request, payload []byte) {
		c := req.Cookie
		switch req.Offset {
		case 0: // data then hole then data, out of order, then NONE+DONE
			fc.chunk(0, wire.ReplyOffsetData, c, ctData(6144, pat[6144:]))
			fc.chunk(0, wire.ReplyOffsetHole, c, ctHole(2048, 4096))
			fc.chunk(0, wire.ReplyOffsetData, c, ctData(0, pat[:2048]))
			fc.chunk(wire.ReplyFlagDone, wire.ReplyNone, c, nil)
		case 8192: // an error chunk among data
			fc.chunk(0, wire.ReplyOffsetData, c, ctData(8192, pat[:4096]))
			fc.chunk(0, wire.ReplyError, c, ctErrChunk(wire.ENOSPC, "full"))
			fc.chunk(wire.ReplyFlagDone, wire.ReplyOffsetData, c, ctData(8192+4096, pat[4096:]))
		case 16384: // an error with an offset
			fc.chunk(wire.ReplyFlagDone, wire.ReplyErrorOffset, c, append(ctErrChunk(wire.EPERM, "no"), binary.BigEndian.AppendUint64(nil, 16384+512)...))
		case 24576: // chunks that don't cover the read
			fc.chunk(wire.ReplyFlagDone, wire.ReplyOffsetData, c, ctData(24576, pat[:4096]))
		case 32768: // data outside the request
			fc.chunk(0, wire.ReplyOffsetData, c, ctData(32768+8192, pat[:512]))
			fc.chunk(wire.ReplyFlagDone, wire.ReplyOffsetData, c, ctData(32768, pat))
		case 40960: // an unknown error type
			fc.chunk(wire.ReplyFlagDone, 1<<15|77, c, ctErrChunk(wire.EINVAL, ""))
		case 49152: // an unknown non-error type
			fc.chunk(0, 77, c, []byte{1, 2, 3})
			fc.chunk(wire.ReplyFlagDone, wire.ReplyOffsetData, c, ctData(49152, pat))
		case 57344: // offsets near 2^64: no wrap-around into the buffer
			fc.chunk(0, wire.ReplyOffsetData, c, ctData(^uint64(0)-100, pat[:512]))
			fc.chunk(0, wire.ReplyOffsetHole, c, ctHole(^uint64(0)-100, 200))
			fc.chunk(wire.ReplyFlagDone, wire.ReplyOffsetData, c, ctData(57344, pat))
		default:
			fc.memory(req, payload)
		}
	})
	c := ctDial(t, f.uri, Options{})
	ctx := ctCtx(t)
	buf := make([]byte, 8192)
	fill := func() {
		for i := range buf {
			buf[i] = 0xFF
		}
	}
	fill()
	if err := c.ReadAt(ctx, buf, 0); err != nil {
		t.Fatal(err)
	}
	want := append(append(append([]byte{}, pat[:2048]...), make([]byte, 4096)...), pat[6144:]...)
	if !bytes.Equal(buf, want) {
		t.Error("data/hole chunks assembled wrongly")
	}
	for _, tc := range []struct {
		off  int64
		want syscall.Errno
	}{{8192, syscall.ENOSPC}, {16384, syscall.EPERM}, {24576, syscall.EIO}, {32768, syscall.EIO}, {40960, syscall.EINVAL}, {49152, syscall.EIO}, {57344, syscall.EIO}} {
		fill()
		if err := c.ReadAt(ctx, buf, tc.off); !errors.Is(err, tc.want) {
			t.Errorf("read at %d: %v, want %v", tc.off, err, tc.want)
		}
	}
	// The stream stayed in sync all along.
	if err := c.ReadAt(ctx, buf, 65536); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Reconnects != 0 || f.n.Load() != 1 {
		t.Errorf("%d reconnections, %d connections", st.Reconnects, f.n.Load())
	}
}

// Replies out of order and chunks of several requests interleaved.
func TestClientInterleavedReplies(t *testing.T) {
	var mu sync.Mutex
	var held []wire.Request
	pat := ctPattern(make([]byte, 4096), 9)
	f := newCtFake(t, true, func(fc *ctFakeConn, req wire.Request, _ []byte) {
		mu.Lock()
		held = append(held, req)
		if len(held) < 8 {
			mu.Unlock()
			return
		}
		hs := held
		held = nil
		mu.Unlock()
		// First halves in order, second halves in reverse.
		for _, r := range hs {
			fc.chunk(0, wire.ReplyOffsetData, r.Cookie, ctData(r.Offset, pat[:2048]))
		}
		for i := len(hs) - 1; i >= 0; i-- {
			r := hs[i]
			fc.chunk(wire.ReplyFlagDone, wire.ReplyOffsetData, r.Cookie, ctData(r.Offset+2048, pat[2048:]))
		}
	})
	c := ctDial(t, f.uri, Options{})
	col := newCollector(8)
	bufs := make([][]byte, 8)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
		c.Start(Request{Cmd: wire.CmdRead, Offset: int64(i) * 4096, Buf: bufs[i]}, col, uint64(i))
	}
	col.wait(t)
	col.once(t, 8)
	for i := range bufs {
		if col.errs[uint64(i)] != nil || !bytes.Equal(bufs[i], pat) {
			t.Errorf("read %d: %v", i, col.errs[uint64(i)])
		}
	}
}

// Simple replies: a read error carries no data, and the stream stays in
// sync.
func TestClientSimpleReplyErrors(t *testing.T) {
	f := newCtFake(t, false, func(fc *ctFakeConn, req wire.Request, payload []byte) {
		if req.Type == wire.CmdRead && req.Offset == 0 {
			fc.simple(req.Cookie, wire.ENOSPC, nil)
			return
		}
		fc.memory(req, payload)
	})
	c := ctDial(t, f.uri, Options{})
	ctx := ctCtx(t)
	if c.Info().Structured {
		t.Fatal("structured replies negotiated with a server that refused them")
	}
	buf := ctPattern(make([]byte, 4096), 1)
	if err := c.WriteAt(ctx, buf, 4096, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := c.ReadAt(ctx, got, 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("read: %v, want ENOSPC", err)
	}
	if err := c.ReadAt(ctx, got, 4096); err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("read after an error: %v", err)
	}
}

// A reply that stalls halfway through a read's data: the request's
// deadline still ends it (the connection is killed to get the buffer
// back), with ETIMEDOUT, and the client reconnects.
func TestClientTimeoutMidPayload(t *testing.T) {
	f := newCtFake(t, true, func(fc *ctFakeConn, req wire.Request, payload []byte) {
		if req.Type == wire.CmdRead && req.Offset == 0 && fc.idx == 1 {
			b := make([]byte, wire.StructReplySize)
			wire.PutStructuredHeader(b, wire.ReplyFlagDone, wire.ReplyOffsetData, req.Cookie, 8+4096)
			fc.write(append(append(b, binary.BigEndian.AppendUint64(nil, 0)...), make([]byte, 1000)...))
			return // and never the rest
		}
		fc.memory(req, payload)
	})
	c := ctDial(t, f.uri, Options{})
	col := newCollector(1)
	buf := make([]byte, 4096)
	c.Start(Request{Cmd: wire.CmdRead, Buf: buf, Timeout: 50 * time.Millisecond}, col, 0)
	col.wait(t)
	if err := col.errs[0]; !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("stalled read: %v, want ETIMEDOUT", err)
	}
	if err := c.ReadAt(ctCtx(t), buf, 4096); err != nil {
		t.Fatalf("read on the next connection: %v", err)
	}
	if st := c.Stats(); st.Reconnects < 1 || st.TimedOut != 1 {
		t.Errorf("stats %+v: want a reconnection and one timeout", st)
	}
}

// A context canceled while the writer is in the middle of a write's
// payload (the server stopped reading): the write ends with the
// context's error once the connection is killed to free its buffer.
func TestClientCancelDuringSend(t *testing.T) {
	block := make(chan struct{})
	var unblock sync.Once
	release := func() { unblock.Do(func() { close(block) }) }
	f := newCtFakeSize(t, true, 32<<20, func(fc *ctFakeConn, req wire.Request, payload []byte) {
		if fc.idx == 1 && req.Type == wire.CmdFlush {
			<-block // stop reading this connection
		}
		fc.memory(req, payload)
	})
	t.Cleanup(release) // after the fake's, so it runs before it
	c := ctDial(t, f.uri, Options{})
	ctx := ctCtx(t)
	col := newCollector(1)
	c.Start(Request{Cmd: wire.CmdFlush}, col, 0)
	pinned := func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, r := range c.reqs {
			if r.pins > 0 {
				return true
			}
		}
		return false
	}
	wctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- c.WriteAt(wctx, make([]byte, 16<<20), 0, false) }()
	testutil.Eventually(t, "the writer is stuck sending the payload", pinned)
	cancel()
	if err := testutil.Wait(t, "the canceled write to return", errc); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled write: %v", err)
	}
	release()
	col.wait(t)
	if err := col.errs[0]; err != nil {
		t.Errorf("flush (retried on the next connection): %v", err)
	}
	if err := c.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read afterwards: %v", err)
	}
}

// Unknown cookies and ESHUTDOWN replies drop the connection; the
// requests are retried on the next one.
func TestClientRetryAfterProtocolTrouble(t *testing.T) {
	for _, tc := range []struct {
		name  string
		first func(fc *ctFakeConn, req wire.Request)
	}{
		{"unknown-cookie", func(fc *ctFakeConn, req wire.Request) { fc.simple(req.Cookie+1000, 0, nil) }},
		{"bad-magic", func(fc *ctFakeConn, req wire.Request) { fc.write(make([]byte, 16)) }},
		{"eshutdown-simple", func(fc *ctFakeConn, req wire.Request) { fc.simple(req.Cookie, wire.ESHUTDOWN, nil) }},
		{"eshutdown-chunk", func(fc *ctFakeConn, req wire.Request) {
			fc.chunk(wire.ReplyFlagDone, wire.ReplyError, req.Cookie, ctErrChunk(wire.ESHUTDOWN, "bye"))
		}},
		{"simple-read-data-after-structured", func(fc *ctFakeConn, req wire.Request) { fc.simple(req.Cookie, 0, make([]byte, req.Length)) }},
		{"hang-up", func(fc *ctFakeConn, req wire.Request) { fc.nc.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pat := ctPattern(make([]byte, 4096), 3)
			f := newCtFake(t, true, func(fc *ctFakeConn, req wire.Request, payload []byte) {
				if fc.idx == 1 && req.Type == wire.CmdRead {
					tc.first(fc, req)
					return
				}
				fc.memory(req, payload)
			})
			copy(f.data[4096:], pat)
			c := ctDial(t, f.uri, Options{})
			got := make([]byte, 4096)
			if err := c.ReadAt(ctCtx(t), got, 4096); err != nil || !bytes.Equal(got, pat) {
				t.Fatalf("read: %v", err)
			}
			if st := c.Stats(); st.Reconnects != 1 || st.Retried != 1 {
				t.Errorf("stats %+v: want one reconnection and one retry", st)
			}
		})
	}
}

// Retries are bounded: a server that drops every connection fails the
// request with ENOTCONN after Retries re-sends.
func TestClientRetriesBounded(t *testing.T) {
	f := newCtFake(t, true, func(fc *ctFakeConn, req wire.Request, payload []byte) {
		if req.Type == wire.CmdRead {
			fc.nc.Close()
			return
		}
		fc.memory(req, payload)
	})
	c := ctDial(t, f.uri, Options{Retries: 2})
	err := c.ReadAt(ctCtx(t), make([]byte, 512), 0)
	if !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("read: %v, want ENOTCONN", err)
	}
	if st := c.Stats(); st.Retried != 2 {
		t.Errorf("retried %d times, want 2", st.Retried)
	}
	if err := c.WriteAt(ctCtx(t), make([]byte, 512), 0, false); err != nil {
		t.Errorf("write: %v", err)
	}
}

// A split read (longer than the maximum payload) canceled while some
// pieces are answered and others are held: ReadAt returns the context's
// error, and pieces answered later don't land in the buffer.
func TestClientCancelSplitRead(t *testing.T) {
	hold := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	var held atomic.Int32
	f := newCtFakeBlocks(t, true, 1<<20, [3]uint32{512, 4096, 16384}, func(fc *ctFakeConn, req wire.Request, payload []byte) {
		if req.Type == wire.CmdRead && req.Offset >= 32768 {
			held.Add(1)
			go func() { // answer later, off the connection's goroutine
				<-hold
				fc.memory(req, payload)
			}()
			return
		}
		fc.memory(req, payload)
	})
	t.Cleanup(release)
	for i := range f.data {
		f.data[i] = 0x11
	}
	c := ctDial(t, f.uri, Options{})
	if c.Info().MaxPayload != 16384 {
		t.Fatalf("max payload %d", c.Info().MaxPayload)
	}
	buf := make([]byte, 65536) // four pieces; two held
	for i := range buf {
		buf[i] = 0xCC
	}
	ctx, cancel := context.WithCancel(ctCtx(t))
	errc := make(chan error, 1)
	go func() { errc <- c.ReadAt(ctx, buf, 0) }()
	testutil.Eventually(t, "two pieces held", func() bool { return held.Load() == 2 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled split read: %v", err)
	}
	release()
	testutil.Eventually(t, "late pieces consumed", func() bool { return ctTableEmpty(c) })
	if !ctAllBytes(buf[32768:], 0xCC) {
		t.Fatal("a piece answered after the cancel wrote into the buffer")
	}
}

// ctScript serves each connection with fn (the server's side of a
// handshake written out by hand) and returns the URI.
func ctScript(t *testing.T, fn func(nc net.Conn, br *bufio.Reader)) string {
	t.Helper()
	sock := filepath.Join(testutil.SockDir(t), "h.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				fn(nc, bufio.NewReader(nc))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "nbd+unix:///exp?socket=" + sock
}

// ctGreet sends the newstyle greeting and reads the client's flags.
func ctGreet(nc net.Conn, br *bufio.Reader, hflags uint16) (uint32, bool) {
	var hs [18]byte
	binary.BigEndian.PutUint64(hs[0:], wire.NBDMagic)
	binary.BigEndian.PutUint64(hs[8:], wire.IHaveOpt)
	binary.BigEndian.PutUint16(hs[16:], hflags)
	nc.Write(hs[:])
	var cf [4]byte
	if _, err := io.ReadFull(br, cf[:]); err != nil {
		return 0, false
	}
	return binary.BigEndian.Uint32(cf[:]), true
}

// ctOption reads one option.
func ctOption(br *bufio.Reader) (uint32, []byte, bool) {
	var oh [wire.OptionHeaderSize]byte
	if _, err := io.ReadFull(br, oh[:]); err != nil {
		return 0, nil, false
	}
	h, err := wire.ParseOptionHeader(oh[:])
	if err != nil {
		return 0, nil, false
	}
	data := make([]byte, h.Length)
	if _, err := io.ReadFull(br, data); err != nil {
		return 0, nil, false
	}
	return h.Option, data, true
}

// ctRequest reads one request header (false: the client went away or
// sent garbage).
func ctRequest(br *bufio.Reader) (wire.Request, bool) {
	var rb [wire.RequestSize]byte
	if _, err := io.ReadFull(br, rb[:]); err != nil {
		return wire.Request{}, false
	}
	req, err := wire.ParseRequest(rb[:])
	return req, err == nil
}

// ctAwaitOption reads options, refusing every other as unsupported,
// until the client sends want; it returns want's data (false: the
// client went away).
func ctAwaitOption(nc net.Conn, br *bufio.Reader, want uint32) ([]byte, bool) {
	for {
		opt, data, ok := ctOption(br)
		if !ok {
			return nil, false
		}
		if opt == want {
			return data, true
		}
		nc.Write(wire.AppendOptionReply(nil, opt, wire.RepErrUnsup, nil))
	}
}

func ctInfoExport(size uint64, flags uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, wire.InfoExport)
	b = binary.BigEndian.AppendUint64(b, size)
	return binary.BigEndian.AppendUint16(b, flags)
}

func ctInfoBlockSize(min, pref, max uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, wire.InfoBlockSize)
	b = binary.BigEndian.AppendUint32(b, min)
	b = binary.BigEndian.AppendUint32(b, pref)
	return binary.BigEndian.AppendUint32(b, max)
}

// ctHandshakeDial dials uri once, without retries, and returns the error.
func ctHandshakeDial(uri string, opts Options) (*Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	return Dial(ctx, uri, opts)
}

// NBD_OPT_GO refused as unknown: the client falls back to
// NBD_OPT_EXPORT_NAME, without the 124 zero bytes when both sides agreed.
func TestClientGoUnsupportedFallsBack(t *testing.T) {
	for _, noZeroes := range []bool{true, false} {
		var gotName string
		var mu sync.Mutex
		uri := ctScript(t, func(nc net.Conn, br *bufio.Reader) {
			hf := wire.FlagFixedNewstyle
			if noZeroes {
				hf |= wire.FlagNoZeroes
			}
			cf, ok := ctGreet(nc, br, hf)
			if !ok || (cf&wire.ClientNoZeroes != 0) != noZeroes {
				return
			}
			data, ok := ctAwaitOption(nc, br, wire.OptExportName)
			if !ok {
				return
			}
			mu.Lock()
			gotName = string(data)
			mu.Unlock()
			b := binary.BigEndian.AppendUint64(nil, 1<<20)
			b = binary.BigEndian.AppendUint16(b, wire.TFlagHasFlags|wire.TFlagSendFlush)
			if !noZeroes {
				b = append(b, make([]byte, 124)...)
			}
			nc.Write(b)
			// Transmission: answer a flush, then stop.
			req, ok := ctRequest(br)
			if !ok {
				return
			}
			rep := make([]byte, wire.SimpleReplySize)
			wire.PutSimpleReply(rep, 0, req.Cookie)
			nc.Write(rep)
			io.Copy(io.Discard, br)
		})
		c, err := ctHandshakeDial(uri, Options{})
		if err != nil {
			t.Fatalf("no-zeroes %v: %v", noZeroes, err)
		}
		info := c.Info()
		mu.Lock()
		name := gotName
		mu.Unlock()
		if info.Go || info.Structured || info.Size != 1<<20 || !info.CanFlush() || name != "exp" {
			t.Errorf("no-zeroes %v: info %+v, export name %q", noZeroes, info, name)
		}
		if err := c.Flush(ctCtx(t)); err != nil {
			t.Errorf("flush: %v", err)
		}
		c.Close()
	}
}

// Handshakes that fail say why.
func TestClientHandshakeErrors(t *testing.T) {
	goReply := func(replies ...[]byte) func(nc net.Conn, br *bufio.Reader) {
		return func(nc net.Conn, br *bufio.Reader) {
			if _, ok := ctGreet(nc, br, wire.FlagFixedNewstyle|wire.FlagNoZeroes); !ok {
				return
			}
			for {
				opt, _, ok := ctOption(br)
				if !ok {
					return
				}
				switch opt {
				case wire.OptGo:
					for _, r := range replies {
						nc.Write(r)
					}
				case wire.OptAbort:
					nc.Write(wire.AppendOptionReply(nil, opt, wire.RepAck, nil))
					return
				default:
					nc.Write(wire.AppendOptionReply(nil, opt, wire.RepErrUnsup, nil))
				}
			}
		}
	}
	ack := wire.AppendOptionReply(nil, wire.OptGo, wire.RepAck, nil)
	info := wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, ctInfoExport(1<<20, wire.TFlagHasFlags))
	for _, tc := range []struct {
		name   string
		server func(nc net.Conn, br *bufio.Reader)
		want   error
	}{
		{"no-such-export", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepErrUnknown, []byte("nope"))), errNoExport},
		{"tls-required", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepErrTLSReqd, nil)), errTLSRequired},
		{"policy", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepErrPolicy, nil)), errHandshake},
		{"shutting-down", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepErrShutdown, nil)), errHandshake},
		{"ack-without-export-info", goReply(ack), errHandshake},
		{"bad-min-block", goReply(info, wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, ctInfoBlockSize(3, 4096, 1<<20)), ack), errHandshake},
		{"max-below-min", goReply(info, wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, ctInfoBlockSize(4096, 4096, 512)), ack), errHandshake},
		{"short-info", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, []byte{0, 0, 1}), ack), errHandshake},
		{"reply-to-another-option", goReply(wire.AppendOptionReply(nil, wire.OptList, wire.RepAck, nil)), errHandshake},
		{"oldstyle", func(nc net.Conn, br *bufio.Reader) {
			b := binary.BigEndian.AppendUint64(nil, wire.NBDMagic)
			b = binary.BigEndian.AppendUint64(b, cliservMagic)
			nc.Write(append(b, make([]byte, 8+4+124)...))
			io.Copy(io.Discard, br)
		}, errHandshake},
		{"not-nbd", func(nc net.Conn, br *bufio.Reader) {
			nc.Write([]byte("SSH-2.0-OpenSSH_9.2p1 Debian\r\n"))
			io.Copy(io.Discard, br)
		}, errHandshake},
		{"hangs-up", func(nc net.Conn, br *bufio.Reader) {}, errHandshake},
		{"export-name-refused", func(nc net.Conn, br *bufio.Reader) {
			// Not fixed newstyle: only NBD_OPT_EXPORT_NAME, refused by
			// closing the connection.
			if _, ok := ctGreet(nc, br, 0); !ok {
				return
			}
			ctOption(br)
		}, errNoExport},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uri := ctScript(t, tc.server)
			c, err := ctHandshakeDial(uri, Options{})
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("%v, want %v", err, tc.want)
			}
		})
	}
	// A server that says nothing: the dial times out.
	uri := ctScript(t, func(nc net.Conn, br *bufio.Reader) { io.Copy(io.Discard, br) })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, uri, Options{}); err == nil {
		t.Fatal("dial of a silent server succeeded")
	}
}

// After a reconnection, an export of another size is refused (the client
// keeps trying); the same size is accepted.
func TestClientReconnectSizeChange(t *testing.T) {
	var mu sync.Mutex
	size := uint64(1 << 20)
	uri := ctScript(t, func(nc net.Conn, br *bufio.Reader) {
		if _, ok := ctGreet(nc, br, wire.FlagFixedNewstyle|wire.FlagNoZeroes); !ok {
			return
		}
		if _, ok := ctAwaitOption(nc, br, wire.OptGo); !ok {
			return
		}
		mu.Lock()
		sz := size
		mu.Unlock()
		nc.Write(wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, ctInfoExport(sz, wire.TFlagHasFlags|wire.TFlagSendFlush)))
		nc.Write(wire.AppendOptionReply(nil, wire.OptGo, wire.RepAck, nil))
		// Every connection serves one request.
		req, ok := ctRequest(br)
		if !ok {
			return
		}
		if req.Type == wire.CmdDisc {
			return
		}
		rep := make([]byte, wire.SimpleReplySize)
		wire.PutSimpleReply(rep, 0, req.Cookie)
		nc.Write(rep)
		nc.Close()
	})
	c := ctDial(t, uri, Options{ReconnectTimeout: time.Hour})
	ctx := ctCtx(t)
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Each connection serves one request: wait for the next one.
	testutil.Eventually(t, "reconnected", func() bool { return c.Stats().Reconnects == 1 && c.Connected() })
	mu.Lock()
	size = 2 << 20
	mu.Unlock()
	if err := c.Flush(ctx); err != nil { // on the live connection
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := c.Flush(fctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("flush with the export resized: %v, want to wait", err)
	}
	mu.Lock()
	size = 1 << 20
	mu.Unlock()
	if err := c.Flush(ctx); err != nil {
		t.Fatalf("flush once the size is back: %v", err)
	}
	if c.Size() != 1<<20 {
		t.Errorf("size %d", c.Size())
	}
}
