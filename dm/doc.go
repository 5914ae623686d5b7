// Package dm is udm's device-mapper core: bios and clones, the target
// interfaces, tables in the kernel's syntax, devices with suspend/resume
// and the noflush pushback list, the registry of named devices, the simple
// targets (linear, striped, error, zero, flakey, delay), a stacking
// adapter (test devices are in dm/dmtest).
//
// # Life of a bio
//
// A submitter (the NBD server, on its loop) fills a Bio it owns and calls
// Device.Submit:
//
//  1. pending++ (one atomic add on the submitting loop's shard of the
//     device's counters), then BLOCK_IO is read. If it is set (a suspend
//     is under way or done) pending is given back and the bio goes on the
//     deferred list — BLOCK_IO is read again under the deferred
//     lock, so a bio can't be left there by a resume that just cleared it.
//  2. The live table is loaded (an atomic pointer to an immutable table)
//     and the bio is split at target boundaries and at each target's
//     MaxIOSectors (counted from the target's start); an empty flush gets
//     NumFlushClones clones per target. The first clone is embedded in the
//     bio, others come from a sync.Pool: no allocation. The bio holds one
//     reference for the splitting code plus one per clone, so clones that
//     end synchronously inside Map cannot end the bio early.
//  3. Map decides per clone: Remapped (the core submits it to c.Dev),
//     Submitted (the target holds it and ends it later), Requeue, Kill. A
//     clone of a canceled bio that has not reached a device ends with
//     ECANCELED.
//  4. The device ends the clone with Clone.End, on any goroutine; the
//     target's EndIO sees it first (Done, Requeue, or Incomplete: taken
//     back for a retry). Targets end clones they hold with Clone.Finish.
//  5. The clone's error is recorded on the bio (first errno wins; a
//     Requeue supersedes errors in either order). When the last reference
//     goes, the bio either goes on pushback (it asked for a requeue and
//     NOFLUSH_SUSPENDING is set: checked under the pushback spinlock) or
//     ends: b.End.BioEnd(b, err) with err nil or a syscall.Errno (a
//     requeue outside a noflush suspend is EIO). Then pending-- on the
//     same shard, waking a suspend waiting for the drain. (So a bio's End
//     runs just before it stops counting as pending: a suspend that
//     returned has seen every End of the bios it waited for.)
//  6. Suspend (as the kernel's dm core): set NOFLUSH_SUSPENDING (noflush),
//     presuspend targets, set BLOCK_IO, wait for pending == 0,
//     postsuspend, SUSPENDED, then clear NOFLUSH_SUSPENDING and merge
//     pushback at the head of deferred in one step under both locks.
//     Resume (after an optional table swap): preresume all, resume all,
//     clear BLOCK_IO, re-issue deferred in order against the table live
//     now — a bio with an Exec is posted to its loop, others are submitted
//     from the resuming goroutine. An interrupted or failed suspend
//     clears the flag and merges pushback the same way, clears BLOCK_IO,
//     re-issues deferred, and undoes presuspend.
//
// At any moment a bio is in exactly one of: in flight (counted in
// pending), deferred, pushback, or ended — and it ends exactly once.
//
// # Lock order
//
//	Registry.mu (name map; held only to read or change it, and
//	  Device.mu under it to read a name)
//	  Device.sema (the suspend lock; taken with a context) — upper
//	  device before lower when tables stack
//	    Device.tableMu (table slots; read-held by Status/Table/Message)
//	      devPool.mu, tableDevices.mu
//	    Device.mu (open count, removal flags)
//	    Device.defMu (deferred list)
//	      Device.pushMu (spinlock: pushback list and NOFLUSH_SUSPENDING)
//	    Device.eventMu (leaf)
//
// No lock of the core is held while it calls a bio's Endio, a target's
// Map or EndIO, or a device's Submit — except the suspend lock, which
// Resume (and an interrupted Suspend) hold while they re-issue deferred
// bios: those without an Exec are mapped, and may end, right there. So an
// Endio must not suspend, resume or remove the device of its bio (it runs
// on a loop anyway, where nothing may block). Target hooks (presuspend, resume,
// ...) run under sema only; messages under tableMu (read). Tables are
// built and destroyed with no device lock held.
//
// # What may run on a loop
//
// A loop runs every completion and posted function of its connections
// and devices inline, so nothing there may wait: not for I/O, not for a
// lock held across I/O, not for a loop (uring refuses Call and Close on
// a loop's thread with uring.ErrCallOnLoop). These are called on loops
// and never block: Device.Submit, Clone.End and Clone.Finish, a bio's
// Endio, a target's Map and EndIO, Device.Open and Device.Close (a last
// Close that removes the device hands the removal to a goroutine; see
// Close), TriggerEvent, EndDeferred, and the readers (Info, Stats, Size,
// Table, Status). They take only leaf locks held for a few instructions
// (defMu, pushMu, eventMu, Device.mu, a target's own). Never on a loop:
// Suspend, Resume, Remove and RemoveOrDefer (they wait for I/O to drain),
// Load, LoadLines and Clear (they build and destroy tables, which open
// and close devices: a file device's Close waits for the loops it is
// registered on), Message (a target may act on its devices), SubmitWait,
// WaitEvent, WaitRemoval, Registry.Create, Registry.Remove,
// Registry.RemoveAll and Registry.Wait. Work a loop needs from these goes
// to a goroutine whose owner waits for it, as the removal a last Close
// starts goes to the registry's (Registry.Wait).
//
// # Concurrency of the fast path
//
// Submit and the completion path take no mutex that unrelated I/O also
// needs, and write no cache line that another loop writes: the pending
// count, the I/O counters and the latency histograms are sharded by the
// bio's executor ID (uring.Loop has one; BenchmarkPending and
// BenchmarkSubmit/linear-4k-parallel show why: with two loops, one shared
// atomic costs 19 ns per bio, the sharded counter 5.3 ns), the table is an atomic pointer, and the deferred lock and the
// pushback spinlock are touched only while a suspend is under way. A
// suspend sums the shards; that is sound because a bio is counted in one
// shard from submission to end.
package dm
