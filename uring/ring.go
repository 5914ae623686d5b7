package uring

// This file and arena.go hold all of the package's unsafe code: the ring
// mmaps, typed atomic views of the shared ring indices, and turning Go
// pointers into the integers the kernel ABI wants.

import (
	"fmt"
	"runtime"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Ring is one io_uring instance: the SQ and CQ rings and the SQE array, all
// mapped from the kernel. A Ring is not safe for concurrent use; with
// SetupSingleIssuer it must be used from the OS thread that created it.
type Ring struct {
	fd       int
	flags    uint32
	features uint32

	sqMem  []byte
	cqMem  []byte
	sqeMem []byte

	sqHead  *atomic.Uint32
	sqTail  *atomic.Uint32
	sqFlags *atomic.Uint32
	sqMask  uint32
	sqCap   uint32
	sqes    []SQE
	// sqeShift is 1 on a SetupSQE128 ring: each entry is two SQE-sized
	// halves of sqes, the second the command area's tail (see SQEExt).
	sqeShift uint32
	// sqeTail is our local tail: SQEs up to it are filled but not yet
	// published to the kernel (published on flush).
	sqeTail uint32

	cqHead     *atomic.Uint32
	cqTail     *atomic.Uint32
	cqOverflow *atomic.Uint32
	cqMask     uint32
	cqCap      uint32
	cqes       []CQE

	// ringIndex is the registered ring fd index, or -1.
	ringIndex int
}

// RingOptions configures NewRing.
type RingOptions struct {
	// Entries is the SQ size (rounded up to a power of two by the kernel).
	Entries uint32
	// CQEntries is the CQ size; 0 means 4 × Entries.
	CQEntries uint32
	// Flags are setup flags. 0 means the loop default
	// (SINGLE_ISSUER|DEFER_TASKRUN|COOP_TASKRUN|SUBMIT_ALL) with a fallback
	// to what older kernels accept.
	Flags uint32
	// SQE128 makes every SQE 128 bytes (IORING_SETUP_SQE128, added to
	// whichever flags are tried), as URING_CMD operations with a large
	// command area (FUSE over io_uring) need.
	SQE128 bool
}

// setupTries are the flag sets NewRing tries in turn for the default:
// a kernel that refuses one (EINVAL) gets the next. (A variable so a test
// can play an older kernel.)
var setupTries = []uint32{defaultSetupFlags, fallbackSetupFlags, 0}

// NewRing sets up an io_uring. With the default flags the calling goroutine
// must be locked to its OS thread and stay there for the life of the ring.
func NewRing(opt RingOptions) (*Ring, error) {
	if opt.Entries == 0 {
		opt.Entries = 256
	}
	if opt.CQEntries == 0 {
		opt.CQEntries = 4 * opt.Entries
	}
	tries := []uint32{opt.Flags}
	if opt.Flags == 0 {
		tries = setupTries
	}
	var lastErr error
	for _, fl := range tries {
		if opt.SQE128 {
			fl |= SetupSQE128
		}
		p := params{Flags: fl | SetupCQSize | SetupClamp, CQEntries: opt.CQEntries}
		fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(opt.Entries), uintptr(unsafe.Pointer(&p)), 0)
		if errno != 0 {
			lastErr = errno
			if errno == unix.EINVAL {
				continue // flags unknown to this kernel: try fewer
			}
			return nil, fmt.Errorf("uring: io_uring_setup: %w", errno)
		}
		r := &Ring{fd: int(fd), flags: p.Flags, features: p.Features, ringIndex: -1}
		if err := r.mmap(&p); err != nil {
			unix.Close(r.fd)
			return nil, err
		}
		return r, nil
	}
	return nil, fmt.Errorf("uring: io_uring_setup: %w", lastErr)
}

