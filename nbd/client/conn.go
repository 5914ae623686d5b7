package client

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"

	"udm/nbd/wire"
)

// clientConn is one connection of a Client: its socket, a writer and a
// reader goroutine. The supervisor starts it, waits for its death (fail)
// and for both goroutines, then re-queues its requests.
type clientConn struct {
	c    *Client
	nc   net.Conn
	br   *bufio.Reader
	info *Info

	kick     chan struct{} // wakes the writer
	dead     chan struct{} // closed by fail
	failOnce sync.Once
	err      error // why it died; set before dead is closed
	wg       sync.WaitGroup

	// Guarded by Client.mu:
	sendq []*creq
	disc  bool // send NBD_CMD_DISC and stop writing

	// The writer's:
	spare  []*creq
	pinned []*creq
	hdrs   []byte
	iov    [][]byte
	bufs   net.Buffers // iov as WriteTo consumes it (a field: no escape)
	flat   []byte      // iov copied together, for TLS (writeFlat)
	done   []*creq

	// The reader's:
	rhdr    [wire.StructReplySize]byte
	roff    [8]byte
	scratch []byte
}

// connect dials the export and runs the handshake, bounded by ctx.
func (c *Client) connect(ctx context.Context) (*clientConn, *Info, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, c.uri.Network(), c.uri.Address())
	if err != nil {
		return nil, nil, fmt.Errorf("nbd: connect %s: %w", c.name, err)
	}
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	// The handshake honours ctx's cancellation too.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	br := bufio.NewReaderSize(nc, 64<<10)
	info, err := clientHandshake(&nc, &br, c.uri.Export, &c.opts, c.tls)
	if !stop() && err == nil {
		err = ctx.Err()
	}
	if err == nil {
		if old := c.info.Load(); old != nil && old.Size != info.Size {
			err = fmt.Errorf("%w: from %d to %d bytes", errSizeChanged, old.Size, info.Size)
		}
	}
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("nbd: %s: %w", c.name, err)
	}
	nc.SetDeadline(time.Time{})
	cc := &clientConn{
		c:    c,
		nc:   nc,
		br:   br,
		info: info,
		kick: make(chan struct{}, 1),
		dead: make(chan struct{}),
	}
	return cc, info, nil
}

// install makes cc the live connection, hands it the waiting requests
// and starts its goroutines.
func (c *Client) install(cc *clientConn, info *Info) {
	c.mu.Lock()
	c.info.Store(info)
	c.conn = cc
	c.down = false
	c.downSince = time.Time{}
	close(c.connected)
	for _, r := range c.waiting {
		r.q, r.conn = qSend, cc
	}
	cc.sendq = append(cc.sendq, c.waiting...)
	clear(c.waiting)
	c.waiting = c.waiting[:0]
	c.mu.Unlock()
	cc.wg.Add(2)
	go cc.writer()
	go cc.reader()
	cc.kickWriter()
}

func (cc *clientConn) kickWriter() {
	select {
	case cc.kick <- struct{}{}:
	default:
	}
}

// fail kills the connection (once): its goroutines stop, the supervisor
// takes over.
func (cc *clientConn) fail(err error) {
	cc.failOnce.Do(func() {
		cc.err = err
		close(cc.dead)
		cc.sock().Close() // a TLS connection's too: no close_notify to wait on
	})
}

// sock is the connection's socket (under TLS, the one under it).
func (cc *clientConn) sock() net.Conn {
	if t, ok := cc.nc.(*tls.Conn); ok {
		return t.NetConn()
	}
	return cc.nc
}

// abort kills the connection with a reset (SO_LINGER 0): the kernel
// drops what it has not sent yet, so a request the client gave up on
// can't reach the server when the network comes back (see
// creq.lateWriteRisk). Data the server has received stays its own.
func (cc *clientConn) abort(err error) {
	if tc, ok := cc.sock().(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	cc.fail(err)
}

// supervise owns the connections: it waits for the live one to die,
// re-queues its requests, and dials again with backoff until Close.
func (c *Client) supervise(cc *clientConn) {
	defer c.wg.Done()
	backoff := c.opts.MinBackoff
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		if cc != nil {
			select {
			case <-cc.dead:
			case <-c.ctx.Done():
				cc.shutdown()
			}
			cc.fail(errShutdown)
			cc.wg.Wait()
			c.connLost(cc)
			if c.ctx.Err() != nil {
				c.failWaiting(errShutdown)
				return
			}
			c.log.Warn().Err(cc.err).Msg("nbd: connection lost; reconnecting")
			cc = nil
			backoff = c.opts.MinBackoff
		}
		dctx, cancel := context.WithTimeout(c.ctx, c.opts.DialTimeout)
		ncc, info, err := c.connect(dctx)
		cancel()
		if err == nil {
			c.reconnects.Add(1) // before install: its requests may end at once
			c.install(ncc, info)
			c.log.Info().Msg("nbd: reconnected")
			cc = ncc
			continue
		}
		if c.ctx.Err() != nil {
			c.failWaiting(errShutdown)
			return
		}
		c.log.Debug().Err(err).Msg("nbd: reconnect failed")
		wait := c.dialFailed()
		wait = min(wait, backoff)
		backoff = min(2*backoff, c.opts.MaxBackoff)
		t.Reset(wait)
		select {
		case <-t.C:
		case <-c.kickC:
			t.Stop()
		case <-c.ctx.Done():
			c.failWaiting(errShutdown)
			return
		}
	}
}

