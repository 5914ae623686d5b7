package dm

import (
	"fmt"
	"strconv"
)

// linear maps its range onto one device at an offset:
// `linear <dev> <offset>`.
type linear struct {
	dev    BlockDevice
	name   string
	offset uint64
}

func linearType() TargetType {
	return TargetType{Name: "linear", Version: [3]int{1, 4, 0}, New: newLinear}
}

func newLinear(ctx *TargetContext, args []string) (Target, error) {
	if len(args) != 2 {
		return nil, fmt.Errorf("invalid argument count: want <dev> <offset>, got %d arguments", len(args))
	}
	off, err := parseSector(args[1])
	if err != nil {
		return nil, err
	}
	dev, err := openArea(ctx, args[0], off)
	if err != nil {
		return nil, err
	}
	return &linear{dev: dev, name: args[0], offset: off}, nil
}

// parseSector reads a target's <offset> argument, a sector on its device.
func parseSector(arg string) (uint64, error) {
	off, err := strconv.ParseUint(arg, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid device sector %q", arg)
	}
	return off, nil
}

// openArea opens name for a target and checks that ctx.Len sectors from
// off fit on it.
func openArea(ctx *TargetContext, name string, off uint64) (BlockDevice, error) {
	dev, err := ctx.Devices.GetDevice(name, ctx.ReadOnly())
	if err != nil {
		return nil, fmt.Errorf("device lookup failed: %w", err)
	}
	if err := checkArea(dev, name, off, ctx.Len); err != nil {
		return nil, err
	}
	return dev, nil
}

func checkArea(dev BlockDevice, name string, off, n uint64) error {
	size := uint64(dev.Size()) >> SectorShift
	if off+n < off || off+n > size {
		return fmt.Errorf("%s too small for target: start=%d, len=%d, dev_size=%d", name, off, n, size)
	}
	return nil
}

func (l *linear) Map(c *Clone) MapResult {
	c.Dev = l.dev
	if c.Op != OpFlush {
		c.Sector += l.offset
	}
	return MapRemapped
}

func (l *linear) Status(t StatusType) string {
	if t == StatusInfo {
		return ""
	}
	return QuoteArg(l.name) + " " + strconv.FormatUint(l.offset, 10)
}
