package multipath

import (
	"fmt"
	"strconv"
	"strings"

	"udm/dm"
)

// QueueMode is the table's queue_mode feature. udm is bio-based whatever
// it says; the value is kept so that the table prints back as loaded.
type QueueMode uint8

const (
	// QueueModeRequest is the kernel's default (rq, mq, or none given).
	QueueModeRequest QueueMode = iota
	// QueueModeBio is `queue_mode bio`.
	QueueModeBio
)

// pgInitDelayDefault marks pg_init_delay_msecs as not given (the kernel's
// DM_PG_INIT_DELAY_DEFAULT).
const pgInitDelayDefault = -1

// Spec is a parsed multipath table: the arguments after `multipath`.
//
//	<#features> [features] <#hw_handler args> [hw_handler [args]] <#pgs> <initial pg>
//	  {<selector> <#selector args> [args] <#paths> <#per-path args> {<dev> [path args]}}
//
// ParseSpec reads it with the kernel's rules and limits; Format prints it
// as the kernel's STATUSTYPE_TABLE does, which ParseSpec reads back to the
// same Spec.
type Spec struct {
	QueueIfNoPath           bool
	RetainAttachedHWHandler bool
	PgInitRetries           uint32 // 0: not given
	PgInitDelayMsecs        int64  // -1: not given
	QueueMode               QueueMode
	// HWHandler is the hardware handler's name ("" for none). udm has no
	// hardware handlers: it is kept to print the table back, and ignored.
	// Bio mode drops it, as the kernel does.
	HWHandler     string
	HWHandlerArgs []string
	// InitialPG is the 1-based group to use first (0 with no groups). As
	// in the kernel, a number past the last group is accepted and means
	// "the first usable group".
	InitialPG uint32
	Groups    []GroupSpec
	// Warnings are what the kernel would log while accepting the table.
	Warnings []string
}

// GroupSpec is one priority group.
type GroupSpec struct {
	Selector     string // path selector name
	SelectorArgs []string
	// PathArgs is the number of arguments after each path's device.
	PathArgs int
	Paths    []PathSpec

	kind selKind
	// Historical-service-time selector arguments.
	baseWeight, threshold uint32
}

// PathSpec is one path of a group.
type PathSpec struct {
	Dev  string
	Args []string
	// Repeat is the repeat_count (forced to 1 except for
	// historical-service-time).
	Repeat uint32
	// RelThroughput is service-time's relative throughput (0..100,
	// default 1; 0 means "use only if no other path").
	RelThroughput uint32
}

// selKind is a path selector.
type selKind uint8

const (
	selRoundRobin selKind = iota
	selQueueLength
	selServiceTime
	selHistorical
)

// selectorInfo is what the kernel's struct path_selector_type says about
// a selector: its name and how many per-path arguments its table and info
// status print.
type selectorInfo struct {
	name                string
	tableArgs, infoArgs int
}

var selectors = [...]selectorInfo{
	selRoundRobin:  {"round-robin", 1, 0},
	selQueueLength: {"queue-length", 1, 1},
	selServiceTime: {"service-time", 2, 2},
	selHistorical:  {"historical-service-time", 1, 3},
}

// Selectors lists the path selectors udm implements.
func Selectors() []string {
	out := make([]string, len(selectors))
	for i, s := range selectors {
		out[i] = s.name
	}
	return out
}

func selectorByName(name string) (selKind, bool) {
	for i, s := range selectors {
		if s.name == name {
			return selKind(i), true
		}
	}
	return 0, false
}

// Limits from the kernel's dm-mpath.c and the selectors.
const (
	maxFeatureArgs      = 8
	maxHWHandlerArgs    = 1024
	maxGroups           = 1024
	maxSelectorArgs     = 1024
	maxPaths            = 1024
	maxPathArgs         = 1024
	maxPgInitRetries    = 50
	maxPgInitDelayMsecs = 60000
	maxRelThroughput    = 100
	hstFixedShift       = 10
	hstFixed1           = 1 << hstFixedShift
	hstWeightDefault    = 984 // the kernel's HST_WEIGHT_DEFAULT
)

// argReader walks table arguments like the kernel's dm_arg_set.
type argReader struct {
	args []string
}

