// Package perf is udm's load generator and benchmark harness: workloads
// (sequential and random reads and writes, mixes) with optional data
// verification, run on uring loops against an Engine (a raw file or block
// device, a dm device in process, an NBD export), with per-I/O latency
// in HDR histograms. It also runs fio and reads its JSON, so the same
// Result type describes both sides of a comparison.
//
// The generator follows the fast path's rules: each loop runs a worker
// that keeps Depth I/Os in flight from the loop thread and records each
// completion inline, so the harness adds no goroutine hop of its own.
//
// The pieces:
//
//   - Config and Run: the generator (perf.go); Result, its medians and
//     its table (result.go); Latency from the histograms (hist.go).
//   - Engines: FileEngine (a file or block device through a loop, raw.go),
//     DMEngine and TableEngine (a dm device in process, bypassing NBD,
//     dmengine.go), NBDEngine (an export, through udm's client, nbd.go).
//   - fio: FioJob, RunFio and ParseFioJSON (fio.go).
//   - Matrix: contenders (in process, fio, NBD servers run as their own
//     processes with their CPU read from /proc) × workloads, interleaved,
//     the order rotated between repetitions, medians and ratios
//     (matrix.go, servers.go). UringSuite is make bench-uring, FullSuite
//     make bench (suites.go, full.go).
//   - The report: BENCHMARKS.md with its targets checked (EvaluateTargets),
//     JSON and latency-percentile SVGs (benchmd.go, plot.go).
//   - ServeFloor: the minimal busy-polling NBD server make bench measures
//     as a reference (floor.go).
//
// Lock order: verifier.mu is the package's only mutex and a leaf: it
// guards the list of verification failures, is taken on the loop that
// found the mismatch only to append to it (no I/O and no other lock
// under it) and by Run to copy it at the end. Everything else the
// workers share is per loop or atomic.
package perf
