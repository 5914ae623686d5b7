package testutil

import (
	"testing"
	"time"
)

// Patience is how long a test waits for something that must happen
// before it declares it lost. It only bounds hangs: no test asserts that
// anything happens sooner, so a slow or loaded machine takes longer but
// does not fail.
const Patience = 60 * time.Second

// Eventually polls cond until it holds, and fails the test (naming what
// it waited for) if it does not within Patience. It polls often at first
// and then every few milliseconds.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !Poll(cond) {
		t.Fatalf("waited %v for %s", Patience, what)
	}
}

// Poll polls cond as Eventually does and reports whether it held within
// Patience (for callers that fail in their own way, as testscript
// commands do).
func Poll(cond func() bool) bool {
	deadline := time.Now().Add(Patience)
	pause := 50 * time.Microsecond
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause)
		pause = min(2*pause, 5*time.Millisecond)
	}
	return true
}

// Wait receives from ch, and fails the test (naming what it waited for)
// if nothing comes within Patience.
func Wait[T any](t testing.TB, what string, ch <-chan T) T {
	t.Helper()
	timer := time.NewTimer(Patience)
	defer timer.Stop()
	select {
	case v := <-ch:
		return v
	case <-timer.C:
		t.Fatalf("waited %v for %s", Patience, what)
		panic("unreachable")
	}
}
