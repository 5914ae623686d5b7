//go:build !race

package client

// ctRace: the race detector is off.
const ctRace = false
