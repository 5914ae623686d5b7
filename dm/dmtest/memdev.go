package dmtest

import (
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"udm/dm"
)

// Completion is how a test device completes the clones submitted to it.
type Completion int

const (
	// CompleteSync ends each clone inside Submit.
	CompleteSync Completion = iota
	// CompleteAsync ends each clone from another goroutine.
	CompleteAsync
	// CompleteExec posts each completion to the clone's Exec (another
	// goroutine when it has none), like loop-backed devices.
	CompleteExec
)

const memPage = 4096

// MemDevice is an in-memory BlockDevice for tests, here and in other
// packages. It stores data in sparse 4 KiB pages (or a byte slice), and
// can be told to fail I/O, to hang it until released, to delay it, and
// how to complete it. It counts the I/O it gets. Safe for concurrent use.
type MemDevice struct {
	name string
	size int64

	mu          sync.Mutex // guards the following
	data        []byte     // dense storage, or nil
	pages       map[int64][]byte
	blockSize   int
	readOnly    bool
	mode        Completion
	delay       time.Duration
	failAll     syscall.Errno
	failNext    int
	failNextErr syscall.Errno
	hang        bool
	held        []heldIO
	hook        func(*dm.Clone)

	reads, writes, flushes, discards, writeZeroes, fua atomic.Int64
}

type heldIO struct {
	c   *dm.Clone
	err error
}

// NewMemDevice returns a sparse, zero-filled device of size bytes.
func NewMemDevice(name string, size int64) *MemDevice {
	return &MemDevice{name: name, size: size, pages: make(map[int64][]byte), blockSize: dm.SectorSize}
}

// NewMemDeviceBytes returns a device whose contents are data (shared, not
// copied).
func NewMemDeviceBytes(name string, data []byte) *MemDevice {
	return &MemDevice{name: name, size: int64(len(data)), data: data, blockSize: dm.SectorSize}
}

// Name is the name given to NewMemDevice.
func (m *MemDevice) Name() string { return m.name }

// Size is the device size in bytes.
func (m *MemDevice) Size() int64 { return m.size }

// BlockSize is the logical block size (512 unless set).
func (m *MemDevice) BlockSize() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.blockSize
}

// ReadOnly reports SetReadOnly.
func (m *MemDevice) ReadOnly() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.readOnly
}

// SetReadOnly makes writes fail with EPERM (and ReadOnly report it).
func (m *MemDevice) SetReadOnly(ro bool) { m.mu.Lock(); m.readOnly = ro; m.mu.Unlock() }

// SetBlockSize sets the logical block size reported.
func (m *MemDevice) SetBlockSize(n int) { m.mu.Lock(); m.blockSize = n; m.mu.Unlock() }

// SetCompletion sets how clones are completed (default CompleteSync).
func (m *MemDevice) SetCompletion(c Completion) { m.mu.Lock(); m.mode = c; m.mu.Unlock() }

// SetDelay completes each I/O d after it was submitted (0: at once).
func (m *MemDevice) SetDelay(d time.Duration) { m.mu.Lock(); m.delay = d; m.mu.Unlock() }

// FailAll fails every I/O with errno (0 stops failing).
func (m *MemDevice) FailAll(errno syscall.Errno) { m.mu.Lock(); m.failAll = errno; m.mu.Unlock() }

// FailNext fails the next n I/Os with errno.
func (m *MemDevice) FailNext(n int, errno syscall.Errno) {
	m.mu.Lock()
	m.failNext, m.failNextErr = n, errno
	m.mu.Unlock()
}

// Hang holds every I/O submitted from now on (until Release) when on.
// Turning it off does not release what is held.
func (m *MemDevice) Hang(on bool) { m.mu.Lock(); m.hang = on; m.mu.Unlock() }

// Held is the number of I/Os held by Hang.
func (m *MemDevice) Held() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.held)
}

// Release completes the held I/Os (performing them now, in order) and
// returns how many there were.
func (m *MemDevice) Release() int { return m.release(nil) }

// ReleaseErr completes the held I/Os with errno, without performing them.
func (m *MemDevice) ReleaseErr(errno syscall.Errno) int { return m.release(errno) }

func (m *MemDevice) release(err error) int {
	m.mu.Lock()
	held := m.held
	m.held = nil
	mode := m.mode
	m.mu.Unlock()
	for _, h := range held {
		e := h.err
		if err != nil {
			e = err
		}
		m.complete(h.c, e, mode, 0)
	}
	return len(held)
}

// SetSubmitHook runs fn at the start of every Submit (tests use it as a
// barrier); nil removes it.
func (m *MemDevice) SetSubmitHook(fn func(*dm.Clone)) { m.mu.Lock(); m.hook = fn; m.mu.Unlock() }

// Reads counts the reads received (failed ones included).
func (m *MemDevice) Reads() int64 { return m.reads.Load() }

// Writes counts the writes received.
func (m *MemDevice) Writes() int64 { return m.writes.Load() }

// Flushes counts the flushes received.
func (m *MemDevice) Flushes() int64 { return m.flushes.Load() }

// Discards counts the discards received.
func (m *MemDevice) Discards() int64 { return m.discards.Load() }

// WriteZeroes counts the write-zeroes received.
func (m *MemDevice) WriteZeroes() int64 { return m.writeZeroes.Load() }

// FUAWrites counts writes that carried dm.FUA.
func (m *MemDevice) FUAWrites() int64 { return m.fua.Load() }

