//go:build race

package dm

// raceAllocSlack: under -race sync.Pool drops a quarter of what it is
// given at random, so pooled clones are sometimes allocated afresh.
const raceAllocSlack = 1.0