func (r *argReader) left() int { return len(r.args) }

func (r *argReader) shift() (string, bool) {
	if len(r.args) == 0 {
		return "", false
	}
	a := r.args[0]
	r.args = r.args[1:]
	return a, true
}

// uint reads a number in [lo, hi] (dm_read_arg); msg is the error.
func (r *argReader) uint(lo, hi uint64, msg string) (uint64, error) {
	a, ok := r.shift()
	if !ok {
		return 0, fmt.Errorf("%s", msg)
	}
	v, err := strconv.ParseUint(a, 10, 32)
	if err != nil || v < lo || v > hi {
		return 0, fmt.Errorf("%s", msg)
	}
	return v, nil
}

// group reads a count in [lo, hi] and checks that many arguments follow
// (dm_read_arg_group).
func (r *argReader) group(lo, hi uint64, msg string) (int, error) {
	n, err := r.uint(lo, hi, msg)
	if err != nil {
		return 0, err
	}
	if uint64(r.left()) < n {
		return 0, fmt.Errorf("insufficient arguments")
	}
	return int(n), nil
}

func (r *argReader) take(n int) []string {
	out := append([]string(nil), r.args[:n]...)
	r.args = r.args[n:]
	return out
}

// ParseSpec parses a multipath table's arguments. Errors wrap
// ErrBadTable (EINVAL) with the kernel's message.
func ParseSpec(args []string) (*Spec, error) {
	s, err := parseSpec(args)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadTable, err)
	}
	return s, nil
}

func parseSpec(args []string) (*Spec, error) {
	s := &Spec{PgInitDelayMsecs: pgInitDelayDefault}
	r := &argReader{args: args}
	if err := s.parseFeatures(r); err != nil {
		return nil, err
	}
	if s.QueueMode == QueueModeBio {
		// The kernel's alloc_multipath_stage2: bio-based multipath only
		// ever uses a handler already attached.
		s.RetainAttachedHWHandler = true
	}
	if err := s.parseHWHandler(r); err != nil {
		return nil, err
	}
	npg, err := r.uint(0, maxGroups, "invalid number of priority groups")
	if err != nil {
		return nil, err
	}
	initial, err := r.uint(0, maxGroups, "invalid initial priority group")
	if err != nil {
		return nil, err
	}
	if (npg == 0) != (initial == 0) {
		return nil, fmt.Errorf("invalid initial priority group")
	}
	s.InitialPG = uint32(initial)
	for r.left() > 0 {
		g, err := s.parseGroup(r)
		if err != nil {
			return nil, err
		}
		s.Groups = append(s.Groups, g)
	}
	if uint64(len(s.Groups)) != npg {
		return nil, fmt.Errorf("priority group count mismatch")
	}
	return s, nil
}

func (s *Spec) parseFeatures(r *argReader) error {
	n, err := r.group(0, maxFeatureArgs, "invalid number of feature args")
	if err != nil {
		return err
	}
	for n > 0 {
		name, _ := r.shift()
		n--
		switch strings.ToLower(name) {
		case "queue_if_no_path":
			s.QueueIfNoPath = true
			continue
		case "retain_attached_hw_handler":
			s.RetainAttachedHWHandler = true
			continue
		}
		if n >= 1 {
			switch strings.ToLower(name) {
			case "pg_init_retries":
				v, err := r.uint(1, maxPgInitRetries, "pg_init_retries must be between 1 and 50")
				if err != nil {
					return err
				}
				s.PgInitRetries = uint32(v)
				n--
				continue
			case "pg_init_delay_msecs":
				v, err := r.uint(0, maxPgInitDelayMsecs, "pg_init_delay_msecs must be between 0 and 60000")
				if err != nil {
					return err
				}
				s.PgInitDelayMsecs = int64(v)
				n--
				continue
			case "queue_mode":
				m, _ := r.shift()
				n--
				switch strings.ToLower(m) {
				case "bio":
					s.QueueMode = QueueModeBio
				case "rq", "mq":
					s.QueueMode = QueueModeRequest
				default:
					return fmt.Errorf("unknown 'queue_mode' requested: %q", m)
				}
				continue
			}
		}
		return fmt.Errorf("unrecognised multipath feature request %q", name)
	}
	return nil
}

