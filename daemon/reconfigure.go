package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	"udm/daemon/api"
	"udm/dm"
)

// Reconciling the devices with the configuration file (at start, on
// `udm reconfigure` and on SIGHUP):
//
//   - a device the file names that doesn't exist is created;
//   - one whose table or checker settings differ from what the file
//     builds is changed: new checker settings, then the new table
//     through a noflush suspend, load and resume (I/O held for want of a
//     path is pushed back and re-issued on the new table, none fails);
//   - one whose table and settings are what the file builds is left
//     untouched;
//   - a suspended device, or one with an inactive table loaded, is left
//     alone (the operator is in the middle of something);
//   - a device the file made (or took over) that it no longer names is
//     removed if it is unused, and left alone while it is open;
//   - devices made by hand that the file doesn't name are left alone.
//
// Which devices the file made is kept in <state dir>/configured.json,
// so that a device dropped from the file while the daemon was stopped
// is still recognised. At start the state dir's devices are restored
// first (with their operator-failed paths and checker state), then the
// file is applied as a reconfigure would: the file is the truth for its
// devices, the state dir for their runtime marks (failed paths) and for
// everything else.

// confState is the daemon's configuration file and what it made.
type confState struct {
	file     string // "" if none
	optional bool   // the default file: its absence is no error at start

	mu struct {
		sync.Mutex // serializes reconciles; guards the following
		cur        *confFile
		tables     map[string]string // the table each map was last built with
		managed    map[string]bool   // the devices the file made or took over
		// applied: what each table the file gave turned into once
		// loaded, so that a table the target prints differently from
		// how it was written isn't reloaded each time.
		applied map[string][2]string
	}
}

const configuredFile = "configured.json"

// initConfig reads the configuration file (if there is one) and applies
// it. A file that doesn't parse stops the start; a device that can't be
// brought up is logged and the others come up.
func (d *Daemon) initConfig() error {
	c := &d.conf
	c.file, c.optional = d.cfg.ConfigFile, d.cfg.ConfigOptional
	c.mu.tables, c.mu.managed, c.mu.applied = map[string]string{}, map[string]bool{}, map[string][2]string{}
	if b, err := os.ReadFile(filepath.Join(d.cfg.StateDir, configuredFile)); err == nil {
		var names []string
		if err := json.Unmarshal(b, &names); err != nil {
			d.log.Error().Err(err).Str("file", configuredFile).Msg("the list of configured devices does not parse; none is taken as configured")
		}
		for _, n := range names {
			c.mu.managed[n] = true
		}
	}
	if c.file == "" {
		return nil
	}
	if _, err := os.Stat(c.file); errors.Is(err, os.ErrNotExist) && c.optional {
		d.log.Debug().Str("config", c.file).Msg("no configuration file")
		return nil
	}
	_, err := d.Reconfigure(context.Background())
	return err
}

// configLoaded reports whether a configuration file was applied.
func (d *Daemon) configLoaded() bool {
	d.conf.mu.Lock()
	defer d.conf.mu.Unlock()
	return d.conf.mu.cur != nil
}

// Reconfigure re-reads the configuration file and reconciles the
// devices with it (see above). A file that doesn't read, parse or check
// changes nothing: the error is returned (and logged). Devices that
// could not be brought to what the file says are in the reply's Failed.
func (d *Daemon) Reconfigure(ctx context.Context) (api.ReconfigureReply, error) {
	c := &d.conf
	c.mu.Lock()
	defer c.mu.Unlock()
	rep := api.ReconfigureReply{File: c.file}
	if c.file == "" {
		d.log.Warn().Msg("reconfigure: no configuration file")
		return rep, &apiErr{status: http.StatusNotFound, errno: syscall.ENOENT,
			msg: "no configuration file (udm serve --config FILE)"}
	}
	cf, err := readConfig(c.file)
	if err != nil {
		d.log.Error().Err(err).Str("config", c.file).Msg("configuration not applied")
		return rep, &apiErr{status: http.StatusBadRequest, errno: syscall.EINVAL, msg: err.Error()}
	}
	d.reconcileLocked(ctx, cf, &rep)
	c.mu.cur = cf
	d.saveConfigured()
	for _, l := range []*[]api.ConfigAction{&rep.Created, &rep.Changed, &rep.Unchanged, &rep.Removed, &rep.LeftAlone, &rep.Failed} {
		sort.Slice(*l, func(i, j int) bool { return (*l)[i].Name < (*l)[j].Name })
		if *l == nil {
			*l = []api.ConfigAction{}
		}
	}
	d.log.Info().Str("config", c.file).Int("created", len(rep.Created)).Int("changed", len(rep.Changed)).
		Int("unchanged", len(rep.Unchanged)).Int("removed", len(rep.Removed)).Int("left_alone", len(rep.LeftAlone)).
		Int("failed", len(rep.Failed)).Msg("configuration applied")
	return rep, nil
}

