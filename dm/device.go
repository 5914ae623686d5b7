package dm

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/rs/zerolog"
)

// Device state bits (Device.flags).
const (
	// flagBlockIO: new bios go to the deferred list (DMF_BLOCK_IO_FOR_SUSPEND).
	flagBlockIO uint32 = 1 << iota
	// flagNoflushSuspending: a noflush suspend is under way; requeued
	// bios go to pushback. Changed only under pushMu.
	flagNoflushSuspending
	// flagSuspended: the suspend completed (DMF_SUSPENDED).
	flagSuspended
	// flagRemoved: the device was removed; it has no table any more.
	flagRemoved
	// flagReadOnly: writes fail with EPERM and tables open devices
	// read-only.
	flagReadOnly
)

// DeviceConfig configures a standalone Device (NewDevice). Devices made by
// a Registry take their configuration from it.
type DeviceConfig struct {
	Name, UUID string
	Log        zerolog.Logger
	// Targets resolves target types in tables (nil: DefaultTargets()).
	Targets *TargetRegistry
	// Open opens the devices tables name (nil: naming one fails).
	Open     Opener
	ReadOnly bool
}

// Device is a mapped device: two table slots (live and inactive), the
// suspend/resume state machine, the deferred and pushback lists and the
// pending count. See the package documentation for the lock order and
// the life of a bio.
type Device struct {
	// The fast path reads these; none is written per bio.
	live      atomic.Pointer[table]
	flags     atomic.Uint32
	shardMask uint32
	shards    []shard // per-loop pending counts and I/O counters
	stats     devStats

	pushMu   spinLock // guards pushback; flagNoflushSuspending changes under it
	pushback bioList  // guarded by pushMu

	defMu    sync.Mutex // guards deferred
	deferred bioList    // guarded by defMu

	// drained gets a token when pending drops to zero while BLOCK_IO is
	// set.
	drained chan struct{}

	// sema is the suspend lock: it serializes suspend, resume, table
	// swaps, removal and the targets' suspend/resume hooks. A channel so
	// that waiting for it honours a context.
	sema chan struct{}

	// tableMu guards inactive and keeps a live table from being destroyed
	// while slow-path readers (Status, Table, Message) use it: swaps take
	// it for writing.
	tableMu  sync.RWMutex
	inactive *table // guarded by tableMu

	mu struct {
		sync.Mutex // guards the following
		name       string
		open       int
		// deferredRemove: remove on last close.
		deferredRemove bool
		// removing: a removal is under way or done; Open fails.
		removing bool
	}

	eventNr atomic.Uint32
	eventMu sync.Mutex
	eventCh chan struct{} // guarded by eventMu; closed and replaced by each event

	uuid    string
	log     zerolog.Logger
	targets *TargetRegistry
	pool    *devPool
	reg     *Registry // nil for a standalone device
	// bg runs the removal a last Close starts: the registry's, or the
	// device's own.
	bg      *background
	removed chan struct{} // closed once removed

	// hook, set by tests, runs at the named points so that they can
	// force interleavings. Only slow paths (requeues, suspends) read it.
	hook atomic.Pointer[func(hookPoint)]
}

type hookPoint int

const (
	// hookBeforePushback: a requeued bio is about to take pushMu.
	hookBeforePushback hookPoint = iota
	// hookBlocked: suspend has set BLOCK_IO and is about to wait.
	hookBlocked
	// hookBeforeWait: suspend saw pending != 0 and is about to sleep.
	hookBeforeWait
	// hookAbort: a failed or interrupted suspend is about to clear the
	// noflush flag and merge pushback.
	hookAbort
	// hookDefer: Submit saw BLOCK_IO and is about to take the deferred
	// lock.
	hookDefer
	// hookDeferredRemoval: the removal a last Close started is about to
	// run.
	hookDeferredRemoval
)

func (d *Device) hookAt(p hookPoint) {
	if h := d.hook.Load(); h != nil {
		(*h)(p)
	}
}

