package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"udm/daemon/api"
	"udm/dm"
	"udm/multipath"
)

// The configuration file (udm serve --config): what multipath.conf is to
// multipathd. It is TOML, with multipath.conf's names for its settings:
//
//	[defaults]                       # every multipath map's, unless it says otherwise
//	path_selector = "service-time 0"
//	path_grouping_policy = "failover" # failover, multibus, group_by_prio
//	features = "0"                   # "1 queue_if_no_path" = no_path_retry "queue"
//	prio = "const"                   # const, weightedpath
//	prio_args = ""                   # weightedpath: "devname REGEX PRIO [REGEX PRIO]..."
//	no_path_retry = "fail"           # fail, queue, or a number of checks
//	failback = "manual"              # manual, immediate, followover, or seconds
//	polling_interval = "5s"          # a duration, or a number of seconds; "off"
//	max_polling_interval = "20s"
//	check_timeout = "2s"
//	io_deadline = "2s"
//
//	[blacklist]
//	paths = ["/dev/sdz", "nbd://10.0.0.9:10809/*"]  # globs (filepath.Match)
//
//	[[multipaths]]                   # one per map
//	alias = "mpa"
//	paths = ["/dev/sdb", "nbd://10.0.0.2:10809/disk"]
//	path_grouping_policy = "multibus" # any setting of [defaults]
//
//	[[devices]]                      # a device with a table of its own
//	alias = "lin"
//	table = "0 2048 linear /dev/sdc 0"
//
// A key the file doesn't know is an error with its line, as is a value
// that doesn't parse; a file with an error changes nothing.

// DefaultConfigFile is read at start when no --config is given, if it
// exists.
const DefaultConfigFile = "/etc/udm/udm.conf"

type rawConfig struct {
	Defaults   rawSettings    `toml:"defaults"`
	Blacklist  rawBlacklist   `toml:"blacklist"`
	Multipaths []rawMultipath `toml:"multipaths"`
	Devices    []rawDevice    `toml:"devices"`
}

type rawBlacklist struct {
	Paths []string `toml:"paths"`
}

type rawMultipath struct {
	Alias string   `toml:"alias"`
	Paths []string `toml:"paths"`
	rawSettings
}

type rawDevice struct {
	Alias string `toml:"alias"`
	Table string `toml:"table"`
}

// rawSettings are a section's settings as written: strings, or numbers
// where multipath.conf writes numbers (seconds, counts).
type rawSettings struct {
	PathSelector       any `toml:"path_selector"`
	PathGroupingPolicy any `toml:"path_grouping_policy"`
	Features           any `toml:"features"`
	Prio               any `toml:"prio"`
	PrioArgs           any `toml:"prio_args"`
	NoPathRetry        any `toml:"no_path_retry"`
	Failback           any `toml:"failback"`
	PollingInterval    any `toml:"polling_interval"`
	MaxPollingInterval any `toml:"max_polling_interval"`
	CheckTimeout       any `toml:"check_timeout"`
	IODeadline         any `toml:"io_deadline"`
}

// valueKind says what a setting may be written as.
type valueKind uint8

const (
	kindString   valueKind = iota
	kindCount              // a string, or a number written as is
	kindDuration           // a string, or a number of seconds
)

// settingField is one setting: its name, how it may be written, where it
// is in a rawSettings and in an api.MapSettings.
type settingField struct {
	key  string
	kind valueKind
	raw  func(*rawSettings) any
	eff  func(*api.MapSettings) *string
}

var settingFields = []settingField{
	{"path_selector", kindString, func(r *rawSettings) any { return r.PathSelector }, func(s *api.MapSettings) *string { return &s.PathSelector }},
	{"path_grouping_policy", kindString, func(r *rawSettings) any { return r.PathGroupingPolicy }, func(s *api.MapSettings) *string { return &s.PathGroupingPolicy }},
	{"features", kindString, func(r *rawSettings) any { return r.Features }, func(s *api.MapSettings) *string { return &s.Features }},
	{"prio", kindString, func(r *rawSettings) any { return r.Prio }, func(s *api.MapSettings) *string { return &s.Prio }},
	{"prio_args", kindString, func(r *rawSettings) any { return r.PrioArgs }, func(s *api.MapSettings) *string { return &s.PrioArgs }},
	{"no_path_retry", kindCount, func(r *rawSettings) any { return r.NoPathRetry }, func(s *api.MapSettings) *string { return &s.NoPathRetry }},
	{"failback", kindCount, func(r *rawSettings) any { return r.Failback }, func(s *api.MapSettings) *string { return &s.Failback }},
	{"polling_interval", kindDuration, func(r *rawSettings) any { return r.PollingInterval }, func(s *api.MapSettings) *string { return &s.PollingInterval }},
	{"max_polling_interval", kindDuration, func(r *rawSettings) any { return r.MaxPollingInterval }, func(s *api.MapSettings) *string { return &s.MaxPollingInterval }},
	{"check_timeout", kindDuration, func(r *rawSettings) any { return r.CheckTimeout }, func(s *api.MapSettings) *string { return &s.CheckTimeout }},
	{"io_deadline", kindDuration, func(r *rawSettings) any { return r.IODeadline }, func(s *api.MapSettings) *string { return &s.IODeadline }},
}

