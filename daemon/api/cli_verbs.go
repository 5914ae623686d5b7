package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"udm/dm"
	"udm/multipath"
)

// The verbs' options that scripts use: -o json, several device names,
// --target, info -c columns, show ... format with multipathd's
// wildcards, and the verbs rename, deps, ls --tree, remove_all and the
// multipath map operations.

// JSON prints v as indented JSON (the verbs' -o json).
func (c CLI) JSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = c.Out.Write(append(b, '\n'))
	return err
}

// devices is the named devices (in order), or every device if names is
// empty.
func (c CLI) devices(ctx context.Context, names []string) ([]DeviceInfo, error) {
	if len(names) == 0 {
		return c.C.List(ctx)
	}
	out := make([]DeviceInfo, 0, len(names))
	for _, n := range names {
		i, err := c.C.Info(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, i)
	}
	return out, nil
}

// someDevices is devices, having printed dmsetup's "No devices found"
// if there are none.
func (c CLI) someDevices(ctx context.Context, names []string) ([]DeviceInfo, error) {
	devs, err := c.devices(ctx, names)
	if err == nil && len(devs) == 0 {
		fmt.Fprintln(c.Out, "No devices found")
	}
	return devs, err
}

// LsJSON prints the devices as JSON (ls -o json): their info.
func (c CLI) LsJSON(ctx context.Context) error {
	devs, err := c.C.List(ctx)
	if err != nil {
		return err
	}
	return c.JSON(nonNilSlice(devs))
}

// InfoJSON prints the named devices' info (every device's without
// names) as a JSON array.
func (c CLI) InfoJSON(ctx context.Context, names []string) error {
	devs, err := c.devices(ctx, names)
	if err != nil {
		return err
	}
	return c.JSON(nonNilSlice(devs))
}

// InfoNames prints dmsetup info for each named device (every device's
// without names).
func (c CLI) InfoNames(ctx context.Context, names []string) error {
	if len(names) == 0 {
		return c.Info(ctx, "")
	}
	devs, err := c.devices(ctx, names)
	if err != nil {
		return err
	}
	for _, d := range devs {
		fmt.Fprint(c.Out, FormatInfo(d))
	}
	return nil
}

// LinesOpts select what table and status print.
type LinesOpts struct {
	Names    []string // none: every device
	Inactive bool     // table: the inactive table
	Target   string   // only lines of this target type
	JSON     bool
}

// TableLines prints tables (dmsetup table [--target T] [NAME...]).
func (c CLI) TableLines(ctx context.Context, o LinesOpts) error {
	return c.linesOf(ctx, o, func(n string) ([]string, error) { return c.C.Table(ctx, n, o.Inactive) })
}

// StatusLines prints status lines (dmsetup status [--target T] [NAME...]).
func (c CLI) StatusLines(ctx context.Context, o LinesOpts) error {
	return c.linesOf(ctx, o, c.statusOf(ctx))
}

func (c CLI) statusOf(ctx context.Context) func(string) ([]string, error) {
	return func(n string) ([]string, error) { return c.C.Status(ctx, n) }
}

// linesOf prints each device's lines; with several devices (or all)
// each line is prefixed with "NAME: ", as dmsetup does. With a target
// type, other lines are left out, and so are devices without one.
func (c CLI) linesOf(ctx context.Context, o LinesOpts, get func(string) ([]string, error)) error {
	all := len(o.Names) == 0
	names := o.Names
	if all {
		devs, err := c.C.List(ctx)
		if err != nil {
			return err
		}
		for _, d := range devs {
			names = append(names, d.Name)
		}
	}
	out := []DeviceLines{}
	for _, n := range names {
		lines, err := get(n)
		if all && errors.Is(err, syscall.ENXIO) {
			continue // removed meanwhile
		}
		if err != nil {
			return err
		}
		if o.Target != "" {
			lines = OfTarget(lines, o.Target)
			if len(lines) == 0 {
				continue
			}
		}
		out = append(out, DeviceLines{Name: n, Lines: nonNilSlice(lines)})
	}
	if o.JSON {
		return c.JSON(out)
	}
	if all && len(out) == 0 && o.Target == "" {
		fmt.Fprintln(c.Out, "No devices found")
		return nil
	}
	for _, d := range out {
		prefix := ""
		if len(names) > 1 {
			prefix = d.Name
		}
		fmt.Fprint(c.Out, FormatLines(prefix, d.Lines))
	}
	return nil
}