// setHook installs (or, with nil, removes) the test hook.
func (d *Device) setHook(fn func(hookPoint)) {
	if fn == nil {
		d.hook.Store(nil)
		return
	}
	d.hook.Store(&fn)
}

// NewDevice returns a standalone device with no table (not in any
// registry): Load a table and Resume it to use it.
func NewDevice(cfg DeviceConfig) *Device {
	if cfg.Targets == nil {
		cfg.Targets = DefaultTargets()
	}
	return newDevice(cfg, newDevPool(cfg.Open, nil), nil)
}

// WaitRemoval waits until no removal started by a last Close is under
// way, or ctx ends (returning ctx.Err()). For a device in a registry it
// waits for those of every device there, as Registry.Wait does.
func (d *Device) WaitRemoval(ctx context.Context) error { return d.bg.wait(ctx) }

func newDevice(cfg DeviceConfig, pool *devPool, reg *Registry) *Device {
	d := &Device{
		drained: make(chan struct{}, 1),
		sema:    make(chan struct{}, 1),
		eventCh: make(chan struct{}),
		uuid:    cfg.UUID,
		log:     cfg.Log.With().Str("dev", cfg.Name).Logger(),
		targets: cfg.Targets,
		pool:    pool,
		reg:     reg,
		removed: make(chan struct{}),
	}
	if reg != nil {
		d.bg = &reg.bg
	} else {
		d.bg = &background{}
	}
	d.shards = newShards()
	d.shardMask = uint32(len(d.shards) - 1)
	d.mu.name = cfg.Name
	if cfg.ReadOnly {
		d.flags.Store(flagReadOnly)
	}
	return d
}

// Name is the device's name.
func (d *Device) Name() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mu.name
}

// UUID is the device's UUID (may be empty).
func (d *Device) UUID() string { return d.uuid }

// Size is the live table's size in bytes (0 without a live table).
func (d *Device) Size() int64 {
	if t := d.live.Load(); t != nil {
		return int64(t.size) << SectorShift
	}
	return 0
}

// ReadOnly reports whether the device refuses writes.
func (d *Device) ReadOnly() bool { return d.flags.Load()&flagReadOnly != 0 }

// SetReadOnly changes the read-only flag; tables loaded afterwards open
// their devices in the new mode.
func (d *Device) SetReadOnly(ro bool) {
	if ro {
		d.flags.Or(flagReadOnly)
	} else {
		d.flags.And(^flagReadOnly)
	}
}

// Suspended reports whether the device is suspended.
func (d *Device) Suspended() bool { return d.flags.Load()&flagSuspended != 0 }

// NoflushSuspending reports whether a noflush suspend is under way:
// targets then requeue (push back) what they can't complete instead of
// failing it.
func (d *Device) NoflushSuspending() bool { return d.flags.Load()&flagNoflushSuspending != 0 }

// Pending is the number of bios mapped and not yet ended.
func (d *Device) Pending() int64 { return d.pendingSum() }

// lock takes the suspend lock, or gives up when ctx ends.
func (d *Device) lock(ctx context.Context) error {
	select {
	case d.sema <- struct{}{}:
		return nil
	default:
	}
	select {
	case d.sema <- struct{}{}:
		return nil
	case <-ctx.Done():
		return interrupted(ctx.Err())
	}
}

func (d *Device) unlock() { <-d.sema }

// Load builds a table from text and puts it in the inactive slot,
// replacing (and destroying) any table there. Live I/O is not disturbed.
func (d *Device) Load(text string) error {
	lines, err := ParseTable(text)
	if err != nil {
		return err
	}
	return d.LoadLines(lines)
}

// LoadLines is Load for a parsed table.
func (d *Device) LoadLines(lines []TableLine) error {
	if d.flags.Load()&flagRemoved != 0 {
		return ErrRemoved
	}
	t, err := d.buildTable(lines)
	if err != nil {
		return err
	}
	return d.install(t, false)
}

