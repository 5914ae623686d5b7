package client

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

// ctScript serves each connection with fn (the server's side of a
// handshake written out by hand) and returns the URI.
func ctScript(t *testing.T, fn func(nc net.Conn, br *bufio.Reader)) string {
	t.Helper()
	sock := filepath.Join(testutil.SockDir(t), "h.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				fn(nc, bufio.NewReader(nc))
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return "nbd+unix:///exp?socket=" + sock
}

// ctGreet sends the newstyle greeting and reads the client's flags.
func ctGreet(nc net.Conn, br *bufio.Reader, hflags uint16) (uint32, bool) {
	var hs [18]byte
	binary.BigEndian.PutUint64(hs[0:], wire.NBDMagic)
	binary.BigEndian.PutUint64(hs[8:], wire.IHaveOpt)
	binary.BigEndian.PutUint16(hs[16:], hflags)
	nc.Write(hs[:])
	var cf [4]byte
	if _, err := io.ReadFull(br, cf[:]); err != nil {
		return 0, false
	}
	return binary.BigEndian.Uint32(cf[:]), true
}

// ctOption reads one option.
func ctOption(br *bufio.Reader) (uint32, []byte, bool) {
	var oh [wire.OptionHeaderSize]byte
	if _, err := io.ReadFull(br, oh[:]); err != nil {
		return 0, nil, false
	}
	h, err := wire.ParseOptionHeader(oh[:])
	if err != nil {
		return 0, nil, false
	}
	data := make([]byte, h.Length)
	if _, err := io.ReadFull(br, data); err != nil {
		return 0, nil, false
	}
	return h.Option, data, true
}

// ctRequest reads one request header (false: the client went away or
// sent garbage).
func ctRequest(br *bufio.Reader) (wire.Request, bool) {
	var rb [wire.RequestSize]byte
	if _, err := io.ReadFull(br, rb[:]); err != nil {
		return wire.Request{}, false
	}
	req, err := wire.ParseRequest(rb[:])
	return req, err == nil
}

// ctAwaitOption reads options, refusing every other as unsupported,
// until the client sends want; it returns want's data (false: the
// client went away).
func ctAwaitOption(nc net.Conn, br *bufio.Reader, want uint32) ([]byte, bool) {
	for {
		opt, data, ok := ctOption(br)
		if !ok {
			return nil, false
		}
		if opt == want {
			return data, true
		}
		nc.Write(wire.AppendOptionReply(nil, opt, wire.RepErrUnsup, nil))
	}
}

func ctInfoExport(size uint64, flags uint16) []byte {
	b := binary.BigEndian.AppendUint16(nil, wire.InfoExport)
	b = binary.BigEndian.AppendUint64(b, size)
	return binary.BigEndian.AppendUint16(b, flags)
}

func ctInfoBlockSize(min, pref, max uint32) []byte {
	b := binary.BigEndian.AppendUint16(nil, wire.InfoBlockSize)
	b = binary.BigEndian.AppendUint32(b, min)
	b = binary.BigEndian.AppendUint32(b, pref)
	return binary.BigEndian.AppendUint32(b, max)
}

// ctHandshakeDial dials uri once, without retries, and returns the error.
func ctHandshakeDial(uri string, opts Options) (*Client, error) {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	return Dial(ctx, uri, opts)
}

// NBD_OPT_GO refused as unknown: the client falls back to
// NBD_OPT_EXPORT_NAME, without the 124 zero bytes when both sides agreed.
func TestClientGoUnsupportedFallsBack(t *testing.T) {
	for _, noZeroes := range []bool{true, false} {
		var gotName string
		var mu sync.Mutex
		uri := ctScript(t, func(nc net.Conn, br *bufio.Reader) {
			hf := wire.FlagFixedNewstyle
			if noZeroes {
				hf |= wire.FlagNoZeroes
			}
			cf, ok := ctGreet(nc, br, hf)
			if !ok || (cf&wire.ClientNoZeroes != 0) != noZeroes {
				return
			}
			data, ok := ctAwaitOption(nc, br, wire.OptExportName)
			if !ok {
				return
			}
			mu.Lock()
			gotName = string(data)
			mu.Unlock()
			b := binary.BigEndian.AppendUint64(nil, 1<<20)
			b = binary.BigEndian.AppendUint16(b, wire.TFlagHasFlags|wire.TFlagSendFlush)
			if !noZeroes {
				b = append(b, make([]byte, 124)...)
			}
			nc.Write(b)
			// Transmission: answer a flush, then stop.
			req, ok := ctRequest(br)
			if !ok {
				return
			}
			rep := make([]byte, wire.SimpleReplySize)
			wire.PutSimpleReply(rep, 0, req.Cookie)
			nc.Write(rep)
			io.Copy(io.Discard, br)
		})
		c, err := ctHandshakeDial(uri, Options{})
		if err != nil {
			t.Fatalf("no-zeroes %v: %v", noZeroes, err)
		}
		info := c.Info()
		mu.Lock()
		name := gotName
		mu.Unlock()
		if info.Go || info.Structured || info.Size != 1<<20 || !info.CanFlush() || name != "exp" {
			t.Errorf("no-zeroes %v: info %+v, export name %q", noZeroes, info, name)
		}
		if err := c.Flush(ctCtx(t)); err != nil {
			t.Errorf("flush: %v", err)
		}
		c.Close()
	}
}

// Handshakes that fail say why.
func TestClientHandshakeErrors(t *testing.T) {
	goReply := func(replies ...[]byte) func(nc net.Conn, br *bufio.Reader) {
		return func(nc net.Conn, br *bufio.Reader) {
			if _, ok := ctGreet(nc, br, wire.FlagFixedNewstyle|wire.FlagNoZeroes); !ok {
				return
			}
			for {
				opt, _, ok := ctOption(br)
				if !ok {
					return
				}
				switch opt {
				case wire.OptGo:
					for _, r := range replies {
						nc.Write(r)
					}
				case wire.OptAbort:
					nc.Write(wire.AppendOptionReply(nil, opt, wire.RepAck, nil))
					return
				default:
					nc.Write(wire.AppendOptionReply(nil, opt, wire.RepErrUnsup, nil))
				}
			}
		}
	}
	ack := wire.AppendOptionReply(nil, wire.OptGo, wire.RepAck, nil)
	info := wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, ctInfoExport(1<<20, wire.TFlagHasFlags))
	for _, tc := range []struct {
		name   string
		server func(nc net.Conn, br *bufio.Reader)
		want   error
	}{
		{"no-such-export", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepErrUnknown, []byte("nope"))), errNoExport},
		{"tls-required", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepErrTLSReqd, nil)), errTLSRequired},
		{"policy", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepErrPolicy, nil)), errHandshake},
		{"shutting-down", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepErrShutdown, nil)), errHandshake},
		{"ack-without-export-info", goReply(ack), errHandshake},
		{"bad-min-block", goReply(info, wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, ctInfoBlockSize(3, 4096, 1<<20)), ack), errHandshake},
		{"max-below-min", goReply(info, wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, ctInfoBlockSize(4096, 4096, 512)), ack), errHandshake},
		{"short-info", goReply(wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, []byte{0, 0, 1}), ack), errHandshake},
		{"reply-to-another-option", goReply(wire.AppendOptionReply(nil, wire.OptList, wire.RepAck, nil)), errHandshake},
		{"oldstyle", func(nc net.Conn, br *bufio.Reader) {
			b := binary.BigEndian.AppendUint64(nil, wire.NBDMagic)
			b = binary.BigEndian.AppendUint64(b, cliservMagic)
			nc.Write(append(b, make([]byte, 8+4+124)...))
			io.Copy(io.Discard, br)
		}, errHandshake},
		{"not-nbd", func(nc net.Conn, br *bufio.Reader) {
			nc.Write([]byte("SSH-2.0-OpenSSH_9.2p1 Debian\r\n"))
			io.Copy(io.Discard, br)
		}, errHandshake},
		{"hangs-up", func(nc net.Conn, br *bufio.Reader) {}, errHandshake},
		{"export-name-refused", func(nc net.Conn, br *bufio.Reader) {
			// Not fixed newstyle: only NBD_OPT_EXPORT_NAME, refused by
			// closing the connection.
			if _, ok := ctGreet(nc, br, 0); !ok {
				return
			}
			ctOption(br)
		}, errNoExport},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uri := ctScript(t, tc.server)
			c, err := ctHandshakeDial(uri, Options{})
			if err == nil {
				c.Close()
				t.Fatal("handshake succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("%v, want %v", err, tc.want)
			}
		})
	}
	// A server that says nothing: the dial times out.
	uri := ctScript(t, func(nc net.Conn, br *bufio.Reader) { io.Copy(io.Discard, br) })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Dial(ctx, uri, Options{}); err == nil {
		t.Fatal("dial of a silent server succeeded")
	}
}

