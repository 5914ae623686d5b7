package perf

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"udm/nbd/client"
	"udm/nbd/wire"
	"udm/uring"
)

// NBDEngine drives an NBD export (any server: udm serve, nbdkit,
// qemu-nbd) through udm's own NBD client, over one or more connections.
// Each loop submits through one client; the client's reader goroutine
// completes the I/O and posts its end back to the loop, so this measures
// the client as a multipath path would use it.
type NBDEngine struct {
	uri     string
	clients []*client.Client
	next    atomic.Int32
}

// NewNBDEngine connects conns clients (at least one) to uri. Loops are
// spread over them round-robin. Several connections to an export that
// doesn't advertise multi-conn are fine for this harness's reads and
// writes (it never relies on a flush across connections).
func NewNBDEngine(uri string, conns int) (*NBDEngine, error) {
	conns = max(conns, 1)
	e := &NBDEngine{uri: uri}
	for range conns {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		c, err := client.Dial(ctx, uri, client.Options{})
		cancel()
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("perf: %w", err)
		}
		e.clients = append(e.clients, c)
	}
	return e, nil
}

func (e *NBDEngine) Name() string { return "udm-nbd-client:" + e.uri }
func (e *NBDEngine) Size() int64  { return e.clients[0].Size() }

// Close disconnects every client.
func (e *NBDEngine) Close() error {
	for _, c := range e.clients {
		c.Close()
	}
	return nil
}

// Port binds loop l to the next client.
func (e *NBDEngine) Port(l *uring.Loop) (Port, error) {
	i := int(e.next.Add(1)-1) % len(e.clients)
	return &nbdPort{l: l, c: e.clients[i]}, nil
}

type nbdPort struct {
	l     *uring.Loop
	c     *client.Client
	slots []*nbdSlot // by IO index; pointers: slots in flight must not move
}

// nbdSlot carries one IO through the client and back to its loop; its
// closure is made once, so completing allocates nothing.
type nbdSlot struct {
	l   *uring.Loop
	io  *IO
	err error
	fn  func()
}

func (p *nbdPort) Submit(io *IO) {
	for len(p.slots) <= io.Index {
		s := &nbdSlot{l: p.l}
		s.fn = s.end
		p.slots = append(p.slots, s)
	}
	s := p.slots[io.Index]
	s.io = io
	cmd := wire.CmdRead
	if io.Op == Write {
		cmd = wire.CmdWrite
	}
	p.c.Start(client.Request{Cmd: cmd, Offset: io.Off, Buf: io.Buf.B}, s, 0)
}

// Done runs on a client goroutine: post the end to the loop.
func (s *nbdSlot) Done(_ uint64, err error) {
	s.err = err
	if s.l.Post(s.fn) != nil {
		// The loop is gone: the run was torn down; nobody waits.
		return
	}
}

func (s *nbdSlot) end() {
	io, err := s.io, s.err
	s.io, s.err = nil, nil
	io.Done(err)
}

func (p *nbdPort) Close() {}
