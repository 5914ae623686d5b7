package uring

import "golang.org/x/sys/unix"

// URING_CMD operations: a command that the file's driver interprets
// (FUSE over io_uring, NVMe passthrough, socket commands). On a loop
// whose Config.SQE128 is set the command area is 80 bytes.

// PrepURingCmd prepares IORING_OP_URING_CMD with driver command cmdOp on
// fd. Addr and Len are the driver's to interpret; set them after.
func (e *SQE) PrepURingCmd(fd int32, cmdOp uint32) {
	*e = SQE{Opcode: OpURingCmd, Fd: fd, Off: uint64(cmdOp)}
}

// Socket URING_CMD commands (SOCKET_URING_OP_*).
const (
	SocketCmdSIOCINQ  = 0
	SocketCmdSIOCOUTQ = 1
)

// SubmitCmd is Submit for a URING_CMD SQE whose command area holds cmd
// (at most CmdSize bytes; the loop needs Config.SQE128 when cmd is
// longer than 16 bytes, which is all that fits in a 64-byte SQE). The
// SQE goes straight into the ring: when the ring has no room even after
// submitting what is queued (or SQEs wait in the backlog, which must keep
// their order), SubmitCmd fails with EBUSY and the caller tries again
// later.
func (l *Loop) SubmitCmd(e *SQE, cmd []byte, h Handler, tag uint64) (OpID, error) {
	if err := l.check(); err != nil {
		return 0, err
	}
	if len(cmd) > 16 && !l.ring.SQE128() {
		return 0, unix.EINVAL
	}
	if len(l.backlog) > 0 {
		l.flushBacklog()
	}
	s := l.sqe()
	if s == nil {
		return 0, unix.EBUSY
	}
	_, ud := l.allocSlot(h, tag, 0)
	e.UserData = ud
	*s = *e
	if l.ring.SQE128() {
		l.ring.PutCmd(s, cmd)
	} else {
		putCmd16(s, cmd)
	}
	return OpID(ud), nil
}

// putCmd16 places up to 16 bytes of command in a 64-byte SQE's area
// (Addr3 and the last word).
func putCmd16(s *SQE, cmd []byte) {
	var b [16]byte
	copy(b[:], cmd)
	s.Addr3 = le64(b[0:])
	s.pad = le64(b[8:])
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}
