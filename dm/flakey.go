package dm

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// flakey passes I/O to a device while "up" and misbehaves while "down":
// `flakey <dev> <offset> <up s> <down s> [<#feature args> <features>...]`
// with features drop_writes, error_writes, error_reads and
// `corrupt_bio_byte <N> <r|w> <value> <flags>`. The device is down when
// (seconds since the table was loaded) mod (up+down) >= up. With no
// features, every I/O fails while down. Discards, write-zeroes and
// flushes count as writes.
type flakey struct {
	dev        BlockDevice
	name       string
	offset     uint64
	up, down   uint64
	start      time.Time
	now        func() time.Time // time.Now; tests replace it
	noFeatures bool             // none given: error reads and writes
	zeroCount  bool             // the feature count was given as 0

	dropWrites, errorWrites, errorReads bool
	// corruptByte is 1-based; 0 means no corruption.
	corruptByte   uint64
	corruptWrites bool // direction w (else r)
	corruptValue  byte
	corruptFlags  BioFlags
}

func flakeyType() TargetType {
	return TargetType{Name: "flakey", Version: [3]int{1, 5, 0}, New: newFlakey}
}

// flakeySubmittedDown marks (in Clone.CtxU) a clone mapped while down.
const flakeySubmittedDown = 1

func newFlakey(ctx *TargetContext, args []string) (Target, error) {
	if len(args) < 4 {
		return nil, fmt.Errorf("invalid argument count: want <dev> <offset> <up interval> <down interval> [features]")
	}
	f := &flakey{name: args[0], now: time.Now}
	var err error
	if f.offset, err = parseSector(args[1]); err != nil {
		return nil, err
	}
	if f.up, err = strconv.ParseUint(args[2], 10, 32); err != nil {
		return nil, fmt.Errorf("invalid up interval %q", args[2])
	}
	if f.down, err = strconv.ParseUint(args[3], 10, 32); err != nil {
		return nil, fmt.Errorf("invalid down interval %q", args[3])
	}
	if f.up+f.down == 0 {
		return nil, fmt.Errorf("total (up + down) interval is zero")
	}
	if err := f.parseFeatures(args[4:]); err != nil {
		return nil, err
	}
	if f.dev, err = openArea(ctx, args[0], f.offset); err != nil {
		return nil, err
	}
	f.start = f.now()
	return f, nil
}

func (f *flakey) parseFeatures(args []string) error {
	if len(args) == 0 {
		f.noFeatures = true
		f.errorReads, f.errorWrites = true, true
		return nil
	}
	n, err := strconv.ParseUint(args[0], 10, 8)
	if err != nil || n > 11 {
		return fmt.Errorf("invalid number of feature args %q", args[0])
	}
	feats := args[1:]
	if uint64(len(feats)) != n {
		return fmt.Errorf("want %d feature args, got %d", n, len(feats))
	}
	if n == 0 {
		f.noFeatures, f.zeroCount = true, true
		f.errorReads, f.errorWrites = true, true
		return nil
	}
	for i := 0; i < len(feats); i++ {
		switch feats[i] {
		case "drop_writes", "error_writes":
			// Each excludes the other.
			mine, other, otherName := &f.dropWrites, f.errorWrites, "error_writes"
			if feats[i] == "error_writes" {
				mine, other, otherName = &f.errorWrites, f.dropWrites, "drop_writes"
			}
			if *mine {
				return fmt.Errorf("feature %s duplicated", feats[i])
			}
			if other {
				return fmt.Errorf("feature %s conflicts with %s", feats[i], otherName)
			}
			*mine = true
		case "error_reads":
			if f.errorReads {
				return fmt.Errorf("feature error_reads duplicated")
			}
			f.errorReads = true
		case "corrupt_bio_byte":
			if f.corruptByte != 0 {
				return fmt.Errorf("feature corrupt_bio_byte duplicated")
			}
			if len(feats)-i-1 < 4 {
				return fmt.Errorf("corrupt_bio_byte requires parameters <N> <r|w> <value> <flags>")
			}
			p := feats[i+1 : i+5]
			i += 4
			nb, err := strconv.ParseUint(p[0], 10, 32)
			if err != nil || nb == 0 {
				return fmt.Errorf("invalid corrupt bio byte %q", p[0])
			}
			f.corruptByte = nb
			switch p[1] {
			case "r":
			case "w":
				f.corruptWrites = true
			default:
				return fmt.Errorf("invalid corrupt bio direction %q (r or w)", p[1])
			}
			v, err := strconv.ParseUint(p[2], 10, 8)
			if err != nil {
				return fmt.Errorf("invalid corrupt bio value %q", p[2])
			}
			f.corruptValue = byte(v)
			fl, err := strconv.ParseUint(p[3], 10, 8)
			if err != nil {
				return fmt.Errorf("invalid corrupt bio flags mask %q", p[3])
			}
			f.corruptFlags = BioFlags(fl)
		default:
			return fmt.Errorf("unrecognised flakey feature requested: %q", feats[i])
		}
	}
	if f.corruptByte != 0 && f.corruptWrites && (f.dropWrites || f.errorWrites) {
		return fmt.Errorf("drop_writes and error_writes are incompatible with corrupt_bio_byte with the WRITE flag set")
	}
	return nil
}

