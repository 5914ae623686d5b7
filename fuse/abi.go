package fuse

import "encoding/binary"

// Kernel ABI of FUSE (include/uapi/linux/fuse.h), only what a
// one-directory filesystem of block-device files needs. Structures are
// decoded and encoded field by field at their ABI offsets (little endian,
// the only byte order udm runs on), so no unsafe cast depends on the
// alignment of a buffer.

const (
	kernelMajor = 7
	// kernelMinor is the protocol minor udm speaks: 7.42 brought
	// FUSE_OVER_IO_URING. A kernel offering less gets its own minor back.
	kernelMinor = 42
	// minMinor: below 7.36 there is no flags2 (FUSE_INIT_EXT), below
	// 7.28 no max_pages.
	minMinor = 28
)

// Opcodes.
const (
	opLookup      = 1
	opForget      = 2
	opGetattr     = 3
	opSetattr     = 4
	opOpen        = 14
	opRead        = 15
	opWrite       = 16
	opStatfs      = 17
	opRelease     = 18
	opFsync       = 20
	opGetxattr    = 22
	opListxattr   = 23
	opFlush       = 25
	opInit        = 26
	opOpendir     = 27
	opReaddir     = 28
	opReleasedir  = 29
	opFsyncdir    = 30
	opAccess      = 34
	opInterrupt   = 36
	opDestroy     = 38
	opBatchForget = 42
	opFallocate   = 43
	opReaddirplus = 44
	opLseek       = 46
	opStatx       = 52
)

// INIT flags (bits 32-63 travel in flags2).
const (
	initAsyncRead    = 1 << 0
	initAtomicOTrunc = 1 << 3
	initBigWrites    = 1 << 5
	initAsyncDIO     = 1 << 15
	initParallelDirs = 1 << 18
	initMaxPages     = 1 << 22
	initNoOpendir    = 1 << 24
	initInitExt      = 1 << 30
	initOverIOUring  = 1 << 41
)

// OPEN reply flags.
const (
	fopenDirectIO        = 1 << 0
	fopenParallelDirectW = 1 << 6
)

// SETATTR valid bits.
const (
	fattrSize = 1 << 3
)

// fallocate modes.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// Sizes of the structures on the wire.
const (
	inHeaderSize  = 40
	outHeaderSize = 16
	writeInSize   = 40
	attrSize      = 88
	entryOutSize  = 40 + attrSize
	attrOutSize   = 16 + attrSize
	openOutSize   = 16
	writeOutSize  = 8
	initOutSize   = 64
	statfsOutSize = 80
	direntBase    = 24
	// reqHeadSize is the part of every request the transport keeps apart
	// from the data buffer: the header and a WRITE's arguments, so that
	// a WRITE's payload lands page-aligned in the data buffer.
	reqHeadSize = inHeaderSize + writeInSize
	// minReadBuffer is FUSE_MIN_READ_BUFFER: the kernel refuses reads of
	// /dev/fuse into less.
	minReadBuffer = 8192
)

// Fuse-over-io_uring command opcodes (IORING_OP_URING_CMD cmd_op).
const (
	uringCmdRegister       = 1
	uringCmdCommitAndFetch = 2
)

var le = binary.LittleEndian

// inHeader is struct fuse_in_header.
type inHeader struct {
	Len      uint32
	Opcode   uint32
	Unique   uint64
	NodeID   uint64
	UID, GID uint32
	PID      uint32
	ExtLen   uint16
}

func decodeInHeader(b []byte) inHeader {
	return inHeader{
		Len: le.Uint32(b[0:]), Opcode: le.Uint32(b[4:]), Unique: le.Uint64(b[8:]), NodeID: le.Uint64(b[16:]),
		UID: le.Uint32(b[24:]), GID: le.Uint32(b[28:]), PID: le.Uint32(b[32:]), ExtLen: le.Uint16(b[36:]),
	}
}

