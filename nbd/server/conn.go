package server

import (
	"encoding/binary"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"udm/dm"
	"udm/nbd/wire"
	"udm/uring"
)

// The transmission phase of one connection runs entirely on its loop:
//
//	RECV (one armed at a time) ─▶ parse requests out of rbuf
//	  ▶ write payloads land in the request's arena buffer (the rest of a
//	    payload is received straight into it; after a big write, headers
//	    are received one at a time, so big payloads all are)
//	  ▶ dm.Device.Submit(&req.bio)   (Exec = this loop)
//	  ▶ the next RECV is armed at once, or, for a client that keeps many
//	    requests in flight, after the gather window (pace.go)
//	◀ BioEnd (on this loop) ─▶ reply header into req.head, queued
//	◀ at the end of the loop's turn (Flush): SENDMSG (one at a time)
//	  gathers the queued replies: header+data iovecs
//
// Replies go out in completion order. A request slot (with its Bio and
// buffer) lives from parse until its reply is sent. MaxInflight slots and
// MaxInflightBytes of data buffers per connection bound what a client can
// pin: when either runs out, or replies pile up unsent, the connection
// stops taking requests (and receiving) until replies drain. Nothing here
// allocates per request.

const (
	tagRecv = iota
	tagSend
	tagStatus // a BLOCK_STATUS reply computed off the loop
	tagGather // the gather timer: time to receive
	tagRetry  // the send retry timer (see onSend)

	rbufSize      = 256 << 10
	bigPayload    = 32 << 10 // a write this large makes the next receive header-sized
	maxIov        = 64
	maxQueued     = 64 << 20 // reply bytes queued before we stop reading
	sector        = dm.SectorSize
	sendRetry     = 100 * time.Microsecond
	cmdFlagsKnown = wire.CmdFlagFUA | wire.CmdFlagNoHole | wire.CmdFlagDF | wire.CmdFlagReqOne | wire.CmdFlagFastZero
)

type conn struct {
	s          *Server
	l          *uring.Loop
	fd         int   // the socket
	sfd        int32 // fixed-file index, or fd
	fixed      bool
	exp        *export
	dev        *dm.Device
	structured bool
	meta       bool
	log        zerolog.Logger

	rbuf         []byte
	rstart, rend int
	headerOnly   bool // receive one header at a time (see bigPayload)
	recvArmed    bool
	gatherArmed  bool // the gather timer is set: receive when it fires
	gatherID     uring.OpID
	gathered     bool // the receive armed waited for the gather window
	pace         pacer
	tls          *ringTLS // a TLS connection's (tlsring.go); nil: plaintext
	recvID       uring.OpID
	payload      *req  // a write whose payload is still arriving
	drain        int64 // bytes of a refused payload still to discard
	drainReq     *req  // the refused request: its error reply goes out once drained
	eof          bool  // the client shut its side: what rbuf holds is still served
	blockSizes   bool  // the client agreed to wire.MinBlock alignment
	toldMax      bool  // the client was told MaxPayload (it negotiated with GO)

	// Writes of a client that negotiated no block size may be unaligned:
	// they read the partial sectors at their ends, merge and write whole
	// sectors (read-modify-write). A read-modify-write runs alongside no
	// write of the connection that overlaps its sectors, so none is lost
	// to another's: a write that would waits (behind any waiting write
	// it overlaps, so overlapping writes keep their order).
	order dm.WriteOrder[*req]

	reqs       []req
	free       []int32
	bios       int   // requests submitted to the device, not yet ended
	statuses   int   // BLOCK_STATUS requests being answered off the loop
	inflight   int   // slots in use
	bufBytes   int64 // payload bytes in the slots' buffers
	overBudget bool  // the next request waits for bufBytes to drain
	arenaGet   func(a *uring.Arena, n int) (uring.Buf, error)

	sendq       []*req // replies waiting for the next send
	sending     []*req // replies in (or left over from) the current send
	sendOff     int    // bytes of sending[0] already on the wire
	iov         []unix.Iovec
	msg         unix.Msghdr
	sendArmed   bool
	retryArmed  bool // the send waits for the retry timer
	retryID     uring.OpID
	flushQueued bool // FlushLater asked: the turn's replies go in one send
	queuedBytes int

	lim connLimits // memory budget and timeouts (limits.go)

	closing bool // no more requests are read
	hard    bool // no more replies are sent
	done    bool
	why     string
}

