package fuse

import (
	"os"
	"path/filepath"
	"testing"
)

func hdr(op uint32, unique, nodeid uint64, n int) []byte {
	b := make([]byte, n)
	le.PutUint32(b[0:], uint32(n))
	le.PutUint32(b[4:], op)
	le.PutUint64(b[8:], unique)
	le.PutUint64(b[16:], nodeid)
	return b
}

func TestParseRequest(t *testing.T) {
	b := hdr(opLookup, 7, rootID, inHeaderSize+5)
	copy(b[inHeaderSize:], "demo\x00")
	r, err := parseRequest(b, len(b))
	if err != nil || string(r.Name) != "demo" || r.hdr.Unique != 7 || r.hdr.NodeID != rootID {
		t.Fatalf("lookup: %+v %v", r, err)
	}
	// A name without its NUL is malformed.
	b = hdr(opLookup, 7, rootID, inHeaderSize+4)
	copy(b[inHeaderSize:], "demo")
	if _, err := parseRequest(b, len(b)); err == nil {
		t.Fatal("lookup without NUL accepted")
	}
	// A WRITE is parsed from its header; Len counts the payload.
	b = hdr(opWrite, 9, 5, reqHeadSize)
	le.PutUint32(b[0:], reqHeadSize+4096)
	le.PutUint64(b[inHeaderSize:], 3)
	le.PutUint64(b[inHeaderSize+8:], 1<<20)
	le.PutUint32(b[inHeaderSize+16:], 4096)
	r, err = parseRequest(b, reqHeadSize)
	if err != nil || r.Fh != 3 || r.Offset != 1<<20 || r.Size != 4096 {
		t.Fatalf("write: %+v %v", r, err)
	}
	le.PutUint32(b[inHeaderSize+16:], 4095) // Size and Len disagree
	if _, err := parseRequest(b, reqHeadSize); err == nil {
		t.Fatal("write with a size unlike its length accepted")
	}
	// A header whose length is not what was read is malformed.
	b = hdr(opGetattr, 1, 1, inHeaderSize+16)
	le.PutUint32(b[0:], inHeaderSize+17)
	if _, err := parseRequest(b, len(b)); err == nil {
		t.Fatal("getattr with a wrong length accepted")
	}
	// BATCH_FORGET's count must fit.
	b = hdr(opBatchForget, 1, 0, inHeaderSize+8+16)
	le.PutUint32(b[inHeaderSize:], 2)
	if _, err := parseRequest(b, len(b)); err == nil {
		t.Fatal("batch forget with too high a count accepted")
	}
	le.PutUint32(b[inHeaderSize:], 1)
	if r, err := parseRequest(b, len(b)); err != nil || len(r.Forgets) != 16 {
		t.Fatalf("batch forget: %+v %v", r, err)
	}
	// INIT: flags2 counts only with FUSE_INIT_EXT.
	b = hdr(opInit, 1, 0, inHeaderSize+64)
	le.PutUint32(b[inHeaderSize:], 7)
	le.PutUint32(b[inHeaderSize+4:], 44)
	le.PutUint32(b[inHeaderSize+12:], initInitExt|initAsyncDIO)
	le.PutUint32(b[inHeaderSize+16:], initOverIOUring>>32)
	r, err = parseRequest(b, len(b))
	if err != nil || r.InitMinor != 44 || r.InitFlags&initOverIOUring == 0 || r.InitFlags&initAsyncDIO == 0 {
		t.Fatalf("init: %+v %v", r, err)
	}
	le.PutUint32(b[inHeaderSize+12:], initAsyncDIO)
	if r, _ := parseRequest(b, len(b)); r.InitFlags&initOverIOUring != 0 {
		t.Fatal("flags2 read without FUSE_INIT_EXT")
	}
	for _, n := range []int{0, 1, inHeaderSize - 1} {
		if _, err := parseRequest(make([]byte, 64), n); err == nil {
			t.Fatalf("%d bytes accepted", n)
		}
	}
}

// FuzzParseRequest: any bytes parse or fail, never panic, and what a
// request points into lies inside what was read.
func FuzzParseRequest(f *testing.F) {
	seed := hdr(opLookup, 1, rootID, inHeaderSize+5)
	copy(seed[inHeaderSize:], "demo\x00")
	f.Add(seed)
	f.Add(hdr(opRead, 2, 5, inHeaderSize+40))
	f.Add(hdr(opBatchForget, 3, 0, inHeaderSize+24))
	f.Add(hdr(opInit, 4, 0, inHeaderSize+64))
	w := hdr(opWrite, 5, 5, reqHeadSize)
	le.PutUint32(w[inHeaderSize+16:], 512)
	le.PutUint32(w[0:], reqHeadSize+512)
	f.Add(w)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseRequest(b, len(b))
		if err != nil {
			return
		}
		if len(r.Name) > len(b) || len(r.Forgets) > len(b) || len(r.Forgets)%16 != 0 {
			t.Fatalf("slices beyond the request: %+v", r)
		}
		if r.hdr.Opcode == opWrite && uint64(r.hdr.Len) != reqHeadSize+uint64(r.Size) {
			t.Fatalf("write length %d, size %d", r.hdr.Len, r.Size)
		}
		if r.hdr.Opcode != opWrite && int(r.hdr.Len) != len(b) {
			t.Fatalf("length %d, read %d", r.hdr.Len, len(b))
		}
	})
}

func TestCPUList(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		text string
		want []int
	}{
		{"0-1\n", []int{0, 1}},
		{"0\n", []int{0}},
		{"0-2,5,7-8\n", []int{0, 1, 2, 5, 7, 8}},
		{"x\n", nil},
		{"3-1\n", nil},
	} {
		p := filepath.Join(dir, "l")
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		got := cpuList(p)
		if len(got) != len(tc.want) || (tc.want == nil) != (got == nil) {
			t.Fatalf("%q: %v, want %v", tc.text, got, tc.want)
		}
		for _, c := range tc.want {
			if !got[c] {
				t.Fatalf("%q: %v lacks %d", tc.text, got, c)
			}
		}
	}
	if q := ringQueues(16); len(q) == 0 || q[0] != 16 {
		t.Fatalf("ringQueues: %v: want a queue per possible CPU, CPU 0 online", q)
	}
}