func putOutHeader(b []byte, n int, errno int32, unique uint64) {
	le.PutUint32(b[0:], uint32(n))
	le.PutUint32(b[4:], uint32(errno))
	le.PutUint64(b[8:], unique)
}

// attr is struct fuse_attr.
type attr struct {
	Ino, Size, Blocks uint64
	Mtime             uint64
	Mode, Nlink       uint32
	UID, GID, Blksize uint32
}

func putAttr(b []byte, a attr) {
	clear(b[:attrSize])
	le.PutUint64(b[0:], a.Ino)
	le.PutUint64(b[8:], a.Size)
	le.PutUint64(b[16:], a.Blocks)
	le.PutUint64(b[24:], a.Mtime) // atime
	le.PutUint64(b[32:], a.Mtime)
	le.PutUint64(b[40:], a.Mtime) // ctime
	le.PutUint32(b[60:], a.Mode)
	le.PutUint32(b[64:], a.Nlink)
	le.PutUint32(b[68:], a.UID)
	le.PutUint32(b[72:], a.GID)
	le.PutUint32(b[80:], a.Blksize)
}

// putEntryOut encodes struct fuse_entry_out; validity is zero so that
// the kernel asks again each time (devices come and go, and resize).
func putEntryOut(b []byte, nodeid, gen uint64, a attr) {
	clear(b[:40])
	le.PutUint64(b[0:], nodeid)
	le.PutUint64(b[8:], gen)
	putAttr(b[40:], a)
}

func putAttrOut(b []byte, a attr) {
	clear(b[:16])
	putAttr(b[16:], a)
}

func putOpenOut(b []byte, fh uint64, flags uint32) {
	le.PutUint64(b[0:], fh)
	le.PutUint32(b[8:], flags)
	le.PutUint32(b[12:], 0)
}

func putWriteOut(b []byte, n uint32) {
	le.PutUint32(b[0:], n)
	le.PutUint32(b[4:], 0)
}

// initOut is struct fuse_init_out.
type initOut struct {
	Major, Minor, MaxReadahead uint32
	Flags                      uint64
	MaxBackground, Congestion  uint16
	MaxWrite, TimeGran         uint32
	MaxPages                   uint16
}

func putInitOut(b []byte, o initOut) {
	clear(b[:initOutSize])
	le.PutUint32(b[0:], o.Major)
	le.PutUint32(b[4:], o.Minor)
	le.PutUint32(b[8:], o.MaxReadahead)
	le.PutUint32(b[12:], uint32(o.Flags))
	le.PutUint16(b[16:], o.MaxBackground)
	le.PutUint16(b[18:], o.Congestion)
	le.PutUint32(b[20:], o.MaxWrite)
	le.PutUint32(b[24:], o.TimeGran)
	le.PutUint16(b[28:], o.MaxPages)
	le.PutUint32(b[32:], uint32(o.Flags>>32))
}

func putStatfs(b []byte, blocks, bsize uint64, files uint64) {
	clear(b[:statfsOutSize])
	le.PutUint64(b[0:], blocks)
	le.PutUint64(b[32:], files)
	le.PutUint32(b[40:], uint32(bsize))
	le.PutUint32(b[44:], 255) // namelen
	le.PutUint32(b[48:], uint32(bsize))
}

// putDirent appends struct fuse_dirent for name at b[n:], returning the
// new length, or n when it doesn't fit.
func putDirent(b []byte, n int, ino, off uint64, typ uint32, name string) int {
	sz := (direntBase + len(name) + 7) &^ 7
	if n+sz > len(b) {
		return n
	}
	e := b[n : n+sz]
	le.PutUint64(e[0:], ino)
	le.PutUint64(e[8:], off)
	le.PutUint32(e[16:], uint32(len(name)))
	le.PutUint32(e[20:], typ)
	copy(e[24:], name)
	clear(e[24+len(name):])
	return n + sz
}
