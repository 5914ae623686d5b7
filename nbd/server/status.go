package server

import "sync"

// statusWorkers is how many goroutines of a server answer BLOCK_STATUS.
const statusWorkers = 4

// statusJob is a BLOCK_STATUS request to answer.
type statusJob struct {
	c *conn
	r *req
}

// statusPool answers the BLOCK_STATUS requests of all of a server's
// connections with a few goroutines, started with the first request and
// stopped by stop: a client that sends many requests costs queue room
// (at most MaxInflight per connection), not a goroutine each. The loops
// only append under mu, which is held for nothing else.
type statusPool struct {
	mu      sync.Mutex // guards the following
	cond    *sync.Cond
	q       []statusJob
	started bool
	stopped bool
	wg      sync.WaitGroup
}

// add queues j (from a loop: it never waits for a worker).
func (p *statusPool) add(j statusJob) {
	p.mu.Lock()
	if !p.started {
		p.started = true
		p.cond = sync.NewCond(&p.mu)
		p.wg.Add(statusWorkers)
		for range statusWorkers {
			go p.work()
		}
	}
	p.q = append(p.q, j)
	p.cond.Signal()
	p.mu.Unlock()
}

func (p *statusPool) work() {
	defer p.wg.Done()
	p.mu.Lock()
	for {
		for len(p.q) == 0 && !p.stopped {
			p.cond.Wait()
		}
		if len(p.q) == 0 {
			p.mu.Unlock()
			return
		}
		j := p.q[0]
		p.q[0] = statusJob{}
		p.q = p.q[1:]
		p.mu.Unlock()
		j.answer()
		p.mu.Lock()
	}
}

// stop ends the workers once the queue is empty (call it when no
// connection is left to add to it) and waits for them.
func (p *statusPool) stop() {
	p.mu.Lock()
	p.stopped = true
	if p.cond != nil {
		p.cond.Broadcast()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
