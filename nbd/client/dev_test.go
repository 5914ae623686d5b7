package client

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/filedev"
	"udm/internal/refserver"
	"udm/internal/testutil"
	"udm/uring"
)

// ctBio is a bio submitted from a loop that records where it ended.
type ctBio struct {
	dm.Bio
	l      *uring.Loop
	onLoop bool
	done   chan error
}

func (b *ctBio) BioEnd(_ *dm.Bio, err error) {
	b.onLoop = b.l.OnLoop()
	b.done <- err
}

// ctSubmit submits a bio from loop l and waits for its end, which must
// run on l.
func ctSubmit(t *testing.T, l *uring.Loop, dev *dm.Device, op dm.Op, flags dm.BioFlags, off int64, n int, buf []byte) error {
	t.Helper()
	b := &ctBio{l: l, done: make(chan error, 1)}
	b.Op, b.Flags, b.Sector, b.Len, b.Buf, b.BufIndex, b.Exec, b.End = op, flags, uint64(off)>>dm.SectorShift, uint32(n), buf, -1, l, b
	if err := l.Post(func() { dev.Submit(&b.Bio) }); err != nil {
		t.Fatal(err)
	}
	err := testutil.Wait(t, fmt.Sprintf("%s@%d to end", op, off), b.done)
	if !b.onLoop {
		t.Errorf("%s@%d ended off its loop", op, off)
	}
	return err
}

// A dm table mixing an NBD export and a file (ComposeOpeners) carries
// bios whose ends run on the submitting loop.
func TestClientAsTableDevice(t *testing.T) {
	seed := ctSeed(t)
	srv := refserver.Nbdkit(t, true, "memory", "4M")
	file := testutil.TempFile(t, 4<<20)
	l, err := uring.NewLoop(uring.Config{ID: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var client dm.BlockDevice
	nbdOpen := Opener(Options{})
	open := ComposeOpeners(func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		d, cl, err := nbdOpen(name, ro)
		client = d
		return d, cl, err
	}, filedev.Opener(l))
	dev := dm.NewDevice(dm.DeviceConfig{Name: "mix", Log: zerolog.Nop(), Open: open})
	if err := dev.Load("0 8192 linear " + srv.URI + " 0\n8192 8192 linear " + file + " 0"); err != nil {
		t.Fatal(err)
	}
	ctx := ctCtx(t)
	if err := dev.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	defer dev.Remove(ctx, true, false)
	rng := rand.New(rand.NewPCG(seed, 5))
	model := make([]byte, 8<<20)
	for i := 0; i < 40; i++ {
		n := (1 + rng.IntN(128)) * 512
		off := rng.Int64N(int64(len(model)-n)/512+1) * 512
		if i%4 == 0 {
			off = 4<<20 - int64(n/2)/512*512 // across the boundary
		}
		data := make([]byte, n)
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		var fl dm.BioFlags
		if i%3 == 0 {
			fl = dm.FUA
		}
		if err := ctSubmit(t, l, dev, dm.OpWrite, fl, off, n, data); err != nil {
			t.Fatalf("write %d@%d: %v", n, off, err)
		}
		copy(model[off:], data)
		got := make([]byte, n)
		if err := ctSubmit(t, l, dev, dm.OpRead, 0, off, n, got); err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d@%d: %v (equal %v)", n, off, err, bytes.Equal(got, data))
		}
	}
	if err := ctSubmit(t, l, dev, dm.OpFlush, 0, 0, 0, nil); err != nil {
		t.Fatalf("flush: %v", err)
	}
	for _, op := range []dm.Op{dm.OpWriteZeroes, dm.OpDiscard} {
		if err := ctSubmit(t, l, dev, op, 0, 1<<20, 64<<10, nil); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
	}
	got := make([]byte, 64<<10)
	if err := ctSubmit(t, l, dev, dm.OpRead, 0, 1<<20, len(got), got); err != nil || !ctAllBytes(got, 0) {
		t.Fatalf("read after write-zeroes: %v", err)
	}
	if err := ctSubmit(t, l, dev, dm.OpWriteZeroes, dm.NoUnmap, 2<<20, 4096, nil); err != nil {
		t.Fatalf("write-zeroes with NoUnmap: %v", err)
	}
	// The NBD half counted its clones.
	st := client.(dm.IOStatser).IOStats()
	if st.Ops[dm.LatRead] == 0 || st.Ops[dm.LatWrite] == 0 || st.ReadBytes == 0 || st.WriteBytes == 0 || st.InFlight != 0 || st.Errors != 0 {
		t.Errorf("client I/O stats %+v", st)
	}
}

// SetIODeadline bounds clones: a slow export ends them with ETIMEDOUT, on
// any goroutine when the clone has no executor.
func TestClientIODeadline(t *testing.T) {
	srv := refserver.Nbdkit(t, true, "--filter=delay", "memory", "1M", "delay-read=300ms")
	c := ctDial(t, srv.URI, Options{})
	var _ dm.DeadlineSetter = c
	c.SetIODeadline(20 * time.Millisecond)
	done := make(chan error, 2)
	cl := dm.NewDetachedClone(nil, func(_ *dm.Clone, err error) { done <- err })
	cl.Op, cl.Sector, cl.Len, cl.Buf = dm.OpRead, 0, 4096, make([]byte, 4096)
	c.Submit(cl)
	if err := testutil.Wait(t, "the slow read to end", done); !errors.Is(err, syscall.ETIMEDOUT) {
		t.Fatalf("slow read: %v, want ETIMEDOUT", err)
	}
	// With the deadline gone (0), a slow read waits for its reply.
	c.SetIODeadline(0)
	cl = dm.NewDetachedClone(nil, func(_ *dm.Clone, err error) { done <- err })
	cl.Op, cl.Sector, cl.Len, cl.Buf = dm.OpRead, 8, 4096, make([]byte, 4096)
	c.Submit(cl)
	if err := testutil.Wait(t, "the read without a deadline to end", done); err != nil {
		t.Fatalf("read without a deadline: %v", err)
	}
	testutil.Eventually(t, "the late reply consumed", func() bool { return ctTableEmpty(c) })
}

// The opener refuses an export that isn't a whole number of sectors, and
// a bad URI; file names go to the file opener.
func TestClientOpener(t *testing.T) {
	srv := refserver.Nbdkit(t, true, "memory", "1000")
	open := Opener(Options{})
	if _, _, err := open(srv.URI, false); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("open of a 1000-byte export: %v, want EINVAL", err)
	}
	if _, _, err := open("nbd+vsock://2/x", false); !errors.Is(err, errURIUnsupported) {
		t.Errorf("open of nbd+vsock://: %v", err)
	}
	srv2 := refserver.Nbdkit(t, true, "memory", "1M")
	d, closer, err := open(srv2.URI, true)
	if err != nil {
		t.Fatal(err)
	}
	defer closer.Close()
	if !d.ReadOnly() || d.Size() != 1<<20 || d.BlockSize() != 512 || d.Name() != srv2.URI {
		t.Errorf("device: ro %v size %d bs %d name %q", d.ReadOnly(), d.Size(), d.BlockSize(), d.Name())
	}
	var files []string
	comp := ComposeOpeners(open, func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		files = append(files, name)
		return nil, nil, syscall.ENOENT
	})
	if _, _, err := comp("/dev/nonexistent", false); !errors.Is(err, syscall.ENOENT) || len(files) != 1 {
		t.Errorf("file name: %v, files %v", err, files)
	}
}
