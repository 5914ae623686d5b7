package multipath

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"udm/dm"
	"udm/uring"
)

// Checker defaults (multipathd's).
const (
	DefaultPollingInterval = 5 * time.Second
	// DefaultMaxPollingFactor: max_polling_interval defaults to this many
	// polling intervals.
	DefaultMaxPollingFactor = 4
	DefaultCheckTimeout     = 2 * time.Second
)

// Bounds of the checker's durations. multipathd counts polling_interval,
// max_polling_interval and checker_timeout in whole seconds from 1; udm
// takes Go durations, so that tests and drills can poll faster, down to
// a floor that keeps checking cheap: a check costs about half a
// millisecond of CPU, so a two-path map polled every 50 ms takes ~3% of
// a core, every 200 ms under 1%, and every 1 µs most of one. A check
// timeout below the floor would fail healthy paths on a busy machine.
const (
	MinCheckerDuration = 50 * time.Millisecond
	MaxCheckerDuration = 24 * time.Hour
)

// ParsePollingInterval reads polling_interval: a Go duration from
// MinCheckerDuration to MaxCheckerDuration, "off" (the map's paths are
// not checked, only listed; returned as -1), or "" (the default, 0).
func ParsePollingInterval(s string) (time.Duration, error) {
	if s == "off" {
		return -1, nil
	}
	return parseCheckerDuration(s, ", or off")
}

// ParseMaxPollingInterval reads max_polling_interval, within the same
// bounds ("": 4 × polling_interval). A maximum below polling_interval
// is raised to it, as multipathd does.
func ParseMaxPollingInterval(s string) (time.Duration, error) { return parseCheckerDuration(s, "") }

// ParseCheckTimeout reads check_timeout, within the same bounds ("":
// the default).
func ParseCheckTimeout(s string) (time.Duration, error) { return parseCheckerDuration(s, "") }

func parseCheckerDuration(s, or string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < MinCheckerDuration || d > MaxCheckerDuration {
		return 0, fmt.Errorf("multipath: want a duration from %v to %s%s", MinCheckerDuration,
			strings.TrimSuffix(MaxCheckerDuration.String(), "0m0s"), or)
	}
	return d, nil
}

// NoPathRetry is multipathd's no_path_retry: what a map does once it has
// no path left.
type NoPathRetry int

const (
	// NoPathRetryTable leaves queue_if_no_path as the table has it.
	NoPathRetryTable NoPathRetry = 0
	// NoPathRetryFail fails I/O at once (fail_if_no_path).
	NoPathRetryFail NoPathRetry = -1
	// NoPathRetryQueue queues I/O until a path comes back.
	NoPathRetryQueue NoPathRetry = -2
	// A positive value N queues for N polling intervals, then fails
	// (and queues again once a path is back).
)

// ParseNoPathRetry reads "fail", "queue", a positive count, or "" (the
// table's setting).
func ParseNoPathRetry(s string) (NoPathRetry, error) {
	switch s {
	case "":
		return NoPathRetryTable, nil
	case "fail":
		return NoPathRetryFail, nil
	case "queue":
		return NoPathRetryQueue, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("multipath: no_path_retry %q: want fail, queue or a positive number", s)
	}
	return NoPathRetry(n), nil
}

func (n NoPathRetry) String() string {
	switch {
	case n == NoPathRetryTable:
		return ""
	case n == NoPathRetryFail:
		return "fail"
	case n == NoPathRetryQueue:
		return "queue"
	}
	return strconv.Itoa(int(n))
}

// FailbackMode is multipathd's failback policy: when the preferred
// priority group (the table's initial group) gets a path back, whether
// and when I/O moves back to it.
type FailbackMode uint8

const (
	// FailbackManual never fails back (switch_group does).
	FailbackManual FailbackMode = iota
	// FailbackImmediate fails back as soon as a path returns.
	FailbackImmediate
	// FailbackFollowover fails back only when the first path of the
	// group returns (not when another path of a working group does).
	FailbackFollowover
	// FailbackDeferred fails back Delay after a path returned.
	FailbackDeferred
)