// Grouping policies and prioritizers (multipath.conf(5)).
const (
	policyFailover    = "failover"
	policyMultibus    = "multibus"
	policyGroupByPrio = "group_by_prio"
	prioConst         = "const"
	prioWeighted      = "weightedpath"
)

// builtinSettings are the settings of a map that neither it nor
// [defaults] sets: multipath-tools' defaults, and the checker's.
func builtinSettings() api.MapSettings {
	return api.MapSettings{
		PathSelector:       "service-time 0",
		PathGroupingPolicy: policyFailover,
		Features:           "0",
		Prio:               prioConst,
		CheckerSettings: api.CheckerSettings{
			PollingInterval: multipath.DefaultPollingInterval.String(),
			CheckTimeout:    multipath.DefaultCheckTimeout.String(),
			Failback:        "manual",
			IODeadline:      multipath.DefaultIODeadline.String(),
		},
	}
}

// confFile is a configuration file read and checked.
type confFile struct {
	file      string
	defaults  api.MapSettings
	blacklist []string
	maps      []*confMap
	devices   []api.ConfigDevice
}

// confMap is a multipath map of the file, its settings merged.
type confMap struct {
	api.ConfigMap
	selector []string // path_selector's words, with the count of its arguments
	features []string // the features other than queue_if_no_path
}

// readConfig reads and checks a configuration file.
func readConfig(file string) (*confFile, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	return parseConfig(file, b)
}

