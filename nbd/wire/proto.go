package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
)

// Wire constants of the NBD protocol (NetworkBlockDevice doc/proto.md).
const (
	NBDMagic      uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	IHaveOpt      uint64 = 0x49484156454F5054 // "IHAVEOPT"
	OptReplyMagic uint64 = 0x3e889045565a9
	RequestMagic  uint32 = 0x25609513
	SimpleMagic   uint32 = 0x67446698
	StructMagic   uint32 = 0x668e33ef

	RequestSize       = 28
	SimpleReplySize   = 16
	StructReplySize   = 20
	OptionHeaderSize  = 16
	OptReplyHeaderLen = 20
)

// Handshake flags (server) and client flags.
const (
	FlagFixedNewstyle   uint16 = 1 << 0
	FlagNoZeroes        uint16 = 1 << 1
	ClientFixedNewstyle uint32 = 1 << 0
	ClientNoZeroes      uint32 = 1 << 1
)

// Options.
const (
	OptExportName      uint32 = 1
	OptAbort           uint32 = 2
	OptList            uint32 = 3
	OptPeekExport      uint32 = 4
	OptStartTLS        uint32 = 5
	OptInfo            uint32 = 6
	OptGo              uint32 = 7
	OptStructuredReply uint32 = 8
	OptListMetaContext uint32 = 9
	OptSetMetaContext  uint32 = 10
	OptExtendedHeaders uint32 = 11
)

// Option reply types.
const (
	RepAck         uint32 = 1
	RepServer      uint32 = 2
	RepInfo        uint32 = 3
	RepMetaContext uint32 = 4

	repErr             uint32 = 1 << 31
	RepErrUnsup        uint32 = repErr | 1
	RepErrPolicy       uint32 = repErr | 2
	RepErrInvalid      uint32 = repErr | 3
	RepErrPlatform     uint32 = repErr | 4
	RepErrTLSReqd      uint32 = repErr | 5
	RepErrUnknown      uint32 = repErr | 6
	RepErrShutdown     uint32 = repErr | 7
	RepErrBlockSizeReq uint32 = repErr | 8
	RepErrTooBig       uint32 = repErr | 9
)

// IsRepErr reports whether an option reply type is an error.
func IsRepErr(t uint32) bool { return t&repErr != 0 }

// Info types (NBD_INFO_*).
const (
	InfoExport      uint16 = 0
	InfoName        uint16 = 1
	InfoDescription uint16 = 2
	InfoBlockSize   uint16 = 3
)

// Transmission flags.
const (
	TFlagHasFlags        uint16 = 1 << 0
	TFlagReadOnly        uint16 = 1 << 1
	TFlagSendFlush       uint16 = 1 << 2
	TFlagSendFUA         uint16 = 1 << 3
	TFlagRotational      uint16 = 1 << 4
	TFlagSendTrim        uint16 = 1 << 5
	TFlagSendWriteZeroes uint16 = 1 << 6
	TFlagSendDF          uint16 = 1 << 7
	TFlagCanMultiConn    uint16 = 1 << 8
	TFlagSendResize      uint16 = 1 << 9
	TFlagSendCache       uint16 = 1 << 10
	TFlagSendFastZero    uint16 = 1 << 11
)

// Commands.
const (
	CmdRead        uint16 = 0
	CmdWrite       uint16 = 1
	CmdDisc        uint16 = 2
	CmdFlush       uint16 = 3
	CmdTrim        uint16 = 4
	CmdCache       uint16 = 5
	CmdWriteZeroes uint16 = 6
	CmdBlockStatus uint16 = 7
)

// Command flags.
const (
	CmdFlagFUA      uint16 = 1 << 0
	CmdFlagNoHole   uint16 = 1 << 1
	CmdFlagDF       uint16 = 1 << 2
	CmdFlagReqOne   uint16 = 1 << 3
	CmdFlagFastZero uint16 = 1 << 4
)

// Structured reply flags and types.
const (
	ReplyFlagDone      uint16 = 1 << 0
	ReplyNone          uint16 = 0
	ReplyOffsetData    uint16 = 1
	ReplyOffsetHole    uint16 = 2
	ReplyBlockStatus   uint16 = 5
	ReplyError         uint16 = 1<<15 | 1
	ReplyErrorOffset   uint16 = 1<<15 | 2
	StateHole          uint32 = 1 << 0
	StateZero          uint32 = 1 << 1
	MetaBaseAllocation        = "base:allocation"
)

// NBD error values (what goes on the wire; not Linux errno numbers in
// general, though they coincide for these).
const (
	EPERM     uint32 = 1
	EIO       uint32 = 5
	ENOMEM    uint32 = 12
	EINVAL    uint32 = 22
	ENOSPC    uint32 = 28
	EOVERFLOW uint32 = 75
	ENOTSUP   uint32 = 95
	ESHUTDOWN uint32 = 108
)

