// Package filedev is the dm.BlockDevice over regular files and block
// devices, driven by io_uring on the uring loops: the backing device of
// linear, striped and the other targets, and a multipath path.
//
// A clone submitted on a loop (its Exec is a *uring.Loop) is read or
// written on that loop's ring — the file registered there as a fixed
// file, the clone's buffer used as a fixed buffer when it lies in that
// loop's arena — and completes there, inline. Clones from elsewhere go to
// a fallback loop. Nothing on the path allocates or takes a lock.
//
// Flush is fdatasync; FUA is RWF_DSYNC on the write; discard punches a
// hole (or is dropped where the device can't, as discard is advisory);
// write-zeroes uses fallocate's zero range, and writes zeroes where that
// is not supported. A per-I/O deadline (SetIODeadline) fails an
// operation that outlives it with ETIMEDOUT instead of stalling it:
// deadlines of 100 ms and more by the loop's sweep (uring.SubmitTimed),
// shorter ones by a linked io_uring LINK_TIMEOUT.
//
// Lock order: Device.mu is a leaf. It guards the fallback loop and the
// closed flag and is taken only to find or start the fallback loop (for
// the path checker and for clones from outside a loop) and by Close;
// clones submitted on a loop never take it, and Close releases it before
// it waits for the loops to unregister the file.
package filedev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"udm/dm"
	"udm/uring"
)

// sweptDeadline: deadlines at least this long are enforced by the loop's
// sweep (uring.SubmitTimed), shorter ones by linked timeouts.
const sweptDeadline = 100 * time.Millisecond

// MaxLoops bounds loop IDs (uring.Config.ID) that may submit to a Device.
const MaxLoops = 64

// ErrGone is returned for I/O to a device whose file vanished.
var ErrGone = errors.New("filedev: device gone")

// Options configure Open.
type Options struct {
	ReadOnly bool
	// Fallback runs clones that arrive without a loop. Nil: the device
	// starts a private loop on first need and stops it on Close.
	Fallback *uring.Loop
	// AllowBuffered accepts files whose file system refuses O_DIRECT,
	// using buffered I/O there.
	AllowBuffered bool
	// Mode chooses how data moves: ModeAuto (default) copies memory-backed
	// files (tmpfs, ramfs) inline and uses io_uring for everything else.
	Mode Mode
}

// Mode is how a Device moves data.
type Mode uint8

const (
	// ModeAuto: ModeInline for tmpfs and ramfs files, ModeUring otherwise.
	ModeAuto Mode = iota
	// ModeUring: every operation goes through the loop's io_uring.
	ModeUring
	// ModeInline: reads and writes are pread/pwrite on the loop thread.
	// For memory-backed files that is a memcpy; io_uring can't do those
	// without blocking and hands every one to an io-wq worker (Linux 6.18:
	// 0 of 2000 tmpfs reads complete at submission), which costs two
	// cross-CPU wake-ups per I/O.
	ModeInline
)

func (m Mode) String() string {
	switch m {
	case ModeUring:
		return "uring"
	case ModeInline:
		return "inline"
	}
	return "auto"
}

// Device is a file or block device.
type Device struct {
	name     string
	f        *uring.BlockFile
	size     atomic.Int64 // bytes: f.Size at the open, then what Refresh found
	deadline atomic.Int64 // time.Duration; 0: none
	gone     atomic.Bool
	ports    [MaxLoops]atomic.Pointer[port]

	noDiscard   atomic.Bool // fallocate punch-hole unsupported
	noZeroRange atomic.Bool // fallocate zero-range unsupported
	inline      bool        // ModeInline in effect

	mu       sync.Mutex // guards the following
	fallback *uring.Loop
	ownLoop  bool
	closed   bool
}

