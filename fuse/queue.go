package fuse

import (
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"udm/uring"
)

// A queue is the server's part on one loop: its request slots, the fixed
// file of /dev/fuse in that loop's ring, and counters it alone writes.
// Everything of a queue but the counters runs on its loop.
type queue struct {
	s       *Server
	l       *uring.Loop
	id      int
	fdIdx   int32
	slots   []slot
	stopped bool
	sqe128  bool      // the loop's ring has 128-byte SQEs
	rings   []*uqueue // the kernel ring queues this loop serves

	requests, ringReqs, errors, bios atomic.Uint64

	// held: requests taken from the kernel and not yet answered; peak:
	// the most held at once.
	held, peak atomic.Uint64
}

func (q *queue) hold() {
	h := q.held.Load() + 1
	q.held.Store(h)
	if h > q.peak.Load() {
		q.peak.Store(h)
	}
}

func (q *queue) unhold() { q.held.Store(q.held.Load() - 1) }

func inc(c *atomic.Uint64) { c.Store(c.Load() + 1) }

const (
	tagRead  = 1 // a classic READV of /dev/fuse
	tagReply = 2 // a classic WRITEV of a reply
	tagPoll  = 3 // a wait for /dev/fuse to have a request (after EAGAIN)
)

// scratchSize bounds a request other than WRITE (a LOOKUP's name, an
// INIT): the header and up to 4 KiB of arguments.
const scratchSize = reqHeadSize + 4096

// A slot holds one request at a time, from the read that takes it from
// the kernel to the write of its reply: the request's header, its data
// buffer (page-aligned, from the loop's arena, used by the bio directly),
// its reply and its bio.
type slot struct {
	reqCore

	// head receives the header and a WRITE's arguments; the rest of the
	// request lands in data, so a WRITE's payload is page-aligned.
	head    [reqHeadSize]byte
	iov     [2]unix.Iovec
	data    uring.Buf
	scratch []byte
	out     [outHeaderSize + 4096]byte
	oiov    [2]unix.Iovec

	readID  uring.OpID
	reading bool
	trimmed bool // not needed (the ring carries the requests): stop
	done    bool // stopped: counted off Server.live
}

// start runs on the loop: registers /dev/fuse in the ring and arms the
// slots' reads.
func (q *queue) start() error {
	idx, err := q.l.RegisterFile(q.s.fd)
	if err != nil {
		return err
	}
	q.fdIdx = idx
	q.slots = make([]slot, q.s.cfg.Slots)
	for i := range q.slots {
		sl := &q.slots[i]
		b, err := q.l.Arena().TryGet(q.s.cfg.MaxWrite)
		if err != nil {
			q.slots = q.slots[:i]
			return err
		}
		sl.init(q, sl, b.Index)
		sl.data = b
		sl.scratch = make([]byte, scratchSize)
		sl.iov[0] = unix.Iovec{Base: &sl.head[0]}
		sl.iov[0].SetLen(reqHeadSize)
		sl.iov[1] = unix.Iovec{Base: &b.B[0]}
		sl.iov[1].SetLen(len(b.B))
	}
	for i := range q.slots {
		q.s.live.Add(1)
		q.slots[i].arm()
	}
	return nil
}

// stop runs on the loop: no slot takes another request; reads waiting
// for one are cancelled (slots in the middle of a request stop once its
// reply is written).
func (q *queue) stop() {
	q.stopped = true
	for i := range q.slots {
		if sl := &q.slots[i]; sl.reading {
			q.l.Cancel(sl.readID)
		}
	}
}

// release runs on the loop once every slot stopped.
func (q *queue) release() {
	for i := range q.slots {
		q.l.Arena().Put(q.slots[i].data)
		q.slots[i].data = uring.Buf{}
	}
	for _, u := range q.rings {
		u.release()
	}
	if q.fdIdx >= 0 {
		q.l.UnregisterFile(q.fdIdx)
		q.fdIdx = -1
	}
}

func (sl *slot) stop() {
	if !sl.done {
		sl.done = true
		if sl.trimmed {
			sl.q.l.Arena().Put(sl.data)
			sl.data = uring.Buf{}
		}
		sl.q.s.live.Done()
	}
}

// trim keeps n slots reading /dev/fuse and stops the others (at once if
// they wait, after their reply if they hold a request), giving their
// buffers back: with the ring carrying the requests, /dev/fuse brings
// only FORGETs and INTERRUPTs.
func (q *queue) trim(n int) {
	for i := n; i < len(q.slots); i++ {
		sl := &q.slots[i]
		sl.trimmed = true
		if sl.reading {
			q.l.Cancel(sl.readID)
		}
	}
}

// arm reads the next request.
func (sl *slot) arm() { sl.wait(tagRead) }

