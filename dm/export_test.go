package dm

import "time"

// What the tests in package dm_test (which use dm/dmtest, so cannot be
// in package dm) reach inside the package.

// HookPoint names a place in Device where a test hook runs (SetHook).
type HookPoint = hookPoint

const (
	HookBeforePushback  = hookBeforePushback
	HookBlocked         = hookBlocked
	HookBeforeWait      = hookBeforeWait
	HookAbort           = hookAbort
	HookDefer           = hookDefer
	HookDeferredRemoval = hookDeferredRemoval
)

// SetHook installs (or, with nil, removes) the test hook.
func (d *Device) SetHook(fn func(HookPoint)) { d.setHook(fn) }

const (
	FlagBlockIO           = flagBlockIO
	FlagNoflushSuspending = flagNoflushSuspending
	FlagSuspended         = flagSuspended
)

// Flags are the device's state flags (Flag...).
func (d *Device) Flags() uint32 { return d.flags.Load() }

// PendingSum is the sum of the pending counts of the shards.
func (d *Device) PendingSum() int64 { return d.pendingSum() }

// ShardOps is how many bios of op the shard of b's executor counted.
func (d *Device) ShardOps(b *Bio, op Op) uint64 { return uint64(d.shards[d.shardOf(b)].ops[op].Load()) }

// LiveTargets are the targets of the live table (nil: none).
func (d *Device) LiveTargets() []Target {
	tab := d.live.Load()
	if tab == nil {
		return nil
	}
	var ts []Target
	for _, t := range tab.targets {
		ts = append(ts, t.target)
	}
	return ts
}

// StartStamp is the latency stamp of b (0 once it ended).
func (b *Bio) StartStamp() int64 { return b.core.start }

// Lower is the device under a linear target.
func (l *linear) Lower() BlockDevice { return l.dev }

// SetClock gives a flakey target a clock and returns its start.
func (f *flakey) SetClock(now func() time.Time) time.Time {
	f.now = now
	return f.start
}

type (
	IDExecutor  = idExecutor
	CloserFunc  = closerFunc
	NopCloser   = nopCloser
	ErrorTarget = errorTarget
	ZeroTarget  = zeroTarget
	Linear      = linear
	Flakey      = flakey
)

const StripeErrorThreshold = stripeErrorThreshold

var NewLinear = newLinear