// Open opens path (a regular file or a block device) with O_DIRECT.
func Open(path string, opt Options) (*Device, error) {
	f, err := uring.OpenBlock(path, uring.OpenOptions{ReadOnly: opt.ReadOnly, AllowBuffered: opt.AllowBuffered})
	if err != nil {
		return nil, err
	}
	if f.Size%dm.SectorSize != 0 {
		sz := f.Size
		f.Close()
		return nil, fmt.Errorf("filedev: %s: size %d is not a multiple of %d bytes", path, sz, dm.SectorSize)
	}
	d := &Device{name: path, f: f, fallback: opt.Fallback}
	d.size.Store(f.Size)
	switch opt.Mode {
	case ModeInline:
		d.inline = true
	case ModeAuto:
		d.inline = memoryBacked(f)
	}
	return d, nil
}

// memoryBacked reports whether f is a file on tmpfs or ramfs.
func memoryBacked(f *uring.BlockFile) bool {
	if f.IsBlock {
		return false
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(f.Fd, &st); err != nil {
		return false
	}
	return st.Type == unix.TMPFS_MAGIC || st.Type == unix.RAMFS_MAGIC
}

// Mode reports how the device moves data.
func (d *Device) Mode() Mode {
	if d.inline {
		return ModeInline
	}
	return ModeUring
}

// Opener returns a dm.Opener for files and block devices.
func Opener(fallback *uring.Loop) dm.Opener {
	return OpenerWith(Options{Fallback: fallback})
}

// OpenerWith is Opener with options for every device it opens (ReadOnly
// comes from the table).
func OpenerWith(opt Options) dm.Opener {
	return func(name string, readOnly bool) (dm.BlockDevice, io.Closer, error) {
		o := opt
		o.ReadOnly = readOnly
		d, err := Open(name, o)
		if err != nil {
			return nil, nil, err
		}
		return d, d, nil
	}
}

func (d *Device) Name() string   { return d.name }
func (d *Device) Size() int64    { return d.size.Load() }
func (d *Device) BlockSize() int { return max(d.f.LBS, dm.SectorSize) }
func (d *Device) ReadOnly() bool { return d.f.ReadOnly }

// File exposes the opened file.
func (d *Device) File() *uring.BlockFile { return d.f }

// Refresh reads the backing's size again, after it was grown or shrunk
// underneath (truncate, lvextend, a resized LUN), and returns it. A size
// that is not a whole number of sectors is refused and the old size kept.
// I/O beyond the new size fails from now on; I/O within it is not
// disturbed. Tables that use the device keep their lengths until they are
// reloaded (resize map does that for a multipath map).
func (d *Device) Refresh() (int64, error) {
	sz, err := d.f.CurrentSize()
	if err != nil {
		return d.Size(), err
	}
	if sz%dm.SectorSize != 0 {
		return d.Size(), fmt.Errorf("filedev: %s: size %d is not a multiple of %d bytes", d.name, sz, dm.SectorSize)
	}
	d.size.Store(sz)
	return sz, nil
}

// IOStats sums the device's I/O counters over the loops that drive it
// (the I/O that reached the file; clones refused before, such as writes
// to a read-only file, are not counted).
func (d *Device) IOStats() dm.IOStatsSnapshot {
	var s dm.IOStatsSnapshot
	for i := range d.ports {
		if p := d.ports[i].Load(); p != nil {
			s.Add(p.stats.Snapshot())
		}
	}
	return s
}

// SetIODeadline bounds each later I/O by dl (0: no deadline).
func (d *Device) SetIODeadline(dl time.Duration) { d.deadline.Store(int64(dl)) }

// MarkGone makes every later I/O fail with ENODEV (the checker found the
// device vanished).
func (d *Device) MarkGone() { d.gone.Store(true) }

// Gone reports whether MarkGone was called.
func (d *Device) Gone() bool { return d.gone.Load() }

// Vanished reports whether the path no longer names the file that was
// opened (removed, or replaced by another file).
func (d *Device) Vanished() bool {
	var st unix.Stat_t
	if err := unix.Stat(d.name, &st); err != nil {
		return true
	}
	return st.Dev != d.f.Dev || st.Ino != d.f.Ino
}

// Submit starts c. On c's loop when it has one; see the package doc.
func (d *Device) Submit(c *dm.Clone) {
	if d.gone.Load() {
		c.End(syscall.ENODEV)
		return
	}
	if l, ok := c.Exec().(*uring.Loop); ok && l.ID() >= 0 && l.ID() < MaxLoops {
		d.submitOn(l, c)
		return
	}
	fl, err := d.fallbackLoop()
	if err != nil {
		c.End(syscall.EIO)
		return
	}
	if err := fl.Post(func() { d.submitOn(fl, c) }); err != nil {
		c.End(syscall.EIO)
	}
}

// submitOn runs c on loop l, which the caller is running on.
func (d *Device) submitOn(l *uring.Loop, c *dm.Clone) {
	p := d.ports[l.ID()].Load()
	if p == nil || p.l != l {
		var err error
		if p, err = d.newPort(l); err != nil {
			c.End(syscall.EIO)
			return
		}
	}
	p.submit(c)
}

func (d *Device) fallbackLoop() (*uring.Loop, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, uring.ErrClosed
	}
	if d.fallback == nil {
		l, err := uring.NewLoop(uring.Config{ID: MaxLoops - 1, ArenaSize: -1})
		if err != nil {
			return nil, err
		}
		d.fallback, d.ownLoop = l, true
	}
	return d.fallback, nil
}

