package drill

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"udm/daemon/api"
	"udm/internal/testcerts"
	"udm/multipath"
	"udm/perf"
)

// env is what a drill builds and tears down: the daemon (started here,
// or a running one), the backing file, the paths, the multipath map.
type env struct {
	opt      Options
	sched    *Schedule
	dir      string // scratch: state, logs, backing file, links
	sockDir  string // short directory for Unix sockets
	backing  string
	sectors  int64
	prefix   string // device names start with it
	mapName  string
	ctl      *api.Client
	checker  api.CheckerSettings // as last set
	daemon   *proc               // nil with Options.Control
	dArgs    []string
	dSock    string
	nbdAddr  string
	paths    map[string]*envPath
	order    []string
	devNames map[string]string // table device name -> path name
	devices  []string          // dm devices made here, in creation order
	nets     []*netPath
	unguard  func() // removes the route that keeps the subnet local
	// observe, while set, records a sample of the map (nil: the daemon
	// didn't answer).
	observe func(time.Time, *multipath.MapStatus)
}

// envPath is one path as built.
type envPath struct {
	spec  PathSpec
	dev   string // the name in the multipath table
	lower string // dm device (KindDM)
	file  string // hard link (KindFile)
	// remote
	net     *netPath
	srv     *proc
	srvArgv []string
	srvSock string // its control socket (remote udm)
	srvAddr string
	stopped bool
	cut     bool
}

func (e *env) logf(format string, a ...any) {
	if e.opt.Log != nil {
		fmt.Fprintf(e.opt.Log, format+"\n", a...)
	}
}

