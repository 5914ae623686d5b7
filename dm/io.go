package dm

import (
	"sync"
	"sync/atomic"
	"syscall"
)

// bioCore is the core's per-bio state. It is reset each time the bio is
// mapped (a bio re-issued after a pushback is mapped again from scratch).
type bioCore struct {
	dev *Device
	// remaining counts the bio's clones not yet ended, plus one held by
	// the mapping code while it is still splitting (so that pieces ending
	// synchronously inside Map cannot end the bio early).
	remaining atomic.Int32
	// status is the bio's aggregated result: the first piece's errno in
	// the low bits, statusRequeue if any piece asked for a requeue.
	status atomic.Uint32
	// next links the bio on the deferred or pushback list.
	next *Bio
	// shard is where the bio is counted while pending.
	shard uint32
	// first is the bio's first clone; more come from clonePool.
	first Clone
	// start is when the bio was first submitted (nanotime; 0: not yet).
	// It survives deferral and pushback and is cleared when the bio
	// ends, for the latency histograms.
	start int64
}

const (
	statusRequeue   uint32 = 1 << 31
	statusErrnoMask uint32 = statusRequeue - 1
)

// fail records a piece's error on the bio: a requeue is remembered apart
// (it supersedes errors, in either order); otherwise the first errno wins.
func (bc *bioCore) fail(err error) {
	if err == ErrRequeue {
		bc.status.Or(statusRequeue)
		return
	}
	e := uint32(errnoOf(err)) & statusErrnoMask
	for {
		s := bc.status.Load()
		if s&statusErrnoMask != 0 || bc.status.CompareAndSwap(s, s|e) {
			return
		}
	}
}

// cloneCore is the core's per-clone state.
type cloneCore struct {
	bio    *Bio
	tt     *tableTarget
	endio  EndIOer // the target's, if it has one
	pooled bool
	// done ends a detached clone (NewDetachedClone); nil otherwise.
	done func(c *Clone, err error)
}

var clonePool = sync.Pool{New: func() any { return new(Clone) }}

// Exec is the executor of the clone's bio (nil: any goroutine).
func (c *Clone) Exec() Executor {
	if c.core.bio == nil {
		return nil
	}
	return c.core.bio.Exec
}

// Bio is the bio the clone was split from (nil for a detached clone).
func (c *Clone) Bio() *Bio { return c.core.bio }

// Canceled reports whether the clone's bio was canceled: a target that
// holds clones drops them with ErrCanceled instead of submitting them.
func (c *Clone) Canceled() bool { return c.core.bio != nil && c.core.bio.Canceled() }

// End is how a BlockDevice completes a clone: the target's EndIO (if it
// has one) runs first and decides whether the clone is done (possibly
// with another error), requeued, or taken back by the target (which then
// ends it again later). Call it exactly once per submission, from any
// goroutine.
func (c *Clone) End(err error) {
	if e := c.core.endio; e != nil {
		r, err2 := e.EndIO(c, err)
		switch r {
		case EndIODone:
			err = err2
		case EndIORequeue:
			err = ErrRequeue
		case EndIOIncomplete:
			return
		default:
			err = ErrIO
		}
	}
	c.Finish(err)
}

// Finish ends a clone without running EndIO: a target ending a clone it
// holds (MapSubmitted), or the core. Finish(ErrRequeue) requeues it. The
// clone must not be touched afterwards.
func (c *Clone) Finish(err error) {
	b := c.core.bio
	if b == nil {
		c.core.done(c, err)
		return
	}
	if err != nil {
		b.core.fail(err)
	}
	if c.core.pooled {
		*c = Clone{}
		clonePool.Put(c)
	}
	b.core.dev.put(b)
}

// NewDetachedClone returns a clone that belongs to no device, for unit
// tests of targets: End runs endio's EndIO (if endio is not nil) and
// Finish calls done. Exec and Bio are nil and Canceled is false.
func NewDetachedClone(endio EndIOer, done func(c *Clone, err error)) *Clone {
	c := &Clone{BufIndex: -1}
	c.core.endio = endio
	c.core.done = done
	return c
}