type req struct {
	c        *conn
	idx      int32
	bio      dm.Bio
	hdr      wire.Request
	buf      uring.Buf
	got      int                   // payload bytes received
	pay      []byte                // where the write payload goes: buf.B, or a part of it (unaligned)
	skip     int                   // the request's offset in buf (unaligned: buf starts at a sector)
	span     uint64                // bytes of whole sectors buf covers (unaligned)
	stage    uint8                 // read-modify-write: its stage (rmwStart: none)
	wflags   dm.BioFlags           // read-modify-write: the write's flags
	w        dm.OrderedWrite[*req] // a write-type request: its place in conn.order
	scratch  uring.Buf             // read-modify-write: a sector read at an end
	head     [32]byte
	headLen  int
	data     []byte // reply payload
	extra    []byte // BLOCK_STATUS payload (off-loop, heap)
	werr     uint32
	noReply  bool
	finished bool
}

func newConn(s *Server, l *uring.Loop, fd int, exp *export, structured, meta bool, log zerolog.Logger) *conn {
	c := &conn{s: s, l: l, fd: fd, sfd: int32(fd), exp: exp, dev: exp.dev, structured: structured, meta: meta,
		blockSizes: exp.blockSizes, toldMax: exp.toldMax, log: log.With().Str("export", exp.name).Logger()}
	c.rbuf = make([]byte, rbufSize)
	n := s.cfg.MaxInflight
	c.reqs = make([]req, n)
	c.free = make([]int32, 0, n)
	for i := n - 1; i >= 0; i-- {
		c.reqs[i].c, c.reqs[i].idx = c, int32(i)
		c.free = append(c.free, int32(i))
	}
	c.sendq = make([]*req, 0, n)
	c.order.Reserve(n)
	c.sending = make([]*req, 0, maxIov)
	c.iov = make([]unix.Iovec, 0, 2*maxIov)
	return c
}

// start runs on the loop.
func (c *conn) start() {
	if idx, err := c.l.RegisterFile(c.fd); err == nil {
		c.sfd, c.fixed = idx, true
	}
	c.limitsStart()
	c.armRecv()
}

func (c *conn) prep(e *uring.SQE) {
	if c.fixed {
		e.Fixed()
	}
}

// Complete is the ring's completion for this connection's socket I/O.
func (c *conn) Complete(tag uint64, res int32, _ uint32) {
	switch tag {
	case tagRecv:
		c.onRecv(res)
	case tagSend:
		c.onSend(res)
	case tagTLSRecv, tagTLSPending:
		c.tlsOnRecv(tag, res)
	case tagRetry:
		c.retryArmed = false
		if c.hard {
			c.dropSending()
			c.maybeFinish()
			return
		}
		if c.tls != nil {
			c.tlsSubmitSend() // the rest of the record already made
			return
		}
		c.kickSend()
	case tagLimits:
		c.limitsFire()
	case tagGather:
		c.gatherArmed = false
		if c.closing {
			c.maybeFinish()
			return
		}
		c.armRecv()
		c.gathered = c.recvArmed // not if throttled: a later receive is prompt
	}
	if c.gatherArmed {
		c.l.Rest() // nothing to do here until the timer fires
	}
}

// gather sets the gather timer in place of arming the receive: the
// requests the client sends meanwhile are taken in one receive when it
// fires (see pacer). false: it couldn't be set.
func (c *conn) gather() bool {
	if c.recvArmed || c.payload != nil || c.closing {
		return false
	}
	if !c.gatherArmed {
		id, err := c.l.Timeout(c.s.cfg.GatherWindow, c, tagGather)
		if err != nil {
			return false
		}
		c.gatherArmed, c.gatherID = true, id
	}
	c.l.Rest()
	return true
}

func (c *conn) armRecv() {
	if c.recvArmed || c.closing || c.gatherArmed || c.eof {
		return
	}
	c.limitsRecv()
	var e uring.SQE
	if r := c.payload; r != nil {
		if c.tls != nil {
			c.tlsArmRecv(r.pay[r.got:])
			return
		}
		e.PrepRecv(c.sfd, r.pay[r.got:], unix.MSG_WAITALL)
	} else {
		if len(c.free) == 0 || c.overBudget || c.queuedBytes > maxQueued {
			return // throttled: a reply going out will re-arm
		}
		if c.rstart == c.rend {
			c.rstart, c.rend = 0, 0
		} else if c.rstart > 0 && (len(c.rbuf)-c.rend < wire.RequestSize || c.rstart > len(c.rbuf)/2) {
			c.rend = copy(c.rbuf, c.rbuf[c.rstart:c.rend])
			c.rstart = 0
		}
		b := c.rbuf[c.rend:]
		if c.headerOnly {
			// After a big write, take just the next header: if it is
			// another big write, its payload is then received straight
			// into its buffer instead of into rbuf and copied.
			if n := wire.RequestSize - (c.rend - c.rstart); n > 0 {
				b = b[:n]
			}
		}
		if c.tls != nil {
			c.tlsArmRecv(b)
			return
		}
		e.PrepRecv(c.sfd, b, 0)
	}
	c.prep(&e)
	c.submitRecv(&e, tagRecv)
}

