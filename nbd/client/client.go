package client

// The NBD client.
//
// A Client owns one connection at a time to one export. Requests from
// any goroutine enter a table keyed by cookie and a send queue; one
// writer goroutine per connection sends whatever is queued with one
// writev (headers and write payloads), one reader goroutine reads
// replies and ends requests. A supervisor goroutine dials, notices a
// connection's death, re-queues what was in flight on it and dials
// again with backoff; requests wait for the new connection (bounded by
// ReconnectTimeout, their deadline and Retries) and are re-sent.
//
// Life of a request (creq), all state under Client.mu:
//
//	start ─▶ table + (sendq of the live conn │ waiting) ─▶ writer: sent
//	  ─▶ reader: reply ─▶ ended ─▶ delivered (handler, channel or the
//	     clone's loop) ─▶ back to the pool
//	conn dies: sent or queued requests go back to waiting (sent ones
//	  count an attempt); zombies (ended, still on the wire) are dropped.
//	deadline, ctx or Close: ended at once unless an I/O goroutine is
//	  touching its buffer (pins > 0): then the end is pending, the
//	  connection is killed so that goroutine lets go, and it ends the
//	  request. So a request's buffer is never touched after its end.
//
// An ended request that was sent stays in the table as a zombie until
// its reply arrives (its payload is discarded) or its connection dies:
// the stream can't be parsed without it, and its cookie stays unique.
//
// Lock order (see doc.go): multiOp.mu before Client.mu; no socket I/O
// and no handler runs under either.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/nbd/tlsdir"
	"udm/nbd/wire"
)

// Options configure Dial. Zero values take the defaults noted.
type Options struct {
	Log zerolog.Logger
	// DialTimeout bounds one connection attempt, handshake included
	// (default 10s).
	DialTimeout time.Duration
	// RequestTimeout bounds each request from its start, retries and
	// waiting for a reconnection included; it ends with ETIMEDOUT.
	// 0: no bound (a dm.DeadlineSetter deadline or a context may still
	// set one).
	RequestTimeout time.Duration
	// ReconnectTimeout is how long requests wait for a lost connection to
	// come back before they fail with ENOTCONN; until the next
	// connection, later requests then fail at once. The client keeps
	// redialing until Close. Default 10s; negative: don't wait.
	ReconnectTimeout time.Duration
	// Retries is how many times a request is re-sent after the
	// connection it was sent on died (default 3; negative: never).
	// Replaying reads, writes, trims, write-zeroes and flushes is safe:
	// each writes the same data to the same place.
	Retries int
	// MinBackoff and MaxBackoff bound the wait between connection
	// attempts (defaults 20ms and 2s); it doubles after each failure.
	MinBackoff, MaxBackoff time.Duration
	// ReadOnly refuses writes locally (EPERM) even if the export takes
	// them.
	ReadOnly bool
	// NoStructuredReply doesn't ask for structured replies.
	NoStructuredReply bool
	// NoOptGo enters transmission with NBD_OPT_EXPORT_NAME instead of
	// NBD_OPT_GO (as for servers that lack the latter).
	NoOptGo bool
	// BlockStatus negotiates the base:allocation metadata context so
	// that BlockStatus works (when the server has it).
	BlockStatus bool
}

