package fuse

import (
	"syscall"

	"udm/dm"
)

// reqSlot is a transport's request slot as the operations see it. All
// of its methods run on the slot's loop.
type reqSlot interface {
	req() *request
	// body is where a reply's arguments go (after the out header).
	body() []byte
	// buf is the page-aligned data buffer: a WRITE's payload, a READ's
	// destination.
	buf() []byte
	// reply sends k bytes of body and then data (a slice of buf).
	reply(k int, data []byte)
	replyErr(e syscall.Errno)
	// next takes the next request without replying to this one.
	next()
	submit(dev *dm.Device, op dm.Op, fl dm.BioFlags, sector uint64, n uint32, buf []byte)
	// readSpan records where a READ's reply lies in buf.
	readSpan(skip, n uint64)
	span() (skip, n uint64)
}

func (sl *slot) readSpan(skip, n uint64) { sl.skip, sl.rlen = skip, n }
func (sl *slot) span() (uint64, uint64)  { return sl.skip, sl.rlen }

const sectorMask = dm.SectorSize - 1

// serve handles one parsed request.
func (s *Server) serve(sl reqSlot) {
	r := sl.req()
	h := &r.hdr
	switch h.Opcode {
	case opInit:
		s.doInit(sl)
	case opLookup:
		if h.NodeID != rootID {
			sl.replyErr(syscall.ENOTDIR)
			return
		}
		n, err := s.lookup(string(r.Name), true)
		if err != nil {
			sl.replyErr(syscall.ENOENT)
			return
		}
		putEntryOut(sl.body(), n.id, 0, s.attrOf(n))
		sl.reply(entryOutSize, nil)
	case opForget:
		s.forget(h.NodeID, r.Nlookup)
		sl.next()
	case opBatchForget:
		for f := r.Forgets; len(f) >= 16; f = f[16:] {
			s.forget(le.Uint64(f), le.Uint64(f[8:]))
		}
		sl.next()
	case opInterrupt:
		// Bios can't be recalled: the interrupted request just ends
		// when its bio does.
		sl.next()
	case opGetattr, opSetattr:
		var n *node
		if h.NodeID != rootID {
			if n = s.nodeOf(h.NodeID); n == nil {
				sl.replyErr(syscall.ENOENT)
				return
			}
		}
		a := s.attrOf(n)
		if h.Opcode == opSetattr && r.Valid&fattrSize != 0 && r.NewSize != a.Size {
			// A device's size is its table's: truncate can't change it.
			sl.replyErr(syscall.EINVAL)
			return
		}
		putAttrOut(sl.body(), a)
		sl.reply(attrOutSize, nil)
	case opOpen:
		if h.NodeID == rootID {
			sl.replyErr(syscall.EISDIR)
			return
		}
		n := s.nodeOf(h.NodeID)
		if n == nil {
			sl.replyErr(syscall.ENOENT)
			return
		}
		fh, err := s.open(n, r.Flags)
		if err != nil {
			sl.replyErr(err.(syscall.Errno))
			return
		}
		putOpenOut(sl.body(), fh, fopenDirectIO|fopenParallelDirectW)
		sl.reply(openOutSize, nil)
	case opOpendir:
		putOpenOut(sl.body(), 0, 0)
		sl.reply(openOutSize, nil)
	case opRelease:
		s.release(r.Fh)
		sl.reply(0, nil)
	case opReleasedir, opFsyncdir, opAccess, opDestroy:
		sl.reply(0, nil)
	case opReaddir:
		if h.NodeID != rootID {
			sl.replyErr(syscall.ENOTDIR)
			return
		}
		b := sl.body()
		b = b[:min(len(b), int(r.Size))]
		sl.reply(s.readdir(b, r.Offset), nil)
	case opStatfs:
		var total uint64
		names := s.cfg.Devices.List()
		for _, name := range names {
			if d, err := s.cfg.Devices.Get(name); err == nil {
				total += uint64(d.Size())
			}
		}
		putStatfs(sl.body(), total/4096, 4096, uint64(len(names)))
		sl.reply(statfsOutSize, nil)
	case opGetxattr, opListxattr:
		// ENOSYS: the kernel stops asking (a getxattr per write for
		// security.capability otherwise).
		sl.replyErr(syscall.ENOSYS)
	case opRead:
		s.read(sl, r)
	case opWrite:
		s.write(sl, r)
	case opFsync, opFlush:
		hd := s.handle(r.Fh)
		if hd == nil {
			sl.replyErr(syscall.EBADF)
			return
		}
		sl.submit(hd.dev, dm.OpFlush, 0, 0, 0, nil)
	case opFallocate:
		s.fallocate(sl, r)
	default:
		sl.replyErr(syscall.ENOSYS)
	}
}

// read maps a READ to a bio. Direct I/O from a loop device is aligned to
// sectors; an unaligned read (cat of the file) reads the sectors around
// it and replies with the part asked for, short if that would not fit
// the buffer (a short read, as POSIX allows, not an error).
func (s *Server) read(sl reqSlot, r *request) {
	hd := s.handle(r.Fh)
	if hd == nil {
		sl.replyErr(syscall.EBADF)
		return
	}
	size := uint64(hd.dev.Size())
	off := r.Offset
	end := min(off+uint64(r.Size), size)
	if r.Size == 0 || off >= end {
		sl.reply(0, nil)
		return
	}
	buf := sl.buf()
	start := off &^ sectorMask
	aend := (end + sectorMask) &^ sectorMask
	if aend-start > uint64(len(buf)) {
		aend = start + uint64(len(buf))
		end = min(end, aend)
	}
	sl.readSpan(off-start, end-off)
	sl.submit(hd.dev, dm.OpRead, 0, start>>dm.SectorShift, uint32(aend-start), buf[:aend-start])
}

