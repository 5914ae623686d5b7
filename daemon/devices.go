package daemon

import (
	"context"
	"fmt"
	"log"
	"strings"

	"github.com/rs/zerolog"

	"udm/daemon/api"
	"udm/dm"
)

// The operations behind the control API. Each changes a device through
// the dm registry, logs one line, and saves the device's state.

func infoOf(dev *dm.Device) api.DeviceInfo {
	i := dev.Info()
	return api.DeviceInfo{Name: i.Name, UUID: i.UUID, State: i.State(), Suspended: i.Suspended, ReadOnly: i.ReadOnly,
		Live: i.Live, Inactive: i.Inactive, OpenCount: i.OpenCount, EventNr: i.EventNr, Targets: i.NumTargets,
		DeferredRemove: i.DeferredRemove, Size: dev.Size()}
}

func (d *Daemon) devLog(name string) *zerolog.Logger {
	l := d.log.With().Str("dev", clip(name)).Logger()
	return &l
}

// create makes a device, loads its table and resumes it. If its state
// can't be saved it is removed again.
func (d *Daemon) create(ctx context.Context, req api.CreateRequest) (api.DeviceInfo, error) {
	if err := CheckName(req.Name); err != nil {
		return api.DeviceInfo{}, err
	}
	lines, err := dm.ParseTable(req.Table)
	if err != nil {
		return api.DeviceInfo{}, err
	}
	dev, err := d.reg.Create(ctx, req.Name, req.UUID, "")
	if err != nil {
		return api.DeviceInfo{}, err
	}
	if req.ReadOnly {
		dev.SetReadOnly(true)
	}
	if len(lines) > 0 {
		err = dev.LoadLines(lines)
		if err == nil {
			err = dev.Resume(ctx)
		}
		if err != nil {
			if rerr := dev.Remove(context.Background(), true, false); rerr != nil {
				d.log.Error().Err(rerr).Str("dev", clip(req.Name)).Msg("remove after failed create")
			}
			return api.DeviceInfo{}, err
		}
	}
	if err := d.persist(dev); err != nil {
		if rerr := dev.Remove(context.Background(), true, false); rerr != nil {
			d.log.Error().Err(rerr).Str("dev", clip(req.Name)).Msg("remove after failed create")
		}
		return api.DeviceInfo{}, fmt.Errorf("device not created: %w", err)
	}
	ev := d.devLog(req.Name).Info()
	if req.UUID != "" {
		ev = ev.Str("uuid", req.UUID)
	}
	if req.ReadOnly {
		ev = ev.Bool("read_only", true)
	}
	ev.Str("table", clip(oneLine(req.Table))).Msg("device created")
	return infoOf(dev), nil
}

// load puts a table in a device's inactive slot.
func (d *Daemon) load(name, table string) error {
	dev, err := d.reg.Get(name)
	if err != nil {
		return err
	}
	old, _ := dev.Table(true)
	if err := dev.Load(table); err != nil {
		return err
	}
	if err := d.persist(dev); err != nil {
		return d.undoInactive(dev, old, "table not loaded", err)
	}
	d.devLog(name).Info().Str("table", clip(oneLine(table))).Msg("table loaded (inactive)")
	return nil
}

// undoInactive puts back the inactive table a load or clear replaced,
// whose new state could not be saved. If it can't be loaded again it is
// kept as pending, as the state dir has it.
func (d *Daemon) undoInactive(dev *dm.Device, old []string, what string, cause error) error {
	dev.Clear()
	if len(old) == 0 {
		return fmt.Errorf("%s: %w", what, cause)
	}
	text := strings.Join(old, "\n") + "\n"
	if err := dev.Load(text); err != nil {
		d.pending.update(dev.Name(), func(p *pending) { p.inactive, p.inactiveErr = text, "inactive table: "+clip(describeErr(err)) })
		d.devLog(dev.Name()).Error().Err(err).Msg("the previous inactive table could not be loaded again; kept as saved")
		return fmt.Errorf("%s: %w (and the previous inactive table could not be loaded again: %v)", what, cause, err)
	}
	return fmt.Errorf("%s: %w", what, cause)
}

// clear drops a device's inactive table.
func (d *Daemon) clear(name string) error {
	dev, err := d.reg.Get(name)
	if err != nil {
		return err
	}
	old, _ := dev.Table(true)
	p, _ := d.pending.get(name)
	d.pending.update(name, func(p *pending) { p.inactive, p.inactiveErr = "", "" })
	dev.Clear()
	if err := d.persist(dev); err != nil {
		if p.inactive != "" {
			d.pending.update(name, func(q *pending) { q.inactive, q.inactiveErr = p.inactive, p.inactiveErr })
		}
		return d.undoInactive(dev, old, "inactive table not cleared", err)
	}
	d.devLog(name).Info().Msg("inactive table cleared")
	return nil
}

func (d *Daemon) suspend(ctx context.Context, name string, noflush bool) (api.DeviceInfo, error) {
	dev, err := d.reg.Get(name)
	if err != nil {
		return api.DeviceInfo{}, err
	}
	was := dev.Suspended()
	if !was {
		// Saved first: a suspend that can't be saved does not happen.
		if err := d.persistAs(dev, func(st *DeviceState) { st.Suspended = true }); err != nil {
			return api.DeviceInfo{}, fmt.Errorf("device not suspended: %w", err)
		}
	}
	if err := dev.Suspend(ctx, noflush); err != nil {
		if !was {
			d.save(dev)
		}
		return api.DeviceInfo{}, err
	}
	if !was {
		s := dev.Stats()
		d.devLog(name).Info().Bool("noflush", noflush).Int64("deferred", s.Deferred).Msg("device suspended")
	}
	d.save(dev)
	return infoOf(dev), nil
}