func (o *Options) defaults() {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.ReconnectTimeout == 0 {
		o.ReconnectTimeout = 10 * time.Second
	}
	if o.Retries == 0 {
		o.Retries = 3
	} else if o.Retries < 0 {
		o.Retries = 0
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 20 * time.Millisecond
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 2 * time.Second
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
}

// Info is what the handshake told about the export.
type Info struct {
	Size  int64
	Flags uint16 // transmission flags (TFlag*)
	// Block size constraints (NBD_INFO_BLOCK_SIZE; defaults 1, 4096 and
	// 32 MiB when the server sends none). Requests are aligned to
	// MinBlock; reads and writes longer than MaxPayload are split.
	MinBlock, PrefBlock, MaxBlock uint32
	MaxPayload                    uint32
	// FixedNewstyle: the server speaks fixed newstyle. Go: transmission
	// was entered with NBD_OPT_GO (else NBD_OPT_EXPORT_NAME).
	FixedNewstyle, Go bool
	// Structured: structured replies were negotiated.
	Structured bool
	// TLS: the connection is encrypted (STARTTLS).
	TLS bool
	// BlockStatus: base:allocation was negotiated, as MetaContext.
	BlockStatus bool
	MetaContext uint32
}

// ReadOnly reports whether the export refuses writes.
func (i Info) ReadOnly() bool { return i.Flags&wire.TFlagReadOnly != 0 }

// CanFlush reports NBD_FLAG_SEND_FLUSH.
func (i Info) CanFlush() bool { return i.Flags&wire.TFlagSendFlush != 0 }

// CanFUA reports NBD_FLAG_SEND_FUA.
func (i Info) CanFUA() bool { return i.Flags&wire.TFlagSendFUA != 0 }

// CanTrim reports NBD_FLAG_SEND_TRIM.
func (i Info) CanTrim() bool { return i.Flags&wire.TFlagSendTrim != 0 }

// CanWriteZeroes reports NBD_FLAG_SEND_WRITE_ZEROES.
func (i Info) CanWriteZeroes() bool { return i.Flags&wire.TFlagSendWriteZeroes != 0 }

// CanMultiConn reports NBD_FLAG_CAN_MULTI_CONN.
func (i Info) CanMultiConn() bool { return i.Flags&wire.TFlagCanMultiConn != 0 }

// Handler is told the result of a request started with
// Client.Start, exactly once, on one of the client's goroutines (or in
// Start itself for a request refused at once). It must not block for
// long, and must not call Client.Close.
type Handler interface {
	Done(tag uint64, err error)
}

// Request is one request for Client.Start.
type Request struct {
	// Cmd is CmdRead, CmdWrite, CmdFlush, CmdTrim or CmdWriteZeroes.
	Cmd uint16
	// Flags: CmdFlagFUA (write, trim, write-zeroes), CmdFlagNoHole
	// (write-zeroes).
	Flags  uint16
	Offset int64
	// Length of a trim or write-zeroes; reads and writes use len(Buf).
	Length uint32
	// Buf is the destination of a read or the data of a write. The
	// client uses it until the request ends, never after.
	Buf []byte
	// Timeout bounds the request (0: the client's RequestTimeout).
	Timeout time.Duration
}

// Extent is one extent of a block status reply (base:allocation:
// StateHole, StateZero).
type Extent struct {
	Length uint32
	Flags  uint32
}

// Stats are counters kept by a Client.
type Stats struct {
	Reconnects int64 // connections made after the first
	Retried    int64 // requests re-sent after their connection died
	TimedOut   int64 // requests ended by their deadline
}

// errClosed is returned by calls on a closed client (the I/O
// paths end requests with ESHUTDOWN, which it matches).
var errClosed = fmt.Errorf("nbd: client closed: %w", syscall.ESHUTDOWN)

// Client is a connection to one NBD export, re-established when it is
// lost. It is safe for concurrent use. It is a dm.BlockDevice (see
// dev.go).
type Client struct {
	uri   exportURI
	tls   *tls.Config // for nbds:// and nbds+unix://
	name  string
	opts  Options
	log   zerolog.Logger
	info  atomic.Pointer[Info]
	ioDl  atomic.Int64 // dm per-I/O deadline (time.Duration); 0: RequestTimeout
	pool  sync.Pool    // of *creq bound to this client
	ctx   context.Context
	stop  context.CancelFunc
	kickC chan struct{} // wakes the supervisor to dial now
	wg    sync.WaitGroup
	once  sync.Once

	reconnects, retried, timedOut atomic.Int64
	ios                           dm.IOStats // of clones (Submit)

	zeroOnce sync.Once
	zeroes   []byte // write-zeroes emulation; read-only

	mu         sync.Mutex // guards the following
	reqs       map[uint64]*creq
	conn       *clientConn // the live connection; nil while reconnecting
	waiting    []*creq     // requests waiting for a connection, in order
	closed     bool
	down       bool      // reconnecting for longer than ReconnectTimeout
	downSince  time.Time // when the connection was lost
	nextCookie uint64
	connected  chan struct{} // closed while a connection is live
}

// Dial connects to the export named by uri (an nbd:// or nbd+unix://
// URI, or nbds:// or nbds+unix:// over TLS) and completes the handshake;
// ctx bounds this first attempt. Later
// reconnections happen by themselves until Close.
func Dial(ctx context.Context, uri string, opts Options) (*Client, error) {
	u, err := parseURI(uri)
	if err != nil {
		return nil, err
	}
	opts.defaults()
	var tc *tls.Config
	if u.TLS {
		if tc, err = tlsdir.Client(u.TLSCerts, u.tlsServerName()); err != nil {
			return nil, fmt.Errorf("nbd: %s: %w", uri, err)
		}
	}
	c := &Client{
		uri:       u,
		tls:       tc,
		name:      uri,
		opts:      opts,
		log:       opts.Log.With().Str("nbd", uri).Logger(),
		kickC:     make(chan struct{}, 1),
		reqs:      make(map[uint64]*creq),
		connected: make(chan struct{}),
	}
	c.pool.New = func() any { return newCreq(c) }
	dctx, cancel := context.WithTimeout(ctx, opts.DialTimeout)
	cc, info, err := c.connect(dctx)
	cancel()
	if err != nil {
		return nil, err
	}
	c.ctx, c.stop = context.WithCancel(context.Background())
	c.info.Store(info)
	c.install(cc, info)
	c.wg.Add(1)
	go c.supervise(cc)
	return c, nil
}

// Info is what the last handshake told about the export.
func (c *Client) Info() Info { return *c.info.Load() }

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{Reconnects: c.reconnects.Load(), Retried: c.retried.Load(), TimedOut: c.timedOut.Load()}
}

