package server

import (
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"udm/nbd/wire"
	"udm/uring"
)

// tagLimits is the watchdog timer's completion tag (see conn.Complete).
const tagLimits = 200

// Limits bound what clients, hostile ones among them, can take from a
// server: memory, connections and time. The zero value means the
// defaults below; a negative duration or count means no limit.
type Limits struct {
	// MaxMemory is the budget of payload bytes (the data buffers of
	// reads and writes, from parse until the reply is on the wire) all
	// connections together hold; Config.MaxInflightBytes still bounds
	// each one. A request that doesn't fit waits, its header unparsed
	// and the connection not receiving, until buffers come back:
	// backpressure, never an error. Default DefaultMaxMemory. Never less
	// than twice Config.MaxPayload.
	MaxMemory int64
	// MaxConns is the most connections (handshaking or transmitting) at
	// once; MaxConnsPerAddr the most from one IP address (TCP only: Unix
	// socket clients count toward MaxConns alone). More are closed at
	// accept, with a warning logged at most once a second.
	MaxConns        int
	MaxConnsPerAddr int
	// IdleTimeout closes a connection in the transmission phase that has
	// had nothing in flight and received nothing for that long. Default
	// 0: never. The kernel's NBD client keeps its connections open, idle,
	// for as long as the device is attached (days), and reconnects only
	// if its own dead-connection timeout is set; a default that closed
	// idle connections would take disks from it.
	IdleTimeout time.Duration
	// PayloadTimeout is how long a request may take to arrive once its
	// first bytes have: the rest of its header and, for a write, its
	// payload (default DefaultPayloadTimeout). The connection is closed
	// when it runs out. The handshake has Config.HandshakeTimeout.
	PayloadTimeout time.Duration
}

// Defaults of Limits.
const (
	// DefaultMaxMemory is 1 GiB of payload buffers daemon-wide: on a
	// 24 GiB machine it leaves the rest to the page cache, the devices
	// and other daemons, and it is still far more than clients use: the
	// kernel's client or fio at depth 32 of 128 KiB hold 4 MiB, so 1 GiB
	// serves 256 such at full depth, or 16 connections each at its whole
	// Config.MaxInflightBytes (64 MiB).
	DefaultMaxMemory = 1 << 30
	// DefaultMaxConns and DefaultMaxConnsPerAddr: a connection costs
	// about 130 KiB before it holds any payload (its receive buffer and
	// request slots), so 1024 of them take 130 MiB; a multipath host
	// opens a few per device, 128 leaves it room for dozens of devices.
	DefaultMaxConns        = 1024
	DefaultMaxConnsPerAddr = 128
	// DefaultPayloadTimeout: 64 MiB (the largest request) arrives in
	// 60 s at 9 Mbit/s.
	DefaultPayloadTimeout = 60 * time.Second
	// smallRequest: a request this small from a connection that holds no
	// payload may use the budget's reserve (memBudget).
	smallRequest = 1 << 20
)

func (l Limits) withDefaults(maxPayload int) Limits {
	if l.MaxMemory == 0 {
		l.MaxMemory = DefaultMaxMemory
	}
	if l.MaxMemory > 0 {
		l.MaxMemory = max(l.MaxMemory, 2*int64(maxPayload))
	}
	if l.MaxConns == 0 {
		l.MaxConns = DefaultMaxConns
	}
	if l.MaxConnsPerAddr == 0 {
		l.MaxConnsPerAddr = DefaultMaxConnsPerAddr
	}
	if l.PayloadTimeout == 0 {
		l.PayloadTimeout = DefaultPayloadTimeout
	}
	return l
}

// LimitStats are the counters of the limits, safe to read at any time.
type LimitStats struct {
	// Memory is the payload bytes all connections hold now; PeakMemory
	// the most they held at once (at most Limits.MaxMemory).
	Memory, PeakMemory atomic.Int64
	// MemoryWaits counts the requests that waited for the budget.
	MemoryWaits atomic.Int64
	// Refused counts connections closed at accept (too many); IdleClosed
	// and PayloadTimeouts the connections closed by those timeouts.
	Refused, IdleClosed, PayloadTimeouts atomic.Int64
}

