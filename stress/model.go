package stress

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Device size of every slot, and of the region of its backing file the
// identity tables map (the file is twice as large: the shifted table
// maps the other half).
const (
	devSectors = 8192
	devBytes   = devSectors * 512
	blockSize  = 4096
	devBlocks  = devBytes / blockSize
)

// table is one table a slot can load.
type table struct {
	key      string // short name for the history
	text     string // as loaded
	identity bool   // maps the slot's data region one to one
	paths    []string
}

// slot is a device name a worker owns, its backing file (three names
// for it) and the model of what the daemon acknowledged for it.
type slot struct {
	id     int
	name   string
	files  [3]string
	tables []table
	book   *book

	// The rest belongs to the slot's worker while it holds run.world
	// shared, and to the controller while it holds it exclusively.
	dev devState // acknowledged
	// doubt is the other outcome of an operation whose reply did not
	// arrive (nil if none).
	doubt    *devState
	doubtOp  string
	ioSet    *ioSet // attached NBD clients (nil: detached)
	heldOps  int    // operations since the slot was left suspended or without a path
	lastLive string // the live table's key
}

// devState is a device as the model has it.
type devState struct {
	exists    bool
	live      string // table text ("" none)
	inactive  string
	suspended bool
	// marks are the paths an operator failed, by name; they persist
	// across reloads (a mark on a path the live table lacks applies when
	// a table with the path goes live).
	marks    map[string]bool
	checker  checkerSettings
	deferred bool // removal deferred to last close
}

func (s devState) clone() devState {
	c := s
	c.marks = map[string]bool{}
	for k, v := range s.marks {
		if v {
			c.marks[k] = true
		}
	}
	return c
}

func newSlot(id int, dir string) (*slot, error) {
	s := &slot{id: id, name: fmt.Sprintf("t%d", id)}
	for i, suffix := range []string{"a", "b", "c"} {
		s.files[i] = filepath.Join(dir, fmt.Sprintf("s%d.%s", id, suffix))
	}
	f, err := os.Create(s.files[0])
	if err != nil {
		return nil, err
	}
	if err := f.Truncate(2 * devBytes); err != nil {
		f.Close()
		return nil, err
	}
	f.Close()
	for _, l := range s.files[1:] {
		if err := os.Link(s.files[0], l); err != nil {
			return nil, err
		}
	}
	a, b, c := s.files[0], s.files[1], s.files[2]
	n := devSectors
	s.tables = []table{
		{key: "lin", text: fmt.Sprintf("0 %d linear %s 0", n, a), identity: true},
		{key: "lin2", text: fmt.Sprintf("0 %d linear %s 0\n%d %d linear %s %d", n/2, a, n/2, n/2, b, n/2), identity: true},
		{key: "mpq", text: fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 %s 1 %s 1", n, a, b),
			identity: true, paths: []string{a, b}},
		{key: "mp2g", text: fmt.Sprintf("0 %d multipath 0 0 2 1 round-robin 0 1 1 %s 1 service-time 0 2 2 %s 1 1 %s 1 1", n, a, b, c),
			identity: true, paths: []string{a, b, c}},
		{key: "mpbc", text: fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 queue-length 0 2 1 %s 1 %s 1", n, b, c),
			identity: true, paths: []string{b, c}},
		{key: "zero", text: fmt.Sprintf("0 %d zero", n)},
		{key: "err", text: fmt.Sprintf("0 %d error", n/2)},
		{key: "shift", text: fmt.Sprintf("0 %d linear %s %d", n, c, n)},
	}
	s.book = newBook(id)
	s.dev.marks = map[string]bool{}
	return s, nil
}

func (s *slot) tableByText(text string) *table {
	for i := range s.tables {
		if normTable(s.tables[i].text) == normTable(text) {
			return &s.tables[i]
		}
	}
	return nil
}

func (s *slot) key(text string) string {
	if text == "" {
		return "-"
	}
	if t := s.tableByText(text); t != nil {
		return t.key
	}
	return "?"
}

// livePaths are the paths of the live table.
func (s *slot) livePaths(st devState) []string {
	if t := s.tableByText(st.live); t != nil {
		return t.paths
	}
	return nil
}

// normTable is a table as compared: fields single-spaced, one target a
// line; in a multipath line queue_if_no_path is dropped from the
// features and the initial group number is replaced by "*" (both change
// at run time, as the kernel's table output does).
func normTable(text string) string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) > 4 && f[2] == "multipath" {
			f = normMultipath(f)
		}
		out = append(out, strings.Join(f, " "))
	}
	return strings.Join(out, "\n")
}