// Connected reports whether a connection is live now.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conn != nil
}

// Close disconnects (NBD_CMD_DISC), ends every request not yet ended
// with ESHUTDOWN and waits for the client's goroutines. It is
// idempotent; it must not be called from a Handler.
func (c *Client) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.stop()
	})
	c.wg.Wait()
	return nil
}

// kick wakes the supervisor (a reconnection attempt now).
func (c *Client) kick() {
	select {
	case c.kickC <- struct{}{}:
	default:
	}
}

// Request queues.
const (
	qNone uint8 = iota
	qWaiting
	qSend
)

// creq is one request on the wire (or one caller's request that is split
// into several: then it's never sent and only carries the completion).
type creq struct {
	c      *Client
	cookie uint64
	cmd    uint16
	flags  uint16
	off    uint64
	length uint32
	buf    []byte

	deadline time.Time
	timer    *time.Timer
	waitConn bool // a probe: queue even while down; fail when a dial fails

	// Completion: exactly one of clone, h, ch (sync) is used.
	clone   *dm.Clone
	multi   *multiOp // a split request's parent: its pieces
	h       Handler
	tag     uint64
	ch      chan error // cap 1, kept across uses
	sync    bool
	execFn  func() // posts the clone's end on its executor; made once
	ioStart int64  // IOStats stamp of a clone

	// refs: one for the table, one for delivery, one while the timer
	// may run. At zero the creq goes back to the pool.
	refs atomic.Int32

	// Guarded by c.mu:
	inTable     bool
	q           uint8
	conn        *clientConn // where it is queued or was sent
	sent        bool
	replied     bool // the final reply chunk was read
	ended       bool // the result is decided; buf is no longer touched
	pins        int  // I/O goroutines touching buf now
	endPending  bool // end requested while pinned
	endErr      error
	timerArmed  bool
	attempts    int
	err         error // result
	chunkErr    error // first error chunk of a structured reply
	covered     uint64
	extents     []Extent
	gotStatus   bool
	interrupted bool // killed the connection to get the buffer back
}

func newCreq(c *Client) *creq {
	r := &creq{c: c, ch: make(chan error, 1)}
	r.timer = time.AfterFunc(time.Hour, r.onTimer)
	r.timer.Stop()
	r.execFn = r.endClone
	return r
}

