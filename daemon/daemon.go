package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"udm/daemon/api"
	"udm/dm"
	"udm/dm/filedev"
	"udm/fuse"
	"udm/nbd/client"
	"udm/nbd/server"
	"udm/uring"
)

// LoopArena is the registered buffer arena of each loop.
const LoopArena = 64 << 20

// Shutdown bounds (see the package doc, "Shutdown").
const (
	// ShutdownGrace bounds how long NBD requests in flight get to finish
	// at shutdown before their connections are closed.
	ShutdownGrace = 10 * time.Second
	// HeldGrace is how long I/O that can't finish by itself (held by a
	// multipath map without a usable path, deferred on a suspended
	// device) gets at shutdown before it is failed with EIO.
	HeldGrace = 3 * time.Second
	// FlushGrace bounds each device's flush at shutdown, and the wait for
	// removals that last closes started.
	FlushGrace = 5 * time.Second
)

// Daemon is a running udm: loops, the device registry, the NBD server,
// the control API, metrics, and the state store that brings devices back
// after a restart.
//
// Lock order: conf.mu, saveMu, then the dm locks (through Registry and Device
// calls). No lock of the daemon is held while a device suspends.
type Daemon struct {
	cfg     Config
	log     zerolog.Logger
	loops   []*uring.Loop
	targets *dm.TargetRegistry
	reg     *dm.Registry
	store   *Store
	nbd     *server.Server
	fuse    *fuse.Server
	mp      *mpath
	conf    confState
	lock    *os.File
	started time.Time

	ctlLn     net.Listener
	nbdLn     net.Listener
	nbdUnixLn net.Listener
	metricsLn net.Listener
	ctlSrv    *http.Server
	metSrv    *http.Server

	// base is the context of control requests; it ends when shutdown
	// starts, so that long waits (udm wait) return.
	base       context.Context
	cancelBase context.CancelFunc

	saveMu sync.Mutex // serializes state snapshots and writes

	// pending: what a restore could not bring back, by device.
	pending pendingSet
	// restoring is set while a restore loads a multipath table.
	restoring atomic.Pointer[restoring]

	wg sync.WaitGroup // serving goroutines

	closeOnce sync.Once
}

