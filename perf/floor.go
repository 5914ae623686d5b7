package perf

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"

	"udm/nbd/wire"
)

// The floor server is a reference for `make bench`, not a product: the
// least an NBD server can do per request on one connection. Each
// connection has a locked thread that busy-polls its socket (a
// non-blocking read, retried: never a sleep, never a wake-up), reads one
// request header at a time, serves it with a pread or pwrite on the file
// and answers with one writev, in order. Its handshake is the wire
// package's with simple replies only, and it serves reads, writes and
// flushes: what fio's nbd engine needs. Its latency at depth 1 is what a
// client like fio sees with the server's share as small as it gets; with
// many requests in flight it does nothing to batch and is no reference
// there.

// maxFloorPayload bounds one request's data.
const maxFloorPayload = 32 << 20

// ServeFloor serves file on ln, one goroutine per connection, until ln
// fails (is closed).
func ServeFloor(ln net.Listener, file string) error {
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			if err := serveFloorConn(c, f, st.Size()); err != nil && !errors.Is(err, io.EOF) {
				fmt.Fprintln(os.Stderr, "floor server:", err)
			}
		}()
	}
}

type floorConn struct {
	fd int
}

func (c floorConn) readFull(b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(c.fd, b)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			continue // busy-poll
		case err != nil:
			return err
		case n == 0:
			return io.EOF
		}
		b = b[n:]
	}
	return nil
}

func (c floorConn) writeAll(bs ...[]byte) error {
	for {
		n, err := unix.Writev(c.fd, bs)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		for len(bs) > 0 && n >= len(bs[0]) {
			n -= len(bs[0])
			bs = bs[1:]
		}
		if len(bs) == 0 {
			return nil
		}
		bs[0] = bs[0][n:]
	}
}

func serveFloorConn(nc net.Conn, f *os.File, size int64) error {
	defer nc.Close()
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%T has no file descriptor", nc)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	// The descriptor is the net.Conn's, already non-blocking; it is only
	// used within this function, while nc stays open.
	var fd int
	raw.Control(func(u uintptr) { fd = int(u) })
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	c := floorConn{fd}
	if err := c.handshake(size); err != nil {
		return err
	}
	file := int(f.Fd())
	hdr := make([]byte, wire.RequestSize)
	reply := make([]byte, wire.SimpleReplySize)
	buf := make([]byte, 1<<20)
	for {
		if err := c.readFull(hdr); err != nil {
			return err
		}
		r, err := wire.ParseRequest(hdr)
		if err != nil {
			return err
		}
		if r.Length > maxFloorPayload {
			return fmt.Errorf("request of %d bytes", r.Length)
		}
		if int(r.Length) > len(buf) {
			buf = make([]byte, r.Length)
		}
		data := buf[:r.Length]
		inRange := r.Offset+uint64(r.Length) <= uint64(size)
		var werr uint32
		var out []byte
		switch r.Type {
		case wire.CmdRead:
			if !inRange {
				werr = wire.EINVAL
			} else if _, err := unix.Pread(file, data, int64(r.Offset)); err != nil {
				werr = wire.EIO
			} else {
				out = data
			}
		case wire.CmdWrite:
			if err := c.readFull(data); err != nil {
				return err
			}
			if !inRange {
				werr = wire.ENOSPC
			} else if _, err := unix.Pwrite(file, data, int64(r.Offset)); err != nil {
				werr = wire.EIO
			}
		case wire.CmdFlush:
			if err := unix.Fdatasync(file); err != nil {
				werr = wire.EIO
			}
		case wire.CmdDisc:
			return nil
		default:
			werr = wire.EINVAL
		}
		wire.PutSimpleReply(reply, werr, r.Cookie)
		if out != nil {
			err = c.writeAll(reply, out)
		} else {
			err = c.writeAll(reply)
		}
		if err != nil {
			return err
		}
	}
}

// Read reads what is there, busy-polling until something is (or the
// connection ends).
func (c floorConn) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(c.fd, b)
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			continue // busy-poll
		case err != nil:
			return 0, err
		case n == 0 && len(b) > 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Write writes all of b.
func (c floorConn) Write(b []byte) (int, error) {
	if err := c.writeAll(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// floorExport is the one export: the file, whatever name is asked for.
type floorExport struct{ size int64 }

func (e floorExport) Size() int64    { return e.size }
func (e floorExport) ReadOnly() bool { return false }
func (e floorExport) Open() error    { return nil }
func (e floorExport) Close() error   { return nil }

// handshake: the wire package's, with simple replies only and the one
// export (any name) that takes reads, writes and flushes.
func (c floorConn) handshake(size int64) error {
	h := wire.Handshake{
		Lookup:       func(string) (wire.Export, error) { return floorExport{size}, nil },
		Flags:        wire.TFlagHasFlags | wire.TFlagSendFlush,
		MaxPayload:   maxFloorPayload,
		NoStructured: true,
	}
	_, err := wire.Negotiate(c, &h)
	if errors.Is(err, wire.ErrAbort) {
		return io.EOF
	}
	return err
}