// shutdown disconnects cleanly: NBD_CMD_DISC after what the writer is
// sending, bounded in time.
func (cc *clientConn) shutdown() {
	c := cc.c
	c.mu.Lock()
	cc.disc = true
	c.mu.Unlock()
	cc.nc.SetWriteDeadline(time.Now().Add(time.Second))
	cc.kickWriter()
	w := make(chan struct{})
	go func() { cc.wg.Wait(); close(w) }()
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-w:
	case <-cc.dead:
	case <-t.C:
	}
}

// connLost re-queues (or fails) the requests of a dead connection, whose
// goroutines have exited.
func (c *Client) connLost(cc *clientConn) {
	var done []*creq
	c.mu.Lock()
	if c.conn == cc {
		c.conn = nil
		c.downSince = time.Now()
		c.connected = make(chan struct{})
		if c.opts.ReconnectTimeout < 0 {
			c.down = true
		}
	}
	var retry []*creq
	for _, r := range c.reqs {
		if r.conn != cc {
			continue
		}
		if r.ended {
			c.retireLocked(r) // a zombie
			continue
		}
		sent := r.sent
		r.conn, r.sent, r.q = nil, false, qNone
		r.chunkErr, r.covered, r.extents = nil, 0, nil
		if sent {
			r.attempts++
		}
		switch {
		case c.closed:
			if c.endLocked(r, errShutdown) {
				done = append(done, r)
			}
		case sent && r.attempts > c.opts.Retries || c.down && !r.waitConn:
			if c.endLocked(r, errNotConn) {
				done = append(done, r)
			}
		default:
			if sent {
				c.retried.Add(1)
			}
			retry = append(retry, r)
		}
	}
	clear(cc.sendq)
	cc.sendq = nil
	slices.SortFunc(retry, func(a, b *creq) int { return cmp.Compare(a.cookie, b.cookie) })
	for _, r := range retry {
		r.q = qWaiting
	}
	c.waiting = append(retry, c.waiting...)
	c.mu.Unlock()
	for _, r := range done {
		c.deliver(r)
	}
}

// dialFailed runs after a failed connection attempt: probes waiting for a
// connection fail now, and so does everything once ReconnectTimeout has
// passed. It returns how long until that timeout.
func (c *Client) dialFailed() time.Duration {
	var done []*creq
	wait := time.Hour
	c.mu.Lock()
	if !c.down {
		left := c.opts.ReconnectTimeout - time.Since(c.downSince)
		if left <= 0 {
			c.down = true
			c.log.Warn().Dur("after", c.opts.ReconnectTimeout).Msg("nbd: still not reconnected; failing requests until the server is back")
		} else {
			wait = left
		}
	}
	keep := c.waiting[:0]
	for _, r := range c.waiting {
		if r.waitConn || c.down {
			r.q = qNone
			if c.endLocked(r, errNotConn) {
				done = append(done, r)
			}
			continue
		}
		keep = append(keep, r)
	}
	clear(c.waiting[len(keep):])
	c.waiting = keep
	c.mu.Unlock()
	for _, r := range done {
		c.deliver(r)
	}
	return wait
}

// failWaiting ends every waiting request (the client is closing).
func (c *Client) failWaiting(err error) {
	c.mu.Lock()
	w := c.waiting
	c.waiting = nil
	var done []*creq
	for _, r := range w {
		r.q = qNone
		if c.endLocked(r, err) {
			done = append(done, r)
		}
	}
	c.mu.Unlock()
	for _, r := range done {
		c.deliver(r)
	}
}