// FromErrno maps an I/O error to the NBD error sent to the client.
func FromErrno(err error) uint32 {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if !errors.As(err, &e) {
		return EIO
	}
	switch e {
	case syscall.EPERM, syscall.EROFS, syscall.EACCES:
		return EPERM
	case syscall.ENOMEM:
		return ENOMEM
	case syscall.EINVAL:
		return EINVAL
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return ENOSPC
	case syscall.EOVERFLOW:
		return EOVERFLOW
	case syscall.EOPNOTSUPP:
		return ENOTSUP
	case syscall.ESHUTDOWN:
		return ESHUTDOWN
	}
	return EIO
}

// ToErrno maps an NBD error from the server to a syscall.Errno.
func ToErrno(v uint32) error {
	switch v {
	case 0:
		return nil
	case EPERM:
		return syscall.EPERM
	case ENOMEM:
		return syscall.ENOMEM
	case EINVAL:
		return syscall.EINVAL
	case ENOSPC:
		return syscall.ENOSPC
	case EOVERFLOW:
		return syscall.EOVERFLOW
	case ENOTSUP:
		return syscall.EOPNOTSUPP
	case ESHUTDOWN:
		return syscall.ESHUTDOWN
	}
	return syscall.EIO
}

// Request is a transmission-phase request header.
type Request struct {
	Flags  uint16
	Type   uint16
	Cookie uint64
	Offset uint64
	Length uint32
}

// ErrBadMagic means a request didn't start with the request magic: the
// stream is out of sync and the connection must close.
var ErrBadMagic = errors.New("nbd: bad request magic")

// ParseRequest decodes a 28-byte request header.
func ParseRequest(b []byte) (Request, error) {
	if len(b) < RequestSize {
		return Request{}, fmt.Errorf("nbd: short request header (%d bytes)", len(b))
	}
	if binary.BigEndian.Uint32(b[0:]) != RequestMagic {
		return Request{}, ErrBadMagic
	}
	return Request{
		Flags:  binary.BigEndian.Uint16(b[4:]),
		Type:   binary.BigEndian.Uint16(b[6:]),
		Cookie: binary.BigEndian.Uint64(b[8:]),
		Offset: binary.BigEndian.Uint64(b[16:]),
		Length: binary.BigEndian.Uint32(b[24:]),
	}, nil
}

// Encode writes the request header into b (28 bytes).
func (r Request) Encode(b []byte) {
	binary.BigEndian.PutUint32(b[0:], RequestMagic)
	binary.BigEndian.PutUint16(b[4:], r.Flags)
	binary.BigEndian.PutUint16(b[6:], r.Type)
	binary.BigEndian.PutUint64(b[8:], r.Cookie)
	binary.BigEndian.PutUint64(b[16:], r.Offset)
	binary.BigEndian.PutUint32(b[24:], r.Length)
}

// PutSimpleReply writes a 16-byte simple reply header.
func PutSimpleReply(b []byte, wireErr uint32, cookie uint64) {
	binary.BigEndian.PutUint32(b[0:], SimpleMagic)
	binary.BigEndian.PutUint32(b[4:], wireErr)
	binary.BigEndian.PutUint64(b[8:], cookie)
}

// PutStructuredHeader writes a 20-byte structured reply chunk header.
func PutStructuredHeader(b []byte, flags, typ uint16, cookie uint64, length uint32) {
	binary.BigEndian.PutUint32(b[0:], StructMagic)
	binary.BigEndian.PutUint16(b[4:], flags)
	binary.BigEndian.PutUint16(b[6:], typ)
	binary.BigEndian.PutUint64(b[8:], cookie)
	binary.BigEndian.PutUint32(b[16:], length)
}

// OptionHeader is a client option's header (after the IHAVEOPT magic
// has been checked).
type OptionHeader struct {
	Option uint32
	Length uint32
}

// ParseOptionHeader decodes the 16-byte option header.
func ParseOptionHeader(b []byte) (OptionHeader, error) {
	if len(b) < OptionHeaderSize {
		return OptionHeader{}, fmt.Errorf("nbd: short option header")
	}
	if binary.BigEndian.Uint64(b[0:]) != IHaveOpt {
		return OptionHeader{}, fmt.Errorf("nbd: bad option magic %#x", binary.BigEndian.Uint64(b[0:]))
	}
	return OptionHeader{Option: binary.BigEndian.Uint32(b[8:]), Length: binary.BigEndian.Uint32(b[12:])}, nil
}

