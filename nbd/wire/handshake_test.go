package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"syscall"
	"testing"
)

// fakeExport counts the references taken and given back.
type fakeExport struct {
	size     int64
	ro       bool
	openErr  error
	refs     int
	opens    int
	closeErr int // closes without a reference
}

func (e *fakeExport) Size() int64    { return e.size }
func (e *fakeExport) ReadOnly() bool { return e.ro }
func (e *fakeExport) Open() error {
	if e.openErr != nil {
		return e.openErr
	}
	e.refs++
	e.opens++
	return nil
}

func (e *fakeExport) Close() error {
	if e.refs == 0 {
		e.closeErr++
	}
	e.refs--
	return nil
}

// fakeExports: "disk" (also the default), "ro" read-only, "gone" whose
// Open fails.
type fakeExports map[string]*fakeExport

func newFakeExports() fakeExports {
	disk := &fakeExport{size: 1 << 20}
	return fakeExports{"": disk, "disk": disk, "ro": {size: 4096, ro: true},
		"gone": {size: 8192, openErr: syscall.ESHUTDOWN}}
}

func (f fakeExports) handshake() *Handshake {
	return &Handshake{
		Lookup: func(name string) (Export, error) {
			if e, ok := f[name]; ok {
				return e, nil
			}
			return nil, syscall.ENOENT
		},
		List:       func() []string { return []string{"ro", "disk", "gone"} },
		Flags:      TFlagHasFlags | TFlagSendFlush,
		MaxPayload: 1 << 20,
	}
}

func opt(o uint32, data []byte) []byte {
	var h [OptionHeaderSize]byte
	PutOptionHeader(h[:], o, uint32(len(data)))
	return append(h[:], data...)
}

// optReplies splits b into option replies; what is left over is returned
// as rest.
func optReplies(b []byte) (reps []OptionReply, rest []byte) {
	for len(b) >= OptReplyHeaderLen {
		r, err := ParseOptionReply(b)
		if err != nil || uint64(r.Length) > uint64(len(b)-OptReplyHeaderLen) {
			break
		}
		reps = append(reps, r)
		b = b[OptReplyHeaderLen+int(r.Length):]
	}
	return reps, b
}

