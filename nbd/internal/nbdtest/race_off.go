//go:build !race

package nbdtest

// Race: the race detector is off.
const Race = false
