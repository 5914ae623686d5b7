package server

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"syscall"

	"udm/uring"
)

// A TLS connection's transmission phase runs on its loop like any other,
// with the ring doing the socket I/O of the ciphertext and crypto/tls
// doing the records in memory, on the loop:
//
//	RECV of ciphertext into cbuf ─▶ tls.Conn.Read decrypts into the very
//	  buffer a plaintext receive would have filled (rbuf, or a write's
//	  payload buffer), and onRecv goes on as for plaintext
//	reply iovecs ─▶ copied together (up to tlsChunk) ─▶ tls.Conn.Write
//	  encrypts into memory ─▶ SEND of the ciphertext; when it is all on
//	  the wire, onSend releases the replies as for plaintext
//
// Without kernel TLS this is the least a TLS connection can cost: no
// thread or goroutine hop, no extra socket; the crypto and one copy each
// way on the loop. tls.Conn never blocks here: its network side is
// tlsIO, whose Read says "would block" once the received ciphertext is
// used up (a temporary error crypto/tls does not keep), and whose Write
// appends to memory. The handshake ran before, in the handshake
// goroutine, over the real socket (tlsIO not yet in memory mode).

const (
	tagTLSRecv    = 100 + iota // ciphertext received
	tagTLSPending              // plaintext was already decrypted: a NOP
	tlsChunk      = 256 << 10  // plaintext encrypted per send
	tlsCipherBuf  = 256 << 10
)

// errWouldBlock is what tlsIO's Read returns when it has no ciphertext
// left: tls.Conn.Read returns it, keeping what it has of a partial
// record. A temporary net.Error, so crypto/tls doesn't make it sticky.
var errWouldBlock = &wouldBlock{}

type wouldBlock struct{}

func (*wouldBlock) Error() string   { return "would block" }
func (*wouldBlock) Timeout() bool   { return true }
func (*wouldBlock) Temporary() bool { return true }

var _ net.Error = errWouldBlock

// tlsIO is the network side of a server's tls.Conn: the socket during
// the handshake, memory after it.
type tlsIO struct {
	net.Conn
	mem bool
	in  []byte // ciphertext received, not yet read by tls.Conn
	out []byte // ciphertext tls.Conn wrote, not yet handed to a send
}

func (t *tlsIO) Read(p []byte) (int, error) {
	if !t.mem {
		return t.Conn.Read(p)
	}
	if len(t.in) == 0 {
		return 0, errWouldBlock
	}
	n := copy(p, t.in)
	t.in = t.in[n:]
	return n, nil
}

func (t *tlsIO) Write(p []byte) (int, error) {
	if !t.mem {
		return t.Conn.Write(p)
	}
	t.out = append(t.out, p...)
	return len(p), nil
}

// tlsUp is a connection STARTTLS made.
type tlsUp struct {
	tc *tls.Conn
	io *tlsIO
}

// upgradeTLS is the Handshake's Upgrade: the server side of the TLS
// handshake on nc (the handshake deadline still applies).
func (s *Server) upgradeTLS(nc net.Conn) (*tlsUp, error) {
	io := &tlsIO{Conn: nc}
	tc := tls.Server(io, s.cfg.TLS)
	if err := tc.Handshake(); err != nil {
		return nil, err
	}
	return &tlsUp{tc: tc, io: io}, nil
}

// ringTLS is a conn's TLS state, touched only on its loop.
type ringTLS struct {
	tc      *tls.Conn
	io      *tlsIO
	cbuf    []byte // the armed receive's buffer
	dst     []byte // where the armed receive's plaintext goes
	pending int    // plaintext already in dst (tagTLSPending)
	plain   []byte // a send's plaintext, copied together
	sending []byte // the ciphertext being sent
	sendID  uring.OpID
	sent    int // of it, on the wire
	plainN  int // the plaintext bytes it carries
}

// onLoop switches t to memory I/O for the loop: from here on only the
// loop touches it.
func (t *tlsUp) onLoop() *ringTLS {
	t.io.mem = true
	t.io.Conn = nil
	return &ringTLS{tc: t.tc, io: t.io, cbuf: make([]byte, tlsCipherBuf), plain: make([]byte, 0, tlsChunk)}
}

// decrypt reads what tls.Conn can give without more ciphertext into dst.
// An error (io.EOF after the client's close_notify) comes once the
// plaintext before it is taken: tls.Conn repeats it on the next read.
func (rt *ringTLS) decrypt(dst []byte) (int, error) {
	n := 0
	for n < len(dst) {
		k, err := rt.tc.Read(dst[n:])
		n += k
		if err != nil {
			if n > 0 || errors.Is(err, errWouldBlock) {
				err = nil
			}
			return n, err
		}
	}
	return n, nil
}