// LimitStats returns the limits' counters.
func (s *Server) LimitStats() *LimitStats { return &s.lim.stats }

// limiter is a server's share of the limits: the memory budget and the
// connection counts.
type limiter struct {
	cfg   Limits
	log   zerolog.Logger
	stats LimitStats
	mem   memBudget

	mu     sync.Mutex // guards the following
	conns  int
	byAddr map[string]int

	lastWarn   atomic.Int64 // unix ns of the last "refused" warning
	suppressed atomic.Int64 // refusals not logged since
}

func (lm *limiter) init(cfg Limits, log zerolog.Logger) {
	lm.cfg, lm.log = cfg, log
	lm.byAddr = map[string]int{}
	lm.mem.limit = cfg.MaxMemory
	lm.mem.reserve = min(cfg.MaxMemory/16, 64<<20)
	lm.mem.stats = &lm.stats
}

// slot is one admitted connection; release gives it back.
type slot struct {
	lm   *limiter
	addr string // "" for a Unix socket client
	done bool
}

// admit counts a new connection in; nil: it is one too many (logged).
func (lm *limiter) admit(nc net.Conn) *slot {
	addr := ""
	if ta, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		addr = ta.IP.String()
	}
	lm.mu.Lock()
	why := ""
	switch {
	case lm.cfg.MaxConns > 0 && lm.conns >= lm.cfg.MaxConns:
		why = fmt.Sprintf("%d connections already (Limits.MaxConns, --nbd-max-conns)", lm.conns)
	case addr != "" && lm.cfg.MaxConnsPerAddr > 0 && lm.byAddr[addr] >= lm.cfg.MaxConnsPerAddr:
		why = fmt.Sprintf("%d connections from %s already (--nbd-max-conns-per-addr)", lm.byAddr[addr], addr)
	default:
		lm.conns++
		if addr != "" {
			lm.byAddr[addr]++
		}
	}
	lm.mu.Unlock()
	if why != "" {
		lm.stats.Refused.Add(1)
		lm.refusedLog(nc.RemoteAddr().String(), why)
		return nil
	}
	return &slot{lm: lm, addr: addr}
}

// refusedLog warns of a refused connection, at most once a second; the
// line says how many went unlogged before it.
func (lm *limiter) refusedLog(remote, why string) {
	now := time.Now().UnixNano()
	last := lm.lastWarn.Load()
	if now-last < int64(time.Second) || !lm.lastWarn.CompareAndSwap(last, now) {
		lm.suppressed.Add(1)
		return
	}
	lm.log.Warn().Str("remote", remote).Str("why", why).Int64("also_refused", lm.suppressed.Swap(0)).
		Msg("nbd: connection refused: too many connections")
}

// release gives the slot back (once; nil is fine).
func (sl *slot) release() {
	if sl == nil || sl.done {
		return
	}
	sl.done = true
	lm := sl.lm
	lm.mu.Lock()
	lm.conns--
	if sl.addr != "" {
		if lm.byAddr[sl.addr]--; lm.byAddr[sl.addr] <= 0 {
			delete(lm.byAddr, sl.addr)
		}
	}
	lm.mu.Unlock()
}

// memBudget is the daemon-wide budget of payload bytes. Taking and
// giving are atomic adds (no lock); only a connection that has to wait,
// and whoever gives bytes back while some wait, take mu.
//
// A request that would go over limit-reserve waits. The last reserve
// bytes are kept for a connection that holds no payload at all and asks
// for at most smallRequest: so clients that fill the budget and don't
// read their replies can't keep a well-behaved one from being served,
// one small request at a time.
type memBudget struct {
	limit   int64 // <= 0: no budget
	reserve int64
	stats   *LimitStats
	nwait   atomic.Int32

	mu      sync.Mutex // guards waiters
	waiters []memWaiter
}

type memWaiter struct {
	c    *conn
	need int64
}