// parseConfig parses and checks a configuration. Errors name the file,
// the line and the entry (multipaths[2] (mpb): ...).
func parseConfig(file string, data []byte) (*confFile, error) {
	var raw rawConfig
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&raw); err != nil {
		return nil, tomlError(file, err)
	}
	lines := keyLines(data)
	// fail places err: on the line of the setting it is about (in the
	// entry, or in [defaults] if the entry took it from there), else on
	// the entry's first line.
	fail := func(section, where string, err error) error {
		line := lines[section]
		var se *settingErr
		if errors.As(err, &se) {
			if l, ok := lines[section+"."+se.key]; ok {
				line = l
			} else if l, ok := lines["defaults."+se.key]; ok {
				line, where = l, where+" (from defaults)"
			}
		}
		if line == 0 {
			return fmt.Errorf("%s: %s: %w", file, where, err)
		}
		return fmt.Errorf("%s:%d: %s: %w", file, line, where, err)
	}
	c := &confFile{file: file, blacklist: nonNil(raw.Blacklist.Paths)}
	for _, g := range c.blacklist {
		if _, err := filepath.Match(g, ""); err != nil {
			return nil, fail("blacklist", "blacklist", &settingErr{"paths", fmt.Errorf("bad glob %q", g)})
		}
	}
	defRaw, err := raw.Defaults.values()
	if err != nil {
		return nil, fail("defaults", "defaults", err)
	}
	c.defaults = merge(nil, defRaw)
	if _, err := newConfMap(api.ConfigMap{Alias: "defaults", Paths: []string{"/dev/null"}, MapSettings: c.defaults}); err != nil {
		return nil, fail("defaults", "defaults", err)
	}
	seen := map[string]string{}
	name := func(kind string, i int, alias string) (string, error) {
		where := fmt.Sprintf("%s[%d]", kind, i+1)
		if alias == "" {
			return where, errors.New("no alias")
		}
		where += fmt.Sprintf(" (%s)", alias)
		if strings.ContainsAny(alias, "/ \t\n") || len(alias) > 127 {
			return where, &settingErr{"alias", fmt.Errorf("bad alias %q (no slashes or spaces, at most 127 bytes)", alias)}
		}
		if prev, ok := seen[alias]; ok {
			return where, &settingErr{"alias", fmt.Errorf("alias %q is also %s", alias, prev)}
		}
		seen[alias] = where
		return where, nil
	}
	for i, rm := range raw.Multipaths {
		section := fmt.Sprintf("multipaths.%d", i+1)
		where, err := name("multipaths", i, rm.Alias)
		if err != nil {
			return nil, fail(section, where, err)
		}
		vals, err := rm.values()
		if err != nil {
			return nil, fail(section, where, err)
		}
		m := api.ConfigMap{Alias: rm.Alias, Paths: []string{}, MapSettings: merge(defRaw, vals)}
		dup := map[string]bool{}
		for _, p := range rm.Paths {
			switch {
			case p == "":
				return nil, fail(section, where, &settingErr{"paths", errors.New("an empty path")})
			case dup[p]:
				return nil, fail(section, where, &settingErr{"paths", fmt.Errorf("path %s listed twice", p)})
			case blacklisted(c.blacklist, p):
				m.Blacklisted = append(m.Blacklisted, p)
			default:
				m.Paths = append(m.Paths, p)
			}
			dup[p] = true
		}
		if len(rm.Paths) == 0 {
			return nil, fail(section, where, errors.New("no paths"))
		}
		if len(m.Paths) == 0 {
			return nil, fail(section, where, &settingErr{"paths", errors.New("every path is blacklisted")})
		}
		cm, err := newConfMap(m)
		if err != nil {
			return nil, fail(section, where, err)
		}
		c.maps = append(c.maps, cm)
	}
	for i, rd := range raw.Devices {
		section := fmt.Sprintf("devices.%d", i+1)
		where, err := name("devices", i, rd.Alias)
		if err != nil {
			return nil, fail(section, where, err)
		}
		lines, err := dm.ParseTable(rd.Table)
		if err == nil && len(lines) == 0 {
			err = errors.New("no table")
		}
		if err != nil {
			return nil, fail(section, where, &settingErr{"table", err})
		}
		c.devices = append(c.devices, api.ConfigDevice{Alias: rd.Alias, Table: rd.Table})
	}
	return c, nil
}

// settingErr is an error about one setting (its key in the file).
type settingErr struct {
	key string
	err error
}

func (e *settingErr) Error() string { return e.err.Error() }
func (e *settingErr) Unwrap() error { return e.err }

// keyLines maps each key of a TOML document to its line: "defaults",
// "defaults.polling_interval", "multipaths.2" (the second
// [[multipaths]]), "multipaths.2.alias". The document has been decoded
// already: it parses.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	var cur []string
	count := map[string]int{}
	for p.NextExpression() {
		e := p.Expression()
		var key []string
		line := 0
		it := e.Key()
		for it.Next() {
			n := it.Node()
			if line == 0 {
				line = p.Shape(n.Raw).Start.Line
			}
			key = append(key, string(n.Data))
		}
		switch e.Kind {
		case unstable.Table:
			cur = key
		case unstable.ArrayTable:
			k := strings.Join(key, ".")
			count[k]++
			cur = append(key, strconv.Itoa(count[k]))
		case unstable.KeyValue:
			key = append(append([]string(nil), cur...), key...)
		default:
			continue
		}
		if e.Kind != unstable.KeyValue {
			key = cur
		}
		lines[strings.Join(key, ".")] = line
	}
	return lines
}

// tomlError words a decoder error with the file and line.
func tomlError(file string, err error) error {
	var sm *toml.StrictMissingError
	if errors.As(err, &sm) {
		var msgs []string
		for _, e := range sm.Errors {
			row, _ := e.Position()
			what := "unknown key"
			if strings.Contains(e.Error(), "table") {
				what = "unknown section"
			}
			msgs = append(msgs, fmt.Sprintf("%s:%d: %s %s", file, row, what, strings.Join(e.Key(), ".")))
		}
		return errors.New(strings.Join(msgs, "\n"))
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		row, col := de.Position()
		return fmt.Errorf("%s:%d:%d: %s", file, row, col, strings.TrimPrefix(de.Error(), "toml: "))
	}
	return fmt.Errorf("%s: %w", file, err)
}

