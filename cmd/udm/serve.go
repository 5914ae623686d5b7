package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"udm/daemon"
	"udm/daemon/api"
	"udm/nbd/server"
	"udm/nbd/wire"
	"udm/perf"
	"udm/uring"
)

// runServe runs the daemon until SIGTERM or SIGINT (a second one exits
// at once).
func runServe(args []string) error {
	def := api.Defaults("")
	if globals.control != "" {
		def.Control = globals.control
	}
	fs := newFlags("serve", "serve [flags]")
	stateDir := fs.String("state-dir", def.StateDir, "where device state (and the demo's files) live")
	control := fs.String("control", def.Control, "control API socket (HTTP+JSON, mode 0600)")
	nbdAddr := fs.String("nbd", def.NBD, `serve NBD on this TCP address ("" disables)`)
	nbdUnix := fs.String("nbd-unix", def.NBDUnix, `serve NBD on this Unix socket, mode 0600 ("" disables; default: next to the control socket)`)
	nbdGroup := fs.String("nbd-unix-group", "", "let this group use the NBD Unix socket (mode 0660)")
	tlsMode := fs.String("tls", "off", "NBD over TLS: off, on (STARTTLS offered) or require (nothing without TLS)")
	tlsDir := fs.String("tls-certificates", "", "TLS certificate directory: ca-cert.pem, server-cert.pem, server-key.pem")
	tlsVerify := fs.Bool("tls-verify-peer", false, "NBD clients must present a certificate signed by ca-cert.pem")
	pprofOn := fs.Bool("pprof", false, "serve the Go profiler (/debug/pprof/) on the metrics address")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on this address (e.g. "+daemon.SuggestedMetrics+")")
	fuseDir := fs.String("fuse", "", "serve every device as a file in this directory through a FUSE mount (for losetup; \"\" disables)")
	loops := fs.Int("loops", def.Loops, "uring loops (threads running I/O)")
	spin := fs.Duration("spin", uring.DefaultSpin, "the most a busy loop polls for more work before it sleeps, less where polling does not pay or the CPUs are shared (0: never)")
	slice := fs.Duration("loop-slice", uring.DefaultSlice, "the scheduler time slice a loop's thread asks for (0: the kernel's)")
	nice := fs.Int("loop-nice", uring.DefaultNice, "the nice value a loop's thread asks for, below the daemon's (-20 to -1; 0: the daemon's; needs CAP_SYS_NICE)")
	gather := fs.Duration("gather", server.DefaultGatherWindow, "how long an NBD connection with many requests in flight lets them gather before taking them in (0: never)")
	nbdMem := fs.String("nbd-memory", "1G", "budget of NBD payload bytes all connections hold at once (requests over it wait; 0: none)")
	maxConns := fs.Int("nbd-max-conns", server.DefaultMaxConns, "most NBD connections at once (0: no limit)")
	maxPerAddr := fs.Int("nbd-max-conns-per-addr", server.DefaultMaxConnsPerAddr, "most NBD connections from one IP address (0: no limit)")
	idle := fs.Duration("nbd-idle-timeout", 0, "close an NBD connection idle this long after its handshake (0: never; the kernel's client stays idle for days)")
	payloadTO := fs.Duration("nbd-payload-timeout", server.DefaultPayloadTimeout, "close an NBD connection whose request takes longer to arrive once begun (0: never)")
	level := fs.String("log-level", "info", "log level: trace, debug, info, warn, error")
	logFormat := fs.String("log-format", "auto", "log format: console (for people), json (one object a line), auto (console when stderr is a terminal, else json)")
	pidfile := fs.String("pidfile", "", "write the daemon's pid to this file (removed at exit)")
	noDemo := fs.Bool("no-demo", false, "don't create the demo device on an empty state dir")
	config := fs.String("config", daemon.DefaultConfigFile, `configuration file: defaults, multipath maps, devices, blacklist (read at start if it exists, again on udm reconfigure and SIGHUP; "" for none)`)
	if _, err := fs.parse(args, 0, 0); err != nil {
		return err
	}
	if *nice < -20 || *nice > 19 {
		return usageErr{error: fmt.Errorf("--loop-nice %d: a nice value is -20 to 19", *nice)}
	}
	// Paths that default to a place in the state dir follow --state-dir.
	if fs.set("state-dir") && !fs.set("control") {
		*control = api.Defaults(*stateDir).Control
	}
	// The NBD socket lives next to the control socket.
	if !fs.set("nbd-unix") {
		*nbdUnix = api.NBDUnixFor(*control)
	}
	tls, err := wire.ParseTLSMode(*tlsMode)
	if err != nil {
		return usageErr{error: err}
	}
	mem, err := perf.ParseSize(*nbdMem)
	if err != nil {
		return usageErr{error: fmt.Errorf("--nbd-memory: %w", err)}
	}
	limits := server.Limits{MaxMemory: noneIfZero(mem), MaxConns: int(noneIfZero(int64(*maxConns))),
		MaxConnsPerAddr: int(noneIfZero(int64(*maxPerAddr))), IdleTimeout: max(*idle, 0),
		PayloadTimeout: time.Duration(noneIfZero(int64(*payloadTO)))}
	lvl, err := daemon.ParseLevel(*level)
	if err != nil {
		return usageErr{error: err}
	}
	logw, err := logWriter(*logFormat, os.Stderr)
	if err != nil {
		return usageErr{error: err}
	}
	log := zerolog.New(logw).Level(lvl).With().Timestamp().Logger()

	// Sockets systemd passed are served instead of binding their
	// addresses.
	lns, err := activated(*control, *nbdUnix, *metrics)
	if err != nil {
		return err
	}
	if lns.Control != nil {
		*control = lns.Control.Addr().String()
	}
	if lns.NBDUnix != nil {
		*nbdUnix = lns.NBDUnix.Addr().String()
	}
	wdCtx, wdStop := context.WithCancel(context.Background())
	defer wdStop()
	d, err := daemon.New(daemon.Config{StateDir: *stateDir, Control: *control, NBD: *nbdAddr, NBDUnix: *nbdUnix,
		NBDUnixGroup: *nbdGroup, TLS: tls, TLSCertificates: *tlsDir, TLSVerifyPeer: *tlsVerify, PProf: *pprofOn,
		Metrics: *metrics, FUSE: *fuseDir, Loops: *loops, Spin: durationCfg(*spin), Slice: durationCfg(*slice), Nice: niceCfg(*nice), Gather: durationCfg(*gather), NBDLimits: limits, NoDemo: *noDemo, Log: log, Out: os.Stdout,
		ConfigFile: *config, ConfigOptional: !fs.set("config"),
		Listeners: lns,
		Ready:     func() { notify(log, "READY=1") },
		Stopping:  func() { wdStop(); notify(log, "STOPPING=1") }})
	if err != nil {
		return err
	}
	if *pidfile != "" {
		if err := writePidfile(*pidfile); err != nil {
			d.Close()
			return err
		}
		defer removePidfile(*pidfile)
	}
	go watchdog(wdCtx, log, d)
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		s := <-sig
		log.Info().Str("signal", s.String()).Msg("signal: stopping (a second signal exits at once)")
		cancel()
		s = <-sig
		log.Warn().Str("signal", s.String()).Msg("second signal: exiting at once")
		os.Exit(1)
	}()
	// SIGHUP re-reads the configuration file, as udm reconfigure does
	// (the daemon logs what it did, or why the file was refused).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for range hup {
			if ctx.Err() != nil {
				return
			}
			log.Info().Msg("signal: SIGHUP, reconfiguring")
			d.Reconfigure(ctx)
		}
	}()
	if err := d.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// noneIfZero maps a limit flag's 0 ("no limit") to server.Limits' -1
// (its 0 is the default).
func noneIfZero(v int64) int64 {
	if v <= 0 {
		return -1
	}
	return v
}

// niceCfg maps --loop-nice to the config: 0 and above keep the daemon's
// nice (a loop's thread only ever lowers it).
func niceCfg(n int) int {
	if n >= 0 {
		return uring.NiceKeep
	}
	return n
}

// durationCfg maps --spin, --loop-slice and --gather to their configs, where 0 means the
// default and a negative value never.
func durationCfg(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
