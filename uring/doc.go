// Package uring is udm's io_uring binding and its run-to-completion loop.
//
// The binding (Ring, SQE, CQE, the Prep helpers) talks to the kernel
// through golang.org/x/sys/unix; all unsafe code lives in ring.go and
// arena.go. On top of it, a Loop is one goroutine locked to its OS thread
// that owns one ring, set up on that thread with SINGLE_ISSUER,
// DEFER_TASKRUN and COOP_TASKRUN (falling back on older kernels):
//
//   - operations are submitted in batches; each turn of the loop makes one
//     io_uring_enter that both submits what handlers queued and waits for
//     the next completion;
//   - completions run their Handler inline on the loop's thread; work a
//     handler puts off with FlushLater runs once at the end of the turn,
//     after all of its completions (an NBD connection sends the replies
//     of a turn together);
//   - a loop that just did work polls for more (up to Config.Spin) before
//     it sleeps, unless a handler asked it to Rest (its next work is a
//     timer away); how long, and whether at all, adapts to what polling
//     finds and to the thread being kept from its CPU (spinPolicy);
//   - an operation's user_data is a slot index plus a generation, never a
//     Go pointer, and slots are preallocated, so the steady path allocates
//     nothing;
//   - SQEs that find the SQ full are flushed to the kernel at once, or kept
//     in a backlog (link chains stay whole) until it takes them;
//   - Post runs a function on the loop from any goroutine through a
//     lock-free queue; the poster writes the loop's eventfd (kept armed as a
//     read on the ring) only when the loop is asleep, so posting to a busy
//     loop costs one atomic swap;
//   - each loop has a registered, page-aligned buffer Arena for
//     READ_FIXED/WRITE_FIXED and a sparse fixed-file table that can be
//     updated while I/O runs;
//   - Close cancels what is in flight and returns once every operation has
//     completed through its handler, exactly once.
//
// A loop never blocks: a handler, a posted function or a Flusher runs on
// the loop's thread, and while it waits, nothing else on that loop runs
// (every connection and device it serves stops). So on a loop's thread,
// nothing may wait for a loop — its own, which would never return, nor
// another, which stops this one meanwhile and deadlocks if that one waits
// back — nor for I/O, nor for a lock that is held across I/O or across
// such a wait. Call and Close, the methods that wait for a loop, refuse
// at once on any loop's thread with ErrCallOnLoop, naming the caller;
// Post never waits and is the way for a loop to ask another loop for
// work (and to be posted the answer). Work that must block (closing a
// device, removing one) goes to a goroutine whose owner waits for it.
//
// Block-device helpers open files and block devices with O_DIRECT and read
// their size, logical block size and read-only state.
//
// Lock order: the package has one mutex, procsMu, which guards the
// GOMAXPROCS reservation made as a loop starts (reserveProc). It is a
// leaf: nothing else is locked while it is held, and it is never taken
// on a loop's thread after the loop has started. A loop's own state needs
// no lock, since only its thread touches it; other goroutines reach it
// through Post's lock-free queue and atomics.
package uring
