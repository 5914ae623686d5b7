// Package conformance holds no code: its tests drive udm's NBD server,
// nbdkit and nbd-server with the same libnbd cases and compare what each
// answers (see conformance_test.go).
package conformance
