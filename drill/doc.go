// Package drill runs failover drills: a verified workload against a
// multipath device of a real `udm serve` while a fault schedule plays,
// then a verdict (PASS or FAIL, and why in one line) and a report — a
// text summary, JSON, and an SVG timeline of IOPS, p99 latency and path
// states with the faults as markers. `udm drill` is its command.
//
// The real-filesystem drill (RealFS, `udm drill real-fs`) is apart: it
// runs in the process (loops, registry, the FUSE frontend of package
// fuse), puts ext4 on a multipath device through a loop device over its
// FUSE file, and checks the filesystem (tar extracts and files against a
// sha256 manifest, fio verify, e2fsck, the kernel log) through path
// failures and a noflush reload; see realfs.go.
//
// # The environment
//
// A drill starts `udm serve` (its own state dir, control socket and free
// NBD port, --no-demo) unless Options.Control names a running daemon, and
// talks to it only through the control API. Every path reaches the same
// data, one backing file on tmpfs:
//
//   - dm paths are dm devices of the daemon, /dev/mapper/drill-p0 =
//     `linear` over the file; faults swap that layer (load, then resume)
//     for `error`, `flakey` or `delay` (an hour: a hang), and "restore"
//     swaps linear back;
//   - file paths are hard links to the file, opened directly; "vanish"
//     removes the link (the checker marks the path gone);
//   - remote paths are NBD exports of a `udm serve` (or nbdkit) running in
//     a network namespace of their own behind a veth pair with link-local
//     addresses (see netns.go: nothing leaves the machine); "cut" sets the
//     link down, "hang" stops the server, "vanish" kills it.
//
// The map is `multipath` over the paths not marked spare, queue_if_no_path
// unless the schedule says otherwise, with the drill's checker settings
// (DefaultChecker: polling_interval 200ms, check_timeout 500ms,
// io_deadline 1s, no_path_retry queue) set through the control API.
//
// The workload is perf's (udm's NBD client, random 4 KiB reads and writes
// at depth 16, every read checked against what was acknowledged, every
// written block read back after the run) or fio's nbd engine with
// verify=crc32c (Options.Fio). The drill polls the map's path states
// every 100 ms (and every 20 ms while an await waits).
//
// # Schedules
//
// A schedule is text, one directive or event a line, # to the end of a
// line is a comment. Directives come first:
//
//	path NAME dm|file|remote [spare]   (default: path p0 dm, path p1 dm)
//	features queue_if_no_path|none     (default queue_if_no_path)
//	selector round-robin|queue-length|service-time|historical-service-time
//	checker KEY=VALUE...               (udm checker's keys)
//	remote udm|udm-tls|nbdkit          (the server of remote paths; udm-tls:
//	                                    TLS with client certificates)
//	duration D                         (the workload runs at least D)
//	tail D                             (and D after the last event; 1s)
//
// An event is TIME ACTION ARGS: TIME is from the workload's start (1.5s)
// or, with +, from the end of the event above (+0, +500ms); an event never
// starts before the one above has ended. Actions (udm drill --actions):
//
//	fail-path P, reinstate-path P      dmsetup messages to the map
//	operator-fail P, operator-reinstate P   udm fail/reinstate path
//	error P, flakey P UP DOWN [FEAT...], hang P, restore P
//	vanish P, cut P, uncut P
//	suspend [noflush], resume, load P..., storm N [noflush] [every D]
//	restart                            SIGKILL the daemon, start it again
//	message ARGS..., checker KEY=VALUE...
//	await P failed|active | all-failed | queued | queueing-off | queueing-on [within D]
//	expect-errors [ERRNO...] | expect-errors off
//
// I/O errors are unexpected unless they fall in an expect-errors window
// (plus ErrorGrace) with an expected errno (EIO by default). An await that
// times out, or any action that fails, fails the drill.
//
// # Measurements and verdict
//
// Everything is measured from the client's side and the daemon's path
// listing: I/O errors (expected and unexpected, each described with its
// operation, offset, time and errno), the longest I/O and the longest time
// without a completion, and for every fault the time until the path was
// seen failed, the time until I/O ran at half the baseline rate again on
// the other paths (failover), and the time from its repair until the path
// was active again. Analyze is a pure function of the Record; its generic
// checks (no unexpected error, data verified, schedule played, no I/O left
// hanging) and a scenario's own checks make the verdict.
//
// The built-in Scenarios are seven local drills, the remote drill and a
// suspend/resume storm; each has a short form (seconds, run by go test)
// and a full form (make drill).
//
// Lock order: there is none to keep, as no two locks are ever held at
// once. The drill runs in goroutines of its own (the workload, the path
// poller, the schedule), none of them on a uring loop. The lock in play
// guards the path-state samples the poller and the awaits append, and
// fioRunner.mu guards fio's output as the two goroutines reading its
// stdout and stderr collect it; each is held only to append or copy.
package drill