func (c *Client) getReq() *creq {
	r := c.pool.Get().(*creq)
	return r
}

// unref drops one reference; the last returns r to the pool.
func (r *creq) unref() {
	n := r.refs.Add(-1)
	if n > 0 {
		return
	}
	if n < 0 {
		panic("nbd: client request released twice")
	}
	c := r.c
	*r = creq{c: c, ch: r.ch, timer: r.timer, execFn: r.execFn}
	c.pool.Put(r)
}

// errno values the client ends requests with.
var (
	errShutdown error = syscall.ESHUTDOWN
	errNotConn  error = syscall.ENOTCONN
	errTimedOut error = syscall.ETIMEDOUT
	errInval    error = syscall.EINVAL
	errPerm     error = syscall.EPERM
	errNotSup   error = syscall.EOPNOTSUPP
	errIO       error = syscall.EIO
	errProtocol       = errors.New("nbd: protocol error")
)

// Start sends one request asynchronously; h.Done(tag, err) tells
// its result exactly once. err is nil or a syscall.Errno: EINVAL (bad
// range or alignment), EPERM (read-only), EOPNOTSUPP, ETIMEDOUT,
// ENOTCONN (connection lost and not back in time, or retries used up),
// ESHUTDOWN (closed), or what the server returned (EIO, ENOSPC, ...).
func (c *Client) Start(q Request, h Handler, tag uint64) {
	r := c.getReq()
	r.h, r.tag = h, tag
	c.start(r, q, c.opts.RequestTimeout)
}

// start validates q and sends it on r (whose completion is set), or ends
// r at once. dflt is the timeout when q has none.
func (c *Client) start(r *creq, q Request, dflt time.Duration) {
	info := c.info.Load()
	tmo := q.Timeout
	if tmo <= 0 {
		tmo = dflt
	}
	var deadline time.Time
	if tmo > 0 {
		deadline = time.Now().Add(tmo)
	}
	length := q.Length
	if q.Cmd == wire.CmdRead || q.Cmd == wire.CmdWrite {
		if uint64(len(q.Buf)) > 1<<32-1 {
			c.refuse(r, errInval)
			return
		}
		length = uint32(len(q.Buf))
	}
	if err := c.check(info, q.Cmd, q.Flags, q.Offset, length); err != nil {
		c.refuse(r, err)
		return
	}
	flags := q.Flags
	switch q.Cmd {
	case wire.CmdFlush:
		if !info.CanFlush() {
			// No write cache to flush.
			c.refuse(r, nil)
			return
		}
	case wire.CmdWrite, wire.CmdTrim, wire.CmdWriteZeroes:
		fua := flags&wire.CmdFlagFUA != 0
		if !info.CanFUA() {
			flags &^= wire.CmdFlagFUA
		}
		if q.Cmd == wire.CmdWriteZeroes && !info.CanWriteZeroes() {
			c.startMulti(r, info, wire.CmdWrite, fua, q.Offset, length, nil, deadline, true)
			return
		}
		if fua && !info.CanFUA() && info.CanFlush() {
			// Emulate FUA: the write, then a flush.
			c.startMulti(r, info, q.Cmd, true, q.Offset, length, q.Buf, deadline, false)
			return
		}
		if q.Cmd == wire.CmdWrite && length > info.MaxPayload {
			c.startMulti(r, info, q.Cmd, false, q.Offset, length, q.Buf, deadline, false)
			return
		}
	case wire.CmdRead:
		if length > info.MaxPayload {
			c.startMulti(r, info, q.Cmd, false, q.Offset, length, q.Buf, deadline, false)
			return
		}
	}
	r.cmd, r.flags, r.off, r.length, r.buf = q.Cmd, flags, uint64(q.Offset), length, q.Buf
	r.deadline = deadline
	c.submit(r)
}