func TestHandshakeSteps(t *testing.T) {
	fe := newFakeExports()
	h := fe.handshake()
	if err := h.ClientFlags(1 << 5); err == nil {
		t.Fatal("unknown client flags accepted")
	}
	if err := h.ClientFlags(ClientFixedNewstyle | ClientNoZeroes); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		len  uint32
		want Intake
	}{{0, IntakeRead}, {maxOptionLen, IntakeRead}, {maxOptionLen + 1, IntakeDrain},
		{maxOptionDrain, IntakeDrain}, {maxOptionDrain + 1, IntakeNone}} {
		if got := h.Intake(OptionHeader{Option: OptGo, Length: c.len}); got != c.want {
			t.Errorf("intake of %d bytes: %d, want %d", c.len, got, c.want)
		}
	}
	step := func(o uint32, data []byte) (Step, []OptionReply) {
		t.Helper()
		st := h.Option(OptionHeader{Option: o, Length: uint32(len(data))}, data)
		reps, rest := optReplies(st.Reply)
		if st.Next != Transmit && len(rest) != 0 {
			t.Fatalf("option %d: %d bytes after the replies", o, len(rest))
		}
		return st, reps
	}
	types := func(reps []OptionReply) (ts []uint32) {
		for _, r := range reps {
			ts = append(ts, r.Type)
		}
		return ts
	}
	eq := slices.Equal[[]uint32]

	if st, reps := step(OptSetMetaContext, AppendMetaContextRequest(nil, MetaContextRequest{Export: "disk", Queries: []string{MetaBaseAllocation}})); st.Next != Continue || !eq(types(reps), []uint32{RepErrInvalid}) {
		t.Errorf("meta context before structured replies: %v %v", st.Next, types(reps))
	}
	if st, reps := step(OptStructuredReply, nil); st.Next != Continue || !eq(types(reps), []uint32{RepAck}) {
		t.Errorf("structured replies: %v %v", st.Next, types(reps))
	}
	if st, reps := step(OptSetMetaContext, AppendMetaContextRequest(nil, MetaContextRequest{Export: "disk", Queries: []string{MetaBaseAllocation}})); st.Next != Continue || !eq(types(reps), []uint32{RepMetaContext, RepAck}) {
		t.Errorf("set meta context: %v %v", st.Next, types(reps))
	}
	if st, reps := step(OptList, nil); st.Next != Continue || !eq(types(reps), []uint32{RepServer, RepServer, RepServer, RepAck}) {
		t.Errorf("list: %v %v", st.Next, types(reps))
	}
	if st, reps := step(OptInfo, AppendGoRequest(nil, GoRequest{Name: "ro", Infos: []uint16{InfoName}})); st.Next != Continue || !eq(types(reps), []uint32{RepInfo, RepInfo, RepInfo, RepAck}) || fe["ro"].opens != 0 {
		t.Errorf("info: %v %v, %d opens", st.Next, types(reps), fe["ro"].opens)
	}
	if st, reps := step(OptGo, AppendGoRequest(nil, GoRequest{Name: "gone"})); st.Next != Continue || !eq(types(reps), []uint32{RepInfo, RepInfo, RepErrShutdown}) {
		t.Errorf("go to an export that cannot open: %v %v", st.Next, types(reps))
	}
	if st, reps := step(OptGo, AppendGoRequest(nil, GoRequest{Name: "nope"})); st.Next != Continue || !eq(types(reps), []uint32{RepErrUnknown}) {
		t.Errorf("go to no export: %v %v", st.Next, types(reps))
	}
	if st := h.Option(OptionHeader{Option: OptList, Length: maxOptionLen + 1}, nil); st.Next != Continue {
		t.Errorf("drained option: %v", st.Next)
	} else if reps, _ := optReplies(st.Reply); !eq(types(reps), []uint32{RepErrTooBig}) {
		t.Errorf("drained option: %v", types(reps))
	}
	if st := h.Option(OptionHeader{Option: OptExportName, Length: maxOptionLen + 1}, nil); st.Next != Fail {
		t.Errorf("export name too long: %v", st.Next)
	}
	if st, reps := step(7777, nil); st.Next != Continue || !eq(types(reps), []uint32{RepErrUnsup}) {
		t.Errorf("unknown option: %v %v", st.Next, types(reps))
	}
	st, reps := step(OptGo, AppendGoRequest(nil, GoRequest{Name: "ro"}))
	if st.Next != Transmit || !eq(types(reps), []uint32{RepInfo, RepInfo, RepAck}) {
		t.Fatalf("go: %v %v", st.Next, types(reps))
	}
	want := TFlagHasFlags | TFlagSendFlush | TFlagSendDF | TFlagReadOnly
	if r := st.Result; r.Name != "ro" || r.Size != 4096 || r.Flags != want || !r.Structured || !r.Meta || fe["ro"].refs != 1 {
		t.Errorf("go settled on %+v (flags want %#x), %d references", r, want, fe["ro"].refs)
	}
}

func TestHandshakeExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		fe := newFakeExports()
		h := fe.handshake()
		h.NoStructured = true
		f := ClientFixedNewstyle
		if noZeroes {
			f |= ClientNoZeroes
		}
		in := binary.BigEndian.AppendUint32(nil, f)
		in = append(in, opt(OptStructuredReply, nil)...)
		in = append(in, opt(OptExportName, nil)...)
		var out bytes.Buffer
		r, err := Negotiate(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(in), &out}, h)
		if err != nil {
			t.Fatal(err)
		}
		b := out.Bytes()[18:]
		reps, rest := optReplies(b)
		if len(reps) != 1 || reps[0].Type != RepErrUnsup {
			t.Errorf("structured replies refused with %+v", reps)
		}
		wantLen := 134
		if noZeroes {
			wantLen = 10
		}
		if len(rest) != wantLen || binary.BigEndian.Uint64(rest) != 1<<20 || binary.BigEndian.Uint16(rest[8:]) != TFlagHasFlags|TFlagSendFlush {
			t.Errorf("export name reply % x", rest)
		}
		if r.Export != fe["disk"] || fe["disk"].refs != 1 || r.Structured {
			t.Errorf("settled on %+v, %d references", r, fe["disk"].refs)
		}
	}
}

// failWriter fails every write after n bytes.
type failWriter struct{ n int }

