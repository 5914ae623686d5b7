// Package client is an NBD client (fixed newstyle, structured replies,
// base:allocation) for remote paths — a multipath path can be an
// nbd://host:port/export or nbd+unix:///export?socket=PATH name (Opener)
// — and for the benchmarks. A Client is also a dm.BlockDevice.
//
// # Threading
//
// A Client keeps one connection to its export at a time and re-dials it
// when it is lost. Per Client, a supervisor goroutine dials (handshake
// included), waits for the connection's death, puts what was in flight
// back in the queue and dials again with backoff. Per connection, a
// writer goroutine sends what is queued (headers and write payloads, one
// writev) and a reader goroutine reads replies and ends requests. Each
// request with a deadline has a timer (time.AfterFunc). All socket I/O
// happens in these goroutines.
//
// Requests enter from any goroutine (Start, ReadAt and the other blocking
// calls, Submit): entering takes Client.mu briefly and never waits for
// the network, so Submit may be called on a uring loop. A request's end
// runs outside every lock: a clone's end is posted to the clone's
// executor (its loop), a Start handler runs on a client goroutine, and a
// blocking call's waiter is woken through a channel.
//
// # Locks
//
// Client.mu guards the request table, the send queues, the waiting list
// and the connection state; no socket I/O, dial, sleep or handler runs
// under it. A multiOp (a request split into several, or FUA emulated by
// a flush) has its own mu, guarding its pieces; the order is
//
//	multiOp.mu → Client.mu
//
// (multiOp.abort takes both; nothing takes multiOp.mu while holding
// Client.mu). No other mutex exists; the rest is atomics, sync.Once and
// channels.
package client
