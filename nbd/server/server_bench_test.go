package server

import (
	"fmt"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"udm/nbd/wire"
)

// BenchmarkServerPipelined measures the server's whole path — socket recv
// on the loop, parse, a bio through linear to a tmpfs file, the reply —
// with batches of depth pipelined 4 KiB requests from a raw-syscall
// client (which allocates nothing) over a Unix socket.
func BenchmarkServerPipelined(b *testing.B) {
	for _, depth := range []int{1, 32} {
		for _, op := range []string{"read", "write"} {
			b.Run(fmt.Sprintf("%s/qd%d", op, depth), func(b *testing.B) { benchServer(b, op, depth) })
		}
	}
}

func benchServer(b *testing.B, op string, depth int) {
	ts := newTestServer(b, 1, Config{})
	ts.linear("disk", 64<<20)
	rc := dialRaw(b, ts.unix)
	rc.goExport("disk", false)
	fd, err := dupFd(rc.c)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	unix.SetNonblock(fd, false)
	typ, reqLen, repLen := wire.CmdRead, wire.RequestSize, wire.SimpleReplySize+4096
	if op == "write" {
		typ, reqLen, repLen = wire.CmdWrite, wire.RequestSize+4096, wire.SimpleReplySize
	}
	req := make([]byte, depth*reqLen)
	for i := 0; i < depth; i++ {
		wire.Request{Type: typ, Cookie: uint64(i), Offset: uint64(i) * 4096, Length: 4096}.Encode(req[i*reqLen:])
	}
	rep := make([]byte, depth*repLen)
	batch := func() {
		for sent := 0; sent < len(req); {
			k, err := unix.Write(fd, req[sent:])
			if err != nil {
				b.Fatal(err)
			}
			sent += k
		}
		for got := 0; got < len(rep); {
			k, err := unix.Read(fd, rep[got:])
			if err != nil || k == 0 {
				b.Fatalf("replies: %v", err)
			}
			got += k
		}
	}
	for i := 0; i < 100; i++ {
		batch()
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	n := (b.N + depth - 1) / depth
	for i := 0; i < n; i++ {
		batch()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	reqs := float64(n * depth)
	b.ReportMetric(reqs/b.Elapsed().Seconds(), "req/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/reqs, "server+client-allocs/req")
}
