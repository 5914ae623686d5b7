package dm

import (
	_ "unsafe" // for go:linkname
)

// nanotime is the runtime's monotonic clock: one vDSO read, where
// time.Now makes two (wall and monotonic). Bio latency stamps use it.
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64