// waitConnected waits until a connection is live, up to timeout.
func (c *Client) waitConnected(ctx context.Context, timeout time.Duration) error {
	c.kick()
	c.mu.Lock()
	ch := c.connected
	c.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ch:
		return nil
	case <-t.C:
		return fmt.Errorf("nbd: check %s: %w", c.name, errNotConn)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writer sends queued requests, as many as are queued with one writev.
func (cc *clientConn) writer() {
	defer cc.wg.Done()
	c := cc.c
	for {
		c.mu.Lock()
		for len(cc.sendq) == 0 && !cc.disc {
			c.mu.Unlock()
			select {
			case <-cc.kick:
			case <-cc.dead:
				return
			}
			c.mu.Lock()
		}
		if cc.disc {
			c.mu.Unlock()
			var b [wire.RequestSize]byte
			wire.Request{Type: wire.CmdDisc}.Encode(b[:])
			cc.nc.Write(b[:])
			cc.fail(errShutdown)
			return
		}
		batch := cc.sendq
		cc.sendq = cc.spare[:0]
		if need := len(batch) * wire.RequestSize; cap(cc.hdrs) < need {
			cc.hdrs = make([]byte, need)
		}
		iov := cc.iov[:0]
		for i, r := range batch {
			r.q, r.sent = qNone, true
			h := cc.hdrs[i*wire.RequestSize : (i+1)*wire.RequestSize]
			wire.Request{Flags: r.flags, Type: r.cmd, Cookie: r.cookie, Offset: r.off, Length: r.length}.Encode(h)
			iov = append(iov, h)
			if r.cmd == wire.CmdWrite {
				r.pins++
				cc.pinned = append(cc.pinned, r)
				iov = append(iov, r.buf[:r.length])
			}
		}
		c.mu.Unlock()
		var err error
		if info := cc.info; info.TLS {
			err = cc.writeFlat(iov)
		} else {
			cc.bufs = iov
			_, err = cc.bufs.WriteTo(cc.nc)
			cc.bufs = nil
		}
		clear(iov)
		cc.iov = iov[:0]
		clear(batch)
		cc.spare = batch[:0]
		if len(cc.pinned) > 0 {
			c.mu.Lock()
			for _, r := range cc.pinned {
				if c.unpinLocked(r) {
					cc.done = append(cc.done, r)
				}
			}
			c.mu.Unlock()
			clear(cc.pinned)
			cc.pinned = cc.pinned[:0]
			for _, r := range cc.done {
				c.deliver(r)
			}
			clear(cc.done)
			cc.done = cc.done[:0]
		}
		if err != nil {
			cc.fail(fmt.Errorf("nbd: send: %w", err))
			return
		}
	}
}

// writeFlat writes iov to a TLS connection in pieces of up to 256 KiB
// copied together: written one by one, each request header would be a
// TLS record (and a send) of its own.
func (cc *clientConn) writeFlat(iov [][]byte) error {
	const chunk = 256 << 10
	if cc.flat == nil {
		cc.flat = make([]byte, 0, chunk)
	}
	for _, b := range iov {
		for len(b) > 0 {
			n := min(len(b), chunk-len(cc.flat))
			cc.flat = append(cc.flat, b[:n]...)
			b = b[n:]
			if len(cc.flat) == chunk {
				if _, err := cc.nc.Write(cc.flat); err != nil {
					return err
				}
				cc.flat = cc.flat[:0]
			}
		}
	}
	var err error
	if len(cc.flat) > 0 {
		_, err = cc.nc.Write(cc.flat)
	}
	cc.flat = cc.flat[:0]
	return err
}

// reader reads replies until the connection fails.
func (cc *clientConn) reader() {
	defer cc.wg.Done()
	for {
		if err := cc.readReply(); err != nil {
			cc.fail(err)
			return
		}
	}
}

// errServerShutdown: the server answered ESHUTDOWN; the client
// disconnects and the request is retried on the next connection.
var errServerShutdown = fmt.Errorf("nbd: server is shutting down: %w", syscall.ESHUTDOWN)

func (cc *clientConn) readReply() error {
	h := cc.rhdr[:]
	if _, err := io.ReadFull(cc.br, h[:4]); err != nil {
		return fmt.Errorf("nbd: receive: %w", err)
	}
	switch m := binary.BigEndian.Uint32(h); m {
	case wire.SimpleMagic:
		if _, err := io.ReadFull(cc.br, h[4:wire.SimpleReplySize]); err != nil {
			return fmt.Errorf("nbd: receive: %w", err)
		}
		return cc.simpleReply(binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[4:]))
	case wire.StructMagic:
		if !cc.info.Structured {
			return fmt.Errorf("%w: structured reply that was not negotiated", errProtocol)
		}
		if _, err := io.ReadFull(cc.br, h[4:wire.StructReplySize]); err != nil {
			return fmt.Errorf("nbd: receive: %w", err)
		}
		return cc.chunk(binary.BigEndian.Uint16(h[4:]), binary.BigEndian.Uint16(h[6:]),
			binary.BigEndian.Uint64(h[8:]), binary.BigEndian.Uint32(h[16:]))
	default:
		return fmt.Errorf("%w: bad reply magic %#x", errProtocol, m)
	}
}