func normMultipath(f []string) []string {
	nf, err := strconv.Atoi(f[3])
	if err != nil || len(f) < 4+nf+3 {
		return f
	}
	var feats []string
	for _, x := range f[4 : 4+nf] {
		if x != "queue_if_no_path" {
			feats = append(feats, x)
		}
	}
	rest := f[4+nf:]
	nh, err := strconv.Atoi(rest[0])
	if err != nil || len(rest) < 1+nh+2 {
		return f
	}
	out := append([]string{}, f[:3]...)
	out = append(out, strconv.Itoa(len(feats)))
	out = append(out, feats...)
	out = append(out, rest[:1+nh]...)
	rest = rest[1+nh:]
	out = append(out, rest[0], "*")
	return append(out, rest[2:]...)
}

// table reads a device's live or inactive table, its lines joined.
func (r *run) table(ctx context.Context, name string, inactive bool) (string, error) {
	verb := "table "
	if inactive {
		verb = "table --inactive "
	}
	var lines []string
	err := r.call(ctx, verb+name, func(ctx context.Context) (err error) {
		lines, err = r.c.Table(ctx, name, inactive)
		return err
	})
	return strings.Join(lines, "\n"), err
}

// observe reads a device's state from the daemon. ok is false when the
// calls did not get answers (the daemon is gone); err is the first
// call's error otherwise.
func (r *run) observe(ctx context.Context, s *slot) (devState, error) {
	st := devState{marks: map[string]bool{}}
	var info struct {
		suspended, inactive, deferred bool
	}
	err := r.call(ctx, "info "+s.name, func(ctx context.Context) error {
		i, err := r.c.Info(ctx, s.name)
		info.suspended, info.inactive, info.deferred = i.Suspended, i.Inactive, i.DeferredRemove
		return err
	})
	if errnoIs(err, syscall.ENXIO, syscall.ENOENT, syscall.ENODEV) {
		return st, nil
	}
	if err != nil {
		return st, err
	}
	st.exists, st.suspended, st.deferred = true, info.suspended, info.deferred
	if st.live, err = r.table(ctx, s.name, false); err != nil {
		return st, err
	}
	if st.inactive, err = r.table(ctx, s.name, true); err != nil {
		return st, err
	}
	if info.inactive != (st.inactive != "") {
		return st, fmt.Errorf("info says inactive table %v, table --inactive prints %q", info.inactive, st.inactive)
	}
	if err := r.call(ctx, "checker "+s.name, func(ctx context.Context) (err error) {
		st.checker, err = r.c.Checker(ctx, s.name)
		return err
	}); err != nil {
		return st, err
	}
	if err := r.call(ctx, "maps", func(ctx context.Context) error {
		maps, err := r.c.Maps(ctx)
		for _, m := range maps {
			if m.Name != s.name {
				continue
			}
			for _, g := range m.Groups {
				for _, p := range g.Paths {
					if p.Operator {
						st.marks[p.Dev] = true
					}
				}
			}
		}
		return err
	}); err != nil {
		return st, err
	}
	return st, nil
}

// diff compares what the model expects with what was observed; "" if
// they agree. Marks are compared on the paths of the live table.
func (s *slot) diff(want, got devState, live bool) string {
	var d []string
	if want.exists != got.exists {
		return fmt.Sprintf("exists: want %v, got %v", want.exists, got.exists)
	}
	if !want.exists {
		return ""
	}
	if normTable(want.live) != normTable(got.live) {
		d = append(d, fmt.Sprintf("live table: want %s %q, got %q", s.key(want.live), want.live, got.live))
	}
	if normTable(want.inactive) != normTable(got.inactive) {
		d = append(d, fmt.Sprintf("inactive table: want %s %q, got %q", s.key(want.inactive), want.inactive, got.inactive))
	}
	if want.suspended != got.suspended {
		d = append(d, fmt.Sprintf("suspended: want %v, got %v", want.suspended, got.suspended))
	}
	if want.checker != got.checker {
		d = append(d, fmt.Sprintf("checker: want %+v, got %+v", want.checker, got.checker))
	}
	if live && want.deferred != got.deferred {
		d = append(d, fmt.Sprintf("deferred remove: want %v, got %v", want.deferred, got.deferred))
	}
	var wm, gm []string
	for _, p := range s.livePaths(got) {
		if want.marks[p] {
			wm = append(wm, p)
		}
	}
	for p := range got.marks {
		gm = append(gm, p)
	}
	sort.Strings(wm)
	sort.Strings(gm)
	if !slices.Equal(wm, gm) {
		d = append(d, fmt.Sprintf("operator-failed paths: want %v, got %v", s.baseNames(wm), s.baseNames(gm)))
	}
	return strings.Join(d, "; ")
}

func (s *slot) baseNames(ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = filepath.Base(p)
	}
	return out
}

// describe is a one-line summary of a model state for the history.
func (s *slot) describe(st devState) string {
	if !st.exists {
		return "absent"
	}
	var marks []string
	for p, on := range st.marks {
		if on {
			marks = append(marks, filepath.Base(p))
		}
	}
	sort.Strings(marks)
	return fmt.Sprintf("live=%s inactive=%s suspended=%v marks=%v deferred=%v checker=%+v",
		s.key(st.live), s.key(st.inactive), st.suspended, marks, st.deferred, st.checker)
}
