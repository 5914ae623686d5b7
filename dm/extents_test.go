package dm_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/dmtest"
)

type holeDev struct {
	*dmtest.MemDevice
	exts []dm.Extent
}

func (h holeDev) Extents(_ context.Context, off, length int64) ([]dm.Extent, error) {
	// Report h.exts clipped to [off, off+length).
	var out []dm.Extent
	pos := int64(0)
	for _, e := range h.exts {
		s, end := max(pos, off), min(pos+e.Length, off+length)
		if s < end {
			out = append(out, dm.Extent{Length: end - s, Flags: e.Flags})
		}
		pos += e.Length
	}
	return out, nil
}

func TestDeviceExtents(t *testing.T) {
	hole := dm.ExtentHole | dm.ExtentZero
	hd := holeDev{dmtest.NewMemDevice("sparse", 1<<20), []dm.Extent{{Length: 256 << 10, Flags: hole}, {Length: 256 << 10}, {Length: 512 << 10, Flags: hole}}}
	plain := dmtest.NewMemDevice("plain", 1<<20)
	d := dm.NewDevice(dm.DeviceConfig{Name: "x", Log: zerolog.Nop(), Open: dm.StaticOpener(hd, plain)})
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
	want := []dm.Extent{
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
