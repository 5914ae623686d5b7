package daemon

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"syscall"

	"udm/daemon/api"
	"udm/dm"
	"udm/multipath"
)

// The endpoints of the verbs beyond create/load/resume: rename, deps,
// remove_all, and the multipath map edits (add path, del path, resize
// map), which reload a map's table through a noflush suspend so that no
// I/O fails.

func (d *Daemon) verbRoutes(h func(string, func(*http.Request) (any, error))) {
	p := api.APIVersion
	h("POST "+p+"/devices/{name}/rename", func(r *http.Request) (any, error) {
		var req api.RenameRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		return d.rename(r.PathValue("name"), req.NewName)
	})
	h("GET "+p+"/devices/{name}/deps", func(r *http.Request) (any, error) {
		dev, err := d.reg.Get(r.PathValue("name"))
		if err != nil {
			return nil, err
		}
		return api.DepsReply{Name: dev.Name(), Deps: nonNil(dev.Deps())}, nil
	})
	h("POST "+p+"/remove_all", func(r *http.Request) (any, error) {
		return d.removeAll(r.Context(), boolParam(r.URL.Query().Get("force")))
	})
	h("POST "+p+"/multipath/maps/{name}/paths", func(r *http.Request) (any, error) {
		var req api.AddPathRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		return struct{}{}, d.editMap(r.Context(), r.PathValue("name"), "path added", func(s *multipath.Spec) error {
			return addPath(s, req.Path, req.Group)
		})
	})
	h("DELETE "+p+"/multipath/maps/{name}/paths", func(r *http.Request) (any, error) {
		path := r.URL.Query().Get("path")
		name := r.PathValue("name")
		err := d.editMap(r.Context(), name, "path deleted", func(s *multipath.Spec) error { return delPath(s, path) })
		if err == nil && d.mp.checker.DropOperatorMark(name, path) {
			if dev, gerr := d.reg.Get(name); gerr == nil {
				d.save(dev)
			}
		}
		return struct{}{}, err
	})
	h("POST "+p+"/multipath/maps/{name}/resize", func(r *http.Request) (any, error) {
		return d.resizeMap(r.Context(), r.PathValue("name"))
	})
}

// daemonVersion is the daemon's build version (GET /v1/daemon).
func daemonVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// rename renames a device: the state under the new name is saved first,
// then the device renamed, then the old state deleted; a step that fails
// undoes the ones before it, so that a restart finds the device under
// one name only. A device another device's table names
// (/dev/mapper/NAME) is not renamed: that table's saved text would name
// a device that is gone.
func (d *Daemon) rename(old, name string) (api.DeviceInfo, error) {
	if err := CheckName(name); err != nil {
		return api.DeviceInfo{}, err
	}
	dev, err := d.reg.Get(old)
	if err != nil {
		return api.DeviceInfo{}, err
	}
	if _, err := d.reg.Get(name); err == nil {
		return api.DeviceInfo{}, &apiErr{status: http.StatusConflict, errno: syscall.EEXIST, msg: fmt.Sprintf("device %q already exists", clip(name))}
	}
	if users := d.usersOf(old); len(users) > 0 {
		return api.DeviceInfo{}, &apiErr{status: http.StatusConflict, errno: syscall.EBUSY,
			msg: fmt.Sprintf("device %q is in the table of %s: not renamed (their tables name it %s%s)", clip(old), strings.Join(users, ", "), dm.MapperPrefix, clip(old))}
	}
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	st := d.snapshot(dev)
	st.Name = name
	if err := d.store.Save(st); err != nil {
		return api.DeviceInfo{}, fmt.Errorf("device not renamed: state not saved: %w", err)
	}
	if err := d.reg.Rename(old, name); err != nil {
		d.dropState(name)
		return api.DeviceInfo{}, err
	}
	if err := d.store.Delete(old); err != nil {
		if rerr := d.reg.Rename(name, old); rerr != nil {
			d.log.Error().Err(rerr).Str("dev", clip(name)).Msg("rename not undone")
		}
		d.dropState(name)
		return api.DeviceInfo{}, fmt.Errorf("device not renamed: old state not deleted: %w", err)
	}
	d.mp.rename(old, name)
	if p, ok := d.pending.get(old); ok {
		d.pending.put(old, nil)
		d.pending.put(name, &p)
	}
	d.devLog(name).Info().Str("old_name", clip(old)).Msg("device renamed")
	return d.info(dev), nil
}

func (d *Daemon) dropState(name string) {
	if err := d.store.Delete(name); err != nil {
		d.log.Error().Err(err).Str("dev", clip(name)).Msg("state not deleted")
	}
}