func (r *Ring) mmap(p *params) error {
	if p.Features&FeatSingleMmap == 0 {
		return fmt.Errorf("uring: kernel lacks IORING_FEAT_SINGLE_MMAP (need Linux 5.4+)")
	}
	sqSize := uintptr(p.SQOff.Array) + uintptr(p.SQEntries)*4
	cqSize := uintptr(p.CQOff.CQEs) + uintptr(p.CQEntries)*unsafe.Sizeof(CQE{})
	size := max(sqSize, cqSize)
	mem, err := unix.Mmap(r.fd, offSQRing, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return fmt.Errorf("uring: mmap rings: %w", err)
	}
	r.sqMem, r.cqMem = mem, mem
	if p.Flags&SetupSQE128 != 0 {
		r.sqeShift = 1
	}
	sqeBytes := int(p.SQEntries<<r.sqeShift) * int(unsafe.Sizeof(SQE{}))
	sqeMem, err := unix.Mmap(r.fd, offSQEs, sqeBytes, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Munmap(mem)
		return fmt.Errorf("uring: mmap sqes: %w", err)
	}
	r.sqeMem = sqeMem

	var sqMask, cqMask *atomic.Uint32
	for _, f := range []struct {
		dst **atomic.Uint32
		off uint32
	}{
		{&r.sqHead, p.SQOff.Head}, {&r.sqTail, p.SQOff.Tail}, {&r.sqFlags, p.SQOff.Flags}, {&sqMask, p.SQOff.RingMask},
		{&r.cqHead, p.CQOff.Head}, {&r.cqTail, p.CQOff.Tail}, {&r.cqOverflow, p.CQOff.Overflow}, {&cqMask, p.CQOff.RingMask},
	} {
		if *f.dst, err = u32At(mem, f.off); err != nil {
			return err
		}
	}
	r.sqMask = sqMask.Load()
	r.sqCap = p.SQEntries
	r.cqMask = cqMask.Load()
	r.cqCap = p.CQEntries
	if uintptr(p.CQOff.CQEs)+uintptr(p.CQEntries)*unsafe.Sizeof(CQE{}) > uintptr(len(mem)) {
		return fmt.Errorf("uring: CQE array outside the ring mapping")
	}
	r.cqes = unsafe.Slice((*CQE)(unsafe.Pointer(&mem[p.CQOff.CQEs])), p.CQEntries)
	r.sqes = unsafe.Slice((*SQE)(unsafe.Pointer(&sqeMem[0])), p.SQEntries<<r.sqeShift)
	// The SQ index array maps ring slots to SQEs; we keep it the identity
	// and always fill sqes[tail&mask].
	if uintptr(p.SQOff.Array)+uintptr(p.SQEntries)*4 > uintptr(len(mem)) {
		return fmt.Errorf("uring: SQ array outside the ring mapping")
	}
	arr := unsafe.Slice((*uint32)(unsafe.Pointer(&mem[p.SQOff.Array])), p.SQEntries)
	for i := range arr {
		arr[i] = uint32(i)
	}
	r.sqeTail = r.sqTail.Load()
	return nil
}

// u32At returns a typed atomic view of the uint32 at off in mem, checking
// that it lies inside the mapping and is aligned.
func u32At(mem []byte, off uint32) (*atomic.Uint32, error) {
	if uintptr(off)+4 > uintptr(len(mem)) || off%4 != 0 {
		return nil, fmt.Errorf("uring: ring offset %d outside mapping of %d bytes", off, len(mem))
	}
	return (*atomic.Uint32)(unsafe.Pointer(&mem[off])), nil
}

// Fd returns the ring's file descriptor.
func (r *Ring) Fd() int { return r.fd }

// Flags returns the setup flags the kernel accepted.
func (r *Ring) Flags() uint32 { return r.flags }

// Features returns the kernel's feature bits.
func (r *Ring) Features() uint32 { return r.features }

// SQSpace is the number of free SQ slots.
func (r *Ring) SQSpace() uint32 {
	return r.sqCap - (r.sqeTail - r.sqHead.Load())
}

// TaskrunPending reports whether the kernel has completions waiting to be
// run on this ring's task (IORING_SQ_TASKRUN, with SetupTaskrunFlag): an
// io_uring_enter with GETEVENTS would post CQEs. Cheap: one load of the
// shared ring.
func (r *Ring) TaskrunPending() bool {
	return r.flags&SetupTaskrunFlag != 0 && r.sqFlags.Load()&sqTaskrun != 0
}

// CQReady reports whether CQEs are waiting in the ring.
func (r *Ring) CQReady() bool { return r.cqHead.Load() != r.cqTail.Load() }

