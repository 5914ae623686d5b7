package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"udm/dm"
)

// absentPath stands for a multipath path whose device could not be
// opened when its map was restored (the file is missing, the NBD server
// down): the map comes up with the path failed, as multipathd brings a
// map up without the paths it can't reach, and keeps its table as saved.
//
// Until the device opens, I/O to it fails with ENXIO (a path error: the
// map retries it on another path) and the checker finds it gone. Its
// Check tries to open the device; once that works (and the device is
// large enough for the map and takes its block size), the check is the
// device's own and I/O goes to it, so the checker reinstates the path on
// its next passing check, and an operator's `reinstate path` works.
type absentPath struct {
	name     string
	readOnly bool
	size     int64 // what the map needs
	open     dm.Opener
	why      error // the open error at restore

	deadline atomic.Int64 // SetIODeadline before the device opened

	mu     sync.Mutex // serializes opening and closing
	closed bool
	closer io.Closer
	dev    atomic.Pointer[devBox] // nil until opened
}

type devBox struct{ dm.BlockDevice }

func newAbsentPath(name string, readOnly bool, size int64, open dm.Opener, why error) *absentPath {
	return &absentPath{name: name, readOnly: readOnly, size: size, open: open, why: why}
}

var errPathAbsent = errors.New("path device not opened")

func (a *absentPath) inner() dm.BlockDevice {
	if b := a.dev.Load(); b != nil {
		return b.BlockDevice
	}
	return nil
}

// Submit sends c to the device once it is open; until then it fails
// with ENXIO.
func (a *absentPath) Submit(c *dm.Clone) {
	if d := a.inner(); d != nil {
		d.Submit(c)
		return
	}
	c.End(syscall.ENXIO)
}

func (a *absentPath) Name() string { return a.name }

func (a *absentPath) Size() int64 {
	if d := a.inner(); d != nil {
		return d.Size()
	}
	return a.size
}

func (a *absentPath) BlockSize() int { return dm.SectorSize }

func (a *absentPath) ReadOnly() bool { return a.readOnly }

// SetIODeadline passes the deadline on (now, or when the device opens).
func (a *absentPath) SetIODeadline(dl time.Duration) {
	a.deadline.Store(int64(dl))
	if ds, ok := a.inner().(dm.DeadlineSetter); ok {
		ds.SetIODeadline(dl)
	}
}

// IOStats are the opened device's (none before).
func (a *absentPath) IOStats() dm.IOStatsSnapshot {
	if st, ok := a.inner().(dm.IOStatser); ok {
		return st.IOStats()
	}
	return dm.IOStatsSnapshot{}
}

// Gone is true while the device is not open, then the device's own
// verdict (a file that vanished again).
func (a *absentPath) Gone() bool {
	d := a.inner()
	if d == nil {
		return true
	}
	g, ok := d.(interface{ Gone() bool })
	return ok && g.Gone()
}

// Vanished and MarkGone are the opened file's (see filedev).
func (a *absentPath) Vanished() bool {
	v, ok := a.inner().(interface{ Vanished() bool })
	return ok && v.Vanished()
}

func (a *absentPath) MarkGone() {
	if v, ok := a.inner().(interface{ MarkGone() }); ok {
		v.MarkGone()
	}
}

// Check opens the device if it isn't yet, then runs its own check (or
// a one-block read through it).
func (a *absentPath) Check(ctx context.Context, timeout time.Duration) error {
	d, err := a.tryOpen()
	if err != nil {
		return err
	}
	if dc, ok := d.(interface {
		Check(context.Context, time.Duration) error
	}); ok {
		return dc.Check(ctx, timeout)
	}
	return nil
}

// tryOpen opens the device (once). It refuses one smaller than the map
// or with a larger block size than the map was built with.
func (a *absentPath) tryOpen() (dm.BlockDevice, error) {
	if d := a.inner(); d != nil {
		return d, nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if d := a.inner(); d != nil {
		return d, nil
	}
	if a.closed {
		return nil, fmt.Errorf("%s: %w", a.name, errPathAbsent)
	}
	d, closer, err := a.open(a.name, a.readOnly)
	if err != nil {
		return nil, err
	}
	if closer == nil {
		closer = io.NopCloser(nil)
	}
	refuse := func(format string, args ...any) (dm.BlockDevice, error) {
		closer.Close()
		return nil, fmt.Errorf("%s: "+format+": %w", append(append([]any{a.name}, args...), syscall.ENXIO)...)
	}
	if d.Size() < a.size {
		return refuse("too small for the map: %d bytes, need %d", d.Size(), a.size)
	}
	if d.BlockSize() > dm.SectorSize {
		return refuse("block size %d, the map was restored with %d", d.BlockSize(), dm.SectorSize)
	}
	if ds, ok := d.(dm.DeadlineSetter); ok {
		ds.SetIODeadline(time.Duration(a.deadline.Load()))
	}
	a.closer = closer
	a.dev.Store(&devBox{d})
	return d, nil
}

// Close releases the device if it was opened (the pool calls it when the
// last table naming the path is destroyed).
func (a *absentPath) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	if a.closer != nil {
		return a.closer.Close()
	}
	return nil
}
