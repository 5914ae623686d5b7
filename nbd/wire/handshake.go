package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
)

// Export is what the server side of the handshake needs of an export.
type Export interface {
	Size() int64
	ReadOnly() bool
	// Open takes a reference on the export for a connection; Close gives
	// it back.
	Open() error
	Close() error
}

// Block sizes a server states (NBD_INFO_BLOCK_SIZE). A client that asks
// for them in its NBD_OPT_GO is told MinBlock and must align its requests
// to it; any other client is told (and may send) a minimum of 1 byte.
// prefBlock is the preferred size.
const (
	MinBlock  = 512
	prefBlock = 4096
)

// MaxString is the longest string the protocol carries: export names,
// meta context queries and option error messages. A longer name is
// refused with NBD_REP_ERR_INVALID; error messages are cut to it.
const MaxString = 4096

// Option payloads up to maxOptionLen bytes are read; longer ones up to
// maxOptionDrain bytes are drained and refused; longer still end the
// connection.
const (
	maxOptionLen   = 64 << 10
	maxOptionDrain = 1 << 20
)

// MetaContextID is the id of base:allocation, the one meta context a
// server offers.
const MetaContextID = 1

// ErrAbort means the client ended the handshake with NBD_OPT_ABORT.
var ErrAbort = errors.New("nbd: client aborted")

// Handshake is the server's side of the fixed-newstyle handshake as a
// state machine: it is fed what the client sent (its flags, then one
// option at a time) and returns what to send back and what happens next.
// It does no I/O; Negotiate drives it over a stream. A Handshake serves
// one connection: copy a configured value for each.
type Handshake struct {
	// Lookup finds the export called name ("" is the default export).
	Lookup func(name string) (Export, error)
	// List names every export (NBD_OPT_LIST); nil refuses LIST as
	// unsupported.
	List func() []string
	// Flags are the transmission flags of every export (TFlagHasFlags
	// and the commands served); TFlagReadOnly is added for a read-only
	// export and TFlagSendDF once structured replies are negotiated.
	Flags uint16
	// MaxPayload is the largest request a client may send (stated as the
	// maximum block size).
	MaxPayload uint32
	// NoStructured refuses structured replies (and so meta contexts).
	NoStructured bool
	// TLS says what STARTTLS gets (TLSOff when Upgrade is nil); Upgrade
	// runs the server side of the TLS handshake over the stream after
	// STARTTLS was acknowledged and returns the encrypted stream.
	TLS     TLSMode
	Upgrade func(io.ReadWriter) (io.ReadWriter, error)

	tlsUp      bool
	noZeroes   bool
	structured bool
	meta       bool
}

// Next says what follows an option.
type Next uint8

const (
	// Continue: send Step.Reply and read the next option.
	Continue Next = iota
	// Transmit: send Step.Reply; the transmission phase starts with
	// Step.Result.
	Transmit
	// Abort: send Step.Reply (whether it arrives does not matter) and
	// close; the client asked for it.
	Abort
	// Fail: close at once; Step.Err says why.
	Fail
)

// Step is what an option leads to.
type Step struct {
	Reply  []byte
	Next   Next
	Err    error  // with Fail
	Result Result // with Transmit
}

// Result is what a handshake settled on.
type Result struct {
	Name string
	// Export is opened: whoever takes the Result closes it.
	Export Export
	Size   uint64
	Flags  uint16
	// Structured replies and the base:allocation meta context were
	// negotiated.
	Structured, Meta bool
	// BlockSizes: the client asked for NBD_INFO_BLOCK_SIZE in its
	// NBD_OPT_GO, so it keeps to MinBlock alignment and MaxPayload.
	// Otherwise it may send requests of any offset and length.
	BlockSizes bool
	// ToldSizes: the client was told the block sizes, MaxPayload among
	// them (it negotiated with NBD_OPT_GO, not NBD_OPT_EXPORT_NAME).
	ToldSizes bool
}

