package dm

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MaxSectors is the largest device a table may describe, in sectors:
// every target must end at or before it. It is the kernel's limit
// (dm_table_add_target refuses a target with start+len > LLONG_MAX >>
// SECTOR_SHIFT, "too large device"): a device's size in bytes, which the
// API, the metrics and the NBD export size carry as a signed 64-bit
// integer, then always fits, 2^63-512 bytes at most.
const MaxSectors = math.MaxInt64 >> SectorShift

// checkExtent refuses a target that doesn't fit in MaxSectors.
func checkExtent(start, length uint64) error {
	if start > MaxSectors || length > MaxSectors-start {
		return fmt.Errorf("target at sector %d of %d sectors is too large: a device ends at sector %d at most", start, length, uint64(MaxSectors))
	}
	return nil
}

// TableLine is one line of a table in the kernel's syntax:
// `<start> <len> <type> <args...>`, in 512-byte sectors.
type TableLine struct {
	Start, Len uint64
	Type       string
	Args       []string
}

// String prints the line so that ParseTable reads it back unchanged:
// arguments are escaped with JoinArgs.
func (l TableLine) String() string {
	s := strconv.FormatUint(l.Start, 10) + " " + strconv.FormatUint(l.Len, 10) + " " + l.Type
	if len(l.Args) > 0 {
		s += " " + JoinArgs(l.Args)
	}
	return s
}

// FormatTable prints lines one per line, each ending in a newline.
func FormatTable(lines []TableLine) string {
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.String())
		b.WriteByte('\n')
	}
	return b.String()
}

// ParseTable reads a table: one target per line; blank lines and lines
// whose first non-blank character is '#' are ignored (as dmsetup does).
// It checks the syntax only; Device.Load checks the layout and builds the
// targets.
func ParseTable(text string) ([]TableLine, error) {
	var lines []TableLine
	for n, raw := range strings.Split(text, "\n") {
		s := strings.TrimLeft(raw, " \t\r\v\f")
		if s == "" || s[0] == '#' {
			continue
		}
		l, err := ParseTableLine(s)
		if err != nil {
			return nil, fmt.Errorf("%w: line %d: %w", ErrInvalidTable, n+1, err)
		}
		lines = append(lines, l)
	}
	return lines, nil
}

// ParseTableLine reads one `<start> <len> <type> <args...>` line. As with
// dmsetup, the first three words are split at white space only and the
// rest is split like the kernel's dm_split_args.
func ParseTableLine(s string) (TableLine, error) {
	var f [3]string
	rest := s
	for i := range f {
		rest = strings.TrimLeftFunc(rest, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
		end := strings.IndexFunc(rest, func(r rune) bool { return r < 0x80 && isSpace(byte(r)) })
		if end < 0 {
			end = len(rest)
		}
		f[i], rest = rest[:end], rest[end:]
		if f[i] == "" {
			return TableLine{}, fmt.Errorf("want <start> <length> <type> [args], got %q", s)
		}
	}
	start, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return TableLine{}, fmt.Errorf("bad start sector %q", f[0])
	}
	length, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return TableLine{}, fmt.Errorf("bad length %q", f[1])
	}
	if err := checkExtent(start, length); err != nil {
		return TableLine{}, err
	}
	return TableLine{Start: start, Len: length, Type: f[2], Args: SplitArgs(rest)}, nil
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'
}

// SplitArgs splits s into words like the kernel's dm_split_args: words
// are separated by white space, and a backslash makes the next character
// (white space or backslash included) part of the word. A backslash at the
// very end stays as it is.
func SplitArgs(s string) []string {
	var args []string
	var w []byte
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i >= len(s) {
			return args
		}
		w = w[:0]
		for i < len(s) {
			c := s[i]
			if c == '\\' && i+1 < len(s) {
				w = append(w, s[i+1])
				i += 2
				continue
			}
			if isSpace(c) {
				break
			}
			w = append(w, c)
			i++
		}
		args = append(args, string(w))
	}
}

// QuoteArg escapes white space and backslashes in one argument so that
// SplitArgs returns it whole.
func QuoteArg(a string) string {
	if !strings.ContainsFunc(a, func(r rune) bool { return r < 0x80 && (r == '\\' || isSpace(byte(r))) }) {
		return a
	}
	var b strings.Builder
	for i := 0; i < len(a); i++ {
		if a[i] == '\\' || isSpace(a[i]) {
			b.WriteByte('\\')
		}
		b.WriteByte(a[i])
	}
	return b.String()
}

// JoinArgs is the inverse of SplitArgs for non-empty words.
func JoinArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = QuoteArg(a)
	}
	return strings.Join(q, " ")
}

// table is a constructed, validated table. It is immutable once built; a
// device holds at most two (live and inactive).
type table struct {
	targets []tableTarget
	size    uint64 // sectors
	devs    *tableDevices
	// immutable is the table's immutable target type, if any.
	immutable *TargetType
	// wildcard tables (all `error`) may replace an immutable one.
	wildcard bool
}

// tableTarget is one constructed entry, with what the fast path needs
// found once at construction.
type tableTarget struct {
	begin, len    uint64
	typ           *TargetType
	target        Target
	endio         EndIOer
	maxIO         uint64
	flushClones   int
	discardClones int
}