// install puts t (nil: none) in the inactive slot and destroys the
// table it replaces; force skips the check that a live table with an
// immutable target takes only a table with the same target.
func (d *Device) install(t *table, force bool) error {
	d.tableMu.Lock()
	if d.flags.Load()&flagRemoved != 0 {
		d.tableMu.Unlock()
		t.destroy()
		return ErrRemoved
	}
	if live := d.live.Load(); !force && live != nil && live.immutable != nil && live.immutable != t.immutable && !t.wildcard {
		d.tableMu.Unlock()
		t.destroy()
		return fmt.Errorf("%w %s", ErrImmutable, live.immutable.Name)
	}
	old := d.inactive
	d.inactive = t
	d.tableMu.Unlock()
	old.destroy()
	return nil
}

// Clear drops the inactive table.
func (d *Device) Clear() {
	// Refused only on a removed device, whose removal emptied the slot.
	_ = d.install(nil, true)
}

// Suspend stops I/O to the targets, in the order the package doc gives
// (step 6). With noflush, targets push back what they hold (it is re-issued at
// resume); without, they may fail it. Suspending a suspended device does
// nothing. If ctx ends first the suspend undoes itself, the device stays
// live, and the error wraps ErrInterrupted and ctx.Err().
func (d *Device) Suspend(ctx context.Context, noflush bool) error {
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	return d.suspendLocked(ctx, noflush)
}

func (d *Device) suspendLocked(ctx context.Context, noflush bool) error {
	f := d.flags.Load()
	if f&flagRemoved != 0 {
		return ErrRemoved
	}
	if f&flagSuspended != 0 {
		return nil
	}
	t := d.live.Load()
	if noflush {
		d.pushMu.Lock()
		d.flags.Or(flagNoflushSuspending)
		d.pushMu.Unlock()
	}
	t.presuspend()
	if err := ctx.Err(); err != nil {
		// A failure after the flag is set must still empty pushback
		// (the kernel's flush_and_out).
		d.abortSuspend(t)
		return interrupted(err)
	}
	d.flags.Or(flagBlockIO)
	d.hookAt(hookBlocked)
	if err := d.waitDrained(ctx); err != nil {
		d.abortSuspend(t)
		return interrupted(err)
	}
	t.postsuspend()
	d.flags.Or(flagSuspended)
	d.endNoflush()
	return nil
}

// waitDrained waits until no bio is pending.
func (d *Device) waitDrained(ctx context.Context) error {
	for d.pendingSum() != 0 {
		d.hookAt(hookBeforeWait)
		select {
		case <-d.drained:
		case <-ctx.Done():
			if d.pendingSum() == 0 {
				return nil
			}
			return ctx.Err()
		}
	}
	return nil
}

// endNoflush clears NOFLUSH_SUSPENDING and merges pushback at the head of
// deferred, as one step under both locks: a requeue either made it onto
// pushback (and is merged) or sees the flag clear (and ends with EIO).
func (d *Device) endNoflush() {
	d.defMu.Lock()
	d.pushMu.Lock()
	d.flags.And(^flagNoflushSuspending)
	d.deferred.pushFrontList(&d.pushback)
	d.stats.pushback.Store(0)
	d.stats.deferred.Store(int64(d.deferred.n))
	d.pushMu.Unlock()
	d.defMu.Unlock()
}

// abortSuspend undoes a suspend that failed or was interrupted: clear the
// noflush flag (merging pushback into deferred), unblock I/O, re-issue
// deferred, undo presuspend.
func (d *Device) abortSuspend(t *table) {
	d.hookAt(hookAbort)
	d.endNoflush()
	d.flags.And(^flagBlockIO)
	d.reissueDeferred()
	t.presuspendUndo()
}

