package client

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"syscall"

	"udm/nbd/wire"
)

// Handshake errors. Each wraps the errno a caller can act on.
var (
	// errNoExport: the server has no such export (NBD_REP_ERR_UNKNOWN,
	// or it closed the connection on NBD_OPT_EXPORT_NAME).
	errNoExport = fmt.Errorf("nbd: no such export: %w", syscall.ENOENT)
	// errTLSRequired: the server insists on TLS, which the client
	// doesn't speak.
	errTLSRequired = fmt.Errorf("nbd: server requires TLS: %w", syscall.EPROTONOSUPPORT)
	// errHandshake: the server broke the protocol or refused the client.
	errHandshake = fmt.Errorf("nbd: handshake failed: %w", syscall.EPROTO)
	// errSizeChanged: after a reconnection the export has another size.
	errSizeChanged = fmt.Errorf("nbd: export size changed: %w", syscall.EIO)
)

const (
	cliservMagic uint64 = 0x00420281861253 // oldstyle negotiation
	// defaultMaxPayload is what a client may assume without
	// NBD_INFO_BLOCK_SIZE, and the most the client sends in one request.
	defaultMaxPayload = 32 << 20
	maxOptReply       = 1 << 20
)

// clientHandshake runs the fixed newstyle negotiation on *ncp (reads
// through *brp) for export and returns what the server said. The caller
// sets the connection's deadline. With tc, it starts TLS first and
// replaces *ncp and *brp with the TLS connection and a reader of it.
func clientHandshake(ncp *net.Conn, brp **bufio.Reader, export string, opts *Options, tc *tls.Config) (*Info, error) {
	nc, br := *ncp, *brp
	var hs [18]byte
	if _, err := io.ReadFull(br, hs[:]); err != nil {
		return nil, fmt.Errorf("%w: reading the greeting: %w", errHandshake, err)
	}
	if binary.BigEndian.Uint64(hs[0:]) != wire.NBDMagic {
		return nil, fmt.Errorf("%w: not an NBD server (magic %#x)", errHandshake, binary.BigEndian.Uint64(hs[0:]))
	}
	switch m := binary.BigEndian.Uint64(hs[8:]); m {
	case wire.IHaveOpt:
	case cliservMagic:
		return nil, fmt.Errorf("%w: the server uses oldstyle negotiation, which is not supported", errHandshake)
	default:
		return nil, fmt.Errorf("%w: bad second magic %#x", errHandshake, m)
	}
	hflags := binary.BigEndian.Uint16(hs[16:])
	info := &Info{FixedNewstyle: hflags&wire.FlagFixedNewstyle != 0}
	noZeroes := hflags&wire.FlagNoZeroes != 0
	var cflags uint32
	if info.FixedNewstyle {
		cflags |= wire.ClientFixedNewstyle
	}
	if noZeroes {
		cflags |= wire.ClientNoZeroes
	}
	if err := writeAll(nc, binary.BigEndian.AppendUint32(nil, cflags)); err != nil {
		return nil, fmt.Errorf("%w: sending client flags: %w", errHandshake, err)
	}
	h := &handshaker{nc: nc, br: br}
	if tc != nil {
		if err := h.startTLS(tc, info); err != nil {
			return nil, err
		}
		*ncp, *brp = h.nc, h.br
	}
	if info.FixedNewstyle {
		if !opts.NoStructuredReply {
			ok, err := h.simpleOption(wire.OptStructuredReply, nil)
			if err != nil {
				return nil, err
			}
			info.Structured = ok
		}
		if opts.BlockStatus && info.Structured {
			if err := h.setMetaContext(export, info); err != nil {
				return nil, err
			}
		}
		if !opts.NoOptGo {
			done, err := h.optGo(export, info)
			if err != nil {
				h.abort()
				return nil, err
			}
			if done {
				return finishInfo(info)
			}
			// NBD_OPT_GO unknown to the server: fall back.
		}
	}
	if err := h.exportName(export, noZeroes, info); err != nil {
		return nil, err
	}
	return finishInfo(info)
}

// finishInfo validates and defaults the block sizes.
func finishInfo(info *Info) (*Info, error) {
	if info.Size < 0 {
		return nil, fmt.Errorf("%w: export size %d", errHandshake, uint64(info.Size))
	}
	if info.MinBlock == 0 {
		info.MinBlock, info.PrefBlock, info.MaxBlock = 1, 4096, defaultMaxPayload
	}
	pow2 := func(v uint32) bool { return v != 0 && bits.OnesCount32(v) == 1 }
	if !pow2(info.MinBlock) || info.MinBlock > 64<<10 || !pow2(info.PrefBlock) || info.PrefBlock < info.MinBlock ||
		info.MaxBlock < info.MinBlock || info.MaxBlock != 1<<32-1 && info.MaxBlock%info.MinBlock != 0 {
		return nil, fmt.Errorf("%w: bad block sizes min %d preferred %d max %d", errHandshake, info.MinBlock, info.PrefBlock, info.MaxBlock)
	}
	info.MaxPayload = min(info.MaxBlock, defaultMaxPayload)
	info.MaxPayload -= info.MaxPayload % info.MinBlock
	return info, nil
}