func (w *failWriter) Write(b []byte) (int, error) {
	if len(b) > w.n {
		return 0, errors.New("write failed")
	}
	w.n -= len(b)
	return len(b), nil
}

// FuzzHandshake feeds the handshake whatever a client might send, and a
// connection that fails after some bytes: the replies are well formed,
// and a reference is held exactly when the handshake reached the
// transmission phase.
func FuzzHandshake(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, ClientFixedNewstyle|ClientNoZeroes)
	seed := func(opts ...[]byte) []byte {
		b := append([]byte(nil), flags...)
		for _, o := range opts {
			b = append(b, o...)
		}
		return b
	}
	goReq := func(name string, infos ...uint16) []byte {
		return AppendGoRequest(nil, GoRequest{Name: name, Infos: infos})
	}
	meta := AppendMetaContextRequest(nil, MetaContextRequest{Export: "disk", Queries: []string{MetaBaseAllocation}})
	f.Add(uint16(0xffff), seed(opt(OptList, nil), opt(OptGo, goReq("disk"))))
	f.Add(uint16(0xffff), seed(opt(OptStructuredReply, nil), opt(OptSetMetaContext, meta), opt(OptGo, goReq("ro", InfoName, InfoDescription))))
	f.Add(uint16(0xffff), seed(opt(OptInfo, goReq("gone")), opt(OptGo, goReq("gone")), opt(OptExportName, []byte("disk"))))
	f.Add(uint16(0xffff), seed(opt(OptListMetaContext, meta), opt(OptStartTLS, nil), opt(99, []byte("zz")), opt(OptAbort, nil)))
	f.Add(uint16(40), seed(opt(OptGo, goReq("disk"))))
	f.Add(uint16(18), seed(opt(OptExportName, nil)))
	big := make([]byte, maxOptionLen+1)
	f.Add(uint16(0xffff), seed(opt(OptList, big), opt(OptExportName, big)))
	f.Add(uint16(0xffff), []byte{0, 0, 0, 7})
	f.Fuzz(func(t *testing.T, failAfter uint16, data []byte) {
		fe := newFakeExports()
		var out bytes.Buffer
		w := &failWriter{n: int(failAfter)}
		r, err := Negotiate(struct {
			io.Reader
			io.Writer
		}{bytes.NewReader(data), io.MultiWriter(w, &out)}, fe.handshake())
		refs := 0
		for name, e := range fe {
			if e.closeErr != 0 {
				t.Fatalf("%s closed without a reference", name)
			}
			if name != "" {
				refs += e.refs
			}
		}
		if err != nil {
			if refs != 0 {
				t.Fatalf("handshake failed (%v) holding %d references", err, refs)
			}
		} else {
			if refs != 1 || r.Export == nil || r.Export.(*fakeExport).refs != 1 {
				t.Fatalf("handshake settled on %+v holding %d references", r, refs)
			}
			if r.Size != uint64(r.Export.Size()) || r.Flags&TFlagHasFlags == 0 ||
				(r.Flags&TFlagReadOnly != 0) != r.Export.ReadOnly() || (r.Flags&TFlagSendDF != 0) != r.Structured {
				t.Fatalf("handshake settled on %+v", r)
			}
			if r.Meta && !r.Structured {
				t.Fatalf("meta context without structured replies: %+v", r)
			}
		}
		b := out.Bytes()
		if len(b) < 18 {
			return
		}
		_, rest := optReplies(b[18:])
		if err == nil && len(rest) != 0 && len(rest) != 10 && len(rest) != 134 {
			t.Fatalf("%d bytes after the option replies", len(rest))
		}
	})
}

// infoReplies parses b's option replies into their types and the INFO
// payloads by info type.
func infoReplies(t *testing.T, b []byte) (types []uint32, infos map[uint16][]byte, msgs [][]byte) {
	t.Helper()
	infos = map[uint16][]byte{}
	for len(b) > 0 {
		r, err := ParseOptionReply(b)
		if err != nil {
			t.Fatal(err)
		}
		data := b[OptReplyHeaderLen : OptReplyHeaderLen+int(r.Length)]
		b = b[OptReplyHeaderLen+int(r.Length):]
		types = append(types, r.Type)
		switch {
		case r.Type == RepInfo:
			infos[binary.BigEndian.Uint16(data)] = data[2:]
		case IsRepErr(r.Type):
			msgs = append(msgs, data)
		}
	}
	return types, infos, msgs
}