// Resume swaps in the inactive table if there is one (suspending first,
// with flush, if needed), then resumes a suspended device: all preresumes
// (an error leaves it suspended), all resumes, then the deferred bios are
// re-issued in order against the table live now. With no live table, or a
// zero-size one, it fails with EINVAL (after the swap, if any: the device
// then stays suspended). Resuming a device that isn't suspended and has no
// inactive table does nothing.
func (d *Device) Resume(ctx context.Context) error { return d.resume(ctx, false) }

// ResumeNoflush is Resume whose suspend (before a table swap) is noflush.
func (d *Device) ResumeNoflush(ctx context.Context) error { return d.resume(ctx, true) }

func (d *Device) resume(ctx context.Context, noflush bool) error {
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	if d.flags.Load()&flagRemoved != 0 {
		return ErrRemoved
	}
	d.tableMu.RLock()
	swap := d.inactive != nil
	d.tableMu.RUnlock()
	if swap {
		if err := d.suspendLocked(ctx, noflush); err != nil {
			return err
		}
		d.swapTable()
	}
	t := d.live.Load()
	if t == nil {
		return ErrNoTable
	}
	if t.size == 0 {
		return ErrZeroSize
	}
	if d.flags.Load()&flagSuspended == 0 {
		return nil
	}
	if err := t.preresume(); err != nil {
		return err
	}
	t.resume()
	d.flags.And(^(flagSuspended | flagBlockIO))
	d.reissueDeferred()
	return nil
}

// swapTable makes the inactive table live and destroys the old one; the
// device is suspended, so no bio uses either.
func (d *Device) swapTable() {
	d.tableMu.Lock()
	next := d.inactive
	if next == nil { // cleared meanwhile
		d.tableMu.Unlock()
		return
	}
	d.inactive = nil
	old := d.live.Swap(next)
	d.tableMu.Unlock()
	old.destroy()
	d.TriggerEvent()
}

// reissueDeferred maps the deferred bios again, in order: a bio with an
// Exec is posted to it, others are submitted here. Called with the suspend
// lock held, so BLOCK_IO can't be set again meanwhile; a bio posted to a
// loop that runs after a later suspend started is deferred again.
func (d *Device) reissueDeferred() {
	d.defMu.Lock()
	if d.flags.Load()&flagBlockIO != 0 {
		d.defMu.Unlock()
		return
	}
	l := d.deferred.take()
	d.stats.deferred.Store(0)
	d.defMu.Unlock()
	for b := l.pop(); b != nil; b = l.pop() {
		if b.Exec == nil {
			d.Submit(b)
			continue
		}
		bb := b
		if err := b.Exec.Post(func() { d.Submit(bb) }); err != nil {
			// The bio's loop is gone: nothing can run it there.
			d.endUnmapped(bb, ErrIO)
		}
	}
}

// endUnmapped ends b, which never reached a table (it was deferred), with
// err, counting it in the device's stats, on the calling goroutine.
func (d *Device) endUnmapped(b *Bio, err error) {
	d.shards[d.shardOf(b)].account(b, err, nanotime())
	b.End.BioEnd(b, err)
}

// EndDeferred ends every bio waiting on the deferred list with EIO and
// returns how many: for an owner that stops for good while the device is
// suspended (a daemon shutting down), so that those bios end instead of
// waiting for a resume that won't come. The device stays as it is
// (suspended, its tables in place). A bio with an Exec ends on it.
func (d *Device) EndDeferred() int {
	d.defMu.Lock()
	l := d.deferred.take()
	d.stats.deferred.Store(0)
	d.defMu.Unlock()
	n := 0
	for b := l.pop(); b != nil; b = l.pop() {
		n++
		if b.Exec != nil {
			bb := b
			if b.Exec.Post(func() { d.endUnmapped(bb, ErrIO) }) == nil {
				continue
			}
		}
		d.endUnmapped(b, ErrIO)
	}
	return n
}

// TriggerEvent bumps the event counter and wakes WaitEvent callers.
func (d *Device) TriggerEvent() {
	d.eventMu.Lock()
	d.eventNr.Add(1)
	close(d.eventCh)
	d.eventCh = make(chan struct{})
	d.eventMu.Unlock()
}

