package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"udm/daemon/api"
	"udm/dm"
)

// Persistence: every operation that changes a device saves its state
// before it answers, and an operation whose state can't be saved fails
// and is undone, so that the live daemon and the state dir agree (see
// the operations in devices.go and mpath.go). A restore brings back
// what it can of each device (restoreOne); what it can't is kept as
// pending, shown by `udm info` and saved as it was.

// pending is what a restore could not bring back of a device: the parts
// of its saved state that are kept, and saved again as they were, while
// the device has nothing of its own in their place.
type pending struct {
	live      string // the saved live table, which did not load
	suspended bool   // the saved suspend state, with live
	liveErr   string

	inactive    string // the saved inactive table, which did not load
	inactiveErr string

	checker    *api.CheckerSettings // saved checker settings that were refused
	checkerErr string
}

func (p *pending) empty() bool { return p.live == "" && p.inactive == "" && p.checker == nil }

// reason is what `udm info` says of the device.
func (p *pending) reason() string {
	var parts []string
	for _, s := range []string{p.liveErr, p.inactiveErr, p.checkerErr} {
		if s != "" {
			parts = append(parts, s)
		}
	}
	return strings.Join(parts, "; ")
}

// pendingSet holds the pending parts of devices, by name.
type pendingSet struct {
	mu   sync.Mutex
	devs map[string]*pending
}

func (s *pendingSet) get(name string) (pending, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p := s.devs[name]; p != nil {
		return *p, true
	}
	return pending{}, false
}

func (s *pendingSet) put(name string, p *pending) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.devs == nil {
		s.devs = map[string]*pending{}
	}
	if p == nil || p.empty() {
		delete(s.devs, name)
		return
	}
	s.devs[name] = p
}

// update changes name's pending parts (creating them if there are none).
func (s *pendingSet) update(name string, f func(p *pending)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.devs[name]
	if p == nil {
		p = &pending{}
	}
	f(p)
	if p.empty() {
		delete(s.devs, name)
		return
	}
	if s.devs == nil {
		s.devs = map[string]*pending{}
	}
	s.devs[name] = p
}

// overlay puts the pending parts into st where the device has none of
// its own.
func (s *pendingSet) overlay(st *DeviceState) {
	p, ok := s.get(st.Name)
	if !ok {
		return
	}
	if p.live != "" && st.Table == "" {
		st.Table, st.Suspended = p.live, st.Suspended || p.suspended
	}
	if p.inactive != "" && st.Inactive == "" {
		st.Inactive = p.inactive
	}
	if p.checker != nil && st.Checker == nil {
		c := *p.checker
		st.Checker = &c
	}
}

// settle drops the pending parts the device has replaced with its own
// (a live table went in, an inactive table was loaded).
func (s *pendingSet) settle(dev *dm.Device) {
	i := dev.Info()
	s.update(dev.Name(), func(p *pending) {
		if i.Live {
			p.live, p.liveErr = "", ""
		}
		if i.Inactive {
			p.inactive, p.inactiveErr = "", ""
		}
	})
}

// deviceError is why a device is not all there, for `udm info` ("" if
// it is).
func (d *Daemon) deviceError(name string) string {
	p, ok := d.pending.get(name)
	if !ok {
		return ""
	}
	return p.reason()
}

// info is a device as `udm info` shows it, with its error if any.
func (d *Daemon) info(dev *dm.Device) api.DeviceInfo {
	i := infoOf(dev)
	i.Error = d.deviceError(i.Name)
	return i
}

// snapshot reads what is saved of a device.
func (d *Daemon) snapshot(dev *dm.Device) DeviceState {
	i := dev.Info()
	st := DeviceState{Name: i.Name, UUID: i.UUID, Suspended: i.Suspended, ReadOnly: i.ReadOnly, DeferredRemove: i.DeferredRemove}
	if live, _ := dev.Table(false); len(live) > 0 {
		st.Table = strings.Join(live, "\n") + "\n"
	}
	if in, _ := dev.Table(true); len(in) > 0 {
		st.Inactive = strings.Join(in, "\n") + "\n"
	}
	d.mp.snapshot(i.Name, &st)
	d.pending.overlay(&st)
	return st
}