// put drops one reference on b: a clone ended, or the mapping code is
// done splitting. The last one ends the bio.
func (d *Device) put(b *Bio) {
	n := b.core.remaining.Add(-1)
	if n > 0 {
		return
	}
	if n < 0 {
		panic("dm: a clone was ended twice")
	}
	d.bioDone(b)
}

// bioDone runs once all of b's pieces have ended.
func (d *Device) bioDone(b *Bio) {
	s := b.core.status.Load()
	var err error
	sh := &d.shards[b.core.shard]
	if s&statusRequeue != 0 {
		if d.pushBack(b) {
			d.pendingDec(sh)
			return
		}
		err = ErrIO
	} else if e := s & statusErrnoMask; e != 0 {
		err = syscall.Errno(e)
	}
	sh.account(b, err, bioNow(b))
	b.End.BioEnd(b, err)
	d.pendingDec(sh)
}

// pushBack parks a requeued bio on the pushback list if a noflush suspend
// is under way; the check and the insertion are one critical section
// under pushMu, which is also where the flag is cleared.
func (d *Device) pushBack(b *Bio) bool {
	d.hookAt(hookBeforePushback)
	if !d.parkIf(&d.pushMu, flagNoflushSuspending, &d.pushback, &d.stats.pushback, b) {
		return false
	}
	d.stats.pushbacks.Add(1)
	return true
}

// pendingDec ends one unit of pending I/O and wakes a suspend waiting for
// the drain. Dekker with Suspend: we decrement then read BLOCK_IO, the
// suspend sets BLOCK_IO then reads the count, so one of us sees the
// other. Only while BLOCK_IO is set do we sum the shards.
func (d *Device) pendingDec(sh *shard) {
	sh.pending.Add(-1)
	if d.flags.Load()&flagBlockIO != 0 && d.pendingSum() == 0 {
		select {
		case d.drained <- struct{}{}:
		default:
		}
	}
}

// Submit maps b through the live table and sends its pieces to their
// targets; b.End runs exactly once when the last piece has ended (or at
// once, on a validation error). While the device is suspending or
// suspended the bio waits on the deferred list and is mapped at resume
// against the table live then. Submit never blocks.
func (d *Device) Submit(b *Bio) {
	if b.core.start == 0 {
		b.core.start = bioNow(b)
	}
	si := d.shardOf(b)
	sh := &d.shards[si]
	for {
		sh.pending.Add(1)
		f := d.flags.Load()
		if f&flagBlockIO == 0 {
			b.core.shard = si
			d.mapBio(b, f)
			return
		}
		d.pendingDec(sh)
		d.hookAt(hookDefer)
		if d.deferBio(b) {
			return
		}
	}
}

// deferBio queues b on deferred if BLOCK_IO is still set, re-checked under
// defMu: a resume clears the flag before it takes the list, so no bio can
// be left behind.
func (d *Device) deferBio(b *Bio) bool {
	return d.parkIf(&d.defMu, flagBlockIO, &d.deferred, &d.stats.deferred, b)
}

// parkIf puts b on l if flag is still set, the check and the insertion
// being one critical section under mu (the lock that guards l and under
// which the flag is cleared); gauge follows l's length. It reports
// whether b was parked.
func (d *Device) parkIf(mu sync.Locker, flag uint32, l *bioList, gauge *atomic.Int64, b *Bio) bool {
	mu.Lock()
	defer mu.Unlock()
	if d.flags.Load()&flag == 0 {
		return false
	}
	l.push(b)
	gauge.Store(int64(l.n))
	return true
}

