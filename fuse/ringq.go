package fuse

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"udm/uring"
)

// FUSE over io_uring. After INIT negotiated it, each ring entry is a
// header area and a payload buffer registered with the kernel by a
// FUSE_IO_URING_CMD_REGISTER (a URING_CMD on /dev/fuse); the command
// completes when the kernel has put a request in the entry. The reply
// goes back in the same entry with FUSE_IO_URING_CMD_COMMIT_AND_FETCH,
// which stays pending until the next request: one ring operation per
// request, on the loop that also runs its bios.
//
// The kernel keeps one queue per possible CPU and hands a request to
// the queue of the CPU its task runs on; every queue needs an entry
// before the kernel switches from /dev/fuse reads to the ring. Queue qid
// is served by loop qid mod len(loops). FORGETs and INTERRUPTs still come
// through /dev/fuse, so the classic slots stay armed too.

// Layout of struct fuse_uring_req_header.
const (
	ringInOut     = 0   // fuse_in_header / fuse_out_header
	ringOpIn      = 128 // the opcode's argument struct
	ringEntInOut  = 256 // struct fuse_uring_ent_in_out
	ringHeaderLen = 288
	ringOpInSize  = 128
)

const tagRing = 3

// classicWithRing is how many classic slots a loop keeps reading once the
// ring carries the requests.
const classicWithRing = 2

// A uqueue is one kernel ring queue, on one loop.
type uqueue struct {
	s    *Server
	q    *queue // the classic queue of the same loop (its fixed file)
	qid  uint16
	ents []*uent
}

// A uent is one registered ring entry.
type uent struct {
	reqCore
	u       *uqueue
	hdr     [ringHeaderLen]byte
	iov     [2]unix.Iovec
	payload []byte    // arena.B or own
	arena   uring.Buf // a buffer of the loop's arena, or
	own     []byte    // a mapping of the entry's own
	scratch []byte
	head    [reqHeadSize]byte

	commitID uint64
	cmdOp    uint32 // the command last sent (re-sent after EAGAIN)
	done     bool
}

// cpuList parses a kernel CPU list ("0-3,8") from a sysfs file into
// the set of CPUs it names; nil if it can't be read.
func cpuList(path string) map[int]bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	set := map[int]bool{}
	for _, part := range strings.Split(strings.TrimSpace(string(b)), ",") {
		if part == "" {
			continue
		}
		lo, hi, ok := strings.Cut(part, "-")
		a, err1 := strconv.Atoi(lo)
		z := a
		var err2 error
		if ok {
			z, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 0 || z < a || z > 1<<16 {
			return nil
		}
		for c := a; c <= z; c++ {
			set[c] = true
		}
	}
	return set
}

// ringQueues returns how many entries each kernel queue gets: one queue
// per possible CPU (the kernel's count), slots entries for an online
// CPU, one for a CPU that is possible but offline (a queue must have an
// entry before the kernel uses the ring; a VM may list many more
// possible CPUs than it runs).
func ringQueues(slots int) []int {
	possible := cpuList("/sys/devices/system/cpu/possible")
	online := cpuList("/sys/devices/system/cpu/online")
	n := 0
	for c := range possible {
		n = max(n, c+1)
	}
	if n == 0 {
		n = 1
	}
	q := make([]int, n)
	for c := range q {
		q[c] = 1
		if online == nil || online[c] {
			q[c] = slots
		}
	}
	return q
}

// URingEnabled reports whether the kernel offers FUSE over io_uring now
// (the fuse module's enable_uring): only then do loops need 128-byte
// SQEs for it.
func URingEnabled() bool {
	b, err := os.ReadFile("/sys/module/fuse/parameters/enable_uring")
	return err == nil && strings.TrimSpace(string(b)) == "Y"
}

// startRing registers the ring entries of every queue, each on its loop,
// once INIT is done, and returns when the loops have submitted them.
func (s *Server) startRing() {
	for qid, ents := range ringQueues(s.cfg.RingSlots) {
		q := s.queues[qid%len(s.queues)]
		u := &uqueue{s: s, q: q, qid: uint16(qid)}
		q.l.Call(func() { u.start(ents) })
	}
	// A loop submits what a turn queued before it runs the next turn's
	// posted functions.
	for _, q := range s.queues {
		q.l.Call(func() { q.trim(classicWithRing) })
	}
}

