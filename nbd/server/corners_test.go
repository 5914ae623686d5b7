package server

import (
	"bytes"
	"fmt"
	"os"
	"sync"
	"testing"

	"udm/nbd/wire"
)

// pat is a deterministic byte pattern for [off, off+n).
func pat(off, n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(off+i)*7 + seed
	}
	return b
}

// TestUnalignedRequests: a client that asked for no block sizes may read,
// write, zero and trim at any offset and length; the bytes around what it
// wrote keep their data (read-modify-write against the O_DIRECT backing),
// and disjoint unaligned writes in flight together in the same sectors
// all land.
func TestUnalignedRequests(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	file := ts.linear("file", 4<<20)
	mem := ts.memDisk("mem", 4<<20) // completes later, on the loop: RMWs interleave
	base := pat(0, 1<<20, 1)
	for _, tc := range []struct {
		export     string
		structured bool
	}{{"file", false}, {"file", true}, {"mem", false}, {"mem", true}} {
		t.Run(fmt.Sprintf("%s/structured=%v", tc.export, tc.structured), func(t *testing.T) {
			structured := tc.structured
			if tc.export == "file" {
				if err := os.WriteFile(file, base, 0o644); err != nil {
					t.Fatal(err)
				}
			} else if _, err := mem.WriteAt(base, 0); err != nil {
				t.Fatal(err)
			}
			want := append([]byte(nil), base...)
			rc := dialRaw(t, ts.tcp)
			rc.goExportInfos(tc.export, structured, nil)
			read := func(cookie, off uint64, n int) []byte {
				t.Helper()
				rc.send(wire.CmdRead, 0, cookie, off, uint32(n), nil)
				c, werr, data := rc.reply()
				if !structured && werr == 0 {
					data = rc.readData(n)
				}
				if c != cookie || werr != 0 {
					t.Fatalf("read %d+%d: cookie %d error %d", off, n, c, werr)
				}
				return data
			}
			// Reads of odd sizes at odd offsets, within a sector and across
			// many.
			for i, rd := range [][2]int{{1, 3}, {511, 2}, {1, 1048590 - 1048576 + 4096}, {4095, 700}, {100, 100000}} {
				if got := read(uint64(10+i), uint64(rd[0]), rd[1]); !bytes.Equal(got, want[rd[0]:rd[0]+rd[1]]) {
					t.Fatalf("read %d+%d: wrong data", rd[0], rd[1])
				}
			}
			// 100 disjoint unaligned writes of 37 bytes, all in flight.
			var payload []byte
			for i := 0; i < 100; i++ {
				off := 4096 + 1 + 37*i
				d := pat(off, 37, 9)
				copy(want[off:], d)
				var h [wire.RequestSize]byte
				wire.Request{Type: wire.CmdWrite, Cookie: uint64(100 + i), Offset: uint64(off), Length: 37}.Encode(h[:])
				payload = append(append(payload, h[:]...), d...)
			}
			// A 3-byte write at offset 1, a zero of 100 bytes at 7 (in
			// the same sector), a trim that starts and ends mid-sector.
			for _, r := range []struct {
				typ     uint16
				off, n  int
				payload []byte
			}{{wire.CmdWrite, 1, 3, []byte("abc")}, {wire.CmdWriteZeroes, 20007, 100, nil}} {
				var h [wire.RequestSize]byte
				wire.Request{Type: r.typ, Cookie: uint64(300 + r.off), Offset: uint64(r.off), Length: uint32(r.n)}.Encode(h[:])
				payload = append(append(payload, h[:]...), r.payload...)
				if r.payload != nil {
					copy(want[r.off:], r.payload)
				} else {
					clear(want[r.off : r.off+r.n])
				}
			}
			rc.write(payload)
			for i := 0; i < 102; i++ {
				if c, werr, _ := rc.reply(); werr != 0 {
					t.Fatalf("unaligned write (cookie %d): error %d", c, werr)
				}
			}
			rc.send(wire.CmdTrim, 0, 400, 65536+1, 8192, nil)
			if c, werr, _ := rc.reply(); c != 400 || werr != 0 {
				t.Fatalf("unaligned trim: cookie %d error %d", c, werr)
			}
			// A trim may zero what it covers (here: the whole sectors in
			// it); the bytes outside it are kept.
			got := read(401, 0, 1<<20)
			for _, rg := range [][2]int{{0, 65537}, {65536 + 1 + 8192, 1<<20 - (65537 + 8192)}} {
				if !bytes.Equal(got[rg[0]:rg[0]+rg[1]], want[rg[0]:rg[0]+rg[1]]) {
					for i := rg[0]; i < rg[0]+rg[1]; i++ {
						if got[i] != want[i] {
							t.Fatalf("byte %d is %#x, want %#x", i, got[i], want[i])
						}
					}
				}
			}
		})
	}
}

