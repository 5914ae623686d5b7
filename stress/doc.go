// Package stress is udm's control-plane torture test: a seeded run of
// parallel workers against a real `udm serve`, with kill -9 and restart
// of the daemon at random points, checked against a model of what the
// daemon acknowledged.
//
// # What runs
//
// Run starts the daemon (a subprocess, on a scratch state dir on tmpfs,
// NBD on a loopback port and a Unix socket, metrics on a loopback port,
// one or two uring loops drawn from the seed at every start). Each
// worker owns a few device slots; a slot has one backing file with two
// hard links, so that every table a slot loads — linear, two linear
// targets, multipath with one or two groups over the three names — maps
// the same data, except the ones that don't (zero, error, a shifted
// linear) which a slot loads only while no NBD client is attached. A
// worker draws its operations from its own seeded generator: create,
// load, clear, suspend (flush and noflush), resume (flush and noflush),
// remove (plain, forced, deferred), fail and reinstate path, target
// messages, checker settings, attaching and detaching NBD clients, and
// comparing a device with the model. An attached slot runs NBD clients
// (udm's nbd/client) that write a pattern carrying the slot, block,
// sector and a sequence number, and read blocks back and check them.
// The controller kills the daemon with SIGKILL after a seeded number of
// operations, while workers and clients are mid-request (or, one time
// in eight, stops it with SIGTERM, which must end within CallBound), and
// starts it again.
//
// # Invariants
//
//   - Every control call answers within Config.CallBound and every NBD
//     request within Config.IOBound. A hang is a violation: the daemon
//     gets SIGQUIT (its goroutine dump goes to its log, which the report
//     quotes) and the run stops.
//   - A call that fails leaves the device as it was; a call that
//     succeeds leaves it as the model says, checked whenever a worker
//     compares a slot and after every restart.
//   - After a restart every device, its live and inactive tables, its
//     suspend state, its operator-failed paths and its checker settings
//     are what was acknowledged before the kill. An operation whose
//     reply did not arrive is in doubt: either outcome is accepted (and
//     the one found becomes the model). A device removed (or marked for
//     deferred removal, whose clients the kill closed) does not come
//     back.
//   - Data: a sector reads back as the last acknowledged write or one of
//     the writes in doubt since (or zeroes if never written), through NBD
//     while the daemon runs and from the backing file after every kill.
//   - When the NBD clients leave, the daemon's open fds
//     (/proc/PID/fd) and goroutines (go_goroutines from its metrics)
//     return to what they were before the clients came (Config.FDSlack,
//     Config.GoroutineSlack), and a daemon that ran the workers' history
//     holds no more than one restarted on the same state.
//
// Multipath tables are compared without queue_if_no_path and the
// initial group, which a message, the checker's no_path_retry and
// switch_group change at run time as in the kernel. Operator-failed
// paths follow multipathd's rule: a path failed by hand stays failed
// until reinstated, across reloads and restarts.
//
// # Reproducing
//
// The seed fixes each worker's choices, the kill points and the loop
// counts; the interleaving of workers is the scheduler's. A failure
// prints the seed and the tail of the operation history.
//
// # Locks
//
// Lock order: run.world (workers hold it shared for one operation, the
// controller exclusively across a kill, restart and check; a slot's
// model belongs to whoever holds it), then any one of book.mu,
// ioSet.mu, run.mu and run.histMu (none is held while taking another).
// NBD client goroutines never take run.world: a request held by a
// suspended device must not stop the controller.
package stress