// After a reconnection, an export of another size is refused (the client
// keeps trying); the same size is accepted.
func TestClientReconnectSizeChange(t *testing.T) {
	var mu sync.Mutex
	size := uint64(1 << 20)
	uri := ctScript(t, func(nc net.Conn, br *bufio.Reader) {
		if _, ok := ctGreet(nc, br, wire.FlagFixedNewstyle|wire.FlagNoZeroes); !ok {
			return
		}
		if _, ok := ctAwaitOption(nc, br, wire.OptGo); !ok {
			return
		}
		mu.Lock()
		sz := size
		mu.Unlock()
		nc.Write(wire.AppendOptionReply(nil, wire.OptGo, wire.RepInfo, ctInfoExport(sz, wire.TFlagHasFlags|wire.TFlagSendFlush)))
		nc.Write(wire.AppendOptionReply(nil, wire.OptGo, wire.RepAck, nil))
		// Every connection serves one request.
		req, ok := ctRequest(br)
		if !ok {
			return
		}
		if req.Type == wire.CmdDisc {
			return
		}
		rep := make([]byte, wire.SimpleReplySize)
		wire.PutSimpleReply(rep, 0, req.Cookie)
		nc.Write(rep)
		nc.Close()
	})
	c := ctDial(t, uri, Options{ReconnectTimeout: time.Hour})
	ctx := ctCtx(t)
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Each connection serves one request: wait for the next one.
	testutil.Eventually(t, "reconnected", func() bool { return c.Stats().Reconnects == 1 && c.Connected() })
	mu.Lock()
	size = 2 << 20
	mu.Unlock()
	if err := c.Flush(ctx); err != nil { // on the live connection
		t.Fatal(err)
	}
	fctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := c.Flush(fctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("flush with the export resized: %v, want to wait", err)
	}
	mu.Lock()
	size = 1 << 20
	mu.Unlock()
	if err := c.Flush(ctx); err != nil {
		t.Fatalf("flush once the size is back: %v", err)
	}
	if c.Size() != 1<<20 {
		t.Errorf("size %d", c.Size())
	}
}