// OfTarget keeps the table or status lines of target type typ.
func OfTarget(lines []string, typ string) []string {
	var out []string
	for _, l := range lines {
		if f := strings.Fields(l); len(f) >= 3 && f[2] == typ {
			out = append(out, l)
		}
	}
	return out
}

func nonNilSlice[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// infoField is a column of info -c.
type infoField struct {
	name, heading string
	number        bool
	value         func(i DeviceInfo) string
}

var infoFields = []infoField{
	{"name", "Name", false, func(i DeviceInfo) string { return i.Name }},
	{"attr", "Stat", false, Attr},
	{"open", "Open", true, func(i DeviceInfo) string { return strconv.Itoa(i.OpenCount) }},
	{"segments", "Targ", true, func(i DeviceInfo) string { return strconv.Itoa(i.Targets) }},
	{"events", "Event", true, func(i DeviceInfo) string { return strconv.FormatUint(uint64(i.EventNr), 10) }},
	{"uuid", "UUID", false, func(i DeviceInfo) string { return i.UUID }},
	{"tables_loaded", "Tables", false, func(i DeviceInfo) string { return tablesPresent(i) }},
	{"suspended", "Suspended", false, func(i DeviceInfo) string { return pick(i.Suspended, "Suspended", "Active") }},
	{"readonly", "ReadOnly", false, func(i DeviceInfo) string { return pick(i.ReadOnly, "Read-only", "Writeable") }},
	{"live_table", "LiveTable", false, func(i DeviceInfo) string { return pick(i.Live, "Live", "-") }},
	{"inactive_table", "InactiveTable", false, func(i DeviceInfo) string { return pick(i.Inactive, "Inactive", "-") }},
	{"deferred_remove", "DeferRemove", false, func(i DeviceInfo) string { return pick(i.DeferredRemove, "Deferred", "-") }},
	{"size", "Size", true, func(i DeviceInfo) string { return strconv.FormatInt(i.Size, 10) }},
}

// DefaultInfoFields are info -c's columns without -o (dmsetup's, less
// major and minor: udm's devices have no device numbers).
const DefaultInfoFields = "name,attr,open,segments,events,uuid"

// infoAliases are the other names dmsetup takes for a field.
var infoAliases = map[string]string{"tables": "tables_loaded", "stat": "attr", "targets": "segments", "event_nr": "events"}

func pick(b bool, yes, no string) string {
	if b {
		return yes
	}
	return no
}

// Attr is dmsetup's attr column: (L)ive table, (I)nactive table,
// (s)uspended, (r)ead-only or (w)ritable.
func Attr(i DeviceInfo) string {
	return pick(i.Live, "L", "-") + pick(i.Inactive, "I", "-") + pick(i.Suspended, "s", "-") + pick(i.ReadOnly, "r", "w")
}

func tablesPresent(i DeviceInfo) string {
	return dm.Info{Live: i.Live, Inactive: i.Inactive}.TablesPresent()
}

// InfoFieldsHelp lists info -c's fields (-o help).
func InfoFieldsHelp() string {
	var b strings.Builder
	b.WriteString("info -c fields (-o FIELD,...; -o +FIELD adds to " + DefaultInfoFields + "):\n")
	for _, f := range infoFields {
		fmt.Fprintf(&b, "  %-16s %s\n", f.name, f.heading)
	}
	return b.String()
}

// ColumnOpts shape info -c.
type ColumnOpts struct {
	Fields     string // comma-separated; "" for the defaults; "+f" adds
	NoHeadings bool
	Separator  string // "" : columns aligned, one space apart
}

// InfoColumns prints dmsetup info -c: one row per device.
func (c CLI) InfoColumns(ctx context.Context, names []string, o ColumnOpts) error {
	fields, err := parseInfoFields(o.Fields)
	if err != nil {
		return err
	}
	devs, err := c.someDevices(ctx, names)
	if err != nil || len(devs) == 0 {
		return err
	}
	rows := make([][]string, 0, len(devs)+1)
	if !o.NoHeadings {
		var h []string
		for _, f := range fields {
			h = append(h, f.heading)
		}
		rows = append(rows, h)
	}
	for _, d := range devs {
		var r []string
		for _, f := range fields {
			r = append(r, f.value(d))
		}
		rows = append(rows, r)
	}
	if o.Separator != "" {
		for _, r := range rows {
			fmt.Fprintln(c.Out, strings.Join(r, o.Separator))
		}
		return nil
	}
	width := columnWidths(rows)
	for _, r := range rows {
		var b strings.Builder
		for i, v := range r {
			if i > 0 {
				b.WriteByte(' ')
			}
			pad := strings.Repeat(" ", width[i]-len(v))
			if fields[i].number {
				b.WriteString(pad + v)
			} else {
				b.WriteString(v + pad)
			}
		}
		fmt.Fprintln(c.Out, strings.TrimRight(b.String(), " "))
	}
	return nil
}

func parseInfoFields(spec string) ([]infoField, error) {
	if spec == "" {
		spec = DefaultInfoFields
	} else if strings.HasPrefix(spec, "+") {
		spec = DefaultInfoFields + "," + spec[1:]
	}
	var out []infoField
	for _, n := range strings.Split(spec, ",") {
		n = strings.TrimSpace(n)
		if a, ok := infoAliases[n]; ok {
			n = a
		}
		found := false
		for _, f := range infoFields {
			if f.name == n {
				out, found = append(out, f), true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("info: unknown field %q (info -c -o help lists them)", n)
		}
	}
	return out, nil
}

// ShowJSON prints multipathd's views as JSON: show maps and show
// topology as MapsReply, show paths as PathsReply.
func (c CLI) ShowJSON(ctx context.Context, view string) error {
	maps, err := c.C.Maps(ctx)
	if err != nil {
		return err
	}
	if view == "paths" {
		return c.JSON(PathsReply{Paths: nonNilSlice(multipath.Paths(maps))})
	}
	return c.JSON(MapsReply{Maps: nonNilSlice(maps)})
}

// wildcard is one of multipathd's show ... format wildcards.
type wildcard[T any] struct {
	c       byte
	heading string
	value   func(T) string
}

// pathWildcards are the path wildcards udm has data for (multipathd's
// print.c names and letters).
var pathWildcards = []wildcard[multipath.PathStatus]{
	{'d', "dev", func(p multipath.PathStatus) string { return p.Dev }},
	{'m', "multipath", func(p multipath.PathStatus) string { return p.Map }},
	{'t', "dm_st", func(p multipath.PathStatus) string { return p.DMState }},
	{'T', "chk_st", func(p multipath.PathStatus) string { return pick(p.Checker == "", "undef", p.Checker) }},
	{'o', "dev_st", func(p multipath.PathStatus) string { return pick(p.Checker == "gone", "offline", "running") }},
	{'C', "next_check", func(p multipath.PathStatus) string {
		return pick(p.Checker == "", "orphan", p.NextCheck.Round(1e6).String())
	}},
	{'0', "failures", func(p multipath.PathStatus) string { return strconv.FormatUint(uint64(p.FailCount), 10) }},
}

// mapWildcards are the map wildcards udm has data for.
var mapWildcards = []wildcard[multipath.MapStatus]{
	{'n', "name", func(m multipath.MapStatus) string { return m.Name }},
	{'w', "uuid", func(m multipath.MapStatus) string { return pick(m.UUID == "", "-", m.UUID) }},
	{'F', "failback", func(m multipath.MapStatus) string { return pick(m.Failback == "", "-", m.Failback) }},
	{'Q', "queueing", func(m multipath.MapStatus) string { return pick(m.QueueIfNoPath, "on", "off") }},
	{'N', "paths", func(m multipath.MapStatus) string {
		return strconv.Itoa(len(multipath.Paths([]multipath.MapStatus{m})))
	}},
	{'t', "dm-st", func(m multipath.MapStatus) string { return pick(m.Suspended, "suspend", "active") }},
	{'S', "size", func(m multipath.MapStatus) string { return multipath.SizeString(m.Size) }},
	{'f', "features", func(m multipath.MapStatus) string { return m.Features }},
	{'h', "hwhandler", func(m multipath.MapStatus) string { return m.HWHandler }},
	{'0', "path_faults", func(m multipath.MapStatus) string {
		n := uint64(0)
		for _, p := range multipath.Paths([]multipath.MapStatus{m}) {
			n += uint64(p.FailCount)
		}
		return strconv.FormatUint(n, 10)
	}},
}

// ShowWildcards lists the format wildcards (multipathd show wildcards).
func (c CLI) ShowWildcards() error {
	var b strings.Builder
	b.WriteString("multipath format wildcards:\n")
	for _, w := range mapWildcards {
		fmt.Fprintf(&b, "%%%c  %s\n", w.c, w.heading)
	}
	b.WriteString("\npath format wildcards:\n")
	for _, w := range pathWildcards {
		fmt.Fprintf(&b, "%%%c  %s\n", w.c, w.heading)
	}
	_, err := fmt.Fprint(c.Out, b.String())
	return err
}

// ShowFormat prints show paths|maps format FMT: a heading line and one
// line per path or map, each wildcard's column as wide as its widest
// value, as multipathd does.
func (c CLI) ShowFormat(ctx context.Context, view, format string) error {
	maps, err := c.C.Maps(ctx)
	if err != nil {
		return err
	}
	if view == "paths" {
		return writeFormat(c, format, pathWildcards, multipath.Paths(maps))
	}
	return writeFormat(c, format, mapWildcards, maps)
}

func writeFormat[T any](c CLI, format string, wcs []wildcard[T], items []T) error {
	type part struct {
		lit string
		wc  *wildcard[T]
	}
	var parts []part
	var lit strings.Builder
	for i := 0; i < len(format); i++ {
		if format[i] != '%' || i+1 == len(format) {
			lit.WriteByte(format[i])
			continue
		}
		i++
		if format[i] == '%' {
			lit.WriteByte('%')
			continue
		}
		var w *wildcard[T]
		for j := range wcs {
			if wcs[j].c == format[i] {
				w = &wcs[j]
			}
		}
		if w == nil {
			return fmt.Errorf("show: unknown wildcard %%%c (show wildcards lists them)", format[i])
		}
		parts = append(parts, part{lit: lit.String()}, part{wc: w})
		lit.Reset()
	}
	parts = append(parts, part{lit: lit.String()})
	rows := [][]string{}
	var head []string
	for _, p := range parts {
		if p.wc != nil {
			head = append(head, p.wc.heading)
		}
	}
	rows = append(rows, head)
	for _, it := range items {
		var r []string
		for _, p := range parts {
			if p.wc != nil {
				r = append(r, p.wc.value(it))
			}
		}
		rows = append(rows, r)
	}
	width := columnWidths(rows)
	for _, r := range rows {
		var b strings.Builder
		k := 0
		for _, p := range parts {
			if p.wc == nil {
				b.WriteString(p.lit)
				continue
			}
			b.WriteString(r[k] + strings.Repeat(" ", width[k]-len(r[k])))
			k++
		}
		fmt.Fprintln(c.Out, strings.TrimRight(b.String(), " "))
	}
	return nil
}

// CheckerJSON prints a device's checker settings (after setting those
// given as KEY=VALUE) as JSON.
func (c CLI) CheckerJSON(ctx context.Context, name string, set []string) error {
	s, err := c.setChecker(ctx, name, set)
	if err != nil {
		return err
	}
	return c.JSON(s)
}

// Rename renames a device (dmsetup rename).
func (c CLI) Rename(ctx context.Context, name, newName string) error {
	_, err := c.C.Rename(ctx, name, newName)
	return err
}

// Deps prints what devices' live tables opened, as dmsetup deps -o
// devname does: `N dependencies  : (dev) ...`, prefixed with "NAME: "
// when listing several devices.
func (c CLI) Deps(ctx context.Context, names []string, asJSON bool) error {
	all := len(names) == 0
	devs, err := c.devices(ctx, names)
	if err != nil {
		return err
	}
	out := []DepsReply{}
	for _, d := range devs {
		deps, err := c.C.Deps(ctx, d.Name)
		if all && errors.Is(err, syscall.ENXIO) {
			continue
		}
		if err != nil {
			return err
		}
		out = append(out, DepsReply{Name: d.Name, Deps: nonNilSlice(deps)})
	}
	if asJSON {
		return c.JSON(out)
	}
	if all && len(out) == 0 {
		fmt.Fprintln(c.Out, "No devices found")
	}
	for _, d := range out {
		var b strings.Builder
		if len(devs) > 1 {
			b.WriteString(d.Name + ": ")
		}
		fmt.Fprintf(&b, "%d dependencies\t:", len(d.Deps))
		for _, dep := range d.Deps {
			fmt.Fprintf(&b, " (%s)", dep)
		}
		fmt.Fprintln(c.Out, b.String())
	}
	return nil
}

// LsTree prints the devices as a tree (dmsetup ls --tree): each device
// that no other device's table uses, with what it stacks on below it.
func (c CLI) LsTree(ctx context.Context) error {
	devs, err := c.someDevices(ctx, nil)
	if err != nil || len(devs) == 0 {
		return err
	}
	deps := map[string][]string{}
	used := map[string]bool{}
	for _, d := range devs {
		ds, err := c.C.Deps(ctx, d.Name)
		if errors.Is(err, syscall.ENXIO) {
			continue
		}
		if err != nil {
			return err
		}
		deps[d.Name] = ds
		for _, x := range ds {
			if n, ok := strings.CutPrefix(x, "/dev/mapper/"); ok {
				used[n] = true
			}
		}
	}
	var b strings.Builder
	var walk func(name, indent string, depth int)
	walk = func(name, indent string, depth int) {
		ds := deps[name]
		for i, x := range ds {
			branch, more := " ├─", " │ "
			if i == len(ds)-1 {
				branch, more = " └─", "   "
			}
			n, mapped := strings.CutPrefix(x, "/dev/mapper/")
			_, known := deps[n]
			if mapped && known {
				b.WriteString(indent + branch + n + "\n")
				if depth < 64 {
					walk(n, indent+more, depth+1)
				}
				continue
			}
			b.WriteString(indent + branch + x + "\n")
		}
	}
	names := make([]string, 0, len(deps))
	for n := range deps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if used[n] {
			continue
		}
		b.WriteString(n + "\n")
		walk(n, "", 0)
	}
	_, err = fmt.Fprint(c.Out, b.String())
	return err
}

// RemoveAll removes every device not open (all of them with force); it
// fails, naming them, if some are left.
func (c CLI) RemoveAll(ctx context.Context, force bool) error {
	rep, err := c.C.RemoveAll(ctx, force)
	if err != nil {
		return err
	}
	if len(rep.Left) > 0 {
		return fmt.Errorf("remove_all: %d device(s) left, open: %s (remove_all --force removes them)", len(rep.Left), strings.Join(rep.Left, ", "))
	}
	return nil
}

// AddPath adds a path to a multipath map (multipathd add path).
func (c CLI) AddPath(ctx context.Context, mapName, path string, group int) error {
	return c.C.AddPath(ctx, mapName, path, group)
}

// DelPath takes a path out of a map (multipathd del path), or out of
// every map that has it when mapName is empty.
func (c CLI) DelPath(ctx context.Context, mapName, path string) error {
	if mapName != "" {
		return c.C.DelPath(ctx, mapName, path)
	}
	maps, err := c.C.Maps(ctx)
	if err != nil {
		return err
	}
	n := 0
	for _, m := range maps {
		for _, p := range multipath.Paths([]multipath.MapStatus{m}) {
			if p.Dev == path {
				if err := c.C.DelPath(ctx, m.Name, path); err != nil {
					return err
				}
				n++
				break
			}
		}
	}
	if n == 0 {
		return fmt.Errorf("no multipath map has a path %q", path)
	}
	return nil
}

// ResizeMap gives a map the size of its smallest path (multipathd resize
// map).
func (c CLI) ResizeMap(ctx context.Context, mapName string) error {
	_, err := c.C.ResizeMap(ctx, mapName)
	return err
}

// SwitchGroup makes group the map's next group (multipathd switch group:
// the target's switch_group message).
func (c CLI) SwitchGroup(ctx context.Context, mapName, group string) error {
	if n, err := strconv.ParseUint(group, 10, 32); err != nil || n == 0 {
		return fmt.Errorf("switch group: bad group %q (a number from 1)", group)
	}
	_, err := c.C.Message(ctx, mapName, 0, []string{"switch_group", group})
	return err
}

// Queueing turns queue_if_no_path off (disable queueing) or on (restore
// queueing) in a map, or in every map when mapName is empty.
func (c CLI) Queueing(ctx context.Context, mapName string, on bool) error {
	msg := pick(on, "queue_if_no_path", "fail_if_no_path")
	names := []string{mapName}
	if mapName == "" {
		maps, err := c.C.Maps(ctx)
		if err != nil {
			return err
		}
		names = names[:0]
		for _, m := range maps {
			names = append(names, m.Name)
		}
	}
	for _, n := range names {
		if _, err := c.C.Message(ctx, n, 0, []string{msg}); err != nil {
			return fmt.Errorf("%s: %w", n, err)
		}
	}
	return nil
}

// DaemonVersion is udm version's daemon line (dmsetup version's driver
// version): the daemon's build and API version, or why there is none.
func (c CLI) DaemonVersion(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	i, err := c.C.Daemon(ctx)
	if err != nil {
		return fmt.Sprintf("not running (no answer on %s)", c.C.Socket())
	}
	v := i.Version
	if v == "" {
		v = "(unknown)"
	}
	return fmt.Sprintf("udm %s, api %s, pid %d, on %s", v, strings.TrimPrefix(APIVersion, "/"), i.PID, c.C.Socket())
}

// columnWidths returns the widest value of each column of rows.
func columnWidths(rows [][]string) []int {
	var width []int
	for _, r := range rows {
		for i, v := range r {
			if i == len(width) {
				width = append(width, 0)
			}
			width[i] = max(width[i], len(v))
		}
	}
	return width
}
