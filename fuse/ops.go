package fuse

import (
	"syscall"

	"udm/dm"
	"udm/uring"
)

const sectorMask = dm.SectorSize - 1

// serve handles one parsed request.
func (s *Server) serve(sl reqSlot) {
	c := sl.core()
	c.taken()
	r := &c.r
	h := &r.hdr
	switch h.Opcode {
	case opInit:
		s.doInit(sl)
	case opLookup:
		if h.NodeID != rootID {
			replyErr(sl, syscall.ENOTDIR)
			return
		}
		n, err := s.lookup(string(r.Name), true)
		if err != nil {
			replyErr(sl, syscall.ENOENT)
			return
		}
		putEntryOut(sl.body(), n.id, 0, s.attrOf(n))
		reply(sl, entryOutSize, nil)
	case opForget:
		s.forget(h.NodeID, r.Nlookup)
		skipReply(sl)
	case opBatchForget:
		for f := r.Forgets; len(f) >= 16; f = f[16:] {
			s.forget(le.Uint64(f), le.Uint64(f[8:]))
		}
		skipReply(sl)
	case opInterrupt:
		// Bios can't be recalled: the interrupted request just ends
		// when its bio does.
		skipReply(sl)
	case opGetattr, opSetattr:
		var n *node
		if h.NodeID != rootID {
			if n = s.nodeOf(h.NodeID); n == nil {
				replyErr(sl, syscall.ENOENT)
				return
			}
		}
		a := s.attrOf(n)
		if h.Opcode == opSetattr && r.Valid&fattrSize != 0 && r.NewSize != a.Size {
			// A device's size is its table's: truncate can't change it.
			replyErr(sl, syscall.EINVAL)
			return
		}
		putAttrOut(sl.body(), a)
		reply(sl, attrOutSize, nil)
	case opOpen:
		if h.NodeID == rootID {
			replyErr(sl, syscall.EISDIR)
			return
		}
		n := s.nodeOf(h.NodeID)
		if n == nil {
			replyErr(sl, syscall.ENOENT)
			return
		}
		fh, err := s.open(n, r.Flags)
		if err != nil {
			replyErr(sl, err.(syscall.Errno))
			return
		}
		putOpenOut(sl.body(), fh, fopenDirectIO|fopenParallelDirectW)
		reply(sl, openOutSize, nil)
	case opOpendir:
		putOpenOut(sl.body(), 0, 0)
		reply(sl, openOutSize, nil)
	case opRelease:
		s.release(r.Fh)
		reply(sl, 0, nil)
	case opReleasedir, opFsyncdir, opAccess, opDestroy:
		reply(sl, 0, nil)
	case opReaddir:
		if h.NodeID != rootID {
			replyErr(sl, syscall.ENOTDIR)
			return
		}
		b := sl.body()
		b = b[:min(len(b), int(r.Size))]
		reply(sl, s.readdir(b, r.Offset), nil)
	case opStatfs:
		var total uint64
		names := s.cfg.Devices.List()
		for _, name := range names {
			if d, err := s.cfg.Devices.Get(name); err == nil {
				total += uint64(d.Size())
			}
		}
		putStatfs(sl.body(), total/4096, 4096, uint64(len(names)))
		reply(sl, statfsOutSize, nil)
	case opGetxattr, opListxattr:
		// ENOSYS: the kernel stops asking (a getxattr per write for
		// security.capability otherwise).
		replyErr(sl, syscall.ENOSYS)
	case opRead:
		s.read(sl, r)
	case opWrite:
		s.write(sl, r)
	case opFsync, opFlush:
		hd := s.handleFor(sl, r)
		if hd == nil {
			return
		}
		c.prep(hd.dev, dm.OpFlush, 0, 0, 0, nil, -1)
		c.submit(hd.dev)
	case opFallocate:
		s.fallocate(sl, r)
	default:
		replyErr(sl, syscall.ENOSYS)
	}
}

// handleFor returns the open file r is for, or replies EBADF and
// returns nil.
func (s *Server) handleFor(sl reqSlot, r *request) *handle {
	hd := s.handle(r.Fh)
	if hd == nil {
		replyErr(sl, syscall.EBADF)
	}
	return hd
}

