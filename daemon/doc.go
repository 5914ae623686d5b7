// Package daemon is udm's daemon: it wires the uring loops, the dm
// registry (with the multipath target and its path checker), the NBD
// server and the NBD client paths together, and adds what an operator
// needs around them — the control API (HTTP+JSON on a Unix socket) and
// its client, the defaults both share, state persistence across
// restarts, Prometheus metrics, structured logs, and the demo device.
//
// # State
//
// Every device has a JSON file in <state dir>/devices/ (DeviceState),
// rewritten atomically after each change (write, fsync, rename, fsync of
// the directory). At start the daemon rebuilds every device from them,
// lower devices before the ones stacked on them; a file that can't be
// used is renamed aside (<file>.corrupt-<unix time>) and logged, and the
// daemon goes on.
//
// # Shutdown
//
// On the first SIGTERM or SIGINT (cmd/udm turns them into a cancelled
// context for Run) the listeners stop, NBD connections get replies for
// the requests they have in flight, every device gets an empty flush,
// the state is saved and the loops close. cmd/udm exits at once on a
// second signal.
//
// # Lock order
//
// Daemon.saveMu, then the dm locks (Registry, Device). Device operations
// (suspend, which may wait for I/O) run with no daemon lock held.
package daemon