type handshaker struct {
	nc  net.Conn
	br  *bufio.Reader
	buf []byte
}

func writeAll(w io.Writer, b []byte) error {
	_, err := w.Write(b)
	return err
}

func (h *handshaker) send(opt uint32, data []byte) error {
	b := make([]byte, wire.OptionHeaderSize, wire.OptionHeaderSize+len(data))
	wire.PutOptionHeader(b, opt, uint32(len(data)))
	if err := writeAll(h.nc, append(b, data...)); err != nil {
		return fmt.Errorf("%w: sending option %d: %w", errHandshake, opt, err)
	}
	return nil
}

// reply reads one option reply to opt; its data stays valid until the
// next call.
func (h *handshaker) reply(opt uint32) (wire.OptionReply, []byte, error) {
	var hb [wire.OptReplyHeaderLen]byte
	if _, err := io.ReadFull(h.br, hb[:]); err != nil {
		return wire.OptionReply{}, nil, fmt.Errorf("%w: reading the reply to option %d: %w", errHandshake, opt, err)
	}
	rep, err := wire.ParseOptionReply(hb[:])
	if err != nil {
		return rep, nil, fmt.Errorf("%w: %w", errHandshake, err)
	}
	if rep.Option != opt {
		return rep, nil, fmt.Errorf("%w: reply for option %d while waiting for %d", errHandshake, rep.Option, opt)
	}
	if rep.Length > maxOptReply {
		return rep, nil, fmt.Errorf("%w: option reply of %d bytes", errHandshake, rep.Length)
	}
	if cap(h.buf) < int(rep.Length) {
		h.buf = make([]byte, rep.Length)
	}
	data := h.buf[:rep.Length]
	if _, err := io.ReadFull(h.br, data); err != nil {
		return rep, nil, fmt.Errorf("%w: reading the reply to option %d: %w", errHandshake, opt, err)
	}
	return rep, data, nil
}

// repError turns an error reply into an error.
func repError(opt uint32, rep wire.OptionReply, data []byte) error {
	msg := ""
	if len(data) > 0 {
		msg = ": " + string(data)
	}
	switch rep.Type {
	case wire.RepErrUnknown:
		return fmt.Errorf("%w%s", errNoExport, msg)
	case wire.RepErrTLSReqd:
		return fmt.Errorf("%w%s", errTLSRequired, msg)
	case wire.RepErrShutdown:
		return fmt.Errorf("%w: server shutting down%s", errHandshake, msg)
	case wire.RepErrPolicy:
		return fmt.Errorf("%w: option %d refused by policy%s", errHandshake, opt, msg)
	}
	return fmt.Errorf("%w: option %d: error reply %#x%s", errHandshake, opt, rep.Type, msg)
}

// simpleOption sends an option that is answered by one ACK or an error;
// it reports whether the server agreed.
func (h *handshaker) simpleOption(opt uint32, data []byte) (bool, error) {
	if err := h.send(opt, data); err != nil {
		return false, err
	}
	rep, d, err := h.reply(opt)
	if err != nil {
		return false, err
	}
	switch {
	case rep.Type == wire.RepAck:
		return true, nil
	case rep.Type == wire.RepErrShutdown || rep.Type == wire.RepErrTLSReqd:
		return false, repError(opt, rep, d)
	case wire.IsRepErr(rep.Type):
		return false, nil
	}
	return false, fmt.Errorf("%w: option %d: unexpected reply type %d", errHandshake, opt, rep.Type)
}

// setMetaContext selects base:allocation.
func (h *handshaker) setMetaContext(export string, info *Info) error {
	data := wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Export: export, Queries: []string{wire.MetaBaseAllocation}})
	if err := h.send(wire.OptSetMetaContext, data); err != nil {
		return err
	}
	for {
		rep, d, err := h.reply(wire.OptSetMetaContext)
		if err != nil {
			return err
		}
		switch {
		case rep.Type == wire.RepAck:
			return nil
		case rep.Type == wire.RepMetaContext:
			if len(d) < 4 {
				return fmt.Errorf("%w: short meta context reply", errHandshake)
			}
			if string(d[4:]) == wire.MetaBaseAllocation {
				info.BlockStatus = true
				info.MetaContext = binary.BigEndian.Uint32(d)
			}
		case rep.Type == wire.RepErrShutdown || rep.Type == wire.RepErrTLSReqd:
			return repError(wire.OptSetMetaContext, rep, d)
		case wire.IsRepErr(rep.Type):
			return nil // no block status
		default:
			return fmt.Errorf("%w: meta context: unexpected reply type %d", errHandshake, rep.Type)
		}
	}
}