// New starts a daemon: it takes the state dir's lock (waiting up to
// LockWait for a daemon that is exiting), binds the control socket
// (refusing if another daemon answers there) and the NBD and metrics
// listeners, then starts the loops and brings back the devices of the
// state dir (or makes the demo on a fresh one). Serving starts with Run.
func New(cfg Config) (*Daemon, error) {
	d := &Daemon{}
	if err := d.init(cfg); err != nil {
		d.teardown()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) init(cfg Config) (err error) {
	if cfg.StateDir == "" || cfg.Control == "" {
		return errors.New("daemon: state dir and control socket are required")
	}
	if cfg.Loops <= 0 {
		cfg.Loops = api.Defaults(cfg.StateDir).Loops
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	d.cfg, d.log, d.started = cfg, cfg.Log, time.Now()
	d.base, d.cancelBase = context.WithCancel(context.Background())
	fresh, err := isFresh(cfg.StateDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if d.lock, err = lockDir(cfg.StateDir, d.log); err != nil {
		return err
	}
	if cfg.Listeners.Control != nil {
		d.ctlLn = cfg.Listeners.Control
	} else if d.ctlLn, err = listenUnix(cfg.Control, 0o600, "control socket"); err != nil {
		return err
	}
	// Every listener is bound before anything is made in the state dir,
	// so that a daemon that can't serve leaves it as it was.
	tlsMode, tlsCfg, err := cfg.nbdTLS()
	if err != nil {
		return err
	}
	if d.nbdLn, err = tcpListener(cfg.Listeners.NBD, cfg.NBD, "nbd"); err != nil {
		return err
	}
	if cfg.Listeners.NBDUnix != nil {
		d.nbdUnixLn = cfg.Listeners.NBDUnix
	} else if cfg.NBDUnix != "" {
		if d.nbdUnixLn, err = listenNBDUnix(cfg.NBDUnix, cfg.NBDUnixGroup); err != nil {
			return err
		}
	}
	if d.metricsLn, err = tcpListener(cfg.Listeners.Metrics, cfg.Metrics, "metrics"); err != nil {
		return err
	}
	if d.store, err = OpenStore(filepath.Join(cfg.StateDir, "devices")); err != nil {
		return err
	}
	d.store.CleanTemps()
	for i := 0; i < cfg.Loops; i++ {
		l, err := uring.NewLoop(uring.Config{ID: i, ArenaSize: LoopArena, Spin: cfg.Spin, Slice: cfg.Slice, Nice: cfg.Nice, SQE128: cfg.FUSE != "" && fuse.URingEnabled()})
		if err != nil {
			return fmt.Errorf("loop %d: %w", i, err)
		}
		d.loops = append(d.loops, l)
	}
	d.targets = dm.DefaultTargets()
	d.mp = newMpath(d)
	if err := d.mp.register(d.targets); err != nil {
		return err
	}
	d.reg = dm.NewRegistry(dm.Config{
		Log:     d.log.With().Str("component", "dm").Logger(),
		Targets: d.targets,
		Open:    d.opener(),
		// A last close (an NBD connection's, on a loop) hands the
		// removal to the registry's goroutine; the state goes then.
		DeferredRemoved: d.deferredRemoved,
	})
	d.restore()
	if err := d.initConfig(); err != nil {
		return err
	}
	if fresh && !cfg.NoDemo && !d.configLoaded() {
		if err := d.createDemo(); err != nil {
			d.log.Error().Err(err).Msg("demo device not created")
		}
	}
	scfg := server.Config{
		Exports:      exports{d, server.RegistryExports(d.reg, "")},
		Loops:        d.loops,
		Log:          d.log.With().Str("component", "nbd").Logger(),
		GatherWindow: d.cfg.Gather,
		TLSMode:      tlsMode,
		TLS:          tlsCfg,
		Limits:       d.cfg.NBDLimits,
	}
	if d.nbd, err = server.New(scfg); err != nil {
		return err
	}
	if cfg.FUSE != "" {
		if err := d.mountFUSE(); err != nil {
			return err
		}
	}
	d.warnExposed()
	return nil
}

// mountFUSE mounts the FUSE frontend at cfg.FUSE (made if missing).
func (d *Daemon) mountFUSE() error {
	if err := os.MkdirAll(d.cfg.FUSE, 0o755); err != nil {
		return fmt.Errorf("fuse: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	srv, err := fuse.Mount(ctx, fuse.Config{
		Dir: d.cfg.FUSE, Devices: d.reg, Loops: d.loops,
		Log: d.log.With().Str("component", "fuse").Logger(),
	})
	if err != nil {
		return err
	}
	d.fuse = srv
	return nil
}

// closeFUSE unmounts the FUSE frontend. A mount still in use (a loop
// device over one of its files) is detached lazily and its connection
// aborted: its users get errors from then on, not a hang.
func (d *Daemon) closeFUSE(ctx context.Context) {
	if d.fuse == nil {
		return
	}
	busy, err := d.fuse.Close(ctx)
	if err != nil {
		d.log.Warn().Err(err).Msg("fuse: unmount")
	}
	if busy {
		d.log.Warn().Str("dir", d.cfg.FUSE).Msg("fuse: files still in use at shutdown: detached lazily, their I/O now fails")
	}
	d.fuse = nil
}

// opener opens the devices tables name: NBD URIs (nbd://, nbd+unix://)
// through the NBD client, everything else (files, block devices) with
// filedev on the loops (loop 0 runs I/O that arrives from outside a
// loop). The registry resolves /dev/mapper/NAME itself.
//
// While a multipath map is restored, a path that can't be opened stands
// as an absent path (see absentPath), so that the map comes up without it.
func (d *Daemon) opener() dm.Opener {
	remote := client.Opener(client.Options{Log: d.log.With().Str("component", "nbd-client").Logger()})
	open := client.ComposeOpeners(remote, filedev.Opener(d.loops[0]))
	return func(name string, readOnly bool) (dm.BlockDevice, io.Closer, error) {
		dev, closer, err := open(name, readOnly)
		if err == nil {
			return dev, closer, nil
		}
		if a, ok := d.absentFor(name, readOnly, open, err); ok {
			return a, a, nil
		}
		return nil, nil, err
	}
}

// exports are the devices the NBD server offers: every device, except
// one whose saved live table could not be restored, which is refused
// with the reason.
type exports struct {
	d *Daemon
	server.Exports
}

func (e exports) Lookup(name string) (*dm.Device, error) {
	dev, err := e.Exports.Lookup(name)
	if err != nil {
		return nil, err
	}
	if p, ok := e.d.pending.get(dev.Name()); ok && p.live != "" && !dev.Info().Live {
		return nil, fmt.Errorf("device %q is in error: %s: %w", clip(dev.Name()), p.liveErr, syscall.EIO)
	}
	return dev, nil
}

// Registry is the daemon's device registry.
func (d *Daemon) Registry() *dm.Registry { return d.reg }

// Addrs reports where the daemon listens.
func (d *Daemon) Addrs() api.Addrs {
	a := api.Addrs{Control: d.cfg.Control}
	if d.nbdLn != nil {
		a.NBD = d.nbdLn.Addr().String()
	}
	if d.nbdUnixLn != nil {
		a.NBDUnix = d.cfg.NBDUnix
	}
	if d.metricsLn != nil {
		a.Metrics = d.metricsLn.Addr().String()
	}
	return a
}

// Run serves until ctx ends, then shuts down: listeners stop, NBD
// connections get the replies of requests in flight (for up to
// ShutdownGrace), every device gets an empty flush, the state is saved
// and the loops are closed. It returns nil after a clean shutdown.
func (d *Daemon) Run(ctx context.Context) error {
	d.ctlSrv = controlServer(d.apiHandler(), d.base, d.log, defaultControlLimits)
	errc := make(chan error, 4)
	serve := func(what string, f func() error) {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := f(); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, server.ErrClosed) {
				errc <- fmt.Errorf("%s: %w", what, err)
			}
		}()
	}
	if d.nbdLn != nil {
		serve("nbd", func() error { return d.nbd.Serve(d.nbdLn) })
	}
	if d.nbdUnixLn != nil {
		serve("nbd unix", func() error { return d.nbd.Serve(d.nbdUnixLn) })
	}
	if d.metricsLn != nil {
		d.metSrv = &http.Server{Handler: d.metricsHandler(), ReadHeaderTimeout: 10 * time.Second,
			ErrorLog: stdLogger(d.log, "metrics")}
		serve("metrics", func() error { return d.metSrv.Serve(d.metricsLn) })
	}
	serve("control", func() error { return d.ctlSrv.Serve(d.ctlLn) })
	d.mp.start()
	a := d.Addrs()
	d.log.Info().Str("control", a.Control).Str("nbd", a.NBD).Str("nbd_unix", a.NBDUnix).
		Str("metrics", a.Metrics).Int("loops", len(d.loops)).Str("state_dir", d.cfg.StateDir).
		Int("devices", len(d.reg.List())).Msg("serving")
	if !d.cfg.NoDemo {
		d.printDemo()
	}
	if d.cfg.Ready != nil {
		d.cfg.Ready()
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
		d.log.Error().Err(runErr).Msg("listener failed; shutting down")
	}
	d.shutdown()
	return runErr
}

// shutdown stops everything in order; see Run and the package doc.
func (d *Daemon) shutdown() {
	start := time.Now()
	d.log.Info().Msg("shutting down")
	if d.cfg.Stopping != nil {
		d.cfg.Stopping()
	}
	d.cancelBase() // ends long waits (udm wait)
	ctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
	defer cancel()
	if d.ctlSrv != nil {
		d.ctlSrv.Shutdown(ctx)
	}
	if d.metSrv != nil {
		d.metSrv.Shutdown(ctx)
	}
	// The state as last acknowledged, before failing held I/O changes
	// what the tables say (queue_if_no_path).
	d.saveAll()
	held := false
	if d.nbd != nil {
		done := make(chan error, 1)
		go func() { done <- d.nbd.Shutdown(ctx) }()
		var err error
		select {
		case err = <-done:
		case <-time.After(HeldGrace):
			held = true
			d.endHeld()
			err = <-done
		}
		if err != nil {
			d.log.Warn().Err(err).Msg("NBD connections closed before their requests finished")
		}
	}
	if !held {
		d.endHeld() // a flush must not queue either
	}
	// The FUSE frontend served until now (its requests held in a queueing
	// map have just ended); a loop device still using a file makes it a
	// lazy unmount with the connection aborted.
	d.closeFUSE(ctx)
	wctx, wcancel := context.WithTimeout(context.Background(), FlushGrace)
	if err := d.reg.Wait(wctx); err != nil {
		d.log.Warn().Err(err).Msg("deferred removals still under way at shutdown")
	}
	wcancel()
	d.flushAll(FlushGrace)
	d.mp.stop()
	d.teardown()
	d.log.Info().Dur("took", time.Since(start)).Msg("stopped")
}

// endHeld fails, with EIO, the I/O that nothing but the daemon could
// complete once it has stopped: multipath maps stop queueing (the
// fail_if_no_path message: what they hold for want of a path fails, as
// the kernel's map does on removal and as multipathd has it done when it
// stops, queue_without_daemon no), and suspended devices end what is
// deferred on them. The saved state is not changed: at restart the maps
// queue again and the devices come back suspended.
func (d *Daemon) endHeld() {
	for _, name := range d.reg.List() {
		dev, err := d.reg.Get(name)
		if err != nil {
			continue
		}
		if dev.Suspended() {
			if n := dev.EndDeferred(); n > 0 {
				d.devLog(name).Warn().Int("failed", n).Msg("I/O deferred on a suspended device failed at shutdown")
			}
			continue
		}
		lines, _ := dev.Table(false)
		for _, l := range lines {
			tl, err := dm.ParseTableLine(l)
			if err != nil || tl.Type != "multipath" {
				continue
			}
			queued := 0
			if d.mp.checker != nil {
				if t, ok := d.mp.checker.Map(name); ok {
					queued = t.MapStatus().Queued
				}
			}
			if _, err := dev.Message(context.Background(), tl.Start, []string{"fail_if_no_path"}); err != nil {
				d.devLog(name).Debug().Err(err).Msg("queueing not turned off at shutdown")
				continue
			}
			if queued > 0 {
				d.devLog(name).Warn().Int("failed", queued).Msg("I/O queued for want of a path failed at shutdown")
			}
		}
	}
}

// flushAll sends an empty flush to every live device, all at once, so
// that what was written reaches stable storage; each gets up to grace.
// Suspended devices hold I/O (a flush would wait for a resume) and are
// skipped; a flush still running after grace is abandoned and reported.
func (d *Daemon) flushAll(grace time.Duration) {
	var wg sync.WaitGroup
	for _, name := range d.reg.List() {
		dev, err := d.reg.Get(name)
		if err != nil || dev.Suspended() || dev.Size() == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.flushOne(name, dev, grace)
		}()
	}
	wg.Wait()
}