// Event is the event counter (dmsetup info's "Event number").
func (d *Device) Event() uint32 { return d.eventNr.Load() }

// WaitEvent returns the event number once it differs from after (dmsetup
// wait), or ctx.Err().
func (d *Device) WaitEvent(ctx context.Context, after uint32) (uint32, error) {
	for {
		d.eventMu.Lock()
		n, ch := d.eventNr.Load(), d.eventCh
		d.eventMu.Unlock()
		if n != after {
			return n, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return n, ctx.Err()
		}
	}
}

// Open counts a user of the device (an NBD export, a table stacked on
// it). A device with users can't be removed unless forced.
func (d *Device) Open() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.removing {
		return ErrRemoved
	}
	d.mu.open++
	return nil
}

// Close ends one Open; it never blocks, and may be called on a loop.
// The last Close of a device marked for deferred removal starts the
// removal and returns: removing suspends with flush and destroys the
// tables, which waits for I/O and for the loops the devices below run
// on, so it runs on a goroutine of its own (the kernel queues it on a
// workqueue), owned by the registry (Registry.Wait waits for it) or, for
// a standalone device, by the device (Removed). If the device is opened
// again before that goroutine removes it, it stays marked.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.mu.open == 0 {
		d.mu.Unlock()
		return ErrNotOpen
	}
	d.mu.open--
	last := d.mu.open == 0 && d.mu.deferredRemove && !d.mu.removing
	d.mu.Unlock()
	if last {
		d.bg.start(d.deferredRemoval)
	}
	return nil
}

// deferredRemoval removes a device marked for deferred removal after its
// last Close (see Close).
func (d *Device) deferredRemoval() {
	d.hookAt(hookDeferredRemoval)
	res, err := d.remove(context.Background(), false, true, true)
	switch {
	case errors.Is(err, ErrRemoved):
		// Another last Close's goroutine, or a forced Remove, was first.
	case err != nil:
		// Stay marked: the next last Close tries again.
		d.mu.Lock()
		if !d.mu.removing {
			d.mu.deferredRemove = true
		}
		d.mu.Unlock()
		d.log.Error().Err(err).Msg("deferred removal failed")
	case res == removedNow && d.reg != nil && d.reg.onDeferredRemove != nil:
		d.reg.onDeferredRemove(d)
	}
}

// Removed is closed once the device has been removed.
func (d *Device) Removed() <-chan struct{} { return d.removed }

// Remove removes the device: it suspends with flush, destroys both tables
// (releasing their devices) and leaves it without a table, so later I/O
// ends with EIO; deferred I/O ends with EIO too. An open device is EBUSY
// unless forced (an error table is swapped in first, failing outstanding
// I/O, and the device is removed under its users) or deferred (marked, and
// removed on last Close; returns nil). A device in a registry leaves it.
func (d *Device) Remove(ctx context.Context, force, deferred bool) error {
	_, err := d.remove(ctx, force, deferred, false)
	return err
}

// RemoveOrDefer is Remove with deferred set that also says which
// happened: marked is true if the device was open and is now marked for
// removal on its last Close, false if it was removed.
func (d *Device) RemoveOrDefer(ctx context.Context, force bool) (marked bool, err error) {
	res, err := d.remove(ctx, force, true, false)
	return res == markedDeferred, err
}

// What remove did.
type removeResult int

const (
	removedNow     removeResult = iota
	markedDeferred              // open: marked for removal on last Close
	notMarked                   // onlyMarked, and the mark was cancelled
)

