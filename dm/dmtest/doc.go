// Package dmtest holds what tests of dm and of the packages built on it
// share: MemDevice (a block device in memory that can be told to fail,
// hang, delay or complete I/O in one of three ways), NullDevice (for
// benchmarks), Rec (a bio that records how it ended) and Loop (an
// executor running posted functions on one goroutine).
//
// Lock order: each type's mutex is its only lock, and it is never held
// while calling out: MemDevice ends clones and runs its submit hook, and
// Loop runs posted functions, with it released.
package dmtest
