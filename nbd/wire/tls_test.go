package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"testing"
)

// tlsStep runs one option through h and returns its step and the types
// of its replies.
func tlsStep(t *testing.T, h *Handshake, o uint32, data []byte) (Step, []uint32) {
	t.Helper()
	st := h.Option(OptionHeader{Option: o, Length: uint32(len(data))}, data)
	reps, rest := optReplies(st.Reply)
	if st.Next != Transmit && len(rest) != 0 {
		t.Fatalf("option %d: %d bytes after the replies", o, len(rest))
	}
	var ts []uint32
	for _, r := range reps {
		ts = append(ts, r.Type)
	}
	return st, ts
}

func noUpgrade(io.ReadWriter) (io.ReadWriter, error) { return nil, errors.New("not here") }

// With TLS off (or no Upgrade), STARTTLS is refused by policy and the
// handshake goes on in plaintext.
func TestStartTLSOff(t *testing.T) {
	for _, h := range []*Handshake{newFakeExports().handshake(), func() *Handshake {
		h := newFakeExports().handshake()
		h.TLS = TLSRequire // without Upgrade: off
		return h
	}()} {
		if st, ts := tlsStep(t, h, OptStartTLS, nil); st.Next != Continue || !slices.Equal(ts, []uint32{RepErrPolicy}) {
			t.Errorf("STARTTLS with TLS off: %v %v", st.Next, ts)
		}
		if st, ts := tlsStep(t, h, OptList, nil); st.Next != Continue || ts[len(ts)-1] != RepAck {
			t.Errorf("LIST after a refused STARTTLS: %v %v", st.Next, ts)
		}
	}
}

// Under TLSRequire, before TLS, only STARTTLS and ABORT go on: every
// other option gets TLS_REQD, and EXPORT_NAME (which can't be refused)
// ends the connection.
func TestStartTLSRequired(t *testing.T) {
	fe := newFakeExports()
	h := fe.handshake()
	h.TLS, h.Upgrade = TLSRequire, noUpgrade
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{OptList, nil},
		{OptInfo, AppendGoRequest(nil, GoRequest{Name: "disk"})},
		{OptGo, AppendGoRequest(nil, GoRequest{Name: "disk"})},
		{OptStructuredReply, nil},
		{OptListMetaContext, AppendMetaContextRequest(nil, MetaContextRequest{Export: "disk"})},
		{OptSetMetaContext, AppendMetaContextRequest(nil, MetaContextRequest{Export: "disk", Queries: []string{MetaBaseAllocation}})},
		{99, []byte("x")},
	} {
		if st, ts := tlsStep(t, h, o.opt, o.data); st.Next != Continue || !slices.Equal(ts, []uint32{RepErrTLSReqd}) {
			t.Errorf("option %d before TLS: %v %v, want TLS_REQD", o.opt, st.Next, ts)
		}
	}
	if fe["disk"].opens != 0 || h.structured {
		t.Errorf("before TLS: %d opens, structured %v", fe["disk"].opens, h.structured)
	}
	if st, _ := tlsStep(t, h, OptExportName, []byte("disk")); st.Next != Fail || fe["disk"].opens != 0 {
		t.Errorf("EXPORT_NAME before TLS: %v, %d opens; want Fail", st.Next, fe["disk"].opens)
	}
	if st, ts := tlsStep(t, h, OptStartTLS, []byte("x")); st.Next != Continue || !slices.Equal(ts, []uint32{RepErrInvalid}) {
		t.Errorf("STARTTLS with data: %v %v", st.Next, ts)
	}
	if st, ts := tlsStep(t, h, OptStartTLS, nil); st.Next != StartTLS || !slices.Equal(ts, []uint32{RepAck}) {
		t.Errorf("STARTTLS: %v %v, want an ACK and StartTLS", st.Next, ts)
	}
	h.TLSStarted()
	if st, ts := tlsStep(t, h, OptStartTLS, nil); st.Next != Continue || !slices.Equal(ts, []uint32{RepErrInvalid}) {
		t.Errorf("STARTTLS twice: %v %v", st.Next, ts)
	}
	st, ts := tlsStep(t, h, OptGo, AppendGoRequest(nil, GoRequest{Name: "disk"}))
	if st.Next != Transmit || ts[len(ts)-1] != RepAck {
		t.Fatalf("GO over TLS: %v %v", st.Next, ts)
	}
	st.Result.Export.Close()
	if st, ts := tlsStep(t, newAbortable(), OptAbort, nil); st.Next != Abort || !slices.Equal(ts, []uint32{RepAck}) {
		t.Errorf("ABORT before TLS: %v %v", st.Next, ts)
	}
}

