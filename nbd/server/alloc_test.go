package server

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

// TestServerAllocatesNothingPerRequest drives the server's steady path —
// recv, parse, a dm bio through linear to a file, the reply — with a
// client made of raw system calls on preallocated buffers (it allocates
// nothing), and counts the heap allocations of the whole process per
// request; receiving at once, and gathering (the timer, the pacer).
func TestServerAllocatesNothingPerRequest(t *testing.T) {
	if testutil.Race {
		t.Skip("skipped under -race: the race detector allocates on its own")
	}
	for _, gather := range []bool{false, true} {
		t.Run(fmt.Sprintf("gather=%v", gather), func(t *testing.T) { testAllocs(t, gather) })
	}
}

func testAllocs(t *testing.T, gather bool) {
	ts := newTestServer(t, 1, Config{forceGather: gather, GatherWindow: DefaultGatherWindow})
	ts.linear("disk", 64<<20) // tmpfs: filedev copies inline
	exports := []string{"disk"}
	if os.Geteuid() == 0 {
		// A loop device: filedev goes through io_uring.
		dev := testutil.LoopDevice(t, testutil.TempFile(t, 64<<20))
		if _, err := ts.reg.Create(context.Background(), "blk", "", fmt.Sprintf("0 %d linear %s 0", 64<<20/512, dev)); err != nil {
			t.Fatal(err)
		}
		exports = append(exports, "blk")
	}
	for _, c := range []struct {
		export     string
		structured bool
	}{{"disk", false}, {"disk", true}, {"blk", false}, {"blk", true}} {
		if !slices.Contains(exports, c.export) {
			continue
		}
		structured := c.structured
		rc := dialRaw(t, ts.unix)
		rc.goExport(c.export, structured)
		fd, err := dupFd(rc.c)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		unix.SetNonblock(fd, false)
		const batch = 32
		req := make([]byte, batch*(wire.RequestSize+4096))
		rep := make([]byte, 1<<20)
		// One batch: 16 reads and 16 writes of 4 KiB, then all replies.
		round := func(n int) {
			for r := 0; r < n; r++ {
				p := req[:0]
				for i := 0; i < batch; i++ {
					var h [wire.RequestSize]byte
					typ := wire.CmdRead
					if i%2 == 1 {
						typ = wire.CmdWrite
					}
					wire.Request{Type: typ, Cookie: uint64(i), Offset: uint64((r*batch+i)%16000) * 4096, Length: 4096}.Encode(h[:])
					p = append(p, h[:]...)
					if typ == wire.CmdWrite {
						p = p[:len(p)+4096]
					}
				}
				for sent := 0; sent < len(p); {
					k, err := unix.Write(fd, p[sent:])
					if err != nil {
						t.Fatal(err)
					}
					sent += k
				}
				// Replies: simple 16 (+4096 for reads); structured 20+8+4096
				// for reads, 20 for the others.
				want := 0
				for i := 0; i < batch; i++ {
					switch {
					case !structured && i%2 == 0:
						want += wire.SimpleReplySize + 4096
					case !structured:
						want += wire.SimpleReplySize
					case i%2 == 0:
						want += wire.StructReplySize + 8 + 4096
					default:
						want += wire.StructReplySize
					}
				}
				for got := 0; got < want; {
					k, err := unix.Read(fd, rep[got:want])
					if err != nil || k == 0 {
						t.Fatalf("reading replies: %v", err)
					}
					got += k
				}
				if m := binary.BigEndian.Uint32(rep); m != wire.SimpleMagic && m != wire.StructMagic {
					t.Fatalf("bad reply magic %#x", m)
				}
			}
		}
		round(50) // warm up: pools, arena classes, slots
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		const rounds = 300
		round(rounds)
		runtime.ReadMemStats(&after)
		per := float64(after.Mallocs-before.Mallocs) / (rounds * batch)
		t.Logf("%s, structured=%v: %d allocations over %d requests (%.4f per request)", c.export, structured, after.Mallocs-before.Mallocs, rounds*batch, per)
		if per > 0.01 {
			t.Fatalf("%s, structured=%v: %.4f heap allocations per request on the steady path", c.export, structured, per)
		}
	}
}
