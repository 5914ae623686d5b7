// Package wire is the NBD protocol (fixed newstyle, NetworkBlockDevice
// doc/proto.md) without I/O: its magics and constants, the encoding and
// decoding of requests, replies and options, the mapping between errnos
// and NBD errors, and the server's side of the handshake as a state
// machine (Handshake) with a thin driver over a stream (Negotiate). It
// starts no goroutines and holds no locks.
package wire