// submitRecv queues the receive e on c's loop and marks it armed; a loop
// that is closing shuts c down instead.
func (c *conn) submitRecv(e *uring.SQE, tag uint64) {
	if id, ok := c.submitSQE(e, tag); ok {
		c.recvArmed, c.recvID = true, id
	}
}

// submitSend queues the send e on c's loop and marks it armed; a loop
// that is closing shuts c down instead. It reports the SQE's id and
// whether it was queued.
func (c *conn) submitSend(e *uring.SQE) (uring.OpID, bool) {
	id, ok := c.submitSQE(e, tagSend)
	if ok {
		c.sendArmed = true
	}
	return id, ok
}

func (c *conn) submitSQE(e *uring.SQE, tag uint64) (uring.OpID, bool) {
	id, err := c.l.Submit(e, c, tag)
	if err != nil {
		c.shutdown(true, "loop closing")
		return 0, false
	}
	return id, true
}

func (c *conn) onRecv(res int32) {
	c.recvArmed = false
	if c.closing {
		c.maybeFinish()
		return
	}
	if res < 0 {
		c.shutdown(true, "receive: "+uring.Errno(res).Error())
		return
	}
	if res == 0 {
		// The client shut its side (a half-close, with or without
		// NBD_CMD_DISC): the requests it sent are still served and
		// answered, then the connection closes.
		c.eof = true
		c.parse()
		c.atEOF()
		return
	}
	payload := c.payload != nil
	if r := c.payload; r != nil {
		r.got += int(res)
		if r.got < len(r.pay) {
			c.armRecv()
			return
		}
		c.payload = nil
		c.writeReady(r)
	} else {
		c.rend += int(res)
	}
	gathered := c.gathered
	c.gathered = false
	n := c.parse()
	if n > 0 {
		c.s.stats.Receives.Add(1)
		if gathered {
			c.s.stats.Gathered.Add(1)
		}
	}
	if !payload {
		c.pace.received(c.l.Now(), n, gathered)
	}
	if c.s.cfg.GatherWindow > 0 && (c.pace.gathering() || c.s.cfg.forceGather) && c.gather() {
		return
	}
	c.armRecv()
}

// parse takes complete requests out of rbuf; it returns how many.
func (c *conn) parse() (n int) {
	c.overBudget = false
	for !c.closing && c.payload == nil {
		avail := c.rend - c.rstart
		if c.drain > 0 {
			k := min(int64(avail), c.drain)
			c.rstart += int(k)
			c.drain -= k
			if c.drain > 0 {
				return
			}
			if r := c.drainReq; r != nil {
				c.drainReq = nil
				c.reply(r, r.werr)
			}
			continue
		}
		if avail < wire.RequestSize {
			return
		}
		if len(c.free) == 0 {
			return // resumes when a reply has gone out
		}
		h, err := wire.ParseRequest(c.rbuf[c.rstart:c.rend])
		if err != nil {
			c.shutdown(true, "request out of sync (bad magic)")
			return
		}
		if need := c.bufNeed(h); need > 0 && c.bufBytes > 0 && c.bufBytes+need > int64(c.s.cfg.MaxInflightBytes) {
			c.overBudget = true
			return // resumes when a reply has gone out
		}
		if !c.memFits(c.bufNeed(h)) {
			c.overBudget = true
			return // resumes when the daemon-wide budget has room
		}
		c.rstart += wire.RequestSize
		c.handle(h)
		c.memSettle()
		n++
	}
	return n
}

// bufNeed is the data buffer h will take if it is accepted.
func (c *conn) bufNeed(h wire.Request) int64 {
	if (h.Type == wire.CmdRead || h.Type == wire.CmdWrite) && int(h.Length) <= c.s.cfg.MaxPayload {
		if _, span := unaligned(h.Offset, h.Length); span != 0 {
			return int64(span)
		}
		return int64(h.Length)
	}
	return 0
}

// getBuf gives r its data buffer (r.span bytes, or the request's length);
// false means there is no memory for it.
func (c *conn) getBuf(r *req) bool {
	n := int(r.hdr.Length)
	if r.span != 0 {
		n = int(r.span)
	}
	b, err := c.arenaGet(c.l.Arena(), n)
	if err != nil {
		c.log.Warn().Err(err).Uint32("length", r.hdr.Length).Msg("nbd: no buffer for a request")
		return false
	}
	r.buf, r.pay = b, b.B
	c.memCharge(int64(len(b.B)))
	c.bufBytes += int64(len(b.B))
	c.s.stats.notePeak(c.bufBytes)
	return true
}

func (c *conn) alloc(h wire.Request) *req {
	i := c.free[len(c.free)-1]
	c.free = c.free[:len(c.free)-1]
	r := &c.reqs[i]
	r.hdr = h
	r.got, r.headLen, r.data, r.extra, r.werr, r.noReply, r.finished = 0, 0, nil, nil, 0, false, false
	r.pay, r.skip, r.span, r.stage = nil, 0, 0, 0
	c.inflight++
	c.s.stats.Requests.Add(1)
	return r
}

