package dm

import (
	"runtime"
	"sync/atomic"
)

// bioList is an intrusive FIFO of bios linked through bioCore.next (the
// deferred and pushback lists). It allocates nothing.
type bioList struct {
	head, tail *Bio
	n          int
}

func (l *bioList) push(b *Bio) {
	b.core.next = nil
	if l.tail == nil {
		l.head = b
	} else {
		l.tail.core.next = b
	}
	l.tail = b
	l.n++
}

func (l *bioList) pop() *Bio {
	b := l.head
	if b == nil {
		return nil
	}
	l.head = b.core.next
	if l.head == nil {
		l.tail = nil
	}
	b.core.next = nil
	l.n--
	return b
}

// pushFrontList moves all of o, in order, ahead of l's bios.
func (l *bioList) pushFrontList(o *bioList) {
	if o.head == nil {
		return
	}
	if l.head == nil {
		*l = *o
	} else {
		o.tail.core.next = l.head
		l.head = o.head
		l.n += o.n
	}
	*o = bioList{}
}

// take empties l and returns what it held.
func (l *bioList) take() bioList {
	o := *l
	*l = bioList{}
	return o
}

// spinLock is a test-and-test-and-set lock for critical sections of a few
// instructions (the pushback list). It yields the processor after a short
// spin so that a holder that was descheduled can run. It never parks the
// caller: a loop thread that sleeps in a futex costs a wake-up of 10-18
// µs. BenchmarkPushbackLock: uncontended it costs what sync.Mutex does;
// between locked threads (loops) it is faster; between plain goroutines,
// which the mutex parks cheaply, slower.
type spinLock struct{ v atomic.Uint32 }

func (l *spinLock) Lock() {
	for i := 0; ; i++ {
		if l.v.Load() == 0 && l.v.CompareAndSwap(0, 1) {
			return
		}
		if i >= 16 {
			runtime.Gosched()
		}
	}
}

func (l *spinLock) Unlock() { l.v.Store(0) }