// usersOf lists the devices whose live tables opened the device name.
func (d *Daemon) usersOf(name string) []string {
	var out []string
	for _, n := range d.reg.List() {
		dev, err := d.reg.Get(n)
		if err != nil {
			continue
		}
		for _, dep := range dev.Deps() {
			if dep == dm.MapperPrefix+name {
				out = append(out, n)
				break
			}
		}
	}
	return out
}

// rename moves a device's checker settings and operator marks to its
// new name.
func (m *mpath) rename(old, name string) {
	// The marks first: a checker restarted by the new settings finds
	// the paths failed by hand still marked.
	for _, p := range m.checker.OperatorFailed(old) {
		m.checker.MarkOperatorFailed(name, p)
	}
	if s := m.getSettings(old); s != (api.CheckerSettings{}) {
		if err := m.setSettings(name, s); err != nil {
			m.d.devLog(name).Error().Err(err).Msg("checker settings not moved to the new name")
		}
	}
	m.forget(old)
}

// removeAll is dmsetup remove_all: it removes every device that is not
// open, users before the devices they stack on, and with force the open
// ones too (an error table swapped in first). What is left is returned.
func (d *Daemon) removeAll(ctx context.Context, force bool) (api.RemoveAllReply, error) {
	rep := api.RemoveAllReply{Removed: []string{}, Left: []string{}}
	for {
		if err := d.reg.Wait(ctx); err != nil { // last closes a removal started
			return rep, err
		}
		progress := false
		names := d.reg.List()
		used := map[string]bool{}
		for _, n := range names {
			if dev, err := d.reg.Get(n); err == nil {
				for _, dep := range dev.Deps() {
					if l, ok := strings.CutPrefix(dep, dm.MapperPrefix); ok {
						used[l] = true
					}
				}
			}
		}
		for _, n := range names {
			dev, err := d.reg.Get(n)
			if err != nil || used[n] {
				continue
			}
			open := dev.Info().OpenCount > 0
			if open && !force {
				continue
			}
			if err := d.remove(ctx, n, open, false); err != nil {
				d.devLog(n).Error().Err(err).Msg("remove_all: not removed")
				continue
			}
			rep.Removed = append(rep.Removed, n)
			progress = true
		}
		if !progress {
			break
		}
	}
	rep.Left = append(rep.Left, d.reg.List()...)
	sort.Strings(rep.Left)
	d.log.Info().Strs("removed", rep.Removed).Strs("left", rep.Left).Bool("force", force).Msg("remove_all")
	return rep, nil
}

// editMap changes a multipath map's live table with edit and swaps it in
// through a noflush suspend (load, then resume: each saved as it
// happens). If the swap fails, the loaded table is cleared.
func (d *Daemon) editMap(ctx context.Context, name, what string, edit func(s *multipath.Spec) error) error {
	line, spec, err := d.mapSpec(name)
	if err != nil {
		return err
	}
	if err := edit(spec); err != nil {
		return err
	}
	return d.reloadMap(ctx, name, what, line.Start, line.Len, spec)
}

func (d *Daemon) reloadMap(ctx context.Context, name, what string, start, length uint64, spec *multipath.Spec) error {
	text := fmt.Sprintf("%d %d multipath %s", start, length, spec.Format(spec.QueueIfNoPath))
	if err := d.load(name, text); err != nil {
		return err
	}
	if _, err := d.resume(ctx, name, true); err != nil {
		if cerr := d.clear(name); cerr != nil {
			d.devLog(name).Error().Err(cerr).Msg("reloaded table not cleared after a failed resume")
		}
		return fmt.Errorf("table not swapped in: %w", err)
	}
	d.devLog(name).Info().Str("table", clip(text)).Msg("multipath map reloaded: " + what)
	return nil
}

// mapSpec reads a multipath map's live table.
func (d *Daemon) mapSpec(name string) (dm.TableLine, *multipath.Spec, error) {
	dev, err := d.reg.Get(name)
	if err != nil {
		return dm.TableLine{}, nil, named(err, name)
	}
	live, err := dev.Table(false)
	if err != nil {
		return dm.TableLine{}, nil, named(err, name)
	}
	lines, err := dm.ParseTable(strings.Join(live, "\n"))
	if err != nil {
		return dm.TableLine{}, nil, err
	}
	if len(lines) != 1 || lines[0].Type != "multipath" {
		return dm.TableLine{}, nil, badRequest("device %q is not a multipath map (one multipath target)", clip(name))
	}
	spec, err := multipath.ParseSpec(lines[0].Args)
	if err != nil {
		return dm.TableLine{}, nil, err
	}
	return lines[0], spec, nil
}

