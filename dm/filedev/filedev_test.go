package filedev

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/internal/testutil"
	"udm/uring"
)

func newLoop(t *testing.T, id int) *uring.Loop {
	t.Helper()
	l, err := uring.NewLoop(uring.Config{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// ioOn submits one bio on loop l (buffer from l's arena) and waits.
func ioOn(t *testing.T, l *uring.Loop, d interface{ Submit(*dm.Bio) }, op dm.Op, sector uint64, data []byte, flags dm.BioFlags) ([]byte, error) {
	t.Helper()
	done := make(chan error, 1)
	var b dm.Bio
	var buf uring.Buf
	l.Call(func() {
		if op.HasData() {
			buf = l.Arena().Get(len(data))
			if op == dm.OpWrite {
				copy(buf.B, data)
			}
		}
		b = dm.Bio{Op: op, Flags: flags, Sector: sector, Len: uint32(len(data)), Buf: buf.B, BufIndex: buf.Index,
			Exec: l, End: dm.EndioFunc(func(_ *dm.Bio, err error) { done <- err })}
		d.Submit(&b)
	})
	err := testutil.Wait(t, fmt.Sprintf("%v at sector %d to complete", op, sector), done)
	var out []byte
	if op == dm.OpRead {
		out = append(out, buf.B...)
	}
	if buf.B != nil {
		l.Call(func() { l.Arena().Put(buf) })
	}
	return out, err
}

// mustOpen opens path with opts and closes it when the test ends.
func mustOpen(t *testing.T, path string, opts Options) *Device {
	t.Helper()
	d, err := Open(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// backing returns n backing paths of size bytes: tmpfs files, and loop
// devices over them when running as root.
func backing(t *testing.T, n int, size int64, loopdev bool) []string {
	var ps []string
	for i := 0; i < n; i++ {
		p := testutil.TempFile(t, size)
		if loopdev {
			p = testutil.LoopDevice(t, p)
		}
		ps = append(ps, p)
	}
	return ps
}

func TestTargetsRoundTripOverRealFiles(t *testing.T) {
	loops := []*uring.Loop{newLoop(t, 0), newLoop(t, 1)}
	type kind struct {
		name    string
		loopdev bool
		mode    Mode
	}
	kinds := []kind{{"file-uring", false, ModeUring}, {"file-inline", false, ModeInline}}
	if os.Geteuid() == 0 {
		kinds = append(kinds, kind{"loopdev", true, ModeAuto})
	} else {
		t.Log("loop-device cases skipped: needs root")
	}
	for _, k := range kinds {
		kind, loopdev := k.name, k.loopdev
		const mb = 1 << 20
		p := backing(t, 3, 8*mb, loopdev)
		sectors := uint64(8 * mb / 512)
		cases := []struct {
			name, table string
			size        uint64 // sectors
		}{
			{"linear", fmt.Sprintf("0 %d linear %s 0", sectors-2048, p[0]), sectors - 2048},
			{"linear-concat", fmt.Sprintf("0 4096 linear %s 2048\n4096 %d linear %s 0", p[0], sectors, p[1]), 4096 + sectors},
			{"striped", fmt.Sprintf("0 %d striped 3 128 %s 0 %s 0 %s 0", 3*sectors, p[0], p[1], p[2]), 3 * sectors},
			{"flakey-up", fmt.Sprintf("0 %d flakey %s 0 3600 0", sectors, p[2]), sectors},
		}
		for _, c := range cases {
			t.Run(kind+"/"+c.name, func(t *testing.T) {
				reg := dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Open: OpenerWith(Options{Mode: k.mode})})
				ctx := context.Background()
				dev, err := reg.Create(ctx, "t", "", c.table)
				if err != nil {
					t.Fatal(err)
				}
				defer reg.Remove(ctx, "t", false, false)
				if got := uint64(dev.Size()) / 512; got != c.size {
					t.Fatalf("size %d sectors, want %d", got, c.size)
				}
				seed := uint64(time.Now().UnixNano())
				rng := rand.New(rand.NewPCG(seed, 7))
				written := map[uint64][]byte{}
				for i := 0; i < 60; i++ {
					l := loops[i%2]
					n := (1 + rng.IntN(64)) * 4096
					sector := rng.Uint64N(c.size-uint64(n/512)) &^ 7
					data := randBytes(rng, n)
					if _, err := ioOn(t, l, dev, dm.OpWrite, sector, data, 0); err != nil {
						t.Fatalf("seed %d: write %d bytes at sector %d: %v", seed, n, sector, err)
					}
					for s := 0; s < n/512; s++ {
						written[sector+uint64(s)] = data[s*512 : (s+1)*512]
					}
				}
				for i := 0; i < 60; i++ {
					l := loops[i%2]
					n := (1 + rng.IntN(64)) * 4096
					sector := rng.Uint64N(c.size-uint64(n/512)) &^ 7
					got, err := ioOn(t, l, dev, dm.OpRead, sector, make([]byte, n), 0)
					if err != nil {
						t.Fatalf("seed %d: read at sector %d: %v", seed, sector, err)
					}
					for s := 0; s < n/512; s++ {
						want, ok := written[sector+uint64(s)]
						if !ok {
							continue
						}
						if !bytes.Equal(got[s*512:(s+1)*512], want) {
							t.Fatalf("seed %d: sector %d reads back wrong", seed, sector+uint64(s))
						}
					}
				}
				if _, err := ioOn(t, loops[0], dev, dm.OpFlush, 0, nil, 0); err != nil {
					t.Fatalf("flush: %v", err)
				}
			})
		}
	}
}

func TestFlakeyDownFailsOverRealFile(t *testing.T) {
	l := newLoop(t, 0)
	p := testutil.TempFile(t, 1<<20)
	reg := dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Open: Opener(nil)})
	ctx := context.Background()
	// Up 0 s, down 3600 s: down from the start, all I/O fails.
	dev, err := reg.Create(ctx, "f", "", fmt.Sprintf("0 2048 flakey %s 0 0 3600", p))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Remove(ctx, "f", false, false)
	if _, err := ioOn(t, l, dev, dm.OpRead, 0, make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read while down: %v, want EIO", err)
	}
}

func TestOpsOnFile(t *testing.T) {
	l := newLoop(t, 0)
	for _, c := range []struct {
		loopdev bool
		mode    Mode
	}{{false, ModeUring}, {false, ModeInline}, {true, ModeAuto}} {
		loopdev := c.loopdev
		if loopdev && os.Geteuid() != 0 {
			continue
		}
		p := backing(t, 1, 4<<20, loopdev)[0]
		d := mustOpen(t, p, Options{Mode: c.mode})
		sub := submitter{d}
		data := bytes.Repeat([]byte{0xab}, 64<<10)
		if _, err := ioOn(t, l, sub, dm.OpWrite, 0, data, dm.FUA); err != nil {
			t.Fatalf("FUA write: %v", err)
		}
		for _, op := range []dm.Op{dm.OpWriteZeroes, dm.OpDiscard} {
			ioOn(t, l, sub, dm.OpWrite, 0, data, 0)
			if _, err := ioOn(t, l, sub, op, 0, make([]byte, 32<<10), 0); err != nil {
				t.Fatalf("%v: %v", op, err)
			}
			got, _ := ioOn(t, l, sub, dm.OpRead, 0, make([]byte, 64<<10), 0)
			if op == dm.OpWriteZeroes && !bytes.Equal(got[:32<<10], make([]byte, 32<<10)) {
				t.Fatalf("write-zeroes (loopdev=%v, mode %v): range not zero", loopdev, c.mode)
			}
			if !bytes.Equal(got[32<<10:], data[32<<10:]) {
				t.Fatalf("%v (loopdev=%v, mode %v) touched data beyond its range", op, loopdev, c.mode)
			}
		}
		if _, err := ioOn(t, l, sub, dm.OpFlush, 0, nil, 0); err != nil {
			t.Fatalf("flush: %v", err)
		}
		if _, err := ioOn(t, l, sub, dm.OpRead, (4<<20)/512, make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
			t.Fatalf("read past the end: %v, want EIO", err)
		}
	}
}

// linearOver is a live device named name with a linear table over all
// of d.
func linearOver(name string, d dm.BlockDevice) (*dm.Device, error) {
	dev := dm.NewDevice(dm.DeviceConfig{Name: name, Log: zerolog.Nop(), Open: dm.StaticOpener(d)})
	if err := dev.Load(fmt.Sprintf("0 %d linear %s 0", d.Size()/dm.SectorSize, d.Name())); err != nil {
		return nil, err
	}
	return dev, dev.Resume(context.Background())
}

func mustLinearOver(t *testing.T, name string, d dm.BlockDevice) *dm.Device {
	t.Helper()
	dev, err := linearOver(name, d)
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

// submitter turns a Bio into one clone on a BlockDevice, for testing a
// device without a table.
type submitter struct{ d dm.BlockDevice }

func (s submitter) Submit(b *dm.Bio) {
	dev, err := linearOver("wrap", s.d)
	if err != nil {
		panic(err)
	}
	end := b.End
	b.End = dm.EndioFunc(func(bb *dm.Bio, err error) {
		end.BioEnd(bb, err)
	})
	dev.Submit(b)
}

func TestMisalignedBufferBounces(t *testing.T) {
	l := newLoop(t, 0)
	p := testutil.TempFile(t, 1<<20)
	if os.Geteuid() == 0 {
		p = testutil.LoopDevice(t, p) // block devices enforce alignment
	}
	d := mustOpen(t, p, Options{})
	raw := make([]byte, 8192+1)
	buf := raw[1 : 1+8192] // misaligned heap memory
	for i := range buf {
		buf[i] = byte(i)
	}
	done := make(chan error, 1)
	b := dm.Bio{Op: dm.OpWrite, Len: 8192, Buf: buf, BufIndex: -1, Exec: l, End: dm.EndioFunc(func(_ *dm.Bio, err error) { done <- err })}
	l.Call(func() { submitter{d}.Submit(&b) })
	if err := <-done; err != nil {
		t.Fatalf("misaligned write: %v", err)
	}
	back := make([]byte, 8192+3)[3:]
	b = dm.Bio{Op: dm.OpRead, Len: 8192, Buf: back, BufIndex: -1, Exec: l, End: dm.EndioFunc(func(_ *dm.Bio, err error) { done <- err })}
	l.Call(func() { submitter{d}.Submit(&b) })
	if err := <-done; err != nil || !bytes.Equal(back, buf) {
		t.Fatalf("misaligned read: %v, equal %v", err, bytes.Equal(back, buf))
	}
}

func TestNoLoopUsesFallback(t *testing.T) {
	p := testutil.TempFile(t, 1<<20)
	dev := mustLinearOver(t, "nl", mustOpen(t, p, Options{}))
	data := bytes.Repeat([]byte("udm!"), 1024)
	w := dm.Bio{Op: dm.OpWrite, Len: 4096, Buf: data, BufIndex: -1}
	if err := dev.SubmitWait(context.Background(), &w); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	r := dm.Bio{Op: dm.OpRead, Len: 4096, Buf: got, BufIndex: -1}
	if err := dev.SubmitWait(context.Background(), &r); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back: %v", err)
	}
}

func TestVanishAndGone(t *testing.T) {
	l := newLoop(t, 0)
	p := testutil.TempFile(t, 1<<20)
	d := mustOpen(t, p, Options{})
	if d.Vanished() {
		t.Fatal("fresh file reported vanished")
	}
	if err := d.Check(context.Background(), time.Second); err != nil {
		t.Fatalf("checker on a healthy file: %v", err)
	}
	os.Remove(p)
	if !d.Vanished() {
		t.Fatal("removed file not reported vanished")
	}
	d.MarkGone()
	if _, err := ioOn(t, l, submitter{d}, dm.OpRead, 0, make([]byte, 4096), 0); !errors.Is(err, syscall.ENODEV) {
		t.Fatalf("I/O to a gone device: %v, want ENODEV", err)
	}
	if err := d.Check(context.Background(), time.Second); !errors.Is(err, ErrGone) {
		t.Fatalf("checker on a gone device: %v", err)
	}
}

func TestDeadlineDoesNotDisturbFastIO(t *testing.T) {
	l := newLoop(t, 0)
	p := testutil.TempFile(t, 1<<20)
	d := mustOpen(t, p, Options{Mode: ModeUring}) // deadlines are linked timeouts on the ring
	d.SetIODeadline(5 * time.Second)
	data := bytes.Repeat([]byte{7}, 4096)
	if _, err := ioOn(t, l, submitter{d}, dm.OpWrite, 8, data, 0); err != nil {
		t.Fatal(err)
	}
	got, err := ioOn(t, l, submitter{d}, dm.OpRead, 8, make([]byte, 4096), 0)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read with deadline: %v", err)
	}
}

