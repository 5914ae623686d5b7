package dm

import (
	"sync/atomic"
	"syscall"
	"time"
)

// SectorShift and SectorSize: tables and bios count 512-byte sectors.
const (
	SectorShift = 9
	SectorSize  = 1 << SectorShift
)

// Op is what a bio asks for.
type Op uint8

// Bio operations.
const (
	OpRead Op = iota
	OpWrite
	OpFlush       // empty flush: make every completed write durable
	OpDiscard     // trim: the range may read back as anything (zeroes here)
	OpWriteZeroes // the range reads back as zeroes
)

var opNames = [...]string{"read", "write", "flush", "discard", "write-zeroes"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "op?"
}

// HasData reports whether the op carries a data buffer.
func (o Op) HasData() bool { return o == OpRead || o == OpWrite }

// BioFlags modify an op.
type BioFlags uint8

const (
	// FUA: the write is durable when it completes.
	FUA BioFlags = 1 << iota
	// NoUnmap: write-zeroes must allocate (not punch a hole).
	NoUnmap
	// FastZero: write-zeroes must fail with EOPNOTSUPP rather than fall
	// back to writing zeroes slowly (NBD_CMD_FLAG_FAST_ZERO).
	FastZero
)

// Executor runs functions on the thread a bio belongs to. A *uring.Loop is
// one. Post must not block and returns an error if the executor is closed.
// An Executor that also has an `ID() int` method (uring.Loop does) gets
// its own shard of each device's pending count and I/O counters, so loops
// never write the same cache line per bio: give loops distinct IDs.
type Executor interface {
	Post(fn func()) error
}

// Endio is told, exactly once, that a bio has ended. err is nil or a
// syscall.Errno (EIO, ENOSPC, ...). It runs on whatever thread completed the
// last piece of the bio: the bio's loop when everything underneath is loop
// I/O, another goroutine otherwise.
type Endio interface {
	BioEnd(b *Bio, err error)
}

// Bio is one I/O request to a Device. The submitter owns the Bio's memory
// (typically embedded in its own per-request struct, so submission
// allocates nothing), fills the exported fields, calls Device.Submit, and
// must not touch the Bio again until End.BioEnd has run.
type Bio struct {
	Op     Op
	Flags  BioFlags
	Sector uint64 // first 512-byte sector
	Len    uint32 // bytes; 0 for OpFlush
	// Buf holds the data for OpRead/OpWrite (len(Buf) == Len). For O_DIRECT
	// backing devices it must be aligned to their logical block size; the
	// loops' arenas hand out page-aligned buffers.
	Buf []byte
	// BufIndex is Buf's fixed-buffer index in Exec's ring, or -1.
	BufIndex int32
	// Exec is the loop the bio was submitted on; completions of loop I/O
	// run there, and re-issued bios (after a suspend) are posted there.
	// nil means the bio may be run from any goroutine.
	Exec Executor
	End  Endio
	// Private is the submitter's.
	Private uint64

	canceled atomic.Bool

	core bioCore // the core's per-bio state; see device.go
}

// Cancel asks that pieces of the bio not yet handed to a backing device be
// ended with ECANCELED instead (used by deadlines above stacked devices).
// Pieces already on a device complete normally.
func (b *Bio) Cancel() { b.canceled.Store(true) }

// Canceled reports whether Cancel was called.
func (b *Bio) Canceled() bool { return b.canceled.Load() }

// End results (helpers to make errors without allocating: syscall.Errno
// values below 256 convert to error for free).
var (
	ErrIO       error = syscall.EIO
	ErrNoSpace  error = syscall.ENOSPC
	ErrCanceled error = syscall.ECANCELED
)

// Clone is the piece of a bio that one target handles: the core splits a
// bio at target boundaries and at a target's maximum I/O length, and hands
// each target clones. The first clone of a bio is embedded in it; more
// come from a pool, so splitting allocates nothing in the steady state.
//
// In Map, Sector is relative to the target's start. A target that returns
// MapRemapped sets Dev (and rewrites Sector to the device's sector); the
// core then calls Dev.Submit. A target that keeps the clone (MapSubmitted)
// must later call End exactly once, or submit it to a device itself.
type Clone struct {
	Op     Op
	Flags  BioFlags
	Sector uint64
	Len    uint32
	// Buf and BufIndex: this clone's slice of the bio's buffer.
	Buf      []byte
	BufIndex int32
	Dev      BlockDevice
	// Index numbers clones of an empty flush sent to one target several
	// times (NumFlushClones).
	Index int
	// Ctx and CtxU are the target's per-clone context (e.g. the chosen
	// path). Store only pointers in Ctx: it must not allocate.
	Ctx  any
	CtxU uint64

	core cloneCore // see device.go
}

// BlockDevice is what targets remap clones to: a file, a block device, a
// remote NBD export, or another dm device. Submit must end the clone
// exactly once by calling c.End.
//
// Threading: when c.Exec() is not nil, Submit is called on that executor
// and c.End (or Finish) must run there too — a device completing on
// another goroutine (a timer, a network reader) posts the end to
// c.Exec(). Bio submitters such as the NBD server rely on this: BioEnd
// then runs on the bio's loop and needs no lock.
type BlockDevice interface {
	Submit(c *Clone)
	// Name is the device as it was named in the table.
	Name() string
	// Size in bytes.
	Size() int64
	// BlockSize is the logical block size: the alignment I/O must keep.
	BlockSize() int
	ReadOnly() bool
}

// DeadlineSetter is implemented by devices that can bound each I/O by a
// deadline, failing it with ETIMEDOUT (multipath sets one on its paths).
type DeadlineSetter interface {
	SetIODeadline(d time.Duration)
}
