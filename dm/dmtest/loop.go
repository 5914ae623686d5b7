package dmtest

import (
	"errors"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Loop is a dm.Executor for tests: one goroutine running posted
// functions in order, like a uring.Loop, that counts what was posted.
type Loop struct {
	mu     sync.Mutex
	q      []func() // guarded by mu
	closed bool     // guarded by mu
	wake   chan struct{}
	done   chan struct{}
	posted atomic.Int64
	gid    atomic.Uint64 // the loop goroutine's id
	id     int
}

var loopIDs atomic.Int32

// ID numbers the loop like uring.Loop's (devices shard their counters by
// it).
func (l *Loop) ID() int { return l.id }

// curGID is the calling goroutine's id (which goroutine runs what).
func curGID() uint64 {
	var buf [64]byte
	s := string(buf[:runtime.Stack(buf[:], false)])
	s = strings.TrimPrefix(s, "goroutine ")
	id, _ := strconv.ParseUint(s[:strings.IndexByte(s, ' ')], 10, 64)
	return id
}

// OnLoop reports whether the caller runs on the loop's goroutine.
func (l *Loop) OnLoop() bool { return curGID() == l.gid.Load() }

// NewLoop starts a Loop that stops when the test ends.
func NewLoop(t testing.TB) *Loop {
	l := &Loop{wake: make(chan struct{}, 1), done: make(chan struct{}), id: int(loopIDs.Add(1))}
	go l.run()
	t.Cleanup(l.Close)
	return l
}

// Post queues fn to run on the loop (an error once it stopped).
func (l *Loop) Post(fn func()) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errors.New("dmtest: loop closed")
	}
	l.q = append(l.q, fn)
	l.mu.Unlock()
	l.posted.Add(1)
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return nil
}

func (l *Loop) run() {
	defer close(l.done)
	l.gid.Store(curGID())
	for {
		l.mu.Lock()
		q := l.q
		l.q = nil
		closed := l.closed
		l.mu.Unlock()
		for _, fn := range q {
			fn()
		}
		if closed && len(q) == 0 {
			return
		}
		if len(q) == 0 {
			<-l.wake
		}
	}
}

// Posted is how many functions were posted so far.
func (l *Loop) Posted() int64 { return l.posted.Load() }

// Close stops the loop after what was posted has run (idempotent).
func (l *Loop) Close() {
	l.mu.Lock()
	l.closed = true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	<-l.done
}