// Greeting is what the server sends first.
func (h *Handshake) Greeting() []byte {
	b := make([]byte, 18)
	binary.BigEndian.PutUint64(b[0:], NBDMagic)
	binary.BigEndian.PutUint64(b[8:], IHaveOpt)
	binary.BigEndian.PutUint16(b[16:], FlagFixedNewstyle|FlagNoZeroes)
	return b
}

// ClientFlags takes the flags the client answers the greeting with.
func (h *Handshake) ClientFlags(f uint32) error {
	if f&^(ClientFixedNewstyle|ClientNoZeroes) != 0 {
		return fmt.Errorf("nbd: unknown client flags %#x", f)
	}
	h.noZeroes = f&ClientNoZeroes != 0
	return nil
}

// Intake is how to take in an option's payload.
type Intake uint8

const (
	// IntakeRead: read the payload and pass it to Option.
	IntakeRead Intake = iota
	// IntakeDrain: read and discard the payload, then call Option with
	// nil data.
	IntakeDrain
	// IntakeNone: leave the payload unread and call Option (it fails).
	IntakeNone
)

// Intake says how to take in the payload of the option oh announces.
func (h *Handshake) Intake(oh OptionHeader) Intake {
	switch {
	case oh.Length <= maxOptionLen:
		return IntakeRead
	case oh.Length <= maxOptionDrain:
		return IntakeDrain
	}
	return IntakeNone
}

// Option takes one option: its header and its payload (nil for one that
// Intake did not have read).
func (h *Handshake) Option(oh OptionHeader, data []byte) Step {
	if oh.Length > maxOptionLen {
		return h.oversized(oh)
	}
	if st, ok := h.tlsGate(oh); ok {
		return st
	}
	switch oh.Option {
	case OptExportName:
		return h.exportName(string(data))
	case OptGo, OptInfo:
		return h.goInfo(oh.Option, data)
	case OptList:
		if h.List != nil {
			return h.list(data)
		}
	case OptAbort:
		return Step{Reply: AppendOptionReply(nil, oh.Option, RepAck, nil), Next: Abort}
	case OptStructuredReply:
		if !h.NoStructured {
			return h.structuredReply(data)
		}
	case OptListMetaContext, OptSetMetaContext:
		return h.metaContext(oh.Option, data)
	case OptStartTLS:
		return h.startTLS(data)
	}
	return refuse(oh.Option, RepErrUnsup, fmt.Sprintf("option %d not supported", oh.Option))
}

// refuse answers an option with an error reply and goes on. The message
// is cut to MaxString bytes (clients refuse longer ones).
func refuse(opt, typ uint32, msg string) Step {
	if len(msg) > MaxString {
		msg = msg[:MaxString]
	}
	return Step{Reply: AppendOptionReply(nil, opt, typ, []byte(msg))}
}

// quoted is name for an error message: quoted, and cut short if long.
func quoted(name string) string {
	if len(name) > 64 {
		return fmt.Sprintf("%q... (%d bytes)", name[:64], len(name))
	}
	return fmt.Sprintf("%q", name)
}

func fail(err error) Step { return Step{Next: Fail, Err: err} }

// oversized answers an option whose payload was too long to read.
func (h *Handshake) oversized(oh OptionHeader) Step {
	switch {
	case oh.Length > maxOptionDrain:
		return fail(fmt.Errorf("nbd: option %d of %d bytes", oh.Option, oh.Length))
	case oh.Option == OptExportName:
		return fail(fmt.Errorf("nbd: export name of %d bytes", oh.Length))
	}
	return refuse(oh.Option, RepErrTooBig, "option too long")
}

// transmissionFlags are the flags of e's export. SEND_DF only with
// structured replies: without them the protocol says it must be clear
// (a simple reply is never fragmented anyway). A read-only export offers
// no command that writes (TRIM, WRITE_ZEROES, FAST_ZERO).
func (h *Handshake) transmissionFlags(e Export) uint16 {
	f := h.Flags
	if h.structured {
		f |= TFlagSendDF
	}
	if e.ReadOnly() {
		f |= TFlagReadOnly
		f &^= TFlagSendTrim | TFlagSendWriteZeroes | TFlagSendFastZero
	}
	return f
}

