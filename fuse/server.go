package fuse

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"udm/dm"
	"udm/uring"
)

// Devices is what a Server shows: dm devices by name. *dm.Registry is one.
type Devices interface {
	Get(name string) (*dm.Device, error)
	List() []string
}

// Transport selects how requests travel between the kernel and the server.
type Transport int

const (
	// Auto uses FUSE over io_uring when the kernel offers it, else Classic.
	Auto Transport = iota
	// Classic reads requests from /dev/fuse and writes replies to it, as
	// READV/WRITEV operations on the loops.
	Classic
	// IOUring registers ring entries with the kernel (FUSE_IO_URING_CMD_*
	// as URING_CMD operations on the loops); Mount fails without it.
	IOUring
)

func (t Transport) String() string {
	switch t {
	case Classic:
		return "classic"
	case IOUring:
		return "io_uring"
	}
	return "auto"
}

// Config configures a Server.
type Config struct {
	// Dir is the mount point (an existing directory).
	Dir     string
	Devices Devices
	// Loops serve the requests; each has its own request slots and
	// submits the bios of the requests it took, so a request runs from
	// the kernel through dm and back on one loop.
	Loops []*uring.Loop
	Log   zerolog.Logger
	// MaxWrite is the largest READ or WRITE the kernel sends (default
	// 1 MiB; a multiple of the page size).
	MaxWrite int
	// Slots is the number of requests each loop can hold at once
	// through /dev/fuse (default 16); with FUSE over io_uring, as many
	// entries of each kernel ring queue have buffers of the loop's
	// arena.
	Slots int
	// RingSlots is the number of entries of each kernel ring queue of an
	// online CPU (default 128, a loop device's queue depth; at least
	// Slots). The kernel gives a request only to the queue of the CPU
	// that submitted it and to no other, and hands requests waiting in a
	// queue only to entries that come back from a commit, so one queue
	// must be able to carry a whole loop device's depth from the start.
	// The entries beyond Slots have buffers of their own, mapped but not
	// touched until the kernel copies a payload there: the kernel reuses
	// the entry answered last first, so they fill only as deep as the
	// load goes.
	RingSlots int
	// Transport (default Auto).
	Transport Transport
}

// DefaultRingSlots is Config.RingSlots's default.
const DefaultRingSlots = 128

// DefaultMaxWrite is Config.MaxWrite's default.
const DefaultMaxWrite = 1 << 20

// Server is a mounted FUSE filesystem in which every device of
// Config.Devices is a regular file of the device's size.
type Server struct {
	cfg Config
	log zerolog.Logger
	fd  int
	dev uint64 // st_dev of the mount
	// mtime is every file's times: when the mount was made.
	mtime uint64

	mu      sync.Mutex
	nodes   map[uint64]*node // guarded by mu
	byName  map[string]*node // guarded by mu
	nextID  uint64           // guarded by mu
	nextFh  uint64           // guarded by mu
	handles atomic.Pointer[map[uint64]*handle]

	transport atomic.Int32 // Transport settled at INIT (0 until then)
	initOnce  sync.Once
	initDone  chan struct{}
	initErr   error // set before initDone closes
	queues    []*queue
	live      sync.WaitGroup // slots not stopped
	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

// Stats are the server's counters, summed over its loops.
type Stats struct {
	Requests uint64 // requests taken from the kernel
	// RingRequests are those of them that came through io_uring entries.
	RingRequests uint64
	Errors       uint64 // replies carrying an error (but ENOSYS: not offered)
	Bios         uint64 // bios submitted
	// Held is the requests the server holds now (taken from the kernel,
	// not yet answered); Peak the most one loop has held at once.
	Held, Peak uint64
}

type node struct {
	id      uint64
	name    string
	dev     *dm.Device
	lookups uint64
	wt      wtrack // the device's writes in flight through this mount
}

type handle struct {
	node *node
	dev  *dm.Device
}

const rootID = 1

// Mount opens /dev/fuse, mounts it at cfg.Dir and starts serving on the
// loops. The kernel's INIT is answered on a loop; Mount returns once it
// has been, so the files are there when it returns.
func Mount(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Devices == nil || len(cfg.Loops) == 0 {
		return nil, errors.New("fuse: Config needs Devices and Loops")
	}
	if cfg.MaxWrite == 0 {
		cfg.MaxWrite = DefaultMaxWrite
	}
	if cfg.MaxWrite < 64<<10 || cfg.MaxWrite%uring.PageSize != 0 || cfg.MaxWrite > 16<<20 {
		return nil, fmt.Errorf("fuse: MaxWrite %d: want a multiple of 4 KiB from 64 KiB to 16 MiB", cfg.MaxWrite)
	}
	if cfg.Slots <= 0 {
		cfg.Slots = 16
	}
	if cfg.RingSlots <= 0 {
		cfg.RingSlots = DefaultRingSlots
	}
	cfg.RingSlots = max(cfg.RingSlots, cfg.Slots)
	fd, err := openDev()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: cfg.Log, fd: fd,
		nodes: map[uint64]*node{}, byName: map[string]*node{}, nextID: rootID + 1, nextFh: 1,
	}
	s.mtime = uint64(time.Now().Unix())
	s.handles.Store(&map[uint64]*handle{})
	s.initDone = make(chan struct{})
	if err := mount(fd, cfg.Dir, cfg.MaxWrite); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// stat(2) of the mount point would wait for INIT, which no loop
	// reads yet: the mount's device number comes from mountinfo.
	s.dev = mountDev(cfg.Dir)
	for i, l := range cfg.Loops {
		s.queues = append(s.queues, &queue{s: s, l: l, id: i, fdIdx: -1})
		if err := l.Call(func() { s.queues[i].sqe128 = l.Ring().SQE128() }); err != nil {
			s.abort()
			return nil, err
		}
	}
	for _, q := range s.queues {
		l := q.l
		var qerr error
		if err := l.Call(func() { qerr = q.start() }); err != nil {
			qerr = err
		}
		if qerr != nil {
			s.abort()
			return nil, fmt.Errorf("fuse: start on loop %d: %w", l.ID(), qerr)
		}
	}
	select {
	case <-s.initDone:
	case <-ctx.Done():
		s.abort()
		return nil, ctx.Err()
	}
	if s.initErr != nil {
		s.abort()
		return nil, s.initErr
	}
	if s.Transport() == IOUring {
		s.startRing()
	}
	s.log.Info().Str("dir", cfg.Dir).Str("transport", s.Transport().String()).Int("max_write", cfg.MaxWrite).
		Int("loops", len(cfg.Loops)).Msg("fuse: mounted")
	return s, nil
}