// check refuses what the export can't take.
func (c *Client) check(info *Info, cmd, flags uint16, off int64, length uint32) error {
	switch cmd {
	case wire.CmdRead:
	case wire.CmdWrite, wire.CmdTrim, wire.CmdWriteZeroes:
		if info.ReadOnly() || c.opts.ReadOnly {
			return errPerm
		}
		if cmd == wire.CmdTrim && !info.CanTrim() {
			return errNotSup
		}
	case wire.CmdFlush:
		if off != 0 || length != 0 {
			return errInval
		}
		return nil
	case wire.CmdBlockStatus:
		if !info.BlockStatus {
			return errNotSup
		}
	default:
		return errInval
	}
	if length == 0 || off < 0 || uint64(off)+uint64(length) > uint64(info.Size) {
		return errInval
	}
	if m := uint64(info.MinBlock); m > 1 && (uint64(off)%m != 0 || uint64(length)%m != 0) {
		return errInval
	}
	if flags&^(wire.CmdFlagFUA|wire.CmdFlagNoHole) != 0 || flags&wire.CmdFlagNoHole != 0 && cmd != wire.CmdWriteZeroes ||
		flags&wire.CmdFlagFUA != 0 && (cmd == wire.CmdRead || cmd == wire.CmdBlockStatus) {
		return errInval
	}
	return nil
}

// refuse ends r, never queued, with err.
func (c *Client) refuse(r *creq, err error) {
	r.err = err
	r.ended = true
	r.refs.Store(1)
	c.deliver(r)
}

// submit enters r in the table and queues it. r's request fields and
// completion are set.
func (c *Client) submit(r *creq) {
	c.mu.Lock()
	if c.closed || c.down && !r.waitConn {
		err := errNotConn
		if c.closed {
			err = errShutdown
		}
		c.mu.Unlock()
		c.refuse(r, err)
		return
	}
	c.nextCookie++
	r.cookie = c.nextCookie
	c.reqs[r.cookie] = r
	r.inTable = true
	r.refs.Store(2)
	if !r.deadline.IsZero() {
		r.refs.Add(1)
		r.timerArmed = true
		r.timer.Reset(time.Until(r.deadline))
	}
	cc := c.conn
	if cc != nil {
		r.q, r.conn = qSend, cc
		cc.sendq = append(cc.sendq, r)
	} else {
		r.q = qWaiting
		c.waiting = append(c.waiting, r)
	}
	c.mu.Unlock()
	if cc != nil {
		cc.kickWriter()
	} else {
		c.kick()
	}
}

// endLocked decides r's result. It returns true if the caller must
// deliver r (after unlocking); false if r had ended already or an I/O
// goroutine holds its buffer (that goroutine ends it when it lets go).
func (c *Client) endLocked(r *creq, err error) bool {
	if r.ended {
		return false
	}
	if r.pins > 0 {
		if !r.endPending {
			r.endPending, r.endErr = true, err
		}
		return false
	}
	r.ended = true
	r.err = err
	if r.timerArmed {
		r.timerArmed = false
		if r.timer.Stop() {
			r.refs.Add(-1) // the timer won't run: its reference is ours to drop
		}
	}
	switch r.q {
	case qWaiting:
		c.waiting = removeReq(c.waiting, r)
	case qSend:
		r.conn.sendq = removeReq(r.conn.sendq, r)
	}
	r.q = qNone
	if !r.sent || r.conn == nil || r.replied {
		c.retireLocked(r)
	}
	return true
}

// unlockedPinned runs fill on r's buffer with c.mu released and the
// buffer pinned, so that r ending meanwhile (a timeout) leaves the buffer
// to fill until it is let go. Entered and left with c.mu held, it
// returns unpinLocked's answer and fill's error.
func (c *Client) unlockedPinned(r *creq, fill func() error) (deliver bool, err error) {
	r.pins++
	c.mu.Unlock()
	err = fill()
	c.mu.Lock()
	return c.unpinLocked(r), err
}

// unpinLocked lets go of r's buffer; it returns true if r must now be
// delivered (an end was pending).
func (c *Client) unpinLocked(r *creq) bool {
	r.pins--
	if r.pins == 0 && r.endPending {
		return c.endLocked(r, r.endErr)
	}
	return false
}

// retireLocked removes r from the table.
func (c *Client) retireLocked(r *creq) {
	if !r.inTable {
		return
	}
	r.inTable = false
	delete(c.reqs, r.cookie)
	r.refs.Add(-1) // never the last: delivery holds one until r ended and was delivered
}

