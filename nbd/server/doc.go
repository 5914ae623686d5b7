// Package server exports dm devices over NBD (fixed newstyle, structured
// replies, base:allocation), with each connection's transmission phase
// confined to a uring loop.
//
// # What runs where
//
// Serve's accept loop and one goroutine per new connection run the
// handshake (wire.Negotiate, bounded by Config.HandshakeTimeout) with
// ordinary blocking socket I/O. When it settles on an export, the socket
// is duplicated, made non-blocking and handed to a loop (round robin over
// Config.Loops) with Loop.Post; from then on everything of that
// connection runs on that loop and only there: receives, parsing,
// dm.Device.Submit, the bios' ends, the replies' sends, the gather timer
// (pace.go) and its teardown. A conn and its request slots are touched by
// no other goroutine, so they need no lock.
//
// Nothing on the loop blocks: socket I/O is io_uring RECV and SENDMSG
// submitted on the loop, the device's bios end on the loop (Exec is the
// loop), and data buffers come from the loop's arena (TryGet: a failed
// mmap is ENOMEM for that request, never a wait). BLOCK_STATUS, which may
// have to ask several devices for their holes, is queued to the server's
// few status workers (status.go), which post the replies back to the
// loops. Shutdown and Close reach a connection only by posting to its
// loop.
//
// # The protocol's corners
//
// A refused request's payload is read and dropped before its error
// reply. NBD_CMD_DISC, or the client shutting its side, ends the reading:
// what was received is still served and every reply sent, then the
// connection closes. A client that asked for the block sizes (NBD_INFO_
// BLOCK_SIZE in NBD_OPT_GO) is held to 512-byte alignment; any other may
// send any offset and length: such a read goes through a buffer of whole
// sectors, such a write (or write-zeroes) reads the partial sectors at
// its ends and writes whole ones, alone among the connection's writes so
// that none is lost (conn.order, a dm.WriteOrder).
//
// A TLS connection (Config.TLSMode, STARTTLS in the handshake) takes the
// same path: the ring receives and sends its ciphertext, and crypto/tls
// decrypts and encrypts the records in memory on the loop (tlsring.go),
// never blocking: its network side is a buffer.
//
// # Locks
//
// There are two mutexes, and neither nests with the other or any lock.
// Server.mu guards the sets of listeners, handshaking sockets and
// connections, and the closed flag. It is taken
// by Serve, the handshake goroutines, Shutdown/Close, and on the loop when
// a connection ends (connDone); so it is held only over map updates and,
// in stop, the close(2) of listeners and handshaking sockets — never
// across a blocking call, and nothing else is locked while it is held (it
// nests with no other lock). statusPool.mu guards the BLOCK_STATUS queue:
// a loop or a status worker holds it only to add or take a job. The
// counters (Stats) are atomics. (A tls.Conn has mutexes of its own; on
// the loop only the loop takes them, and never across I/O.)
package server