func (d *Daemon) resume(ctx context.Context, name string, noflush bool) (api.DeviceInfo, error) {
	dev, err := d.reg.Get(name)
	if err != nil {
		return api.DeviceInfo{}, err
	}
	before := dev.Info()
	retried := false
	if p, ok := d.pending.get(name); ok && p.live != "" && !before.Live && !before.Inactive {
		// The saved live table did not load at restore: try it again.
		if err := dev.Load(p.live); err != nil {
			return api.DeviceInfo{}, fmt.Errorf("the saved live table still does not load: %w", err)
		}
		retried, before = true, dev.Info()
	}
	var old []string
	if before.Inactive {
		old, _ = dev.Table(false)
		// Saved first: a resume that can't be saved does not happen.
		next, _ := dev.Table(true)
		if err := d.persistAs(dev, func(st *DeviceState) {
			st.Table, st.Inactive, st.Suspended = strings.Join(next, "\n")+"\n", "", false
		}); err != nil {
			if retried {
				dev.Clear()
			}
			return api.DeviceInfo{}, fmt.Errorf("device not resumed: %w", err)
		}
	} else if before.Suspended {
		if err := d.persistAs(dev, func(st *DeviceState) { st.Suspended = false }); err != nil {
			return api.DeviceInfo{}, fmt.Errorf("device not resumed: %w", err)
		}
	}
	deferred := dev.Stats().Deferred
	if noflush {
		err = dev.ResumeNoflush(ctx)
	} else {
		err = dev.Resume(ctx)
	}
	after := dev.Info()
	if before.Inactive && !after.Inactive {
		now, _ := dev.Table(false)
		d.devLog(name).Info().Str("old", strings.Join(old, "; ")).Str("new", strings.Join(now, "; ")).
			Msg("table swapped")
	}
	if err != nil {
		d.save(dev)
		return api.DeviceInfo{}, err
	}
	if before.Suspended || (before.Inactive && !after.Suspended) {
		d.devLog(name).Info().Int64("reissued", deferred).Msg("device resumed")
	}
	d.save(dev)
	return infoOf(dev), nil
}

// remove removes a device (force: under its users; deferred: on last
// close). The removal is saved first (its state deleted; a deferred
// removal marked in it, so that a restart does not bring the device
// back), and a removal that can't be saved does not happen; if the
// removal fails, the state is saved again.
func (d *Daemon) remove(ctx context.Context, name string, force, deferred bool) error {
	dev, err := d.reg.Get(name)
	if err != nil {
		return err
	}
	if !force && !deferred && dev.Info().OpenCount > 0 {
		return dev.Remove(ctx, false, false) // busy: nothing changes
	}
	if deferred && !force {
		err = d.persistAs(dev, func(st *DeviceState) { st.DeferredRemove = true })
	} else {
		err = d.unsave(name)
	}
	if err != nil {
		return fmt.Errorf("device not removed: %w", err)
	}
	undo := func(err error) error {
		if serr := d.persist(dev); serr != nil {
			return fmt.Errorf("%w (and its state could not be saved again: %v)", err, serr)
		}
		return err
	}
	if deferred {
		marked, err := dev.RemoveOrDefer(ctx, force)
		if err != nil {
			return undo(err)
		}
		if marked {
			// It goes on last close; deferredRemoved forgets its
			// state then.
			d.devLog(name).Info().Int("open_count", dev.Info().OpenCount).Msg("device removal deferred to last close")
			return nil
		}
	} else if err := dev.Remove(ctx, force, false); err != nil {
		return undo(err)
	}
	d.forget(dev, name, force)
	return nil
}

// forget drops a removed device's state.
func (d *Daemon) forget(dev *dm.Device, name string, force bool) {
	d.mp.forget(name)
	d.pending.put(name, nil)
	d.saveMu.Lock()
	err := d.store.Delete(name)
	d.saveMu.Unlock()
	if err != nil {
		d.log.Error().Err(err).Str("dev", clip(name)).Msg("state not deleted")
	}
	d.devLog(name).Info().Bool("force", force).Msg("device removed")
}

// deferredRemoved forgets the state of a device that a last close
// removed (dm.Config.DeferredRemoved: it runs on the registry's removal
// goroutine, never on a loop, and before Registry.Wait returns, so a
// shutdown that waited for the registry has deleted the state file).
func (d *Daemon) deferredRemoved(dev *dm.Device) {
	d.forget(dev, dev.Name(), false)
}

func (d *Daemon) message(ctx context.Context, name string, sector uint64, args []string) (string, error) {
	dev, err := d.reg.Get(name)
	if err != nil {
		return "", err
	}
	reply, err := dev.Message(ctx, sector, args)
	if err != nil {
		return "", err
	}
	clipped := make([]string, len(args))
	for i, a := range args {
		clipped[i] = clip(a)
	}
	d.devLog(name).Info().Uint64("sector", sector).Strs("args", clipped).Msg("message")
	if err := d.persist(dev); err != nil {
		return "", fmt.Errorf("message applied, but %w", err)
	}
	return reply, nil
}

// oneLine flattens a table for a log line.
func oneLine(table string) string {
	var parts []string
	for _, l := range strings.Split(table, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, "; ")
}

// stdLogger adapts the zerolog logger for net/http's error log.
func stdLogger(l zerolog.Logger, component string) *log.Logger {
	return log.New(zlWriter{l.With().Str("component", component).Logger()}, "", 0)
}

type zlWriter struct{ l zerolog.Logger }

func (w zlWriter) Write(p []byte) (int, error) {
	w.l.Warn().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}
