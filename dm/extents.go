package dm

import "context"

// Extent is a run of bytes and what is known of its allocation (NBD's
// base:allocation context).
type Extent struct {
	Length int64
	Flags  ExtentFlags
}

// ExtentFlags describe an Extent.
type ExtentFlags uint32

const (
	// ExtentHole: no storage is allocated for the range.
	ExtentHole ExtentFlags = 1 << 0
	// ExtentZero: the range reads as zeroes.
	ExtentZero ExtentFlags = 1 << 1
)

// ExtentReporter is implemented by devices that know where their holes
// are (sparse files). Extents covers [off, off+length) in bytes, in order;
// it may stop early (the caller asks again from where it stopped).
type ExtentReporter interface {
	Extents(ctx context.Context, off, length int64) ([]Extent, error)
}

// ExtentMapper is implemented by targets that can say where their holes
// are; sector and n are relative to the target's start.
type ExtentMapper interface {
	Extents(ctx context.Context, sector, n uint64) ([]Extent, error)
}

// Extents describes the allocation of [off, off+length) bytes of d's live
// table: holes where a target's device reports them, data elsewhere. It
// does system calls on the devices: keep it off the loops.
func (d *Device) Extents(ctx context.Context, off, length int64) ([]Extent, error) {
	t := d.live.Load()
	if t == nil || off < 0 || length < 0 || uint64(off+length) > t.size<<SectorShift {
		return nil, ErrIO
	}
	var out []Extent
	sector, end := uint64(off)>>SectorShift, uint64(off+length)>>SectorShift
	for sector < end && ctx.Err() == nil {
		tt := t.find(sector)
		n := min(end, tt.begin+tt.len) - sector
		em, ok := tt.target.(ExtentMapper)
		if !ok {
			out = appendExtent(out, Extent{Length: int64(n) << SectorShift})
			sector += n
			continue
		}
		exts, err := em.Extents(ctx, sector-tt.begin, n)
		if err != nil {
			return nil, err
		}
		var got uint64
		for _, e := range exts {
			if e.Length <= 0 {
				continue
			}
			l := min(uint64(e.Length), (n-got)<<SectorShift)
			out = appendExtent(out, Extent{Length: int64(l), Flags: e.Flags})
			got += l >> SectorShift
			if got >= n {
				break
			}
		}
		if got == 0 {
			out = appendExtent(out, Extent{Length: int64(n) << SectorShift})
			got = n
		}
		sector += got
	}
	return out, ctx.Err()
}

// appendExtent merges runs with the same flags.
func appendExtent(out []Extent, e Extent) []Extent {
	if n := len(out); n > 0 && out[n-1].Flags == e.Flags {
		out[n-1].Length += e.Length
		return out
	}
	return append(out, e)
}

// Extents of a linear target are its device's, shifted.
func (l *linear) Extents(ctx context.Context, sector, n uint64) ([]Extent, error) {
	er, ok := l.dev.(ExtentReporter)
	if !ok {
		return []Extent{{Length: int64(n) << SectorShift}}, nil
	}
	return er.Extents(ctx, int64(sector+l.offset)<<SectorShift, int64(n)<<SectorShift)
}

// Extents of a zero target: all a hole that reads as zeroes.
func (zeroTarget) Extents(_ context.Context, _, n uint64) ([]Extent, error) {
	return []Extent{{Length: int64(n) << SectorShift, Flags: ExtentHole | ExtentZero}}, nil
}