// open takes a reference on e for the connection.
func (h *Handshake) open(name string, e Export) (Result, error) {
	if err := e.Open(); err != nil {
		return Result{}, err
	}
	return Result{Name: name, Export: e, Size: uint64(e.Size()), Flags: h.transmissionFlags(e),
		Structured: h.structured, Meta: h.meta}, nil
}

// exportName ends the handshake the old way: the protocol has no way to
// refuse, so an unknown export closes the connection.
func (h *Handshake) exportName(name string) Step {
	if len(name) > MaxString {
		return fail(fmt.Errorf("nbd: export name of %d bytes", len(name)))
	}
	e, err := h.Lookup(name)
	if err != nil {
		return fail(fmt.Errorf("nbd: export %s: %w", quoted(name), err))
	}
	r, err := h.open(name, e)
	if err != nil {
		return fail(err)
	}
	var b [10 + 124]byte
	binary.BigEndian.PutUint64(b[0:], r.Size)
	binary.BigEndian.PutUint16(b[8:], r.Flags)
	n := len(b)
	if h.noZeroes {
		n = 10
	}
	return Step{Reply: b[:n], Next: Transmit, Result: r}
}

// goInfo describes an export (INFO), or describes it and ends the
// handshake on it (GO).
func (h *Handshake) goInfo(opt uint32, data []byte) Step {
	g, err := ParseGoRequest(data)
	if err != nil {
		return refuse(opt, RepErrInvalid, err.Error())
	}
	if len(g.Name) > MaxString {
		return refuse(opt, RepErrInvalid, fmt.Sprintf("export name of %d bytes (at most %d)", len(g.Name), MaxString))
	}
	e, err := h.Lookup(g.Name)
	if err != nil {
		return refuse(opt, RepErrUnknown, "no export "+quoted(g.Name))
	}
	asked := false
	var info []byte
	info = binary.BigEndian.AppendUint16(info, InfoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(e.Size()))
	info = binary.BigEndian.AppendUint16(info, h.transmissionFlags(e))
	out := AppendOptionReply(nil, opt, RepInfo, info)
	for _, want := range uniqueInfos(g.Infos) {
		var b []byte
		switch want {
		case InfoBlockSize:
			asked = true
			continue
		case InfoName:
			b = binary.BigEndian.AppendUint16(nil, InfoName)
			b = append(b, g.Name...)
		case InfoDescription:
			b = binary.BigEndian.AppendUint16(nil, InfoDescription)
			b = append(b, "udm device "+g.Name...)
		default:
			continue
		}
		out = AppendOptionReply(out, opt, RepInfo, b)
	}
	// Always state the block sizes: a client that asked for them is held
	// to MinBlock alignment; one that did not may send any offset and
	// length, so it is told 1.
	minBlock := uint32(1)
	if asked {
		minBlock = MinBlock
	}
	bs := binary.BigEndian.AppendUint16(nil, InfoBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, minBlock)
	bs = binary.BigEndian.AppendUint32(bs, prefBlock)
	bs = binary.BigEndian.AppendUint32(bs, h.MaxPayload)
	out = AppendOptionReply(out, opt, RepInfo, bs)
	if opt == OptInfo {
		return Step{Reply: AppendOptionReply(out, opt, RepAck, nil)}
	}
	r, err := h.open(g.Name, e)
	if err != nil {
		return Step{Reply: append(out, refuse(opt, RepErrShutdown, err.Error()).Reply...)}
	}
	r.BlockSizes, r.ToldSizes = asked, true
	return Step{Reply: AppendOptionReply(out, opt, RepAck, nil), Next: Transmit, Result: r}
}

