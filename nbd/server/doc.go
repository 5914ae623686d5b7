// Package nbd speaks the NBD fixed-newstyle protocol
// (NetworkBlockDevice doc/proto.md): a server that exports dm devices,
// running its connections on the uring loops, and a client so that a
// multipath path can be a remote export (nbd://host:port/export or
// nbd+unix:///export?socket=PATH).
package server