// addPath adds path to group (1-based; 0: the last group), with the
// group's default path arguments.
func addPath(s *multipath.Spec, path string, group int) error {
	if path == "" {
		return badRequest("add path: no path given")
	}
	if len(s.Groups) == 0 {
		return badRequest("add path: the map has no path group")
	}
	if group == 0 {
		group = len(s.Groups)
	}
	if group < 1 || group > len(s.Groups) {
		return badRequest("add path: no group %d (the map has %d)", group, len(s.Groups))
	}
	for _, g := range s.Groups {
		for _, p := range g.Paths {
			if samePath(p.Dev, path) {
				return &apiErr{status: http.StatusConflict, errno: syscall.EEXIST, msg: fmt.Sprintf("the map already has a path %q", clip(path))}
			}
		}
	}
	g := &s.Groups[group-1]
	g.Paths = append(g.Paths, multipath.PathSpec{Dev: path, Repeat: 1, RelThroughput: 1})
	return nil
}

// delPath takes path out of every group; a group left empty goes.
func delPath(s *multipath.Spec, path string) error {
	found := false
	var groups []multipath.GroupSpec
	initial, next := s.InitialPG, s.InitialPG
	for gi, g := range s.Groups {
		var keep []multipath.PathSpec
		for _, p := range g.Paths {
			if samePath(p.Dev, path) {
				found = true
				continue
			}
			keep = append(keep, p)
		}
		if len(keep) == 0 {
			switch {
			case uint32(gi+1) < initial:
				next-- // the initial group moves up
			case uint32(gi+1) == initial:
				next = 1
			}
			continue
		}
		g.Paths = keep
		groups = append(groups, g)
	}
	if !found {
		return &apiErr{status: http.StatusNotFound, errno: syscall.ENOENT, msg: fmt.Sprintf("the map has no path %q", clip(path))}
	}
	if len(groups) == 0 {
		return &apiErr{status: http.StatusConflict, errno: syscall.EBUSY, msg: fmt.Sprintf("%q is the map's last path (remove the map instead)", clip(path))}
	}
	s.Groups = groups
	s.InitialPG = min(max(next, 1), uint32(len(groups)))
	return nil
}

func samePath(a, b string) bool { return a == b || filepath.Clean(a) == filepath.Clean(b) }

// resizeMap is multipathd's resize map: the map takes the size of its
// smallest path, as the path reports it now.
func (d *Daemon) resizeMap(ctx context.Context, name string) (api.DeviceInfo, error) {
	line, spec, err := d.mapSpec(name)
	if err != nil {
		return api.DeviceInfo{}, err
	}
	t, ok := d.mp.checker.Map(name)
	if !ok {
		return api.DeviceInfo{}, &apiErr{status: http.StatusNotFound, errno: syscall.ENXIO, msg: fmt.Sprintf("no live multipath map %q", clip(name))}
	}
	size := int64(-1)
	for i := 0; i < t.NumPaths(); i++ {
		if _, absent := t.PathDevice(i).(*absentPath); absent {
			continue // stands in with the map's size
		}
		pd := t.PathDevice(i)
		if r, ok := pd.(interface{ Refresh() (int64, error) }); ok {
			// The backing may have been grown underneath since it was
			// opened: take its size now, as multipathd re-reads sysfs.
			if _, err := r.Refresh(); err != nil {
				return api.DeviceInfo{}, &apiErr{status: http.StatusConflict, errno: syscall.EIO, msg: fmt.Sprintf("map %q: path %s: %v", clip(name), clip(pd.Name()), err)}
			}
		}
		if s := pd.Size(); size < 0 || s < size {
			size = s
		}
	}
	if size < 0 {
		return api.DeviceInfo{}, &apiErr{status: http.StatusConflict, errno: syscall.EBUSY, msg: fmt.Sprintf("map %q has no path to take a size from", clip(name))}
	}
	sectors := uint64(size) >> dm.SectorShift
	if sectors == 0 {
		return api.DeviceInfo{}, badRequest("map %q: its smallest path is smaller than a sector", clip(name))
	}
	if sectors != line.Len {
		if err := d.reloadMap(ctx, name, fmt.Sprintf("resized from %d to %d sectors", line.Len, sectors), line.Start, sectors, spec); err != nil {
			return api.DeviceInfo{}, err
		}
	}
	dev, err := d.reg.Get(name)
	if err != nil {
		return api.DeviceInfo{}, err
	}
	return d.info(dev), nil
}
