// Package nbdtest holds what the tests of the nbd packages share: for
// whether the race detector is on, and Eventually.
package nbdtest