// lookup finds the request a reply is for (under c.mu).
func (cc *clientConn) lookupLocked(cookie uint64) (*creq, error) {
	r := cc.c.reqs[cookie]
	if r == nil || r.conn != cc || !r.sent {
		return nil, fmt.Errorf("%w: reply for unknown cookie %#x", errProtocol, cookie)
	}
	return r, nil
}

// discard skips n bytes of payload.
func (cc *clientConn) discard(n uint64) error {
	_, err := cc.br.Discard(int(n))
	if err != nil {
		return fmt.Errorf("nbd: receive: %w", err)
	}
	return nil
}

// chunkEndUnlock closes the handling of one reply chunk of r, entered
// with c.mu held: if the chunk was the last (done), r is finished with
// the result its chunks gave. It unlocks c.mu and delivers r if that
// ended it.
func (c *Client) chunkEndUnlock(r *creq, done bool) {
	if !done {
		c.mu.Unlock()
		return
	}
	d := c.finishLocked(r, r.result())
	c.mu.Unlock()
	if d {
		c.deliver(r)
	}
}

// deliverEndedUnlock delivers r, which ended while its buffer was
// pinned, entered with c.mu held: if its reply is complete (replied) it
// leaves the table too. It unlocks c.mu.
func (c *Client) deliverEndedUnlock(r *creq, replied bool) {
	if replied {
		r.replied = true
		c.retireLocked(r)
	}
	c.mu.Unlock()
	c.deliver(r)
}

// finishLocked ends r with its reply's result; r.replied is set.
func (c *Client) finishLocked(r *creq, err error) bool {
	r.replied = true
	if r.ended {
		c.retireLocked(r)
		return false
	}
	if r.endPending {
		err = r.endErr
	}
	return c.endLocked(r, err)
}

func (cc *clientConn) simpleReply(cookie uint64, wireErr uint32) error {
	c := cc.c
	c.mu.Lock()
	r, err := cc.lookupLocked(cookie)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if wireErr == wire.ESHUTDOWN {
		c.mu.Unlock()
		return errServerShutdown
	}
	if r.cmd == wire.CmdRead && wireErr == 0 {
		if cc.info.Structured {
			c.mu.Unlock()
			return fmt.Errorf("%w: simple reply with data to a read after structured replies were negotiated", errProtocol)
		}
		if r.ended {
			c.mu.Unlock()
			if err := cc.discard(uint64(r.length)); err != nil {
				return err
			}
			c.mu.Lock()
		} else {
			d, rerr := c.unlockedPinned(r, func() error {
				_, err := io.ReadFull(cc.br, r.buf[:r.length])
				return err
			})
			if rerr != nil {
				c.mu.Unlock()
				if d {
					c.deliver(r)
				}
				return fmt.Errorf("nbd: receive: %w", rerr)
			}
			if d {
				// Ended while we read (timeout): retire it too.
				c.deliverEndedUnlock(r, true)
				return nil
			}
		}
	}
	d := c.finishLocked(r, wire.ToErrno(wireErr))
	c.mu.Unlock()
	if d {
		c.deliver(r)
	}
	return nil
}