// wanted is one device the file names.
type wanted struct {
	name string
	m    *confMap // a multipath map, or
	text string   // a device's own table
}

func (d *Daemon) reconcileLocked(ctx context.Context, cf *confFile, rep *api.ReconfigureReply) {
	c := &d.conf
	byName := map[string]wanted{}
	var states []DeviceState
	for _, m := range cf.maps {
		byName[m.Alias] = wanted{name: m.Alias, m: m}
		states = append(states, DeviceState{Name: m.Alias, Table: "0 1 paths " + dm.JoinArgs(m.Paths)})
	}
	for _, dv := range cf.devices {
		byName[dv.Alias] = wanted{name: dv.Alias, text: dv.Table}
		states = append(states, DeviceState{Name: dv.Alias, Table: dv.Table})
	}
	// Devices the file stacks on others of the file come after them.
	for _, st := range restoreOrder(states) {
		w := byName[st.Name]
		act, kind := d.reconcileOne(ctx, w)
		dlog := d.devLog(w.name)
		switch kind {
		case "created":
			rep.Created = append(rep.Created, act)
			c.mu.managed[w.name] = true
		case "changed":
			rep.Changed = append(rep.Changed, act)
			c.mu.managed[w.name] = true
		case "unchanged":
			rep.Unchanged = append(rep.Unchanged, act)
			c.mu.managed[w.name] = true
		case "left alone":
			rep.LeftAlone = append(rep.LeftAlone, act)
		default:
			rep.Failed = append(rep.Failed, act)
			dlog.Error().Str("why", act.Why).Msg("configuration: device not brought up to date")
			continue
		}
		ev := dlog.Info()
		if kind == "unchanged" {
			ev = dlog.Debug()
		}
		ev.Str("why", act.Why).Msg("configuration: " + kind)
	}
	for _, name := range d.reg.List() {
		if _, ok := byName[name]; ok {
			continue
		}
		if !c.mu.managed[name] {
			rep.LeftAlone = append(rep.LeftAlone, api.ConfigAction{Name: name, Why: "not in the configuration (made by hand)"})
			continue
		}
		act, removed := d.unconfigure(ctx, name)
		if removed {
			rep.Removed = append(rep.Removed, act)
			delete(c.mu.managed, name)
		} else {
			rep.LeftAlone = append(rep.LeftAlone, act)
		}
		d.devLog(name).Info().Bool("removed", removed).Str("why", act.Why).Msg("configuration: no longer configured")
	}
	for name := range c.mu.managed {
		if _, err := d.reg.Get(name); err != nil {
			if _, ok := byName[name]; !ok {
				delete(c.mu.managed, name)
			}
		}
	}
	for name := range c.mu.tables {
		if w, ok := byName[name]; !ok || w.m == nil {
			delete(c.mu.tables, name)
		}
	}
}