// find returns the target covering sector (< t.size).
func (t *table) find(sector uint64) *tableTarget {
	ts := t.targets
	lo, hi := 0, len(ts)-1
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if ts[m].begin+ts[m].len <= sector {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return &ts[lo]
}

// checkLayout applies the kernel's rules on where targets sit: the first
// starts at 0, each starts where the previous ended, none is empty, and
// singletons are alone.
func checkLayout(lines []TableLine, types []*TargetType) error {
	var next uint64
	var immutable *TargetType
	for i, l := range lines {
		n := i + 1
		if l.Len == 0 {
			return fmt.Errorf("%w: line %d: zero-length target", ErrInvalidTable, n)
		}
		if l.Start != next {
			if i == 0 {
				return fmt.Errorf("%w: line %d: first target must start at sector 0, not %d", ErrInvalidTable, n, l.Start)
			}
			if l.Start > next {
				return fmt.Errorf("%w: line %d: gap in table: sectors %d-%d are not mapped", ErrInvalidTable, n, next, l.Start-1)
			}
			return fmt.Errorf("%w: line %d: target at %d overlaps the previous one (which ends at %d)", ErrInvalidTable, n, l.Start, next)
		}
		if err := checkExtent(l.Start, l.Len); err != nil {
			return fmt.Errorf("%w: line %d: %w", ErrInvalidTable, n, err)
		}
		next = l.Start + l.Len
		tt := types[i]
		if tt.Singleton && len(lines) > 1 {
			return fmt.Errorf("%w: line %d: target type %s must appear alone in table", ErrInvalidTable, n, tt.Name)
		}
		if tt.Immutable {
			if immutable != nil && immutable != tt {
				return fmt.Errorf("%w: line %d: immutable target type %s cannot be mixed with other target types", ErrInvalidTable, n, tt.Name)
			}
			immutable = tt
		} else if immutable != nil {
			return fmt.Errorf("%w: line %d: immutable target type %s cannot be mixed with other target types", ErrInvalidTable, n, immutable.Name)
		}
	}
	return nil
}

// buildTable looks up and constructs every target of lines for d.
func (d *Device) buildTable(lines []TableLine) (*table, error) {
	types := make([]*TargetType, len(lines))
	for i, l := range lines {
		tt, ok := d.targets.Lookup(l.Type)
		if !ok {
			return nil, fmt.Errorf("%w %q (line %d: %s)", ErrUnknownTarget, l.Type, i+1, l)
		}
		types[i] = tt
	}
	if err := checkLayout(lines, types); err != nil {
		return nil, err
	}
	t := &table{
		targets: make([]tableTarget, 0, len(lines)),
		devs:    &tableDevices{pool: d.pool, owner: d, readOnly: d.flags.Load()&flagReadOnly != 0},
	}
	t.wildcard = len(lines) > 0
	for i, l := range lines {
		typ := types[i]
		ctx := &TargetContext{
			Begin:   l.Start,
			Len:     l.Len,
			Log:     d.log.With().Str("target", typ.Name).Uint64("begin", l.Start).Logger(),
			Devices: t.devs,
			Device:  d,
		}
		tgt, err := typ.New(ctx, l.Args)
		if err == nil && tgt == nil {
			err = fmt.Errorf("constructor returned no target")
		}
		if err != nil {
			t.destroy()
			return nil, fmt.Errorf("%w: line %d (%s): %s: %w", ErrInvalidTable, i+1, l, typ.Name, err)
		}
		e := tableTarget{begin: l.Start, len: l.Len, typ: typ, target: tgt, flushClones: 1, discardClones: 1}
		e.endio, _ = tgt.(EndIOer)
		if lim, ok := tgt.(IOLimiter); ok {
			e.maxIO = lim.MaxIOSectors()
		}
		if cc, ok := tgt.(CloneCounter); ok {
			e.flushClones, e.discardClones = cc.NumFlushClones(), cc.NumDiscardClones()
		}
		t.targets = append(t.targets, e)
		t.size = l.Start + l.Len
		if typ.Immutable {
			t.immutable = typ
		}
		if typ.Name != "error" {
			t.wildcard = false
		}
	}
	return t, nil
}

// eachTarget calls hook on every target of t that implements H, in table
// order. nil-safe.
func eachTarget[H any](t *table, hook func(H)) {
	if t == nil {
		return
	}
	for i := range t.targets {
		if x, ok := t.targets[i].target.(H); ok {
			hook(x)
		}
	}
}

// destroy releases the targets and then the devices they opened. nil-safe.
func (t *table) destroy() {
	if t == nil {
		return
	}
	eachTarget(t, Destroyer.Destroy)
	t.devs.release()
}

// The hooks of all targets, in table order. All are nil-safe.

func (t *table) presuspend()     { eachTarget(t, PreSuspender.PreSuspend) }
func (t *table) presuspendUndo() { eachTarget(t, PreSuspendUndoer.PreSuspendUndo) }
func (t *table) postsuspend()    { eachTarget(t, PostSuspender.PostSuspend) }
func (t *table) resume()         { eachTarget(t, Resumer.Resume) }

func (t *table) preresume() error {
	for i := range t.targets {
		if x, ok := t.targets[i].target.(PreResumer); ok {
			if err := x.PreResume(); err != nil {
				tt := &t.targets[i]
				return fmt.Errorf("dm: %s target at %d: preresume: %w", tt.typ.Name, tt.begin, err)
			}
		}
	}
	return nil
}

// lines prints the table as dmsetup table (StatusTable) or status
// (StatusInfo) does: `<start> <len> <type> <params>`.
func (t *table) lines(st StatusType) []string {
	if t == nil {
		return []string{}
	}
	out := make([]string, len(t.targets))
	for i := range t.targets {
		tt := &t.targets[i]
		s := strconv.FormatUint(tt.begin, 10) + " " + strconv.FormatUint(tt.len, 10) + " " + tt.typ.Name
		if p := tt.target.Status(st); p != "" {
			s += " " + p
		}
		out[i] = s
	}
	return out
}
