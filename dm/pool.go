package dm

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"
)

// Opener opens a device named in a table (a block device, a file, an NBD
// URL, ...). The closer releases it. Tables share what it opens through a
// reference-counted pool: each name (and mode) is opened once and closed
// when the last table using it is destroyed.
type Opener func(name string, readOnly bool) (BlockDevice, io.Closer, error)

// MapperPrefix names a registry's own devices in tables, for stacking.
const MapperPrefix = "/dev/mapper/"

// StaticOpener opens the given devices by their Name; closing them does
// nothing. Other names fail with ENOENT. For tests and fixed setups.
func StaticOpener(devs ...BlockDevice) Opener {
	m := make(map[string]BlockDevice, len(devs))
	for _, d := range devs {
		m[d.Name()] = d
	}
	return func(name string, readOnly bool) (BlockDevice, io.Closer, error) {
		d, ok := m[name]
		if !ok {
			return nil, nil, fmt.Errorf("dm: open %s: %w", name, syscall.ENOENT)
		}
		return d, nopCloser{}, nil
	}
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

type poolKey struct {
	name     string
	readOnly bool
}

type poolEntry struct {
	key    poolKey
	dev    BlockDevice
	closer io.Closer
	refs   int     // guarded by devPool.mu
	lower  *Device // the dm device under a stacked entry
}

// devPool shares opened devices between tables. The registry has one for
// all its devices; a standalone Device has its own.
type devPool struct {
	open Opener
	reg  *Registry // resolves /dev/mapper/NAME; nil for a standalone device

	mu      sync.Mutex
	entries map[poolKey]*poolEntry // guarded by mu
}

func newDevPool(open Opener, reg *Registry) *devPool {
	return &devPool{open: open, reg: reg, entries: make(map[poolKey]*poolEntry)}
}

func (p *devPool) get(name string, readOnly bool) (*poolEntry, error) {
	key := poolKey{name, readOnly}
	p.mu.Lock()
	if e := p.entries[key]; e != nil {
		e.refs++
		p.mu.Unlock()
		return e, nil
	}
	p.mu.Unlock()
	// Open outside the lock: it may be slow (a remote export).
	e := &poolEntry{key: key, refs: 1}
	if err := p.openEntry(e); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if old := p.entries[key]; old != nil {
		old.refs++
		p.mu.Unlock()
		e.closer.Close()
		return old, nil
	}
	p.entries[key] = e
	p.mu.Unlock()
	return e, nil
}

func (p *devPool) openEntry(e *poolEntry) error {
	name := e.key.name
	if p.reg != nil && strings.HasPrefix(name, MapperPrefix) {
		if lower, ok := p.reg.lookup(name[len(MapperPrefix):]); ok {
			if err := lower.Open(); err != nil {
				return fmt.Errorf("dm: open %s: %w", name, err)
			}
			e.lower = lower
			e.dev = lower.blockDevice(name)
			e.closer = closerFunc(lower.Close)
			return nil
		}
	}
	if p.open == nil {
		return fmt.Errorf("dm: open %s: %w (no opener configured)", name, syscall.ENODEV)
	}
	dev, closer, err := p.open(name, e.key.readOnly)
	if err != nil {
		return err
	}
	if closer == nil {
		closer = nopCloser{}
	}
	e.dev, e.closer = dev, closer
	return nil
}

func (p *devPool) put(e *poolEntry) {
	p.mu.Lock()
	e.refs--
	last := e.refs == 0
	if last {
		delete(p.entries, e.key)
	}
	p.mu.Unlock()
	if last {
		e.closer.Close()
	}
}

// checkStack refuses to let owner's table use lower if lower is owner or
// already sits (through any of its tables) on owner.
func checkStack(owner, lower *Device) error {
	if owner == nil {
		return nil
	}
	if lower == owner || lower.stacksOn(owner, 0) {
		return fmt.Errorf("%w: %s on %s", ErrLoop, owner.Name(), lower.Name())
	}
	return nil
}

// stacksOn reports whether d's live or inactive table uses x, directly or
// through other dm devices.
func (d *Device) stacksOn(x *Device, depth int) bool {
	if depth > 64 {
		return true // deeper than anyone stacks: refuse
	}
	for _, l := range d.lowers() {
		if l == x || l.stacksOn(x, depth+1) {
			return true
		}
	}
	return false
}

// lowers lists the dm devices d's tables stack on directly.
func (d *Device) lowers() []*Device {
	d.tableMu.RLock()
	tabs := [2]*table{d.live.Load(), d.inactive}
	d.tableMu.RUnlock()
	var out []*Device
	for _, t := range tabs {
		if t != nil {
			out = append(out, t.devs.lowers()...)
		}
	}
	return out
}

// tableDevices is the DeviceGetter of one table: it remembers what the
// table's targets opened and releases it with the table.
type tableDevices struct {
	pool     *devPool
	owner    *Device
	readOnly bool

	mu  sync.Mutex
	got []*poolEntry // guarded by mu
}

// GetDevice opens name for the table's target (read-only if the device
// is).
func (g *tableDevices) GetDevice(name string, readOnly bool) (BlockDevice, error) {
	if name == "" {
		return nil, fmt.Errorf("dm: empty device name")
	}
	if r := g.pool.reg; r != nil && strings.HasPrefix(name, MapperPrefix) {
		if lower, ok := r.lookup(name[len(MapperPrefix):]); ok {
			if err := checkStack(g.owner, lower); err != nil {
				return nil, err
			}
		}
	}
	e, err := g.pool.get(name, readOnly || g.readOnly)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	g.got = append(g.got, e)
	g.mu.Unlock()
	return e.dev, nil
}

func (g *tableDevices) lowers() []*Device {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []*Device
	for _, e := range g.got {
		if e.lower != nil {
			out = append(out, e.lower)
		}
	}
	return out
}

func (g *tableDevices) release() {
	g.mu.Lock()
	got := g.got
	g.got = nil
	g.mu.Unlock()
	for i := len(got) - 1; i >= 0; i-- {
		g.pool.put(got[i])
	}
}

// Deps lists what d's live table opened, each once, in the order its
// targets opened them: the names the table gives them, a device of the
// registry as MapperPrefix and its current name (dmsetup deps).
func (d *Device) Deps() []string {
	d.tableMu.RLock()
	t := d.live.Load()
	d.tableMu.RUnlock()
	if t == nil || t.devs == nil {
		return nil
	}
	g := t.devs
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []string
	seen := map[string]bool{}
	for _, e := range g.got {
		n := e.key.name
		if e.lower != nil {
			n = MapperPrefix + e.lower.Name()
		}
		if !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}