// Failback is a failback policy.
type Failback struct {
	Mode  FailbackMode
	Delay time.Duration // FailbackDeferred: positive
}

// ParseFailback reads "manual", "immediate", "followover" or a deferred
// failback's delay ("" is manual): a number of seconds, multipathd's
// syntax ("5"), or a Go duration for other delays ("20ms", "1.5s"). The
// delay must be positive.
func ParseFailback(s string) (Failback, error) {
	switch s {
	case "", "manual":
		return Failback{}, nil
	case "immediate":
		return Failback{Mode: FailbackImmediate}, nil
	case "followover":
		return Failback{Mode: FailbackFollowover}, nil
	}
	var d time.Duration // 0: not a valid delay
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= int64(math.MaxInt64/time.Second) {
			d = time.Duration(n) * time.Second
		}
	} else if x, err := time.ParseDuration(s); err == nil {
		d = x
	}
	if d <= 0 {
		return Failback{}, fmt.Errorf("multipath: failback %q: want manual, immediate, followover, seconds or a duration", s)
	}
	return Failback{Mode: FailbackDeferred, Delay: d}, nil
}

// String is the policy as ParseFailback reads it: a deferred failback's
// delay in seconds when it is whole seconds, else as a Go duration. (A
// deferred failback with no positive delay prints as what it is, "0s",
// which ParseFailback refuses.)
func (f Failback) String() string {
	switch f.Mode {
	case FailbackImmediate:
		return "immediate"
	case FailbackFollowover:
		return "followover"
	case FailbackDeferred:
		if f.Delay > 0 && f.Delay%time.Second == 0 {
			return strconv.FormatInt(int64(f.Delay/time.Second), 10)
		}
		return f.Delay.String()
	}
	return "manual"
}

// MapConfig is the checker's configuration of one map (multipathd's
// defaults and multipaths sections). Zero fields take the defaults.
type MapConfig struct {
	// PollingInterval is how often a path is checked (default 5 s).
	// While a path stays healthy the interval doubles, up to
	// MaxPollingInterval (default 4 × PollingInterval); a change of state
	// resets it. Negative disables checking (the map is only listed).
	PollingInterval    time.Duration
	MaxPollingInterval time.Duration
	// CheckTimeout bounds one check (default 2 s).
	CheckTimeout time.Duration
	NoPathRetry  NoPathRetry
	Failback     Failback
	// IODeadline, if not zero, replaces the target's per-I/O deadline on
	// the map's paths (negative: none).
	IODeadline time.Duration
}

func (c MapConfig) withDefaults() MapConfig {
	if c.PollingInterval == 0 {
		c.PollingInterval = DefaultPollingInterval
	}
	if c.MaxPollingInterval <= 0 {
		c.MaxPollingInterval = DefaultMaxPollingFactor * c.PollingInterval
	}
	c.MaxPollingInterval = max(c.MaxPollingInterval, c.PollingInterval)
	if c.CheckTimeout <= 0 {
		c.CheckTimeout = DefaultCheckTimeout
	}
	return c
}

// CheckerConfig configures a Checker.
type CheckerConfig struct {
	Log zerolog.Logger
	// Default applies to maps with no entry in PerMap.
	Default MapConfig
	// PerMap configures maps by device name.
	PerMap map[string]MapConfig
	// Clock is the time source (nil: the wall clock).
	Clock Clock
}

// Checker is multipathd's path checker: it watches the paths of every
// live multipath map whose target type was registered with it
// (Options.Checker), fails a path whose check fails and reinstates one
// whose check passes (unless the operator failed it: FailPath), applies
// no_path_retry and failback, and lists maps and paths (Maps).
//
// What to do and when is decided by a pure model per map (mapChecker);
// each map has one goroutine that drives it (a timer for its next
// wake-up, the results of checks, I/O failures) and one goroutine per
// running check (checks may block for their timeout; one hung path must
// not delay the others' checks). A map's goroutines stop when its table
// is destroyed or replaced, or when the Checker is closed.
//
// A path is checked by its device's own check when it has one (files and
// block devices: an O_DIRECT read of one block at offset 0 through
// io_uring with a timeout; an NBD path: a protocol probe), otherwise by
// reading its first block through the device. A file path whose name no
// longer leads to the opened file (removed or replaced) is marked gone:
// its I/O fails at once and the path stays failed.
//
// A fail_path message (dmsetup message) is not the operator's FailPath:
// as with multipathd, the next passing check reinstates that path. Unlike
// messages, the checker's and the operator's actions are not refused
// while the map is suspended, so a path repaired during a noflush suspend
// carries the pushed-back I/O when the map resumes.
type Checker struct {
	log    zerolog.Logger
	def    MapConfig
	clock  Clock
	ctx    context.Context
	cancel context.CancelFunc

	mu struct {
		sync.Mutex // guards the following
		maps       map[any]*mapEntry
		conf       map[string]MapConfig
		// operator: paths failed by hand, by map and path name.
		operator map[[2]string]bool
		closed   bool
	}
}

