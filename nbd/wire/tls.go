package wire

import (
	"fmt"
	"io"
)

// TLSMode is what a server says to NBD_OPT_STARTTLS.
type TLSMode uint8

const (
	// TLSOff refuses STARTTLS (NBD_REP_ERR_POLICY).
	TLSOff TLSMode = iota
	// TLSOn offers STARTTLS; a client may also stay in plaintext.
	TLSOn
	// TLSRequire allows nothing but STARTTLS and ABORT before TLS: every
	// other option is answered NBD_REP_ERR_TLS_REQD (EXPORT_NAME, which
	// can't be refused, closes the connection), so there is no
	// plaintext transmission phase.
	TLSRequire
)

// ParseTLSMode reads "off", "on" or "require".
func ParseTLSMode(s string) (TLSMode, error) {
	switch s {
	case "", "off":
		return TLSOff, nil
	case "on":
		return TLSOn, nil
	case "require":
		return TLSRequire, nil
	}
	return TLSOff, fmt.Errorf("TLS mode %q: want off, on or require", s)
}

func (m TLSMode) String() string {
	switch m {
	case TLSOn:
		return "on"
	case TLSRequire:
		return "require"
	}
	return "off"
}

// StartTLS is the Next of an accepted NBD_OPT_STARTTLS: send Step.Reply,
// run the TLS handshake on the stream (Handshake.Upgrade), tell the
// Handshake (TLSStarted) and read the next option over TLS.
const StartTLS Next = Fail + 1

// TLSStarted records that the stream is now TLS. What was negotiated in
// plaintext (structured replies, meta contexts) is forgotten: a client
// renegotiates it over TLS, where nobody can have tampered with it.
func (h *Handshake) TLSStarted() {
	h.tlsUp = true
	h.structured, h.meta = false, false
}

// tlsOn reports whether the handshake offers STARTTLS.
func (h *Handshake) tlsOn() bool { return h.TLS != TLSOff && h.Upgrade != nil }

// tlsGate answers, under TLSRequire before TLS, the options that need
// TLS; ok is false for those that go on (STARTTLS, ABORT, and all of
// them once TLS is up or not required).
func (h *Handshake) tlsGate(oh OptionHeader) (st Step, ok bool) {
	if h.TLS != TLSRequire || h.tlsUp || !h.tlsOn() {
		return Step{}, false
	}
	switch oh.Option {
	case OptStartTLS, OptAbort:
		return Step{}, false
	case OptExportName:
		return fail(fmt.Errorf("nbd: NBD_OPT_EXPORT_NAME before STARTTLS, and TLS is required")), true
	}
	return refuse(oh.Option, RepErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first"), true
}

// startTLS answers NBD_OPT_STARTTLS.
func (h *Handshake) startTLS(data []byte) Step {
	switch {
	case !h.tlsOn():
		return refuse(OptStartTLS, RepErrPolicy, "TLS is not enabled on this server")
	case len(data) != 0:
		return refuse(OptStartTLS, RepErrInvalid, "STARTTLS takes no data")
	case h.tlsUp:
		return refuse(OptStartTLS, RepErrInvalid, "TLS is already negotiated")
	}
	return Step{Reply: AppendOptionReply(nil, OptStartTLS, RepAck, nil), Next: StartTLS}
}

// upgrade runs the TLS handshake of an accepted STARTTLS on rw.
func (h *Handshake) upgrade(rw io.ReadWriter) (io.ReadWriter, error) {
	t, err := h.Upgrade(rw)
	if err != nil {
		return nil, fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	h.TLSStarted()
	return t, nil
}
