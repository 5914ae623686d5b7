package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"udm/dm"
	"udm/nbd/wire"
	"udm/uring"
)

// Exports is what a server serves: dm devices by name.
type Exports interface {
	// Lookup returns the device exported as name ("" is the default
	// export).
	Lookup(name string) (*dm.Device, error)
	// List names every export.
	List() []string
}

// RegistryExports exports every device of reg under its own name. The
// empty name means def, or the only device when there is exactly one.
func RegistryExports(reg *dm.Registry, def string) Exports { return regExports{reg, def} }

type regExports struct {
	reg *dm.Registry
	def string
}

func (r regExports) Lookup(name string) (*dm.Device, error) {
	if name == "" {
		name = r.def
		if name == "" {
			if l := r.reg.List(); len(l) == 1 {
				name = l[0]
			}
		}
	}
	return r.reg.Get(name)
}

func (r regExports) List() []string { return r.reg.List() }

// Config configures a Server.
type Config struct {
	Exports Exports
	// Loops run the connections' transmission phase (round robin).
	Loops []*uring.Loop
	Log   zerolog.Logger
	// MaxPayload is the largest read or write accepted (default
	// DefaultMaxPayload, advertised as the maximum block size). Larger
	// ones are refused (EOVERFLOW for a client that was told the
	// maximum, EINVAL for one that was not), a write's payload read and
	// dropped first; the connection goes on.
	MaxPayload int
	// MaxInflight is the number of requests one connection may have in
	// flight (default 256); more wait in the socket.
	MaxInflight int
	// MaxInflightBytes bounds the payload bytes (the data buffers of
	// reads and writes, from parse until the reply is on the wire) one
	// connection holds. A request that would go over it waits in the
	// socket until replies drain: backpressure, not an error. Default
	// 64 MiB: one request of the largest size, and room for MaxInflight
	// requests of the sizes clients use (256 of 128 KiB are 32 MiB).
	// Never less than MaxPayload, so a request of the largest size always
	// fits. The arena rounds buffers up to a power of two, so the memory
	// one connection pins stays below twice this.
	MaxInflightBytes int
	// GatherWindow is how long a connection whose client keeps many
	// requests in flight lets them gather in the socket before it takes
	// them in one receive (see pacer; default DefaultGatherWindow,
	// negative: never gather).
	GatherWindow time.Duration
	// HandshakeTimeout bounds the option haggling (default 10s).
	HandshakeTimeout time.Duration
	// NoMultiConn withholds NBD_FLAG_CAN_MULTI_CONN.
	NoMultiConn bool
	// TLSMode says whether NBD_OPT_STARTTLS is offered or required
	// (wire.TLSOff by default); TLS is the server's configuration for it
	// (see package tlsdir). A TLS connection's records are done on its
	// loop (tlsring.go).
	TLSMode wire.TLSMode
	TLS     *tls.Config
	// Limits bound memory, connections and time (limits.go).
	Limits Limits
	// forceGather (tests) gathers every receive, whatever the pacer says.
	forceGather bool
	// extents answers BLOCK_STATUS (base:allocation) for the byte range
	// [off, off+length) of dev; nil asks the device (dm.Device.Extents).
	extents func(dev *dm.Device, off, length uint64) ([]extent, error)
}

// deviceExtents is the default BLOCK_STATUS source: the dm device's map
// of holes.
func deviceExtents(dev *dm.Device, off, length uint64) ([]extent, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	exts, err := dev.Extents(ctx, int64(off), int64(length))
	if err != nil {
		return nil, err
	}
	out := make([]extent, 0, len(exts))
	for _, e := range exts {
		var f uint32
		if e.Flags&dm.ExtentHole != 0 {
			f |= wire.StateHole
		}
		if e.Flags&dm.ExtentZero != 0 {
			f |= wire.StateZero
		}
		out = append(out, extent{Length: uint64(e.Length), Flags: f})
	}
	return out, nil
}

// Server serves exports over NBD fixed-newstyle.
type Server struct {
	cfg  Config
	log  zerolog.Logger
	next atomic.Uint32 // round robin over loops

	mu        sync.Mutex // guards the following
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	shakes    map[net.Conn]struct{}
	closed    bool
	// getBuf takes a data buffer from a loop's arena (arenaGet; tests
	// replace it). Connections copy it when they start.
	getBuf func(a *uring.Arena, n int) (uring.Buf, error)

	wg    sync.WaitGroup // accept loops and handshakes
	connW sync.WaitGroup // transmission-phase connections

	stats Stats

	status statusPool // answers BLOCK_STATUS
	lim    limiter    // Config.Limits (limits.go)
}

