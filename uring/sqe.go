package uring

import "golang.org/x/sys/unix"

// Prep helpers fill an SQE for one operation. They reset the SQE first,
// so call them before setting Flags (such as SQEFixedFile via Fixed).
// Buffers and structures they point to must stay valid until the
// operation completes (timespecs and iovecs until it is submitted).

// Fixed marks the SQE's fd as an index into the fixed-file table.
func (e *SQE) Fixed() *SQE { e.Flags |= SQEFixedFile; return e }

// PrepNop prepares a no-op.
func (e *SQE) PrepNop() { *e = SQE{Opcode: OpNop} }

func (e *SQE) prepRW(op uint8, fd int32, addr uint64, n uint32, off uint64) {
	*e = SQE{Opcode: op, Fd: fd, Addr: addr, Len: n, Off: off}
}

// PrepPollAdd waits, once, until fd is ready for events (unix.POLLIN,
// ...); the result is the events that are.
func (e *SQE) PrepPollAdd(fd int32, events uint32) {
	*e = SQE{Opcode: OpPollAdd, Fd: fd, OpFlags: events}
}

// PrepRead reads len(buf) bytes at off.
func (e *SQE) PrepRead(fd int32, buf []byte, off uint64) {
	e.prepRW(OpRead, fd, addrOf(buf), uint32(len(buf)), off)
}

// PrepWrite writes buf at off; rwFlags may hold RWFDsync (FUA).
func (e *SQE) PrepWrite(fd int32, buf []byte, off uint64, rwFlags uint32) {
	e.prepRW(OpWrite, fd, addrOf(buf), uint32(len(buf)), off)
	e.OpFlags = rwFlags
}

// PrepReadFixed reads into buf, which lies in registered buffer bufIndex.
func (e *SQE) PrepReadFixed(fd int32, buf []byte, off uint64, bufIndex uint16) {
	e.prepRW(OpReadFixed, fd, addrOf(buf), uint32(len(buf)), off)
	e.BufIndex = bufIndex
}

// PrepWriteFixed writes buf, which lies in registered buffer bufIndex.
func (e *SQE) PrepWriteFixed(fd int32, buf []byte, off uint64, bufIndex uint16, rwFlags uint32) {
	e.prepRW(OpWriteFixed, fd, addrOf(buf), uint32(len(buf)), off)
	e.BufIndex = bufIndex
	e.OpFlags = rwFlags
}

// PrepReadv reads into iovs at off.
func (e *SQE) PrepReadv(fd int32, iovs []unix.Iovec, off uint64) {
	e.prepRW(OpReadv, fd, ptrAddr(&iovs[0]), uint32(len(iovs)), off)
}

// PrepWritev writes iovs at off.
func (e *SQE) PrepWritev(fd int32, iovs []unix.Iovec, off uint64, rwFlags uint32) {
	e.prepRW(OpWritev, fd, ptrAddr(&iovs[0]), uint32(len(iovs)), off)
	e.OpFlags = rwFlags
}

// PrepFsync flushes fd (data only with datasync).
func (e *SQE) PrepFsync(fd int32, datasync bool) {
	*e = SQE{Opcode: OpFsync, Fd: fd}
	if datasync {
		e.OpFlags = fsyncDatasync
	}
}

// PrepFallocate runs fallocate(fd, mode, off, length): FallocPunchHole|
// FallocKeepSize discards, FallocZeroRange|FallocKeepSize writes zeroes.
func (e *SQE) PrepFallocate(fd int32, mode uint32, off, length uint64) {
	*e = SQE{Opcode: OpFallocate, Fd: fd, Off: off, Addr: length, Len: mode}
}

// PrepRecv receives into buf.
func (e *SQE) PrepRecv(fd int32, buf []byte, msgFlags uint32) {
	e.prepRW(OpRecv, fd, addrOf(buf), uint32(len(buf)), 0)
	e.OpFlags = msgFlags
}

// PrepSend sends buf.
func (e *SQE) PrepSend(fd int32, buf []byte, msgFlags uint32) {
	e.prepRW(OpSend, fd, addrOf(buf), uint32(len(buf)), 0)
	e.OpFlags = msgFlags
}

// PrepSendmsg sends msg (a vectored send: header and payload in one).
func (e *SQE) PrepSendmsg(fd int32, msg *unix.Msghdr, msgFlags uint32) {
	e.prepRW(OpSendmsg, fd, ptrAddr(msg), 1, 0)
	e.OpFlags = msgFlags
}

// PrepRecvmsg receives into msg.
func (e *SQE) PrepRecvmsg(fd int32, msg *unix.Msghdr, msgFlags uint32) {
	e.prepRW(OpRecvmsg, fd, ptrAddr(msg), 1, 0)
	e.OpFlags = msgFlags
}

// PrepAccept accepts a connection on fd (SOCK_CLOEXEC etc. in flags).
func (e *SQE) PrepAccept(fd int32, flags uint32) {
	*e = SQE{Opcode: OpAccept, Fd: fd, OpFlags: flags}
}

// PrepConnect connects fd to the address at sa of length salen.
func (e *SQE) PrepConnect(fd int32, sa *unix.RawSockaddrAny, salen uint32) {
	*e = SQE{Opcode: OpConnect, Fd: fd, Addr: ptrAddr(sa), Off: uint64(salen)}
}

// PrepTimeout completes after ts (or after count other completions when
// count > 0) with -ETIME.
func (e *SQE) PrepTimeout(ts *Timespec, count uint64, flags uint32) {
	*e = SQE{Opcode: OpTimeout, Fd: -1, Addr: ptrAddr(ts), Len: 1, Off: count, OpFlags: flags}
}

// PrepLinkTimeout bounds the previous SQE of a link chain by ts.
func (e *SQE) PrepLinkTimeout(ts *Timespec, flags uint32) {
	*e = SQE{Opcode: OpLinkTimeout, Fd: -1, Addr: ptrAddr(ts), Len: 1, OpFlags: flags}
}

// PrepCancel cancels the operation with user_data target.
func (e *SQE) PrepCancel(target uint64, flags uint32) {
	*e = SQE{Opcode: OpAsyncCancel, Fd: -1, Addr: target, OpFlags: flags}
}

// PrepClose closes fd.
func (e *SQE) PrepClose(fd int32) {
	*e = SQE{Opcode: OpClose, Fd: fd}
}

// PrepShutdown shuts a socket down (how is unix.SHUT_RD etc.).
func (e *SQE) PrepShutdown(fd int32, how uint32) {
	*e = SQE{Opcode: OpShutdown, Fd: fd, Len: how}
}