func newAbortable() *Handshake {
	h := newFakeExports().handshake()
	h.TLS, h.Upgrade = TLSRequire, noUpgrade
	return h
}

// Under TLSOn a client may stay in plaintext, or start TLS; what it
// negotiated in plaintext is forgotten once TLS is up.
func TestStartTLSOptional(t *testing.T) {
	h := newFakeExports().handshake()
	h.TLS, h.Upgrade = TLSOn, noUpgrade
	if st, ts := tlsStep(t, h, OptStructuredReply, nil); st.Next != Continue || !slices.Equal(ts, []uint32{RepAck}) {
		t.Fatalf("structured replies in plaintext: %v %v", st.Next, ts)
	}
	if st, _ := tlsStep(t, h, OptStartTLS, nil); st.Next != StartTLS {
		t.Fatalf("STARTTLS: %v", st.Next)
	}
	h.TLSStarted()
	if h.structured || h.meta {
		t.Errorf("structured replies survive STARTTLS")
	}
	h2 := newFakeExports().handshake()
	h2.TLS, h2.Upgrade = TLSOn, noUpgrade
	st, ts := tlsStep(t, h2, OptGo, AppendGoRequest(nil, GoRequest{Name: "disk"}))
	if st.Next != Transmit || ts[len(ts)-1] != RepAck {
		t.Fatalf("plaintext GO under TLS on: %v %v", st.Next, ts)
	}
	st.Result.Export.Close()
}

// swapStream is a scripted stream: it reads in and records what is
// written.
type swapStream struct {
	in  *bytes.Reader
	out bytes.Buffer
}

func (s *swapStream) Read(p []byte) (int, error)  { return s.in.Read(p) }
func (s *swapStream) Write(p []byte) (int, error) { return s.out.Write(p) }

// Negotiate continues over the stream Upgrade returns; a failed Upgrade
// ends the handshake with its error and no reference held.
func TestNegotiateStartTLS(t *testing.T) {
	flags := binary.BigEndian.AppendUint32(nil, ClientFixedNewstyle|ClientNoZeroes)
	fe := newFakeExports()
	plain := &swapStream{in: bytes.NewReader(append(append(flags, opt(OptList, nil)...), opt(OptStartTLS, nil)...))}
	secure := &swapStream{in: bytes.NewReader(opt(OptGo, AppendGoRequest(nil, GoRequest{Name: "disk"})))}
	h := fe.handshake()
	h.TLS = TLSRequire
	h.Upgrade = func(rw io.ReadWriter) (io.ReadWriter, error) {
		if rw != plain {
			t.Errorf("Upgrade got %T, want the plaintext stream", rw)
		}
		return secure, nil
	}
	r, err := Negotiate(plain, h)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Export.Close()
	reps, rest := optReplies(plain.out.Bytes()[18:])
	if len(reps) != 2 || reps[0].Type != RepErrTLSReqd || reps[1].Type != RepAck || reps[1].Option != OptStartTLS || len(rest) != 0 {
		t.Errorf("plaintext replies: %+v (%d left)", reps, len(rest))
	}
	reps, _ = optReplies(secure.out.Bytes())
	if len(reps) == 0 || reps[len(reps)-1].Type != RepAck || reps[len(reps)-1].Option != OptGo {
		t.Errorf("replies over TLS: %+v", reps)
	}

	fe = newFakeExports()
	h = fe.handshake()
	h.TLS, h.Upgrade = TLSOn, noUpgrade
	plain = &swapStream{in: bytes.NewReader(append(flags, opt(OptStartTLS, nil)...))}
	if _, err := Negotiate(plain, h); err == nil || fe["disk"].refs != 0 {
		t.Errorf("failed TLS handshake: %v, %d references", err, fe["disk"].refs)
	}
}

func TestParseTLSMode(t *testing.T) {
	for s, want := range map[string]TLSMode{"off": TLSOff, "": TLSOff, "on": TLSOn, "require": TLSRequire} {
		if m, err := ParseTLSMode(s); err != nil || m != want || (s != "" && m.String() != s) {
			t.Errorf("ParseTLSMode(%q) = %v, %v", s, m, err)
		}
	}
	if _, err := ParseTLSMode("yes"); err == nil {
		t.Error("ParseTLSMode(yes) accepted")
	}
}