// handle validates one request and starts it.
func (c *conn) handle(h wire.Request) {
	r := c.alloc(h)
	c.headerOnly = false
	size := uint64(c.dev.Size())
	end := h.Offset + uint64(h.Length)
	overflow := end < h.Offset
	hasPayload := h.Type == wire.CmdWrite
	refuse := func(e uint32) {
		if hasPayload && h.Length > 0 {
			// The payload is read (and dropped) before the error reply:
			// the client may still be sending it, and a reply it can't
			// match to a request it has finished sending is fatal to it.
			c.startDrain(r, e, int64(h.Length))
			return
		}
		c.reply(r, e)
	}
	if h.Flags&^cmdFlagsKnown != 0 {
		refuse(wire.EINVAL)
		return
	}
	// A client that agreed to the block sizes keeps to them; any other
	// may send any offset and length (unaligned: served through a buffer
	// of whole sectors).
	misaligned := h.Length%wire.MinBlock != 0 || h.Offset%wire.MinBlock != 0
	switch h.Type {
	case wire.CmdRead, wire.CmdWrite:
		switch {
		case h.Length == 0 || misaligned && c.blockSizes:
			refuse(wire.EINVAL)
		case int(h.Length) > c.s.cfg.MaxPayload:
			// EOVERFLOW only for a client that was told the maximum.
			if c.toldMax {
				refuse(wire.EOVERFLOW)
			} else {
				refuse(wire.EINVAL)
			}
		case h.Type == wire.CmdRead && h.Flags&^(wire.CmdFlagFUA|wire.CmdFlagDF) != 0:
			refuse(wire.EINVAL)
		case h.Type == wire.CmdRead && h.Flags&wire.CmdFlagDF != 0 && !c.structured:
			refuse(wire.EINVAL) // SEND_DF is not offered without structured replies
		case h.Type == wire.CmdWrite && h.Flags&^wire.CmdFlagFUA != 0:
			refuse(wire.EINVAL)
		case overflow || end > size:
			refuse(pastEndErr(h.Type))
		case h.Type == wire.CmdWrite && c.dev.ReadOnly():
			refuse(wire.EPERM)
		case misaligned && !c.unalignedBuf(r):
			refuse(wire.ENOMEM)
		case !misaligned && !c.getBuf(r):
			refuse(wire.ENOMEM)
		case h.Type == wire.CmdRead:
			c.setBio(r, dm.OpRead, 0)
			c.submit(r)
		default:
			c.headerOnly = len(r.pay) >= bigPayload
			n := copy(r.pay, c.rbuf[c.rstart:c.rend])
			c.rstart += n
			r.got = n
			if n > 0 {
				c.s.stats.PayloadCopied.Add(int64(n))
			}
			var fl dm.BioFlags
			if h.Flags&wire.CmdFlagFUA != 0 {
				fl = dm.FUA
			}
			c.setBio(r, dm.OpWrite, fl)
			if n < len(r.pay) {
				c.payload = r
				return
			}
			c.writeReady(r)
		}
	case wire.CmdFlush:
		if h.Flags != 0 {
			refuse(wire.EINVAL)
			return
		}
		c.setBio(r, dm.OpFlush, 0)
		c.submit(r)
	case wire.CmdTrim, wire.CmdWriteZeroes:
		allowed := wire.CmdFlagFUA
		if h.Type == wire.CmdWriteZeroes {
			allowed |= wire.CmdFlagNoHole | wire.CmdFlagFastZero
		}
		switch {
		case h.Flags&^allowed != 0:
			refuse(wire.EINVAL)
		case h.Length == 0 || misaligned && c.blockSizes:
			refuse(wire.EINVAL)
		case overflow || end > size:
			refuse(pastEndErr(h.Type))
		case c.dev.ReadOnly():
			refuse(wire.EPERM)
		case misaligned && h.Type == wire.CmdTrim:
			// A trim is a hint: drop the partial sectors at its ends.
			lo := (h.Offset + sector - 1) &^ (sector - 1)
			hi := end &^ (sector - 1)
			if lo >= hi {
				c.reply(r, 0)
				return
			}
			c.setBio(r, dm.OpDiscard, 0)
			r.bio.Sector, r.bio.Len = lo>>dm.SectorShift, uint32(hi-lo)
			if h.Flags&wire.CmdFlagFUA != 0 {
				r.bio.Flags |= dm.FUA
			}
			c.writeReady(r)
		case misaligned && h.Flags&wire.CmdFlagFastZero != 0:
			refuse(wire.ENOTSUP) // zeroing part of a sector is never fast
		case misaligned && int(h.Length) > c.s.cfg.MaxPayload:
			refuse(wire.EINVAL) // zeroed through a buffer, so no longer than a write
		case misaligned:
			if !c.unalignedBuf(r) {
				refuse(wire.ENOMEM)
				return
			}
			clear(r.pay)
			var fl dm.BioFlags
			if h.Flags&wire.CmdFlagFUA != 0 {
				fl = dm.FUA
			}
			c.setBio(r, dm.OpWrite, fl)
			c.writeReady(r)
		default:
			op, fl := dm.OpDiscard, dm.BioFlags(0)
			if h.Type == wire.CmdWriteZeroes {
				op = dm.OpWriteZeroes
				if h.Flags&wire.CmdFlagNoHole != 0 {
					fl |= dm.NoUnmap
				}
				if h.Flags&wire.CmdFlagFastZero != 0 {
					fl |= dm.FastZero
				}
			}
			if h.Flags&wire.CmdFlagFUA != 0 {
				fl |= dm.FUA
			}
			c.setBio(r, op, fl)
			c.writeReady(r)
		}
	case wire.CmdCache:
		// Advisory: the data is one read away on our devices anyway.
		if overflow || end > size || h.Flags != 0 {
			refuse(wire.EINVAL)
			return
		}
		c.reply(r, 0)
	case wire.CmdBlockStatus:
		switch {
		case !c.meta:
			refuse(wire.EINVAL)
		case h.Flags&^wire.CmdFlagReqOne != 0 || h.Length == 0:
			refuse(wire.EINVAL)
		case overflow || end > size:
			refuse(wire.EINVAL)
		default:
			c.blockStatus(r)
		}
	case wire.CmdDisc:
		r.noReply = true
		c.reply(r, 0)
		c.shutdown(false, "client disconnected")
	default:
		// Unknown commands carry no payload we know of: refuse and go on.
		c.reply(r, wire.EINVAL)
	}
}

