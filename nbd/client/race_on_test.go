//go:build race

package client

// ctRace: the race detector is on (sync.Pool drops items at random and
// allocation counts mean nothing).
const ctRace = true
