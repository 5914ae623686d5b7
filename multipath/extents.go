package multipath

import (
	"context"

	"udm/dm"
)

// Extents reports the holes of the paths' device (dm.ExtentMapper): every
// path reaches the same data, so any one that can say will do. The
// active paths of the current group are asked first, then the others; a
// path that can't tell (or fails to) is passed over. With none, all is
// data.
func (t *Multipath) Extents(ctx context.Context, sector, n uint64) ([]dm.Extent, error) {
	var tried [8]bool // paths asked already, for the first few
	ask := func(p *path) ([]dm.Extent, bool) {
		if p.idx < len(tried) {
			if tried[p.idx] {
				return nil, false
			}
			tried[p.idx] = true
		}
		er, ok := p.dev.(dm.ExtentReporter)
		if !ok {
			return nil, false
		}
		exts, err := er.Extents(ctx, int64(sector)<<dm.SectorShift, int64(n)<<dm.SectorShift)
		return exts, err == nil
	}
	if s := t.snap.Load(); s != nil {
		for _, p := range s.active {
			if exts, ok := ask(p); ok {
				return exts, nil
			}
		}
	}
	for _, p := range t.paths {
		if exts, ok := ask(p); ok {
			return exts, nil
		}
	}
	return []dm.Extent{{Length: int64(n) << dm.SectorShift}}, ctx.Err()
}