// unaligned returns, for a request that is not sector aligned, its
// offset within its first sector and the bytes of the whole sectors it
// touches; for an aligned one, 0, 0.
func unaligned(off uint64, length uint32) (skip int, span uint64) {
	if (off|uint64(length))&(sector-1) == 0 {
		return 0, 0
	}
	lo := off &^ (sector - 1)
	hi := (off + uint64(length) + sector - 1) &^ (sector - 1)
	return int(off - lo), hi - lo
}

// unalignedBuf gives an unaligned request a buffer of the whole sectors
// it touches; its data is the part at r.skip.
func (c *conn) unalignedBuf(r *req) bool {
	r.skip, r.span = unaligned(r.hdr.Offset, r.hdr.Length)
	if !c.getBuf(r) {
		return false
	}
	r.pay = r.buf.B[r.skip : r.skip+int(r.hdr.Length)]
	return true
}

// startDrain discards the n-byte payload of r, refused with e; r's error
// reply goes out once the payload is gone.
func (c *conn) startDrain(r *req, e uint32, n int64) {
	r.werr = e
	avail := int64(c.rend - c.rstart)
	take := min(avail, n)
	c.rstart += int(take)
	c.drain = n - take
	if c.drain == 0 {
		c.reply(r, e)
		return
	}
	c.drainReq = r
}

// atEOF closes a connection whose client shut its side once nothing it
// sent is left to serve: no complete request in rbuf (a partial one can
// never complete).
func (c *conn) atEOF() {
	if !c.eof || c.closing {
		return
	}
	if c.payload != nil || c.drain > 0 || c.rend-c.rstart < wire.RequestSize {
		c.shutdown(false, "client closed the connection")
	}
	// Otherwise parse goes on as slots free (afterFree).
}

// writeReady submits a write-type request (write, trim, write zeroes)
// whose payload is in: at once, unless it must wait (see conn.order).
func (c *conn) writeReady(r *req) {
	lo := r.bio.Sector << dm.SectorShift
	r.w = dm.OrderedWrite[*req]{Lo: lo, Hi: lo + uint64(r.bio.Len), RMW: r.isRMW(), Owner: r}
	if c.order.Admit(&r.w) {
		c.startWrite(r)
	}
}

// isRMW reports whether r is written by read-modify-write.
func (r *req) isRMW() bool { return r.span != 0 && r.hdr.Type != wire.CmdTrim }

func (c *conn) startWrite(r *req) {
	if r.w.RMW {
		c.rmwStep(r, nil)
		return
	}
	c.submit(r)
}

// writeEnded notes that a write-type request is done with the device and
// starts the waiting ones that no longer have to wait.
func (c *conn) writeEnded(r *req) {
	if r.w.RMW {
		r.stage = rmwStart
	}
	var buf [8]*dm.OrderedWrite[*req]
	for _, w := range c.order.End(&r.w, buf[:0]) {
		c.startWrite(w.Owner)
	}
}