// TestHandshakeBlockSizes: a client that asks for the block sizes is told
// a minimum of MinBlock and held to it; one that doesn't is told 1.
func TestHandshakeBlockSizes(t *testing.T) {
	for _, asked := range []bool{false, true} {
		h := newFakeExports().handshake()
		var infos []uint16
		if asked {
			infos = []uint16{InfoBlockSize}
		}
		st := h.Option(OptionHeader{Option: OptGo}, AppendGoRequest(nil, GoRequest{Name: "disk", Infos: infos}))
		_, got, _ := infoReplies(t, st.Reply)
		bs := got[InfoBlockSize]
		if len(bs) != 12 {
			t.Fatalf("asked %v: block size info %x", asked, bs)
		}
		wantMin := uint32(1)
		if asked {
			wantMin = MinBlock
		}
		if m, p, x := binary.BigEndian.Uint32(bs), binary.BigEndian.Uint32(bs[4:]), binary.BigEndian.Uint32(bs[8:]); m != wantMin || p != prefBlock || x != 1<<20 {
			t.Errorf("asked %v: block sizes %d/%d/%d, want %d/%d/%d", asked, m, p, x, wantMin, prefBlock, 1<<20)
		}
		if st.Result.BlockSizes != asked || !st.Result.ToldSizes {
			t.Errorf("asked %v: result BlockSizes %v ToldSizes %v", asked, st.Result.BlockSizes, st.Result.ToldSizes)
		}
	}
}

// TestHandshakeLongNames: a name of MaxString bytes gets a clean
// ERR_UNKNOWN whose message fits the protocol's limit; a longer one is
// ERR_INVALID; the handshake goes on.
func TestHandshakeLongNames(t *testing.T) {
	h := newFakeExports().handshake()
	h.ClientFlags(ClientFixedNewstyle)
	h.structured = true
	for _, c := range []struct {
		opt  uint32
		data []byte
		want uint32
	}{
		{OptInfo, AppendGoRequest(nil, GoRequest{Name: string(bytes.Repeat([]byte("n"), MaxString))}), RepErrUnknown},
		{OptInfo, AppendGoRequest(nil, GoRequest{Name: string(bytes.Repeat([]byte("n"), MaxString+1))}), RepErrInvalid},
		{OptGo, AppendGoRequest(nil, GoRequest{Name: string(bytes.Repeat([]byte("n"), 5000))}), RepErrInvalid},
		{OptListMetaContext, AppendMetaContextRequest(nil, MetaContextRequest{Export: string(bytes.Repeat([]byte("n"), 5000))}), RepErrInvalid},
	} {
		st := h.Option(OptionHeader{Option: c.opt, Length: uint32(len(c.data))}, c.data)
		types, _, msgs := infoReplies(t, st.Reply)
		if st.Next != Continue || len(types) != 1 || types[0] != c.want {
			t.Errorf("option %d with %d bytes: %v %#x, want %#x", c.opt, len(c.data), st.Next, types, c.want)
		}
		for _, m := range msgs {
			if len(m) > MaxString {
				t.Errorf("option %d: error message of %d bytes", c.opt, len(m))
			}
		}
	}
	if st := h.exportName(string(bytes.Repeat([]byte("n"), 5000))); st.Next != Fail {
		t.Errorf("EXPORT_NAME of 5000 bytes: %v", st.Next)
	}
}

// TestReadOnlyExportFlags: a read-only export offers no command that
// writes.
func TestReadOnlyExportFlags(t *testing.T) {
	h := newFakeExports().handshake()
	h.Flags = TFlagHasFlags | TFlagSendFlush | TFlagSendTrim | TFlagSendWriteZeroes | TFlagSendFastZero | TFlagSendCache
	for name, want := range map[string]uint16{
		"ro":   TFlagHasFlags | TFlagSendFlush | TFlagSendCache | TFlagReadOnly,
		"disk": h.Flags,
	} {
		st := h.Option(OptionHeader{Option: OptGo}, AppendGoRequest(nil, GoRequest{Name: name}))
		if st.Next != Transmit || st.Result.Flags != want {
			t.Errorf("%s: flags %#x, want %#x", name, st.Result.Flags, want)
		}
		st.Result.Export.Close()
	}
}