func (s *Spec) parseHWHandler(r *argReader) error {
	n, err := r.group(0, maxHWHandlerArgs, "invalid number of hardware handler args")
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	hw := r.take(n)
	if s.QueueMode == QueueModeBio {
		s.Warnings = append(s.Warnings, fmt.Sprintf("bio-based multipath doesn't allow hardware handler args: %q dropped", hw))
		return nil
	}
	s.HWHandler, s.HWHandlerArgs = hw[0], hw[1:]
	s.Warnings = append(s.Warnings, fmt.Sprintf("hardware handler %q is not supported and is ignored", hw[0]))
	return nil
}

func (s *Spec) parseGroup(r *argReader) (GroupSpec, error) {
	var g GroupSpec
	name, ok := r.shift()
	if !ok {
		return g, fmt.Errorf("unknown path selector type")
	}
	kind, ok := selectorByName(name)
	if !ok {
		return g, fmt.Errorf("unknown path selector type %q", name)
	}
	g.Selector, g.kind = name, kind
	nsel, err := r.group(0, maxSelectorArgs, "invalid number of path selector args")
	if err != nil {
		return g, err
	}
	g.SelectorArgs = r.take(nsel)
	if err := g.parseSelectorArgs(); err != nil {
		return g, err
	}
	npaths, err := r.uint(1, maxPaths, "invalid number of paths")
	if err != nil {
		return g, err
	}
	nargs, err := r.uint(0, maxPathArgs, "invalid number of selector args")
	if err != nil {
		return g, err
	}
	g.PathArgs = int(nargs)
	for i := uint64(0); i < npaths; i++ {
		if r.left() < 1+g.PathArgs {
			return g, fmt.Errorf("not enough path parameters")
		}
		a := r.take(1 + g.PathArgs)
		p := PathSpec{Dev: a[0], Args: a[1:]}
		if p.Dev == "" {
			return g, fmt.Errorf("error getting device %q", p.Dev)
		}
		warn, err := g.parsePathArgs(&p)
		if err != nil {
			return g, err
		}
		if warn != "" {
			s.Warnings = append(s.Warnings, warn)
		}
		g.Paths = append(g.Paths, p)
	}
	return g, nil
}

// parseSelectorArgs checks the selector's own arguments. round-robin,
// queue-length and service-time ignore theirs, as in the kernel.
func (g *GroupSpec) parseSelectorArgs() error {
	if g.kind != selHistorical {
		return nil
	}
	g.baseWeight = hstWeightDefault
	a := g.SelectorArgs
	if len(a) > 2 {
		return fmt.Errorf("historical-service-time ps: incorrect number of arguments")
	}
	if len(a) > 0 {
		v, err := strconv.ParseUint(a[0], 10, 32)
		if err != nil || v >= hstFixed1 {
			return fmt.Errorf("historical-service-time ps: invalid base weight %q", a[0])
		}
		g.baseWeight = uint32(v)
	}
	if len(a) > 1 {
		v, err := strconv.ParseUint(a[1], 10, 32)
		if err != nil {
			return fmt.Errorf("historical-service-time ps: invalid threshold multiplier %q", a[1])
		}
		g.threshold = uint32(v)
	}
	return nil
}

// parsePathArgs reads a path's selector arguments ([repeat_count
// [relative_throughput]]) and returns a warning for a repeat_count the
// selector forces to 1.
func (g *GroupSpec) parsePathArgs(p *PathSpec) (string, error) {
	name := selectors[g.kind].name
	p.Repeat, p.RelThroughput = 1, 1
	maxArgs := 1
	if g.kind == selServiceTime {
		maxArgs = 2
	}
	if len(p.Args) > maxArgs {
		return "", fmt.Errorf("%s ps: incorrect number of arguments", name)
	}
	if len(p.Args) > 0 {
		v, err := strconv.ParseUint(p.Args[0], 10, 32)
		if err != nil {
			return "", fmt.Errorf("%s ps: invalid repeat count %q", name, p.Args[0])
		}
		p.Repeat = uint32(v)
	}
	if len(p.Args) > 1 {
		v, err := strconv.ParseUint(p.Args[1], 10, 32)
		if err != nil || v > maxRelThroughput {
			return "", fmt.Errorf("%s ps: invalid relative_throughput value %q", name, p.Args[1])
		}
		p.RelThroughput = uint32(v)
	}
	if p.Repeat > 1 && g.kind != selHistorical {
		p.Repeat = 1
		return fmt.Sprintf("%s ps: path %s: repeat_count > 1 is deprecated, using 1 instead", name, p.Dev), nil
	}
	return "", nil
}