// NewChecker returns a checker with no maps; targets registered with it
// attach their maps when they go live.
func NewChecker(cfg CheckerConfig) *Checker {
	c := &Checker{log: cfg.Log, def: cfg.Default, clock: cfg.Clock}
	if c.clock == nil {
		c.clock = wallClock{}
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.mu.maps = make(map[any]*mapEntry)
	c.mu.conf = make(map[string]MapConfig)
	for k, v := range cfg.PerMap {
		c.mu.conf[k] = v
	}
	c.mu.operator = make(map[[2]string]bool)
	return c
}

// Close stops checking every map and waits for the goroutines. It is
// idempotent. Maps stay as they are.
func (c *Checker) Close() error {
	c.mu.Lock()
	c.mu.closed = true
	var es []*mapEntry
	for k, e := range c.mu.maps {
		es = append(es, e)
		delete(c.mu.maps, k)
	}
	c.mu.Unlock()
	c.cancel()
	for _, e := range es {
		e.stop()
	}
	return nil
}

// SetMapConfig configures the map named name (now, if it is live, and
// when it is next loaded). The map's checking starts afresh (the
// operator's marks stay).
func (c *Checker) SetMapConfig(name string, cfg MapConfig) {
	c.mu.Lock()
	c.mu.conf[name] = cfg
	var e *mapEntry
	for _, x := range c.mu.maps {
		if x.t.Name() == name {
			e = x
		}
	}
	c.mu.Unlock()
	if e != nil {
		c.restart(e.t)
	}
}

func (c *Checker) configFor(name string) MapConfig {
	if cfg, ok := c.mu.conf[name]; ok {
		return cfg.withDefaults()
	}
	return c.def.withDefaults()
}

func mapKey(t *Multipath) any {
	if d := t.Device(); d != nil {
		return d
	}
	return t
}

// attach starts watching t (its table went live), replacing the previous
// table of the same device.
func (c *Checker) attach(t *Multipath) { c.replaceEntry(t, false) }

// restart re-reads t's configuration.
func (c *Checker) restart(t *Multipath) { c.replaceEntry(t, true) }

// replaceEntry starts a fresh entry for t in place of its device's
// entry and stops the one it replaces. A restart needs t's own entry to
// be there; an attach of the table already watched does nothing.
func (c *Checker) replaceEntry(t *Multipath, restart bool) {
	key := mapKey(t)
	c.mu.Lock()
	old := c.mu.maps[key]
	if c.mu.closed || (old != nil && old.t == t) != restart {
		c.mu.Unlock()
		return
	}
	e := c.newEntryLocked(t)
	c.mu.maps[key] = e
	c.mu.Unlock()
	if old != nil {
		old.stop()
	}
	e.start()
}

// detach stops watching t (its table is being destroyed).
func (c *Checker) detach(t *Multipath) {
	key := mapKey(t)
	c.mu.Lock()
	e := c.mu.maps[key]
	if e == nil || e.t != t {
		c.mu.Unlock()
		return
	}
	delete(c.mu.maps, key)
	c.mu.Unlock()
	e.stop()
}

func (c *Checker) newEntryLocked(t *Multipath) *mapEntry {
	name := t.Name()
	e := &mapEntry{c: c, t: t, name: name, cfg: c.configFor(name), clock: c.clock,
		log: c.log.With().Str("map", name).Logger()}
	e.ctx, e.cancel = context.WithCancel(c.ctx)
	e.wake = make(chan struct{}, 1)
	e.results = make(chan checkResult, len(t.paths))
	e.ioFailed = make([]atomic.Bool, len(t.paths))
	var ps []checkPath
	for _, p := range t.paths {
		_, self := p.dev.(deviceChecker)
		ps = append(ps, checkPath{Name: p.dev.Name(), Group: p.group.idx, SelfTimed: self,
			Operator: c.mu.operator[[2]string{name, p.name}]})
	}
	e.mu.m = newMapChecker(e.cfg, ps, len(t.groups), preferredGroup(t))
	e.mu.tokens = make([]checkToken, len(t.paths))
	e.mu.cancels = make([]context.CancelFunc, len(t.paths))
	return e
}

// preferredGroup is the group failback returns to: the table's initial
// group (multipathd puts the best group first and names it there).
func preferredGroup(t *Multipath) int {
	g := int(t.spec.InitialPG) - 1
	if g < 0 || g >= len(t.groups) {
		return 0
	}
	return g
}

// Map finds a live map by device name.
func (c *Checker) Map(name string) (*Multipath, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.mu.maps {
		if e.t.Name() == name {
			return e.t, true
		}
	}
	return nil, false
}

func (c *Checker) entries() []*mapEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*mapEntry, 0, len(c.mu.maps))
	for _, e := range c.mu.maps {
		out = append(out, e)
	}
	return out
}

