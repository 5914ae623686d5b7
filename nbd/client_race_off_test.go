//go:build !race

package nbd

// ctRace: the race detector is off.
const ctRace = false