// Stats are counters of a server, safe to read at any time.
type Stats struct {
	Accepted     atomic.Int64
	Active       atomic.Int64
	HandshakeErr atomic.Int64
	Requests     atomic.Int64
	Errors       atomic.Int64 // requests answered with an error
	// Receives counts the receives that brought request headers;
	// Gathered those among them that waited for the gather window
	// (Config.GatherWindow): Requests/Receives is how many
	// requests a receive took in.
	Receives atomic.Int64
	Gathered atomic.Int64
	// PayloadCopied counts write payload bytes that arrived in a
	// connection's receive buffer with the headers before them and were
	// copied into their data buffer. After a write of 32 KiB or more a
	// connection receives one header at a time, so the payloads of big
	// writes that follow land in their buffers directly.
	PayloadCopied atomic.Int64
	// PeakInflightBytes is the most payload bytes one connection has held
	// at once (bounded by Config.MaxInflightBytes).
	PeakInflightBytes atomic.Int64
}

// notePeak raises PeakInflightBytes to v.
func (st *Stats) notePeak(v int64) {
	for {
		old := st.PeakInflightBytes.Load()
		if v <= old || st.PeakInflightBytes.CompareAndSwap(old, v) {
			return
		}
	}
}

// DefaultMaxPayload is Config.MaxPayload's default: 64 MiB, the most
// libnbd sends in one request (the protocol asks servers for at least
// 32 MiB).
const DefaultMaxPayload = 64 << 20

// ErrClosed is returned by Serve after Shutdown or Close.
var ErrClosed = errors.New("nbd: server closed")

// New makes a server; call Serve for each listener.
func New(cfg Config) (*Server, error) {
	if cfg.Exports == nil {
		return nil, fmt.Errorf("nbd: server needs exports")
	}
	if len(cfg.Loops) == 0 {
		return nil, fmt.Errorf("nbd: server needs at least one loop")
	}
	if cfg.MaxPayload <= 0 {
		cfg.MaxPayload = DefaultMaxPayload
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = 256
	}
	if cfg.MaxInflightBytes <= 0 {
		cfg.MaxInflightBytes = 64 << 20
	}
	cfg.MaxInflightBytes = max(cfg.MaxInflightBytes, cfg.MaxPayload)
	if cfg.GatherWindow == 0 {
		cfg.GatherWindow = DefaultGatherWindow
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.TLSMode != wire.TLSOff && cfg.TLS == nil {
		return nil, fmt.Errorf("nbd: TLS %s needs a TLS configuration", cfg.TLSMode)
	}
	if cfg.extents == nil {
		cfg.extents = deviceExtents
	}
	cfg.Limits = cfg.Limits.withDefaults(cfg.MaxPayload)
	s := &Server{cfg: cfg, log: cfg.Log, listeners: map[net.Listener]struct{}{},
		conns: map[*conn]struct{}{}, shakes: map[net.Conn]struct{}{}, getBuf: arenaGet}
	s.lim.init(cfg.Limits, cfg.Log)
	return s, nil
}

// arenaGet takes a buffer of n bytes from a; a failed mmap is ENOMEM (the
// request is refused, the arena stays usable).
func arenaGet(a *uring.Arena, n int) (uring.Buf, error) {
	b, err := a.TryGet(n)
	if err != nil {
		return b, syscall.ENOMEM
	}
	return b, nil
}

// Stats returns the server's counters.
func (s *Server) Stats() *Stats { return &s.stats }

// Serve accepts connections on ln until Shutdown or Close; it then
// returns ErrClosed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	s.listeners[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	// A listener out of file descriptors (EMFILE, ENFILE) or timing out
	// is retried with a back-off from 5 ms to 1 s, and the connections
	// already served go on. One line is logged when an episode starts and
	// one when accepting works again, not one per retry.
	var delay time.Duration
	failures := 0
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				if failures == 0 {
					s.log.Warn().Err(err).Str("listener", ln.Addr().String()).
						Msg("accept failed: refusing new connections and retrying with a back-off up to 1s; connections already open are served")
				}
				failures++
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		if failures > 0 {
			s.log.Info().Int("failures", failures).Str("listener", ln.Addr().String()).Msg("accept works again")
			failures = 0
		}
		delay = 0
		s.stats.Accepted.Add(1)
		sl := s.lim.admit(nc)
		if sl == nil {
			nc.Close() // too many (logged)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			sl.release()
			nc.Close()
			return ErrClosed
		}
		s.shakes[nc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.handshake(nc, sl)
	}
}