// PutOptionHeader encodes an option header.
func PutOptionHeader(b []byte, opt, length uint32) {
	binary.BigEndian.PutUint64(b[0:], IHaveOpt)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], length)
}

// AppendOptionReply appends an option reply with data.
func AppendOptionReply(dst []byte, opt, typ uint32, data []byte) []byte {
	var h [OptReplyHeaderLen]byte
	binary.BigEndian.PutUint64(h[0:], OptReplyMagic)
	binary.BigEndian.PutUint32(h[8:], opt)
	binary.BigEndian.PutUint32(h[12:], typ)
	binary.BigEndian.PutUint32(h[16:], uint32(len(data)))
	dst = append(dst, h[:]...)
	return append(dst, data...)
}

// OptionReply is a decoded option reply header.
type OptionReply struct {
	Option uint32
	Type   uint32
	Length uint32
}

// ParseOptionReply decodes a 20-byte option reply header.
func ParseOptionReply(b []byte) (OptionReply, error) {
	if len(b) < OptReplyHeaderLen {
		return OptionReply{}, fmt.Errorf("nbd: short option reply")
	}
	if binary.BigEndian.Uint64(b[0:]) != OptReplyMagic {
		return OptionReply{}, fmt.Errorf("nbd: bad option reply magic %#x", binary.BigEndian.Uint64(b[0:]))
	}
	return OptionReply{Option: binary.BigEndian.Uint32(b[8:]), Type: binary.BigEndian.Uint32(b[12:]), Length: binary.BigEndian.Uint32(b[16:])}, nil
}

// GoRequest is the payload of NBD_OPT_GO and NBD_OPT_INFO.
type GoRequest struct {
	Name  string
	Infos []uint16
}

// ParseGoRequest decodes an OPT_GO/OPT_INFO payload:
// u32 name length, name, u16 number of info requests, u16 each.
func ParseGoRequest(data []byte) (GoRequest, error) {
	if len(data) < 6 {
		return GoRequest{}, fmt.Errorf("nbd: GO/INFO payload of %d bytes is too short", len(data))
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n)+6 > uint64(len(data)) {
		return GoRequest{}, fmt.Errorf("nbd: export name length %d exceeds the option", n)
	}
	g := GoRequest{Name: string(data[4 : 4+n])}
	rest := data[4+n:]
	k := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*k {
		return GoRequest{}, fmt.Errorf("nbd: %d info requests need %d bytes, have %d", k, 2*k, len(rest))
	}
	for i := 0; i < k; i++ {
		g.Infos = append(g.Infos, binary.BigEndian.Uint16(rest[2*i:]))
	}
	return g, nil
}

// AppendGoRequest encodes an OPT_GO/OPT_INFO payload.
func AppendGoRequest(dst []byte, g GoRequest) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(g.Name)))
	dst = append(dst, g.Name...)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(g.Infos)))
	for _, i := range g.Infos {
		dst = binary.BigEndian.AppendUint16(dst, i)
	}
	return dst
}

// MetaContextRequest is the payload of LIST/SET_META_CONTEXT.
type MetaContextRequest struct {
	Export  string
	Queries []string
}

// ParseMetaContextRequest decodes u32 export length, export, u32 number
// of queries, then each as u32 length + bytes.
func ParseMetaContextRequest(data []byte) (MetaContextRequest, error) {
	var m MetaContextRequest
	if len(data) < 8 {
		return m, fmt.Errorf("nbd: meta context payload too short")
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n)+8 > uint64(len(data)) {
		return m, fmt.Errorf("nbd: meta context export name overruns the option")
	}
	m.Export = string(data[4 : 4+n])
	rest := data[4+n:]
	k := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	for i := uint32(0); i < k; i++ {
		if len(rest) < 4 {
			return m, fmt.Errorf("nbd: meta context query %d truncated", i)
		}
		l := binary.BigEndian.Uint32(rest)
		if uint64(l)+4 > uint64(len(rest)) {
			return m, fmt.Errorf("nbd: meta context query %d overruns the option", i)
		}
		m.Queries = append(m.Queries, string(rest[4:4+l]))
		rest = rest[4+l:]
	}
	if len(rest) != 0 {
		return m, fmt.Errorf("nbd: %d trailing bytes after meta context queries", len(rest))
	}
	return m, nil
}

// AppendMetaContextRequest encodes a LIST/SET_META_CONTEXT payload.
func AppendMetaContextRequest(dst []byte, m MetaContextRequest) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(m.Export)))
	dst = append(dst, m.Export...)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(m.Queries)))
	for _, q := range m.Queries {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(q)))
		dst = append(dst, q...)
	}
	return dst
}
