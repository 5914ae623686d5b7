package multipath

import (
	"errors"
	"syscall"
)

// Error is a multipath error carrying the errno the kernel returns in the
// same situation: errors.Is matches both the sentinel and that
// syscall.Errno (so errors.Is(err, syscall.EINVAL) holds for a bad
// message).
type Error struct {
	msg   string
	errno syscall.Errno
}

func (e *Error) Error() string { return e.msg }

// Errno is the errno the kernel returns in the same situation.
func (e *Error) Errno() syscall.Errno { return e.errno }

// Is makes errors.Is(err, syscall.EINVAL) (etc.) true.
func (e *Error) Is(target error) bool {
	t, ok := target.(syscall.Errno)
	return ok && t == e.errno
}

// Sentinels. Each also matches its errno.
var (
	ErrBadTable    = &Error{"multipath: invalid table", syscall.EINVAL}
	ErrBadMessage  = &Error{"multipath: invalid message", syscall.EINVAL}
	ErrUnknownPath = &Error{"multipath: no such path", syscall.EINVAL}
	ErrBadGroup    = &Error{"multipath: invalid priority group", syscall.EINVAL}
	ErrSuspended   = &Error{"multipath: device suspended", syscall.EBUSY}
	ErrNoMap       = &Error{"multipath: no such map", syscall.ENXIO}
)

// IsPathError reports whether an I/O error on a path says the path (the
// transport) failed, so the I/O should be retried on another path, as
// opposed to an error about the I/O itself, which goes to the caller and
// leaves the path alone. Like the kernel's blk_path_error, everything is a
// path error except: no space, not supported, invalid argument, read-only
// or not permitted, medium and protection errors (EILSEQ, EBADMSG,
// ENODATA), target errors (EREMOTEIO) and reservation conflicts (EBADE).
// canceled says whether the caller canceled the I/O: ECANCELED is then
// the caller's doing, not the path's.
func IsPathError(err error, canceled bool) bool {
	if err == nil {
		return false
	}
	var e syscall.Errno
	if !errors.As(err, &e) {
		return true // an error without an errno: assume the transport
	}
	switch e {
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG,
		syscall.EOPNOTSUPP, syscall.EINVAL,
		syscall.EROFS, syscall.EPERM, syscall.EACCES,
		syscall.EILSEQ, syscall.EBADMSG, syscall.ENODATA,
		syscall.EREMOTEIO, syscall.EBADE:
		return false
	case syscall.ECANCELED:
		return !canceled
	}
	return true
}