// read maps a READ to a bio. Direct I/O from a loop device is aligned to
// sectors; an unaligned read (cat of the file) reads the sectors around
// it and replies with the part asked for, short if that would not fit
// the buffer (a short read, as POSIX allows, not an error).
func (s *Server) read(sl reqSlot, r *request) {
	hd := s.handleFor(sl, r)
	if hd == nil {
		return
	}
	size := uint64(hd.dev.Size())
	off := r.Offset
	end := min(off+uint64(r.Size), size)
	if r.Size == 0 || off >= end {
		reply(sl, 0, nil)
		return
	}
	buf := sl.buf()
	start := off &^ sectorMask
	aend := (end + sectorMask) &^ sectorMask
	if aend-start > uint64(len(buf)) {
		aend = start + uint64(len(buf))
		end = min(end, aend)
	}
	c := sl.core()
	c.skip, c.rlen = off-start, end-off
	c.prep(hd.dev, dm.OpRead, 0, start>>dm.SectorShift, uint32(aend-start), buf[:aend-start], c.bufIdx)
	c.submit(hd.dev)
}

// write maps a WRITE to a bio. Direct I/O from a loop device is
// sector-aligned and goes to the device as it is. An unaligned one (a
// user writing bytes to the file: dd bs=1, echo) is a read-modify-write
// of the sectors it covers: the partial sectors at its ends are read,
// the payload merged in and the whole sectors written. Writes are
// ordered by the device's wtrack, so a read-modify-write runs alongside
// no write it overlaps and none is lost.
func (s *Server) write(sl reqSlot, r *request) {
	hd := s.handleFor(sl, r)
	if hd == nil {
		return
	}
	if r.Size == 0 {
		putWriteOut(sl.body(), 0)
		reply(sl, writeOutSize, nil)
		return
	}
	end := r.Offset + uint64(r.Size)
	if int(r.Size) > len(sl.buf()) || end < r.Offset {
		replyErr(sl, syscall.EINVAL)
		return
	}
	if end > uint64(hd.dev.Size()) {
		replyErr(sl, syscall.ENOSPC)
		return
	}
	c := sl.core()
	c.prep(hd.dev, dm.OpWrite, 0, r.Offset>>dm.SectorShift, r.Size, sl.buf()[:r.Size], c.bufIdx)
	s.ordered(c, hd, r.Offset&^sectorMask, (end+sectorMask)&^sectorMask, (r.Offset|end)&sectorMask != 0)
}

// fallocate: PUNCH_HOLE|KEEP_SIZE discards, ZERO_RANGE writes zeroes
// (allocated), a plain allocation inside the device is a no-op.
func (s *Server) fallocate(sl reqSlot, r *request) {
	hd := s.handleFor(sl, r)
	if hd == nil {
		return
	}
	size := uint64(hd.dev.Size())
	off, end := r.Offset, r.Offset+r.Length
	if end < off {
		replyErr(sl, syscall.EINVAL)
		return
	}
	mode := r.Mode
	if mode&^fallocKeepSize == 0 {
		if end > size {
			replyErr(sl, syscall.ENOSPC)
			return
		}
		reply(sl, 0, nil)
		return
	}
	if end > size {
		if mode&fallocKeepSize == 0 {
			replyErr(sl, syscall.ENOSPC)
			return
		}
		end = size
	}
	if off >= end {
		reply(sl, 0, nil)
		return
	}
	if off&sectorMask != 0 || end&sectorMask != 0 || end-off > 1<<31 {
		replyErr(sl, syscall.EINVAL)
		return
	}
	var op dm.Op
	var fl dm.BioFlags
	switch mode &^ fallocKeepSize {
	case fallocPunchHole:
		if mode&fallocKeepSize == 0 {
			replyErr(sl, syscall.EOPNOTSUPP)
			return
		}
		op = dm.OpDiscard
	case fallocZeroRange:
		op, fl = dm.OpWriteZeroes, dm.NoUnmap
	default:
		replyErr(sl, syscall.EOPNOTSUPP)
		return
	}
	c := sl.core()
	c.prep(hd.dev, op, fl, off>>dm.SectorShift, uint32(end-off), nil, -1)
	s.ordered(c, hd, off, end, false)
}

// ordered sends the write c prepared once the device's wtrack admits
// it: at once, or when the writes it waits for have ended.
func (s *Server) ordered(c *reqCore, hd *handle, lo, hi uint64, rmw bool) {
	c.wt = &hd.node.wt
	c.w = wnode{Lo: lo, Hi: hi, RMW: rmw, Owner: c}
	c.dev = hd.dev
	if c.wt.admit(&c.w) {
		s.startWrite(c)
	}
}

// startWrite runs on c's loop once its write was admitted.
func (s *Server) startWrite(c *reqCore) {
	if !c.w.RMW {
		c.submit(c.dev)
		return
	}
	b, err := c.q.l.Arena().TryGet(int(c.w.Hi - c.w.Lo))
	if err != nil {
		s.bioDone(c.self, syscall.ENOMEM)
		return
	}
	c.rmwBuf = b
	c.stage = rmwHead
	s.rmwStep(c)
}

