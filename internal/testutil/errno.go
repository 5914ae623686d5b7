package testutil

import (
	"errors"
	"syscall"
	"testing"
)

// MustErrno fails the test unless err is exactly the errno want, not
// wrapped (0: err must be nil). dm ends bios with bare errnos.
func MustErrno(t testing.TB, what string, err error, want syscall.Errno) {
	t.Helper()
	if e, ok := err.(syscall.Errno); want == 0 && err == nil || ok && e == want && want != 0 {
		return
	}
	t.Fatalf("%s: got %v (%T), want %s", what, err, err, errnoName(want))
}

// MustErrnoIs fails the test unless errors.Is(err, want) (0: err must be
// nil): err may wrap the errno.
func MustErrnoIs(t testing.TB, what string, err error, want syscall.Errno) {
	t.Helper()
	if want == 0 && err == nil || want != 0 && errors.Is(err, want) {
		return
	}
	t.Fatalf("%s: got %v, want %s", what, err, errnoName(want))
}

func errnoName(e syscall.Errno) string {
	if e == 0 {
		return "success"
	}
	return e.Error()
}