// Transport is the transport settled at INIT.
func (s *Server) Transport() Transport { return Transport(s.transport.Load()) }

// Dir is the mount point.
func (s *Server) Dir() string { return s.cfg.Dir }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	var st Stats
	for _, q := range s.queues {
		st.Requests += q.requests.Load()
		st.RingRequests += q.ringReqs.Load()
		st.Errors += q.errors.Load()
		st.Bios += q.bios.Load()
		st.Held += q.held.Load()
		st.Peak = max(st.Peak, q.peak.Load())
	}
	return st
}

func (s *Server) abort() {
	s.closing.Store(true)
	unmount(s.cfg.Dir)
	abortConn(s.dev)
	s.stopQueues()
	s.live.Wait()
	s.finish()
}

// Close unmounts the filesystem and stops serving. If a user (a loop
// device) still holds a file, the mount is detached lazily and the FUSE
// connection aborted, so that user's I/O fails from then on (ENOTCONN)
// rather than waiting for a server that is gone; busy reports that.
// Close waits for the requests in flight to end (a suspended device's
// bios end when it resumes) until ctx ends.
func (s *Server) Close(ctx context.Context) (busy bool, err error) {
	s.closeOnce.Do(func() {
		s.closing.Store(true)
		busy, s.closeErr = unmount(s.cfg.Dir)
		if busy {
			if err := abortConn(s.dev); err != nil {
				s.log.Warn().Err(err).Msg("fuse: abort the connection")
			}
			s.log.Warn().Str("dir", s.cfg.Dir).Msg("fuse: mount busy: detached lazily, connection aborted")
		}
		s.stopQueues()
		done := make(chan struct{})
		go func() { s.live.Wait(); close(done) }()
		select {
		case <-done:
			s.finish()
		case <-ctx.Done():
			s.closeErr = errors.Join(s.closeErr, fmt.Errorf("fuse: requests still in flight: %w", ctx.Err()))
			go func() { <-done; s.finish() }()
		}
	})
	return busy, s.closeErr
}

// stopQueues cancels what every queue has waiting on the kernel.
func (s *Server) stopQueues() {
	for _, q := range s.queues {
		q.l.Post(q.stop)
	}
}

// finish runs once every slot has stopped: buffers back, devices closed.
func (s *Server) finish() {
	for _, q := range s.queues {
		q.l.Call(q.release)
	}
	unix.Close(s.fd)
	hs := s.handles.Swap(&map[uint64]*handle{})
	for _, h := range *hs {
		h.dev.Close()
	}
}

