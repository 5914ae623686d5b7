package uring

import (
	"fmt"
	"math/bits"

	"golang.org/x/sys/unix"
)

// Buf is a page-aligned buffer outside the Go heap. Index is the fixed
// buffer index to use with READ_FIXED/WRITE_FIXED on the loop that owns it,
// or -1 when the buffer is not registered (an overflow allocation).
type Buf struct {
	B     []byte
	Index int32
	class int8
}

// Fixed reports whether b lies in a registered arena.
func (b Buf) Fixed() bool { return b.Index >= 0 }

const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 25 // 32 MiB
	numClasses    = maxClassShift - minClassShift + 1
	// PageSize is the alignment of every Buf.
	PageSize = 4096
)

// Arena hands out page-aligned buffers in power-of-two size classes from
// one mmap'd region, registered with the loop's ring as fixed buffer 0.
// Requests that don't fit are served by separate mmaps (not registered).
// An Arena belongs to one loop and is not safe for concurrent use.
type Arena struct {
	mem   []byte
	index int32 // fixed buffer index, or -1
	next  int   // bump offset into mem
	free  [numClasses][][]byte
	over  [numClasses][][]byte // unregistered overflow buffers, for reuse
	kept  int                  // bytes in over
}

// MaxOverflowKept is how many bytes of unregistered overflow buffers an
// Arena keeps for reuse; buffers put back beyond it are unmapped, so that
// the memory a burst took (clients that filled their budgets and left) is
// given back to the system rather than kept for good.
const MaxOverflowKept = 64 << 20

// NewArena maps size bytes (rounded up to pages).
func NewArena(size int) (*Arena, error) {
	size = (size + PageSize - 1) &^ (PageSize - 1)
	a := &Arena{index: -1}
	if size == 0 {
		return a, nil
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("uring: mmap arena of %d bytes: %w", size, err)
	}
	a.mem = mem
	return a, nil
}

// Mem is the whole arena mapping.
func (a *Arena) Mem() []byte { return a.mem }

func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minClassShift
}

// Get returns a buffer of at least n bytes (len n, capacity the class
// size). Buffers larger than the biggest class come from a dedicated mmap;
// Get panics if that mmap fails (TryGet returns the error instead).
func (a *Arena) Get(n int) Buf {
	b, err := a.TryGet(n)
	if err != nil {
		panic(fmt.Sprintf("uring: %v", err))
	}
	return b
}

// TryGet is Get, but a failed mmap of an overflow buffer is returned as
// an error (wrapping the syscall.Errno, ENOMEM as a rule) and leaves the
// arena as it was.
func (a *Arena) TryGet(n int) (Buf, error) {
	c := classOf(n)
	if c < numClasses {
		if fl := a.free[c]; len(fl) > 0 {
			b := fl[len(fl)-1]
			a.free[c] = fl[:len(fl)-1]
			return Buf{B: b[:n], Index: a.index, class: int8(c)}, nil
		}
		sz := 1 << (c + minClassShift)
		if a.next+sz <= len(a.mem) {
			b := a.mem[a.next : a.next+sz : a.next+sz]
			a.next += sz
			return Buf{B: b[:n], Index: a.index, class: int8(c)}, nil
		}
	}
	sz := (n + PageSize - 1) &^ (PageSize - 1)
	cl := int8(-1)
	if c < numClasses {
		if fl := a.over[c]; len(fl) > 0 {
			b := fl[len(fl)-1]
			a.over[c] = fl[:len(fl)-1]
			a.kept -= cap(b)
			return Buf{B: b[:n], Index: -1, class: int8(c)}, nil
		}
		sz = 1 << (c + minClassShift)
		cl = int8(c)
	}
	mem, err := unix.Mmap(-1, 0, sz, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return Buf{}, fmt.Errorf("mmap %d-byte buffer: %w", sz, err)
	}
	return Buf{B: mem[:n], Index: -1, class: cl}, nil
}

// Put returns a buffer obtained from Get. Unregistered overflow buffers of
// a class size are kept for reuse; others are unmapped.
func (a *Arena) Put(b Buf) {
	if b.B == nil {
		return
	}
	full := b.B[:cap(b.B)]
	switch {
	case b.class >= 0 && b.Index == a.index:
		a.free[b.class] = append(a.free[b.class], full)
		return
	case b.class >= 0 && a.kept+len(full) <= MaxOverflowKept:
		a.over[b.class] = append(a.over[b.class], full)
		a.kept += len(full)
		return
	}
	unix.Munmap(full)
}

// Close unmaps the arena and the overflow buffers it kept. Outstanding
// buffers become invalid.
func (a *Arena) Close() {
	for c := range a.over {
		for _, b := range a.over[c] {
			unix.Munmap(b)
		}
		a.over[c] = nil
	}
	a.kept = 0
	if a.mem != nil {
		unix.Munmap(a.mem)
		a.mem = nil
	}
}