// optGo sends NBD_OPT_GO asking for block sizes. It returns false (and
// no error) if the server doesn't know the option.
func (h *handshaker) optGo(export string, info *Info) (bool, error) {
	data := wire.AppendGoRequest(nil, wire.GoRequest{Name: export, Infos: []uint16{wire.InfoBlockSize}})
	if err := h.send(wire.OptGo, data); err != nil {
		return false, err
	}
	gotExport := false
	for {
		rep, d, err := h.reply(wire.OptGo)
		if err != nil {
			return false, err
		}
		switch {
		case rep.Type == wire.RepAck:
			if !gotExport {
				return false, fmt.Errorf("%w: NBD_OPT_GO acknowledged without NBD_INFO_EXPORT", errHandshake)
			}
			info.Go = true
			return true, nil
		case rep.Type == wire.RepInfo:
			if len(d) < 2 {
				return false, fmt.Errorf("%w: short NBD_REP_INFO", errHandshake)
			}
			switch binary.BigEndian.Uint16(d) {
			case wire.InfoExport:
				if len(d) != 12 {
					return false, fmt.Errorf("%w: NBD_INFO_EXPORT of %d bytes", errHandshake, len(d))
				}
				info.Size = int64(binary.BigEndian.Uint64(d[2:]))
				info.Flags = binary.BigEndian.Uint16(d[10:])
				gotExport = true
			case wire.InfoBlockSize:
				if len(d) != 14 {
					return false, fmt.Errorf("%w: NBD_INFO_BLOCK_SIZE of %d bytes", errHandshake, len(d))
				}
				info.MinBlock = binary.BigEndian.Uint32(d[2:])
				info.PrefBlock = binary.BigEndian.Uint32(d[6:])
				info.MaxBlock = binary.BigEndian.Uint32(d[10:])
			}
		case rep.Type == wire.RepErrUnsup:
			return false, nil
		case wire.IsRepErr(rep.Type):
			return false, repError(wire.OptGo, rep, d)
		default:
			return false, fmt.Errorf("%w: NBD_OPT_GO: unexpected reply type %d", errHandshake, rep.Type)
		}
	}
}

// exportName enters transmission with NBD_OPT_EXPORT_NAME.
func (h *handshaker) exportName(export string, noZeroes bool, info *Info) error {
	if err := h.send(wire.OptExportName, []byte(export)); err != nil {
		return err
	}
	n := 10
	if !noZeroes {
		n += 124
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(h.br, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) {
			return fmt.Errorf("%w: %q (the server closed the connection on NBD_OPT_EXPORT_NAME)", errNoExport, export)
		}
		return fmt.Errorf("%w: reading the export's size and flags: %w", errHandshake, err)
	}
	info.Size = int64(binary.BigEndian.Uint64(b))
	info.Flags = binary.BigEndian.Uint16(b[8:])
	return nil
}

// abort ends the negotiation politely (NBD_OPT_ABORT), best effort.
func (h *handshaker) abort() {
	_ = h.send(wire.OptAbort, nil)
}

// startTLS sends NBD_OPT_STARTTLS and runs the TLS handshake; the rest
// of the negotiation and the transmission phase go over h.nc, now TLS.
func (h *handshaker) startTLS(tc *tls.Config, info *Info) error {
	if !info.FixedNewstyle {
		return fmt.Errorf("%w: TLS needs a fixed-newstyle server", errHandshake)
	}
	if err := h.send(wire.OptStartTLS, nil); err != nil {
		return err
	}
	rep, d, err := h.reply(wire.OptStartTLS)
	if err != nil {
		return err
	}
	if rep.Type != wire.RepAck {
		if wire.IsRepErr(rep.Type) {
			return fmt.Errorf("%w: STARTTLS refused: %w", errHandshake, repError(wire.OptStartTLS, rep, d))
		}
		return fmt.Errorf("%w: reply %#x to STARTTLS", errHandshake, rep.Type)
	}
	if h.br.Buffered() > 0 {
		return fmt.Errorf("%w: data after the STARTTLS reply", errHandshake)
	}
	t := tls.Client(h.nc, tc)
	if err := t.Handshake(); err != nil {
		return fmt.Errorf("%w: TLS: %w", errHandshake, err)
	}
	h.nc, h.br = t, bufio.NewReaderSize(t, h.br.Size())
	info.TLS = true
	return nil
}
