package uring

import _ "unsafe" // for go:linkname

// nanotime is the runtime's monotonic clock (one vDSO read).
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64
