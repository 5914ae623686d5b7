package uring

import "sync/atomic"

// mpsc is Dmitry Vyukov's intrusive multi-producer single-consumer queue:
// push is one atomic swap plus one store and never blocks; only the loop
// pops.
type mpsc struct {
	head atomic.Pointer[qnode] // producers swap here
	tail *qnode                // consumer side
	stub qnode
}

type qnode struct {
	next atomic.Pointer[qnode]
	fn   func()
}

func (q *mpsc) init() {
	q.head.Store(&q.stub)
	q.tail = &q.stub
}

func (q *mpsc) push(n *qnode) {
	n.next.Store(nil)
	prev := q.head.Swap(n)
	prev.next.Store(n)
}

// pop returns the oldest node, or nil when the queue is empty or a push is
// half done (the pusher will wake the loop once it has linked its node).
func (q *mpsc) pop() *qnode {
	tail := q.tail
	next := tail.next.Load()
	if tail == &q.stub {
		if next == nil {
			return nil
		}
		q.tail = next
		tail = next
		next = next.next.Load()
	}
	if next != nil {
		q.tail = next
		return tail
	}
	if tail != q.head.Load() {
		return nil // a producer swapped head but has not linked yet
	}
	q.push(&q.stub)
	next = tail.next.Load()
	if next != nil {
		q.tail = next
		return tail
	}
	return nil
}

// empty reports whether nothing is queued or being queued.
func (q *mpsc) empty() bool {
	t := q.tail
	return t == q.head.Load() && t.next.Load() == nil && t == &q.stub
}