// write maps a WRITE to a bio. Writes must be sector-aligned (direct I/O
// from a loop device is): an unaligned one is EINVAL, not a
// read-modify-write, since two of them on the same sector in flight at
// once would race.
func (s *Server) write(sl reqSlot, r *request) {
	hd := s.handle(r.Fh)
	if hd == nil {
		sl.replyErr(syscall.EBADF)
		return
	}
	if r.Size == 0 {
		putWriteOut(sl.body(), 0)
		sl.reply(writeOutSize, nil)
		return
	}
	if r.Offset&sectorMask != 0 || uint64(r.Size)&sectorMask != 0 || int(r.Size) > len(sl.buf()) {
		sl.replyErr(syscall.EINVAL)
		return
	}
	if r.Offset+uint64(r.Size) > uint64(hd.dev.Size()) {
		sl.replyErr(syscall.ENOSPC)
		return
	}
	sl.submit(hd.dev, dm.OpWrite, 0, r.Offset>>dm.SectorShift, r.Size, sl.buf()[:r.Size])
}

// fallocate: PUNCH_HOLE|KEEP_SIZE discards, ZERO_RANGE writes zeroes
// (allocated), a plain allocation inside the device is a no-op.
func (s *Server) fallocate(sl reqSlot, r *request) {
	hd := s.handle(r.Fh)
	if hd == nil {
		sl.replyErr(syscall.EBADF)
		return
	}
	size := uint64(hd.dev.Size())
	off, end := r.Offset, r.Offset+r.Length
	if end < off {
		sl.replyErr(syscall.EINVAL)
		return
	}
	mode := r.Mode
	if mode&^fallocKeepSize == 0 {
		if end > size {
			sl.replyErr(syscall.ENOSPC)
			return
		}
		sl.reply(0, nil)
		return
	}
	if end > size {
		if mode&fallocKeepSize == 0 {
			sl.replyErr(syscall.ENOSPC)
			return
		}
		end = size
	}
	if off >= end {
		sl.reply(0, nil)
		return
	}
	if off&sectorMask != 0 || end&sectorMask != 0 || end-off > 1<<31 {
		sl.replyErr(syscall.EINVAL)
		return
	}
	var op dm.Op
	var fl dm.BioFlags
	switch mode &^ fallocKeepSize {
	case fallocPunchHole:
		if mode&fallocKeepSize == 0 {
			sl.replyErr(syscall.EOPNOTSUPP)
			return
		}
		op = dm.OpDiscard
	case fallocZeroRange:
		op, fl = dm.OpWriteZeroes, dm.NoUnmap
	default:
		sl.replyErr(syscall.EOPNOTSUPP)
		return
	}
	sl.submit(hd.dev, op, fl, off>>dm.SectorShift, uint32(end-off), nil)
}

// bioDone replies to the request whose bio ended.
func (s *Server) bioDone(sl reqSlot, err error) {
	r := sl.req()
	if err != nil {
		e, ok := err.(syscall.Errno)
		if !ok {
			e = syscall.EIO
		}
		sl.replyErr(e)
		return
	}
	switch r.hdr.Opcode {
	case opRead:
		skip, n := sl.span()
		sl.reply(0, sl.buf()[skip:skip+n])
	case opWrite:
		putWriteOut(sl.body(), r.Size)
		sl.reply(writeOutSize, nil)
	default:
		sl.reply(0, nil)
	}
}

// doInit answers the kernel's INIT: protocol 7.minMinor or later, big
// writes of MaxWrite (FUSE_MAX_PAGES), asynchronous direct I/O with
// enough background requests for a loop device's queue, and the io_uring
// transport when the kernel offers it and the config allows.
func (s *Server) doInit(sl reqSlot) {
	r := sl.req()
	if r.InitMajor != kernelMajor || r.InitMinor < minMinor {
		s.log.Error().Uint32("major", r.InitMajor).Uint32("minor", r.InitMinor).Msg("fuse: kernel protocol too old")
		s.initFail(syscall.EPROTO)
		sl.replyErr(syscall.EPROTO)
		return
	}
	want := uint64(initAsyncRead | initBigWrites | initAsyncDIO | initParallelDirs | initMaxPages | initInitExt)
	uringOK := r.InitFlags&initOverIOUring != 0
	if s.cfg.Transport == IOUring && !uringOK {
		s.initFail(errNoUring)
		sl.replyErr(syscall.EPROTO)
		return
	}
	t := Classic
	if s.cfg.Transport != Classic && uringOK && s.uringCapable() {
		want |= initOverIOUring
		t = IOUring
	}
	s.transport.Store(int32(t))
	putInitOut(sl.body(), initOut{
		Major: kernelMajor, Minor: min(kernelMinor, r.InitMinor), MaxReadahead: r.InitReadahead,
		Flags: want & r.InitFlags, MaxBackground: 256, Congestion: 192,
		MaxWrite: uint32(s.cfg.MaxWrite), TimeGran: 1, MaxPages: uint16(s.cfg.MaxWrite / 4096),
	})
	sl.reply(initOutSize, nil)
}
