package testutil

// PoolSlack is how many allocations per operation a test allows for an
// operation that takes n objects from a sync.Pool: none, or n under the
// race detector, which makes the pool drop a share of what it is given.
func PoolSlack(n int) float64 {
	if Race {
		return float64(n)
	}
	return 0
}
