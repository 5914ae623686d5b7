// Package multipath is udm's multipath target and its path checker: the
// kernel's dm-mpath (bio mode) table, status, messages, path selectors and
// failover rules, plus what multipathd does around it (checking paths,
// no_path_retry, failback, show maps/paths/topology).
//
// A map is a list of priority groups, each with a path selector and
// paths; a path is any dm.BlockDevice the table's DeviceGetter opens: a
// file or block device (dm/filedev), a dm device of the same registry
// (/dev/mapper/NAME, which is how tests put flakey, error or delay under
// a path), or a remote NBD export.
//
//	0 2097152 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 /dev/loop0 1 /dev/loop1 1
//
// # Pieces
//
//   - Spec (spec.go): the parsed table, ParseSpec and Format (the
//     kernel's rules, limits and TABLE output).
//   - Machine (machine.go): the pure state machine — path active/failed
//     and fail counts, current/next/bypassed groups, queue_if_no_path and
//     its saved value, suspend state. Events in, actions out; no I/O, no
//     locks, no clock. testdata/*.txt are scenario scripts for it.
//   - Multipath (target.go): the dm.Target. It wraps a Machine under a
//     mutex, holds the I/O that waits for a path, and publishes a
//     snapshot for the fast path.
//   - The selectors (selector.go): round-robin, queue-length,
//     service-time and historical-service-time, lock-free.
//   - mapChecker (checkmodel.go): the checker's pure model of one map —
//     polling with back-off, check deadlines, the operator's marks,
//     no_path_retry and failback. Events with their time in, actions
//     out; no I/O, no locks, no clock. testdata/checker-*.txt are its
//     scenario scripts, run over a Machine by the same runner.
//   - Checker (checker.go) and listings (show.go): multipathd's duties;
//     its mapEntry drives a mapChecker with goroutines and a Clock
//     (clock.go: the wall clock, or a test's fake one).
//
// # The snapshot
//
// Every change of the Machine (a path fails or comes back, a message, a
// suspend hook, an I/O that makes it choose a group) happens under
// Multipath.mu and ends with publishLocked, which stores a new immutable
// snapshot in an atomic pointer: whether I/O can go straight to a path
// ("ready": no group switch pending and the current group has an active
// path), the current group, and the list of its active paths. Map loads
// the pointer, has the group's selector pick one of those paths (an
// atomic counter and per-path atomic in-flight counters), and submits:
// no lock, no allocation. A snapshot that is not ready sends the I/O to
// the slow path, which takes mu, lets the Machine choose (possibly
// publishing a ready snapshot) or decide to hold, push back or fail the
// I/O. A snapshot may be stale by the time the I/O reaches the path; an
// I/O sent to a path that just failed fails there and is retried.
//
// # Life of a bio through multipath
//
//  1. The core calls Map with a clone (on the bio's loop). With a ready
//     snapshot, a path is picked, accounted (selector counters; the
//     clone's Ctx points at the path) and the clone is submitted to the
//     path's device by the target itself (MapSubmitted), so that every
//     clone it accounted for comes back through EndIO. With no usable
//     path: during a noflush suspend, MapRequeue (the core parks the bio
//     on pushback); with queue_if_no_path, the clone is held in the target
//     (MapSubmitted); otherwise MapKill (EIO).
//  2. The device ends the clone; EndIO runs (on the loop, or on a timer
//     goroutine when a deadline fired). It drops the selector counters.
//     Success and errors that are not the path's (no space, not
//     supported, invalid, read-only, medium, protection: IsPathError)
//     go to the caller, and the path stays active.
//  3. A path error (I/O error, ETIMEDOUT from the per-I/O deadline, the
//     device gone, a transport error) fails the path (fail_count++, an
//     event, one log line) and the target takes the clone back
//     (EndIOIncomplete). It is mapped again on its bio's executor (posted
//     to the loop; directly for bios without one) as in step 1: to
//     another path, held, pushed back or failed with EIO. So the caller
//     never sees a path error while another path works. Each clone
//     carries its path's epoch (Clone.CtxU; bumped at each
//     reinstatement): an error from an I/O sent before the path was
//     reinstated retries the I/O but does not fail the path again.
//  4. Held clones are mapped again, each on its own loop, when the Machine
//     says so (ActProcessQueue): a path is reinstated while none was
//     active, fail_if_no_path, or presuspend (which clears
//     queue_if_no_path after saving it, so they are pushed back under
//     noflush, failed otherwise). Resume restores queue_if_no_path. Held
//     clones count as pending in the core, so a suspend waits for them.
//
// A hung path can't stall I/O for long: each I/O on a path carries a
// deadline (Options.IODeadline, 2 s by default; an io_uring linked
// timeout on files and block devices), after which it fails with
// ETIMEDOUT, failing the path and moving the I/O.
//
// # Threading
//
// Map and EndIO run on many loops at once. A clone whose bio has an
// executor is submitted and ended only on that executor: retries and
// held clones are posted to it (allocating a closure, on the slow path
// only). The slow path, the hooks, messages and the checker run in
// ordinary goroutines and reach the fast path only through the snapshot.
//
// # The checker
//
// Checker runs multipathd's loop per live map (see its documentation).
// Maps attach when their table goes live (Resume) and detach when it is
// destroyed or replaced; new settings (SetMapConfig) replace the map's
// model too. The operator's marks (FailPath) are kept by the Checker,
// by map and path name, and outlive tables.
//
// Each map has a mapEntry: a mapChecker (the model), one goroutine that
// drives it, and one goroutine per running check. The driver's loop
// asks the model when it next wants to run (wake), arms one Clock timer
// for it, and waits for the timer, a check's result or a kick (I/O
// failed a path; the operator acted). Every step — the model deciding
// and the driver carrying out its actions on the target — runs under
// mapEntry.mu, from the driver's goroutine or, for the operator's fail
// and reinstate, from the caller's (so they are done when FailPath
// returns).
//
// # Life of a check
//
//  1. A path is due (its next check time passed): the model asks for a
//     check with a deadline, check_timeout from now. The driver records
//     the path's epoch and fail count and starts a goroutine that checks
//     it: a vanished file fails at once (gone); a device with its own
//     check (filedev's O_DIRECT read through io_uring, an NBD probe) is
//     given check_timeout and ends by itself; any other device gets a
//     one-block read through it, which waits as long as the device takes.
//  2. The result comes back to the driver's goroutine, which reads the
//     target's state and hands both to the model (checkDone). The verdict
//     is dropped if the operator failed the path meanwhile, or if the
//     path was failed or reinstated while the check ran (its epoch or
//     fail count moved: a stale verdict; checked again one base interval
//     later). Otherwise the path's check state is set (ready, faulty,
//     gone), the interval doubles if the path stayed ready and active
//     (up to max_polling_interval) or goes back to polling_interval, and
//     the model asks to reinstate a ready path that is failed (then
//     failback, if the preferred group got a path back) or to fail a
//     path that is not ready and active.
//  3. If the deadline passes first, the model gives the verdict itself
//     (faulty: "no answer in check_timeout") and asks to cancel the
//     check. A device's own check is canceled (its deadline is a backstop
//     half a timeout after the device's); a read can't be, and stays
//     outstanding: until it returns, the path's due checks fail at once
//     without sending another read. Its late result is dropped.
//  4. An I/O error on the path (the target's pathFailedByIO, maybe on a
//     loop: an atomic flag and a kick, no lock) brings the next check
//     forward to one base interval from then. An operator's path is not
//     checked at all until ReinstatePath.
//
// no_path_retry N ticks every polling interval in the same model: N
// ticks in a row without a valid path turn queueing off (held I/O fails
// with EIO), the first with one turns it on again. A deferred failback
// is one more wake-up time.
//
// # Lock order
//
//	dm.Device locks (the core calls Map/EndIO with none held; hooks run
//	  under its suspend lock, messages under its table read lock)
//	mapEntry.mu (a map's checker model and the driver's per-check
//	  tokens; held while the model's actions call the target, never
//	  taken by the target)
//	  Checker.mu (maps, per-map configuration, operator marks)
//	    dm.Device.mu (a map's current name, Device.Name)
//	  Multipath.mu (the Machine, the held list) — a leaf: the target
//	    never submits, ends a clone, triggers an event, logs or calls the
//	    checker with it held
//	  dm.Device.eventMu (the target's TriggerEvent, after it released
//	    Multipath.mu)
//
// Checker.mu is never held while starting or stopping a map's goroutines
// or calling the target; stopping a map (cancel, then wait for its
// goroutines) happens with no lock held. The fast path (Map, the
// selectors, EndIO of a healthy path) takes no lock at all; EndIO of a
// failed path takes Multipath.mu and tells the checker lock-free.
//
// # Deviations from the kernel
//
//   - Path names print as given in the table (the kernel prints
//     major:minor), quoted with dm.QuoteArg.
//   - The group choice is lazy as in the kernel, but a noflush suspend
//     pushes I/O back even if queue_if_no_path was turned on by a message
//     after presuspend (holding it would stop the suspend from draining).
//   - The TABLE status prints queue_if_no_path while a suspend has saved
//     it, so that a table read during a suspend loads back the same.
//   - Hardware handlers are accepted (printed back in request mode,
//     dropped in bio mode as the kernel does) and ignored, with a
//     warning; pg_init_retries and pg_init_delay_msecs are kept and
//     printed; there is never a pg_init.
package multipath
