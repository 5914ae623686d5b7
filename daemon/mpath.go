package daemon

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"udm/daemon/api"
	"udm/dm"
	"udm/multipath"
)

// mpath wires the multipath target and its path checker into the
// daemon: per-device checker settings, operator-failed paths, the
// multipathd-style listings and the path metrics.
type mpath struct {
	d       *Daemon
	checker *multipath.Checker

	mu       sync.Mutex                     // guards settings
	settings map[string]api.CheckerSettings // by device name
}

func newMpath(d *Daemon) *mpath {
	return &mpath{d: d, settings: map[string]api.CheckerSettings{},
		checker: multipath.NewChecker(multipath.CheckerConfig{Log: d.log.With().Str("component", "multipath").Logger()})}
}

func (m *mpath) register(reg *dm.TargetRegistry) error {
	return multipath.RegisterOptions(reg, multipath.Options{Checker: m.checker})
}

// start and stop bracket serving. The checker runs from the moment maps
// go live; stop ends its goroutines (idempotent).
func (m *mpath) start() {}

func (m *mpath) stop() {
	if m.checker != nil {
		m.checker.Close()
	}
}

// configure applies a device's saved checker settings before its table
// goes live.
func (m *mpath) configure(st *DeviceState) error {
	if st.Checker == nil {
		return nil
	}
	return m.setSettings(st.Name, *st.Checker)
}

func (m *mpath) setSettings(name string, s api.CheckerSettings) error {
	cfg, err := s.MapConfig()
	if err != nil {
		return err
	}
	m.mu.Lock()
	if s == (api.CheckerSettings{}) {
		delete(m.settings, name)
	} else {
		m.settings[name] = s
	}
	m.mu.Unlock()
	m.checker.SetMapConfig(name, cfg)
	return nil
}

func (m *mpath) getSettings(name string) api.CheckerSettings {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.settings[name]
}

// forget drops a removed device's settings and operator marks.
func (m *mpath) forget(name string) {
	m.mu.Lock()
	delete(m.settings, name)
	m.mu.Unlock()
	m.checker.SetMapConfig(name, multipath.MapConfig{})
	m.checker.ForgetOperatorMarks(name)
}

// snapshot adds the checker's state of a device to its saved state: its
// settings, and the paths an operator failed, whether or not its live
// table names them now (a path failed by hand stays failed until
// reinstated, across reloads and restarts).
func (m *mpath) snapshot(name string, st *DeviceState) {
	if s := m.getSettings(name); s != (api.CheckerSettings{}) {
		st.Checker = &s
	}
	st.FailedPaths = m.checker.OperatorFailed(name)
}

// maps lists the live multipath maps.
func (m *mpath) maps() []multipath.MapStatus {
	out := m.checker.Maps()
	if out == nil {
		out = []multipath.MapStatus{}
	}
	return out
}

// operate is `udm fail path DEV` / `udm reinstate path DEV`: every map
// with that path (or mapName only), checker paused (fail) or resumed
// (reinstate). The affected maps' marks are saved first: if that fails
// nothing changes. Reinstating a path that no live table names drops its
// mark.
func (m *mpath) operate(mapName, dev string, fail bool) error {
	verb := "reinstate"
	if fail {
		verb = "fail"
	}
	affected := m.checker.Resolve(mapName, dev)
	if !fail {
		for name, paths := range m.checker.MarkedAs(mapName, dev) {
			affected[name] = append(affected[name], paths...)
		}
	}
	names := make([]string, 0, len(affected))
	for n := range affected {
		names = append(names, n)
	}
	sort.Strings(names)
	var saved []*dm.Device
	for _, n := range names {
		d, err := m.d.reg.Get(n)
		if err != nil {
			continue
		}
		err = m.d.persistAs(d, func(st *DeviceState) { st.FailedPaths = marked(st.FailedPaths, affected[n], fail) })
		if err != nil {
			for _, d := range saved {
				m.d.save(d) // back to what they are
			}
			return fmt.Errorf("path not %sed: %w", strings.TrimSuffix(verb, "e"), err)
		}
		saved = append(saved, d)
	}
	var err error
	if fail {
		err = m.checker.FailPath(mapName, dev)
	} else {
		m.reopenAbsent(mapName)
		err = m.checker.ReinstatePath(mapName, dev)
		for n, paths := range affected {
			for _, p := range paths {
				if m.checker.DropOperatorMark(n, p) && errors.Is(err, multipath.ErrUnknownPath) {
					err = nil // a mark of a path the live table no longer names
				}
			}
		}
	}
	m.d.log.Info().Str("path", clip(dev)).Str("map", clip(mapName)).Err(err).Msg("operator: " + verb + " path")
	for _, d := range saved {
		m.d.save(d)
	}
	return err
}