// IOs is the total number of I/Os received.
func (m *MemDevice) IOs() int64 {
	return m.reads.Load() + m.writes.Load() + m.flushes.Load() + m.discards.Load() + m.writeZeroes.Load()
}

// Submit performs c (now, after the delay, or when released) and ends it
// as SetCompletion says.
func (m *MemDevice) Submit(c *dm.Clone) {
	switch c.Op {
	case dm.OpRead:
		m.reads.Add(1)
	case dm.OpWrite:
		m.writes.Add(1)
		if c.Flags&dm.FUA != 0 {
			m.fua.Add(1)
		}
	case dm.OpFlush:
		m.flushes.Add(1)
	case dm.OpDiscard:
		m.discards.Add(1)
	case dm.OpWriteZeroes:
		m.writeZeroes.Add(1)
	}
	m.mu.Lock()
	hook := m.hook
	m.mu.Unlock()
	if hook != nil {
		hook(c)
	}
	m.mu.Lock()
	var err error
	switch {
	case m.failNext > 0:
		m.failNext--
		err = m.failNextErr
	case m.failAll != 0:
		err = m.failAll
	}
	if m.hang {
		m.held = append(m.held, heldIO{c, err})
		m.mu.Unlock()
		return
	}
	mode, delay := m.mode, m.delay
	m.mu.Unlock()
	m.complete(c, err, mode, delay)
}

func (m *MemDevice) complete(c *dm.Clone, err error, mode Completion, delay time.Duration) {
	end := func() {
		e := err
		if e == nil {
			e = m.do(c)
		}
		c.End(e)
	}
	if delay > 0 {
		time.AfterFunc(delay, func() { m.dispatch(end, c, mode) })
		return
	}
	m.dispatch(end, c, mode)
}

func (m *MemDevice) dispatch(end func(), c *dm.Clone, mode Completion) {
	switch mode {
	case CompleteAsync:
		go end()
	case CompleteExec:
		if ex := c.Exec(); ex != nil && ex.Post(end) == nil {
			return
		}
		go end()
	default:
		end()
	}
}

// do performs c on the contents.
func (m *MemDevice) do(c *dm.Clone) error {
	if c.Op == dm.OpFlush {
		return nil
	}
	off := int64(c.Sector) << dm.SectorShift
	n := int64(c.Len)
	if off < 0 || off+n > m.size || off+n < off {
		return syscall.EIO
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.Op != dm.OpRead && m.readOnly {
		return syscall.EPERM
	}
	switch c.Op {
	case dm.OpRead:
		m.readLocked(c.Buf, off)
	case dm.OpWrite:
		m.writeLocked(c.Buf, off)
	case dm.OpDiscard, dm.OpWriteZeroes:
		m.zeroLocked(off, n)
	}
	return nil
}

func (m *MemDevice) readLocked(p []byte, off int64) {
	if m.data != nil {
		copy(p, m.data[off:])
		return
	}
	for len(p) > 0 {
		pg, po := off/memPage, off%memPage
		n := min(int64(len(p)), memPage-po)
		if b := m.pages[pg]; b != nil {
			copy(p[:n], b[po:])
		} else {
			clear(p[:n])
		}
		p, off = p[n:], off+n
	}
}

func (m *MemDevice) writeLocked(p []byte, off int64) {
	if m.data != nil {
		copy(m.data[off:], p)
		return
	}
	for len(p) > 0 {
		pg, po := off/memPage, off%memPage
		n := min(int64(len(p)), memPage-po)
		b := m.pages[pg]
		if b == nil {
			b = make([]byte, memPage)
			m.pages[pg] = b
		}
		copy(b[po:], p[:n])
		p, off = p[n:], off+n
	}
}

func (m *MemDevice) zeroLocked(off, n int64) {
	if m.data != nil {
		clear(m.data[off : off+n])
		return
	}
	for n > 0 {
		pg, po := off/memPage, off%memPage
		k := min(n, memPage-po)
		if b := m.pages[pg]; b != nil {
			if k == memPage {
				delete(m.pages, pg)
			} else {
				clear(b[po : po+k])
			}
		}
		n, off = n-k, off+k
	}
}

// ReadAt reads the contents directly (no I/O is counted or failed).
func (m *MemDevice) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= m.size {
		return 0, io.EOF
	}
	n := len(p)
	if off+int64(n) > m.size {
		n = int(m.size - off)
	}
	m.mu.Lock()
	m.readLocked(p[:n], off)
	m.mu.Unlock()
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes the contents directly (no I/O is counted or failed).
func (m *MemDevice) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > m.size {
		return 0, syscall.ENOSPC
	}
	m.mu.Lock()
	m.writeLocked(p, off)
	m.mu.Unlock()
	return len(p), nil
}

// NullDevice completes every I/O at once, successfully, touching no data:
// for benchmarks.
type NullDevice struct {
	name string
	size int64
}

// NewNullDevice returns a null device of size bytes.
func NewNullDevice(name string, size int64) *NullDevice { return &NullDevice{name: name, size: size} }

// Submit ends c at once, successfully.
func (n *NullDevice) Submit(c *dm.Clone) { c.End(nil) }

// Name is the name given to NewNullDevice.
func (n *NullDevice) Name() string { return n.name }

// Size is the size given to NewNullDevice.
func (n *NullDevice) Size() int64 { return n.size }

// BlockSize is 512.
func (n *NullDevice) BlockSize() int { return dm.SectorSize }

// ReadOnly is false.
func (n *NullDevice) ReadOnly() bool { return false }