func (f *flakey) isDown() bool {
	elapsed := uint64(f.now().Sub(f.start) / time.Second)
	return elapsed%(f.up+f.down) >= f.up
}

func (f *flakey) corruptMatches(c *Clone) bool {
	return c.Op.HasData() && uint64(c.Len) >= f.corruptByte && c.Flags&f.corruptFlags == f.corruptFlags
}

func (f *flakey) Map(c *Clone) MapResult {
	c.Dev = f.dev
	c.CtxU = 0
	if c.Op != OpFlush {
		c.Sector += f.offset
	}
	if !f.isDown() {
		return MapRemapped
	}
	c.CtxU = flakeySubmittedDown
	if c.Op == OpRead {
		if f.errorReads {
			return MapKill
		}
		return MapRemapped
	}
	switch {
	case f.dropWrites:
		c.Finish(nil)
		return MapSubmitted
	case f.errorWrites:
		return MapKill
	}
	if f.corruptByte != 0 && f.corruptWrites && f.corruptMatches(c) {
		// Corrupt a copy: the caller's buffer stays as it was.
		buf := alignedBuf(int(c.Len))
		copy(buf, c.Buf)
		buf[f.corruptByte-1] = f.corruptValue
		c.Buf, c.BufIndex = buf, -1
	}
	return MapRemapped
}

func (f *flakey) EndIO(c *Clone, err error) (EndIOResult, error) {
	if err == nil && c.CtxU == flakeySubmittedDown && c.Op == OpRead {
		if f.corruptByte != 0 && !f.corruptWrites && f.corruptMatches(c) {
			c.Buf[f.corruptByte-1] = f.corruptValue
		}
		if f.errorReads {
			err = ErrIO
		}
	}
	return EndIODone, err
}

func (f *flakey) Status(t StatusType) string {
	if t == StatusInfo {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %d %d %d", QuoteArg(f.name), f.offset, f.up, f.down)
	if f.noFeatures {
		if f.zeroCount {
			b.WriteString(" 0")
		}
		return b.String()
	}
	n := 0
	if f.dropWrites || f.errorWrites {
		n++
	}
	if f.errorReads {
		n++
	}
	if f.corruptByte != 0 {
		n += 5
	}
	fmt.Fprintf(&b, " %d", n)
	if f.dropWrites {
		b.WriteString(" drop_writes")
	} else if f.errorWrites {
		b.WriteString(" error_writes")
	}
	if f.errorReads {
		b.WriteString(" error_reads")
	}
	if f.corruptByte != 0 {
		dir := "r"
		if f.corruptWrites {
			dir = "w"
		}
		fmt.Fprintf(&b, " corrupt_bio_byte %d %s %d %d", f.corruptByte, dir, f.corruptValue, f.corruptFlags)
	}
	return b.String()
}