func removeReq(q []*creq, r *creq) []*creq {
	for i, x := range q {
		if x == r {
			copy(q[i:], q[i+1:])
			q[len(q)-1] = nil
			return q[:len(q)-1]
		}
	}
	return q
}

// deliver tells r's owner its result (r.err), outside c.mu.
func (c *Client) deliver(r *creq) {
	switch {
	case r.clone != nil:
		if ex := r.clone.Exec(); ex != nil {
			if ex.Post(r.execFn) == nil {
				return
			}
		}
		r.execFn()
	case r.sync:
		r.ch <- r.err // the waiter drops the reference
	default:
		// The handler runs before r is released: a multiOp relies on
		// its pieces staying put until it has heard of them.
		r.h.Done(r.tag, r.err)
		r.unref()
	}
}

// onTimer runs when r's deadline passes.
func (r *creq) onTimer() {
	c := r.c
	c.mu.Lock()
	var kill, abortConn *clientConn
	d := false
	if r.inTable && !r.ended && r.timerArmed {
		r.timerArmed = false
		c.timedOut.Add(1)
		stale := r.lateWriteRisk()
		d = c.endLocked(r, errTimedOut)
		if !d && r.pins > 0 && !r.interrupted {
			r.interrupted = true
			kill = r.conn
		}
		if stale != nil {
			kill = nil
			abortConn = stale
		}
	}
	c.mu.Unlock()
	if kill != nil {
		kill.fail(fmt.Errorf("nbd: request timed out while the connection was busy with it: %w", syscall.ETIMEDOUT))
	}
	if abortConn != nil {
		abortConn.abort(fmt.Errorf("nbd: a write timed out on the wire: connection reset so it can't land late: %w", syscall.ETIMEDOUT))
	}
	if d {
		c.deliver(r)
	}
	r.unref() // the timer's reference
}

// lateWriteRisk returns the connection r was sent on when r writes
// (write, write-zeroes, trim) and its reply has not come: if r ends now,
// its data may still reach the server later — after the caller retried
// it elsewhere (a multipath path) and wrote newer data over it. Such a
// connection is aborted (clientConn.abort) before r's end is told.
// Called with c.mu held.
func (r *creq) lateWriteRisk() *clientConn {
	if !r.sent || r.replied || r.conn == nil {
		return nil
	}
	switch r.cmd {
	case wire.CmdWrite, wire.CmdWriteZeroes, wire.CmdTrim:
		return r.conn
	}
	return nil
}

// abort ends r early (its context ended), waiting for nothing.
func (c *Client) abort(r *creq, err error) {
	if r.multi != nil {
		r.multi.abort(err)
		return
	}
	c.mu.Lock()
	var kill *clientConn
	d := c.endLocked(r, err)
	if !d && r.pins > 0 && !r.interrupted {
		r.interrupted = true
		kill = r.conn
	}
	c.mu.Unlock()
	if kill != nil {
		kill.fail(fmt.Errorf("nbd: request canceled while the connection was busy with it: %w", err))
	}
	if d {
		c.deliver(r)
	}
}

// wait runs a sync request started on r and returns its result; r goes
// back to the pool. If ctx ends first, r is aborted and wait returns
// once the client has let go of r's buffer.
func (c *Client) wait(ctx context.Context, r *creq) error {
	return c.waitKeep(ctx, r, nil)
}

// do runs one synchronous request.
func (c *Client) do(ctx context.Context, q Request) error {
	r := c.getReq()
	r.sync = true
	c.start(r, q, c.opts.RequestTimeout)
	return c.wait(ctx, r)
}

// ReadAt reads len(p) bytes at off.
func (c *Client) ReadAt(ctx context.Context, p []byte, off int64) error {
	return c.do(ctx, Request{Cmd: wire.CmdRead, Offset: off, Buf: p})
}

// WriteAt writes p at off; fua makes it durable before it completes.
func (c *Client) WriteAt(ctx context.Context, p []byte, off int64, fua bool) error {
	var fl uint16
	if fua {
		fl = wire.CmdFlagFUA
	}
	return c.do(ctx, Request{Cmd: wire.CmdWrite, Flags: fl, Offset: off, Buf: p})
}