// values reads a section's settings as strings (only those given).
func (r *rawSettings) values() (map[string]string, error) {
	out := map[string]string{}
	for _, f := range settingFields {
		v := f.raw(r)
		if v == nil {
			continue
		}
		switch x := v.(type) {
		case string:
			out[f.key] = x
		case int64:
			switch f.kind {
			case kindCount:
				out[f.key] = strconv.FormatInt(x, 10)
			case kindDuration:
				out[f.key] = strconv.FormatInt(x, 10) + "s"
			default:
				return nil, &settingErr{f.key, fmt.Errorf("%s: want a string, got %d", f.key, x)}
			}
		default:
			return nil, &settingErr{f.key, fmt.Errorf("%s: want a string or a number, got %v", f.key, v)}
		}
	}
	return out, nil
}

// merge is the effective settings of a map: its own, else the defaults
// section's, else the built-in ones. no_path_retry, if given nowhere, is
// queue when the features ask for queue_if_no_path and fail otherwise;
// max_polling_interval, if given nowhere, is 4 × polling_interval.
func merge(defaults, own map[string]string) api.MapSettings {
	s := builtinSettings()
	for _, f := range settingFields {
		if v, ok := own[f.key]; ok {
			*f.eff(&s) = v
		} else if v, ok := defaults[f.key]; ok {
			*f.eff(&s) = v
		}
	}
	if s.NoPathRetry == "" {
		s.NoPathRetry = "fail"
		if slicesContains(strings.Fields(s.Features), "queue_if_no_path") {
			s.NoPathRetry = "queue"
		}
	}
	if s.MaxPollingInterval == "" && s.PollingInterval != "off" {
		if d, err := multipath.ParsePollingInterval(s.PollingInterval); err == nil && d > 0 {
			s.MaxPollingInterval = (multipath.DefaultMaxPollingFactor * d).String()
		}
	}
	return s
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// blacklisted reports whether a glob of the blacklist matches path.
func blacklisted(globs []string, path string) bool {
	for _, g := range globs {
		if ok, _ := filepath.Match(g, path); ok {
			return true
		}
	}
	return false
}

// newConfMap checks a map's settings, works out its paths' priorities
// and builds a table of it once (to a length of one sector) so that
// what the kernel's parser would refuse is refused now.
func newConfMap(m api.ConfigMap) (*confMap, error) {
	cm := &confMap{ConfigMap: m}
	s := &cm.MapSettings
	// Each checker setting alone, so that an error names its key.
	for _, f := range settingFields {
		var one api.CheckerSettings
		if one.Set(f.key, *f.eff(s)) != nil {
			continue // not a checker setting
		}
		if _, err := one.MapConfig(); err != nil {
			return nil, &settingErr{f.key, err}
		}
	}
	sel := strings.Fields(s.PathSelector)
	if len(sel) == 0 || !slicesContains(multipath.Selectors(), sel[0]) {
		return nil, &settingErr{"path_selector", fmt.Errorf("path_selector %q: want one of %s, with its arguments", s.PathSelector,
			strings.Join(multipath.Selectors(), ", "))}
	}
	if len(sel) == 1 {
		sel = append(sel, "0")
	}
	if n, err := strconv.Atoi(sel[1]); err != nil || n != len(sel)-2 {
		return nil, &settingErr{"path_selector", fmt.Errorf("path_selector %q: the number after the name counts its arguments", s.PathSelector)}
	}
	cm.selector = sel
	switch s.PathGroupingPolicy {
	case policyFailover, policyMultibus, policyGroupByPrio:
	default:
		return nil, &settingErr{"path_grouping_policy", fmt.Errorf("path_grouping_policy %q: want failover, multibus or group_by_prio", s.PathGroupingPolicy)}
	}
	feat := strings.Fields(s.Features)
	if len(feat) == 0 {
		return nil, &settingErr{"features", fmt.Errorf("features %q: want the count of the features, then the features (\"0\", \"1 queue_if_no_path\")", s.Features)}
	}
	if n, err := strconv.Atoi(feat[0]); err != nil || n != len(feat)-1 {
		return nil, &settingErr{"features", fmt.Errorf("features %q: the first number counts the features that follow", s.Features)}
	}
	for _, f := range feat[1:] {
		if f != "queue_if_no_path" {
			cm.features = append(cm.features, f)
		}
	}
	prio, err := prioritizer(s.Prio, s.PrioArgs)
	if err != nil {
		return nil, err
	}
	cm.Priorities = make([]int, len(m.Paths))
	for i, p := range m.Paths {
		cm.Priorities[i] = prio(p)
	}
	if _, err := cm.table(1); err != nil {
		return nil, &settingErr{"features", err}
	}
	return cm, nil
}

// prioritizer returns the function that gives a path its priority:
// const gives every path 1; weightedpath ("devname REGEX PRIO ...")
// gives a path the PRIO of the first REGEX that matches its name (as
// written in the file; unanchored, as multipath-tools' regexec), 0 if
// none does.
func prioritizer(name, args string) (func(path string) int, error) {
	switch name {
	case prioConst:
		if strings.TrimSpace(args) != "" {
			return nil, &settingErr{"prio_args", fmt.Errorf("prio_args %q: const takes none", args)}
		}
		return func(string) int { return 1 }, nil
	case prioWeighted:
	default:
		return nil, &settingErr{"prio", fmt.Errorf("prio %q: want const or weightedpath", name)}
	}
	w := strings.Fields(args)
	if len(w) == 0 || w[0] != "devname" {
		return nil, &settingErr{"prio_args", fmt.Errorf("prio_args %q: weightedpath wants \"devname REGEX PRIO [REGEX PRIO]...\" (udm's paths have no hbtl, serial or wwn)", args)}
	}
	if len(w) == 1 || len(w)%2 != 1 {
		return nil, &settingErr{"prio_args", fmt.Errorf("prio_args %q: want pairs of REGEX PRIO after devname", args)}
	}
	type rule struct {
		re   *regexp.Regexp
		prio int
	}
	var rules []rule
	for i := 1; i < len(w); i += 2 {
		re, err := regexp.Compile(w[i])
		if err != nil {
			return nil, &settingErr{"prio_args", fmt.Errorf("prio_args: bad regex %q: %v", w[i], err)}
		}
		p, err := strconv.Atoi(w[i+1])
		if err != nil || p < 0 {
			return nil, &settingErr{"prio_args", fmt.Errorf("prio_args: bad priority %q after %q (want a number >= 0)", w[i+1], w[i])}
		}
		rules = append(rules, rule{re, p})
	}
	return func(path string) int {
		for _, r := range rules {
			if r.prio != 0 && r.re.MatchString(path) {
				return r.prio
			}
		}
		return 0
	}, nil
}

// groups are the map's priority groups, in the table's order, as the
// grouping policy makes them: failover one path per group, multibus all
// in one, group_by_prio one group per priority; groups of a higher
// priority come first (failover's too), paths keep the file's order
// within a group.
func (m *confMap) groups() [][]string {
	type pp struct {
		dev  string
		prio int
	}
	ps := make([]pp, len(m.Paths))
	for i, p := range m.Paths {
		ps[i] = pp{p, m.Priorities[i]}
	}
	var out [][]string
	switch m.PathGroupingPolicy {
	case policyMultibus:
		out = [][]string{m.Paths}
	case policyFailover:
		sort.SliceStable(ps, func(i, j int) bool { return ps[i].prio > ps[j].prio })
		for _, p := range ps {
			out = append(out, []string{p.dev})
		}
	case policyGroupByPrio:
		var prios []int
		by := map[int][]string{}
		for _, p := range ps {
			if _, ok := by[p.prio]; !ok {
				prios = append(prios, p.prio)
			}
			by[p.prio] = append(by[p.prio], p.dev)
		}
		sort.Sort(sort.Reverse(sort.IntSlice(prios)))
		for _, p := range prios {
			out = append(out, by[p])
		}
	}
	return out
}

// table builds the map's table for a length in sectors, as
// multipath-tools' assemble_map does (features, no hardware handler,
// the groups with the selector, one repeat-count argument per path, the
// first group first), and prints it as the kernel's table status does
// (ParseSpec, then Format), so that it compares with a live table.
func (m *confMap) table(sectors uint64) (string, error) {
	feat := m.features
	if m.NoPathRetry != "fail" {
		feat = append([]string{"queue_if_no_path"}, feat...)
	}
	groups := m.groups()
	args := append([]string{strconv.Itoa(len(feat))}, feat...)
	args = append(args, "0", strconv.Itoa(len(groups)), "1")
	for _, g := range groups {
		args = append(args, m.selector...)
		args = append(args, strconv.Itoa(len(g)), "1")
		for _, p := range g {
			args = append(args, p, "1")
		}
	}
	spec, err := multipath.ParseSpec(args)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("0 %d multipath %s", sectors, strings.TrimRight(spec.Format(spec.QueueIfNoPath), " ")), nil
}