// take takes n bytes for a connection that holds held; false: they don't
// fit.
func (b *memBudget) take(n, held int64) bool {
	if b.limit <= 0 {
		b.stats.Memory.Add(n)
		return true
	}
	lim := b.limit - b.reserve
	if held == 0 && n <= smallRequest {
		lim = b.limit
	}
	for {
		old := b.stats.Memory.Load()
		if old+n > lim {
			return false
		}
		if b.stats.Memory.CompareAndSwap(old, old+n) {
			notePeakOf(&b.stats.PeakMemory, old+n)
			return true
		}
	}
}

// charge takes n bytes whether they fit or not (what a reservation did
// not cover).
func (b *memBudget) charge(n int64) {
	notePeakOf(&b.stats.PeakMemory, b.stats.Memory.Add(n))
}

// give returns n bytes and wakes the waiters that now fit.
func (b *memBudget) give(n int64) {
	used := b.stats.Memory.Add(-n)
	if b.nwait.Load() == 0 {
		return
	}
	free := b.limit - used
	var wake []*conn
	b.mu.Lock()
	b.dropWaitersLocked(func(w memWaiter) bool {
		if w.need <= free {
			wake = append(wake, w.c)
			return true
		}
		return false
	})
	b.mu.Unlock()
	for _, c := range wake {
		c.l.Post(c.memWoken) // a loop that is gone has closed c anyway
	}
}

// wait registers c (on its loop) to be woken when need bytes may fit.
func (b *memBudget) wait(c *conn, need int64) {
	b.mu.Lock()
	b.waiters = append(b.waiters, memWaiter{c, need})
	b.nwait.Add(1)
	b.mu.Unlock()
}

// forget drops c from the waiters (it is closing).
func (b *memBudget) forget(c *conn) {
	b.mu.Lock()
	b.dropWaitersLocked(func(w memWaiter) bool { return w.c == c })
	b.mu.Unlock()
}

// dropWaitersLocked removes the waiters drop picks (asked of each once,
// in order) and keeps the others in their order.
func (b *memBudget) dropWaitersLocked(drop func(memWaiter) bool) {
	k := 0
	for _, w := range b.waiters {
		if !drop(w) {
			b.waiters[k] = w
			k++
		}
	}
	clear(b.waiters[k:])
	b.waiters = b.waiters[:k]
	b.nwait.Store(int32(k))
}

func notePeakOf(p *atomic.Int64, v int64) {
	for {
		old := p.Load()
		if v <= old || p.CompareAndSwap(old, v) {
			return
		}
	}
}

// connLimits is a connection's part of the limits, on its loop.
type connLimits struct {
	slot     *slot
	reserved int64 // budget taken for the request being parsed
	waiting  bool  // registered with memBudget.wait
	wd       watchdog
	armed    bool // the watchdog timer is set
	timerID  uring.OpID
}

// memFits takes the global budget for the payload of the request parse
// is about to take (need bytes); false: it must wait (the connection is
// registered to be woken).
func (c *conn) memFits(need int64) bool {
	if need == 0 {
		return true
	}
	b := &c.s.lim.mem
	if b.take(need, c.bufBytes) {
		c.lim.reserved += need
		return true
	}
	c.s.lim.stats.MemoryWaits.Add(1)
	if !c.lim.waiting {
		c.lim.waiting = true
		b.wait(c, need)
	}
	// Bytes given back between take and wait woke no one: try again.
	if b.take(need, c.bufBytes) {
		c.lim.reserved += need
		return true
	}
	return false
}

// memSettle returns what the request just parsed reserved and did not
// take (it was refused before it had a buffer).
func (c *conn) memSettle() {
	if r := c.lim.reserved; r > 0 {
		c.lim.reserved = 0
		c.s.lim.mem.give(r)
	}
}

// memCharge accounts a data buffer of n bytes to the budget: from the
// reservation parse made, the rest (a request's second buffer) at once.
func (c *conn) memCharge(n int64) {
	from := min(n, c.lim.reserved)
	c.lim.reserved -= from
	if n > from {
		c.s.lim.mem.charge(n - from)
	}
}

// memRelease gives a data buffer's n bytes back.
func (c *conn) memRelease(n int64) { c.s.lim.mem.give(n) }

