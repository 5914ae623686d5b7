package dm

import (
	"context"
	"reflect"
	"testing"

	"github.com/rs/zerolog"
)

type holeDev struct {
	*MemDevice
	exts []Extent
}

func (h holeDev) Extents(_ context.Context, off, length int64) ([]Extent, error) {
	// Report h.exts clipped to [off, off+length).
	var out []Extent
	pos := int64(0)
	for _, e := range h.exts {
		s, end := max(pos, off), min(pos+e.Length, off+length)
		if s < end {
			out = append(out, Extent{Length: end - s, Flags: e.Flags})
		}
		pos += e.Length
	}
	return out, nil
}

func TestDeviceExtents(t *testing.T) {
	hole := ExtentHole | ExtentZero
	hd := holeDev{NewMemDevice("sparse", 1<<20), []Extent{{Length: 256 << 10, Flags: hole}, {Length: 256 << 10}, {Length: 512 << 10, Flags: hole}}}
	plain := NewMemDevice("plain", 1<<20)
	d := NewDevice(DeviceConfig{Name: "x", Log: zerolog.Nop(), Open: StaticOpener(hd, plain)})
	// linear over the sparse device from 128 KiB, a zero target, linear
	// over a device that knows nothing of holes.
	if err := d.Load("0 1024 linear sparse 256\n1024 512 zero\n1536 512 linear plain 0"); err != nil {
		t.Fatal(err)
	}
	if err := d.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := d.Extents(context.Background(), 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []Extent{
		{Length: 128 << 10, Flags: hole},         // sparse 128K..256K
		{Length: 256 << 10},                      // sparse data 256K..512K
		{Length: 128<<10 + 256<<10, Flags: hole}, // sparse hole, then the zero target (merged)
		{Length: 256 << 10},                      // plain: data
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("extents\n got %+v\nwant %+v", got, want)
	}
	if _, err := d.Extents(context.Background(), 0, 2<<20); err == nil {
		t.Fatal("extents past the end accepted")
	}
}