// Read-modify-write stages: read the first sector (if the write starts
// inside it), read the last (if it ends inside it), write the lot.
const (
	rmwStart uint8 = iota
	rmwHead
	rmwTail
	rmwWrite
)

// rmwStep runs r's read-modify-write from the stage r.stage names (the
// one whose read just ended) on; err is that read's.
func (c *conn) rmwStep(r *req, err error) {
	if err != nil {
		c.rmwDone(r, err)
		return
	}
	end := r.skip + int(r.hdr.Length)
	last := int(r.span) - sector // the last sector's offset in buf
	head, tail := r.skip != 0, end%sector != 0
	oneSector := head && last == 0 // the head read brought the tail too
	for {
		switch r.stage {
		case rmwStart:
			b, err := c.arenaGet(c.l.Arena(), sector)
			if err != nil {
				c.rmwDone(r, err)
				return
			}
			r.scratch = b
			r.wflags = r.bio.Flags
			r.stage = rmwHead
			if head {
				c.rmwRead(r, 0)
				return
			}
		case rmwHead:
			if head {
				copy(r.buf.B[:r.skip], r.scratch.B[:r.skip])
				if oneSector && tail {
					copy(r.buf.B[end:], r.scratch.B[end:])
				}
			}
			r.stage = rmwTail
			if tail && !oneSector {
				c.rmwRead(r, last)
				return
			}
		case rmwTail:
			if tail && !oneSector {
				copy(r.buf.B[end:], r.scratch.B[end-last:])
			}
			c.l.Arena().Put(r.scratch)
			r.scratch = uring.Buf{}
			r.stage = rmwWrite
			b := &r.bio
			b.Op, b.Flags = dm.OpWrite, r.wflags
			b.Sector, b.Len = (r.hdr.Offset-uint64(r.skip))>>dm.SectorShift, uint32(r.span)
			b.Buf, b.BufIndex = r.buf.B, r.buf.Index
			c.submit(r)
			return
		}
	}
}

// rmwRead reads the sector at byte off of r's span into r.scratch.
func (c *conn) rmwRead(r *req, off int) {
	b := &r.bio
	b.Op, b.Flags = dm.OpRead, 0
	b.Sector = (r.hdr.Offset - uint64(r.skip) + uint64(off)) >> dm.SectorShift
	b.Len = sector
	b.Buf, b.BufIndex = r.scratch.B, r.scratch.Index
	b.Exec, b.End = c.l, r
	c.submit(r)
}

// rmwDone ends a read-modify-write that failed before its write.
func (c *conn) rmwDone(r *req, err error) {
	if r.scratch.B != nil {
		c.l.Arena().Put(r.scratch)
		r.scratch = uring.Buf{}
	}
	c.writeEnded(r)
	c.reply(r, wire.FromErrno(err))
}

func (c *conn) setBio(r *req, op dm.Op, fl dm.BioFlags) {
	b := &r.bio
	b.Op, b.Flags = op, fl
	b.Sector = r.hdr.Offset >> dm.SectorShift
	b.Len = r.hdr.Length
	if r.span != 0 {
		b.Sector = (r.hdr.Offset - uint64(r.skip)) >> dm.SectorShift
		b.Len = uint32(r.span)
	}
	b.Buf, b.BufIndex = nil, -1
	if op.HasData() {
		b.Buf, b.BufIndex = r.buf.B, r.buf.Index
	}
	b.Exec, b.End = c.l, r
}

func (c *conn) submit(r *req) {
	c.bios++
	c.dev.Submit(&r.bio)
}

// BioEnd runs on the loop when the device is done with the request.
func (r *req) BioEnd(_ *dm.Bio, err error) {
	c := r.c
	c.bios--
	switch r.hdr.Type {
	case wire.CmdWrite, wire.CmdTrim, wire.CmdWriteZeroes:
		if r.stage == rmwHead || r.stage == rmwTail {
			c.rmwStep(r, err) // a read-modify-write's read
			return
		}
		c.writeEnded(r)
	}
	werr := wire.FromErrno(err)
	if werr == wire.ENOTSUP && (r.hdr.Type != wire.CmdWriteZeroes || r.hdr.Flags&wire.CmdFlagFastZero == 0) {
		// NBD_ENOTSUP means "not fast" to a FAST_ZERO write-zeroes and
		// is not to be sent otherwise. A backing that can't discard
		// declined a hint; one that can't do anything else failed it.
		werr = wire.EIO
		if r.hdr.Type == wire.CmdTrim {
			werr = 0
		}
	}
	c.reply(r, werr)
}