// reconcileOne brings one device to what the file says and reports
// what it did: "created", "changed", "unchanged", "left alone" or
// "failed".
func (d *Daemon) reconcileOne(ctx context.Context, w wanted) (api.ConfigAction, string) {
	act := api.ConfigAction{Name: w.name}
	failed := func(err error) (api.ConfigAction, string) {
		_, _, act.Why = describe(err, w.name)
		return act, "failed"
	}
	text, err := d.wantedTable(w)
	if err != nil {
		return failed(err)
	}
	var settings api.CheckerSettings
	if w.m != nil {
		settings = w.m.CheckerSettings
	}
	dev, err := d.reg.Get(w.name)
	if err != nil {
		if w.m != nil {
			if err := d.mp.setSettings(w.name, settings); err != nil {
				return failed(err)
			}
		}
		if _, err := d.create(ctx, api.CreateRequest{Name: w.name, Table: text}); err != nil {
			if w.m != nil {
				d.mp.forget(w.name)
			}
			return failed(err)
		}
		d.noteApplied(w.name, text, dev0(d, w.name))
		act.Why = d.summary(w, text)
		return act, "created"
	}
	live := liveTable(d, dev)
	tableSame := canon(text) == live || d.conf.mu.applied[w.name] == [2]string{canon(text), live}
	settingsSame := w.m == nil || d.mp.getSettings(w.name) == settings
	if tableSame && settingsSame {
		act.Why = d.summary(w, text)
		return act, "unchanged"
	}
	info := dev.Info()
	switch {
	case info.Suspended:
		act.Why = "suspended (resume it, then reconfigure)"
		return act, "left alone"
	case info.Inactive:
		act.Why = "an inactive table is loaded (resume or clear it, then reconfigure)"
		return act, "left alone"
	}
	var what []string
	if !settingsSame {
		old := d.mp.getSettings(w.name)
		if err := d.mp.setSettings(w.name, settings); err != nil {
			return failed(err)
		}
		d.save(dev)
		what = append(what, "checker settings")
		// A table that fails to load leaves the old settings.
		failed = func(err error) (api.ConfigAction, string) {
			if rerr := d.mp.setSettings(w.name, old); rerr == nil {
				d.save(dev)
			}
			_, _, act.Why = describe(err, w.name)
			return act, "failed"
		}
	}
	if !tableSame {
		if err := d.load(w.name, text); err != nil {
			return failed(err)
		}
		if _, err := d.resume(ctx, w.name, true); err != nil {
			return failed(err)
		}
		d.noteApplied(w.name, text, dev)
		what = append(what, "table reloaded (noflush)")
	}
	act.Why = strings.Join(what, ", ") + "; " + d.summary(w, text)
	return act, "changed"
}

// dev0 is the device named name, or nil.
func dev0(d *Daemon, name string) *dm.Device {
	dev, _ := d.reg.Get(name)
	return dev
}

// noteApplied remembers the table text the file gave a device and what
// the device printed once it was live.
func (d *Daemon) noteApplied(name, text string, dev *dm.Device) {
	if dev == nil {
		return
	}
	d.conf.mu.applied[name] = [2]string{canon(text), liveTable(d, dev)}
}

// summary says in a few words what the file made of a device.
func (d *Daemon) summary(w wanted, text string) string {
	if w.m == nil {
		return "table from the configuration"
	}
	return fmt.Sprintf("%s, %d path(s) in %d group(s)", w.m.PathGroupingPolicy, len(w.m.Paths), len(w.m.groups()))
}

// wantedTable is the table the file gives a device: its own, or the
// multipath map built over its paths (its length: the paths', which
// must agree).
func (d *Daemon) wantedTable(w wanted) (string, error) {
	if w.m == nil {
		return w.text, nil
	}
	var size int64 = -1
	var first string
	for _, p := range w.m.Paths {
		n, err := d.pathSize(p)
		if err != nil {
			return "", fmt.Errorf("path %s: %w", p, err)
		}
		if size >= 0 && n != size {
			return "", fmt.Errorf("paths differ in size: %s has %d bytes, %s %d", first, size, p, n)
		}
		size, first = n, p
	}
	if size < 512 {
		return "", fmt.Errorf("path %s is smaller than a sector", first)
	}
	t, err := w.m.table(uint64(size) >> 9)
	if err != nil {
		return "", err
	}
	d.conf.mu.tables[w.name] = t
	return t, nil
}

// pathSize is the size in bytes of a path: a udm device's, or what the
// daemon's opener finds (files, block devices, NBD exports).
func (d *Daemon) pathSize(p string) (int64, error) {
	if name, ok := strings.CutPrefix(p, dm.MapperPrefix); ok {
		dev, err := d.reg.Get(name)
		if err != nil {
			return 0, err
		}
		return dev.Size(), nil
	}
	bd, closer, err := d.opener()(p, true)
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	return bd.Size(), nil
}

