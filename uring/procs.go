package uring

import (
	"os"
	"runtime"
	"sync"
)

var (
	procsMu   sync.Mutex
	procsBase int // GOMAXPROCS when the first loop started
	procsFor  int // loops started (the reservation never shrinks)
)

// reserveProc raises GOMAXPROCS by one for each loop started, up to
// twice what it was before the first, unless the GOMAXPROCS environment
// variable chose it.
//
// Why: a loop's thread sleeps in io_uring_enter, a system call, holding
// its P. With as many loops as Ps, every P is in a system call whenever
// the loops sleep, and the Go scheduler's monitor (sysmon) then takes
// each one back after 20µs (none is idle) and, the Ps all idle, goes to
// sleep until the next system call starts, which wakes it: one more
// thread woken per loop sleep, which on shared CPUs preempts the loop
// itself, and a P to win back when the loop wakes. A spare P that stays
// idle stops that (sysmon leaves a P in a system call alone for 10ms
// while another is idle). Seen with perf sched at depth 1: the loop
// thread woke sysmon on about every other request, and was switched out
// for it.
func reserveProc() {
	procsMu.Lock()
	defer procsMu.Unlock()
	if procsBase == 0 {
		procsBase = runtime.GOMAXPROCS(0)
	}
	procsFor++
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	if want := procsBase + min(procsFor, procsBase); runtime.GOMAXPROCS(0) < want {
		runtime.GOMAXPROCS(want)
	}
}