// Unsubmitted is the number of SQEs filled but not yet submitted.
func (r *Ring) Unsubmitted() uint32 {
	return r.sqeTail - r.sqTail.Load()
}

// NextSQE returns the next free SQE, zeroed, or nil when the SQ is full.
func (r *Ring) NextSQE() *SQE {
	if r.sqeTail-r.sqHead.Load() >= r.sqCap {
		return nil
	}
	i := (r.sqeTail & r.sqMask) << r.sqeShift
	s := &r.sqes[i]
	*s = SQE{}
	if r.sqeShift != 0 {
		r.sqes[i+1] = SQE{}
	}
	r.sqeTail++
	return s
}

// SQE128 reports whether the ring's SQEs are 128 bytes.
func (r *Ring) SQE128() bool { return r.sqeShift != 0 }

// CmdSize is the size of a URING_CMD's command area in a 128-byte SQE
// (from byte 48 to the end).
const CmdSize = 80

// PutCmd copies cmd (at most CmdSize bytes) into the command area of s,
// an SQE NextSQE returned on a SQE128 ring: its last 16 bytes and the
// second half of the entry.
func (r *Ring) PutCmd(s *SQE, cmd []byte) {
	if r.sqeShift == 0 || len(cmd) > CmdSize {
		panic("uring: PutCmd needs a SQE128 ring and at most 80 bytes")
	}
	area := unsafe.Slice((*byte)(unsafe.Add(unsafe.Pointer(s), 48)), CmdSize)
	clear(area)
	copy(area, cmd)
}

// publish makes filled SQEs visible to the kernel and returns their count.
func (r *Ring) publish() uint32 {
	n := r.sqeTail - r.sqTail.Load()
	if n > 0 {
		r.sqTail.Store(r.sqeTail)
	}
	return n
}

// Enter publishes filled SQEs and calls io_uring_enter, submitting them and
// waiting for minComplete completions. It returns how many SQEs the kernel
// consumed.
func (r *Ring) Enter(minComplete uint32, ts *Timespec) (int, error) {
	return r.EnterMinWait(minComplete, ts, 0)
}

// EnterMinWait is Enter with a batch wait (kernel 6.12+, FeatMinTimeout):
// wait up to minWaitUsec for minComplete completions, then return as soon
// as there is at least one.
func (r *Ring) EnterMinWait(minComplete uint32, ts *Timespec, minWaitUsec uint32) (int, error) {
	n := r.publish()
	flags := uint32(0)
	if minComplete > 0 || r.flags&SetupDeferTaskrun != 0 || r.sqFlags.Load()&(sqCQOverflow|sqTaskrun) != 0 {
		flags |= enterGetEvents
	}
	fd := uintptr(r.fd)
	if r.ringIndex >= 0 {
		flags |= enterRegisteredRing
		fd = uintptr(r.ringIndex)
	}
	var arg unsafe.Pointer
	var argSz uintptr
	var ea getEventsArg
	if ts != nil || minWaitUsec > 0 {
		if ts != nil {
			ea.Ts = uint64(uintptr(unsafe.Pointer(ts)))
		}
		ea.MinWait = minWaitUsec
		arg = unsafe.Pointer(&ea)
		argSz = unsafe.Sizeof(ea)
		flags |= enterExtArg
	}
	var got uintptr
	var errno syscall.Errno
	if minComplete == 0 {
		// Never blocks: skip the scheduler hand-off of Syscall.
		got, _, errno = unix.RawSyscall6(unix.SYS_IO_URING_ENTER, fd, uintptr(n), 0, uintptr(flags), uintptr(arg), argSz)
	} else {
		got, _, errno = unix.Syscall6(unix.SYS_IO_URING_ENTER, fd, uintptr(n), uintptr(minComplete), uintptr(flags), uintptr(arg), argSz)
	}
	runtime.KeepAlive(ts)
	runtime.KeepAlive(&ea)
	if errno != 0 {
		return 0, errno
	}
	return int(got), nil
}

