package uring

import (
	"bytes"
	"os"
	"testing"
)

type recorder struct {
	tag  uint64
	res  int32
	done chan struct{}
}

func (r *recorder) Complete(tag uint64, res int32, flags uint32) {
	r.tag, r.res = tag, res
	close(r.done)
}

func TestSmoke(t *testing.T) {
	l, err := NewLoop(Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	t.Logf("flags %#x features %#x", l.ring.Flags(), l.ring.Features())
	f, err := os.CreateTemp("/dev/shm", "smoke")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(f.Name())
	f.Truncate(1 << 20)
	f.Close()
	bf, err := OpenBlock(f.Name(), OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	t.Logf("%+v", bf)
	var wbuf, rbuf Buf
	l.Call(func() { wbuf = l.Arena().Get(4096); rbuf = l.Arena().Get(4096) })
	copy(wbuf.B, bytes.Repeat([]byte("abcd"), 1024))
	r := &recorder{done: make(chan struct{})}
	l.Post(func() {
		var e SQE
		e.PrepWriteFixed(int32(bf.Fd), wbuf.B, 8192, uint16(wbuf.Index), 0)
		l.Submit(&e, r, 7)
	})
	<-r.done
	if r.res != 4096 || r.tag != 7 {
		t.Fatalf("write res %d tag %d", r.res, r.tag)
	}
	r2 := &recorder{done: make(chan struct{})}
	l.Post(func() {
		var e SQE
		e.PrepReadFixed(int32(bf.Fd), rbuf.B, 8192, uint16(rbuf.Index))
		l.Submit(&e, r2, 8)
	})
	<-r2.done
	if r2.res != 4096 || !bytes.Equal(rbuf.B, wbuf.B) {
		t.Fatalf("read res %d", r2.res)
	}
}
