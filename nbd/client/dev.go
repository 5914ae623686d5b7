package client

import (
	"context"
	"fmt"
	"io"
	"syscall"
	"time"

	"udm/dm"
	"udm/nbd/wire"
)

// The Client as a dm.BlockDevice: a multipath path or a linear target's
// backing device can be a remote export.
var (
	_ dm.BlockDevice    = (*Client)(nil)
	_ dm.DeadlineSetter = (*Client)(nil)
	_ dm.IOStatser      = (*Client)(nil)
)

// IOStats are the counters of the clones submitted to the client (its
// I/O as a path or a backing device).
func (c *Client) IOStats() dm.IOStatsSnapshot { return c.ios.Snapshot() }

// Name is the URI the client was dialed with (as a table names it).
func (c *Client) Name() string { return c.name }

// Size is the export's size in bytes.
func (c *Client) Size() int64 { return c.info.Load().Size }

// BlockSize is the export's minimum block size, at least a sector.
func (c *Client) BlockSize() int { return max(int(c.info.Load().MinBlock), dm.SectorSize) }

// ReadOnly reports whether writes are refused (by the export or by
// Options.ReadOnly).
func (c *Client) ReadOnly() bool { return c.opts.ReadOnly || c.info.Load().ReadOnly() }

// SetIODeadline bounds each later clone submitted to the client (0 or
// less: Options.RequestTimeout); a clone that passes it ends with
// ETIMEDOUT, and the client never touches its buffer afterwards.
func (c *Client) SetIODeadline(d time.Duration) { c.ioDl.Store(int64(max(d, 0))) }

// Submit sends a clone to the export. Its end runs on the clone's
// executor when it has one (posted from the client's goroutines), else
// on a client goroutine. Errors are syscall.Errno values (see Start).
func (c *Client) Submit(cl *dm.Clone) {
	q := Request{Offset: int64(cl.Sector) << dm.SectorShift, Length: cl.Len}
	switch cl.Op {
	case dm.OpRead:
		q.Cmd, q.Buf = wire.CmdRead, cl.Buf[:cl.Len]
	case dm.OpWrite:
		q.Cmd, q.Buf = wire.CmdWrite, cl.Buf[:cl.Len]
	case dm.OpFlush:
		q.Cmd, q.Offset, q.Length = wire.CmdFlush, 0, 0
	case dm.OpDiscard:
		q.Cmd = wire.CmdTrim
	case dm.OpWriteZeroes:
		q.Cmd = wire.CmdWriteZeroes
		if cl.Flags&dm.NoUnmap != 0 {
			q.Flags |= wire.CmdFlagNoHole
		}
	default:
		q.Cmd = 0xffff // refused with EINVAL
	}
	if cl.Flags&dm.FUA != 0 && cl.Op != dm.OpRead && cl.Op != dm.OpFlush {
		q.Flags |= wire.CmdFlagFUA
	}
	r := c.getReq()
	r.clone = cl
	r.ioStart = c.ios.Start()
	dl := time.Duration(c.ioDl.Load())
	if dl <= 0 {
		dl = c.opts.RequestTimeout
	}
	q.Timeout = dl
	c.start(r, q, 0)
}

// endClone ends r's clone (on its executor, when deliver posted it).
func (r *creq) endClone() {
	c, cl, err, start := r.c, r.clone, r.err, r.ioStart
	r.unref()
	c.ios.Done(cl.Op, cl.Len, start, err)
	cl.End(err)
}

// Opener opens nbd:// and nbd+unix:// names as Clients (one connection
// each, dialed within opts.DialTimeout). The export's size must be a
// whole number of sectors. Compose it with a file opener with
// ComposeOpeners.
func Opener(opts Options) dm.Opener {
	return func(name string, readOnly bool) (dm.BlockDevice, io.Closer, error) {
		o := opts
		o.ReadOnly = o.ReadOnly || readOnly
		tmo := o.DialTimeout
		if tmo <= 0 {
			tmo = 10 * time.Second
		}
		ctx, cancel := context.WithTimeout(context.Background(), tmo)
		defer cancel()
		c, err := Dial(ctx, name, o)
		if err != nil {
			return nil, nil, err
		}
		if sz := c.Size(); sz%dm.SectorSize != 0 {
			c.Close()
			return nil, nil, fmt.Errorf("nbd: %s: size %d is not a multiple of %d bytes: %w", name, sz, dm.SectorSize, syscall.EINVAL)
		}
		return c, c, nil
	}
}

// ComposeOpeners returns an opener that gives NBD URIs (isURI) to nbd
// and every other name to files: the daemon's
// ComposeOpeners(client.Opener(opts), filedev.Opener(loop)).
func ComposeOpeners(nbd, files dm.Opener) dm.Opener {
	return func(name string, readOnly bool) (dm.BlockDevice, io.Closer, error) {
		if isURI(name) {
			return nbd(name, readOnly)
		}
		return files(name, readOnly)
	}
}
