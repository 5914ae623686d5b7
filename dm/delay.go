package dm

import (
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// delayTarget holds I/O for a while before passing it on:
// `delay <dev> <off> <ms> [<wdev> <woff> <wms> [<fdev> <foff> <fms>]]`.
// Reads use the first class, writes (and discards, write-zeroes) the
// second, empty flushes the third; a missing class copies the one before
// (but holds its own clones). Status INFO is the kernel's three counts of
// held clones, read write flush; TABLE echoes the classes given.
// A suspend releases every held clone at once and, until resume, clones
// are passed on at once. A held clone whose bio was canceled is dropped
// with ECANCELED when released, instead of being submitted.
type delayTarget struct {
	argc  int
	class [3]delayClass // read, write, flush
	now   func() time.Time

	mu       sync.Mutex // guards the following and the classes' queues
	mayDelay bool
	timer    *time.Timer // runs fire
	armed    bool
	armedAt  time.Time
	closed   bool
}

type delayClass struct {
	dev    BlockDevice
	name   string
	offset uint64
	ms     uint64
	held   []heldClone // FIFO; expiry times are in order within a class
}

type heldClone struct {
	c       *Clone
	expires time.Time
}

const (
	delayRead = iota
	delayWrite
	delayFlush
)

func delayType() TargetType {
	return TargetType{Name: "delay", Version: [3]int{1, 4, 0}, New: newDelay}
}

func newDelay(ctx *TargetContext, args []string) (Target, error) {
	if len(args) != 3 && len(args) != 6 && len(args) != 9 {
		return nil, fmt.Errorf("requires exactly 3, 6 or 9 arguments")
	}
	d := &delayTarget{argc: len(args), now: time.Now, mayDelay: true}
	for i := range d.class {
		a := args
		switch {
		case i == delayWrite && len(args) >= 6, i == delayFlush && len(args) == 6:
			a = args[3:6]
		case i == delayFlush && len(args) == 9:
			a = args[6:9]
		}
		cl := &d.class[i]
		off, err := parseSector(a[1])
		if err != nil {
			return nil, err
		}
		ms, err := strconv.ParseUint(a[2], 10, 32)
		if err != nil {
			return nil, fmt.Errorf("invalid delay %q", a[2])
		}
		dev, err := openArea(ctx, a[0], off)
		if err != nil {
			return nil, err
		}
		cl.dev, cl.name, cl.offset, cl.ms = dev, a[0], off, ms
	}
	d.timer = time.AfterFunc(time.Hour, d.fire)
	d.timer.Stop()
	return d, nil
}

func (d *delayTarget) classOf(c *Clone) *delayClass {
	switch c.Op {
	case OpRead:
		return &d.class[delayRead]
	case OpFlush:
		return &d.class[delayFlush]
	}
	return &d.class[delayWrite]
}

func (d *delayTarget) Map(c *Clone) MapResult {
	cl := d.classOf(c)
	c.Dev = cl.dev
	if c.Op != OpFlush {
		c.Sector += cl.offset
	}
	if cl.ms == 0 {
		return MapRemapped
	}
	d.mu.Lock()
	if !d.mayDelay || d.closed {
		d.mu.Unlock()
		return MapRemapped
	}
	now := d.now()
	exp := now.Add(time.Duration(cl.ms) * time.Millisecond)
	cl.held = append(cl.held, heldClone{c: c, expires: exp})
	if !d.armed || exp.Before(d.armedAt) {
		d.armed, d.armedAt = true, exp
		d.timer.Reset(exp.Sub(now))
	}
	d.mu.Unlock()
	return MapSubmitted
}

// fire releases the clones whose time has come and re-arms the timer.
func (d *delayTarget) fire() {
	d.mu.Lock()
	d.armed = false
	now := d.now()
	var batch []*Clone
	var next time.Time
	for i := range d.class {
		cl := &d.class[i]
		n := 0
		for n < len(cl.held) && !cl.held[n].expires.After(now) {
			batch = append(batch, cl.held[n].c)
			n++
		}
		cl.held = cl.dropHead(n)
		if len(cl.held) > 0 && (next.IsZero() || cl.held[0].expires.Before(next)) {
			next = cl.held[0].expires
		}
	}
	if !next.IsZero() && !d.closed {
		d.armed, d.armedAt = true, next
		d.timer.Reset(next.Sub(now))
	}
	d.mu.Unlock()
	release(batch)
}

func (cl *delayClass) dropHead(n int) []heldClone {
	if n == 0 {
		return cl.held
	}
	clear(cl.held[:n])
	if n == len(cl.held) {
		return cl.held[:0]
	}
	return cl.held[n:]
}

// takeAll empties the queues (in class order) and stops the timer.
func (d *delayTarget) takeAllLocked() []*Clone {
	var all []*Clone
	for i := range d.class {
		cl := &d.class[i]
		for _, h := range cl.held {
			all = append(all, h.c)
		}
		cl.held = cl.dropHead(len(cl.held))
	}
	d.timer.Stop()
	d.armed = false
	return all
}

// release passes held clones on to their devices, on their bio's
// executor when it has one; canceled ones are dropped.
func release(cs []*Clone) {
	for _, c := range cs {
		exec := c.Exec()
		if exec == nil {
			submitHeld(c)
			continue
		}
		cc := c
		if err := exec.Post(func() { submitHeld(cc) }); err != nil {
			c.Finish(ErrIO)
		}
	}
}

func submitHeld(c *Clone) {
	if c.Canceled() {
		c.Finish(ErrCanceled)
		return
	}
	c.Dev.Submit(c)
}

// PreSuspend releases everything held; until resume nothing is delayed.
func (d *delayTarget) PreSuspend() { d.releaseAll(false) }

// PreSuspendUndo delays again after an interrupted suspend.
func (d *delayTarget) PreSuspendUndo() { d.setMayDelay() }

// Resume delays again.
func (d *delayTarget) Resume() { d.setMayDelay() }

func (d *delayTarget) setMayDelay() {
	d.mu.Lock()
	d.mayDelay = true
	d.mu.Unlock()
}

// Destroy stops the timer; anything still held (nothing, after a
// suspend) is released.
func (d *delayTarget) Destroy() { d.releaseAll(true) }

// releaseAll stops delaying, until resume or (closing) for good, and
// releases every clone held.
func (d *delayTarget) releaseAll(closing bool) {
	d.mu.Lock()
	d.mayDelay = false
	d.closed = d.closed || closing
	all := d.takeAllLocked()
	d.mu.Unlock()
	release(all)
}

func (d *delayTarget) Status(t StatusType) string {
	if t == StatusInfo {
		// The kernel's "%u %u %u" of read.ops, write.ops and flush.ops:
		// the clones each class holds now (counted when delayed, no
		// longer once released), whatever the argument count.
		d.mu.Lock()
		defer d.mu.Unlock()
		return fmt.Sprintf("%d %d %d", len(d.class[delayRead].held), len(d.class[delayWrite].held), len(d.class[delayFlush].held))
	}
	// TABLE: the read class, then the write class with 6 or 9
	// arguments, then the flush class with 9.
	var parts []string
	for i := range d.class {
		if (i == delayWrite && d.argc < 6) || (i == delayFlush && d.argc < 9) {
			break
		}
		cl := &d.class[i]
		parts = append(parts, fmt.Sprintf("%s %d %d", QuoteArg(cl.name), cl.offset, cl.ms))
	}
	return strings.Join(parts, " ")
}
