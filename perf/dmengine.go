package perf

import (
	"context"
	"strings"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/dm/filedev"
	"udm/uring"
)

// DMEngine drives a dm device in process: bios are submitted on each
// loop (Exec = the loop, buffers from its arena) and complete there. It
// measures the cost of the core and its targets without NBD.
type DMEngine struct {
	name string
	dev  *dm.Device
	// Done runs on Close (e.g. to remove the device and close loops).
	Done func() error
}

// NewDMEngine wraps dev.
func NewDMEngine(name string, dev *dm.Device) *DMEngine {
	return &DMEngine{name: name, dev: dev}
}

func (e *DMEngine) Name() string { return e.name }
func (e *DMEngine) Size() int64  { return e.dev.Size() }

func (e *DMEngine) Close() error {
	if e.Done != nil {
		return e.Done()
	}
	return nil
}

// Port returns a submitter on l.
func (e *DMEngine) Port(l *uring.Loop) (Port, error) {
	return &dmPort{dev: e.dev, l: l}, nil
}

type dmPort struct {
	dev  *dm.Device
	l    *uring.Loop
	bios []*dmBio // by IO index; pointers: bios in flight must not move
}

// dmBio is a bio with its IO; it ends the IO on the loop.
type dmBio struct {
	bio dm.Bio
	io  *IO
}

func (b *dmBio) BioEnd(_ *dm.Bio, err error) { b.io.Done(err) }

func (p *dmPort) Submit(io *IO) {
	for len(p.bios) <= io.Index {
		p.bios = append(p.bios, new(dmBio))
	}
	b := p.bios[io.Index]
	b.io = io
	op := dm.OpRead
	if io.Op == Write {
		op = dm.OpWrite
	}
	b.bio = dm.Bio{Op: op, Sector: uint64(io.Off) >> dm.SectorShift, Len: uint32(len(io.Buf.B)),
		Buf: io.Buf.B, BufIndex: io.Buf.Index, Exec: p.l, End: b}
	p.dev.Submit(&b.bio)
}

func (p *dmPort) Close() {}

// TableEngine builds a dm device from table (kernel syntax; target types
// from targets, nil for dm's own) over files and block devices on n new
// loops, for in-process benchmarks. Close removes the device and stops
// the loops.
func TableEngine(table string, n int, targets *dm.TargetRegistry) (*DMEngine, []*uring.Loop, error) {
	var loops []*uring.Loop
	closeLoops := func() {
		for _, l := range loops {
			l.Close()
		}
	}
	for i := 0; i < max(n, 1); i++ {
		l, err := uring.NewLoop(uring.Config{ID: i, ArenaSize: 64 << 20})
		if err != nil {
			closeLoops()
			return nil, nil, err
		}
		loops = append(loops, l)
	}
	reg := dm.NewRegistry(dm.Config{Log: zerolog.Nop(), Targets: targets, Open: filedev.Opener(loops[0])})
	dev, err := reg.Create(context.Background(), "bench", "", table)
	if err != nil {
		closeLoops()
		return nil, nil, err
	}
	e := NewDMEngine("udm-dm:"+firstWord(table), dev)
	e.Done = func() error {
		err := reg.RemoveAll(context.Background())
		closeLoops()
		return err
	}
	return e, loops, nil
}

func firstWord(table string) string {
	f := strings.Fields(table)
	if len(f) >= 3 {
		return f[2]
	}
	return "table"
}