// persist saves a device's state (if it is still registered). The error
// says the state was not saved; it is also logged.
func (d *Daemon) persist(dev *dm.Device) error { return d.persistAs(dev, nil) }

// persistAs is persist with the snapshot changed by edit first: an
// operation saves the state it is about to make before making it.
func (d *Daemon) persistAs(dev *dm.Device, edit func(st *DeviceState)) error {
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	name := dev.Name()
	if cur, err := d.reg.Get(name); err != nil || cur != dev {
		return nil
	}
	st := d.snapshot(dev)
	if edit != nil {
		edit(&st)
	}
	if err := d.store.Save(st); err != nil {
		d.log.Error().Err(err).Str("dev", clip(name)).Msg("state not saved")
		return fmt.Errorf("state not saved: %w", err)
	}
	if edit == nil {
		d.pending.settle(dev)
	}
	return nil
}

// save is persist for when the operation has happened and can't be
// undone (after it, and at shutdown): a failure is only logged.
func (d *Daemon) save(dev *dm.Device) { _ = d.persist(dev) }

// unsave deletes a device's state ahead of its removal.
func (d *Daemon) unsave(name string) error {
	d.saveMu.Lock()
	defer d.saveMu.Unlock()
	if err := d.store.Delete(name); err != nil {
		d.log.Error().Err(err).Str("dev", clip(name)).Msg("state not deleted")
		return fmt.Errorf("state not deleted: %w", err)
	}
	return nil
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
// order, each as far as it can: a multipath map with paths that can't be
// opened comes up with them failed; a device whose table can't be loaded
// comes up without it, in an error state `udm info` explains, its state
// file kept as it is (a later load, resume or restart brings it up). Only
// a state file that can't be read is set aside, as
// <file>.corrupt-<unix time>.
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
		if st.DeferredRemove {
			// It was to go on last close; a restart leaves it no user.
			if err := d.store.Delete(st.Name); err != nil {
				d.log.Error().Err(err).Str("dev", clip(st.Name)).Msg("state of a device removed on last close not deleted")
			}
			d.devLog(st.Name).Info().Msg("device removed (its removal was deferred to a last close the restart made)")
			continue
		}
		p, err := d.restoreOne(st)
		if err != nil {
			d.log.Error().Err(err).Str("dev", clip(st.Name)).Str("file", d.store.path(st.Name)).
				Msg("device not restored (its state file is kept)")
			continue
		}
		if p != nil {
			d.pending.put(st.Name, p)
			d.devLog(st.Name).Error().Str("error", p.reason()).Msg("device restored in error state (its saved state is kept)")
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

// restoreOne brings back one device. The error says it could not be
// created at all; otherwise what could not be restored is returned as
// pending (nil if everything was).
func (d *Daemon) restoreOne(st DeviceState) (*pending, error) {
	ctx := context.Background()
	p := &pending{}
	if c := st.Checker; c != nil && strings.HasPrefix(c.PollingInterval, "-") {
		// Written by a udm that took a negative polling interval to mean
		// "not checked", which is now spelled "off".
		c.PollingInterval = "off"
	}
	if err := d.mp.configure(&st); err != nil {
		p.checker, p.checkerErr = st.Checker, fmt.Sprintf("checker settings: %v", err)
	}
	dev, err := d.reg.Create(ctx, st.Name, st.UUID, "")
	if err != nil {
		return nil, err
	}
	dev.SetReadOnly(st.ReadOnly)
	d.mp.restoreMarks(&st)
	if st.Table != "" {
		absent, err := d.loadRestored(dev, st.Table)
		if err == nil {
			if err = dev.Resume(ctx); err != nil {
				dev.Clear()
			}
		}
		if err != nil {
			p.live, p.suspended, p.liveErr = st.Table, st.Suspended, "live table: "+clip(describeErr(err))
		} else {
			for _, path := range absent {
				// As multipathd would: the map serves on its other
				// paths; the checker reinstates this one once it opens.
				if _, err := dev.Message(ctx, 0, []string{"fail_path", path}); err != nil {
					d.devLog(st.Name).Debug().Err(err).Str("path", path).Msg("failing a missing path")
				}
			}
			if st.Suspended {
				if err := dev.Suspend(ctx, true); err != nil {
					d.devLog(st.Name).Error().Err(err).Msg("not suspended again after restart")
				}
			}
		}
	}
	if st.Inactive != "" {
		if _, err := d.loadRestored(dev, st.Inactive); err != nil {
			p.inactive, p.inactiveErr = st.Inactive, "inactive table: "+clip(describeErr(err))
		}
	}
	if p.empty() {
		return nil, nil
	}
	return p, nil
}

func describeErr(err error) string {
	_, _, msg := describe(err, "")
	return msg
}

// restoring is set while a restore loads a multipath table: a path that
// can't be opened then stands as an absentPath of the map's size.
type restoring struct {
	size int64
	mu   sync.Mutex
	// absent lists the paths that could not be opened.
	absent []string
}

// loadRestored loads a saved table into dev's inactive slot. A
// multipath map's paths that can't be opened are put in as absent
// paths and returned.
func (d *Daemon) loadRestored(dev *dm.Device, text string) ([]string, error) {
	lines, err := dm.ParseTable(text)
	if err != nil {
		return nil, err
	}
	if len(lines) != 1 || lines[0].Type != "multipath" {
		return nil, dev.LoadLines(lines)
	}
	r := &restoring{size: int64(lines[0].Len) << dm.SectorShift}
	d.restoring.Store(r)
	err = dev.LoadLines(lines)
	d.restoring.Store(nil)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		for _, path := range r.absent {
			d.devLog(dev.Name()).Warn().Str("path", path).Msg("multipath path missing at restore: restored failed")
		}
	}
	return r.absent, err
}

// absentFor is the opener's question: may a path that can't be opened
// stand as an absent path (a multipath map being restored)?
func (d *Daemon) absentFor(name string, readOnly bool, open dm.Opener, why error) (*absentPath, bool) {
	r := d.restoring.Load()
	if r == nil {
		return nil, false
	}
	r.mu.Lock()
	r.absent = append(r.absent, name)
	r.mu.Unlock()
	return newAbsentPath(name, readOnly, r.size, open, why), true
}

// restoreMarks puts back the paths an operator had failed, before the
// map's table goes live (which then starts with them failed).
func (m *mpath) restoreMarks(st *DeviceState) {
	for _, p := range st.FailedPaths {
		m.checker.MarkOperatorFailed(st.Name, p)
	}
}

// reopenAbsent tries to open the absent paths of a live map (before an
// operator reinstates one of them).
func (m *mpath) reopenAbsent(mapName string) {
	for _, ms := range m.checker.Maps() {
		if mapName != "" && ms.Name != mapName {
			continue
		}
		t, ok := m.checker.Map(ms.Name)
		if !ok {
			continue
		}
		for i := 0; i < t.NumPaths(); i++ {
			if a, ok := t.PathDevice(i).(*absentPath); ok {
				if _, err := a.tryOpen(); err != nil {
					m.d.devLog(ms.Name).Debug().Err(err).Str("path", a.Name()).Msg("missing path still can't be opened")
				}
			}
		}
	}
}

// echoLimit bounds how much of an input a log line or an error repeats.
const echoLimit = 256

// replyLimit bounds an error reply's message: one longer repeats an
// input.
const replyLimit = 1024

// clip shortens s to echoLimit bytes, saying how long it was.
func clip(s string) string { return clipTo(s, echoLimit) }

// clipReply shortens an error reply's message to replyLimit bytes.
func clipReply(s string) string { return clipTo(s, replyLimit) }

// clipTo shortens s to n bytes (at a rune boundary) followed by an
// ellipsis and its length.
func clipTo(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return fmt.Sprintf("%s… (%d bytes)", s[:n], len(s))
}
