package dm

import (
	"errors"
	"fmt"
	"syscall"
)

// Error is a dm error with the errno the kernel would return for it:
// errors.Is matches both the sentinel and that syscall.Errno, so callers
// (the control API, the CLI) can map any dm error to an errno.
type Error struct {
	msg   string
	errno syscall.Errno
}

func newError(msg string, errno syscall.Errno) *Error { return &Error{msg: msg, errno: errno} }

// Error is the message, prefixed "dm: ".
func (e *Error) Error() string { return e.msg }

// Errno is the errno the kernel returns in the same situation.
func (e *Error) Errno() syscall.Errno { return e.errno }

// Is makes errors.Is(err, syscall.EINVAL) (etc.) true for dm errors.
func (e *Error) Is(target error) bool {
	t, ok := target.(syscall.Errno)
	return ok && t == e.errno
}

// ErrRequeue is the BLK_STS_DM_REQUEUE equivalent: a clone finished with
// it (Clone.Finish, or a Requeue result from Map or EndIO) pushes its bio
// back to the core, which parks it during a noflush suspend and ends it
// with EIO otherwise. It never reaches a bio's Endio.
var ErrRequeue = errors.New("dm: requeue")

// Sentinels returned by the core. Each also matches its errno.
var (
	ErrInvalidTable  = newError("dm: invalid table", syscall.EINVAL)
	ErrUnknownTarget = newError("dm: unknown target type", syscall.EINVAL)
	ErrImmutable     = newError("dm: can't replace immutable target type", syscall.EINVAL)
	ErrNoTable       = newError("dm: no live table", syscall.EINVAL)
	ErrZeroSize      = newError("dm: table has zero size", syscall.EINVAL)
	ErrInterrupted   = newError("dm: suspend interrupted", syscall.EINTR)
	ErrSuspended     = newError("dm: device suspended", syscall.EBUSY)
	ErrBusy          = newError("dm: device busy", syscall.EBUSY)
	ErrExists        = newError("dm: device exists", syscall.EEXIST)
	ErrNoDevice      = newError("dm: no such device", syscall.ENXIO)
	ErrRemoved       = newError("dm: device removed", syscall.ENXIO)
	ErrNotOpen       = newError("dm: device not open", syscall.EINVAL)
	ErrBadMessage    = newError("dm: invalid message", syscall.EINVAL)
	ErrBadName       = newError("dm: invalid device name", syscall.EINVAL)
	ErrLoop          = newError("dm: device would stack on itself", syscall.ELOOP)
)

// interrupted is the error of a suspend whose context ended.
func interrupted(cause error) error { return fmt.Errorf("%w: %w", ErrInterrupted, cause) }

// errnoOf turns a clone's error into the errno its bio reports.
func errnoOf(err error) syscall.Errno {
	if e, ok := err.(syscall.Errno); ok && e != 0 {
		return e
	}
	var de *Error
	if errors.As(err, &de) {
		return de.errno
	}
	var e syscall.Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	return syscall.EIO
}
