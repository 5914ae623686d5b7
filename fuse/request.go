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

// argMin is the least size of each opcode's arguments (the in structs
// of the protocol version the server requires); 0 for an opcode without
// arguments or with a variable-length one only.
var argMin = [...]uint8{
	opForget: 8, opBatchForget: 8, opGetattr: 16, opSetattr: 88,
	opOpen: 8, opOpendir: 8, opAccess: 8,
	opRead: 40, opReaddir: 40, opReaddirplus: 40, opWrite: writeInSize,
	opRelease: 24, opReleasedir: 24, opFlush: 24, opFsync: 16, opFsyncdir: 16,
	opFallocate: 32, opGetxattr: 8, opListxattr: 8, opInterrupt: 8, opInit: 16,
}

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
	if op := r.hdr.Opcode; op < uint32(len(argMin)) && len(a) < int(argMin[op]) {
		return r, errShort
	}
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
		r.Nlookup = le.Uint64(a)
	case opBatchForget:
		cnt := le.Uint32(a)
		if uint64(len(a)-8) < uint64(cnt)*16 {
			return r, errShort
		}
		r.Forgets = a[8 : 8+int(cnt)*16]
	case opGetattr:
		r.Flags = le.Uint32(a)
		r.Fh = le.Uint64(a[8:])
	case opSetattr:
		r.Valid = le.Uint32(a)
		r.Fh = le.Uint64(a[8:])
		r.NewSize = le.Uint64(a[16:])
	case opOpen, opOpendir, opAccess:
		r.Flags = le.Uint32(a)
	case opRead, opReaddir, opReaddirplus, opWrite:
		r.Fh = le.Uint64(a)
		r.Offset = le.Uint64(a[8:])
		r.Size = le.Uint32(a[16:])
		if r.hdr.Opcode == opWrite && (n != reqHeadSize || uint64(r.hdr.Len) != reqHeadSize+uint64(r.Size)) {
			return r, errShort
		}
	case opRelease, opReleasedir, opFlush:
		r.Fh = le.Uint64(a)
	case opFsync, opFsyncdir:
		r.Fh = le.Uint64(a)
		r.Flags = le.Uint32(a[8:])
	case opFallocate:
		r.Fh = le.Uint64(a)
		r.Offset = le.Uint64(a[8:])
		r.Length = le.Uint64(a[16:])
		r.Mode = le.Uint32(a[24:])
	case opGetxattr, opListxattr:
		r.Size = le.Uint32(a)
	case opInterrupt:
		r.Fh = le.Uint64(a) // the interrupted request's unique
	case opInit:
		r.InitMajor = le.Uint32(a)
		r.InitMinor = le.Uint32(a[4:])
		r.InitReadahead = le.Uint32(a[8:])
		r.InitFlags = uint64(le.Uint32(a[12:]))
		if len(a) >= 20 && r.InitFlags&initInitExt != 0 {
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