// Flush makes every completed write durable.
func (c *Client) Flush(ctx context.Context) error {
	return c.do(ctx, Request{Cmd: wire.CmdFlush})
}

// Trim discards a range (it may read back as anything).
func (c *Client) Trim(ctx context.Context, off int64, length uint32) error {
	return c.do(ctx, Request{Cmd: wire.CmdTrim, Offset: off, Length: length})
}

// WriteZeroes makes a range read back as zeroes; noHole asks the server
// to allocate it (not punch a hole). Emulated with writes when the
// export lacks NBD_CMD_WRITE_ZEROES.
func (c *Client) WriteZeroes(ctx context.Context, off int64, length uint32, noHole bool) error {
	var fl uint16
	if noHole {
		fl = wire.CmdFlagNoHole
	}
	return c.do(ctx, Request{Cmd: wire.CmdWriteZeroes, Flags: fl, Offset: off, Length: length})
}

// BlockStatus returns the base:allocation extents from off, covering at
// most length bytes (Options.BlockStatus must have been set and
// the server must have agreed, else EOPNOTSUPP).
func (c *Client) BlockStatus(ctx context.Context, off int64, length uint32) ([]Extent, error) {
	r := c.getReq()
	r.sync = true
	info := c.info.Load()
	if err := c.check(info, wire.CmdBlockStatus, 0, off, length); err != nil {
		r.unref0()
		return nil, err
	}
	r.cmd, r.off, r.length = wire.CmdBlockStatus, uint64(off), length
	if t := c.opts.RequestTimeout; t > 0 {
		r.deadline = time.Now().Add(t)
	}
	c.submit(r)
	var ext []Extent
	err := c.waitKeep(ctx, r, func() { ext = r.extents })
	return ext, err
}

// waitKeep is wait that, on success, runs keep (if not nil) to read what
// it needs from r before releasing it.
func (c *Client) waitKeep(ctx context.Context, r *creq, keep func()) error {
	var err error
	select {
	case err = <-r.ch:
	case <-ctx.Done():
		c.abort(r, ctx.Err())
		err = <-r.ch
	}
	if err == nil && keep != nil {
		keep()
	}
	r.unref()
	return err
}

// unref0 returns a creq that was never started to the pool.
func (r *creq) unref0() {
	r.refs.Store(1)
	r.unref()
}

// Check probes the export: a read of one block at offset 0 (a flush for
// an empty export), bounded by timeout; it waits for a reconnection
// within that time if the connection is down, and fails if an attempt to
// reconnect fails meanwhile. It reports a dead, refusing or hung server
// as an error within timeout.
func (c *Client) Check(ctx context.Context, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = c.opts.DialTimeout
	}
	info := c.info.Load()
	r := c.getReq()
	r.sync = true
	r.waitConn = true
	r.deadline = time.Now().Add(timeout)
	if n := int64(max(info.MinBlock, 512)); info.Size >= n {
		r.cmd, r.length, r.buf = wire.CmdRead, uint32(n), make([]byte, n)
	} else if info.Size > 0 {
		r.cmd, r.length, r.buf = wire.CmdRead, uint32(info.Size), make([]byte, info.Size)
	} else if info.CanFlush() {
		r.cmd = wire.CmdFlush
	} else {
		// An empty export that takes no flush: nothing to probe but the
		// connection itself.
		r.unref0()
		return c.waitConnected(ctx, timeout)
	}
	c.submit(r)
	if err := c.wait(ctx, r); err != nil {
		return fmt.Errorf("nbd: check %s: %w", c.name, err)
	}
	return nil
}

// multiOp is a caller's request carried out as several wire requests:
// a read or write longer than MaxPayload, write-zeroes emulated with
// writes, or FUA emulated with a flush after the write. parent holds the
// caller's completion and is never sent.
type multiOp struct {
	c        *Client
	parent   *creq
	deadline time.Time

	mu    sync.Mutex // guards the following; taken before Client.mu
	kids  []*creq    // pieces not yet heard of (nil once done)
	left  int
	err   error
	flush bool // send a flush once the writes are done
}