// list names the exports, sorted.
func (h *Handshake) list(data []byte) Step {
	if len(data) != 0 {
		return refuse(OptList, RepErrInvalid, "LIST takes no data")
	}
	names := h.List()
	sort.Strings(names)
	var out []byte
	for _, n := range names {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(n)))
		out = AppendOptionReply(out, OptList, RepServer, append(b, n...))
	}
	return Step{Reply: AppendOptionReply(out, OptList, RepAck, nil)}
}

func (h *Handshake) structuredReply(data []byte) Step {
	if len(data) != 0 {
		return refuse(OptStructuredReply, RepErrInvalid, "STRUCTURED_REPLY takes no data")
	}
	h.structured = true
	return Step{Reply: AppendOptionReply(nil, OptStructuredReply, RepAck, nil)}
}

// metaContext lists (LIST_META_CONTEXT) or selects (SET_META_CONTEXT)
// base:allocation, the one context there is.
func (h *Handshake) metaContext(opt uint32, data []byte) Step {
	m, err := ParseMetaContextRequest(data)
	switch {
	case err != nil:
		return refuse(opt, RepErrInvalid, err.Error())
	case !h.structured:
		return refuse(opt, RepErrInvalid, "structured replies not negotiated")
	}
	if len(m.Export) > MaxString {
		return refuse(opt, RepErrInvalid, fmt.Sprintf("export name of %d bytes (at most %d)", len(m.Export), MaxString))
	}
	if _, err := h.Lookup(m.Export); err != nil {
		return refuse(opt, RepErrUnknown, "no export "+quoted(m.Export))
	}
	found := false
	for _, q := range m.Queries {
		if q == MetaBaseAllocation || (opt == OptListMetaContext && (q == "base:" || q == "base")) {
			found = true
		}
	}
	if len(m.Queries) == 0 && opt == OptListMetaContext {
		found = true
	}
	if opt == OptSetMetaContext {
		h.meta = found
	}
	var out []byte
	if found {
		b := binary.BigEndian.AppendUint32(nil, MetaContextID)
		out = AppendOptionReply(out, opt, RepMetaContext, append(b, MetaBaseAllocation...))
	}
	return Step{Reply: AppendOptionReply(out, opt, RepAck, nil)}
}

// Negotiate runs h over rw: it sends the greeting, then reads options and
// writes the replies until the handshake ends. It returns the Result of
// a handshake that reached the transmission phase (its export opened),
// ErrAbort when the client aborted, or what went wrong (io.EOF when the
// client left).
func Negotiate(rw io.ReadWriter, h *Handshake) (Result, error) {
	if _, err := rw.Write(h.Greeting()); err != nil {
		return Result{}, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(rw, cf[:]); err != nil {
		return Result{}, err
	}
	if err := h.ClientFlags(binary.BigEndian.Uint32(cf[:])); err != nil {
		return Result{}, err
	}
	var hdr [OptionHeaderSize]byte
	for {
		if _, err := io.ReadFull(rw, hdr[:]); err != nil {
			return Result{}, err
		}
		oh, err := ParseOptionHeader(hdr[:])
		if err != nil {
			return Result{}, err
		}
		var data []byte
		switch h.Intake(oh) {
		case IntakeRead:
			data = make([]byte, oh.Length)
			if _, err := io.ReadFull(rw, data); err != nil {
				return Result{}, err
			}
		case IntakeDrain:
			if _, err := io.CopyN(io.Discard, rw, int64(oh.Length)); err != nil {
				return Result{}, err
			}
		}
		st := h.Option(oh, data)
		switch st.Next {
		case Fail:
			return Result{}, st.Err
		case Abort:
			rw.Write(st.Reply)
			return Result{}, ErrAbort
		}
		if _, err := rw.Write(st.Reply); err != nil {
			if st.Next == Transmit {
				st.Result.Export.Close()
			}
			return Result{}, err
		}
		switch st.Next {
		case Transmit:
			return st.Result, nil
		case StartTLS:
			if rw, err = h.upgrade(rw); err != nil {
				return Result{}, err
			}
		}
	}
}
