package uring

import (
	"bytes"
	"runtime"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestSQE128Ring: a ring of 128-byte SQEs runs ordinary operations (each
// takes a whole entry, its second half zeroed), and PutCmd fills the
// 80-byte command area from byte 48 on.
func TestSQE128Ring(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r, err := NewRing(RingOptions{Entries: 4, SQE128: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !r.SQE128() || r.Flags()&SetupSQE128 == 0 || len(r.sqes) != 2*int(r.sqCap) {
		t.Fatalf("SQE128 %v flags %#x, %d SQE halves for %d entries", r.SQE128(), r.Flags(), len(r.sqes), r.sqCap)
	}
	// Dirty every half, then check NextSQE clears both halves of its entry.
	for i := range r.sqes {
		r.sqes[i].Opcode, r.sqes[i].UserData = 0xff, 0xdead
	}
	var cmd [CmdSize]byte
	for i := range cmd {
		cmd[i] = byte(i + 1)
	}
	for i := 0; i < int(r.sqCap)*2; i++ { // wraps the ring twice
		s := r.NextSQE()
		if s == nil {
			t.Fatalf("SQ full after %d", i)
		}
		idx := int(uintptr(unsafe.Pointer(s))-uintptr(unsafe.Pointer(&r.sqes[0]))) / int(unsafe.Sizeof(SQE{}))
		if idx%2 != 0 || r.sqes[idx+1] != (SQE{}) {
			t.Fatalf("entry %d: half %d, second half %+v", i, idx, r.sqes[idx+1])
		}
		if i%2 == 0 {
			s.PrepNop()
			s.UserData = uint64(100 + i)
		} else {
			s.PrepURingCmd(-1, 7)
			r.PutCmd(s, cmd[:])
			raw := unsafe.Slice((*byte)(unsafe.Pointer(s)), 128)
			if !bytes.Equal(raw[48:], cmd[:]) || raw[0] != OpURingCmd || raw[8] != 7 {
				t.Fatalf("command area % x", raw)
			}
			s.PrepNop() // submit a NOP in its place
			s.UserData = uint64(100 + i)
		}
		if _, err := r.Enter(1, nil); err != nil {
			t.Fatal(err)
		}
		first, _ := r.Peek()
		if len(first) != 1 || first[0].UserData != uint64(100+i) || first[0].Res != 0 {
			t.Fatalf("completion %d: %+v", i, first)
		}
		r.Advance(1)
	}
}

// udpQueued makes a UDP socket with one datagram of n bytes waiting.
func udpQueued(t *testing.T, n int) int {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Sendto(fd, make([]byte, n), 0, sa); err != nil {
		t.Fatal(err)
	}
	return fd
}

// TestSubmitCmd runs a URING_CMD (the socket's SIOCINQ: the size of the
// datagram waiting) on loops with 64- and 128-byte SQEs; a command area
// longer than 16 bytes needs the latter.
func TestSubmitCmd(t *testing.T) {
	for _, big := range []bool{false, true} {
		l := newLoop(t, Config{SQE128: big, ArenaSize: -1})
		fd := udpQueued(t, 123)
		r := newResult()
		var err error
		l.Call(func() {
			var e SQE
			e.PrepURingCmd(int32(fd), SocketCmdSIOCINQ)
			_, err = l.SubmitCmd(&e, nil, r, 9)
		})
		if err != nil {
			t.Fatalf("SQE128 %v: %v", big, err)
		}
		if res := r.wait(t); res == -int32(unix.EOPNOTSUPP) || res == -int32(unix.EINVAL) {
			t.Skipf("skipped: this kernel has no socket URING_CMD (%v)", Errno(res))
		} else if res != 123 || r.tag != 9 {
			t.Fatalf("SQE128 %v: SIOCINQ res %d tag %d, want 123", big, res, r.tag)
		}
		r = newResult()
		l.Call(func() {
			var e SQE
			e.PrepURingCmd(int32(fd), SocketCmdSIOCINQ)
			_, err = l.SubmitCmd(&e, make([]byte, 24), r, 10)
		})
		if !big {
			if err != unix.EINVAL {
				t.Fatalf("a 24-byte command on 64-byte SQEs: %v, want EINVAL", err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("a 24-byte command on 128-byte SQEs: %v", err)
		}
		if res := r.wait(t); res != 123 || r.tag != 10 {
			t.Fatalf("SIOCINQ with a 24-byte command area: res %d tag %d", res, r.tag)
		}
	}
}