// Shutdown stops accepting, lets connections finish the requests they
// have in flight (their replies are sent), closes them, and returns when
// all are gone or ctx ends (then the rest are closed at once).
func (s *Server) Shutdown(ctx context.Context) error {
	s.stop(false)
	done := make(chan struct{})
	go func() { s.connW.Wait(); s.wg.Wait(); s.status.stop(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.stop(true)
		<-done
		return ctx.Err()
	}
}

// Close stops at once: listeners and connections are closed; requests in
// flight still end (their bios can't be recalled) but get no reply.
func (s *Server) Close() error {
	s.stop(true)
	s.connW.Wait()
	s.wg.Wait()
	s.status.stop()
	return nil
}

func (s *Server) stop(hard bool) {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for nc := range s.shakes {
		nc.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.l.Post(func() { c.shutdown(hard, "server shutting down") })
	}
}

// export is what the handshake settled on.
type export struct {
	name  string
	dev   *dm.Device
	size  uint64
	flags uint16
	// blockSizes: the client agreed to the block sizes (it is held to
	// them); toldMax: it was told the maximum payload.
	blockSizes, toldMax bool
}

// handshakeFlags are the transmission flags every export has.
func (s *Server) handshakeFlags() uint16 {
	f := wire.TFlagHasFlags | wire.TFlagSendFlush | wire.TFlagSendFUA | wire.TFlagSendTrim |
		wire.TFlagSendWriteZeroes | wire.TFlagSendFastZero | wire.TFlagSendCache
	if !s.cfg.NoMultiConn {
		f |= wire.TFlagCanMultiConn
	}
	return f
}

// handshake runs the option haggling in a goroutine (the slow path), then
// hands the socket to a loop.
func (s *Server) handshake(nc net.Conn, sl *slot) {
	defer s.wg.Done()
	defer func() { sl.release() }() // unless the connection took it
	log := s.log.With().Str("remote", nc.RemoteAddr().String()).Logger()
	exp, structured, meta, tc, err := s.negotiate(nc)
	s.mu.Lock()
	delete(s.shakes, nc)
	closed := s.closed
	s.mu.Unlock()
	if err != nil || exp == nil || closed {
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, wire.ErrAbort) {
			s.stats.HandshakeErr.Add(1)
			log.Debug().Err(err).Msg("nbd handshake failed")
		}
		if exp != nil {
			exp.dev.Close()
		}
		nc.Close()
		return
	}
	fd, err := dupFd(nc)
	nc.Close()
	if err != nil {
		exp.dev.Close()
		log.Warn().Err(err).Msg("nbd: taking the socket for the loop")
		return
	}
	l := s.cfg.Loops[int(s.next.Add(1)-1)%len(s.cfg.Loops)]
	c := newConn(s, l, fd, exp, structured, meta, log)
	if tc != nil {
		c.tls = tc.onLoop()
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		unix.Close(fd)
		exp.dev.Close()
		return
	}
	s.conns[c] = struct{}{}
	c.lim.slot, sl = sl, nil
	c.arenaGet = s.getBuf
	s.connW.Add(1)
	s.mu.Unlock()
	s.stats.Active.Add(1)
	log.Debug().Str("export", exp.name).Int("loop", l.ID()).Msg("nbd client connected")
	if err := l.Post(c.start); err != nil {
		c.l = nil
		s.connDone(c)
		unix.Close(fd)
		exp.dev.Close()
	}
}

func (s *Server) connDone(c *conn) {
	s.mu.Lock()
	_, ok := s.conns[c]
	delete(s.conns, c)
	s.mu.Unlock()
	if ok {
		c.lim.slot.release()
		s.stats.Active.Add(-1)
		s.connW.Done()
	}
}

// negotiate runs the fixed-newstyle handshake (wire.Handshake) on nc.
// It returns the chosen export (opened) or an error, and the TLS
// connection if STARTTLS made one.
func (s *Server) negotiate(nc net.Conn) (exp *export, structured, meta bool, tc *tlsUp, err error) {
	nc.SetDeadline(time.Now().Add(s.cfg.HandshakeTimeout))
	defer nc.SetDeadline(time.Time{})
	h := wire.Handshake{
		Lookup: func(name string) (wire.Export, error) {
			dev, err := s.cfg.Exports.Lookup(name)
			if err != nil {
				return nil, err
			}
			return dev, nil
		},
		List:       s.cfg.Exports.List,
		Flags:      s.handshakeFlags(),
		MaxPayload: uint32(s.cfg.MaxPayload),
		TLS:        s.cfg.TLSMode,
	}
	if s.cfg.TLSMode != wire.TLSOff {
		h.Upgrade = func(io.ReadWriter) (io.ReadWriter, error) {
			t, err := s.upgradeTLS(nc)
			if err != nil {
				return nil, err
			}
			tc = t
			return t.tc, nil
		}
	}
	r, err := wire.Negotiate(nc, &h)
	if err != nil {
		return nil, false, false, nil, err
	}
	return &export{name: r.Name, dev: r.Export.(*dm.Device), size: r.Size, flags: r.Flags,
		blockSizes: r.BlockSizes, toldMax: r.ToldSizes}, r.Structured, r.Meta, tc, nil
}

// dupFd takes a duplicate of the connection's socket for the loop.
func dupFd(nc net.Conn) (int, error) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("nbd: %T has no file descriptor", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	if err := raw.Control(func(f uintptr) {
		fd, derr = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return -1, err
	}
	if derr != nil {
		return -1, derr
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}
