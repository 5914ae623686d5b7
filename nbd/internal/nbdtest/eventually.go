package nbdtest

import (
	"testing"
	"time"
)

// Safety bounds how long Eventually waits: long enough that only a hang
// runs into it.
const Safety = 20 * time.Second

// Eventually polls cond until it holds or Safety passes.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(Safety)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
