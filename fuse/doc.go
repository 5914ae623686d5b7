// Package fuse serves dm devices to the host kernel through a FUSE mount:
// every device is a regular file DIR/NAME of the device's size (mode
// 0444 when the device is read-only), there while the device is, so that
// `losetup --direct-io=on -f --show DIR/NAME` gives a kernel block device
// on kernels without nbd or ublk.
//
// # Requests and bios
//
// Files are opened with FOPEN_DIRECT_IO (and parallel direct writes) and
// INIT negotiates asynchronous direct I/O, MaxWrite-sized requests
// (FUSE_MAX_PAGES) and 256 background requests, so a loop device's
// queue reaches the server whole. READ and WRITE become bios straight
// into and out of a page-aligned buffer of the loop's arena; FSYNC and
// FLUSH an empty flush; FALLOCATE PUNCH_HOLE|KEEP_SIZE a discard,
// ZERO_RANGE a write-zeroes. An unaligned read reads the sectors around
// it; an unaligned write (bytes written to the file without O_DIRECT:
// FOPEN_DIRECT_IO passes the user's offsets through) is a
// read-modify-write of the partial sectors at its ends. A device's
// writes in flight are tracked (wtrack, exchange.go): a
// read-modify-write runs alongside no write it overlaps, so none is
// lost. A suspended
// device holds the bios exactly as it holds NBD's: the kernel's request
// waits, and a noflush reload under a filesystem is invisible to it.
// LOOKUP, GETATTR (attributes are never cached: sizes follow the
// tables), OPEN/RELEASE (a device Open each), READDIR and STATFS are
// the metadata; xattrs are ENOSYS; a device's size can't be truncated.
//
// # Transports
//
// Each loop has request slots (Config.Slots) and /dev/fuse in its fixed
// file table; a request runs to completion on the loop that took it,
// through dm to the backing device and back, with no goroutine hop.
//
//   - Classic: each slot keeps a READV of /dev/fuse in flight (header
//     and a WRITE's arguments in one buffer, the rest in the data
//     buffer, so a WRITE's payload lands aligned); the reply is a WRITEV.
//   - FUSE over io_uring (when INIT offers FUSE_OVER_IO_URING and the
//     loops have 128-byte SQEs): entries are registered per possible CPU
//     with FUSE_IO_URING_CMD_REGISTER and answered with
//     COMMIT_AND_FETCH, URING_CMDs on the same loops (ringq.go). The
//     kernel gives a request only to the queue of the CPU that sent it,
//     so each online CPU's queue has Config.RingSlots entries (128, a
//     loop device's depth): Slots of them with arena buffers, the rest
//     with mappings of their own, touched only as deep as the load goes.
//     INIT, FORGET and INTERRUPT still come through the classic slots.
//
// Both transports share exchange.go: reqSlot (what a transport does),
// reqCore (a request from taken to answered: its bio, a READ's span, an
// ordered write's state) and the write tracking.
//
// # Locks
//
// Server.mu guards the node and handle tables; the data path reads the
// handle map without it (the map is copied on open and release). It is
// held over map updates only: no I/O, no call into dm or the registry
// and no other lock while it is held, so it nests with nothing.
package fuse