// --- nodes and handles (metadata; the lock is never held across I/O) ---

func (s *Server) nodeOf(id uint64) *node {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.nodes[id]
}

// lookup returns the node of name's device, counting a lookup if count.
// A name whose device was removed and created again gets a new node.
func (s *Server) lookup(name string, count bool) (*node, error) {
	dev, err := s.cfg.Devices.Get(name)
	if err != nil {
		return nil, syscall.ENOENT
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.byName[name]
	if n == nil || n.dev != dev {
		if n != nil && n.lookups == 0 {
			delete(s.nodes, n.id)
		}
		n = &node{id: s.nextID, name: name, dev: dev}
		s.nextID++
		s.nodes[n.id] = n
		s.byName[name] = n
	}
	if count {
		n.lookups++
	}
	return n, nil
}

func (s *Server) forget(id, nlookup uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.nodes[id]
	if n == nil {
		return
	}
	n.lookups -= min(n.lookups, nlookup)
	if n.lookups == 0 {
		delete(s.nodes, id)
		if s.byName[n.name] == n {
			delete(s.byName, n.name)
		}
	}
}

func (s *Server) attrOf(n *node) attr {
	if n == nil {
		return attr{Ino: rootID, Mode: unix.S_IFDIR | 0o755, Nlink: 2, Blksize: 4096, Mtime: s.mtime}
	}
	size := uint64(n.dev.Size())
	mode := uint32(unix.S_IFREG | 0o644)
	if n.dev.ReadOnly() {
		mode = unix.S_IFREG | 0o444
	}
	return attr{Ino: n.id, Size: size, Blocks: size / 512, Mode: mode, Nlink: 1, Blksize: 4096, Mtime: s.mtime}
}

func (s *Server) open(n *node, flags uint32) (uint64, error) {
	if flags&unix.O_ACCMODE != unix.O_RDONLY && n.dev.ReadOnly() {
		return 0, syscall.EROFS
	}
	if err := n.dev.Open(); err != nil {
		return 0, syscall.ENXIO
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	fh := s.nextFh
	s.nextFh++
	old := *s.handles.Load()
	m := make(map[uint64]*handle, len(old)+1)
	for k, v := range old {
		m[k] = v
	}
	m[fh] = &handle{node: n, dev: n.dev}
	s.handles.Store(&m)
	return fh, nil
}

func (s *Server) release(fh uint64) {
	s.mu.Lock()
	old := *s.handles.Load()
	h, ok := old[fh]
	if ok {
		m := make(map[uint64]*handle, len(old))
		for k, v := range old {
			if k != fh {
				m[k] = v
			}
		}
		s.handles.Store(&m)
	}
	s.mu.Unlock()
	if ok {
		h.dev.Close()
	}
}

// handle finds an open file without a lock (the map is copied on write).
func (s *Server) handle(fh uint64) *handle { return (*s.handles.Load())[fh] }

// readdir fills b with the directory's entries from index off on.
func (s *Server) readdir(b []byte, off uint64) int {
	names := s.cfg.Devices.List()
	sort.Strings(names)
	n := 0
	for i := off; i < uint64(len(names))+2; i++ {
		var k int
		switch i {
		case 0:
			k = putDirent(b, n, rootID, i+1, unix.DT_DIR, ".")
		case 1:
			k = putDirent(b, n, rootID, i+1, unix.DT_DIR, "..")
		default:
			name := names[i-2]
			nd, err := s.lookup(name, false)
			if err != nil {
				continue // removed meanwhile
			}
			k = putDirent(b, n, nd.id, i+1, unix.DT_REG, name)
		}
		if k == n {
			break
		}
		n = k
	}
	return n
}

var errNoUring = errors.New("fuse: the kernel does not offer FUSE over io_uring (CONFIG_FUSE_IO_URING, /sys/module/fuse/parameters/enable_uring)")

// initFail records why INIT failed; Mount returns it.
func (s *Server) initFail(err error) {
	s.initOnce.Do(func() {
		s.initErr = err
		close(s.initDone)
	})
}

// initSettled runs on a loop once the INIT reply was written (res its
// result).
func (s *Server) initSettled(res int32) {
	if res < 0 {
		s.initFail(fmt.Errorf("fuse: INIT reply: %w", uring.Errno(res)))
		return
	}
	s.initOnce.Do(func() { close(s.initDone) })
}

// uringCapable reports whether this build can serve FUSE over io_uring
// on its loops.
func (s *Server) uringCapable() bool {
	for _, q := range s.queues {
		if !q.sqe128 {
			return false
		}
	}
	return true
}