// remove is Remove; with onlyMarked (the removal a last Close started) it
// does nothing unless the device is still marked for deferred removal,
// as the kernel's deferred-remove work skips devices whose mark was
// cancelled meanwhile.
func (d *Device) remove(ctx context.Context, force, deferred, onlyMarked bool) (removeResult, error) {
	d.mu.Lock()
	if d.mu.removing {
		d.mu.Unlock()
		return removedNow, ErrRemoved
	}
	if onlyMarked && !d.mu.deferredRemove {
		d.mu.Unlock()
		return notMarked, nil
	}
	if d.mu.open > 0 && !force {
		if deferred {
			d.mu.deferredRemove = true
			d.mu.Unlock()
			d.TriggerEvent() // Info changed: wake watchers
			return markedDeferred, nil
		}
		d.mu.Unlock()
		return removedNow, ErrBusy
	}
	d.mu.removing = true
	d.mu.deferredRemove = false
	d.mu.Unlock()
	if err := d.destroy(ctx, force); err != nil {
		d.mu.Lock()
		d.mu.removing = false
		d.mu.Unlock()
		return removedNow, err
	}
	if d.reg != nil {
		d.reg.forget(d)
	}
	close(d.removed)
	d.log.Debug().Bool("force", force).Msg("removed")
	return removedNow, nil
}

// CancelDeferredRemove clears a deferred removal (the kernel's
// @cancel_deferred_remove message). Marking and cancelling a deferred
// removal, like the removal itself, bump the event counter.
func (d *Device) CancelDeferredRemove() error {
	d.mu.Lock()
	if !d.mu.deferredRemove {
		d.mu.Unlock()
		return ErrNoDevice
	}
	d.mu.deferredRemove = false
	d.mu.Unlock()
	d.TriggerEvent()
	return nil
}

func (d *Device) destroy(ctx context.Context, force bool) error {
	if force {
		if live := d.live.Load(); live != nil && live.size > 0 {
			et, err := d.buildTable([]TableLine{{Start: 0, Len: live.size, Type: "error"}})
			if err != nil {
				et = errorTable(live.size)
			}
			if err := d.install(et, true); err != nil {
				return err
			}
			if err := d.resume(ctx, false); err != nil {
				return err
			}
		}
	}
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	if err := d.suspendLocked(ctx, false); err != nil {
		return err
	}
	d.flags.Or(flagRemoved)
	d.tableMu.Lock()
	live := d.live.Swap(nil)
	in := d.inactive
	d.inactive = nil
	d.tableMu.Unlock()
	d.flags.And(^(flagSuspended | flagBlockIO))
	d.reissueDeferred() // no table: each ends with EIO
	live.destroy()
	in.destroy()
	d.TriggerEvent()
	return nil
}

// errorTable is a one-target error table built without a registry (for
// force removal when the registry lacks an "error" type).
func errorTable(size uint64) *table {
	typ := errorType()
	t := &table{size: size, devs: &tableDevices{}, wildcard: true}
	t.targets = []tableTarget{{begin: 0, len: size, typ: &typ, target: errorTarget{}, flushClones: 1, discardClones: 1}}
	return t
}

// Info is what dmsetup info shows about a device.
type Info struct {
	Name, UUID     string
	Suspended      bool
	ReadOnly       bool
	Live, Inactive bool // which table slots are filled
	OpenCount      int
	EventNr        uint32
	NumTargets     int // of the live table
	DeferredRemove bool
}

// State is ACTIVE or SUSPENDED.
func (i Info) State() string {
	if i.Suspended {
		return "SUSPENDED"
	}
	return "ACTIVE"
}

// TablesPresent is LIVE, INACTIVE, LIVE & INACTIVE or None.
func (i Info) TablesPresent() string {
	switch {
	case i.Live && i.Inactive:
		return "LIVE & INACTIVE"
	case i.Live:
		return "LIVE"
	case i.Inactive:
		return "INACTIVE"
	}
	return "None"
}

