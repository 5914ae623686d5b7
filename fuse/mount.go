package fuse

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// openDev opens /dev/fuse. The fd is non-blocking, so a ring READ on it
// never blocks a kernel worker: one that finds no request ends with
// EAGAIN, and the slot then waits in a ring POLL_ADD (slot.poll).
func openDev() (int, error) {
	fd, err := unix.Open("/dev/fuse", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("fuse: open /dev/fuse: %w", err)
	}
	return fd, nil
}

// mount mounts a FUSE filesystem served on fd at dir with mount(2) (as
// root no fusermount is needed): other users may use it (allow_other),
// and the kernel checks permissions from the modes (default_permissions).
func mount(fd int, dir string, maxRead int) error {
	st, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("fuse: mount point: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("fuse: mount point %s is not a directory", dir)
	}
	opts := fmt.Sprintf("fd=%d,rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions,max_read=%d", fd, maxRead)
	if err := unix.Mount("udm", dir, "fuse.udm", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOATIME, opts); err != nil {
		return fmt.Errorf("fuse: mount %s: %w", dir, err)
	}
	return nil
}

// unmount unmounts dir; if it is busy (a loop device holds a file open)
// it is detached lazily instead and busy is true: the filesystem stays
// reachable to its users until they let go, or until the connection is
// aborted.
func unmount(dir string) (busy bool, err error) {
	err = unix.Unmount(dir, 0)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return false, nil // EINVAL: not (or no longer) a mount point
	}
	if !errors.Is(err, unix.EBUSY) {
		return false, fmt.Errorf("fuse: unmount %s: %w", dir, err)
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return true, fmt.Errorf("fuse: lazy unmount %s: %w", dir, err)
	}
	return true, nil
}

// abortConn aborts the FUSE connection whose superblock is dev (st_dev of
// the mount's root) through the fusectl filesystem: every request still
// queued or in flight ends with ENOTCONN on the kernel side, and the ring
// entries registered with it complete. Used when a lazy unmount left
// users holding files: the server is going away. fusectl is one
// filesystem wherever it is mounted; where /sys/fs/fuse/connections
// isn't it, it is mounted on a private directory for the write.
func abortConn(dev uint64) error {
	name := fmt.Sprintf("%d/abort", unix.Minor(dev))
	const sys = "/sys/fs/fuse/connections"
	if err := os.WriteFile(filepath.Join(sys, name), []byte("1"), 0); err == nil {
		return nil
	}
	tmp, err := os.MkdirTemp("", "udm-fusectl-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := unix.Mount("fusectl", tmp, "fusectl", 0, ""); err != nil {
		return fmt.Errorf("fuse: mount fusectl: %w", err)
	}
	defer unix.Unmount(tmp, unix.MNT_DETACH)
	if err := os.WriteFile(filepath.Join(tmp, name), []byte("1"), 0); err != nil {
		return fmt.Errorf("fuse: abort connection %d: %w", unix.Minor(dev), err)
	}
	return nil
}

// mountDev finds the device number of the FUSE mount at dir in
// /proc/self/mountinfo (the last mount there wins), 0 if none.
func mountDev(dir string) uint64 {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return 0
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0
	}
	var dev uint64
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != abs {
			continue
		}
		var maj, min uint32
		if _, err := fmt.Sscanf(f[2], "%d:%d", &maj, &min); err == nil {
			dev = unix.Mkdev(maj, min)
		}
	}
	return dev
}