// Peek returns the CQEs ready to be consumed; call Advance(len) once done.
// The slice aliases ring memory: read it before advancing.
func (r *Ring) Peek() (first, second []CQE) {
	head := r.cqHead.Load()
	tail := r.cqTail.Load()
	if head == tail {
		return nil, nil
	}
	h := head & r.cqMask
	t := tail & r.cqMask
	n := tail - head
	if h+n <= r.cqCap {
		return r.cqes[h : h+n], nil
	}
	return r.cqes[h:], r.cqes[:t]
}

// Advance marks n CQEs as consumed.
func (r *Ring) Advance(n uint32) {
	if n > 0 {
		r.cqHead.Store(r.cqHead.Load() + n)
	}
}

// Overflowed reports CQEs the kernel dropped (only without FEAT_NODROP).
func (r *Ring) Overflowed() uint32 { return r.cqOverflow.Load() }

// register calls io_uring_register.
func (r *Ring) register(op uintptr, arg unsafe.Pointer, nr uintptr) (uintptr, error) {
	v, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), op, uintptr(arg), nr, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return v, nil
}

// RegisterRingFd registers the ring's own fd so io_uring_enter skips the
// file-table lookup. Failure is harmless and leaves it unregistered.
func (r *Ring) RegisterRingFd() error {
	type rsrcUpdate struct {
		Offset uint32
		Resv   uint32
		Data   uint64
	}
	u := rsrcUpdate{Offset: ^uint32(0), Data: uint64(r.fd)}
	if _, err := r.register(regRingFDs, unsafe.Pointer(&u), 1); err != nil {
		return err
	}
	r.ringIndex = int(u.Offset)
	return nil
}

// RegisterFiles sets up a fixed-file table of n slots, all empty (sparse).
func (r *Ring) RegisterFiles(n int) error {
	fds := make([]int32, n)
	for i := range fds {
		fds[i] = -1
	}
	_, err := r.register(regFiles, unsafe.Pointer(&fds[0]), uintptr(n))
	runtime.KeepAlive(fds)
	return err
}

// UpdateFile puts fd (or -1 to clear) in fixed-file slot idx.
func (r *Ring) UpdateFile(idx int, fd int) error {
	v := int32(fd)
	u := filesUpdate{Offset: uint32(idx), Fds: uint64(uintptr(unsafe.Pointer(&v)))}
	_, err := r.register(regFilesUpdate, unsafe.Pointer(&u), 1)
	runtime.KeepAlive(&v)
	return err
}

// RegisterBuffer registers mem as fixed buffer index 0.
func (r *Ring) RegisterBuffer(mem []byte) error {
	iov := unix.Iovec{Base: &mem[0]}
	iov.SetLen(len(mem))
	_, err := r.register(regBuffers, unsafe.Pointer(&iov), 1)
	runtime.KeepAlive(mem)
	return err
}

// Close unmaps the rings and closes the ring fd.
func (r *Ring) Close() error {
	if r.fd < 0 {
		return nil
	}
	if r.sqeMem != nil {
		unix.Munmap(r.sqeMem)
		r.sqeMem = nil
	}
	if r.sqMem != nil {
		unix.Munmap(r.sqMem)
		r.sqMem, r.cqMem = nil, nil
	}
	err := unix.Close(r.fd)
	r.fd = -1
	return err
}

// addrOf returns the address of b's first byte, or 0 for an empty slice.
// The caller keeps b alive until the operation completes.
func addrOf(b []byte) uint64 {
	if len(b) == 0 {
		return 0
	}
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}

// AddrOf returns the address of b's first byte (0 if empty), for alignment
// checks.
func AddrOf(b []byte) uint64 { return addrOf(b) }

func ptrAddr[T any](p *T) uint64 { return uint64(uintptr(unsafe.Pointer(p))) }

// Pwritev2 writes buf at off with RWF flags (such as RWFDsync) in one
// system call, without allocating.
func Pwritev2(fd int, buf []byte, off int64, flags int) (int, error) {
	iov := unix.Iovec{Base: &buf[0]}
	iov.SetLen(len(buf))
	n, _, errno := unix.Syscall6(unix.SYS_PWRITEV2, uintptr(fd), uintptr(unsafe.Pointer(&iov)), 1, uintptr(off), uintptr(off>>32), uintptr(flags))
	runtime.KeepAlive(buf)
	if errno != 0 {
		return int(n), errno
	}
	return int(n), nil
}