// startMulti splits [off, off+length) of cmd into wire requests of at
// most MaxPayload bytes (writes of zeroes when zero is set), then a
// flush if fua.
func (c *Client) startMulti(parent *creq, info *Info, cmd uint16, fua bool, off int64, length uint32, buf []byte, deadline time.Time, zero bool) {
	m := &multiOp{c: c, parent: parent, deadline: deadline, flush: fua && !info.CanFUA()}
	var fl uint16
	if fua && info.CanFUA() {
		fl = wire.CmdFlagFUA
	}
	chunk := uint32(1<<32 - 1)
	if cmd == wire.CmdRead || cmd == wire.CmdWrite {
		chunk = info.MaxPayload
	}
	var zeroes []byte
	if zero {
		zeroes = c.zeroBuf(info)
		chunk = min(chunk, uint32(len(zeroes)))
	}
	type piece struct {
		off int64
		n   uint32
	}
	var pieces []piece
	for done := uint32(0); done < length; {
		n := min(chunk, length-done)
		pieces = append(pieces, piece{off + int64(done), n})
		done += n
	}
	m.left = len(pieces)
	m.kids = make([]*creq, len(pieces))
	for i, p := range pieces {
		r := c.getReq()
		r.h, r.tag = m, uint64(i)
		r.cmd, r.flags, r.off, r.length = cmd, fl, uint64(p.off), p.n
		switch {
		case zero:
			r.buf = zeroes[:p.n]
		case buf != nil:
			d := uint32(p.off - off)
			r.buf = buf[d : d+p.n]
		}
		r.deadline = deadline
		m.kids[i] = r
	}
	parent.multi = m
	for _, r := range m.kids[:len(pieces)] {
		c.submit(r)
	}
}

// abort ends the pieces still running with err; the parent is delivered
// when the last of them has let go of the buffer.
func (m *multiOp) abort(err error) {
	c := m.c
	var kill []*clientConn
	var ds []*creq
	m.mu.Lock()
	if m.err == nil {
		m.err = err
	}
	m.flush = false
	c.mu.Lock()
	for _, r := range m.kids {
		if r == nil {
			continue
		}
		if c.endLocked(r, err) {
			ds = append(ds, r)
		} else if r.pins > 0 && !r.interrupted {
			r.interrupted = true
			kill = append(kill, r.conn)
		}
	}
	c.mu.Unlock()
	m.mu.Unlock()
	for _, cc := range kill {
		cc.fail(fmt.Errorf("nbd: request canceled while the connection was busy with it: %w", err))
	}
	for _, r := range ds {
		c.deliver(r)
	}
}

// zeroBuf returns a shared buffer of zeroes for write-zeroes emulation.
func (c *Client) zeroBuf(info *Info) []byte {
	c.zeroOnce.Do(func() {
		n := min(info.MaxPayload, 1<<20)
		if m := info.MinBlock; m > 1 {
			n -= n % m
		}
		c.zeroes = make([]byte, n)
	})
	return c.zeroes
}

// flushTag tags a multiOp's trailing flush.
const flushTag = 1 << 63

// Done collects the pieces of a multiOp.
func (m *multiOp) Done(tag uint64, err error) {
	m.mu.Lock()
	if tag < uint64(len(m.kids)) {
		m.kids[tag] = nil
	}
	if err != nil && m.err == nil {
		m.err = err
	}
	m.left--
	last := m.left == 0
	flush := last && m.flush && m.err == nil
	if flush {
		m.flush = false
		m.left = 1
	}
	m.mu.Unlock()
	if flush {
		// Not among kids: an abort lets it run (it has no buffer to
		// give back), bounded by the deadline.
		r := m.c.getReq()
		r.h, r.tag = m, flushTag
		r.cmd = wire.CmdFlush
		r.deadline = m.deadline
		m.c.submit(r)
		return
	}
	if last {
		p := m.parent
		p.err = m.err
		p.ended = true
		p.refs.Store(1)
		m.c.deliver(p)
	}
}