// canon is a table as a device prints it: one line per target, no
// trailing spaces.
func canon(text string) string {
	lines, err := dm.ParseTable(text)
	if err != nil {
		return text
	}
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = strings.TrimRight(l.String(), " ")
	}
	return strings.Join(out, "\n")
}

// liveTable is a device's live table as canon prints it; a multipath
// map's as it was loaded (queue_if_no_path as the table said, not as
// no_path_retry or a message has since set it).
func liveTable(d *Daemon, dev *dm.Device) string {
	lines, _ := dev.Table(false)
	if len(lines) == 1 {
		if tl, err := dm.ParseTableLine(lines[0]); err == nil && tl.Type == "multipath" && d.mp.checker != nil {
			if t, ok := d.mp.checker.Map(dev.Name()); ok && t.Device() == dev {
				s := t.Spec()
				return fmt.Sprintf("%d %d multipath %s", tl.Start, tl.Len, strings.TrimRight(s.Format(s.QueueIfNoPath), " "))
			}
		}
	}
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	return strings.Join(lines, "\n")
}

// unconfigure removes a device the file no longer names, if nothing has
// it open and it isn't suspended.
func (d *Daemon) unconfigure(ctx context.Context, name string) (api.ConfigAction, bool) {
	act := api.ConfigAction{Name: name}
	dev, err := d.reg.Get(name)
	if err != nil {
		act.Why = "no longer in the configuration; gone already"
		return act, true
	}
	info := dev.Info()
	switch {
	case info.OpenCount > 0:
		act.Why = fmt.Sprintf("no longer in the configuration, but open (%d): not removed", info.OpenCount)
		return act, false
	case info.Suspended:
		act.Why = "no longer in the configuration, but suspended: not removed"
		return act, false
	}
	if err := d.remove(ctx, name, false, false); err != nil {
		_, _, msg := describe(err, name)
		act.Why = "no longer in the configuration; not removed: " + msg
		return act, false
	}
	act.Why = "no longer in the configuration, and unused"
	return act, true
}

// saveConfigured writes the names of the devices the file made.
func (d *Daemon) saveConfigured() {
	names := []string{}
	for n := range d.conf.mu.managed {
		names = append(names, n)
	}
	sort.Strings(names)
	b, _ := json.Marshal(names)
	if err := writeAtomic(filepath.Join(d.cfg.StateDir, configuredFile), append(b, '\n')); err != nil {
		d.log.Error().Err(err).Msg("the list of configured devices not saved")
	}
}

// effectiveConfig is GET /v1/config.
func (d *Daemon) effectiveConfig() (api.ConfigReply, error) {
	c := &d.conf
	c.mu.Lock()
	defer c.mu.Unlock()
	cf := c.mu.cur
	if cf == nil {
		return api.ConfigReply{}, &apiErr{status: http.StatusNotFound, errno: syscall.ENOENT,
			msg: "no configuration file loaded (udm serve --config FILE)"}
	}
	r := api.ConfigReply{File: cf.file, Defaults: cf.defaults, Blacklist: cf.blacklist,
		Multipaths: []api.ConfigMap{}, Devices: nonNilDevices(cf.devices)}
	for _, m := range cf.maps {
		cm := m.ConfigMap
		cm.Table = c.mu.tables[m.Alias]
		r.Multipaths = append(r.Multipaths, cm)
	}
	return r, nil
}

func nonNilDevices(s []api.ConfigDevice) []api.ConfigDevice {
	if s == nil {
		return []api.ConfigDevice{}
	}
	return s
}

func (d *Daemon) confRoutes(h func(string, func(*http.Request) (any, error))) {
	p := api.APIVersion
	h("POST "+p+"/reconfigure", func(r *http.Request) (any, error) {
		return d.Reconfigure(r.Context())
	})
	h("GET "+p+"/config", func(r *http.Request) (any, error) {
		return d.effectiveConfig()
	})
}
