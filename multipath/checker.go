package multipath

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
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
}

// Checker is multipathd's path checker: it watches the paths of every
// live multipath map whose target type was registered with it
// (Options.Checker), fails a path whose check fails and reinstates one
// whose check passes (unless the operator failed it: FailPath), applies
// no_path_retry and failback, and lists maps and paths (Maps).
//
// Each map gets one goroutine per path (checks may block for their
// timeout; one hung path must not delay the others' checks) and one for
// no_path_retry and deferred failback. A map's goroutines stop when its
// table is destroyed or replaced, or when the Checker is closed.
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
	c := &Checker{log: cfg.Log, def: cfg.Default}
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
// when it is next loaded).
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
func (c *Checker) attach(t *Multipath) {
	key := mapKey(t)
	c.mu.Lock()
	if c.mu.closed {
		c.mu.Unlock()
		return
	}
	old := c.mu.maps[key]
	if old != nil && old.t == t {
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

// restart re-reads t's configuration.
func (c *Checker) restart(t *Multipath) {
	key := mapKey(t)
	c.mu.Lock()
	old := c.mu.maps[key]
	if c.mu.closed || old == nil || old.t != t {
		c.mu.Unlock()
		return
	}
	e := c.newEntryLocked(t)
	c.mu.maps[key] = e
	c.mu.Unlock()
	old.stop()
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
	e := &mapEntry{c: c, t: t, name: name, cfg: c.configFor(name), log: c.log.With().Str("map", name).Logger()}
	e.ctx, e.cancel = context.WithCancel(c.ctx)
	e.wake = make(chan struct{}, 1)
	now := time.Now()
	for i := range t.paths {
		pe := &pathEntry{idx: i, interval: e.cfg.PollingInterval, next: now, wake: make(chan struct{}, 1)}
		pe.operator = c.mu.operator[[2]string{name, t.paths[i].name}]
		e.paths = append(e.paths, pe)
	}
	return e
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

// mapEntry is the checker's state for one live map.
type mapEntry struct {
	c    *Checker
	t    *Multipath
	name string
	cfg  MapConfig
	log  zerolog.Logger
	ctx  context.Context
	// cancel stops the goroutines; wg waits for them.
	cancel context.CancelFunc
	wg     sync.WaitGroup
	wake   chan struct{} // wakes the map goroutine (failback scheduled)

	// opMu serializes decisions about paths (a check's verdict, the
	// operator's fail/reinstate) so that a check that started before the
	// operator failed a path can't reinstate it. Held while calling the
	// target; never taken by the target.
	opMu sync.Mutex

	mu struct {
		sync.Mutex  // guards the following and the pathEntry fields
		noPathTicks int
		// retryOff: no_path_retry turned queueing off.
		retryOff   bool
		failbackAt time.Time
	}
	paths []*pathEntry
}

// pathEntry is the checker's state for one path (fields guarded by
// mapEntry.mu, except wake and checking).
type pathEntry struct {
	idx      int
	state    CheckState
	interval time.Duration
	next     time.Time // when the next check is due
	operator bool
	lastErr  string
	wake     chan struct{}
	checking atomic.Bool  // a read check is outstanding
	checks   atomic.Int64 // checks done
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
	e.applyNoPathRetry()
	// Paths the operator failed stay failed in a new table.
	for _, pe := range e.paths {
		if pe.operator {
			e.t.failPathIdx(pe.idx, "operator", nil)
		}
	}
	if e.cfg.PollingInterval < 0 {
		return
	}
	for _, pe := range e.paths {
		e.wg.Add(1)
		go e.runPath(pe)
	}
	e.wg.Add(1)
	go e.runMap()
}

func (e *mapEntry) stop() {
	e.t.watch.CompareAndSwap(e, nil)
	e.cancel()
	e.wg.Wait()
}

// applyNoPathRetry sets queueing as the configuration asks, when the map
// goes live.
func (e *mapEntry) applyNoPathRetry() {
	var err error
	switch n := e.cfg.NoPathRetry; {
	case n == NoPathRetryTable:
		return
	case n == NoPathRetryFail:
		err = e.t.SetQueueIfNoPath(false)
	default:
		err = e.t.SetQueueIfNoPath(true)
	}
	if err != nil {
		e.log.Warn().Err(err).Str("no_path_retry", e.cfg.NoPathRetry.String()).Msg("can't apply no_path_retry")
	}
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// pathFailedByIO is the target telling that I/O failed path i: check it
// again one polling interval from now, not after a long healthy interval.
func (e *mapEntry) pathFailedByIO(i int) {
	pe := e.paths[i]
	e.mu.Lock()
	pe.interval = e.cfg.PollingInterval
	if n := time.Now().Add(pe.interval); n.Before(pe.next) {
		pe.next = n
	}
	e.mu.Unlock()
	kick(pe.wake)
}

// operate is the operator failing or reinstating path i.
func (e *mapEntry) operate(i int, fail bool) {
	e.opMu.Lock()
	defer e.opMu.Unlock()
	if fail {
		e.t.failPathIdx(i, "operator", nil)
	} else {
		e.t.reinstatePathIdx(i, "operator")
	}
	pe := e.paths[i]
	e.mu.Lock()
	pe.operator = fail
	pe.interval = e.cfg.PollingInterval
	pe.next = time.Now()
	if !fail {
		pe.next = pe.next.Add(pe.interval)
	}
	e.mu.Unlock()
	e.c.mu.Lock()
	key := [2]string{e.t.Name(), e.t.paths[i].name}
	if fail {
		e.c.mu.operator[key] = true
	} else {
		delete(e.c.mu.operator, key)
	}
	e.c.mu.Unlock()
	kick(pe.wake)
	if !fail {
		e.afterReinstate(i)
	}
}

// runPath checks one path when it is due, until the map goes away.
func (e *mapEntry) runPath(pe *pathEntry) {
	defer e.wg.Done()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-timer.C:
		case <-pe.wake:
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		e.mu.Lock()
		wait := time.Until(pe.next)
		e.mu.Unlock()
		if wait <= 0 {
			e.checkPath(pe)
			e.mu.Lock()
			wait = time.Until(pe.next)
			e.mu.Unlock()
		}
		timer.Reset(max(wait, 0))
	}
}

// checkPath runs one check and acts on it.
func (e *mapEntry) checkPath(pe *pathEntry) {
	e.mu.Lock()
	operator := pe.operator
	e.mu.Unlock()
	if operator {
		e.mu.Lock()
		pe.next = time.Now().Add(pe.interval)
		e.mu.Unlock()
		return
	}
	p := e.t.paths[pe.idx]
	epoch, fails := p.epoch.Load(), e.t.failCount(pe.idx)
	err := e.check(p.dev, pe)
	if e.ctx.Err() != nil {
		return
	}
	defer pe.checks.Add(1)
	e.opMu.Lock()
	defer e.opMu.Unlock()
	st := e.t.state()
	active := st.active[pe.idx]
	e.mu.Lock()
	if pe.operator {
		e.mu.Unlock()
		return
	}
	if p.epoch.Load() != epoch || st.fails[pe.idx] != fails {
		// The path was failed or reinstated while the check ran: its
		// verdict is about the past. Check again soon.
		pe.next = time.Now().Add(e.cfg.PollingInterval)
		e.mu.Unlock()
		return
	}
	prev := pe.state
	switch {
	case err == nil:
		pe.state = CheckUp
		pe.lastErr = ""
	case errors.Is(err, errPathGone):
		pe.state = CheckGone
		pe.lastErr = err.Error()
	default:
		pe.state = CheckDown
		pe.lastErr = err.Error()
	}
	// The interval doubles while the path stays healthy and active;
	// any change, or a path that is down, checks at the base interval.
	if pe.state == CheckUp && prev == CheckUp && active {
		pe.interval = min(2*pe.interval, e.cfg.MaxPollingInterval)
	} else {
		pe.interval = e.cfg.PollingInterval
	}
	pe.next = time.Now().Add(pe.interval)
	state := pe.state
	e.mu.Unlock()
	if state != prev {
		ev := e.log.Info()
		if state != CheckUp {
			ev = e.log.Warn().Str("error", pe.lastErr)
		}
		ev.Str("path", p.name).Str("checker", state.String()).Str("was", prev.String()).Msg("path check")
	}
	switch {
	case state == CheckUp && !active:
		e.t.reinstatePathIdx(pe.idx, "checker")
		e.afterReinstate(pe.idx)
	case state != CheckUp && active:
		e.t.failPathIdx(pe.idx, "checker", err)
	}
}

var errPathGone = &Error{"multipath: path device gone", syscall.ENODEV}

// vanisher is a path device that can tell its file went away (filedev).
type vanisher interface {
	Vanished() bool
	MarkGone()
}

// deviceChecker is a path device with its own check (filedev's directio
// read; an NBD client's probe).
type deviceChecker interface {
	Check(ctx context.Context, timeout time.Duration) error
}

func (e *mapEntry) check(dev dm.BlockDevice, pe *pathEntry) error {
	if v, ok := dev.(vanisher); ok && v.Vanished() {
		v.MarkGone()
		return fmt.Errorf("%w: %s no longer names the file that was opened", errPathGone, dev.Name())
	}
	timeout := e.cfg.CheckTimeout
	if dc, ok := dev.(deviceChecker); ok {
		ctx, cancel := context.WithTimeout(e.ctx, timeout+timeout/2)
		defer cancel()
		err := dc.Check(ctx, timeout)
		if g, ok := dev.(interface{ Gone() bool }); ok && err != nil && g.Gone() {
			return fmt.Errorf("%w: %w", errPathGone, err)
		}
		return err
	}
	return readCheck(e.ctx, dev, timeout, &pe.checking)
}

// readCheck reads the first block of dev through the device itself. A
// read still outstanding from an earlier, timed-out check fails the
// check without sending another.
func readCheck(ctx context.Context, dev dm.BlockDevice, timeout time.Duration, busy *atomic.Bool) error {
	if !busy.CompareAndSwap(false, true) {
		return fmt.Errorf("multipath: check of %s: earlier check still outstanding: %w", dev.Name(), syscall.ETIMEDOUT)
	}
	bs := max(dev.BlockSize(), dm.SectorSize)
	buf := alignedBuf(bs)
	done := make(chan error, 1)
	c := dm.NewDetachedClone(nil, func(_ *dm.Clone, err error) {
		busy.Store(false)
		done <- err
	})
	c.Op, c.Sector, c.Len, c.Buf = dm.OpRead, 0, uint32(bs), buf
	dev.Submit(c)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("multipath: check of %s: %w", dev.Name(), err)
		}
		return nil
	case <-timer.C:
		return fmt.Errorf("multipath: check of %s: no answer in %v: %w", dev.Name(), timeout, syscall.ETIMEDOUT)
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

// preferredGroup is the group failback returns to: the table's initial
// group (multipathd puts the best group first and names it there).
func (e *mapEntry) preferredGroup() int {
	g := int(e.t.spec.InitialPG) - 1
	if g < 0 || g >= len(e.t.groups) {
		return 0
	}
	return g
}

// afterReinstate applies failback after path i came back.
func (e *mapEntry) afterReinstate(i int) {
	fb := e.cfg.Failback
	if fb.Mode == FailbackManual || len(e.t.groups) < 2 {
		return
	}
	pg := e.preferredGroup()
	if e.t.paths[i].group.idx != pg {
		return
	}
	st := e.t.state()
	if st.eff == pg {
		return
	}
	switch fb.Mode {
	case FailbackFollowover:
		if st.groupActive[pg] != 1 {
			return // not the group's first path back
		}
	case FailbackDeferred:
		e.mu.Lock()
		if e.mu.failbackAt.IsZero() {
			e.mu.failbackAt = time.Now().Add(fb.Delay)
		}
		e.mu.Unlock()
		kick(e.wake)
		return
	}
	e.failback(pg)
}

func (e *mapEntry) failback(pg int) {
	st := e.t.state()
	if st.eff == pg || st.groupActive[pg] == 0 {
		return
	}
	if err := e.t.switchGroup(pg); err != nil {
		e.log.Warn().Err(err).Int("group", pg+1).Msg("failback")
		return
	}
	e.log.Info().Int("group", pg+1).Str("failback", e.cfg.Failback.String()).Msg("failback to the preferred group")
}

// runMap applies no_path_retry (counting polling intervals without a
// path) and deferred failback.
func (e *mapEntry) runMap() {
	defer e.wg.Done()
	tick := time.NewTicker(e.cfg.PollingInterval)
	defer tick.Stop()
	fbTimer := time.NewTimer(time.Hour)
	fbTimer.Stop()
	defer fbTimer.Stop()
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-tick.C:
			e.noPathTick()
		case <-e.wake:
			e.mu.Lock()
			at := e.mu.failbackAt
			e.mu.Unlock()
			if !at.IsZero() {
				fbTimer.Reset(max(time.Until(at), 0))
			}
		case <-fbTimer.C:
			e.mu.Lock()
			e.mu.failbackAt = time.Time{}
			e.mu.Unlock()
			e.failback(e.preferredGroup())
		}
	}
}

func (e *mapEntry) noPathTick() {
	n := e.cfg.NoPathRetry
	if n <= 0 {
		return
	}
	// opMu, not mu, is held while calling the target: the target may
	// call back (pathFailedByIO), which takes mu.
	e.opMu.Lock()
	defer e.opMu.Unlock()
	valid := e.t.ValidPaths()
	e.mu.Lock()
	off := e.mu.retryOff
	if valid > 0 {
		e.mu.noPathTicks = 0
	} else {
		e.mu.noPathTicks++
	}
	exhausted := valid == 0 && e.mu.noPathTicks >= int(n) && !off
	e.mu.Unlock()
	switch {
	case valid > 0 && off:
		if err := e.t.SetQueueIfNoPath(true); err == nil {
			e.setRetryOff(false)
			e.log.Info().Msg("a path is back: queueing I/O again (no_path_retry)")
		}
	case exhausted:
		if err := e.t.SetQueueIfNoPath(false); err == nil {
			e.setRetryOff(true)
			e.log.Warn().Int("no_path_retry", int(n)).Msg("no path left: retries exhausted, failing I/O")
		}
	}
}

func (e *mapEntry) setRetryOff(off bool) {
	e.mu.Lock()
	e.mu.retryOff = off
	e.mu.Unlock()
}