// FailPath is the operator's `fail path`: it fails dev in the map named
// mapName (every map that has it, if mapName is empty) and stops
// checking it until ReinstatePath, so the checker won't bring it back.
// EINVAL (ErrUnknownPath) if no live map has such a path.
func (c *Checker) FailPath(mapName, dev string) error { return c.operate(mapName, dev, true) }

// ReinstatePath is the operator's `reinstate path`: it reinstates dev
// and resumes checking it (a failing check fails it again).
func (c *Checker) ReinstatePath(mapName, dev string) error { return c.operate(mapName, dev, false) }

func (c *Checker) operate(mapName, dev string, fail bool) error {
	found := false
	for _, e := range c.entries() {
		if mapName != "" && e.t.Name() != mapName {
			continue
		}
		for _, i := range e.t.resolve(dev) {
			found = true
			e.operate(i, fail)
		}
	}
	if !found {
		if mapName != "" {
			if _, ok := c.Map(mapName); !ok {
				return fmt.Errorf("%w: %s", ErrNoMap, mapName)
			}
		}
		return fmt.Errorf("%w: %s", ErrUnknownPath, dev)
	}
	return nil
}

// CheckState is what the last check of a path found.
type CheckState uint8

const (
	CheckUnchecked CheckState = iota
	CheckUp
	CheckDown
	CheckGone
)

var checkStateNames = [...]string{"undef", "ready", "faulty", "gone"}

func (s CheckState) String() string { return checkStateNames[s] }

// mapEntry drives the checker's model of one live map: it feeds it the
// clock's time, check results, I/O failures and the operator's actions,
// and carries out what it returns.
type mapEntry struct {
	c     *Checker
	t     *Multipath
	name  string
	cfg   MapConfig
	log   zerolog.Logger
	clock Clock
	ctx   context.Context
	// cancel stops the goroutines; wg waits for them.
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	wake    chan struct{}    // the model's next wake-up may have moved
	results chan checkResult // checks' results, to the map's goroutine
	// ioFailed: I/O failed the path (set by the target on a loop, taken
	// by the map's goroutine; no lock, so that a loop never waits).
	ioFailed []atomic.Bool

	// mu serializes the model's steps together with the actions they
	// ask for, so that, e.g., a check that started before the operator
	// failed a path can't reinstate it. It is held while calling the
	// target; the target never takes it.
	mu struct {
		sync.Mutex // guards the following
		m          *mapChecker
		// tokens: each path's epoch and fail count when its running
		// check started (a verdict is stale if they changed).
		tokens []checkToken
		// cancels: each path's running device check.
		cancels []context.CancelFunc
	}
}