func (d *Daemon) flushOne(name string, dev *dm.Device, grace time.Duration) {
	done := make(chan error, 1)
	b := &dm.Bio{Op: dm.OpFlush, BufIndex: -1}
	b.End = dm.EndioFunc(func(_ *dm.Bio, err error) { done <- err })
	dev.Submit(b)
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			d.log.Warn().Err(err).Str("dev", name).Msg("flush at shutdown failed")
		} else {
			d.log.Debug().Str("dev", name).Msg("flushed at shutdown")
		}
	case <-timer.C:
		b.Cancel()
		d.log.Warn().Str("dev", name).Dur("waited", grace).Msg("flush at shutdown did not finish")
	}
}

// teardown releases what New and Run made. Idempotent.
func (d *Daemon) teardown() {
	d.closeOnce.Do(func() {
		if d.cancelBase != nil {
			d.cancelBase()
		}
		for _, ln := range []net.Listener{d.ctlLn, d.nbdLn, d.nbdUnixLn, d.metricsLn} {
			if ln != nil {
				ln.Close()
			}
		}
		if d.nbd != nil {
			d.nbd.Close()
		}
		if d.fuse != nil {
			ctx, cancel := context.WithTimeout(context.Background(), ShutdownGrace)
			d.closeFUSE(ctx)
			cancel()
		}
		d.wg.Wait()
		if d.mp != nil {
			d.mp.stop()
		}
		for _, l := range d.loops {
			l.Close()
		}
		if d.ctlLn != nil && d.cfg.Listeners.Control == nil {
			os.Remove(d.cfg.Control)
		}
		if d.nbdUnixLn != nil && d.cfg.Listeners.NBDUnix == nil {
			os.Remove(d.cfg.NBDUnix)
		}
		if d.lock != nil {
			d.lock.Close()
		}
	})
}