// setup builds everything; on error what was built is torn down.
func setup(ctx context.Context, s *Schedule, opt Options) (_ *env, err error) {
	e := &env{opt: opt, sched: s, paths: map[string]*envPath{}, devNames: map[string]string{}, checker: s.Checker}
	defer func() {
		if err != nil {
			e.teardown()
		}
	}()
	if e.dir, err = scratchDir(opt.Dir); err != nil {
		return nil, err
	}
	if e.sockDir, err = shortDir(); err != nil {
		return nil, err
	}
	e.backing = filepath.Join(e.dir, "backing.img")
	if err = sparseFile(e.backing, opt.Size); err != nil {
		return nil, err
	}
	e.sectors = opt.Size >> 9

	if opt.Control != "" {
		e.ctl = api.NewClient(opt.Control)
		info, err := e.ctl.Daemon(ctx)
		if err != nil {
			return nil, err
		}
		if info.NBD == "" {
			return nil, fmt.Errorf("drill: the daemon on %s serves no NBD over TCP", opt.Control)
		}
		e.nbdAddr = loopbackFor(info.NBD)
		e.prefix = fmt.Sprintf("drill%d", os.Getpid())
	} else {
		port, err := perf.FreePort()
		if err != nil {
			return nil, err
		}
		e.nbdAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		e.dSock = filepath.Join(e.sockDir, "control.sock")
		e.dArgs = []string{opt.UDM, "serve", "--state-dir", filepath.Join(e.dir, "state"), "--control", e.dSock,
			"--nbd", e.nbdAddr, "--nbd-unix", "", "--no-demo", "--loops", strconv.Itoa(opt.Loops), "--log-level", "info"}
		e.logf("drill: starting udm serve (state %s, NBD %s)", filepath.Join(e.dir, "state"), e.nbdAddr)
		if e.daemon, err = startDaemon(ctx, "udm serve", filepath.Join(e.dir, "api.log"), e.dArgs, e.dSock); err != nil {
			return nil, err
		}
		e.ctl = api.NewClient(e.dSock)
		e.prefix = "drill"
	}
	e.mapName = e.prefix

	if s.HasRemote() {
		if err := NetnsAvailable(); err != nil {
			return nil, err
		}
		cleanStaleNetns()
	}
	subnet := -1
	for i, ps := range s.Paths {
		p := &envPath{spec: ps}
		switch ps.Kind {
		case KindDM:
			p.lower = e.prefix + "-" + ps.Name
			if err := e.create(ctx, p.lower, e.linear()); err != nil {
				return nil, err
			}
			p.dev = "/dev/mapper/" + p.lower
		case KindFile:
			p.file = filepath.Join(e.dir, ps.Name+".img")
			if err := os.Link(e.backing, p.file); err != nil {
				return nil, err
			}
			p.dev = p.file
		case KindRemote:
			if subnet < 0 {
				if subnet, err = freeSubnet(); err != nil {
					return nil, err
				}
				if e.unguard, err = guardSubnet(subnet); err != nil {
					return nil, err
				}
			}
			if p.net, err = newNetPath(subnet, i); err != nil {
				return nil, err
			}
			e.nets = append(e.nets, p.net)
			if err := e.startRemote(ctx, p); err != nil {
				return nil, err
			}
		}
		e.paths[ps.Name] = p
		e.order = append(e.order, ps.Name)
		e.devNames[p.dev] = ps.Name
	}
	var live []string
	for _, ps := range s.Paths {
		if !ps.Spare {
			live = append(live, ps.Name)
		}
	}
	if err := e.create(ctx, e.mapName, e.mapTable(live)); err != nil {
		return nil, err
	}
	if err := e.ctl.SetChecker(ctx, e.mapName, e.checker); err != nil {
		return nil, fmt.Errorf("drill: checker settings: %w", err)
	}
	// Start from a map whose paths were each checked and found ready.
	deadline := time.Now().Add(30 * time.Second)
	for {
		ms, err := e.mapStatus(ctx)
		if err == nil && allReady(ms, len(live)) {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("drill: the map's paths were not all checked and ready within 30 s (%v): %s", err, describeMap(ms))
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// loopbackFor turns a wildcard listen address into one to dial.
func loopbackFor(addr string) string {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsUnspecified() {
		if ip.To4() != nil {
			h = "127.0.0.1"
		} else {
			h = "::1"
		}
	}
	return net.JoinHostPort(h, p)
}

func (e *env) uri() string { return "nbd://" + e.nbdAddr + "/" + e.mapName }

func (e *env) create(ctx context.Context, name, table string) error {
	if _, err := e.ctl.Create(ctx, api.CreateRequest{Name: name, Table: table}); err != nil {
		return fmt.Errorf("drill: create %s: %w", name, err)
	}
	e.devices = append(e.devices, name)
	return nil
}

func (e *env) linear() string { return fmt.Sprintf("0 %d linear %s 0", e.sectors, e.backing) }

// mapTable is the multipath table over the named paths.
func (e *env) mapTable(names []string) string {
	feat := "0"
	if e.sched.QueueIfNoPath {
		feat = "1 queue_if_no_path"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "0 %d multipath %s 0 1 1 %s 0 %d 1", e.sectors, feat, e.sched.Selector, len(names))
	for _, n := range names {
		fmt.Fprintf(&b, " %s 1", e.paths[n].dev)
	}
	return b.String()
}

// startRemote starts path p's server in its namespace.
func (e *env) startRemote(ctx context.Context, p *envPath) error {
	ip := p.net.nsIP
	p.srvAddr = net.JoinHostPort(ip, "10809")
	logPath := filepath.Join(e.dir, "remote-"+p.spec.Name+".log")
	switch e.sched.Remote {
	case "nbdkit":
		p.srvArgv = p.net.exec("nbdkit", "--foreground", "--exit-with-parent", "-i", ip, "-p", "10809", "file", e.backing)
		p.dev = "nbd://" + p.srvAddr + "/"
	default:
		p.srvSock = filepath.Join(e.sockDir, "r-"+p.spec.Name+".sock")
		args := []string{e.opt.UDM, "serve", "--state-dir", filepath.Join(e.dir, "remote-"+p.spec.Name), "--control", p.srvSock,
			"--nbd", p.srvAddr, "--nbd-unix", "", "--no-demo", "--loops", "1", "--log-level", "info"}
		p.dev = "nbd://" + p.srvAddr + "/" + p.spec.Name
		if e.sched.Remote == "udm-tls" {
			// A CA per path; the server's certificate names its address.
			certs, err := testcerts.Write(filepath.Join(e.dir, "certs-"+p.spec.Name), ip)
			if err != nil {
				return fmt.Errorf("drill: certificates for %s: %w", p.spec.Name, err)
			}
			args = append(args, "--tls", "require", "--tls-certificates", certs.Server, "--tls-verify-peer")
			p.dev = "nbds://" + p.srvAddr + "/" + p.spec.Name + "?tls-certificates=" + certs.Client
		}
		p.srvArgv = p.net.exec(args...)
	}
	var err error
	if p.srv, err = e.runRemote(ctx, p, logPath); err != nil {
		return err
	}
	if e.sched.Remote != "nbdkit" {
		c := api.NewClient(p.srvSock)
		if _, err := c.Create(ctx, api.CreateRequest{Name: p.spec.Name, Table: e.linear()}); err != nil {
			return fmt.Errorf("drill: remote %s: %w", p.spec.Name, err)
		}
	}
	return nil
}

// runRemote starts the server process and waits until it serves.
func (e *env) runRemote(ctx context.Context, p *envPath, logPath string) (*proc, error) {
	if e.sched.Remote == "nbdkit" {
		if _, err := exec.LookPath("nbdkit"); err != nil {
			return nil, fmt.Errorf("drill: nbdkit not found (apt-get install nbdkit)")
		}
		srv, err := startProc("nbdkit "+p.spec.Name, logPath, p.srvArgv)
		if err != nil {
			return nil, err
		}
		if err := perf.WaitListening(p.srvAddr, 20*time.Second); err != nil {
			srv.Kill()
			return nil, fmt.Errorf("drill: nbdkit for %s: %v: %s", p.spec.Name, err, tail(srv, 2000))
		}
		return srv, nil
	}
	return startDaemon(ctx, "remote udm serve "+p.spec.Name, logPath, p.srvArgv, p.srvSock)
}

// mapStatus returns the drill's map as the daemon lists it.
func (e *env) mapStatus(ctx context.Context) (*multipath.MapStatus, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	ms, err := e.ctl.Maps(cctx)
	if err != nil {
		return nil, err
	}
	for i := range ms {
		if ms[i].Name == e.mapName {
			return &ms[i], nil
		}
	}
	return nil, fmt.Errorf("drill: no map %s", e.mapName)
}

func allReady(ms *multipath.MapStatus, want int) bool {
	if ms == nil {
		return false
	}
	n := 0
	for _, p := range multipath.Paths([]multipath.MapStatus{*ms}) {
		if p.DMState != "active" || p.Checker != "ready" {
			return false
		}
		n++
	}
	return n == want
}

func describeMap(ms *multipath.MapStatus) string {
	if ms == nil {
		return "no map"
	}
	var parts []string
	for _, p := range multipath.Paths([]multipath.MapStatus{*ms}) {
		parts = append(parts, fmt.Sprintf("%s %s/%s %s", p.Dev, p.DMState, p.Checker, p.LastError))
	}
	return strings.Join(parts, "; ")
}

// sample converts a map status to a Sample (T is set by the caller).
func (e *env) sample(ms *multipath.MapStatus) Sample {
	s := Sample{OK: ms != nil, Paths: map[string]string{}}
	if ms == nil {
		return s
	}
	s.Queued, s.Queueing, s.Suspended = ms.Queued, ms.QueueIfNoPath, ms.Suspended
	for _, p := range multipath.Paths([]multipath.MapStatus{*ms}) {
		name, ok := e.devNames[p.Dev]
		if !ok {
			continue
		}
		st := StateActive
		switch {
		case p.Checker == "gone":
			st = StateGone
		case p.DMState != "active":
			st = StateFailed
		}
		s.Paths[name] = st
	}
	return s
}

// setLower swaps a dm path's layer for table: load, then resume (which
// suspends the lower device, swaps and resumes).
func (e *env) setLower(ctx context.Context, p *envPath, table string) error {
	if err := e.ctl.Load(ctx, p.lower, table); err != nil {
		return err
	}
	_, err := e.ctl.Resume(ctx, p.lower, false)
	return err
}

// restartDaemon kills the daemon (SIGKILL) and starts it again on its
// state dir.
func (e *env) restartDaemon(ctx context.Context) (string, error) {
	if e.daemon == nil {
		return "", errors.New("restart needs a daemon the drill started (not --control)")
	}
	old := e.daemon.Pid()
	e.daemon.Kill()
	t := time.Now()
	p, err := startDaemon(ctx, "udm serve", filepath.Join(e.dir, "api.log"), e.dArgs, e.dSock)
	if err != nil {
		return "", err
	}
	e.daemon = p
	return fmt.Sprintf("pid %d killed, pid %d answering %s later", old, p.Pid(), fmtDur(time.Since(t).Seconds())), nil
}

// logs returns the tails of the logs of the processes the drill started.
func (e *env) logs(n int) map[string]string {
	out := map[string]string{}
	if e.daemon != nil {
		out["udm serve"] = tail(e.daemon, n)
	}
	for _, name := range e.order {
		if p := e.paths[name]; p.srv != nil {
			out[p.srv.Name] = tail(p.srv, n)
		}
	}
	return out
}

// teardown removes what setup made; it is safe on a partial setup.
func (e *env) teardown() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if e.ctl != nil && e.opt.Control != "" {
		// A running daemon keeps going: remove the devices, the map
		// first (it holds the others open).
		for i := len(e.devices) - 1; i >= 0; i-- {
			if err := e.ctl.Remove(ctx, e.devices[i], true, false); err != nil {
				e.logf("drill: remove %s: %v", e.devices[i], err)
			}
		}
	}
	if e.daemon != nil {
		e.daemon.Stop(10 * time.Second)
	}
	for _, name := range e.order {
		p := e.paths[name]
		if p.srv != nil {
			p.srv.Stop(5 * time.Second) // continues a stopped server first
		}
	}
	for _, n := range e.nets {
		if err := n.close(); err != nil {
			e.logf("drill: %v", err)
		}
	}
	if e.unguard != nil {
		e.unguard()
	}
	if e.sockDir != "" {
		os.RemoveAll(e.sockDir)
	}
	if e.dir != "" && !e.opt.Keep {
		os.RemoveAll(e.dir)
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
