//go:build race

package nbdtest

// Race: the race detector is on (sync.Pool drops items at random and
// allocation counts mean nothing).
const Race = true