// Close stops a daemon that New made but Run did not (or that Run
// already shut down).
func (d *Daemon) Close() error {
	d.teardown()
	return nil
}

// isFresh reports whether dir is missing or holds nothing but what a
// daemon that never served leaves (the lock, sockets): the daemon then
// makes the demo device.
func isFresh(dir string) (bool, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("state dir: %w", err)
	}
	for _, e := range ents {
		if e.Name() != "lock" && e.Type()&os.ModeSocket == 0 {
			return false, nil
		}
	}
	return true, nil
}

// LockWait bounds how long a starting daemon waits for the state dir's
// lock: a daemon killed a moment ago may hold it while the kernel
// finishes its exit.
const LockWait = 5 * time.Second

// lockDir takes an exclusive lock on <dir>/lock, so that two daemons
// never share a state dir. The kernel drops it when the process dies;
// lockDir waits for that for up to LockWait.
func lockDir(dir string, log zerolog.Logger) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	deadline := time.Now().Add(LockWait)
	for waited := false; ; waited = true {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, unix.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
		if !waited {
			log.Info().Str("state_dir", dir).Dur("at_most", LockWait).Msg("state dir locked; waiting for its holder to exit")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another udm daemon uses the state dir %s", dir)
		}
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, nil
}

// listenUnix binds a Unix socket at path with the given mode (and, if
// gid >= 0, group). A socket
// file already there is removed only if nothing answers on it; if
// something does, another daemon is running and listenUnix refuses.
func listenUnix(path string, mode os.FileMode, what string) (net.Listener, error) {
	return listenUnixGroup(path, mode, -1, what)
}

func listenUnixGroup(path string, mode os.FileMode, gid int, what string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("%s: %s exists and is not a socket", what, path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("%s: another daemon is answering on %s", what, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("%s: removing stale %s: %w", what, path, err)
		}
	}
	old := syscall.Umask(0o777 &^ int(mode))
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if gid >= 0 {
		if err := os.Lchown(path, -1, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ln, nil
}

// tcpListener is passed (a listener handed over, as systemd does) if it
// is set, else a new one on addr ("" for none); what names it in errors.
func tcpListener(passed net.Listener, addr, what string) (net.Listener, error) {
	if passed != nil || addr == "" {
		return passed, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ln, nil
}