// TestAlignmentForNegotiatingClients: a client that asked for the block
// sizes is held to 512-byte alignment (EINVAL, connection kept).
func TestAlignmentForNegotiatingClients(t *testing.T) {
	_, rc := rawDisk(t, 1<<20, rawDiskConfig{})
	rc.send(wire.CmdWrite, 0, 1, 1, 3, []byte("abc"))
	if c, werr, _ := rc.reply(); c != 1 || werr != wire.EINVAL {
		t.Fatalf("unaligned write: cookie %d error %d, want EINVAL", c, werr)
	}
	rc.send(wire.CmdFlush, 0, 2, 0, 0, nil)
	if c, werr, _ := rc.reply(); c != 2 || werr != 0 {
		t.Fatalf("flush after: cookie %d error %d", c, werr)
	}
}

// TestHalfCloseAnswersAll: a client that sends requests and shuts its
// side (with NBD_CMD_DISC or without) gets every reply before the server
// closes.
func TestHalfCloseAnswersAll(t *testing.T) {
	ts := newTestServer(t, 1, Config{})
	ts.linear("disk", 4<<20)
	for _, disc := range []bool{false, true} {
		t.Run(fmt.Sprintf("disc=%v", disc), func(t *testing.T) {
			rc := dialRaw(t, ts.tcp)
			rc.goExport("disk", false)
			var b []byte
			for i := 0; i < 32; i++ {
				var h [wire.RequestSize]byte
				wire.Request{Type: wire.CmdRead, Cookie: uint64(i + 1), Offset: uint64(i%2) << 20, Length: 1 << 20}.Encode(h[:])
				b = append(b, h[:]...)
			}
			if disc {
				var h [wire.RequestSize]byte
				wire.Request{Type: wire.CmdDisc, Cookie: 99}.Encode(h[:])
				b = append(b, h[:]...)
			}
			rc.write(b)
			rc.c.(interface{ CloseWrite() error }).CloseWrite()
			for i := 0; i < 32; i++ {
				if _, werr, _ := rc.reply(); werr != 0 {
					t.Fatalf("reply %d: error %d", i, werr)
				}
				rc.readData(1 << 20)
			}
			if !rc.closed() {
				t.Fatal("connection left open after the client shut its side")
			}
		})
	}
}

// TestRefusedWriteReplyFollowsPayload: the error reply to a refused write
// comes after its payload is read, so before the reply to the request
// sent after it.
func TestRefusedWriteReplyFollowsPayload(t *testing.T) {
	_, rc := rawDisk(t, 8<<20, rawDiskConfig{readOnly: true})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rc.send(wire.CmdWrite, 0, 1, 0, 4<<20, make([]byte, 4<<20))
		rc.send(wire.CmdRead, 0, 2, 0, 4096, nil)
	}()
	if c, werr, _ := rc.reply(); c != 1 || werr != wire.EPERM {
		t.Fatalf("first reply: cookie %d error %d, want the write's EPERM", c, werr)
	}
	if c, werr, _ := rc.reply(); c != 2 || werr != 0 {
		t.Fatalf("second reply: cookie %d error %d, want the read", c, werr)
	}
	rc.readData(4096)
	wg.Wait()
}