// reply queues r's reply (or, on a dead connection, drops it).
func (c *conn) reply(r *req, werr uint32) {
	r.werr = werr
	r.finished = true
	if werr != 0 {
		c.s.stats.Errors.Add(1)
	}
	if c.hard || r.noReply {
		c.release(r)
		c.maybeFinish()
		return
	}
	h := r.hdr
	read := h.Type == wire.CmdRead && werr == 0
	switch {
	case !c.structured:
		wire.PutSimpleReply(r.head[:], werr, h.Cookie)
		r.headLen = wire.SimpleReplySize
		if read {
			r.data = r.pay
		}
	case werr != 0:
		wire.PutStructuredHeader(r.head[:], wire.ReplyFlagDone, wire.ReplyError, h.Cookie, 6)
		binary.BigEndian.PutUint32(r.head[20:], werr)
		binary.BigEndian.PutUint16(r.head[24:], 0)
		r.headLen = 26
	case read:
		wire.PutStructuredHeader(r.head[:], wire.ReplyFlagDone, wire.ReplyOffsetData, h.Cookie, 8+h.Length)
		binary.BigEndian.PutUint64(r.head[20:], h.Offset)
		r.headLen = 28
		r.data = r.pay
	case r.extra != nil:
		wire.PutStructuredHeader(r.head[:], wire.ReplyFlagDone, wire.ReplyBlockStatus, h.Cookie, uint32(len(r.extra)))
		r.headLen = wire.StructReplySize
		r.data = r.extra
	default:
		wire.PutStructuredHeader(r.head[:], wire.ReplyFlagDone, wire.ReplyNone, h.Cookie, 0)
		r.headLen = wire.StructReplySize
	}
	c.queuedBytes += r.headLen + len(r.data)
	c.sendq = append(c.sendq, r)
	if !c.flushQueued {
		c.flushQueued = true
		c.l.FlushLater(c)
	}
}

// Flush runs at the end of the loop's turn: the replies queued in it go
// out together.
func (c *conn) Flush() {
	c.flushQueued = false
	c.kickSend()
}

func (c *conn) kickSend() {
	if c.sendArmed || c.retryArmed || c.hard || (len(c.sending) == 0 && len(c.sendq) == 0) {
		return
	}
	// Top the batch up from the queue, then send it from sendOff on.
	for len(c.sendq) > 0 && len(c.sending) < maxIov {
		c.sending = append(c.sending, c.sendq[0])
		c.sendq = c.sendq[:copy(c.sendq, c.sendq[1:])]
	}
	if c.tls != nil {
		c.tlsKickSend()
		return
	}
	c.iov = c.iov[:0]
	skip := c.sendOff
	for _, r := range c.sending {
		skip = c.addIov(r.head[:r.headLen], skip)
		skip = c.addIov(r.data, skip)
	}
	c.msg = unix.Msghdr{Iov: &c.iov[0]}
	c.msg.SetIovlen(len(c.iov))
	var e uring.SQE
	e.PrepSendmsg(c.sfd, &c.msg, unix.MSG_NOSIGNAL)
	c.prep(&e)
	c.submitSend(&e)
}

// pastEndErr is the error for a request reaching past the end of the
// export: EINVAL for a read or a trim, which would change nothing there,
// ENOSPC for what would write there.
func pastEndErr(cmd uint16) uint32 {
	if cmd == wire.CmdRead || cmd == wire.CmdTrim {
		return wire.EINVAL
	}
	return wire.ENOSPC
}

// addIov appends b minus its first skip bytes; it returns what is left
// of skip.
func (c *conn) addIov(b []byte, skip int) int {
	if skip >= len(b) {
		return skip - len(b)
	}
	b = b[skip:]
	c.iov = append(c.iov, unix.Iovec{Base: &b[0], Len: uint64(len(b))})
	return 0
}

func (c *conn) onSend(res int32) {
	if c.tls != nil {
		var done bool
		if res, done = c.tlsOnSend(res); !done {
			return
		}
	}
	c.sendArmed = false
	if res == -int32(unix.EAGAIN) && !c.hard {
		// io_uring hands back a send still blocked after the poll that
		// woke it (it happens once the client has shut its side: the
		// socket polls readable for good). Send again shortly: at once
		// could spin while the client is slow to read.
		if id, err := c.l.Timeout(sendRetry, c, tagRetry); err == nil {
			c.retryArmed, c.retryID = true, id
			return
		}
	}
	if res < 0 {
		c.shutdown(true, "send: "+uring.Errno(res).Error())
		c.dropSending()
		c.maybeFinish()
		return
	}
	// Release the replies now wholly on the wire.
	sent := c.sendOff + int(res)
	k := 0
	for k < len(c.sending) {
		r := c.sending[k]
		n := r.headLen + len(r.data)
		if sent < n {
			break
		}
		sent -= n
		c.queuedBytes -= n
		c.release(r)
		k++
	}
	c.sending = c.sending[:copy(c.sending, c.sending[k:])]
	c.sendOff = sent
	if c.hard {
		c.dropSending()
		c.maybeFinish()
		return
	}
	c.kickSend()
	c.afterFree()
}