// poll waits for /dev/fuse to have a request, and then reads it.
func (sl *slot) poll() { sl.wait(tagPoll) }

// wait puts the slot's read (tagRead) or poll (tagPoll) of /dev/fuse on
// the ring, or stops the slot if its queue is done.
func (sl *slot) wait(tag uint64) {
	q := sl.q
	if q.stopped || sl.trimmed || q.s.closing.Load() {
		sl.stop()
		return
	}
	var e uring.SQE
	if tag == tagPoll {
		e.PrepPollAdd(q.fdIdx, unix.POLLIN)
	} else {
		e.PrepReadv(q.fdIdx, sl.iov[:], 0)
	}
	e.Fixed()
	id, err := q.l.SubmitWaiting(&e, sl, tag)
	if err != nil {
		sl.stop()
		return
	}
	sl.readID, sl.reading = id, true
}

// Complete is the end of the slot's read, poll or reply write.
func (sl *slot) Complete(tag uint64, res int32, _ uint32) {
	q := sl.q
	switch tag {
	case tagRead:
		sl.reading = false
		if res < 0 {
			switch syscall.Errno(-res) {
			case unix.EAGAIN:
				// No request yet. /dev/fuse is non-blocking, and the ring
				// gives a read of a non-blocking file its EAGAIN instead
				// of waiting: wait for a request in the ring's poll, then
				// read again (reading again at once would spin the loop).
				sl.poll()
			case unix.EINTR, unix.ENOENT:
				// Nothing for us (a request interrupted before it was
				// read): read again.
				sl.arm()
			case unix.ENODEV, unix.ECANCELED:
				// Unmounted, aborted or closing.
				sl.stop()
			default:
				q.s.log.Error().Err(uring.Errno(res)).Msg("fuse: read /dev/fuse")
				sl.stop()
			}
			return
		}
		sl.take(int(res))
	case tagPoll:
		sl.reading = false
		if res == -int32(unix.ECANCELED) {
			sl.stop()
			return
		}
		// Ready, or an error the read will report.
		sl.arm()
	case tagReply:
		// ENOENT: the request was interrupted or aborted meanwhile.
		if res < 0 && res != -int32(unix.ENOENT) && res != -int32(unix.ENODEV) {
			q.s.log.Warn().Err(uring.Errno(res)).Uint32("opcode", sl.r.hdr.Opcode).Msg("fuse: write reply")
		}
		if sl.r.hdr.Opcode == opInit {
			q.s.initSettled(res)
		}
		sl.arm()
	}
}

// take parses the n bytes read and handles the request.
func (sl *slot) take(n int) {
	q := sl.q
	inc(&q.requests)
	var r request
	var err error
	switch {
	case n >= inHeaderSize && le.Uint32(sl.head[4:]) == opWrite:
		r, err = parseRequest(sl.head[:], reqHeadSize)
		if err == nil && int(r.hdr.Len) != n {
			err = errShort
		}
	case n <= reqHeadSize:
		r, err = parseRequest(sl.head[:], n)
	case n <= scratchSize:
		copy(sl.scratch, sl.head[:])
		copy(sl.scratch[reqHeadSize:], sl.data.B[:n-reqHeadSize])
		r, err = parseRequest(sl.scratch, n)
	default:
		err = errShort
	}
	sl.r = r
	if err != nil {
		if n >= inHeaderSize && !noReply(r.hdr.Opcode) {
			sl.r.hdr = decodeInHeader(sl.head[:])
			replyErr(sl, syscall.EIO)
			return
		}
		sl.arm()
		return
	}
	q.s.serve(sl)
}

// body is the reply's argument area after the out header.
func (sl *slot) body() []byte { return sl.out[outHeaderSize:] }

func (sl *slot) core() *reqCore { return &sl.reqCore }

func (sl *slot) buf() []byte { return sl.data.B }

// answer writes the out header, k bytes of body and data to /dev/fuse.
func (sl *slot) answer(errno int32, k int, data []byte) {
	q := sl.q
	putOutHeader(sl.out[:], outHeaderSize+k+len(data), errno, sl.r.hdr.Unique)
	sl.oiov[0] = unix.Iovec{Base: &sl.out[0]}
	sl.oiov[0].SetLen(outHeaderSize + k)
	nv := 1
	if len(data) > 0 {
		sl.oiov[1] = unix.Iovec{Base: unsafe.SliceData(data)}
		sl.oiov[1].SetLen(len(data))
		nv = 2
	}
	var e uring.SQE
	e.PrepWritev(q.fdIdx, sl.oiov[:nv], 0, 0)
	e.Fixed()
	if _, err := q.l.Submit(&e, sl, tagReply); err != nil {
		sl.stop() // the loop is closing
	}
}

// next is for requests that get no reply.
func (sl *slot) next() { sl.arm() }
