package uring

// Kernel ABI of io_uring (include/uapi/linux/io_uring.h). Only what udm uses
// is declared; values are fixed by the kernel ABI.

// Setup flags (io_uring_params.flags).
const (
	SetupIOPoll        = 1 << 0
	SetupSQPoll        = 1 << 1
	SetupCQSize        = 1 << 3
	SetupClamp         = 1 << 4
	SetupSubmitAll     = 1 << 7
	SetupSQE128        = 1 << 10
	SetupCoopTaskrun   = 1 << 8
	SetupTaskrunFlag   = 1 << 9
	SetupSingleIssuer  = 1 << 12
	SetupDeferTaskrun  = 1 << 13
	setupNoSQArray     = 1 << 16
	defaultSetupFlags  = SetupSubmitAll | SetupCoopTaskrun | SetupTaskrunFlag | SetupSingleIssuer | SetupDeferTaskrun
	fallbackSetupFlags = SetupSubmitAll | SetupCoopTaskrun | SetupTaskrunFlag
)

// Features reported by the kernel (io_uring_params.features).
const (
	FeatSingleMmap = 1 << 0
	FeatNoDrop     = 1 << 1
	FeatExtArg     = 1 << 8
	FeatMinTimeout = 1 << 15
)

// Opcodes.
const (
	OpNop           uint8 = 0
	OpReadv         uint8 = 1
	OpWritev        uint8 = 2
	OpFsync         uint8 = 3
	OpReadFixed     uint8 = 4
	OpWriteFixed    uint8 = 5
	OpPollAdd       uint8 = 6
	OpPollRemove    uint8 = 7
	OpSendmsg       uint8 = 9
	OpRecvmsg       uint8 = 10
	OpTimeout       uint8 = 11
	OpTimeoutRemove uint8 = 12
	OpAccept        uint8 = 13
	OpAsyncCancel   uint8 = 14
	OpLinkTimeout   uint8 = 15
	OpConnect       uint8 = 16
	OpFallocate     uint8 = 17
	OpClose         uint8 = 19
	OpRead          uint8 = 22
	OpWrite         uint8 = 23
	OpSend          uint8 = 26
	OpRecv          uint8 = 27
	OpShutdown      uint8 = 34
	OpURingCmd      uint8 = 46
)

// SQE flags (sqe.Flags).
const (
	SQEFixedFile        uint8  = 1 << 0
	SQEIODrain          uint8  = 1 << 1
	SQEIOLink           uint8  = 1 << 2
	SQEIOHardlink       uint8  = 1 << 3
	SQEAsync            uint8  = 1 << 4
	SQEBufferSelect     uint8  = 1 << 5
	SQECQESkipSuccess   uint8  = 1 << 6
	fsyncDatasync       uint32 = 1
	timeoutAbs          uint32 = 1
	asyncCancelAll      uint32 = 1 << 0
	asyncCancelAny      uint32 = 1 << 2
	enterGetEvents      uint32 = 1 << 0
	enterExtArg         uint32 = 1 << 3
	enterRegisteredRing uint32 = 1 << 4
)

// CQE flags.
const (
	CQEFBuffer uint32 = 1 << 0
	CQEFMore   uint32 = 1 << 1
)

// SQ ring flags (read from the ring).
const (
	sqNeedWakeup = 1 << 0
	sqCQOverflow = 1 << 1
	sqTaskrun    = 1 << 2
)

// mmap offsets.
const (
	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000
)

// io_uring_register opcodes.
const (
	regBuffers      = 0
	regUnregBuffers = 1
	regFiles        = 2
	regUnregFiles   = 3
	regFilesUpdate  = 6
	regProbe        = 8
	regRingFDs      = 20
	regUnregRingFDs = 21
)

// RWF_* flags for READ/WRITE op_flags.
const (
	RWFHiPri  = 0x1
	RWFDsync  = 0x2
	RWFSync   = 0x4
	RWFNoWait = 0x8
)

// fallocate modes for OpFallocate.
const (
	FallocKeepSize  = 0x01
	FallocPunchHole = 0x02
	FallocZeroRange = 0x10
)

type sqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Flags, Dropped, Array, Resv1 uint32
	UserAddr                                                        uint64
}

type cqringOffsets struct {
	Head, Tail, RingMask, RingEntries, Overflow, CQEs, Flags, Resv1 uint32
	UserAddr                                                        uint64
}

type params struct {
	SQEntries    uint32
	CQEntries    uint32
	Flags        uint32
	SQThreadCPU  uint32
	SQThreadIdle uint32
	Features     uint32
	WQFd         uint32
	Resv         [3]uint32
	SQOff        sqringOffsets
	CQOff        cqringOffsets
}

// SQE is a submission queue entry, laid out as struct io_uring_sqe (64 bytes).
type SQE struct {
	Opcode      uint8
	Flags       uint8
	Ioprio      uint16
	Fd          int32
	Off         uint64 // offset, or addr2
	Addr        uint64 // buffer address, or splice_off_in
	Len         uint32
	OpFlags     uint32 // rw_flags, fsync_flags, msg_flags, timeout_flags, ...
	UserData    uint64
	BufIndex    uint16 // buf_index or buf_group
	Personality uint16
	FileIndex   int32 // splice_fd_in or file_index
	Addr3       uint64
	pad         uint64 // the rest of the command area of a URING_CMD
}

// CQE is a completion queue entry, laid out as struct io_uring_cqe.
type CQE struct {
	UserData uint64
	Res      int32
	Flags    uint32
}

// Timespec is struct __kernel_timespec.
type Timespec struct {
	Sec  int64
	Nsec int64
}

type filesUpdate struct {
	Offset uint32
	Resv   uint32
	Fds    uint64
}

type getEventsArg struct {
	Sigmask   uint64
	SigmaskSz uint32
	MinWait   uint32
	Ts        uint64
}