// Read-modify-write stages: the read in flight is the first sector's
// (the write starts inside it) or the last's (it ends inside it); then
// the write of the whole sectors.
const (
	rmwNone uint8 = iota
	rmwHead
	rmwTail
	rmwWrite
)

// rmwStep goes on with c's read-modify-write from c.stage, whose read
// (if any) has ended well: it submits the next read, or merges the
// payload into the sectors read and writes them.
func (s *Server) rmwStep(c *reqCore) {
	r := &c.r
	span := c.w.Hi - c.w.Lo
	skip := r.Offset - c.w.Lo
	end := skip + uint64(r.Size)
	last := span - dm.SectorSize // the last sector's offset in scratch
	head, tail := skip&sectorMask != 0, end&sectorMask != 0
	sc := c.rmwBuf.B
	for {
		switch c.stage {
		case rmwHead:
			c.stage = rmwTail
			if head {
				s.rmwRead(c, 0)
				return
			}
		case rmwTail:
			c.stage = rmwWrite
			if tail && !(head && last == 0) { // else the head read brought it
				s.rmwRead(c, last)
				return
			}
		case rmwWrite:
			copy(sc[skip:end], c.self.buf()[:r.Size])
			c.prep(c.dev, dm.OpWrite, 0, c.w.Lo>>dm.SectorShift, uint32(span), sc[:span], c.rmwBuf.Index)
			c.submit(c.dev)
			return
		}
	}
}

// rmwRead reads the sector at byte off of c's span into its scratch.
func (s *Server) rmwRead(c *reqCore, off uint64) {
	c.prep(c.dev, dm.OpRead, 0, (c.w.Lo+off)>>dm.SectorShift, dm.SectorSize, c.rmwBuf.B[off:off+dm.SectorSize], c.rmwBuf.Index)
	c.submit(c.dev)
}

// bioDone replies to the request whose bio ended (or goes on with its
// read-modify-write), and lets the writes that waited for it go.
func (s *Server) bioDone(sl reqSlot, err error) {
	c := sl.core()
	r := &c.r
	if err == nil && (c.stage == rmwTail || c.stage == rmwWrite) && c.bio.Op == dm.OpRead {
		s.rmwStep(c)
		return
	}
	if c.wt != nil {
		s.endWrite(c)
	}
	if err != nil {
		e, ok := err.(syscall.Errno)
		if !ok {
			e = syscall.EIO
		}
		replyErr(sl, e)
		return
	}
	switch r.hdr.Opcode {
	case opRead:
		reply(sl, 0, sl.buf()[c.skip:c.skip+c.rlen])
	case opWrite:
		putWriteOut(sl.body(), r.Size)
		reply(sl, writeOutSize, nil)
	default:
		reply(sl, 0, nil)
	}
}

// endWrite takes c's write off its wtrack and starts, each on its own
// loop, the writes that waited for it.
func (s *Server) endWrite(c *reqCore) {
	if c.rmwBuf.B != nil {
		c.q.l.Arena().Put(c.rmwBuf)
		c.rmwBuf = uring.Buf{}
	}
	c.stage = rmwNone
	var buf [4]*wnode
	woken := c.wt.end(&c.w, buf[:0])
	c.wt, c.dev = nil, nil
	for _, w := range woken {
		wc := w.Owner
		if err := wc.q.l.Post(func() { s.startWrite(wc) }); err != nil {
			s.log.Error().Err(err).Msg("fuse: a write that waited could not be started: its loop is closed")
		}
	}
}

// doInit answers the kernel's INIT: protocol 7.minMinor or later, big
// writes of MaxWrite (FUSE_MAX_PAGES), asynchronous direct I/O with
// enough background requests for a loop device's queue, and the io_uring
// transport when the kernel offers it and the config allows.
func (s *Server) doInit(sl reqSlot) {
	r := &sl.core().r
	if r.InitMajor != kernelMajor || r.InitMinor < minMinor {
		s.log.Error().Uint32("major", r.InitMajor).Uint32("minor", r.InitMinor).Msg("fuse: kernel protocol too old")
		s.initFail(syscall.EPROTO)
		replyErr(sl, syscall.EPROTO)
		return
	}
	want := uint64(initAsyncRead | initAtomicOTrunc | initBigWrites | initAsyncDIO | initParallelDirs | initMaxPages | initInitExt)
	uringOK := r.InitFlags&initOverIOUring != 0
	if s.cfg.Transport == IOUring && !uringOK {
		s.initFail(errNoUring)
		replyErr(sl, syscall.EPROTO)
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
	reply(sl, initOutSize, nil)
}
