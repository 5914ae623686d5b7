package server

import "time"

// A pacer decides, for one connection, when to receive: as soon as a
// request arrives (prompt), or after a short window in which the requests
// a pipelining client keeps sending gather in the socket, to be taken in
// one receive and answered in one send (gather).
//
// Why: with fio's nbd engine at depth 16-32 the client sends one request
// at a time as replies come back, and a prompt server answers each alone:
// a receive, a send and a wake-up per request, on both sides. Gathering
// for 50µs took 5-10 requests a receive and halved the server's CPU per
// request (loopback TCP, 2 vCPUs), and the client, woken once a batch,
// got more done too. But a client that waits for its replies before it
// sends more (depth 1, or a few) only loses the window. The pacer tries
// gathering now and then and keeps it while the connection's request
// rate holds up against the rate it had prompt (DIM, the Linux network
// drivers' dynamic interrupt moderation, decides the same way):
//
//	prompt ──(an epoch of at least paceMinReqs requests, trial due)──▶ trial
//	trial  ──(its epoch's rate ≥ paceKeep × prompt's)──▶ gather
//	trial  ──(slower, or paceSingles gathered receives of one request)──▶ prompt, next trial after a doubled back-off
//	gather ──(paceGatherEpochs epochs)──▶ prompt (measure it again), then trial
//	gather ──(paceSingles gathered receives of one request in a row)──▶ prompt
//
// Gathered receives that bring a single request mean the client waits
// for us: at depth 1 a trial costs paceSingles requests the window, once
// per back-off (up to paceMaxBackoff).
//
// The pacer is a plain state machine on the loop's clock; the connection
// feeds it each receive and does what it says.
type pacer struct {
	mode       paceMode
	start      int64   // the current epoch's start (loop clock, ns); 0: none yet
	reqs       int     // requests received in the current epoch
	promptRate float64 // requests per ns in the last prompt epoch
	left       int     // gather epochs before prompt is measured again
	next       int64   // no trial before this
	backoff    int64
	singles    int // gathered receives in a row that brought one request
}

type paceMode uint8

const (
	pacePrompt paceMode = iota
	paceTrial
	paceGather
)

func (m paceMode) String() string {
	switch m {
	case paceTrial:
		return "trial"
	case paceGather:
		return "gather"
	}
	return "prompt"
}

const (
	paceEpoch        = int64(10 * time.Millisecond)
	paceMinReqs      = 100 // in an epoch (10k requests/s): fewer aren't worth a trial
	paceKeep         = 0.97
	paceSingles      = 3 // gathered receives with one request in a row: the client waits for us
	paceGatherEpochs = 20
	paceMinBackoff   = int64(50 * time.Millisecond)
	paceMaxBackoff   = int64(2 * time.Second)
)

// DefaultGatherWindow is Config.GatherWindow's default.
const DefaultGatherWindow = 50 * time.Microsecond

// received notes a receive at now that brought n requests (headers),
// after the gather window if gathered.
func (p *pacer) received(now int64, n int, gathered bool) {
	if p.start == 0 {
		p.start, p.backoff, p.next = now, paceMinBackoff, now+paceMinBackoff
	}
	p.reqs += n
	switch {
	case p.mode == pacePrompt || !gathered:
		// A prompt receive (the rest of a write's payload came first)
		// says nothing of how well gathering works.
	case n <= 1:
		if p.singles++; p.singles >= paceSingles {
			p.toPrompt(now, p.mode == paceTrial)
			return
		}
	default:
		p.singles = 0
	}
	if el := now - p.start; el >= paceEpoch {
		rate := float64(p.reqs) / float64(el)
		switch p.mode {
		case pacePrompt:
			p.promptRate = rate
			if now >= p.next && p.reqs >= paceMinReqs {
				p.mode = paceTrial
			}
		case paceTrial:
			if rate >= paceKeep*p.promptRate {
				p.mode, p.left, p.backoff = paceGather, paceGatherEpochs, paceMinBackoff
			} else {
				p.toPrompt(now, true)
			}
		case paceGather:
			if p.left--; p.left <= 0 {
				p.mode, p.next = pacePrompt, now // measure prompt, then try again
			}
		}
		p.start, p.reqs = now, 0
	}
}

// gathering reports whether the next receive waits for the gather window.
func (p *pacer) gathering() bool { return p.mode != pacePrompt }

// toPrompt goes back to receiving at once, and starts a fresh epoch; a
// failed trial doubles the wait for the next one.
func (p *pacer) toPrompt(now int64, failed bool) {
	p.mode, p.singles = pacePrompt, 0
	p.next = now + p.backoff
	if failed {
		p.backoff = min(2*p.backoff, paceMaxBackoff)
	}
	p.start, p.reqs = now, 0
}