// chunk handles one structured reply chunk.
func (cc *clientConn) chunk(flags, typ uint16, cookie uint64, length uint32) error {
	c := cc.c
	done := flags&wire.ReplyFlagDone != 0
	if typ == wire.ReplyOffsetData {
		return cc.dataChunk(done, cookie, length)
	}
	// Every other chunk is small: read it whole first.
	if length > maxOptReply {
		return fmt.Errorf("%w: %d-byte reply chunk of type %d", errProtocol, length, typ)
	}
	if cap(cc.scratch) < int(length) {
		cc.scratch = make([]byte, max(int(length), 4096))
	}
	p := cc.scratch[:length]
	if _, err := io.ReadFull(cc.br, p); err != nil {
		return fmt.Errorf("nbd: receive: %w", err)
	}
	c.mu.Lock()
	r, err := cc.lookupLocked(cookie)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	var hole []byte
	if !r.ended {
		switch {
		case typ == wire.ReplyNone:
			if length != 0 || !done {
				r.setChunkErr(errIO)
			}
		case typ == wire.ReplyOffsetHole:
			off, n, ok := uint64(0), uint32(0), length == 12
			if ok {
				off, n = binary.BigEndian.Uint64(p), binary.BigEndian.Uint32(p[8:])
				ok = r.cmd == wire.CmdRead && n > 0 && r.within(off, uint64(n))
			}
			if !ok {
				r.setChunkErr(errIO)
				break
			}
			hole = r.buf[off-r.off : off-r.off+uint64(n)]
			r.covered += uint64(n)
		case typ == wire.ReplyBlockStatus:
			if r.cmd != wire.CmdBlockStatus || length < 12 || (length-4)%8 != 0 {
				r.setChunkErr(errIO)
				break
			}
			if binary.BigEndian.Uint32(p) != cc.info.MetaContext {
				break // another context's
			}
			ext := make([]Extent, 0, (length-4)/8)
			for q := p[4:]; len(q) >= 8; q = q[8:] {
				ext = append(ext, Extent{Length: binary.BigEndian.Uint32(q), Flags: binary.BigEndian.Uint32(q[4:])})
			}
			r.extents, r.gotStatus = ext, true
		case typ&0x8000 != 0: // ReplyError, ReplyErrorOffset and errors yet unknown
			if length < 6 || 6+uint32(binary.BigEndian.Uint16(p[4:])) > length {
				r.setChunkErr(errIO)
				break
			}
			we := binary.BigEndian.Uint32(p)
			if we == wire.ESHUTDOWN {
				c.mu.Unlock()
				return errServerShutdown
			}
			if we == 0 {
				r.setChunkErr(errIO)
				break
			}
			r.setChunkErr(wire.ToErrno(we))
			if c.log.Debug().Enabled() {
				c.log.Debug().Uint64("cookie", cookie).Uint32("error", we).Str("msg", string(p[6:6+binary.BigEndian.Uint16(p[4:])])).Msg("nbd: error chunk")
			}
		default:
			r.setChunkErr(errIO) // an unknown non-error chunk
		}
	}
	if hole != nil {
		if d, _ := c.unlockedPinned(r, func() error { clear(hole); return nil }); d {
			c.deliverEndedUnlock(r, done)
			return nil
		}
	}
	c.chunkEndUnlock(r, done)
	return nil
}

// dataChunk reads an NBD_REPLY_TYPE_OFFSET_DATA chunk into the read's
// buffer.
func (cc *clientConn) dataChunk(done bool, cookie uint64, length uint32) error {
	c := cc.c
	if length <= 8 {
		return fmt.Errorf("%w: OFFSET_DATA chunk of %d bytes", errProtocol, length)
	}
	if _, err := io.ReadFull(cc.br, cc.roff[:]); err != nil {
		return fmt.Errorf("nbd: receive: %w", err)
	}
	off, n := binary.BigEndian.Uint64(cc.roff[:]), uint64(length-8)
	c.mu.Lock()
	r, err := cc.lookupLocked(cookie)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	if r.ended || r.cmd != wire.CmdRead || !r.within(off, n) {
		if !r.ended {
			r.setChunkErr(errIO)
		}
		c.mu.Unlock()
		if err := cc.discard(n); err != nil {
			return err
		}
		c.mu.Lock()
	} else {
		d, rerr := c.unlockedPinned(r, func() error {
			_, err := io.ReadFull(cc.br, r.buf[off-r.off:off-r.off+n])
			return err
		})
		if rerr == nil && !d {
			r.covered += n
		}
		if d && (done || rerr != nil) {
			r.replied = rerr == nil
			if r.replied {
				c.retireLocked(r)
			}
		}
		if rerr != nil || d {
			c.mu.Unlock()
			if d {
				c.deliver(r)
			}
			if rerr != nil {
				return fmt.Errorf("nbd: receive: %w", rerr)
			}
			return nil
		}
	}
	c.chunkEndUnlock(r, done)
	return nil
}

// within reports whether [off, off+n) lies inside the request (a reply
// chunk's claim, checked without overflow).
func (r *creq) within(off, n uint64) bool {
	return off >= r.off && off-r.off <= uint64(r.length) && n <= uint64(r.length)-(off-r.off)
}

func (r *creq) setChunkErr(err error) {
	if r.chunkErr == nil {
		r.chunkErr = err
	}
}

// result is a structured reply's outcome once its last chunk arrived.
func (r *creq) result() error {
	if r.chunkErr != nil {
		return r.chunkErr
	}
	switch r.cmd {
	case wire.CmdRead:
		if r.covered != uint64(r.length) {
			return errIO // the chunks didn't cover the read
		}
	case wire.CmdBlockStatus:
		if !r.gotStatus {
			return errIO
		}
	}
	return nil
}