func TestReadOnly(t *testing.T) {
	l := newLoop(t, 0)
	p := testutil.TempFile(t, 1<<20)
	d := mustOpen(t, p, Options{ReadOnly: true})
	if !d.ReadOnly() {
		t.Fatal("not read-only")
	}
	if _, err := ioOn(t, l, submitter{d}, dm.OpWrite, 0, make([]byte, 4096), 0); !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EPERM) && !errors.Is(err, syscall.EIO) {
		t.Fatalf("write to read-only: %v", err)
	}
}

func TestModeAuto(t *testing.T) {
	p := testutil.TempFile(t, 1<<20)
	d := mustOpen(t, p, Options{})
	if p[:9] == "/dev/shm/" && d.Mode() != ModeInline {
		t.Fatalf("a tmpfs file got mode %v, want inline", d.Mode())
	}
	if os.Geteuid() == 0 {
		b, err := Open(testutil.LoopDevice(t, p), Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if b.Mode() != ModeUring {
			t.Fatalf("a block device got mode %v, want uring", b.Mode())
		}
	}
}

// TestRefreshTakesTheGrownSize: a backing file grown underneath serves
// the new range only after Refresh, and a size that is not a whole
// number of sectors is refused with the old size kept.
func TestRefreshTakesTheGrownSize(t *testing.T) {
	l := newLoop(t, 0)
	p := testutil.TempFile(t, 1<<20)
	d := mustOpen(t, p, Options{})
	beyond := uint64(1 << 20 / 512)
	if _, err := ioOn(t, l, submitter{d}, dm.OpWrite, beyond, make([]byte, 4096), 0); !errors.Is(err, syscall.EIO) {
		t.Fatalf("write past the end before the refresh: %v", err)
	}
	if err := os.Truncate(p, 2<<20); err != nil {
		t.Fatal(err)
	}
	if d.Size() != 1<<20 {
		t.Fatalf("size %d before the refresh", d.Size())
	}
	if sz, err := d.Refresh(); err != nil || sz != 2<<20 || d.Size() != 2<<20 {
		t.Fatalf("refresh: %d, %v (size %d)", sz, err, d.Size())
	}
	data := bytes.Repeat([]byte{0x5a}, 4096)
	if _, err := ioOn(t, l, submitter{d}, dm.OpWrite, beyond, data, 0); err != nil {
		t.Fatalf("write in the grown range: %v", err)
	}
	if got, err := ioOn(t, l, submitter{d}, dm.OpRead, beyond, make([]byte, 4096), 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("read back in the grown range: %v", err)
	}
	if err := os.Truncate(p, 2<<20+100); err != nil {
		t.Fatal(err)
	}
	if sz, err := d.Refresh(); err == nil || sz != 2<<20 || d.Size() != 2<<20 {
		t.Fatalf("refresh to a partial sector: %d, %v (size %d)", sz, err, d.Size())
	}
}
