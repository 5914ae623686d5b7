package uring

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"udm/internal/testutil"
)

// result collects one completion and checks it arrives exactly once.
type result struct {
	n    atomic.Int32
	tag  uint64
	res  int32
	done chan struct{}
}

func newResult() *result { return &result{done: make(chan struct{})} }

func (r *result) Complete(tag uint64, res int32, flags uint32) {
	if r.n.Add(1) != 1 {
		panic("completion delivered twice")
	}
	r.tag, r.res = tag, res
	close(r.done)
}

func (r *result) wait(t *testing.T) int32 {
	t.Helper()
	testutil.Wait(t, "the operation to complete", r.done)
	return r.res
}

func newLoop(t testing.TB, cfg Config) *Loop {
	t.Helper()
	l, err := NewLoop(cfg)
	if err != nil {
		t.Fatalf("NewLoop: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// submit prepares and submits one SQE on the loop and waits for it.
func do(t *testing.T, l *Loop, prep func(e *SQE)) int32 {
	t.Helper()
	r := newResult()
	var serr error
	l.Call(func() {
		var e SQE
		prep(&e)
		_, serr = l.Submit(&e, r, 0)
	})
	if serr != nil {
		t.Fatalf("submit: %v", serr)
	}
	return r.wait(t)
}

func openTarget(t *testing.T, path string) *BlockFile {
	t.Helper()
	f, err := OpenBlock(path, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// targets returns a tmpfs file and, with root, a loop device over another.
func targets(t *testing.T, size int64) map[string]string {
	m := map[string]string{"file": testutil.TempFile(t, size)}
	if os.Geteuid() == 0 {
		m["loopdev"] = testutil.LoopDevice(t, testutil.TempFile(t, size))
	} else {
		t.Log("loop device case skipped: needs root")
	}
	return m
}

func TestReadWriteRoundTrip(t *testing.T) {
	l := newLoop(t, Config{})
	for name, path := range targets(t, 4<<20) {
		t.Run(name, func(t *testing.T) {
			f := openTarget(t, path)
			if f.Size != 4<<20 {
				t.Fatalf("size %d, want %d", f.Size, 4<<20)
			}
			if name == "loopdev" && (!f.IsBlock || f.LBS != 512) {
				t.Fatalf("loop device: IsBlock %v LBS %d", f.IsBlock, f.LBS)
			}
			var wb, rb Buf
			l.Call(func() { wb, rb = l.Arena().Get(64<<10), l.Arena().Get(64<<10) })
			// iovecs must stay valid until the SQE is submitted.
			wiov, riov := make([]unix.Iovec, 2), make([]unix.Iovec, 2)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range wb.B {
				wb.B[i] = byte(rng.Uint32())
			}
			cases := []struct {
				name   string
				write  func(e *SQE, off uint64)
				read   func(e *SQE, off uint64)
				offset uint64
			}{
				{"plain", func(e *SQE, off uint64) { e.PrepWrite(int32(f.Fd), wb.B, off, 0) },
					func(e *SQE, off uint64) { e.PrepRead(int32(f.Fd), rb.B, off) }, 0},
				{"fixed", func(e *SQE, off uint64) { e.PrepWriteFixed(int32(f.Fd), wb.B, off, uint16(wb.Index), RWFDsync) },
					func(e *SQE, off uint64) { e.PrepReadFixed(int32(f.Fd), rb.B, off, uint16(rb.Index)) }, 1 << 20},
				{"vectored", func(e *SQE, off uint64) {
					wiov[0], wiov[1] = unix.Iovec{Base: &wb.B[0]}, unix.Iovec{Base: &wb.B[32<<10]}
					wiov[0].SetLen(32 << 10)
					wiov[1].SetLen(32 << 10)
					e.PrepWritev(int32(f.Fd), wiov, off, 0)
				}, func(e *SQE, off uint64) {
					riov[0], riov[1] = unix.Iovec{Base: &rb.B[0]}, unix.Iovec{Base: &rb.B[16<<10]}
					riov[0].SetLen(16 << 10)
					riov[1].SetLen(48 << 10)
					e.PrepReadv(int32(f.Fd), riov, off)
				}, 2 << 20},
			}
			for _, c := range cases {
				clear(rb.B)
				if res := do(t, l, func(e *SQE) { c.write(e, c.offset) }); res != 64<<10 {
					t.Fatalf("%s write: res %d (%v)", c.name, res, Errno(res))
				}
				if res := do(t, l, func(e *SQE) { c.read(e, c.offset) }); res != 64<<10 {
					t.Fatalf("%s read: res %d (%v)", c.name, res, Errno(res))
				}
				if !bytes.Equal(rb.B, wb.B) {
					t.Fatalf("%s: data read back differs", c.name)
				}
			}
			if res := do(t, l, func(e *SQE) { e.PrepFsync(int32(f.Fd), true) }); res != 0 {
				t.Fatalf("fdatasync: %v", Errno(res))
			}
			// Zero range and punch hole read back as zeroes where the
			// file system or device supports them; one of them must work.
			worked := 0
			for _, mode := range []uint32{FallocZeroRange | FallocKeepSize, FallocPunchHole | FallocKeepSize} {
				do(t, l, func(e *SQE) { e.PrepWrite(int32(f.Fd), wb.B, 0, 0) })
				res := do(t, l, func(e *SQE) { e.PrepFallocate(int32(f.Fd), mode, 0, 64<<10) })
				if errors.Is(Errno(res), unix.EOPNOTSUPP) {
					t.Logf("fallocate mode %#x not supported on %s", mode, name)
					continue
				}
				if res != 0 {
					t.Fatalf("fallocate mode %#x: %v", mode, Errno(res))
				}
				worked++
				do(t, l, func(e *SQE) { e.PrepRead(int32(f.Fd), rb.B, 0) })
				if !bytes.Equal(rb.B, make([]byte, len(rb.B))) {
					t.Fatalf("fallocate mode %#x: range not zero", mode)
				}
			}
			if worked == 0 {
				t.Fatalf("neither zero-range nor punch-hole works on %s", name)
			}
		})
	}
}

func TestShortReadAtEnd(t *testing.T) {
	l := newLoop(t, Config{})
	for name, path := range targets(t, 1<<20) {
		t.Run(name, func(t *testing.T) {
			f := openTarget(t, path)
			var b Buf
			l.Call(func() { b = l.Arena().Get(64 << 10) })
			if res := do(t, l, func(e *SQE) { e.PrepReadFixed(int32(f.Fd), b.B, 1<<20-16<<10, uint16(b.Index)) }); res != 16<<10 {
				t.Fatalf("read across the end: res %d, want %d", res, 16<<10)
			}
			if res := do(t, l, func(e *SQE) { e.PrepRead(int32(f.Fd), b.B, 1<<20) }); res != 0 {
				t.Fatalf("read at the end: res %d, want 0", res)
			}
		})
	}
}

func TestErrorsAreErrno(t *testing.T) {
	l := newLoop(t, Config{})
	buf := make([]byte, 4096+1)
	ro, err := OpenBlock(testutil.TempFile(t, 1<<20), OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	res := do(t, l, func(e *SQE) { e.PrepWrite(int32(ro.Fd), buf[:4096], 0, 0) })
	if err := Errno(res); !errors.Is(err, unix.EBADF) {
		t.Fatalf("write to a read-only fd: %v, want EBADF", err)
	}
	var errno syscall.Errno
	if !errors.As(Errno(res), &errno) {
		t.Fatalf("%T is not a syscall.Errno", Errno(res))
	}
	if os.Geteuid() == 0 {
		f := openTarget(t, testutil.LoopDevice(t, testutil.TempFile(t, 1<<20)))
		res = do(t, l, func(e *SQE) { e.PrepRead(int32(f.Fd), buf[:4096], 1) }) // misaligned for O_DIRECT
		if err := Errno(res); !errors.Is(err, unix.EINVAL) {
			t.Fatalf("misaligned O_DIRECT read of a loop device: %v, want EINVAL", err)
		}
	}
	res = do(t, l, func(e *SQE) { e.PrepRead(1<<20, buf[:4096], 0) })
	if err := Errno(res); !errors.Is(err, unix.EBADF) {
		t.Fatalf("read of a bad fd: %v, want EBADF", err)
	}
	// A fixed-file index that holds nothing.
	res = do(t, l, func(e *SQE) { e.PrepRead(3, buf[:4096], 0); e.Fd = 3; e.Fixed() })
	if err := Errno(res); !errors.Is(err, unix.EBADF) {
		t.Fatalf("read on empty fixed slot: %v, want EBADF", err)
	}
}

// counter counts completions and their results.
type counter struct {
	mu   sync.Mutex
	seen map[uint64]int
	res  map[uint64]int32
	all  chan struct{}
	want int
}

func newCounter(want int) *counter {
	return &counter{seen: map[uint64]int{}, res: map[uint64]int32{}, all: make(chan struct{}), want: want}
}

func (c *counter) Complete(tag uint64, res int32, flags uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen[tag]++
	c.res[tag] = res
	if len(c.seen) == c.want && c.seen[tag] == 1 {
		close(c.all)
	}
}

func (c *counter) check(t *testing.T) {
	t.Helper()
	select {
	case <-c.all:
	case <-time.After(20 * time.Second):
		c.mu.Lock()
		t.Fatalf("only %d of %d operations completed", len(c.seen), c.want)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for tag, n := range c.seen {
		if n != 1 {
			t.Fatalf("operation %d completed %d times", tag, n)
		}
	}
}

func TestSQFullBackpressure(t *testing.T) {
	l := newLoop(t, Config{Entries: 8, ArenaSize: -1})
	const n = 5000
	c := newCounter(n)
	submitNops(l, n, c, nil)
	c.check(t)
	st := l.Stats()
	t.Logf("stats: %+v", st)
	if st.Enters < n/8 {
		t.Fatalf("%d enters for %d NOPs through an 8-entry SQ: SQ-full flushing didn't happen", st.Enters, n)
	}
}

// submitNops posts n NOPs to l for h (tagged 0..n-1), running before(i),
// if set, on the loop before each.
func submitNops(l *Loop, n int, h Handler, before func(i int)) {
	l.Post(func() {
		for i := 0; i < n; i++ {
			if before != nil {
				before(i)
			}
			var e SQE
			e.PrepNop()
			if _, err := l.Submit(&e, h, uint64(i)); err != nil {
				panic(err)
			}
		}
	})
}

// orderCounter records the order completions arrive in.
type orderCounter struct {
	*counter
	order []uint64 // written on the loop only
}

func (o *orderCounter) Complete(tag uint64, res int32, flags uint32) {
	o.order = append(o.order, tag)
	o.counter.Complete(tag, res, flags)
}

// TestBacklogInOrder makes the SQ refuse submissions (as a kernel that
// takes no more for now does) so that SQEs queue in the backlog: they
// reach the kernel in the order they were submitted, later submissions
// queue behind them, and each ends exactly once.
func TestBacklogInOrder(t *testing.T) {
	l := newLoop(t, Config{Entries: 8, ArenaSize: -1})
	const n = 500
	c := &orderCounter{counter: newCounter(n)}
	submitNops(l, n, c, func(i int) {
		if i%50 == 0 {
			l.refuseSQ = 7 // the next 7 submissions find the SQ full
		}
	})
	c.check(t)
	st := l.Stats()
	if st.BacklogHigh < 7 {
		t.Fatalf("backlog high-water mark %d: the backlog was not used", st.BacklogHigh)
	}
	var order []uint64
	l.Call(func() { order = append(order, c.order...) })
	for i, tag := range order {
		if tag != uint64(i) {
			t.Fatalf("completion %d was NOP %d: the backlog reordered submissions (%v...)", i, tag, order[:min(len(order), i+5)])
		}
	}
}

func TestBacklogKeepsChainsWhole(t *testing.T) {
	l := newLoop(t, Config{Entries: 4, ArenaSize: -1})
	const n = 300
	c := newCounter(n)
	l.Post(func() {
		for i := 0; i < n; i++ {
			if i%30 == 0 {
				l.refuseSQ = 5 // chains go through the backlog too
			}
			var e SQE
			e.PrepNop()
			if _, err := l.SubmitDeadline(&e, time.Second, c, uint64(i)); err != nil {
				panic(err)
			}
		}
	})
	c.check(t)
	for tag, res := range c.res {
		if res != 0 {
			t.Fatalf("NOP %d with a linked timeout: %v", tag, Errno(res))
		}
	}
	if st := l.Stats(); st.BacklogHigh < 2 {
		t.Fatalf("backlog high-water mark %d: no chain went through the backlog", st.BacklogHigh)
	}
}

func TestPostFromManyGoroutines(t *testing.T) {
	l := newLoop(t, Config{ArenaSize: -1})
	const G, N = 16, 2000
	var ran [G]int // written on the loop only
	var wg sync.WaitGroup
	for g := 0; g < G; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < N; i++ {
				if err := l.Post(func() { ran[g]++ }); err != nil {
					t.Error(err)
					return
				}
				if i%128 == 0 {
					time.Sleep(time.Microsecond) // let the loop fall asleep sometimes
				}
			}
		}()
	}
	wg.Wait()
	var got [G]int
	l.Call(func() { got = ran })
	for g, n := range got {
		if n != N {
			t.Fatalf("goroutine %d: %d of %d posts ran", g, n, N)
		}
	}
	t.Logf("stats: %+v", l.Stats())
}

func TestPostAfterCloseFails(t *testing.T) {
	l, err := NewLoop(Config{ArenaSize: -1})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	l.Close() // idempotent
	if err := l.Post(func() {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Post after Close: %v, want ErrClosed", err)
	}
}

func socketPair(t *testing.T) (int, int) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fds[0]); unix.Close(fds[1]) })
	return fds[0], fds[1]
}

// submitFn is Loop.SubmitDeadline or Loop.SubmitTimed.
type submitFn func(l *Loop, e *SQE, d time.Duration, h Handler, tag uint64) (OpID, error)

// recvWithin starts a receive on fd bounded by d with submit and returns
// its result, and the ID it was given.
func recvWithin(t *testing.T, l *Loop, submit submitFn, fd int, buf []byte, d time.Duration, tag uint64) (*result, OpID) {
	r := newResult()
	var id OpID
	l.Call(func() {
		var e SQE
		e.PrepRecv(int32(fd), buf, 0)
		id, _ = submit(l, &e, d, r, tag)
	})
	return r, id
}

// testDeadline: a receive on a silent socket ends with ETIMEDOUT, not
// before its deadline; one that finishes in time is untouched by it.
func testDeadline(t *testing.T, submit submitFn, d time.Duration) (l *Loop, a int) {
	l = newLoop(t, Config{ArenaSize: -1})
	a, b := socketPair(t)
	buf := make([]byte, 64)
	start := time.Now()
	r, _ := recvWithin(t, l, submit, a, buf, d, 1)
	if err := Errno(r.wait(t)); !errors.Is(err, unix.ETIMEDOUT) {
		t.Fatalf("recv with a deadline on a silent socket: %v, want ETIMEDOUT", err)
	}
	if el := time.Since(start); el < d {
		t.Fatalf("deadline fired after %v, before %v", el, d)
	}
	unix.Write(b, []byte("hello"))
	r2, _ := recvWithin(t, l, submit, a, buf, 5*time.Second, 2)
	if res := r2.wait(t); res != 5 {
		t.Fatalf("recv in time: res %d", res)
	}
	return l, a
}

func TestDeadlineFires(t *testing.T) {
	testDeadline(t, (*Loop).SubmitDeadline, 50*time.Millisecond)
}

func TestTimeoutAndCancel(t *testing.T) {
	l := newLoop(t, Config{ArenaSize: -1})
	r := newResult()
	l.Call(func() { l.Timeout(10*time.Millisecond, r, 0) })
	if err := Errno(r.wait(t)); !errors.Is(err, unix.ETIME) {
		t.Fatalf("timeout: %v, want ETIME", err)
	}
	a, _ := socketPair(t)
	buf := make([]byte, 8)
	r2 := newResult()
	var id OpID
	l.Call(func() {
		var e SQE
		e.PrepRecv(int32(a), buf, 0)
		id, _ = l.Submit(&e, r2, 0)
	})
	l.Call(func() { l.Cancel(id) })
	if err := Errno(r2.wait(t)); !errors.Is(err, unix.ECANCELED) && !errors.Is(err, unix.EINTR) {
		t.Fatalf("cancelled recv: %v, want ECANCELED", err)
	}
	l.Call(func() { l.Cancel(id) }) // stale id: no effect, no panic
}

func TestRegisteredFileUpdateWhileIO(t *testing.T) {
	l := newLoop(t, Config{})
	paths := []string{testutil.TempFile(t, 1<<20), testutil.TempFile(t, 1<<20)}
	files := []*BlockFile{openTarget(t, paths[0]), openTarget(t, paths[1])}
	// Mark each file so reads tell them apart.
	for i, f := range files {
		blk := bytes.Repeat([]byte{byte('A' + i)}, 4096)
		if _, err := unix.Pwrite(f.Fd, alignedCopy(blk), 0); err != nil {
			t.Fatal(err)
		}
	}
	const rounds = 200
	var errs []string
	done := make(chan struct{})
	l.Post(func() {
		idx := [2]int32{-1, -1}
		reg := func(i int) {
			var err error
			idx[i], err = l.RegisterFile(files[i].Fd)
			if err != nil {
				panic(err)
			}
		}
		reg(0)
		reg(1)
		bufs := [2]Buf{l.Arena().Get(4096), l.Arena().Get(4096)}
		left := [2]int{rounds, rounds}
		var h HandlerFunc
		h = func(tag uint64, res int32, _ uint32) {
			want := byte('A' + tag%2)
			buf := bufs[tag%2]
			if res != 4096 || buf.B[0] != want {
				errs = append(errs, fmt.Sprintf("read %d: res %d, first byte %q want %q", tag, res, buf.B[0], want))
			}
			// Re-register file tag%2 under a new slot while the other
			// file's reads continue.
			i := int(tag % 2)
			left[i]--
			if err := l.UnregisterFile(idx[i]); err != nil {
				panic(err)
			}
			reg(i)
			if left[i] == 0 {
				if left[1-i] == 0 {
					close(done)
				}
				return
			}
			var e SQE
			e.PrepReadFixed(idx[i], bufs[i].B, 0, uint16(bufs[i].Index))
			e.Fixed()
			l.Submit(&e, h, tag+2)
		}
		for i := 0; i < 2; i++ {
			var e SQE
			e.PrepReadFixed(idx[i], bufs[i].B, 0, uint16(bufs[i].Index))
			e.Fixed()
			l.Submit(&e, h, uint64(i))
		}
	})
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("reads through re-registered files stalled")
	}
	if len(errs) > 0 {
		t.Fatalf("%d bad reads, first: %s", len(errs), errs[0])
	}
}

func alignedCopy(b []byte) []byte {
	m, err := unix.Mmap(-1, 0, len(b), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		panic(err)
	}
	copy(m, b)
	return m
}

func TestCloseEndsInFlightExactlyOnce(t *testing.T) {
	l, err := NewLoop(Config{})
	if err != nil {
		t.Fatal(err)
	}
	f := openTarget(t, testutil.TempFile(t, 4<<20))
	const socks, reads = 32, 64
	c := newCounter(socks + reads + 1)
	var fds []int
	for i := 0; i < socks; i++ {
		a, _ := socketPair(t)
		fds = append(fds, a)
	}
	started := make(chan struct{})
	l.Post(func() {
		for i, fd := range fds {
			var e SQE
			e.PrepRecv(int32(fd), make([]byte, 16), 0)
			if i%2 == 0 {
				l.SubmitDeadline(&e, time.Hour, c, uint64(i))
			} else {
				l.Submit(&e, c, uint64(i))
			}
		}
		buf := l.Arena().Get(64 << 10)
		for i := 0; i < reads; i++ {
			var e SQE
			e.PrepReadFixed(int32(f.Fd), buf.B, uint64(i%64)*(64<<10), uint16(buf.Index))
			l.Submit(&e, c, uint64(socks+i))
		}
		l.Timeout(time.Hour, c, socks+reads)
		close(started)
	})
	<-started
	l.Close()
	c.check(t)
	for tag, res := range c.res {
		if tag < socks && res >= 0 {
			t.Fatalf("recv %d on a silent socket completed with %d at Close", tag, res)
		}
	}
	if err := l.Post(func() {}); !errors.Is(err, ErrClosed) {
		t.Fatal("loop accepts work after Close")
	}
}

func TestSocketSendRecvAccept(t *testing.T) {
	l := newLoop(t, Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, _ := ln.(*net.TCPListener).File()
	defer lf.Close()
	acc := newResult()
	l.Call(func() {
		var e SQE
		e.PrepAccept(int32(lf.Fd()), unix.SOCK_CLOEXEC)
		l.Submit(&e, acc, 0)
	})
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fd := acc.wait(t)
	if fd < 0 {
		t.Fatalf("accept: %v", Errno(fd))
	}
	defer unix.Close(int(fd))
	hdr, payload := []byte("head:"), []byte("payload")
	sent := newResult()
	// The msghdr and iovecs must stay valid until the SQE is submitted.
	iov := []unix.Iovec{{Base: &hdr[0]}, {Base: &payload[0]}}
	iov[0].SetLen(len(hdr))
	iov[1].SetLen(len(payload))
	msg := &unix.Msghdr{Iov: &iov[0]}
	msg.SetIovlen(2)
	l.Call(func() {
		var e SQE
		e.PrepSendmsg(fd, msg, unix.MSG_NOSIGNAL)
		l.Submit(&e, sent, 0)
	})
	if res := sent.wait(t); int(res) != len(hdr)+len(payload) {
		t.Fatalf("sendmsg: %d", res)
	}
	got := make([]byte, 12)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io_ReadFull(conn, got); err != nil || string(got) != "head:payload" {
		t.Fatalf("peer read %q, %v", got, err)
	}
	conn.Write([]byte("ping"))
	buf := make([]byte, 16)
	rcv := newResult()
	l.Call(func() {
		var e SQE
		e.PrepRecv(fd, buf, 0)
		l.Submit(&e, rcv, 0)
	})
	if res := rcv.wait(t); string(buf[:res]) != "ping" {
		t.Fatalf("recv %q", buf[:max(res, 0)])
	}
}

func io_ReadFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

func TestArenaClasses(t *testing.T) {
	a, err := NewArena(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.index = 0
	b := a.Get(5000)
	if len(b.B) != 5000 || cap(b.B) != 8192 || !b.Fixed() {
		t.Fatalf("Get(5000): len %d cap %d fixed %v", len(b.B), cap(b.B), b.Fixed())
	}
	a.Put(b)
	if b2 := a.Get(8192); &b2.B[0] != &b.B[0] {
		t.Fatal("freed buffer not reused")
	}
	big := a.Get(2 << 20) // more than the arena: an unregistered overflow buffer
	if big.Fixed() || len(big.B) != 2<<20 {
		t.Fatalf("overflow buffer: fixed %v len %d", big.Fixed(), len(big.B))
	}
	a.Put(big)
	if again := a.Get(2 << 20); &again.B[0] != &big.B[0] || again.Fixed() {
		t.Fatal("overflow buffer not reused as unregistered")
	}
	for _, n := range []int{1, 4096, 4097, 1 << 20, 32 << 20} {
		if c := classOf(n); 1<<(c+minClassShift) < n {
			t.Fatalf("classOf(%d) = %d too small", n, c)
		}
	}
}

func TestOpenBlockErrors(t *testing.T) {
	if _, err := OpenBlock("/nonexistent/udm", OpenOptions{}); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := OpenBlock(t.TempDir(), OpenOptions{}); err == nil {
		t.Fatal("a directory opened as a block file")
	}
	p := testutil.TempFile(t, 1<<20)
	os.Chmod(p, 0o444)
	f, err := OpenBlock(p, OpenOptions{ReadOnly: true})
	if err != nil || !f.ReadOnly {
		t.Fatalf("read-only open: %v ro=%v", err, f != nil && f.ReadOnly)
	}
	f.Close()
}

// The swept deadline times out like the linked one; a cancel by hand is
// reported as such, and nothing stays counted as expiring.
func TestSweptDeadline(t *testing.T) {
	l, a := testDeadline(t, (*Loop).SubmitTimed, 30*time.Millisecond)
	r3, id := recvWithin(t, l, (*Loop).SubmitTimed, a, make([]byte, 64), time.Hour, 3)
	l.Call(func() { l.Cancel(id) })
	if err := Errno(r3.wait(t)); !errors.Is(err, unix.ECANCELED) {
		t.Fatalf("cancelled timed recv: %v, want ECANCELED", err)
	}
	var expiring int
	l.Call(func() { expiring = l.expiring })
	if expiring != 0 {
		t.Fatalf("%d timed operations still counted after all completed", expiring)
	}
}

func TestSweptDeadlinesUnderLoad(t *testing.T) {
	// Many timed operations, half of which never complete: exactly those
	// time out, each once.
	l := newLoop(t, Config{ArenaSize: -1})
	const n = 200
	c := newCounter(n)
	var fds []int
	for i := 0; i < n/2; i++ {
		a, _ := socketPair(t)
		fds = append(fds, a)
	}
	bufs := make([][]byte, n)
	l.Post(func() {
		for i := 0; i < n; i++ {
			var e SQE
			if i%2 == 0 {
				bufs[i] = make([]byte, 8)
				e.PrepRecv(int32(fds[i/2]), bufs[i], 0)
			} else {
				e.PrepNop()
			}
			l.SubmitTimed(&e, 20*time.Millisecond, c, uint64(i))
		}
	})
	c.check(t)
	for tag, res := range c.res {
		if tag%2 == 0 && !errors.Is(Errno(res), unix.ETIMEDOUT) {
			t.Fatalf("silent recv %d: %v, want ETIMEDOUT", tag, Errno(res))
		}
		if tag%2 == 1 && res != 0 {
			t.Fatalf("nop %d: %v", tag, Errno(res))
		}
	}
}

func TestLinkedChain(t *testing.T) {
	l := newLoop(t, Config{})
	f := openTarget(t, testutil.TempFile(t, 1<<20))
	var wb, rb Buf
	l.Call(func() { wb, rb = l.Arena().Get(4096), l.Arena().Get(4096) })
	copy(wb.B, bytes.Repeat([]byte("link"), 1024))
	// write → fsync → read: each starts after the previous succeeded.
	c := newCounter(3)
	l.Call(func() {
		ops := make([]Linked, 3)
		ops[0].SQE.PrepWriteFixed(int32(f.Fd), wb.B, 8192, uint16(wb.Index), 0)
		ops[1].SQE.PrepFsync(int32(f.Fd), true)
		ops[2].SQE.PrepReadFixed(int32(f.Fd), rb.B, 8192, uint16(rb.Index))
		for i := range ops {
			ops[i].H, ops[i].Tag = c, uint64(i)
		}
		if err := l.SubmitChain(ops); err != nil {
			t.Error(err)
		}
	})
	c.check(t)
	if c.res[0] != 4096 || c.res[1] != 0 || c.res[2] != 4096 || !bytes.Equal(rb.B, wb.B) {
		t.Fatalf("chain results %v, read back equal %v", c.res, bytes.Equal(rb.B, wb.B))
	}
	// A failing first link cancels the rest.
	c2 := newCounter(2)
	l.Call(func() {
		ops := make([]Linked, 2)
		ops[0].SQE.PrepRead(1<<20, rb.B, 0) // bad fd
		ops[1].SQE.PrepNop()
		ops[0].H, ops[1].H = c2, c2
		ops[0].Tag, ops[1].Tag = 0, 1
		l.SubmitChain(ops)
	})
	c2.check(t)
	if !errors.Is(Errno(c2.res[0]), unix.EBADF) || !errors.Is(Errno(c2.res[1]), unix.ECANCELED) {
		t.Fatalf("broken chain: %v, %v; want EBADF then ECANCELED", Errno(c2.res[0]), Errno(c2.res[1]))
	}
}

// TestRingSetupFallback plays a kernel that refuses the default setup
// flags (an unknown flag bit stands in for them): NewRing falls back to
// the next set, and a loop runs on such a ring.
func TestRingSetupFallback(t *testing.T) {
	saved := setupTries
	t.Cleanup(func() { setupTries = saved })
	const unknown = 1 << 30 // no such IORING_SETUP_ flag: EINVAL
	setupTries = []uint32{defaultSetupFlags | unknown, fallbackSetupFlags}
	r, err := NewRing(RingOptions{Entries: 8})
	if err != nil {
		t.Fatalf("NewRing with the default refused: %v", err)
	}
	if r.flags&SetupDeferTaskrun != 0 || r.flags&SetupCoopTaskrun == 0 {
		t.Fatalf("ring flags %#x: want the fallback set %#x", r.flags, fallbackSetupFlags)
	}
	r.Close()
	l := newLoop(t, Config{Entries: 8, ArenaSize: -1})
	if res := do(t, l, func(e *SQE) { e.PrepNop() }); res != 0 {
		t.Fatalf("NOP on a fallback ring: %v", Errno(res))
	}

	setupTries = []uint32{unknown}
	if _, err := NewRing(RingOptions{Entries: 8}); !errors.Is(err, unix.EINVAL) {
		t.Fatalf("NewRing with every flag set refused: %v, want EINVAL", err)
	}
}

// TestOpenBlockRefusedDirect opens a file on ramfs, which refuses
// O_DIRECT: ErrNoDirect with a hint, unless buffered I/O is allowed.
func TestOpenBlockRefusedDirect(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount ramfs")
	}
	dir := t.TempDir()
	if err := unix.Mount("none", dir, "ramfs", 0, ""); err != nil {
		t.Skipf("mount ramfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	path := filepath.Join(dir, "f.img")
	if err := os.WriteFile(path, make([]byte, 64<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := OpenBlock(path, OpenOptions{})
	if !errors.Is(err, ErrNoDirect) || !strings.Contains(err.Error(), path) {
		t.Fatalf("OpenBlock on ramfs: %v, want ErrNoDirect naming the file", err)
	}
	f, err := OpenBlock(path, OpenOptions{AllowBuffered: true})
	if err != nil {
		t.Fatalf("OpenBlock with AllowBuffered: %v", err)
	}
	defer f.Close()
	if f.Direct || f.Size != 64<<10 {
		t.Fatalf("opened Direct=%v size %d, want buffered, %d bytes", f.Direct, f.Size, 64<<10)
	}
}

// nowHandler records the loop's Now at its completion, twice.
type nowHandler struct {
	l      *Loop
	t1, t2 int64
	done   chan struct{}
}

func (h *nowHandler) Complete(uint64, int32, uint32) {
	h.t1 = h.l.Now()
	for nanotime() <= h.t1+2000 {
	}
	h.t2 = h.l.Now()
	close(h.done)
}

// TestNowPerCallback: Now is read once per posted function or completion
// and then repeats; Renew reads it anew; a later callback reads it again;
// a closed loop reads the clock at every call, from any goroutine.
func TestNowPerCallback(t *testing.T) {
	l := newLoop(t, Config{ArenaSize: -1})
	var a, b, c, c2, d int64
	h := &nowHandler{l: l, done: make(chan struct{})}
	l.Call(func() {
		a = l.Now()
		for nanotime() <= a+2000 {
		}
		b = l.Now()
		c = l.Renew()
		c2 = l.Now()
		var e SQE
		e.PrepNop()
		if _, err := l.Submit(&e, h, 0); err != nil {
			t.Error(err)
		}
	})
	l.Call(func() { d = l.Now() })
	<-h.done
	if a == 0 || b != a {
		t.Fatalf("Now within one callback: %d then %d", a, b)
	}
	if c <= a || c2 != c {
		t.Fatalf("Renew: %d after %d, then Now %d", c, a, c2)
	}
	if h.t1 <= c || h.t2 != h.t1 {
		t.Fatalf("Now in a completion: %d then %d (posted function's: %d)", h.t1, h.t2, c)
	}
	if d <= c {
		t.Fatalf("Now in the next posted function: %d, not after %d", d, c)
	}
	l.Close()
	x := l.Now()
	for nanotime() <= x+2000 {
	}
	if y := l.Now(); y <= x {
		t.Fatalf("Now on a closed loop repeated: %d then %d", x, y)
	}
}

// flushRecorder registers itself for the end of the turn from every
// completion, once a turn, and records how many completions each Flush
// found.
type flushRecorder struct {
	l       *Loop
	queued  bool
	done    int   // completions so far
	flushed []int // done at each Flush
	fin     chan struct{}
	want    int
}

func (f *flushRecorder) Complete(uint64, int32, uint32) {
	f.done++
	if !f.queued {
		f.queued = true
		f.l.FlushLater(f)
	}
}

func (f *flushRecorder) Flush() {
	f.queued = false
	f.flushed = append(f.flushed, f.done)
	if f.done == f.want {
		close(f.fin)
	}
}

// Completions reaped in one turn are followed by one Flush, after all of
// them: the point of FlushLater (an NBD connection sends the replies of
// a turn in one message).
func TestFlushLaterOncePerTurn(t *testing.T) {
	l := newLoop(t, Config{})
	f := &flushRecorder{l: l, fin: make(chan struct{}), want: 8}
	l.Call(func() {
		for i := 0; i < f.want; i++ {
			var e SQE
			e.PrepNop()
			if _, err := l.Submit(&e, f, 0); err != nil {
				t.Error(err)
			}
		}
	})
	select {
	case <-f.fin:
	case <-time.After(10 * time.Second):
		t.Fatal("never flushed")
	}
	var flushed []int
	l.Call(func() { flushed = f.flushed })
	// Eight NOPs submitted together complete together: one turn.
	if len(flushed) != 1 || flushed[0] != f.want {
		t.Fatalf("Flush saw %v completions, want one Flush after all %d", flushed, f.want)
	}
}

// A Flush that registers again runs again, and then no more.
func TestFlushLaterFromFlush(t *testing.T) {
	l := newLoop(t, Config{})
	runs := 0 // on the loop
	third := make(chan struct{})
	var self Flusher
	self = flushFunc(func() {
		if runs++; runs < 3 {
			l.FlushLater(self)
		} else if runs == 3 {
			close(third)
		}
	})
	l.Call(func() { l.FlushLater(self) })
	select {
	case <-third:
	case <-time.After(10 * time.Second):
		t.Fatal("a Flush registered from Flush never ran")
	}
	var n int
	l.Call(func() {})
	l.Call(func() { n = runs })
	if n != 3 {
		t.Fatalf("Flush ran %d times, want 3", n)
	}
}

type flushFunc func()

func (f flushFunc) Flush() { f() }

// restHandler calls Rest from its completion, or not.
type restHandler struct {
	l    *Loop
	rest bool
	done chan struct{}
}

func (h *restHandler) Complete(uint64, int32, uint32) {
	if h.rest {
		h.l.Rest()
	}
	close(h.done)
}

// Rest makes a loop that just did work sleep at once instead of spinning
// for Config.Spin (an hour here); without it the loop spins, and a
// function posted then needs no wake-up (the second case shows the test
// would fail without Rest).
func TestRestSkipsSpin(t *testing.T) {
	for _, rest := range []bool{true, false} {
		t.Run(fmt.Sprintf("rest=%v", rest), func(t *testing.T) {
			l := newLoop(t, Config{Spin: time.Hour})
			h := &restHandler{l: l, rest: rest, done: make(chan struct{})}
			l.Call(func() {
				var e SQE
				e.PrepNop()
				l.Submit(&e, h, 0)
			})
			<-h.done
			if rest {
				testutil.Eventually(t, "the loop to sleep after Rest", func() bool { return l.state.Load() != stateRunning })
			}
			wakes := l.Stats().Wakes
			l.Call(func() {})
			if woke := l.Stats().Wakes - wakes; (woke == 1) != rest {
				t.Fatalf("rest=%v: a function posted after the completion woke the loop %d times", rest, woke)
			}
		})
	}
}

// Call and Close on a loop's thread (its own or another loop's) return
// ErrCallOnLoop at once, naming the caller, instead of waiting: the loop
// keeps running, and both still work from an ordinary goroutine.
func TestWaitingOnALoopFails(t *testing.T) {
	a := newLoop(t, Config{ID: 1, ArenaSize: -1})
	b := newLoop(t, Config{ID: 2, ArenaSize: -1})
	type answer struct {
		err error
		ran bool
	}
	onLoop := func(on *Loop, what string, f func() (error, bool)) answer {
		t.Helper()
		got := make(chan answer, 1)
		if err := on.Post(func() {
			err, ran := f()
			got <- answer{err, ran}
		}); err != nil {
			t.Fatal(err)
		}
		select {
		case a := <-got:
			return a
		case <-time.After(30 * time.Second):
			t.Fatalf("%s on a loop's thread never returned (the loop waits for itself)", what)
			return answer{}
		}
	}
	callOn := func(target *Loop) (error, bool) {
		ran := false
		err := target.Call(func() { ran = true })
		return err, ran
	}
	for _, tc := range []struct {
		name       string
		on, target *Loop
		f          func() (error, bool)
		want       string
	}{
		{"Call on its own loop", a, a, func() (error, bool) { return callOn(a) }, "Loop.Call on loop 1's own thread"},
		{"Call on another loop", a, b, func() (error, bool) { return callOn(b) }, "Loop.Call for loop 2 on loop 1's thread"},
		{"Close on its own loop", b, b, func() (error, bool) { return b.Close(), false }, "Loop.Close on loop 2's own thread"},
		{"Close of another loop", b, a, func() (error, bool) { return a.Close(), false }, "Loop.Close for loop 1 on loop 2's thread"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := onLoop(tc.on, tc.name, tc.f)
			if !errors.Is(got.err, ErrCallOnLoop) {
				t.Fatalf("err = %v, want ErrCallOnLoop", got.err)
			}
			if got.ran {
				t.Fatal("the function ran")
			}
			if msg := got.err.Error(); !strings.Contains(msg, tc.want) || !strings.Contains(msg, "TestWaitingOnALoopFails") || !strings.Contains(msg, "loop_test.go:") {
				t.Fatalf("error %q does not say %q and name the caller", msg, tc.want)
			}
			for _, l := range []*Loop{a, b} {
				ran := false
				if err := l.Call(func() { ran = true }); err != nil || !ran {
					t.Fatalf("loop %d after the refused wait: Call = %v, ran %v", l.ID(), err, ran)
				}
			}
		})
	}
	if err := a.Close(); err != nil {
		t.Fatalf("Close off the loop: %v", err)
	}
	if err := a.Call(func() {}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Call after Close: %v, want ErrClosed", err)
	}
}

// A loop's thread asks for its slice and nice (as root, which may lower
// a nice); NiceKeep and a negative Slice leave the kernel's, and no other
// thread of the process is changed.
func TestLoopThreadSched(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("lowering a thread's nice needs CAP_SYS_NICE: run as root")
	}
	before, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		cfg   Config
		nice  int32
		slice bool
	}{
		{Config{}, DefaultNice, true},
		{Config{Nice: -3, Slice: -1}, -3, false},
		{Config{Nice: NiceKeep}, before.Nice, true},
	} {
		l := newLoop(t, c.cfg)
		var got *unix.SchedAttr
		if err := l.Call(func() { got, _ = unix.SchedGetAttr(0, 0) }); err != nil {
			t.Fatal(err)
		}
		if got == nil {
			t.Fatal("sched_getattr failed on the loop's thread")
		}
		if got.Nice != c.nice {
			t.Errorf("%+v: the loop's thread runs at nice %d, want %d", c.cfg, got.Nice, c.nice)
		}
		// Kernels before 6.12 have no custom fair slice and report 0.
		if c.slice && got.Runtime != 0 && got.Runtime != uint64(DefaultSlice) {
			t.Errorf("%+v: the loop's thread has a %v slice, want %v", c.cfg, time.Duration(got.Runtime), DefaultSlice)
		}
		if !c.slice && got.Runtime == uint64(DefaultSlice) {
			t.Errorf("%+v: the loop's thread asked for a slice", c.cfg)
		}
		if got.Flags&unix.SCHED_FLAG_RESET_ON_FORK == 0 && (c.slice || c.nice < before.Nice) {
			t.Errorf("%+v: threads started from the loop's would inherit its nice and slice", c.cfg)
		}
	}
	if after, err := unix.SchedGetAttr(0, 0); err != nil || after.Nice != before.Nice {
		t.Fatalf("the test's own thread's nice moved: %d to %+v (%v)", before.Nice, after, err)
	}
}

// Reads that wait for an outside event (SubmitWaiting: a FUSE queue's
// reads of /dev/fuse) are not storage: an idle loop holding many of them
// waits for one completion and may spin, where counting them as storage
// made it wake every BatchWait. A poll (PrepPollAdd) ends when its file
// is ready, with the ready events.
func TestWaitingReadsAreNotStorage(t *testing.T) {
	l := newLoop(t, Config{})
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	defer unix.Close(p[0])
	const n = 16
	type ended struct {
		poll bool
		res  int32
	}
	done := make(chan ended, 2*n+1)
	h := HandlerFunc(func(tag uint64, res int32, _ uint32) { done <- ended{tag == 1, res} })
	bufs := make([][1]byte, 2*n)
	var inflight, wait [2]int
	for i, submit := range []func(*SQE, Handler, uint64) (OpID, error){l.SubmitWaiting, l.Submit} {
		l.Call(func() {
			for j := range n {
				var e SQE
				e.PrepRead(int32(p[0]), bufs[i*n+j][:], ^uint64(0))
				if _, err := submit(&e, h, 0); err != nil {
					t.Error(err)
				}
			}
			inflight[i], wait[i] = l.ioInflight, int(l.batchWait())
		})
	}
	if inflight[0] != 0 || wait[0] != 1 {
		t.Errorf("%d waiting reads: %d storage operations in flight, the loop waits for %d completions; want 0 and 1", n, inflight[0], wait[0])
	}
	if inflight[1] != n || wait[1] != n/8 {
		t.Errorf("%d more storage reads: %d in flight, the loop waits for %d; want %d and %d", n, inflight[1], wait[1], n, n/8)
	}
	l.Call(func() {
		var e SQE
		e.PrepPollAdd(int32(p[0]), unix.POLLIN)
		if _, err := l.SubmitWaiting(&e, h, 1); err != nil {
			t.Error(err)
		}
	})
	if _, err := unix.Write(p[1], make([]byte, 2*n+1)); err != nil { // one byte is left for the poll
		t.Fatal(err)
	}
	sawPoll := false
	for range 2*n + 1 {
		switch e := <-done; {
		case !e.poll && e.res == 1:
		case e.poll && e.res&unix.POLLIN != 0:
			sawPoll = true
		default:
			t.Fatalf("a completion of %+v", e)
		}
	}
	if !sawPoll {
		t.Fatal("the poll never reported POLLIN")
	}
}