type checkToken struct {
	epoch uint32
	fails uint32
}

type checkResult struct {
	path int
	err  error
}

func (e *mapEntry) start() {
	e.t.watch.Store(e)
	if dl := e.cfg.IODeadline; dl != 0 {
		for _, p := range e.t.paths {
			if ds, ok := p.dev.(dm.DeadlineSetter); ok {
				ds.SetIODeadline(max(dl, 0))
			}
		}
	}
	e.mu.Lock()
	e.execLocked(e.mu.m.start(e.clock.Now()))
	off := e.mu.m.off()
	e.mu.Unlock()
	if off {
		return
	}
	e.wg.Add(1)
	go e.run()
}

func (e *mapEntry) stop() {
	e.t.watch.CompareAndSwap(e, nil)
	e.cancel()
	e.wg.Wait()
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// run is the map's goroutine: it wakes the model when it asked to be,
// hands it the checks' results and the I/O failures.
func (e *mapEntry) run() {
	defer e.wg.Done()
	timer := e.clock.NewTimer()
	defer timer.Stop()
	for {
		e.mu.Lock()
		at := e.mu.m.wake()
		e.mu.Unlock()
		if at.IsZero() {
			timer.Stop()
		} else {
			timer.Reset(max(at.Sub(e.clock.Now()), 0))
		}
		select {
		case <-e.ctx.Done():
			return
		case <-timer.C():
			e.runDue()
		case r := <-e.results:
			e.checkDone(r)
		case <-e.wake:
			e.takeIOFailures()
		}
	}
}

// runDue has the model do what is due now.
func (e *mapEntry) runDue() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx.Err() != nil {
		return
	}
	st := e.t.state()
	e.execLocked(e.mu.m.tick(e.clock.Now(), &st))
}

func (e *mapEntry) checkDone(r checkResult) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx.Err() != nil {
		return
	}
	if cancel := e.mu.cancels[r.path]; cancel != nil {
		cancel()
		e.mu.cancels[r.path] = nil
	}
	p, tok := e.t.paths[r.path], e.mu.tokens[r.path]
	st := e.t.state()
	stale := p.epoch.Load() != tok.epoch || st.fails[r.path] != tok.fails
	e.execLocked(e.mu.m.checkDone(e.clock.Now(), r.path, r.err, stale, &st))
}

func (e *mapEntry) takeIOFailures() {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.clock.Now()
	for i := range e.ioFailed {
		if e.ioFailed[i].Swap(false) {
			e.mu.m.ioFailed(now, i)
		}
	}
}

// pathFailedByIO is the target telling that I/O failed path i (on a
// loop, maybe): the model checks it again one polling interval from now.
func (e *mapEntry) pathFailedByIO(i int) {
	e.ioFailed[i].Store(true)
	kick(e.wake)
}

// operate is the operator failing or reinstating path i.
func (e *mapEntry) operate(i int, fail bool) {
	e.mu.Lock()
	st := e.t.state()
	acts := e.mu.m.operate(e.clock.Now(), i, fail, &st)
	// The mark is the checker's before the target acts, as the model's
	// is: a listing never shows the path failed and unmarked.
	e.c.mu.Lock()
	key := [2]string{e.t.Name(), e.t.paths[i].name}
	if fail {
		e.c.mu.operator[key] = true
	} else {
		delete(e.c.mu.operator, key)
	}
	e.c.mu.Unlock()
	e.execLocked(acts)
	e.mu.Unlock()
	kick(e.wake)
}

