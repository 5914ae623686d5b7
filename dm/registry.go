package dm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/rs/zerolog"
)

// Config configures a Registry.
type Config struct {
	Log zerolog.Logger
	// Targets resolves target types (nil: DefaultTargets()).
	Targets *TargetRegistry
	// Open opens the devices tables name, other than /dev/mapper/NAME of
	// the registry's own devices, which it resolves itself (stacking).
	Open Opener
	// DeferredRemoved, if set, is called after a removal that a last
	// Close started (Device.Close) has removed a device, on the goroutine
	// that removed it (not a loop), before Wait sees that removal over.
	DeferredRemoved func(*Device)
}

// Registry holds the named devices (what dmsetup ls lists). Tables of its
// devices share one pool of opened devices.
type Registry struct {
	log     zerolog.Logger
	targets *TargetRegistry
	pool    *devPool

	// bg runs the removals that last Closes start.
	bg               background
	onDeferredRemove func(*Device)

	mu   sync.Mutex
	devs map[string]*Device // guarded by mu
}

// NewRegistry returns an empty registry.
func NewRegistry(cfg Config) *Registry {
	if cfg.Targets == nil {
		cfg.Targets = DefaultTargets()
	}
	r := &Registry{log: cfg.Log, targets: cfg.Targets, devs: make(map[string]*Device), onDeferredRemove: cfg.DeferredRemoved}
	r.pool = newDevPool(cfg.Open, r)
	return r
}

// Targets is the registry's target types.
func (r *Registry) Targets() *TargetRegistry { return r.targets }

func checkName(name string) error {
	if name == "" || len(name) > 127 || name == "." || name == ".." || strings.ContainsAny(name, "/ \t\n") {
		return fmt.Errorf("%w %q", ErrBadName, name)
	}
	return nil
}

// Create makes a device named name and, if table is not empty (after
// comments), loads and resumes it (dmsetup create). Without a table the
// device exists with none (dmsetup create --notable). On failure nothing
// is left behind.
func (r *Registry) Create(ctx context.Context, name, uuid, table string) (*Device, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if len(uuid) > 128 {
		return nil, fmt.Errorf("%w: uuid longer than 128 bytes", ErrBadName)
	}
	lines, err := ParseTable(table)
	if err != nil {
		return nil, err
	}
	d := newDevice(DeviceConfig{Name: name, UUID: uuid, Log: r.log, Targets: r.targets}, r.pool, r)
	r.mu.Lock()
	if _, dup := r.devs[name]; dup {
		r.mu.Unlock()
		return nil, fmt.Errorf("%w: %s", ErrExists, name)
	}
	if uuid != "" {
		for _, o := range r.devs {
			if o.uuid == uuid {
				r.mu.Unlock()
				return nil, fmt.Errorf("%w: uuid %s is %s's", ErrExists, uuid, o.Name())
			}
		}
	}
	r.devs[name] = d
	r.mu.Unlock()
	if len(lines) > 0 {
		err := d.LoadLines(lines)
		if err == nil {
			err = d.Resume(ctx)
		}
		if err != nil {
			if rerr := d.Remove(context.Background(), true, false); rerr != nil {
				r.log.Error().Err(rerr).Str("dev", name).Msg("remove after failed create")
			}
			return nil, err
		}
	}
	r.log.Debug().Str("dev", name).Msg("created")
	return d, nil
}

func (r *Registry) lookup(name string) (*Device, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.devs[name]
	return d, ok
}

// Get finds a device by name (ErrNoDevice if there is none).
func (r *Registry) Get(name string) (*Device, error) {
	if d, ok := r.lookup(name); ok {
		return d, nil
	}
	return nil, fmt.Errorf("%w: %s", ErrNoDevice, name)
}

// List returns the device names, sorted (dmsetup ls).
func (r *Registry) List() []string {
	r.mu.Lock()
	out := make([]string, 0, len(r.devs))
	for n := range r.devs {
		out = append(out, n)
	}
	r.mu.Unlock()
	sort.Strings(out)
	return out
}

// Wait waits until no removal started by a last Close (Device.Close) is
// under way, or ctx ends (returning ctx.Err()). Whoever stops using the
// registry (a daemon shutting down) waits for them.
func (r *Registry) Wait(ctx context.Context) error { return r.bg.wait(ctx) }

// Remove removes a device (see Device.Remove).
func (r *Registry) Remove(ctx context.Context, name string, force, deferred bool) error {
	d, err := r.Get(name)
	if err != nil {
		return err
	}
	return d.Remove(ctx, force, deferred)
}

// Rename renames a device. Tables that name it by its old /dev/mapper
// path keep the device they opened.
func (r *Registry) Rename(old, name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	d, ok := r.devs[old]
	if !ok {
		return fmt.Errorf("%w: %s", ErrNoDevice, old)
	}
	if _, dup := r.devs[name]; dup {
		return fmt.Errorf("%w: %s", ErrExists, name)
	}
	delete(r.devs, old)
	r.devs[name] = d
	d.mu.Lock()
	d.mu.name = name
	d.mu.Unlock()
	d.TriggerEvent()
	return nil
}

// forget drops a removed device from the name map.
func (r *Registry) forget(d *Device) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for n, x := range r.devs {
		if x == d {
			delete(r.devs, n)
			return
		}
	}
}

// RemoveAll removes every device, users before the devices they stack
// on, forcing those still open by something else (an export) at the end.
func (r *Registry) RemoveAll(ctx context.Context) error {
	var errs []error
	for {
		// Removing a device closes those below it; a removal their
		// last Close started must be over before they are counted.
		if err := r.Wait(ctx); err != nil {
			return errors.Join(append(errs, err)...)
		}
		names := r.List()
		if len(names) == 0 {
			break
		}
		progress := false
		for _, n := range names {
			d, ok := r.lookup(n)
			if !ok {
				continue
			}
			if err := d.Remove(ctx, false, false); err == nil {
				progress = true
			}
		}
		if progress {
			continue
		}
		// Everything left is open: force one that no other device
		// stacks on, and go round.
		d := r.topmost(names)
		if d == nil {
			break
		}
		if err := d.Remove(ctx, true, false); err != nil {
			errs = append(errs, fmt.Errorf("dm: remove %s: %w", d.Name(), err))
			r.forget(d)
		}
	}
	return errors.Join(errs...)
}

// topmost returns a device among names that no other device's tables use.
func (r *Registry) topmost(names []string) *Device {
	var devs []*Device
	used := make(map[*Device]bool)
	for _, n := range names {
		d, ok := r.lookup(n)
		if !ok {
			continue
		}
		devs = append(devs, d)
		for _, l := range d.lowers() {
			used[l] = true
		}
	}
	for _, d := range devs {
		if !used[d] {
			return d
		}
	}
	if len(devs) > 0 {
		return devs[0]
	}
	return nil
}
