// Package api is the client side of the daemon's control API: the
// request and reply types (shared with the daemon, which serves them),
// the HTTP client that talks to a daemon on its Unix socket, the
// defaults both sides use to find each other (state dir, control socket,
// $UDM_SOCKET), and CLI, which runs the dmsetup- and multipathd-style
// verbs against a daemon and prints what those tools print.
//
// It imports neither the daemon nor the NBD server, so the drills and
// the command line can talk to a daemon without linking one in.
//
// # Threading
//
// A Client may be used by many goroutines at once (it is an
// http.Client over a Unix socket); it holds no locks of its own.
package api