// execLocked carries out the model's actions, in order.
func (e *mapEntry) execLocked(acts []checkAct) {
	for _, a := range acts {
		switch a.Kind {
		case doCheck:
			e.startCheckLocked(a)
		case doCancel:
			if cancel := e.mu.cancels[a.Path]; cancel != nil {
				cancel()
				e.mu.cancels[a.Path] = nil
			}
		case doFail:
			e.t.failPathIdx(a.Path, a.Cause, a.Err)
		case doReinstate:
			e.t.reinstatePathIdx(a.Path, a.Cause)
		case doQueue:
			err := e.t.SetQueueIfNoPath(a.On)
			e.mu.m.queueDone(a, err)
			switch {
			case !a.Retry && err != nil:
				e.log.Warn().Err(err).Str("no_path_retry", e.cfg.NoPathRetry.String()).Msg("can't apply no_path_retry")
			case a.Retry && err == nil && a.On:
				e.log.Info().Msg("a path is back: queueing I/O again (no_path_retry)")
			case a.Retry && err == nil:
				e.log.Warn().Int("no_path_retry", int(e.cfg.NoPathRetry)).Msg("no path left: retries exhausted, failing I/O")
			}
		case doSwitch:
			if err := e.t.switchGroup(a.Group); err != nil {
				e.log.Warn().Err(err).Int("group", a.Group+1).Msg("failback")
			} else {
				e.log.Info().Int("group", a.Group+1).Str("failback", e.cfg.Failback.String()).Msg("failback to the preferred group")
			}
		case doNote:
			ev := e.log.Info()
			if a.State != CheckUp {
				ev = e.log.Warn().Str("error", a.Err.Error())
			}
			ev.Str("path", e.t.paths[a.Path].name).Str("checker", a.State.String()).Str("was", a.Was.String()).Msg("path check")
		}
	}
}

// startCheckLocked starts a check of a path in its own goroutine; its
// result goes to the map's goroutine.
func (e *mapEntry) startCheckLocked(a checkAct) {
	i := a.Path
	p := e.t.paths[i]
	e.mu.tokens[i] = checkToken{epoch: p.epoch.Load(), fails: e.t.failCount(i)}
	ctx := e.ctx
	if _, ok := p.dev.(deviceChecker); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(e.ctx)
		e.mu.cancels[i] = cancel
	}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		err := check(ctx, p.dev, a.Timeout)
		select {
		case e.results <- checkResult{path: i, err: err}:
		case <-e.ctx.Done():
		}
	}()
}

// Test and listing accessors (under mu).

func (e *mapEntry) pathChecks(i int) int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.mu.m.paths[i].checks
}

var errPathGone = &Error{"multipath: path device gone", syscall.ENODEV}

// vanisher is a path device that can tell its file went away (filedev).
type vanisher interface {
	Vanished() bool
	MarkGone()
}

// deviceChecker is a path device with its own check (filedev's directio
// read; an NBD client's probe), which gives up after timeout by itself.
type deviceChecker interface {
	Check(ctx context.Context, timeout time.Duration) error
}

// check checks dev once. A device check is bounded by the device and by
// ctx (canceled when the model gives up on it); a read check waits for
// its read, which the model times out, until the map goes away (ctx
// is then the map's).
func check(ctx context.Context, dev dm.BlockDevice, timeout time.Duration) error {
	if v, ok := dev.(vanisher); ok && v.Vanished() {
		v.MarkGone()
		return fmt.Errorf("%w: %s no longer names the file that was opened", errPathGone, dev.Name())
	}
	if dc, ok := dev.(deviceChecker); ok {
		err := dc.Check(ctx, timeout)
		if g, ok := dev.(interface{ Gone() bool }); ok && err != nil && g.Gone() {
			return fmt.Errorf("%w: %w", errPathGone, err)
		}
		return err
	}
	return readCheck(ctx, dev)
}

// readCheck reads the first block of dev through the device itself and
// waits for the answer (or ctx).
func readCheck(ctx context.Context, dev dm.BlockDevice) error {
	bs := max(dev.BlockSize(), dm.SectorSize)
	buf := alignedBuf(bs)
	done := make(chan error, 1)
	c := dm.NewDetachedClone(nil, func(_ *dm.Clone, err error) { done <- err })
	c.Op, c.Sector, c.Len, c.Buf = dm.OpRead, 0, uint32(bs), buf
	dev.Submit(c)
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("multipath: check of %s: %w", dev.Name(), err)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// alignedBuf returns n bytes aligned to 4 KiB (for O_DIRECT devices).
func alignedBuf(n int) []byte {
	const align = 4096
	b := make([]byte, n+align)
	off := 0
	if r := int(uring.AddrOf(b) % align); r != 0 {
		off = align - r
	}
	return b[off : off+n : off+n]
}
