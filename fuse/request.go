package fuse

import (
	"errors"
	"syscall"
)

// request is one parsed kernel request. Only the fields of its opcode are
// set; Name and Forgets alias the buffer it was parsed from.
type request struct {
	hdr inHeader

	Fh      uint64
	Offset  uint64
	Size    uint32 // READ/WRITE/GETXATTR/READDIR size
	Flags   uint32 // OPEN flags, FSYNC flags, ACCESS mask
	Mode    uint32 // FALLOCATE mode
	Length  uint64 // FALLOCATE length
	Valid   uint32 // SETATTR valid bits
	NewSize uint64 // SETATTR size
	Nlookup uint64 // FORGET
	Name    []byte // LOOKUP name (without the NUL)
	// Forgets is BATCH_FORGET's array of (nodeid, nlookup) pairs.
	Forgets []byte

	InitMajor, InitMinor, InitReadahead uint32
	InitFlags                           uint64
}

var errShort = errors.New("fuse: short request")

// parseRequest decodes a request from b, which holds it whole (for WRITE:
// the header and arguments; the payload is elsewhere and Size long).
// It checks every length against b and the header; a malformed request is
// an error, never a panic.
func parseRequest(b []byte, n int) (request, error) {
	var r request
	if n < inHeaderSize || n > len(b) {
		return r, errShort
	}
	r.hdr = decodeInHeader(b)
	if int(r.hdr.Len) != n && r.hdr.Opcode != opWrite {
		return r, errShort
	}
	a := b[inHeaderSize:n]
	need := func(k int) bool { return len(a) >= k }
	switch r.hdr.Opcode {
	case opLookup:
		// A NUL-terminated name.
		i := 0
		for i < len(a) && a[i] != 0 {
			i++
		}
		if i == len(a) || i == 0 {
			return r, errShort
		}
		r.Name = a[:i]
	case opForget:
		if !need(8) {
			return r, errShort
		}
		r.Nlookup = le.Uint64(a)
	case opBatchForget:
		if !need(8) {
			return r, errShort
		}
		cnt := le.Uint32(a)
		if uint64(len(a)-8) < uint64(cnt)*16 {
			return r, errShort
		}
		r.Forgets = a[8 : 8+int(cnt)*16]
	case opGetattr:
		if !need(16) {
			return r, errShort
		}
		r.Flags = le.Uint32(a)
		r.Fh = le.Uint64(a[8:])
	case opSetattr:
		if !need(88) {
			return r, errShort
		}
		r.Valid = le.Uint32(a)
		r.Fh = le.Uint64(a[8:])
		r.NewSize = le.Uint64(a[16:])
	case opOpen, opOpendir:
		if !need(8) {
			return r, errShort
		}
		r.Flags = le.Uint32(a)
	case opRead, opReaddir, opReaddirplus:
		if !need(40) {
			return r, errShort
		}
		r.Fh = le.Uint64(a)
		r.Offset = le.Uint64(a[8:])
		r.Size = le.Uint32(a[16:])
	case opWrite:
		if !need(writeInSize) || n != reqHeadSize {
			return r, errShort
		}
		r.Fh = le.Uint64(a)
		r.Offset = le.Uint64(a[8:])
		r.Size = le.Uint32(a[16:])
		if uint64(r.hdr.Len) != reqHeadSize+uint64(r.Size) {
			return r, errShort
		}
	case opRelease, opReleasedir, opFlush:
		if !need(24) {
			return r, errShort
		}
		r.Fh = le.Uint64(a)
	case opFsync, opFsyncdir:
		if !need(16) {
			return r, errShort
		}
		r.Fh = le.Uint64(a)
		r.Flags = le.Uint32(a[8:])
	case opFallocate:
		if !need(32) {
			return r, errShort
		}
		r.Fh = le.Uint64(a)
		r.Offset = le.Uint64(a[8:])
		r.Length = le.Uint64(a[16:])
		r.Mode = le.Uint32(a[24:])
	case opAccess:
		if !need(8) {
			return r, errShort
		}
		r.Flags = le.Uint32(a)
	case opGetxattr, opListxattr:
		if !need(8) {
			return r, errShort
		}
		r.Size = le.Uint32(a)
	case opInterrupt:
		if !need(8) {
			return r, errShort
		}
		r.Fh = le.Uint64(a) // the interrupted request's unique
	case opInit:
		if !need(16) {
			return r, errShort
		}
		r.InitMajor = le.Uint32(a)
		r.InitMinor = le.Uint32(a[4:])
		r.InitReadahead = le.Uint32(a[8:])
		r.InitFlags = uint64(le.Uint32(a[12:]))
		if need(20) && r.InitFlags&initInitExt != 0 {
			r.InitFlags |= uint64(le.Uint32(a[16:])) << 32
		}
	}
	return r, nil
}

// noReply reports whether the kernel expects no reply to opcode.
func noReply(opcode uint32) bool {
	return opcode == opForget || opcode == opBatchForget || opcode == opInterrupt
}

// errnoOf turns a bio's end error into the errno a reply carries.
func errnoOf(err error) int32 {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return -int32(e)
	}
	return -int32(syscall.EIO)
}