// mapBio splits b into clones at target boundaries and at each target's
// MaxIOSectors and maps them. b counts as pending.
func (d *Device) mapBio(b *Bio, f uint32) {
	bc := &b.core
	bc.dev = d
	bc.next = nil
	bc.status.Store(0)
	bc.remaining.Store(1)
	t := d.live.Load()
	if t == nil {
		bc.status.Store(uint32(syscall.EIO))
		d.put(b)
		return
	}
	if f&flagReadOnly != 0 && b.Op != OpRead && b.Op != OpFlush {
		bc.status.Store(uint32(syscall.EPERM))
		d.put(b)
		return
	}
	used := false
	switch b.Op {
	case OpFlush:
		if b.Len != 0 {
			bc.status.Store(uint32(syscall.EINVAL))
			break
		}
		for i := range t.targets {
			tt := &t.targets[i]
			for j := 0; j < tt.flushClones; j++ {
				c := newClone(b, &used, tt)
				c.Op, c.Flags, c.Sector, c.Len = OpFlush, b.Flags, 0, 0
				c.Buf, c.BufIndex, c.Index = nil, -1, j
				d.dispatch(c)
			}
		}
	case OpRead, OpWrite, OpDiscard, OpWriteZeroes:
		nsec := uint64(b.Len) >> SectorShift
		if b.Len == 0 || b.Len&(SectorSize-1) != 0 || (b.Op.HasData() && len(b.Buf) != int(b.Len)) {
			bc.status.Store(uint32(syscall.EINVAL))
			break
		}
		sector, end := b.Sector, b.Sector+nsec
		if end < sector || end > t.size {
			bc.status.Store(uint32(syscall.EIO))
			break
		}
		var off uint32
		for sector < end {
			tt := t.find(sector)
			rel := sector - tt.begin
			n := tt.begin + tt.len - sector
			if left := end - sector; left < n {
				n = left
			}
			if tt.maxIO != 0 {
				if m := tt.maxIO - rel%tt.maxIO; m < n {
					n = m
				}
			}
			ln := uint32(n << SectorShift)
			copies := 1
			if b.Op == OpDiscard {
				copies = tt.discardClones
				if copies == 0 {
					bc.fail(syscall.EOPNOTSUPP)
				}
			}
			for j := 0; j < copies; j++ {
				c := newClone(b, &used, tt)
				c.Op, c.Flags, c.Sector, c.Len, c.Index = b.Op, b.Flags, rel, ln, j
				if b.Op.HasData() {
					c.Buf, c.BufIndex = b.Buf[off:off+ln:off+ln], b.BufIndex
				} else {
					c.Buf, c.BufIndex = nil, -1
				}
				d.dispatch(c)
			}
			sector += n
			off += ln
		}
	default:
		bc.status.Store(uint32(syscall.EINVAL))
	}
	d.put(b)
}

// newClone returns b's embedded clone the first time, pooled ones after.
func newClone(b *Bio, used *bool, tt *tableTarget) *Clone {
	var c *Clone
	if !*used {
		*used = true
		c = &b.core.first
		c.core.pooled = false
	} else {
		c = clonePool.Get().(*Clone)
		c.core.pooled = true
	}
	c.core.bio = b
	c.core.tt = tt
	c.core.endio = tt.endio
	c.Dev, c.Ctx, c.CtxU = nil, nil, 0
	return c
}

// dispatch maps one clone and acts on the target's answer. The clone may
// end (and, if pooled, be reused) before Map returns MapSubmitted, so c
// is not touched after that.
func (d *Device) dispatch(c *Clone) {
	b := c.core.bio
	b.core.remaining.Add(1)
	if b.Canceled() {
		c.Finish(ErrCanceled)
		return
	}
	switch c.core.tt.target.Map(c) {
	case MapRemapped:
		switch {
		case c.Dev == nil:
			c.Finish(ErrIO)
		case b.Canceled():
			c.Finish(ErrCanceled)
		default:
			c.Dev.Submit(c)
		}
	case MapSubmitted:
	case MapRequeue:
		c.Finish(ErrRequeue)
	default: // MapKill
		c.Finish(ErrIO)
	}
}
