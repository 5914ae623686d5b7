//go:build !race

package multipath

const raceAllocSlack = 0
