// Package daemon is udm's daemon: it wires the uring loops, the dm
// registry (with the multipath target and its path checker), the NBD
// server and the NBD client paths together, and adds what an operator
// needs around them — the control API (HTTP+JSON on a Unix socket; its
// types, client and defaults are package daemon/api), state persistence
// across restarts, Prometheus metrics, structured logs, and the demo
// device.
//
// # State
//
// Every device has a JSON file in <state dir>/devices/ (DeviceState),
// rewritten atomically (write, fsync, rename, fsync of the directory)
// before each change is acknowledged; an operation whose state can't be
// written fails and is undone (persist.go). At start the daemon rebuilds
// every device from them, lower devices before the ones stacked on them,
// each as far as it can: a multipath path that can't be opened comes up
// failed (absentPath); a table that doesn't load is left out and kept as
// pending, which `udm info` reports and the state file keeps. Only a file
// that can't be parsed is renamed aside (<file>.corrupt-<unix time>) and
// logged, and the daemon goes on.
//
// # Configuration file
//
// Config.ConfigFile declares devices as multipath.conf declares maps to
// multipathd (conffile.go has the format). It is applied after the
// state dir is restored, and again by Reconfigure (udm reconfigure,
// SIGHUP), which reconciles the devices with it (reconfigure.go): it
// creates what is new, changes what differs through a noflush suspend,
// load and resume, leaves the rest alone, and removes a device it made
// and no longer names only when nothing has it open.
//
// # Shutdown
//
// On the first SIGTERM or SIGINT (cmd/udm turns them into a cancelled
// context for Run), in order:
//
//  1. the control and metrics servers stop (requests under way get up
//     to ShutdownGrace) and every device's state is saved: what comes
//     back at restart is what was last acknowledged, before the steps
//     below change anything;
//  2. the NBD listeners close and connections take no new requests;
//     those in flight get replies as they finish, for up to
//     ShutdownGrace, after which the connections are closed without
//     the replies still due;
//  3. I/O that only the daemon could ever complete is failed with EIO
//     once it has been held HeldGrace (or at once, if the NBD requests
//     were done first): every multipath map stops queueing (the
//     fail_if_no_path message), so what a map without a usable path
//     holds fails, and suspended devices end what is deferred on them.
//     That is what the kernel does with such I/O when the device is
//     removed (and what multipathd has it do when multipathd stops,
//     queue_without_daemon no): once the daemon is gone no path can come
//     back and no resume can come, so the I/O would never end, and a
//     client that gets EIO knows the write did not happen, where a
//     closed connection leaves it guessing. The saved state keeps
//     queue_if_no_path and the suspension: at restart the maps queue
//     again and the devices come back suspended;
//  4. removals that last closes started (deferred removals, whose
//     connections just closed) finish, for up to FlushGrace, deleting
//     their state;
//  5. every live device gets an empty flush, all at once, each bounded
//     by FlushGrace; a flush that fails (a map with no path: EIO) or
//     does not finish is logged for that device only;
//  6. the path checker and the loops stop.
//
// Every step is bounded, so a shutdown is too; one whose only unfinished
// I/O is held takes about HeldGrace. The exception is I/O stuck in a
// device below that has no deadline: its connection waits for it to
// end. cmd/udm exits at once on a second signal.
//
// # Lock order
//
// Daemon.conf.mu, then Daemon.saveMu, then the dm locks (Registry,
// Device) and the checker's (a snapshot reads operator marks). Device
// operations (suspend, which may wait for I/O) run with no daemon lock
// held, except conf.mu through a reconfigure: only reconfigures and the
// effective configuration's readers take it. pendingSet.mu,
// restoring.mu and mpath.mu are leaves; absentPath.mu is held while its
// device opens, with no other lock.
package daemon