// String formats i like dmsetup info.
func (i Info) String() string {
	var b strings.Builder
	row := func(k, v string) { fmt.Fprintf(&b, "%-19s%s\n", k, v) }
	row("Name:", i.Name)
	state := i.State()
	if i.ReadOnly {
		state += " (READ-ONLY)"
	}
	if i.DeferredRemove {
		state += " (DEFERRED REMOVE)"
	}
	row("State:", state)
	row("Tables present:", i.TablesPresent())
	row("Open count:", strconv.Itoa(i.OpenCount))
	row("Event number:", strconv.FormatUint(uint64(i.EventNr), 10))
	if i.Live {
		row("Number of targets:", strconv.Itoa(i.NumTargets))
	}
	if i.UUID != "" {
		fmt.Fprintf(&b, "UUID: %s\n", i.UUID)
	}
	return b.String()
}

// Info reports the device's state.
func (d *Device) Info() Info {
	d.mu.Lock()
	i := Info{Name: d.mu.name, UUID: d.uuid, OpenCount: d.mu.open, DeferredRemove: d.mu.deferredRemove}
	d.mu.Unlock()
	f := d.flags.Load()
	i.Suspended = f&flagSuspended != 0
	i.ReadOnly = f&flagReadOnly != 0
	i.EventNr = d.eventNr.Load()
	d.tableMu.RLock()
	if t := d.live.Load(); t != nil {
		i.Live = true
		i.NumTargets = len(t.targets)
	}
	i.Inactive = d.inactive != nil
	d.tableMu.RUnlock()
	return i
}

// Table returns the live (or inactive) table as dmsetup table prints it:
// `<start> <len> <type> <params>` per target; empty without a table.
func (d *Device) Table(inactive bool) ([]string, error) {
	d.tableMu.RLock()
	defer d.tableMu.RUnlock()
	if inactive {
		return d.inactive.lines(StatusTable), nil
	}
	return d.live.Load().lines(StatusTable), nil
}

// Status returns the live table's status lines (dmsetup status).
func (d *Device) Status() ([]string, error) {
	d.tableMu.RLock()
	defer d.tableMu.RUnlock()
	return d.live.Load().lines(StatusInfo), nil
}

// Message sends args to the live target covering sector (dmsetup
// message). "@cancel_deferred_remove" is handled by the device itself.
// EINVAL if no target covers the sector or it takes no messages.
func (d *Device) Message(ctx context.Context, sector uint64, args []string) (string, error) {
	if len(args) == 0 {
		return "", fmt.Errorf("%w: empty message", ErrBadMessage)
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if args[0] == "@cancel_deferred_remove" && len(args) == 1 {
		return "", d.CancelDeferredRemove()
	}
	d.tableMu.RLock()
	defer d.tableMu.RUnlock()
	t := d.live.Load()
	if t == nil {
		return "", fmt.Errorf("%w: no live table", ErrBadMessage)
	}
	if sector >= t.size {
		return "", fmt.Errorf("%w: sector %d is beyond the device (%d sectors)", ErrBadMessage, sector, t.size)
	}
	tt := t.find(sector)
	m, ok := tt.target.(Messager)
	if !ok {
		return "", fmt.Errorf("%w: %s target takes no messages", ErrBadMessage, tt.typ.Name)
	}
	return m.Message(args)
}

// SubmitWait submits b and waits for its end; for the slow path and tests
// (it allocates). b.End is replaced. If ctx ends first, b is canceled
// (its pieces not yet on a device end with ECANCELED) and SubmitWait
// still waits for the end: the caller owns b's memory until then.
func (d *Device) SubmitWait(ctx context.Context, b *Bio) error {
	w := &waiter{done: make(chan error, 1)}
	b.End = w
	d.Submit(b)
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		b.Cancel()
		return <-w.done
	}
}

type waiter struct{ done chan error }

func (w *waiter) BioEnd(_ *Bio, err error) { w.done <- err }

// EndioFunc adapts a function to Endio (a closure allocates: slow path
// and tests).
type EndioFunc func(b *Bio, err error)

// BioEnd calls f.
func (f EndioFunc) BioEnd(b *Bio, err error) { f(b, err) }
