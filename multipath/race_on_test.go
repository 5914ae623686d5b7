//go:build race

package multipath

// raceAllocSlack: the race detector makes sync.Pool drop a share of what
// it is given, so pooled objects are sometimes allocated again.
const raceAllocSlack = 1
