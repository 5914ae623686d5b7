package dm

// A WriteOrder orders the writes a frontend has at a device at once.
// Writes run alongside each other as the client sent them, except that a
// read-modify-write (a write of part of a sector, done by reading the
// partial sectors, merging and writing them whole) runs alongside no
// write that overlaps its sectors, so that none is lost to another's: a
// write that would waits, in order, behind any waiting write it overlaps.
//
// A WriteOrder is not safe for concurrent use: a frontend confines it to
// one loop (the NBD server keeps one per connection) or holds a lock of
// its own over each call (the FUSE frontend keeps one per device, shared
// by its loops). It does no I/O and never blocks; the zero value is
// ready, and with Reserve(n) it takes n writes without allocating.
type WriteOrder[T any] struct {
	active []*OrderedWrite[T] // at the device
	held   []*OrderedWrite[T] // waiting, in order
	rmws   int                // read-modify-writes in active
}

// An OrderedWrite is one write's bytes at the device, [Lo, Hi) in whole
// sectors, whether it is a read-modify-write, and whose it is.
type OrderedWrite[T any] struct {
	Lo, Hi uint64
	RMW    bool
	Owner  T
	at     int // its index in active
}

func (w *OrderedWrite[T]) overlaps(o *OrderedWrite[T]) bool { return w.Lo < o.Hi && o.Lo < w.Hi }

// Reserve makes room for n writes at once, active or waiting.
func (o *WriteOrder[T]) Reserve(n int) {
	o.active = make([]*OrderedWrite[T], 0, n)
	o.held = make([]*OrderedWrite[T], 0, n)
}

// Admit reports whether w may go to the device now. If not, it waits:
// a later End hands it back.
func (o *WriteOrder[T]) Admit(w *OrderedWrite[T]) bool {
	if (o.rmws > 0 || len(o.held) > 0 || w.RMW) && o.mustWait(w, len(o.held)) {
		o.held = append(o.held, w)
		return false
	}
	o.start(w)
	return true
}

// Waiting is how many writes wait.
func (o *WriteOrder[T]) Waiting() int { return len(o.held) }

func (o *WriteOrder[T]) start(w *OrderedWrite[T]) {
	w.at = len(o.active)
	o.active = append(o.active, w)
	if w.RMW {
		o.rmws++
	}
}

// mustWait reports whether w has to wait: it overlaps one of the first
// nheld waiting writes (they go first), or a write at the device it may
// not run alongside.
func (o *WriteOrder[T]) mustWait(w *OrderedWrite[T], nheld int) bool {
	for _, h := range o.held[:nheld] {
		if w.overlaps(h) {
			return true
		}
	}
	if !w.RMW && o.rmws == 0 {
		return false
	}
	for _, a := range o.active {
		if (w.RMW || a.RMW) && w.overlaps(a) {
			return true
		}
	}
	return false
}

// End takes w, which Admit admitted or End handed back, off the device
// and appends to woken the waiting writes that may go now: they are
// admitted, and their owners start them.
func (o *WriteOrder[T]) End(w *OrderedWrite[T], woken []*OrderedWrite[T]) []*OrderedWrite[T] {
	last := len(o.active) - 1
	moved := o.active[last]
	o.active[w.at], moved.at = moved, w.at
	o.active[last] = nil
	o.active = o.active[:last]
	if w.RMW {
		o.rmws--
	}
	k := 0
	for i := 0; i < len(o.held); i++ {
		h := o.held[i]
		o.held[k] = h // the waiting before i are o.held[:k]
		if o.mustWait(h, k) {
			k++
			continue
		}
		o.start(h)
		woken = append(woken, h)
	}
	clear(o.held[k:])
	o.held = o.held[:k]
	return woken
}
