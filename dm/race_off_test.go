//go:build !race

package dm

const raceAllocSlack = 0.0
