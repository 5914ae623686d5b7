package dmtest

import (
	"bytes"
	"context"
	"io"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/internal/testutil"
)

const mib = 1 << 20

// memIO submits one clone straight to dev (no Device) and waits.
func memIO(t *testing.T, dev dm.BlockDevice, op dm.Op, sector uint64, buf []byte) error {
	t.Helper()
	done := make(chan error, 1)
	c := dm.NewDetachedClone(nil, func(c *dm.Clone, err error) { done <- err })
	c.Op, c.Sector, c.Len, c.Buf = op, sector, uint32(len(buf)), buf
	dev.Submit(c)
	return testutil.Wait(t, "the I/O to complete", done)
}

func TestMemDevice(t *testing.T) {
	m := NewMemDevice("m", 1*mib)
	if m.Name() != "m" || m.Size() != mib || m.BlockSize() != 512 || m.ReadOnly() {
		t.Fatal("identity")
	}
	buf := bytes.Repeat([]byte{0xee}, 8192)
	testutil.MustErrno(t, "sparse read", memIO(t, m, dm.OpRead, 100, buf), 0)
	if !bytes.Equal(buf, make([]byte, 8192)) {
		t.Fatal("unwritten data is not zero")
	}
	w := make([]byte, 6000)
	for i := range w {
		w[i] = byte(i)
	}
	w = w[:5632] // 11 sectors across page boundaries
	testutil.MustErrno(t, "write", memIO(t, m, dm.OpWrite, 7, w), 0)
	r := make([]byte, len(w))
	testutil.MustErrno(t, "read", memIO(t, m, dm.OpRead, 7, r), 0)
	if !bytes.Equal(r, w) {
		t.Fatal("read back differs")
	}
	direct := make([]byte, len(w))
	if n, err := m.ReadAt(direct, 7<<9); n != len(w) || err != nil || !bytes.Equal(direct, w) {
		t.Fatalf("ReadAt %d %v", n, err)
	}
	testutil.MustErrno(t, "discard", memIO(t, m, dm.OpDiscard, 8, make([]byte, 512)), 0)
	c := dm.NewDetachedClone(nil, func(*dm.Clone, error) {})
	c.Op, c.Sector, c.Len = dm.OpWriteZeroes, 8, 4096
	m.Submit(c)
	testutil.MustErrno(t, "read", memIO(t, m, dm.OpRead, 7, r), 0)
	if !bytes.Equal(r[:512], w[:512]) || !bytes.Equal(r[512:512+4096], make([]byte, 4096)) || !bytes.Equal(r[4608:], w[4608:]) {
		t.Fatal("write-zeroes")
	}
	testutil.MustErrno(t, "beyond the end", memIO(t, m, dm.OpRead, 2047, make([]byte, 1024)), syscall.EIO)
	testutil.MustErrno(t, "flush", memIO(t, m, dm.OpFlush, 0, nil), 0)

	m.FailNext(2, syscall.ENOSPC)
	testutil.MustErrno(t, "fail 1", memIO(t, m, dm.OpWrite, 0, make([]byte, 512)), syscall.ENOSPC)
	testutil.MustErrno(t, "fail 2", memIO(t, m, dm.OpRead, 0, make([]byte, 512)), syscall.ENOSPC)
	testutil.MustErrno(t, "after", memIO(t, m, dm.OpRead, 0, make([]byte, 512)), 0)
	m.FailAll(syscall.EIO)
	testutil.MustErrno(t, "fail all", memIO(t, m, dm.OpRead, 0, make([]byte, 512)), syscall.EIO)
	m.FailAll(0)
	m.SetReadOnly(true)
	testutil.MustErrno(t, "read-only write", memIO(t, m, dm.OpWrite, 0, make([]byte, 512)), syscall.EPERM)
	testutil.MustErrno(t, "read-only read", memIO(t, m, dm.OpRead, 0, make([]byte, 512)), 0)
	m.SetReadOnly(false)

	if m.Reads() != 8 || m.Writes() != 3 || m.Flushes() != 1 || m.Discards() != 1 || m.WriteZeroes() != 1 || m.IOs() != 14 {
		t.Fatalf("counters r%d w%d f%d d%d z%d all%d", m.Reads(), m.Writes(), m.Flushes(), m.Discards(), m.WriteZeroes(), m.IOs())
	}
	if _, err := m.WriteAt(make([]byte, 10), mib-5); err == nil {
		t.Fatal("WriteAt beyond the end")
	}
	if n, err := m.ReadAt(make([]byte, 10), mib-5); n != 5 || err != io.EOF {
		t.Fatalf("short ReadAt %d %v", n, err)
	}
}

