package perf

import (
	"fmt"

	"udm/uring"
)

// FileEngine drives a file or block device directly through the loops'
// rings (O_DIRECT, fixed files, fixed buffers): the raw-device baseline.
type FileEngine struct {
	f *uring.BlockFile
}

// NewFileEngine opens path for raw I/O.
func NewFileEngine(path string) (*FileEngine, error) {
	f, err := uring.OpenBlock(path, uring.OpenOptions{})
	if err != nil {
		return nil, err
	}
	return &FileEngine{f: f}, nil
}

func (e *FileEngine) Name() string { return "udm-raw:" + e.f.Path }
func (e *FileEngine) Size() int64  { return e.f.Size }
func (e *FileEngine) Close() error { return e.f.Close() }

// Port registers the file on l.
func (e *FileEngine) Port(l *uring.Loop) (Port, error) {
	idx, err := l.RegisterFile(e.f.Fd)
	if err != nil {
		return nil, err
	}
	return &filePort{l: l, idx: idx}, nil
}

type filePort struct {
	l   *uring.Loop
	idx int32
	ios []*IO
}

func (p *filePort) Submit(io *IO) {
	for len(p.ios) <= io.Index {
		p.ios = append(p.ios, nil)
	}
	p.ios[io.Index] = io
	var e uring.SQE
	off := uint64(io.Off)
	if io.Op == Read {
		if io.Buf.Fixed() {
			e.PrepReadFixed(p.idx, io.Buf.B, off, uint16(io.Buf.Index))
		} else {
			e.PrepRead(p.idx, io.Buf.B, off)
		}
	} else {
		if io.Buf.Fixed() {
			e.PrepWriteFixed(p.idx, io.Buf.B, off, uint16(io.Buf.Index), 0)
		} else {
			e.PrepWrite(p.idx, io.Buf.B, off, 0)
		}
	}
	e.Fixed()
	if _, err := p.l.Submit(&e, p, uint64(io.Index)); err != nil {
		io.Done(err)
	}
}

func (p *filePort) Complete(tag uint64, res int32, _ uint32) {
	io := p.ios[tag]
	switch {
	case res < 0:
		io.Done(uring.Errno(res))
	case int(res) != len(io.Buf.B):
		io.Done(fmt.Errorf("short %s: %d of %d bytes", opName(io.Op), res, len(io.Buf.B)))
	default:
		io.Done(nil)
	}
}

func (p *filePort) Close() { p.l.UnregisterFile(p.idx) }
