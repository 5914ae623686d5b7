//go:build race

package testutil

// Race is true when the tests run under the race detector (-race): it
// slows everything, and sync.Pool drops a share of what it is given at
// random, so pooled objects are sometimes allocated afresh.
const Race = true