// newPort sets the device up on loop l (on l's thread).
func (d *Device) newPort(l *uring.Loop) (*port, error) {
	idx, err := l.RegisterFile(d.f.Fd)
	if err != nil {
		return nil, err
	}
	p := &port{d: d, l: l, fd: idx, free: -1}
	d.ports[l.ID()].Store(p)
	return p, nil
}

// Check is the directio path checker: an O_DIRECT read of one logical
// block at offset 0, bounded by timeout. It waits for the fallback loop,
// so on a loop's thread it refuses at once (uring.ErrCallOnLoop).
func (d *Device) Check(ctx context.Context, timeout time.Duration) error {
	if d.gone.Load() {
		return ErrGone
	}
	if uring.OnLoopThread() {
		return fmt.Errorf("filedev: check %s: %w", d.name, uring.ErrCallOnLoop)
	}
	l, err := d.fallbackLoop()
	if err != nil {
		return err
	}
	done := make(chan int32, 1)
	var buf uring.Buf
	err = l.Post(func() {
		buf = l.Arena().Get(d.BlockSize())
		var e uring.SQE
		e.PrepRead(int32(d.f.Fd), buf.B, 0)
		if _, err := l.SubmitDeadline(&e, timeout, uring.HandlerFunc(func(_ uint64, res int32, _ uint32) {
			l.Arena().Put(buf)
			done <- res
		}), 0); err != nil {
			done <- -int32(syscall.EIO)
		}
	})
	if err != nil {
		return err
	}
	select {
	case res := <-done:
		if res < 0 {
			return fmt.Errorf("filedev: check %s: %w", d.name, uring.Errno(res))
		}
		if int(res) != d.BlockSize() && d.Size() >= int64(d.BlockSize()) {
			return fmt.Errorf("filedev: check %s: short read of %d bytes", d.name, res)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close unregisters the file from the loops it was used on and closes it.
// No I/O may be in flight. It waits for each of those loops to drop the
// file, except where it can't: on a loop's thread, where waiting for a
// loop is refused (uring.ErrCallOnLoop), it unregisters the file there
// and then if that is the loop it runs on, and asks the others to
// (their rings keep their own reference to the file until they do).
// Stopping a private fallback loop waits for it: on a loop's thread that
// is refused, and the error is returned.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	own, fl := d.ownLoop, d.fallback
	d.mu.Unlock()
	for i := range d.ports {
		p := d.ports[i].Swap(nil)
		if p == nil {
			continue
		}
		unregister := func() { p.l.UnregisterFile(p.fd) }
		if p.l.OnLoop() {
			unregister()
			continue
		}
		if err := p.l.Call(unregister); errors.Is(err, uring.ErrCallOnLoop) {
			p.l.Post(unregister) // ErrClosed: the ring and its files are gone
		}
	}
	var err error
	if own {
		err = fl.Close()
	}
	return errors.Join(err, d.f.Close())
}

// port is the device on one loop: its fixed-file index and the clones in
// flight there. Only that loop touches it.
type port struct {
	d     *Device
	l     *uring.Loop
	fd    int32
	slots []pslot
	free  int32
	zero  uring.Buf // zeroes for write-zeroes emulation
	stats dm.IOStats
}

type pslot struct {
	c      *dm.Clone
	next   int32
	op     uint8
	start  int64     // IOStats stamp
	bounce uring.Buf // for buffers O_DIRECT can't use as they are
	// write-zeroes emulation: bytes still to write and where.
	zoff, zleft int64
}

const (
	pOpRW = iota
	pOpDiscard
	pOpZeroRange
	pOpZeroWrite
)

func (p *port) alloc(c *dm.Clone, op uint8) int32 {
	if p.free < 0 {
		n := max(32, 2*len(p.slots))
		old := len(p.slots)
		p.slots = append(p.slots, make([]pslot, n-old)...)
		for i := n - 1; i >= old; i-- {
			p.slots[i].next = p.free
			p.free = int32(i)
		}
	}
	i := p.free
	s := &p.slots[i]
	p.free = s.next
	s.c, s.op = c, op
	s.start = p.stats.StartAt(p.l.Now())
	return i
}

// end releases slot i and ends its clone with err, counting it in the
// port's stats.
func (p *port) end(i int32, err error) {
	start := p.slots[i].start
	c := p.release(i)
	p.stats.DoneAt(c.Op, c.Len, start, p.l.Now(), err)
	c.End(err)
}

func (p *port) release(i int32) *dm.Clone {
	s := &p.slots[i]
	c := s.c
	if s.bounce.B != nil {
		if c.Op == dm.OpRead {
			copy(c.Buf, s.bounce.B)
		}
		p.l.Arena().Put(s.bounce)
		s.bounce = uring.Buf{}
	}
	s.c = nil
	s.next = p.free
	p.free = i
	return c
}

func (p *port) submitSQE(e *uring.SQE, i int32) {
	e.Fixed()
	var err error
	switch dl := time.Duration(p.d.deadline.Load()); {
	case dl >= sweptDeadline:
		// The loop's sweep: a clock read per I/O. A linked timeout
		// costs a second SQE, CQE and kernel timer per I/O (measured:
		// 4 KiB reads at depth 32 on a loop device, 148–292k IOPS with
		// linked timeouts, 292–323k swept, 292–319k with none).
		_, err = p.l.SubmitTimed(e, dl, p, uint64(i))
	case dl > 0:
		_, err = p.l.SubmitDeadline(e, dl, p, uint64(i))
	default:
		_, err = p.l.Submit(e, p, uint64(i))
	}
	if err != nil {
		p.end(i, syscall.EIO)
	}
}

func (p *port) submit(c *dm.Clone) {
	d := p.d
	off := int64(c.Sector) << dm.SectorShift
	n := int64(c.Len)
	if c.Op != dm.OpFlush && (off < 0 || off+n > d.size.Load()) {
		c.End(syscall.EIO)
		return
	}
	if d.f.ReadOnly && c.Op != dm.OpRead && c.Op != dm.OpFlush {
		c.End(syscall.EROFS)
		return
	}
	if d.inline {
		start := p.stats.StartAt(p.l.Now())
		err := d.inlineIO(c, off, n)
		p.stats.DoneAt(c.Op, c.Len, start, p.l.Renew(), err)
		c.End(err)
		return
	}
	var e uring.SQE
	switch c.Op {
	case dm.OpRead, dm.OpWrite:
		i := p.alloc(c, pOpRW)
		buf, idx := c.Buf, c.BufIndex
		if d.f.Direct && misaligned(buf, d.f.LBS) {
			b := p.l.Arena().Get(len(buf))
			p.slots[i].bounce = b
			if c.Op == dm.OpWrite {
				copy(b.B, buf)
			}
			buf, idx = b.B, b.Index
		}
		if c.Op == dm.OpRead {
			if idx >= 0 {
				e.PrepReadFixed(p.fd, buf, uint64(off), uint16(idx))
			} else {
				e.PrepRead(p.fd, buf, uint64(off))
			}
		} else {
			var fl uint32
			if c.Flags&dm.FUA != 0 {
				fl = uring.RWFDsync
			}
			if idx >= 0 {
				e.PrepWriteFixed(p.fd, buf, uint64(off), uint16(idx), fl)
			} else {
				e.PrepWrite(p.fd, buf, uint64(off), fl)
			}
		}
		p.submitSQE(&e, i)
	case dm.OpFlush:
		i := p.alloc(c, pOpRW)
		e.PrepFsync(p.fd, true)
		p.submitSQE(&e, i)
	case dm.OpDiscard:
		if d.noDiscard.Load() {
			c.End(nil) // discard is advisory
			return
		}
		i := p.alloc(c, pOpDiscard)
		e.PrepFallocate(p.fd, uring.FallocPunchHole|uring.FallocKeepSize, uint64(off), uint64(n))
		p.submitSQE(&e, i)
	case dm.OpWriteZeroes:
		if d.noZeroRange.Load() && c.Flags&dm.FastZero != 0 {
			c.End(syscall.EOPNOTSUPP)
			return
		}
		i := p.alloc(c, pOpZeroRange)
		if d.noZeroRange.Load() {
			p.startZeroWrite(i, off, n)
			return
		}
		e.PrepFallocate(p.fd, uring.FallocZeroRange|uring.FallocKeepSize, uint64(off), uint64(n))
		p.submitSQE(&e, i)
	default:
		c.End(syscall.EOPNOTSUPP)
	}
}

// misaligned reports whether O_DIRECT would refuse buf.
func misaligned(buf []byte, lbs int) bool {
	return len(buf) > 0 && (uring.AddrOf(buf)%uint64(lbs) != 0 || len(buf)%lbs != 0)
}

const zeroChunk = 1 << 20

func (p *port) startZeroWrite(i int32, off, n int64) {
	s := &p.slots[i]
	s.op, s.zoff, s.zleft = pOpZeroWrite, off, n
	if p.zero.B == nil {
		p.zero = p.l.Arena().Get(zeroChunk)
		clear(p.zero.B)
	}
	p.nextZeroWrite(i)
}

func (p *port) nextZeroWrite(i int32) {
	s := &p.slots[i]
	n := min(s.zleft, zeroChunk)
	var e uring.SQE
	if p.zero.Fixed() {
		e.PrepWriteFixed(p.fd, p.zero.B[:n], uint64(s.zoff), uint16(p.zero.Index), 0)
	} else {
		e.PrepWrite(p.fd, p.zero.B[:n], uint64(s.zoff), 0)
	}
	p.submitSQE(&e, i)
}

// Complete is the ring's completion for the operation in slot tag.
func (p *port) Complete(tag uint64, res int32, _ uint32) {
	i := int32(tag)
	s := &p.slots[i]
	switch s.op {
	case pOpRW:
		c := s.c
		switch {
		case res < 0:
			p.end(i, syscall.Errno(-res))
		case c.Op.HasData() && uint32(res) != c.Len:
			// Short transfer: the file shrank under us.
			p.end(i, syscall.EIO)
		default:
			p.end(i, nil)
		}
	case pOpDiscard:
		if res == -int32(syscall.EOPNOTSUPP) || res == -int32(syscall.EINVAL) {
			p.d.noDiscard.Store(true)
			res = 0
		}
		p.end(i, uring.Errno(res))
	case pOpZeroRange:
		if res == -int32(syscall.EOPNOTSUPP) || res == -int32(syscall.EINVAL) {
			p.d.noZeroRange.Store(true)
			c := s.c
			if c.Flags&dm.FastZero != 0 {
				p.end(i, syscall.EOPNOTSUPP)
				return
			}
			p.startZeroWrite(i, int64(c.Sector)<<dm.SectorShift, int64(c.Len))
			return
		}
		p.end(i, uring.Errno(res))
	case pOpZeroWrite:
		if res <= 0 {
			if res == 0 {
				res = -int32(syscall.EIO)
			}
			p.end(i, uring.Errno(res))
			return
		}
		s.zoff += int64(res)
		s.zleft -= int64(res)
		if s.zleft > 0 {
			p.nextZeroWrite(i)
			return
		}
		p.end(i, nil)
	}
}

// Extents reports holes and data in [off, off+length) of a regular file
// (SEEK_DATA/SEEK_HOLE); a block device is all data.
func (d *Device) Extents(ctx context.Context, off, length int64) ([]dm.Extent, error) {
	end := off + length
	if d.f.IsBlock {
		return []dm.Extent{{Length: length}}, nil
	}
	var out []dm.Extent
	for off < end && ctx.Err() == nil {
		data, err := unix.Seek(d.f.Fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO || (err == nil && data >= end) {
			// A hole to the end of the range (or of the file).
			return append(out, dm.Extent{Length: end - off, Flags: dm.ExtentHole | dm.ExtentZero}), nil
		}
		if err != nil {
			return []dm.Extent{{Length: end - off}}, nil // no hole information: all data
		}
		if data > off {
			out = append(out, dm.Extent{Length: data - off, Flags: dm.ExtentHole | dm.ExtentZero})
			off = data
		}
		hole, err := unix.Seek(d.f.Fd, off, unix.SEEK_HOLE)
		if err != nil || hole > end {
			hole = end
		}
		out = append(out, dm.Extent{Length: hole - off})
		off = hole
	}
	return out, ctx.Err()
}

// inlineIO performs c on the calling (loop) thread: see ModeInline.
func (d *Device) inlineIO(c *dm.Clone, off, n int64) error {
	fd := d.f.Fd
	switch c.Op {
	case dm.OpRead, dm.OpWrite:
		for done := 0; done < len(c.Buf); {
			var k int
			var err error
			switch {
			case c.Op == dm.OpRead:
				k, err = unix.Pread(fd, c.Buf[done:], off+int64(done))
			case c.Flags&dm.FUA != 0:
				k, err = uring.Pwritev2(fd, c.Buf[done:], off+int64(done), uring.RWFDsync)
			default:
				k, err = unix.Pwrite(fd, c.Buf[done:], off+int64(done))
			}
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if k == 0 {
				return syscall.EIO // the file shrank under us
			}
			done += k
		}
		return nil
	case dm.OpFlush:
		return unix.Fdatasync(fd)
	case dm.OpDiscard:
		if d.noDiscard.Load() {
			return nil
		}
		err := unix.Fallocate(fd, uring.FallocPunchHole|uring.FallocKeepSize, off, n)
		if err == unix.EOPNOTSUPP || err == unix.EINVAL {
			d.noDiscard.Store(true)
			return nil
		}
		return err
	case dm.OpWriteZeroes:
		if !d.noZeroRange.Load() {
			err := unix.Fallocate(fd, uring.FallocZeroRange|uring.FallocKeepSize, off, n)
			if err != unix.EOPNOTSUPP && err != unix.EINVAL {
				return err
			}
			d.noZeroRange.Store(true)
		}
		if c.Flags&dm.FastZero != 0 {
			return syscall.EOPNOTSUPP
		}
		if c.Flags&dm.NoUnmap == 0 {
			// A punched hole reads back as zeroes on these file systems.
			if err := unix.Fallocate(fd, uring.FallocPunchHole|uring.FallocKeepSize, off, n); err == nil {
				return nil
			}
		}
		zero := make([]byte, min(n, zeroChunk))
		for done := int64(0); done < n; {
			k, err := unix.Pwrite(fd, zero[:min(int64(len(zero)), n-done)], off+done)
			if err != nil {
				return err
			}
			done += int64(k)
		}
		return nil
	}
	return syscall.EOPNOTSUPP
}
