package server

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/filedev"
	"udm/nbd/wire"
	"udm/uring"
)

// fuzzServer is one live server shared by the fuzz iterations of a
// process; it lives until the process exits.
var fuzzServer struct {
	once sync.Once
	ts   *testServer
	err  error
}

func sharedServer(t *testing.T) *testServer {
	fuzzServer.once.Do(func() { fuzzServer.ts, fuzzServer.err = startDetachedServer() })
	if fuzzServer.err != nil {
		t.Fatal(fuzzServer.err)
	}
	return fuzzServer.ts
}

// startDetachedServer starts a server over a 4 MiB linear device without
// tying anything to a test's cleanup. Its backing file is unlinked once
// open, so nothing is left behind when the process ends.
func startDetachedServer() (*testServer, error) {
	l, err := uring.NewLoop(uring.Config{ID: 0, ArenaSize: 8 << 20})
	if err != nil {
		return nil, err
	}
	f, err := os.CreateTemp("/dev/shm", "udm-fuzz-*.img")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	f.Truncate(4 << 20)
	f.Close()
	reg := dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Open: filedev.Opener(l)})
	if _, err := reg.Create(context.Background(), "disk", "", fmt.Sprintf("0 8192 linear %s 0", f.Name())); err != nil {
		return nil, err
	}
	srv, err := New(Config{Exports: RegistryExports(reg, ""), Loops: []*uring.Loop{l}, Log: zerolog.Nop(),
		MaxPayload: 1 << 20, HandshakeTimeout: 2 * time.Second})
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go srv.Serve(ln)
	return &testServer{reg: reg, srv: srv, loops: []*uring.Loop{l}, tcp: ln.Addr().String()}, nil
}

// serverAlive checks the shared server still completes a handshake and a
// read.
func serverAlive(t *testing.T, ts *testServer) {
	rc := dialRaw(t, ts.tcp)
	rc.goExport("disk", false)
	rc.send(wire.CmdRead, 0, 77, 0, 512, nil)
	if cookie, werr, _ := rc.reply(); cookie != 77 || werr != 0 {
		t.Fatalf("server broken after fuzz input: cookie %d error %d", cookie, werr)
	}
	rc.readData(512)
}

// drive sends data on c, half-closes, and reads until the server closes
// (or gives up after a while: it must not hang).
func drive(t *testing.T, c net.Conn, data []byte) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		c.Write(data)
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	if _, err := io.Copy(io.Discard, c); err != nil {
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Fatalf("server still holds the connection 10s after the client half-closed")
		}
	}
}

func FuzzServerOptions(f *testing.F) {
	opt := func(o uint32, data []byte) []byte {
		var h [wire.OptionHeaderSize]byte
		wire.PutOptionHeader(h[:], o, uint32(len(data)))
		return append(h[:], data...)
	}
	flags := binary.BigEndian.AppendUint32(nil, wire.ClientFixedNewstyle|wire.ClientNoZeroes)
	f.Add(append(append([]byte(nil), flags...), opt(wire.OptList, nil)...))
	f.Add(append(append([]byte(nil), flags...), opt(wire.OptGo, wire.AppendGoRequest(nil, wire.GoRequest{Name: "disk"}))...))
	f.Add(append(append([]byte(nil), flags...), opt(wire.OptStructuredReply, nil)...))
	f.Add(append(append([]byte(nil), flags...), opt(wire.OptSetMetaContext, wire.AppendMetaContextRequest(nil, wire.MetaContextRequest{Export: "disk", Queries: []string{"base:allocation"}}))...))
	f.Add(append(append([]byte(nil), flags...), opt(99, []byte("zz"))...))
	f.Add([]byte{0, 0, 0, 7})
	// A name longer than the protocol's strings; an option drained.
	f.Add(append(append([]byte(nil), flags...), opt(wire.OptInfo, wire.AppendGoRequest(nil, wire.GoRequest{Name: string(bytes.Repeat([]byte("n"), 5000))}))...))
	f.Add(append(append([]byte(nil), flags...), opt(0x7ff0, make([]byte, 70<<10))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts := sharedServer(t)
		c, err := net.Dial("tcp", ts.tcp)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var greet [18]byte
		io.ReadFull(c, greet[:])
		drive(t, c, data)
		serverAlive(t, ts)
	})
}

func FuzzServerRequests(f *testing.F) {
	req := func(typ, flags uint16, off uint64, n uint32, payload int) []byte {
		var b [wire.RequestSize]byte
		wire.Request{Type: typ, Flags: flags, Cookie: 9, Offset: off, Length: n}.Encode(b[:])
		return append(b[:], make([]byte, payload)...)
	}
	f.Add(req(wire.CmdRead, 0, 0, 4096, 0))
	f.Add(req(wire.CmdWrite, wire.CmdFlagFUA, 4096, 4096, 4096))
	f.Add(req(wire.CmdWrite, 0, 0, 8192, 100))
	f.Add(append(req(wire.CmdFlush, 0, 0, 0, 0), req(wire.CmdTrim, 0, 0, 1<<20, 0)...))
	f.Add(req(wire.CmdWriteZeroes, wire.CmdFlagNoHole, 1<<20, 1<<20, 0))
	f.Add(req(wire.CmdDisc, 0, 0, 0, 0))
	f.Add(req(77, 0, 0, 0, 0))
	f.Add(req(wire.CmdWrite, 0, 0, 1<<30, 10))
	// Refused requests with their payloads (past the end, over the
	// maximum, a flag writes don't take), then more requests.
	f.Add(append(req(wire.CmdWrite, 0, 4<<20-512, 4096, 4096), req(wire.CmdRead, 0, 0, 512, 0)...))
	f.Add(append(req(wire.CmdWrite, 0, 0, 2<<20, 2<<20), req(wire.CmdFlush, 0, 0, 0, 0)...))
	f.Add(append(req(wire.CmdWrite, wire.CmdFlagNoHole, 0, 512, 512), req(wire.CmdRead, 0, 0, 512, 0)...))
	// Unaligned requests (served when the client asked for no block
	// sizes: inputs whose length is a multiple of 3), and a half-close
	// with reads in flight.
	f.Add(append(append(req(wire.CmdWrite, 0, 1, 3, 3), req(wire.CmdWriteZeroes, 0, 7, 100, 0)...), req(wire.CmdRead, 0, 1, 1000, 0)...))
	f.Add(append(append(req(wire.CmdWrite, 0, 4095, 3, 3), req(wire.CmdTrim, 0, 1, 4096, 0)...), 0))
	f.Add(bytes.Repeat(req(wire.CmdRead, 0, 0, 64<<10, 0), 32))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts := sharedServer(t)
		rc := dialRaw(t, ts.tcp)
		var infos []uint16
		if len(data)%3 != 0 {
			infos = []uint16{wire.InfoBlockSize}
		}
		rc.goExportInfos("disk", len(data) > 0 && data[0]&1 == 1, infos)
		drive(t, rc.c, data)
		serverAlive(t, ts)
	})
}