// memWoken runs on the loop when the budget may have room for the
// request c waits with.
func (c *conn) memWoken() {
	c.lim.waiting = false
	if c.done {
		return
	}
	c.afterFree()
}

// limitsStart arms the watchdog (on the loop, when the connection
// starts).
func (c *conn) limitsStart() {
	lc := c.s.lim.cfg
	c.lim.wd = watchdog{idle: lc.IdleTimeout, payload: lc.PayloadTimeout, last: c.l.Now()}
	c.limitsArm()
}

func (c *conn) limitsArm() {
	d := c.lim.wd.period()
	if d <= 0 || c.closing {
		return
	}
	id, err := c.l.Timeout(d, c, tagLimits)
	if err != nil {
		return
	}
	c.lim.armed, c.lim.timerID = true, id
}

// limitsRecv notes, as a receive is armed, whether a request is part
// way in (its header or payload not all received).
func (c *conn) limitsRecv() {
	n := c.rend - c.rstart
	c.lim.wd.progress(c.l.Now(), c.payload != nil || c.drain > 0 || n > 0 && n < wire.RequestSize)
}

// limitsFire is the watchdog timer's completion.
func (c *conn) limitsFire() {
	c.lim.armed = false
	if c.closing {
		c.maybeFinish()
		return
	}
	now := c.l.Now()
	if !c.recvArmed && !c.gatherArmed {
		// Not receiving (replies pile up unread, or the budget is out):
		// a request part way in is not the client's delay; its time
		// starts again when the receive is armed.
		c.lim.wd.progress(now, false)
	}
	idle := c.inflight == 0 && c.payload == nil && c.drain == 0 && c.rend == c.rstart
	switch c.lim.wd.check(now, idle) {
	case wdIdle:
		c.s.lim.stats.IdleClosed.Add(1)
		c.shutdown(false, fmt.Sprintf("idle for %v (--nbd-idle-timeout)", c.lim.wd.idle))
		return
	case wdPayload:
		c.s.lim.stats.PayloadTimeouts.Add(1)
		c.shutdown(true, fmt.Sprintf("a request took over %v to arrive (--nbd-payload-timeout)", c.lim.wd.payload))
		return
	}
	c.limitsArm()
}

// limitsStop, as the connection stops reading: the timer is cancelled,
// the wait for the budget dropped, the reservation returned.
func (c *conn) limitsStop() {
	if c.lim.armed {
		c.l.Cancel(c.lim.timerID)
	}
	if c.lim.waiting {
		c.lim.waiting = false
		c.s.lim.mem.forget(c)
	}
	c.memSettle()
}

// watchdog decides when a connection has been idle, or a request part
// way in, for too long. It is a plain state machine on the times it is
// given (loop clock, ns); the connection checks it on a timer that fires
// every period, so a timeout is noticed within a quarter of it late.
type watchdog struct {
	idle, payload time.Duration // <= 0: none
	last          int64         // the last receive armed
	since         int64         // a request has been part way in since; 0: none is
}

type wdVerdict uint8

const (
	wdOK wdVerdict = iota
	wdIdle
	wdPayload
)

// period is how often check should run (0: never).
func (w *watchdog) period() time.Duration {
	d := time.Duration(0)
	for _, t := range []time.Duration{w.idle, w.payload} {
		if t > 0 && (d == 0 || t < d) {
			d = t
		}
	}
	if d == 0 {
		return 0
	}
	return max(d/4, time.Millisecond)
}

// progress notes a receive armed at now; partial: a request is part way
// in.
func (w *watchdog) progress(now int64, partial bool) {
	w.last = now
	switch {
	case !partial:
		w.since = 0
	case w.since == 0:
		w.since = now
	}
}

// check says, at now, whether a timeout ran out; idle: the connection has
// nothing in flight and no request part way in.
func (w *watchdog) check(now int64, idle bool) wdVerdict {
	if w.payload > 0 && w.since != 0 && now-w.since >= int64(w.payload) {
		return wdPayload
	}
	if w.idle > 0 && idle && now-w.last >= int64(w.idle) {
		return wdIdle
	}
	return wdOK
}
