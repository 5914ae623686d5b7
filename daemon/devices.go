package daemon

import (
	"context"
	"fmt"
	"log"
	"strings"
	"time"

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
	l := d.log.With().Str("dev", name).Logger()
	return &l
}

// create makes a device, loads its table and resumes it.
func (d *Daemon) create(ctx context.Context, req api.CreateRequest) (api.DeviceInfo, error) {
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
				d.log.Error().Err(rerr).Str("dev", req.Name).Msg("remove after failed create")
			}
			return api.DeviceInfo{}, err
		}
	}
	ev := d.devLog(req.Name).Info()
	if req.UUID != "" {
		ev = ev.Str("uuid", req.UUID)
	}
	if req.ReadOnly {
		ev = ev.Bool("read_only", true)
	}
	ev.Str("table", oneLine(req.Table)).Msg("device created")
	d.save(dev)
	return infoOf(dev), nil
}

// load puts a table in a device's inactive slot.
func (d *Daemon) load(name, table string) error {
	dev, err := d.reg.Get(name)
	if err != nil {
		return err
	}
	if err := dev.Load(table); err != nil {
		return err
	}
	d.devLog(name).Info().Str("table", oneLine(table)).Msg("table loaded (inactive)")
	d.save(dev)
	return nil
}

// clear drops a device's inactive table.
func (d *Daemon) clear(name string) error {
	dev, err := d.reg.Get(name)
	if err != nil {
		return err
	}
	dev.Clear()
	d.devLog(name).Info().Msg("inactive table cleared")
	d.save(dev)
	return nil
}

func (d *Daemon) suspend(ctx context.Context, name string, noflush bool) (api.DeviceInfo, error) {
	dev, err := d.reg.Get(name)
	if err != nil {
		return api.DeviceInfo{}, err
	}
	was := dev.Suspended()
	if err := dev.Suspend(ctx, noflush); err != nil {
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
	var old []string
	if before.Inactive {
		old, _ = dev.Table(false)
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
// close).
func (d *Daemon) remove(ctx context.Context, name string, force, deferred bool) error {
	dev, err := d.reg.Get(name)
	if err != nil {
		return err
	}
	if deferred {
		marked, err := dev.RemoveOrDefer(ctx, force)
		if err != nil {
			return err
		}
		if marked {
			// It goes on last close; deferredRemoved forgets its
			// state then.
			d.devLog(name).Info().Int("open_count", dev.Info().OpenCount).Msg("device removal deferred to last close")
			return nil
		}
	} else if err := dev.Remove(ctx, force, false); err != nil {
		return err
	}
	d.forget(dev, name, force)
	return nil
}

// forget drops a removed device's state.
func (d *Daemon) forget(dev *dm.Device, name string, force bool) {
	d.mp.forget(name)
	d.saveMu.Lock()
	err := d.store.Delete(name)
	d.saveMu.Unlock()
	if err != nil {
		d.log.Error().Err(err).Str("dev", name).Msg("state not deleted")
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
	d.devLog(name).Info().Uint64("sector", sector).Strs("message", args).Msg("message")
	d.save(dev)
	return reply, nil
}

// snapshot reads what is saved of a device.
func (d *Daemon) snapshot(dev *dm.Device) DeviceState {
	i := dev.Info()
	st := DeviceState{Name: i.Name, UUID: i.UUID, Suspended: i.Suspended, ReadOnly: i.ReadOnly}
	if live, _ := dev.Table(false); len(live) > 0 {
		st.Table = strings.Join(live, "\n") + "\n"
	}
	if in, _ := dev.Table(true); len(in) > 0 {
		st.Inactive = strings.Join(in, "\n") + "\n"
	}
	d.mp.snapshot(i.Name, &st)
	return st
}

// save writes a device's state (if it still exists). Errors are logged:
// the operation itself has happened.
func (d *Daemon) save(dev *dm.Device) {
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	name := dev.Name()
	if cur, err := d.reg.Get(name); err != nil || cur != dev {
		return
	}
	if err := d.store.Save(d.snapshot(dev)); err != nil {
		d.log.Error().Err(err).Str("dev", name).Msg("state not saved")
	}
}

// saveAll saves every device (at shutdown).
func (d *Daemon) saveAll() {
	for _, name := range d.reg.List() {
		if dev, err := d.reg.Get(name); err == nil {
			d.save(dev)
		}
	}
}

// restore brings back the devices of the state dir, in dependency
// order. A state file that doesn't parse, or whose device can't be
// rebuilt, is set aside as <file>.corrupt-<unix time> and reported.
func (d *Daemon) restore() {
	states, bad, err := d.store.LoadAll()
	if err != nil {
		d.log.Error().Err(err).Msg("state not read")
		return
	}
	for _, c := range bad {
		d.setAside(c.File, c.Err)
	}
	for _, st := range restoreOrder(states) {
		if err := d.restoreOne(st); err != nil {
			d.setAside(d.store.path(st.Name), err)
			continue
		}
		d.devLog(st.Name).Info().Bool("suspended", st.Suspended).Bool("inactive_table", st.Inactive != "").
			Msg("device restored")
	}
}

func (d *Daemon) setAside(file string, why error) {
	to, err := d.store.SetAside(file, time.Now())
	if err != nil {
		d.log.Error().Err(why).Str("file", file).AnErr("rename_error", err).Msg("corrupt state file (could not set it aside)")
		return
	}
	d.log.Error().Err(why).Str("file", file).Str("kept_as", to).Msg("corrupt state file set aside")
}

func (d *Daemon) restoreOne(st DeviceState) error {
	ctx := context.Background()
	if err := d.mp.configure(&st); err != nil {
		return fmt.Errorf("checker settings: %w", err)
	}
	dev, err := d.reg.Create(ctx, st.Name, st.UUID, "")
	if err != nil {
		return err
	}
	fail := func(err error) error {
		if rerr := dev.Remove(ctx, true, false); rerr != nil {
			d.log.Error().Err(rerr).Str("dev", st.Name).Msg("remove after failed restore")
		}
		return err
	}
	dev.SetReadOnly(st.ReadOnly)
	if st.Table != "" {
		if err := dev.Load(st.Table); err != nil {
			return fail(fmt.Errorf("live table: %w", err))
		}
		if err := dev.Resume(ctx); err != nil {
			return fail(fmt.Errorf("live table: %w", err))
		}
	}
	if err := d.mp.restoreFailed(&st); err != nil {
		return fail(err)
	}
	if st.Suspended && st.Table != "" {
		if err := dev.Suspend(ctx, true); err != nil {
			return fail(fmt.Errorf("suspend: %w", err))
		}
	}
	if st.Inactive != "" {
		if err := dev.Load(st.Inactive); err != nil {
			return fail(fmt.Errorf("inactive table: %w", err))
		}
	}
	return nil
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