func TestMemDeviceBytes(t *testing.T) {
	data := make([]byte, 4096)
	m := NewMemDeviceBytes("b", data)
	testutil.MustErrno(t, "write", memIO(t, m, dm.OpWrite, 1, bytes.Repeat([]byte{5}, 512)), 0)
	if data[512] != 5 || data[1023] != 5 || data[1024] != 0 {
		t.Fatal("not written to the slice")
	}
	testutil.MustErrno(t, "discard", memIO(t, m, dm.OpDiscard, 1, make([]byte, 512)), 0)
	if data[512] != 0 {
		t.Fatal("discard did not zero")
	}
}

func TestMemDeviceHang(t *testing.T) {
	m := NewMemDevice("m", mib)
	m.Hang(true)
	m.FailNext(1, syscall.EIO) // decided at submission
	done := make(chan error, 3)
	for i := 0; i < 3; i++ {
		c := dm.NewDetachedClone(nil, func(c *dm.Clone, err error) { done <- err })
		c.Op, c.Sector, c.Len, c.Buf = dm.OpWrite, uint64(i), 512, bytes.Repeat([]byte{byte(i + 1)}, 512)
		m.Submit(c)
	}
	if m.Held() != 3 || len(done) != 0 {
		t.Fatalf("held %d", m.Held())
	}
	buf := make([]byte, 512)
	m.ReadAt(buf, 2<<9)
	if buf[0] != 0 {
		t.Fatal("a held write was performed")
	}
	if n := m.Release(); n != 3 {
		t.Fatalf("released %d", n)
	}
	if e := <-done; e != syscall.EIO {
		t.Fatalf("first held I/O: %v", e)
	}
	<-done
	<-done
	m.ReadAt(buf, 2<<9)
	if buf[0] != 3 {
		t.Fatal("released write not performed")
	}
	c := dm.NewDetachedClone(nil, func(c *dm.Clone, err error) { done <- err })
	c.Op, c.Sector, c.Len, c.Buf = dm.OpRead, 0, 512, buf
	m.Submit(c)
	m.ReleaseErr(syscall.ETIMEDOUT)
	if e := <-done; e != syscall.ETIMEDOUT {
		t.Fatalf("ReleaseErr: %v", e)
	}
}

func TestMemDeviceCompletion(t *testing.T) {
	loop := NewLoop(t)
	for _, tc := range []struct {
		mode   Completion
		delay  time.Duration
		onLoop bool
	}{{CompleteSync, 0, false}, {CompleteAsync, 0, false}, {CompleteExec, 0, true}, {CompleteExec, time.Millisecond, true}, {CompleteAsync, time.Millisecond, false}} {
		m := NewMemDevice("m", mib)
		m.SetCompletion(tc.mode)
		m.SetDelay(tc.delay)
		a := dm.NewDevice(dm.DeviceConfig{Name: "a", Log: zerolog.Nop(), Open: dm.StaticOpener(m)})
		if err := a.Load("0 64 linear m 0"); err != nil {
			t.Fatal(err)
		}
		if err := a.Resume(context.Background()); err != nil {
			t.Fatal(err)
		}
		r := NewRec(dm.OpRead, 0, 512)
		r.Exec = loop
		var where uint64
		r.OnEnd = func(error) { where = curGID() }
		me := curGID()
		a.Submit(&r.Bio)
		if tc.mode == CompleteSync && !r.Ended() {
			t.Fatal("sync completion did not end inside Submit")
		}
		r.Wait(t)
		// An asynchronous completion with no delay may come back before
		// Submit returns; beside CPU hogs its bio was seen ending on the
		// submitting goroutine. Only a sync completion must end there.
		mayEndOnMe := tc.mode == CompleteAsync && tc.delay == 0
		if (where == loop.gid.Load()) != tc.onLoop || (tc.mode == CompleteSync && where != me) || (tc.mode != CompleteSync && !mayEndOnMe && where == me) {
			t.Errorf("mode %d delay %v: ended on goroutine %d (loop %d, me %d)", tc.mode, tc.delay, where, loop.gid.Load(), me)
		}
	}
}

func TestNullDevice(t *testing.T) {
	n := NewNullDevice("null", mib)
	if n.Name() != "null" || n.Size() != mib || n.BlockSize() != 512 || n.ReadOnly() {
		t.Fatal("identity")
	}
	testutil.MustErrno(t, "write", memIO(t, n, dm.OpWrite, 0, make([]byte, 512)), 0)
}
