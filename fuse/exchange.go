package fuse

import (
	"sync"
	"syscall"

	"udm/dm"
	"udm/uring"
)

// reqSlot is a transport's request holder (a classic slot or a ring
// entry) as the operations see it. All of its methods run on the loop
// of its queue.
type reqSlot interface {
	core() *reqCore
	// body is where a reply's arguments go (after the out header).
	body() []byte
	// buf is the page-aligned data buffer: a WRITE's payload, a READ's
	// destination; its fixed-buffer index is core().bufIdx.
	buf() []byte
	// answer sends the out header with errno, k bytes of body and then
	// data (a slice of buf).
	answer(errno int32, k int, data []byte)
	// next takes the next request without replying to this one.
	next()
}

// reqCore is what both transports keep of a request from the moment it
// is taken until it is answered: the parsed request, its bio, and the
// state of a READ's reply or of an ordered write.
type reqCore struct {
	q      *queue
	self   reqSlot
	r      request
	bio    dm.Bio
	bufIdx int32 // fixed-buffer index of self.buf(), or -1

	held bool   // counted in q.held
	skip uint64 // a READ's reply starts this far into buf
	rlen uint64 // and is this long

	// An ordered write (WRITE, FALLOCATE): its place among the device's
	// writes, and a read-modify-write's stage and sectors.
	wt     *wtrack
	dev    *dm.Device
	w      wnode
	stage  uint8
	rmwBuf uring.Buf // a read-modify-write's sectors
}

func (c *reqCore) init(q *queue, self reqSlot, bufIdx int32) {
	c.q, c.self, c.bufIdx = q, self, bufIdx
	c.bio.BufIndex = -1
}

// taken counts the request as held by the server until it is answered.
func (c *reqCore) taken() {
	if !c.held {
		c.held = true
		c.q.hold()
	}
}

func (c *reqCore) answered() {
	if c.held {
		c.held = false
		c.q.unhold()
	}
}

func reply(sl reqSlot, k int, data []byte) {
	sl.core().answered()
	sl.answer(0, k, data)
}

func replyErr(sl reqSlot, e syscall.Errno) {
	c := sl.core()
	if e != syscall.ENOSYS {
		inc(&c.q.errors)
	}
	c.answered()
	sl.answer(-int32(e), 0, nil)
}

// skipReply takes the next request for one that gets no reply.
func skipReply(sl reqSlot) {
	sl.core().answered()
	sl.next()
}

// prep sets up the request's bio; buf (for an operation with data) is a
// slice of the buffer whose fixed index is idx.
func (c *reqCore) prep(dev *dm.Device, op dm.Op, fl dm.BioFlags, sector uint64, n uint32, buf []byte, idx int32) {
	b := &c.bio
	b.Op, b.Flags, b.Sector, b.Len = op, fl, sector, n
	b.Buf, b.BufIndex = nil, -1
	if op.HasData() {
		b.Buf, b.BufIndex = buf, idx
	}
	b.Exec, b.End = c.q.l, c
}

// submit sends the bio prep set up to dev.
func (c *reqCore) submit(dev *dm.Device) {
	inc(&c.q.bios)
	dev.Submit(&c.bio)
}

// BioEnd runs on the loop when the request's bio has ended.
func (c *reqCore) BioEnd(_ *dm.Bio, err error) { c.q.s.bioDone(c.self, err) }

// A wtrack orders the writes of one device that the server has at the
// device at once (dm.WriteOrder: a read-modify-write runs alongside no
// write that overlaps it). Its lock is held over the lists only, never
// over I/O, and nests with nothing; writes of several loops share it.
type wtrack struct {
	mu sync.Mutex
	o  dm.WriteOrder[*reqCore]
}

// A wnode is one write's place in its device's wtrack.
type wnode = dm.OrderedWrite[*reqCore]

// admit reports whether w may go to the device now; if not, it waits and
// a later end hands it back.
func (t *wtrack) admit(w *wnode) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.o.Admit(w)
}

// end takes w off the device and appends to woken the waiting writes
// that may go now (admitted: their owners start them).
func (t *wtrack) end(w *wnode, woken []*wnode) []*wnode {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.o.End(w, woken)
}
