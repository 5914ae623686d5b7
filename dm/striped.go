package dm

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// stripeErrorThreshold is how many errors on one stripe trigger an event
// (the kernel's DM_IO_ERROR_THRESHOLD).
const stripeErrorThreshold = 15

// striped spreads its range over devices in chunks:
// `striped <#stripes> <chunk sectors> {<dev> <offset>}...`. Chunk k of
// the target is on stripe k mod #stripes. No clone crosses a chunk; an
// empty flush goes to every stripe once.
type striped struct {
	ctx     *TargetContext
	chunk   uint64
	stripes []stripe
}

type stripe struct {
	dev    BlockDevice
	name   string
	offset uint64
	errors atomic.Uint32
}

func stripedType() TargetType {
	return TargetType{Name: "striped", Version: [3]int{1, 7, 0}, New: newStriped}
}

func newStriped(ctx *TargetContext, args []string) (Target, error) {
	if len(args) < 2 {
		return nil, fmt.Errorf("not enough arguments")
	}
	n, err := strconv.ParseUint(args[0], 10, 31)
	if err != nil || n == 0 {
		return nil, fmt.Errorf("invalid stripe count %q", args[0])
	}
	chunk, err := strconv.ParseUint(args[1], 10, 32)
	if err != nil || chunk == 0 {
		return nil, fmt.Errorf("invalid chunk_size %q", args[1])
	}
	if ctx.Len%n != 0 {
		return nil, fmt.Errorf("target length not divisible by number of stripes")
	}
	width := ctx.Len / n
	if width%chunk != 0 {
		return nil, fmt.Errorf("target length not divisible by chunk size")
	}
	if uint64(len(args)) != 2+2*n {
		return nil, fmt.Errorf("not enough destinations specified: want %d <dev> <offset> pairs", n)
	}
	s := &striped{ctx: ctx, chunk: chunk, stripes: make([]stripe, n)}
	for i := range s.stripes {
		name, offs := args[2+2*i], args[3+2*i]
		off, err := strconv.ParseUint(offs, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("invalid stripe %d offset %q", i, offs)
		}
		dev, err := ctx.Devices.GetDevice(name, ctx.ReadOnly())
		if err != nil {
			return nil, fmt.Errorf("couldn't parse stripe %d destination: %w", i, err)
		}
		if err := checkArea(dev, name, off, width); err != nil {
			return nil, err
		}
		s.stripes[i].dev, s.stripes[i].name, s.stripes[i].offset = dev, name, off
	}
	return s, nil
}

func (s *striped) MaxIOSectors() uint64 { return s.chunk }
func (s *striped) NumFlushClones() int  { return len(s.stripes) }
func (s *striped) NumDiscardClones() int {
	return 1 // discards are split by chunk like data
}

func (s *striped) Map(c *Clone) MapResult {
	if c.Op == OpFlush {
		st := &s.stripes[c.Index]
		c.Dev, c.CtxU = st.dev, uint64(c.Index)
		return MapRemapped
	}
	chunk := c.Sector / s.chunk
	n := uint64(len(s.stripes))
	i := chunk % n
	st := &s.stripes[i]
	c.Dev, c.CtxU = st.dev, i
	c.Sector = st.offset + (chunk/n)*s.chunk + c.Sector%s.chunk
	return MapRemapped
}

func (s *striped) EndIO(c *Clone, err error) (EndIOResult, error) {
	if err == nil || err == ErrCanceled || err == syscall.EOPNOTSUPP {
		return EndIODone, err
	}
	if s.stripes[c.CtxU].errors.Add(1) == stripeErrorThreshold {
		s.ctx.TriggerEvent()
	}
	return EndIODone, err
}

func (s *striped) Status(t StatusType) string {
	var b strings.Builder
	if t == StatusInfo {
		b.WriteString(strconv.Itoa(len(s.stripes)))
		for i := range s.stripes {
			b.WriteString(" " + QuoteArg(s.stripes[i].name))
		}
		b.WriteString(" 1 ")
		for i := range s.stripes {
			if s.stripes[i].errors.Load() != 0 {
				b.WriteByte('D')
			} else {
				b.WriteByte('A')
			}
		}
		return b.String()
	}
	fmt.Fprintf(&b, "%d %d", len(s.stripes), s.chunk)
	for i := range s.stripes {
		fmt.Fprintf(&b, " %s %d", QuoteArg(s.stripes[i].name), s.stripes[i].offset)
	}
	return b.String()
}
