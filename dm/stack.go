package dm

import (
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// BlockDevice returns d as a BlockDevice, so that d can be a path or a
// backing device in another table (stacking). Each clone submitted to it
// becomes a pooled Bio on d. The adapter implements DeadlineSetter: when a
// deadline passes, the lower bio is canceled (so a target still holding
// it, like delay, drops it instead of writing it later), the upper clone
// ends with ETIMEDOUT, and, because with a deadline data goes through a
// bounce buffer, a late completion can neither scribble on the caller's
// memory nor write what the caller put there after the timeout.
//
// Tables in a Registry get this adapter for /dev/mapper/NAME by
// themselves (and hold d open); BlockDevice is for wiring by hand.
func (d *Device) BlockDevice() BlockDevice { return d.blockDevice(MapperPrefix + d.Name()) }

func (d *Device) blockDevice(name string) *stackDev { return &stackDev{d: d, name: name} }

type stackDev struct {
	d        *Device
	name     string
	deadline atomic.Int64 // time.Duration; 0: none
}

func (s *stackDev) Name() string   { return s.name }
func (s *stackDev) Size() int64    { return s.d.Size() }
func (s *stackDev) BlockSize() int { return SectorSize }
func (s *stackDev) ReadOnly() bool { return s.d.ReadOnly() }

// SetIODeadline bounds every later I/O by dl (0 or less: no deadline).
func (s *stackDev) SetIODeadline(dl time.Duration) { s.deadline.Store(int64(dl)) }

// Lower bio states.
const (
	stackInflight uint32 = iota
	stackDone
	stackTimedOut
)

// stackBio carries one upper clone to the lower device.
type stackBio struct {
	bio    Bio
	upper  *Clone
	bounce []byte // aligned, reused; used when a deadline is set
	copyIn bool   // a read into bounce: copy to upper on completion
	timed  bool   // the timer was armed for this I/O
	state  atomic.Uint32
	// refs: one for the lower bio, one while the timer may still run.
	refs  atomic.Int32
	timer *time.Timer
}

var stackPool sync.Pool // of *stackBio

func getStackBio() *stackBio {
	if sb, ok := stackPool.Get().(*stackBio); ok {
		return sb
	}
	sb := new(stackBio)
	sb.timer = time.AfterFunc(time.Hour, sb.timeout)
	sb.timer.Stop()
	return sb
}

func (s *stackDev) Submit(c *Clone) {
	sb := getStackBio()
	sb.upper = c
	sb.copyIn = false
	sb.state.Store(stackInflight)
	lb := &sb.bio
	lb.canceled.Store(false)
	lb.Op, lb.Flags, lb.Sector, lb.Len = c.Op, c.Flags, c.Sector, c.Len
	lb.Exec, lb.End, lb.Private = c.Exec(), sb, 0
	dl := time.Duration(s.deadline.Load())
	lb.Buf, lb.BufIndex = c.Buf, c.BufIndex
	if dl > 0 && c.Op.HasData() {
		if cap(sb.bounce) < len(c.Buf) {
			sb.bounce = alignedBuf(len(c.Buf))
		}
		lb.Buf, lb.BufIndex = sb.bounce[:len(c.Buf)], -1
		if c.Op == OpWrite {
			copy(lb.Buf, c.Buf)
		} else {
			sb.copyIn = true
		}
	}
	sb.timed = dl > 0
	if sb.timed {
		sb.refs.Store(2)
		sb.timer.Reset(dl)
	} else {
		sb.refs.Store(1)
	}
	s.d.Submit(lb)
}

// BioEnd is the lower bio's completion.
func (sb *stackBio) BioEnd(b *Bio, err error) {
	if !sb.state.CompareAndSwap(stackInflight, stackDone) {
		// Timed out: the upper clone has ended already.
		sb.put()
		return
	}
	if sb.timed && sb.timer.Stop() {
		sb.refs.Add(-1)
	}
	up := sb.upper
	if sb.copyIn && err == nil {
		copy(up.Buf, sb.bio.Buf)
	}
	sb.put()
	up.End(err)
}

func (sb *stackBio) timeout() {
	if sb.state.CompareAndSwap(stackInflight, stackTimedOut) {
		sb.bio.Cancel()
		up := sb.upper
		// The timer fires on its own goroutine: end the clone on its loop.
		if ex := up.Exec(); ex == nil || ex.Post(func() { up.End(syscall.ETIMEDOUT) }) != nil {
			up.End(syscall.ETIMEDOUT)
		}
	}
	sb.put()
}

func (sb *stackBio) put() {
	if sb.refs.Add(-1) == 0 {
		sb.upper = nil
		sb.bio.Buf, sb.bio.Exec, sb.bio.End = nil, nil, nil
		stackPool.Put(sb)
	}
}