func (u *uqueue) start(n int) {
	s := u.s
	if u.q.stopped || s.closing.Load() {
		return
	}
	u.q.rings = append(u.q.rings, u)
	for i := range n {
		e := &uent{u: u, scratch: make([]byte, scratchSize)}
		if n-i <= s.cfg.Slots {
			b, err := u.q.l.Arena().TryGet(s.cfg.MaxWrite)
			if err != nil {
				s.log.Error().Err(err).Msg("fuse: ring entry buffer")
				break
			}
			e.arena, e.payload = b, b.B
			e.init(u.q, e, b.Index)
		} else {
			m, err := unix.Mmap(-1, 0, s.cfg.MaxWrite, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
			if err != nil {
				s.log.Error().Err(err).Msg("fuse: ring entry buffer")
				break
			}
			e.own, e.payload = m, m
			e.init(u.q, e, -1)
		}
		e.iov[0] = unix.Iovec{Base: &e.hdr[0]}
		e.iov[0].SetLen(ringHeaderLen)
		e.iov[1] = unix.Iovec{Base: &e.payload[0]}
		e.iov[1].SetLen(len(e.payload))
		u.ents = append(u.ents, e)
	}
	for _, e := range u.ents {
		s.live.Add(1)
		e.send(uringCmdRegister)
	}
}

// release gives the entries' buffers back (on the loop, once they are
// done).
func (u *uqueue) release() {
	for _, e := range u.ents {
		if e.own != nil {
			unix.Munmap(e.own)
		}
		u.q.l.Arena().Put(e.arena)
		e.arena, e.own, e.payload = uring.Buf{}, nil, nil
	}
}

// send submits the entry's REGISTER or COMMIT_AND_FETCH.
func (e *uent) send(op uint32) {
	u := e.u
	q := u.q
	e.cmdOp = op
	var sqe uring.SQE
	sqe.PrepURingCmd(q.fdIdx, op)
	sqe.Fixed()
	if op == uringCmdRegister {
		sqe.Addr = uint64(uintptr(unsafePtr(&e.iov[0])))
		sqe.Len = 2
	}
	var cmd [24]byte
	if op == uringCmdCommitAndFetch {
		le.PutUint64(cmd[8:], e.commitID)
	}
	le.PutUint16(cmd[16:], u.qid)
	if _, err := q.l.SubmitCmd(&sqe, cmd[:], e, tagRing); err != nil {
		if err == unix.EBUSY {
			// The SQ is full: try again on the next turn.
			if q.l.Post(func() { e.send(op) }) == nil {
				return
			}
		}
		e.stop()
	}
}

func (e *uent) stop() {
	if !e.done {
		e.done = true
		e.u.s.live.Done()
	}
}

// Complete: the kernel put a request in the entry (res 0), or the
// command failed.
func (e *uent) Complete(_ uint64, res int32, _ uint32) {
	if res < 0 {
		switch syscall.Errno(-res) {
		case unix.EAGAIN, unix.EINTR:
			e.send(e.cmdOp)
		case unix.ENOTCONN, unix.ECONNABORTED, unix.ECANCELED, unix.ENODEV:
			e.stop() // unmounted or aborted
		default:
			e.u.s.log.Error().Err(uring.Errno(res)).Uint32("cmd", e.cmdOp).Msg("fuse: ring command")
			e.stop()
		}
		return
	}
	e.take()
}

func (e *uent) take() {
	u := e.u
	q := u.q
	inc(&q.requests)
	inc(&q.ringReqs)

	h := decodeInHeader(e.hdr[ringInOut:])
	e.commitID = le.Uint64(e.hdr[ringEntInOut+8:])
	psz := uint64(le.Uint32(e.hdr[ringEntInOut+16:]))
	n := uint64(h.Len)
	var r request
	var err error = errShort
	if n >= inHeaderSize+psz && n-inHeaderSize-psz <= ringOpInSize {
		argSz := n - inHeaderSize - psz
		if h.Opcode == opWrite {
			copy(e.head[:], e.hdr[ringInOut:ringInOut+inHeaderSize])
			copy(e.head[inHeaderSize:], e.hdr[ringOpIn:ringOpIn+writeInSize])
			if argSz == writeInSize && psz <= uint64(len(e.payload)) {
				r, err = parseRequest(e.head[:], reqHeadSize)
			}
		} else if n <= uint64(len(e.scratch)) {
			k := copy(e.scratch, e.hdr[ringInOut:ringInOut+inHeaderSize])
			k += copy(e.scratch[k:], e.hdr[ringOpIn:ringOpIn+argSz])
			copy(e.scratch[k:], e.payload[:psz])
			r, err = parseRequest(e.scratch, int(n))
		}
	}
	e.r = r
	if err != nil {
		e.r.hdr = h
		replyErr(e, syscall.EIO)
		return
	}
	q.s.serve(e)
}

func (e *uent) core() *reqCore { return &e.reqCore }
func (e *uent) body() []byte   { return e.payload }
func (e *uent) buf() []byte    { return e.payload }

// answer commits k bytes of body, or data (a slice of the payload: moved
// to its start if it isn't there), and fetches the next request.
func (e *uent) answer(errno int32, k int, data []byte) {
	if len(data) > 0 {
		if unsafePtr(&data[0]) != unsafePtr(&e.payload[0]) {
			copy(e.payload, data)
		}
		k = len(data)
	}
	putOutHeader(e.hdr[ringInOut:], outHeaderSize+k, errno, e.r.hdr.Unique)
	le.PutUint32(e.hdr[ringEntInOut+16:], uint32(k))
	e.send(uringCmdCommitAndFetch)
}

// next: a request that takes no reply still gives its entry back.
func (e *uent) next() { e.answer(0, 0, nil) }

func unsafePtr[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }
