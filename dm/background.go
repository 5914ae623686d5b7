package dm

import (
	"context"
	"sync"
)

// background runs work that must not run on its caller's goroutine (the
// removal a last Close starts, since Close may be called on a loop) and
// lets its owner wait for it. Unlike a sync.WaitGroup, start may be
// called while someone waits.
type background struct {
	mu struct {
		sync.Mutex // guards the following
		n          int
		idle       chan struct{} // closed when n drops to 0; nil while n == 0
	}
}

// start runs fn on a new goroutine.
func (b *background) start(fn func()) {
	b.mu.Lock()
	if b.mu.n == 0 {
		b.mu.idle = make(chan struct{})
	}
	b.mu.n++
	b.mu.Unlock()
	go func() {
		defer b.done()
		fn()
	}()
}

func (b *background) done() {
	b.mu.Lock()
	b.mu.n--
	if b.mu.n == 0 {
		close(b.mu.idle)
		b.mu.idle = nil
	}
	b.mu.Unlock()
}

// wait returns once nothing started runs any more, or ctx.Err().
func (b *background) wait(ctx context.Context) error {
	for {
		b.mu.Lock()
		idle := b.mu.idle
		b.mu.Unlock()
		if idle == nil {
			return nil
		}
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