// tlsFailed ends a conn whose TLS stream ended or broke.
func (c *conn) tlsFailed(err error) {
	if errors.Is(err, io.EOF) {
		c.shutdown(true, "client closed the connection")
		return
	}
	c.shutdown(true, "TLS: "+err.Error())
}

// tlsArmRecv arms the receive of a TLS conn whose plaintext goes to dst:
// a NOP if tls.Conn already has some, else a RECV of ciphertext.
func (c *conn) tlsArmRecv(dst []byte) {
	rt := c.tls
	rt.dst = dst
	var e uring.SQE
	tag := uint64(tagTLSRecv)
	n, err := rt.decrypt(dst)
	switch {
	case err != nil:
		c.tlsFailed(err)
		return
	case n > 0:
		rt.pending = n
		e.PrepNop()
		tag = tagTLSPending
	default:
		e.PrepRecv(c.sfd, rt.cbuf, 0)
		c.prep(&e)
	}
	c.submitRecv(&e, tag)
}

// tlsOnRecv takes a TLS conn's receive completion and hands onRecv the
// plaintext it brought, as a plaintext receive would have.
func (c *conn) tlsOnRecv(tag uint64, res int32) {
	rt := c.tls
	if tag == tagTLSPending {
		if res < 0 && !c.closing { // cancelled: the conn is closing anyway
			res = 0
		}
		n := rt.pending
		rt.pending = 0
		c.onRecv(int32(n))
		return
	}
	if res <= 0 || c.closing {
		c.onRecv(res)
		return
	}
	rt.io.in = append(rt.io.in, rt.cbuf[:res]...)
	n, err := rt.decrypt(rt.dst)
	if err != nil {
		c.recvArmed = false
		c.tlsFailed(err)
		return
	}
	if len(rt.io.in) == 0 {
		rt.io.in = rt.io.in[:0:0] // let a big buffer go
	}
	if n == 0 {
		// Part of a record, or no application data in it: receive more.
		c.recvArmed = false
		c.tlsArmRecv(rt.dst)
		return
	}
	c.onRecv(int32(n))
}

// tlsKickSend encrypts up to tlsChunk bytes of the replies in
// c.sending (from sendOff on) and sends the ciphertext.
func (c *conn) tlsKickSend() {
	rt := c.tls
	rt.plain = rt.plain[:0]
	skip := c.sendOff
	add := func(b []byte) bool {
		if skip >= len(b) {
			skip -= len(b)
			return true
		}
		b = b[skip:]
		skip = 0
		k := min(len(b), tlsChunk-len(rt.plain))
		rt.plain = append(rt.plain, b[:k]...)
		return len(rt.plain) < tlsChunk
	}
	for _, r := range c.sending {
		if !add(r.head[:r.headLen]) || !add(r.data) {
			break
		}
	}
	if _, err := rt.tc.Write(rt.plain); err != nil {
		c.shutdown(true, "TLS: "+err.Error())
		return
	}
	rt.sending, rt.io.out = rt.io.out, rt.sending[:0]
	rt.sent, rt.plainN = 0, len(rt.plain)
	c.tlsSubmitSend()
}

func (c *conn) tlsSubmitSend() {
	rt := c.tls
	var e uring.SQE
	e.PrepSend(c.sfd, rt.sending[rt.sent:], syscall.MSG_NOSIGNAL)
	c.prep(&e)
	if id, ok := c.submitSend(&e); ok {
		rt.sendID = id
	}
}

// tlsStop cancels the armed send of a conn stopping hard: the rest of a
// record is never going to be read.
func (c *conn) tlsStop() {
	if c.sendArmed {
		c.l.Cancel(c.tls.sendID)
	}
}

// tlsOnSend takes a send's completion: false while ciphertext is left to
// send (another send is armed); true with the plaintext bytes the
// ciphertext carried, for onSend, once it is all sent (or failed).
func (c *conn) tlsOnSend(res int32) (int32, bool) {
	rt := c.tls
	if res < 0 {
		return res, true
	}
	rt.sent += int(res)
	if rt.sent < len(rt.sending) && !c.hard {
		c.tlsSubmitSend()
		return 0, false
	}
	n := rt.plainN
	if c.hard {
		n = 0
	}
	rt.sending, rt.sent, rt.plainN = rt.sending[:0], 0, 0
	return int32(n), true
}
