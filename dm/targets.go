package dm

import (
	"fmt"
	"sort"
	"strings"
	"sync"
)

// TargetRegistry maps target type names to their constructors. There is
// no global one: the daemon builds a registry (DefaultTargets, then
// multipath registers itself) and hands it to the device registry.
type TargetRegistry struct {
	mu    sync.RWMutex
	types map[string]*TargetType // guarded by mu
}

// NewTargetRegistry returns an empty registry.
func NewTargetRegistry() *TargetRegistry {
	return &TargetRegistry{types: make(map[string]*TargetType)}
}

// DefaultTargets returns a registry holding the targets of package dm:
// linear, striped, error, zero, flakey and delay.
func DefaultTargets() *TargetRegistry {
	r := NewTargetRegistry()
	if err := RegisterBuiltins(r); err != nil {
		panic(err) // a fresh registry can't hold duplicates
	}
	return r
}

// RegisterBuiltins adds dm's own targets to r.
func RegisterBuiltins(r *TargetRegistry) error {
	for _, t := range []TargetType{linearType(), stripedType(), errorType(), zeroType(), flakeyType(), delayType()} {
		if err := r.Register(t); err != nil {
			return err
		}
	}
	return nil
}

// Register adds a target type; its name must be a single word not yet
// registered.
func (r *TargetRegistry) Register(t TargetType) error {
	if t.Name == "" || strings.ContainsFunc(t.Name, func(c rune) bool { return c <= ' ' || c == '\\' }) {
		return fmt.Errorf("dm: bad target type name %q", t.Name)
	}
	if t.New == nil {
		return fmt.Errorf("dm: target type %s has no constructor", t.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.types[t.Name]; dup {
		return fmt.Errorf("dm: target type %s registered twice", t.Name)
	}
	r.types[t.Name] = &t
	return nil
}

// Lookup finds a target type by name.
func (r *TargetRegistry) Lookup(name string) (*TargetType, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	t, ok := r.types[name]
	return t, ok
}

// Types lists the registered types sorted by name (dmsetup targets).
func (r *TargetRegistry) Types() []TargetType {
	r.mu.RLock()
	out := make([]TargetType, 0, len(r.types))
	for _, t := range r.types {
		out = append(out, *t)
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// NoflushSuspending reports whether the owner is in a noflush suspend (a
// target then requeues what it cannot complete). False without an owner.
func (c *TargetContext) NoflushSuspending() bool {
	return c != nil && c.Device != nil && c.Device.NoflushSuspending()
}

// TriggerEvent bumps the owner's event counter (path failed, ...).
func (c *TargetContext) TriggerEvent() {
	if c != nil && c.Device != nil {
		c.Device.TriggerEvent()
	}
}

// Suspended reports whether the owner is suspended.
func (c *TargetContext) Suspended() bool {
	return c != nil && c.Device != nil && c.Device.Suspended()
}

// ReadOnly reports whether the owner is read-only.
func (c *TargetContext) ReadOnly() bool {
	return c != nil && c.Device != nil && c.Device.ReadOnly()
}