func (c *conn) dropSending() {
	for _, r := range c.sending {
		c.queuedBytes -= r.headLen + len(r.data)
		c.release(r)
	}
	c.sending = c.sending[:0]
	c.sendOff = 0
	for _, r := range c.sendq {
		c.queuedBytes -= r.headLen + len(r.data)
		c.release(r)
	}
	c.sendq = c.sendq[:0]
}

func (c *conn) release(r *req) {
	if r.buf.B != nil {
		c.bufBytes -= int64(len(r.buf.B))
		c.memRelease(int64(len(r.buf.B)))
		c.l.Arena().Put(r.buf)
		r.buf = uring.Buf{}
	}
	r.bio.Buf, r.data, r.extra, r.pay = nil, nil, nil, nil
	c.free = append(c.free, r.idx)
	c.inflight--
}

// afterFree resumes reading once slots or queue room came back.
func (c *conn) afterFree() {
	if c.closing {
		c.maybeFinish()
		return
	}
	if c.payload == nil && c.rend-c.rstart >= wire.RequestSize {
		c.parse()
	}
	c.atEOF()
	c.armRecv()
}

// shutdown stops reading. hard also stops replying (the peer is gone or
// we are closing at once); otherwise replies for requests in flight still
// go out. The connection closes once nothing is left in flight.
func (c *conn) shutdown(hard bool, why string) {
	if c.done {
		return
	}
	if !c.closing {
		c.closing = true
		c.why = why
		c.limitsStop()
		if c.recvArmed {
			c.l.Cancel(c.recvID)
		}
		if c.gatherArmed {
			c.l.Cancel(c.gatherID)
		}
		if r := c.payload; r != nil {
			c.payload = nil
			r.finished = true
			c.release(r)
		}
		if r := c.drainReq; r != nil {
			// Its payload will never all come: no reply.
			c.drainReq, c.drain = nil, 0
			r.finished = true
			c.release(r)
		}
	}
	if hard && !c.hard {
		c.hard = true
		if c.retryArmed {
			c.l.Cancel(c.retryID)
		}
		if !c.sendArmed {
			c.dropSending()
		} else if c.tls != nil {
			c.tlsStop()
		}
	}
	c.maybeFinish()
}

// maybeFinish closes the connection once nothing refers to it.
func (c *conn) maybeFinish() {
	if !c.closing || c.done || c.recvArmed || c.gatherArmed || c.sendArmed || c.retryArmed || c.lim.armed || c.bios > 0 || c.statuses > 0 {
		return
	}
	if !c.hard && (len(c.sendq) > 0 || len(c.sending) > 0) {
		c.kickSend()
		return
	}
	if !c.hard && c.inflight > 0 {
		return // a reply is still being made
	}
	c.done = true
	if c.fixed {
		c.l.UnregisterFile(c.sfd)
	}
	unix.Close(c.fd)
	c.dev.Close()
	c.log.Debug().Str("why", c.why).Msg("nbd client disconnected")
	c.s.connDone(c)
}

// blockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation. Finding
// holes may take system calls on several devices, so it is handed to the
// server's status workers (statusPool), which post the reply back.
func (c *conn) blockStatus(r *req) {
	c.statuses++
	c.s.status.add(statusJob{c: c, r: r})
}

// answer computes j's reply (on a status worker) and posts it to
// the connection's loop.
func (j statusJob) answer() {
	c, r := j.c, j.r
	h := r.hdr
	var exts []extent
	var err error
	if fn := c.s.cfg.extents; fn != nil {
		exts, err = fn(c.dev, h.Offset, uint64(h.Length))
	} else {
		exts = []extent{{Length: uint64(h.Length)}}
	}
	b := binary.BigEndian.AppendUint32(nil, wire.MetaContextID)
	total := uint64(0)
	for _, e := range exts {
		if e.Length == 0 {
			continue
		}
		n := min(e.Length, uint64(h.Length)-total, 1<<31)
		b = binary.BigEndian.AppendUint32(b, uint32(n))
		b = binary.BigEndian.AppendUint32(b, e.Flags)
		total += n
		if h.Flags&wire.CmdFlagReqOne != 0 || total >= uint64(h.Length) {
			break
		}
	}
	if c.l.Post(func() {
		c.statuses--
		if err != nil {
			c.reply(r, wire.FromErrno(err))
			return
		}
		r.extra = b
		c.reply(r, 0)
	}) != nil {
		// The loop is gone: nothing left to answer on.
	}
}

// extent is a run of bytes with NBD base:allocation flags (StateHole,
// StateZero).
type extent struct {
	Length uint64
	Flags  uint32
}