// NumPaths is the number of paths in all groups.
func (s *Spec) NumPaths() int {
	n := 0
	for _, g := range s.Groups {
		n += len(g.Paths)
	}
	return n
}

// Format prints the spec as the kernel's table status does, with
// queue_if_no_path as given (the target passes its current value). Like
// the kernel it ends with a space.
func (s *Spec) Format(queueIfNoPath bool) string {
	var b strings.Builder
	s.formatHead(&b, queueIfNoPath)
	b.WriteString(strconv.Itoa(len(s.Groups)))
	b.WriteByte(' ')
	b.WriteString(strconv.FormatUint(uint64(s.InitialPG), 10))
	b.WriteByte(' ')
	for i := range s.Groups {
		g := &s.Groups[i]
		b.WriteString(g.Selector)
		b.WriteByte(' ')
		g.formatSelector(&b)
		fmt.Fprintf(&b, "%d %d ", len(g.Paths), selectors[g.kind].tableArgs)
		for j := range g.Paths {
			p := &g.Paths[j]
			b.WriteString(dm.QuoteArg(p.Dev))
			b.WriteByte(' ')
			switch g.kind {
			case selServiceTime:
				fmt.Fprintf(&b, "%d %d ", p.Repeat, p.RelThroughput)
			case selHistorical:
				b.WriteString("0 ")
			default:
				fmt.Fprintf(&b, "%d ", p.Repeat)
			}
		}
	}
	return b.String()
}

// formatHead prints features and the hardware handler (table form).
func (s *Spec) formatHead(b *strings.Builder, queueIfNoPath bool) {
	n := 0
	if queueIfNoPath {
		n++
	}
	if s.PgInitRetries > 0 {
		n += 2
	}
	if s.PgInitDelayMsecs != pgInitDelayDefault {
		n += 2
	}
	if s.RetainAttachedHWHandler {
		n++
	}
	if s.QueueMode == QueueModeBio {
		n += 2
	}
	fmt.Fprintf(b, "%d ", n)
	if queueIfNoPath {
		b.WriteString("queue_if_no_path ")
	}
	if s.PgInitRetries > 0 {
		fmt.Fprintf(b, "pg_init_retries %d ", s.PgInitRetries)
	}
	if s.PgInitDelayMsecs != pgInitDelayDefault {
		fmt.Fprintf(b, "pg_init_delay_msecs %d ", s.PgInitDelayMsecs)
	}
	if s.RetainAttachedHWHandler {
		b.WriteString("retain_attached_hw_handler ")
	}
	if s.QueueMode == QueueModeBio {
		b.WriteString("queue_mode bio ")
	}
	if s.HWHandler == "" {
		b.WriteString("0 ")
	} else {
		fmt.Fprintf(b, "1 %s ", dm.QuoteArg(s.HWHandler))
	}
}

// formatSelector prints the selector's own status arguments (the same
// in both status forms).
func (g *GroupSpec) formatSelector(b *strings.Builder) {
	if g.kind == selHistorical {
		fmt.Fprintf(b, "2 %d %d ", g.baseWeight, g.threshold)
		return
	}
	b.WriteString("0 ")
}

// Features is the table's feature list as multipathd shows it
// ("1 queue_if_no_path").
func (s *Spec) Features(queueIfNoPath bool) string {
	var b strings.Builder
	s.formatHead(&b, queueIfNoPath)
	h := strings.TrimSpace(b.String())
	// Drop the hardware handler part.
	if s.HWHandler == "" {
		return strings.TrimSuffix(h, " 0")
	}
	return strings.TrimSuffix(h, " 1 "+dm.QuoteArg(s.HWHandler))
}