// marked is the set of operator-failed paths have with paths added
// (fail) or taken out, sorted.
func marked(have, paths []string, fail bool) []string {
	set := map[string]bool{}
	for _, p := range have {
		set[p] = true
	}
	for _, p := range paths {
		set[p] = fail
	}
	var out []string
	for p, ok := range set {
		if ok {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

func (m *mpath) routes(h func(string, func(*http.Request) (any, error))) {
	p := api.APIVersion
	h("GET "+p+"/multipath/maps", func(r *http.Request) (any, error) {
		return api.MapsReply{Maps: m.maps()}, nil
	})
	h("POST "+p+"/multipath/fail", func(r *http.Request) (any, error) {
		var req api.PathOpRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		return struct{}{}, pathErr(m.operate(req.Map, req.Path, true), req.Path)
	})
	h("POST "+p+"/multipath/reinstate", func(r *http.Request) (any, error) {
		var req api.PathOpRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		return struct{}{}, pathErr(m.operate(req.Map, req.Path, false), req.Path)
	})
	h("GET "+p+"/devices/{name}/checker", func(r *http.Request) (any, error) {
		name := r.PathValue("name")
		if _, err := m.d.reg.Get(name); err != nil {
			return nil, err
		}
		return m.getSettings(name), nil
	})
	h("PUT "+p+"/devices/{name}/checker", func(r *http.Request) (any, error) {
		name := r.PathValue("name")
		var s api.CheckerSettings
		if err := readJSON(r, &s); err != nil {
			return nil, err
		}
		dev, err := m.d.reg.Get(name)
		if err != nil {
			return nil, err
		}
		old := m.getSettings(name)
		p, _ := m.d.pending.get(name)
		if err := m.setSettings(name, s); err != nil {
			return nil, badRequest("%v", err)
		}
		m.d.pending.update(name, func(p *pending) { p.checker, p.checkerErr = nil, "" })
		if err := m.d.persist(dev); err != nil {
			m.setSettings(name, old)
			if p.checker != nil {
				m.d.pending.update(name, func(q *pending) { q.checker, q.checkerErr = p.checker, p.checkerErr })
			}
			return nil, fmt.Errorf("checker settings not changed: %w", err)
		}
		m.d.devLog(name).Info().Interface("checker", s).Msg("checker settings changed")
		return s, nil
	})
}

// pathErr words a fail/reinstate error.
func pathErr(err error, dev string) error {
	if err == nil {
		return nil
	}
	status, errno, msg := describe(err, "")
	switch {
	case errors.Is(err, multipath.ErrUnknownPath):
		msg = fmt.Sprintf("no multipath map has a path %q", dev)
	case errors.Is(err, multipath.ErrNoMap):
		msg = "no such multipath map: " + msg
	}
	return &apiErr{status: status, errno: errno, msg: msg}
}

var (
	pathLabels  = []string{"device", "path", "group"}
	mPathActive = prometheus.NewDesc("udm_path_active", "1 if the path is active in its map, 0 if failed.", pathLabels, nil)
	mPathFails  = prometheus.NewDesc("udm_path_failures_total", "How often the path failed since its table was loaded (the kernel's fail_count).", pathLabels, nil)
	mPathCheck  = prometheus.NewDesc("udm_path_checker_state", "The path checker's last verdict (1 for the state it is in).", []string{"device", "path", "state"}, nil)
	mPathOper   = prometheus.NewDesc("udm_path_operator_failed", "1 if an operator failed the path (its checker is paused).", []string{"device", "path"}, nil)
	mMapQueued  = prometheus.NewDesc("udm_multipath_queued", "I/Os held in the map for lack of a path.", devLabels, nil)
	mMapValid   = prometheus.NewDesc("udm_multipath_valid_paths", "Active paths of the map.", devLabels, nil)
	mMapQueue   = prometheus.NewDesc("udm_multipath_queue_if_no_path", "1 if I/O is queued when no path is left.", devLabels, nil)
	checkStates = []string{"ready", "faulty", "gone", "undef"}

	ioLabels     = []string{"device", "path", "op"}
	mPathIO      = prometheus.NewDesc("udm_path_io_total", "I/Os that reached the path's device, by class (read, write, other).", ioLabels, nil)
	mPathBytes   = prometheus.NewDesc("udm_path_bytes_total", "Bytes read or written on the path's device.", ioLabels, nil)
	mPathErrors  = prometheus.NewDesc("udm_path_errors_total", "I/Os that failed on the path's device.", []string{"device", "path"}, nil)
	mPathInfl    = prometheus.NewDesc("udm_path_inflight", "I/Os in flight on the path's device.", []string{"device", "path"}, nil)
	mPathLatency = prometheus.NewDesc("udm_path_latency_seconds", "Latency of I/O on the path's device.", ioLabels, nil)
)

func (m *mpath) describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mPathActive, mPathFails, mPathCheck, mPathOper, mMapQueued, mMapValid, mMapQueue,
		mPathIO, mPathBytes, mPathErrors, mPathInfl, mPathLatency} {
		ch <- d
	}
}

func (m *mpath) collect(ch chan<- prometheus.Metric) {
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	for _, ms := range m.checker.Maps() {
		gauge(mMapQueued, float64(ms.Queued), ms.Name)
		gauge(mMapValid, float64(ms.ValidPaths), ms.Name)
		gauge(mMapQueue, b2f(ms.QueueIfNoPath), ms.Name)
		seen := map[string]bool{}
		for _, g := range ms.Groups {
			grp := strconv.Itoa(g.Num)
			for _, p := range g.Paths {
				gauge(mPathActive, b2f(p.DMState == "active"), ms.Name, p.Dev, grp)
				ch <- prometheus.MustNewConstMetric(mPathFails, prometheus.CounterValue, float64(p.FailCount), ms.Name, p.Dev, grp)
				if seen[p.Dev] {
					continue // a path listed in two groups: its checker state once
				}
				seen[p.Dev] = true
				if p.Checker != "" {
					for _, s := range checkStates {
						gauge(mPathCheck, b2f(p.Checker == s), ms.Name, p.Dev, s)
					}
				}
				gauge(mPathOper, b2f(p.Operator), ms.Name, p.Dev)
			}
		}
		m.collectIO(ch, ms.Name)
	}
}

// collectIO reports the I/O counters of a map's path devices (those that
// keep them: files and block devices). A device named by two maps is one
// device: both report its counters.
func (m *mpath) collectIO(ch chan<- prometheus.Metric, name string) {
	t, ok := m.checker.Map(name)
	if !ok {
		return
	}
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	seen := map[string]bool{}
	for i := 0; i < t.NumPaths(); i++ {
		dev := t.PathName(i)
		st, ok := t.PathDevice(i).(dm.IOStatser)
		if !ok || seen[dev] {
			continue
		}
		seen[dev] = true
		s := st.IOStats()
		for c, op := range latOps {
			counter(mPathIO, float64(s.Ops[c]), name, dev, op)
			ch <- constHistogram(mPathLatency, s.Latency[c], name, dev, op)
		}
		counter(mPathBytes, float64(s.ReadBytes), name, dev, "read")
		counter(mPathBytes, float64(s.WriteBytes), name, dev, "write")
		counter(mPathErrors, float64(s.Errors), name, dev)
		ch <- prometheus.MustNewConstMetric(mPathInfl, prometheus.GaugeValue, float64(s.InFlight), name, dev)
	}
}
