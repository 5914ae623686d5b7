package uring

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// BlockFile is a regular file or block device opened for block I/O.
type BlockFile struct {
	Fd       int
	Path     string
	Size     int64 // bytes
	LBS      int   // logical block size: the alignment O_DIRECT needs
	ReadOnly bool
	IsBlock  bool // a block device rather than a regular file
	Direct   bool // opened with O_DIRECT
	Dev      uint64
	Ino      uint64
}

// OpenOptions tune OpenBlock.
type OpenOptions struct {
	ReadOnly bool
	// Buffered opens without O_DIRECT (for file systems that refuse it).
	Buffered bool
	// AllowBuffered falls back to buffered I/O when O_DIRECT is refused
	// instead of failing.
	AllowBuffered bool
}

// ErrNoDirect is returned when the file system refuses O_DIRECT.
var ErrNoDirect = errors.New("uring: O_DIRECT not supported here")

// OpenBlock opens path with O_DIRECT (unless opt says otherwise) and reads
// its size, logical block size and read-only state. A device that refuses
// writes is opened read-only and reported as such.
func OpenBlock(path string, opt OpenOptions) (*BlockFile, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("uring: open %s: %w", path, err)
	}
	mode := st.Mode & unix.S_IFMT
	if mode != unix.S_IFREG && mode != unix.S_IFBLK {
		return nil, fmt.Errorf("uring: open %s: not a regular file or block device", path)
	}
	flags := unix.O_CLOEXEC
	if !opt.Buffered {
		flags |= unix.O_DIRECT
	}
	ro := opt.ReadOnly
	open := func(flags int) (int, error) {
		acc := unix.O_RDWR
		if ro {
			acc = unix.O_RDONLY
		}
		for {
			fd, err := unix.Open(path, flags|acc, 0)
			if err == unix.EINTR {
				continue
			}
			if (err == unix.EROFS || err == unix.EACCES || err == unix.EPERM) && !ro {
				ro = true
				acc = unix.O_RDONLY
				continue
			}
			return fd, err
		}
	}
	fd, err := open(flags)
	direct := !opt.Buffered
	if err == unix.EINVAL && !opt.Buffered {
		if !opt.AllowBuffered {
			return nil, fmt.Errorf("uring: open %s: %w (the file system refuses O_DIRECT; put the file on another file system or a loop device)", path, ErrNoDirect)
		}
		direct = false
		fd, err = open(flags &^ unix.O_DIRECT)
	}
	if err != nil {
		return nil, fmt.Errorf("uring: open %s: %w", path, err)
	}
	f := &BlockFile{Fd: fd, Path: path, ReadOnly: ro, IsBlock: mode == unix.S_IFBLK, Direct: direct, Dev: st.Dev, Ino: st.Ino}
	if err := f.probe(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return f, nil
}

func (f *BlockFile) probe() error {
	if f.IsBlock {
		sz, err := unix.IoctlGetUint64(f.Fd, unix.BLKGETSIZE64)
		if err != nil {
			return fmt.Errorf("uring: %s: BLKGETSIZE64: %w", f.Path, err)
		}
		f.Size = int64(sz)
		lbs, err := unix.IoctlGetInt(f.Fd, unix.BLKSSZGET)
		if err != nil {
			return fmt.Errorf("uring: %s: BLKSSZGET: %w", f.Path, err)
		}
		f.LBS = lbs
		if ro, err := unix.IoctlGetInt(f.Fd, unix.BLKROGET); err == nil && ro != 0 {
			f.ReadOnly = true
		}
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.Fd, &st); err != nil {
		return fmt.Errorf("uring: %s: stat: %w", f.Path, err)
	}
	f.Size = st.Size
	f.LBS = 512
	if f.Direct {
		var stx unix.Statx_t
		if err := unix.Statx(f.Fd, "", unix.AT_EMPTY_PATH, unix.STATX_DIOALIGN, &stx); err == nil &&
			stx.Mask&unix.STATX_DIOALIGN != 0 && stx.Dio_offset_align > 0 {
			f.LBS = int(stx.Dio_offset_align)
		}
	}
	return nil
}

// CurrentSize reads the file's or device's size now (it may have grown or
// shrunk since the open); f itself is not changed, so that readers of
// f.Size on other threads see no write.
func (f *BlockFile) CurrentSize() (int64, error) {
	if f.IsBlock {
		sz, err := unix.IoctlGetUint64(f.Fd, unix.BLKGETSIZE64)
		if err != nil {
			return 0, fmt.Errorf("uring: %s: BLKGETSIZE64: %w", f.Path, err)
		}
		return int64(sz), nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.Fd, &st); err != nil {
		return 0, fmt.Errorf("uring: %s: stat: %w", f.Path, err)
	}
	return st.Size, nil
}

// Close closes the file.
func (f *BlockFile) Close() error {
	if f.Fd < 0 {
		return nil
	}
	err := unix.Close(f.Fd)
	f.Fd = -1
	return err
}
