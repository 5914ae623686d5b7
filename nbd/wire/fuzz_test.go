package wire

import (
	"bytes"
	"reflect"
	"testing"
)

func FuzzParseRequest(f *testing.F) {
	var b [RequestSize]byte
	for _, r := range []Request{
		{Type: CmdRead, Cookie: 1, Offset: 4096, Length: 4096},
		{Type: CmdWrite, Flags: CmdFlagFUA, Cookie: 2, Length: 512},
		{Type: CmdWriteZeroes, Flags: CmdFlagNoHole | CmdFlagFastZero, Offset: 1 << 40, Length: 1 << 31},
		{Type: 0xffff, Flags: 0xffff, Cookie: ^uint64(0), Offset: ^uint64(0), Length: ^uint32(0)},
	} {
		r.Encode(b[:])
		f.Add(append([]byte(nil), b[:]...))
	}
	f.Add([]byte{0x25, 0x60})
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := ParseRequest(data)
		if err != nil {
			return
		}
		var out [RequestSize]byte
		r.Encode(out[:])
		if !bytes.Equal(out[:], data[:RequestSize]) {
			t.Fatalf("request %+v re-encodes as % x, parsed from % x", r, out, data[:RequestSize])
		}
	})
}

func FuzzParseOptionPayloads(f *testing.F) {
	f.Add(AppendGoRequest(nil, GoRequest{Name: "disk", Infos: []uint16{InfoBlockSize, InfoName}}))
	f.Add(AppendGoRequest(nil, GoRequest{}))
	f.Add(AppendMetaContextRequest(nil, MetaContextRequest{Export: "disk", Queries: []string{MetaBaseAllocation, "x"}}))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		if g, err := ParseGoRequest(data); err == nil {
			again, err := ParseGoRequest(AppendGoRequest(nil, g))
			if err != nil || !reflect.DeepEqual(again, g) {
				t.Fatalf("GO request %+v does not round-trip: %+v, %v", g, again, err)
			}
		}
		if m, err := ParseMetaContextRequest(data); err == nil {
			again, err := ParseMetaContextRequest(AppendMetaContextRequest(nil, m))
			if err != nil || !reflect.DeepEqual(again, m) {
				t.Fatalf("meta context request %+v does not round-trip: %+v, %v", m, again, err)
			}
		}
		if h, err := ParseOptionHeader(data); err == nil {
			var b [OptionHeaderSize]byte
			PutOptionHeader(b[:], h.Option, h.Length)
			if !bytes.Equal(b[:], data[:OptionHeaderSize]) {
				t.Fatalf("option header %+v does not round-trip", h)
			}
		}
	})
}
