package daemon

import (
	"fmt"
	"net/http"
	"net/http/pprof"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"udm/dm"
)

// Metrics are read at scrape time from the counters the fast path keeps
// anyway (dm.Device.Stats and Latency, the multipath paths, the NBD
// server, the loops): a scrape does the work, I/O does none.

var (
	devLabels  = []string{"device"}
	mDevIO     = prometheus.NewDesc("udm_device_io_total", "Bios ended, by operation.", []string{"device", "op"}, nil)
	mDevBytes  = prometheus.NewDesc("udm_device_bytes_total", "Bytes read or written by ended bios.", []string{"device", "op"}, nil)
	mDevErrors = prometheus.NewDesc("udm_device_errors_total", "Bios that ended with an error.", devLabels, nil)
	mDevPushed = prometheus.NewDesc("udm_device_pushbacks_total", "Bios parked on the pushback list during noflush suspends.", devLabels, nil)
	mDevInfl   = prometheus.NewDesc("udm_device_inflight", "Bios mapped and not yet ended.", devLabels, nil)
	mDevDefer  = prometheus.NewDesc("udm_device_deferred", "Bios waiting on the deferred list (device suspending or suspended).", devLabels, nil)
	mDevPush   = prometheus.NewDesc("udm_device_pushback", "Bios on the pushback list now.", devLabels, nil)
	mDevSusp   = prometheus.NewDesc("udm_device_suspended", "1 if the device is suspended.", devLabels, nil)
	mDevOpen   = prometheus.NewDesc("udm_device_users", "Users of the device (NBD connections, stacked tables): dmsetup's open count.", devLabels, nil)
	mDevEvent  = prometheus.NewDesc("udm_device_events_total", "The device's events (dmsetup's event_nr): table loads, resumes, path changes.", devLabels, nil)
	mDevSize   = prometheus.NewDesc("udm_device_size_bytes", "Size of the live table.", devLabels, nil)
	mDevLat    = prometheus.NewDesc("udm_device_latency_seconds", "Bio latency from submission to end (time deferred or pushed back included), by operation as in udm_device_io_total.", []string{"device", "op"}, nil)

	mBuild = prometheus.NewDesc("udm_build_info", "Always 1: the version, VCS revision and Go version udm was built from.", []string{"version", "revision", "goversion"}, nil)

	mNBDAcc    = prometheus.NewDesc("udm_nbd_connections_accepted_total", "NBD connections accepted.", nil, nil)
	mNBDActive = prometheus.NewDesc("udm_nbd_connections_active", "NBD connections in the transmission phase.", nil, nil)
	mNBDShake  = prometheus.NewDesc("udm_nbd_handshake_errors_total", "NBD handshakes that failed.", nil, nil)
	mNBDReqs   = prometheus.NewDesc("udm_nbd_requests_total", "NBD requests received.", nil, nil)
	mNBDErrs   = prometheus.NewDesc("udm_nbd_request_errors_total", "NBD requests answered with an error.", nil, nil)
	mNBDRecvs  = prometheus.NewDesc("udm_nbd_receives_total", "Socket receives that brought NBD requests.", nil, nil)
	mNBDGath   = prometheus.NewDesc("udm_nbd_gathered_receives_total", "Receives that waited for the gather window (requests from a pipelining client taken in together).", nil, nil)
	mNBDExport = prometheus.NewDesc("udm_nbd_export_connections_active", "NBD connections in the transmission phase, by export.", []string{"export"}, nil)

	loopLabels     = []string{"loop"}
	mLoopSubmitted = prometheus.NewDesc("udm_loop_sqes_submitted_total", "io_uring SQEs submitted by the loop.", loopLabels, nil)
	mLoopCompleted = prometheus.NewDesc("udm_loop_cqes_completed_total", "io_uring CQEs reaped by the loop.", loopLabels, nil)
	mLoopEnters    = prometheus.NewDesc("udm_loop_enters_total", "io_uring_enter calls made by the loop.", loopLabels, nil)
	mLoopWakes     = prometheus.NewDesc("udm_loop_wakes_total", "Wake-ups of the sleeping loop by posted work.", loopLabels, nil)
	mLoopPosted    = prometheus.NewDesc("udm_loop_posted_total", "Functions posted to the loop.", loopLabels, nil)
	mLoopSpins     = prometheus.NewDesc("udm_loop_spins_total", "Polls for work after a busy turn, by outcome (hit: work came; miss: the loop slept).", []string{"loop", "outcome"}, nil)
	mLoopRests     = prometheus.NewDesc("udm_loop_spin_rests_total", "Times the loop stopped polling for a back-off, by cause (idle: polling found nothing; contended: the thread was preempted or waited for a CPU).", []string{"loop", "cause"}, nil)
)

// latOps names the latency classes of path devices (dm.IOStats), in
// udm_path_io_total and udm_path_latency_seconds alike.
var latOps = [...]string{dm.LatRead: "read", dm.LatWrite: "write", dm.LatOther: "other"}

// devOps names the operations in udm_device_io_total and
// udm_device_latency_seconds alike.
var devOps = [dm.NumOps]string{dm.OpRead: "read", dm.OpWrite: "write", dm.OpFlush: "flush", dm.OpDiscard: "discard", dm.OpWriteZeroes: "write_zeroes"}

// collector is the daemon's prometheus.Collector.
type collector struct{ d *Daemon }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{mDevIO, mDevBytes, mDevErrors, mDevPushed, mDevInfl, mDevDefer, mDevPush,
		mDevSusp, mDevOpen, mDevEvent, mDevSize, mDevLat, mNBDAcc, mNBDActive, mNBDShake, mNBDReqs, mNBDErrs, mNBDRecvs, mNBDGath,
		mNBDExport, mBuild, mLoopSubmitted, mLoopCompleted, mLoopEnters, mLoopWakes, mLoopPosted, mLoopSpins, mLoopRests} {
		ch <- d
	}
	c.d.mp.describe(ch)
	describeLimits(ch)
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	d := c.d
	counter := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.CounterValue, v, labels...)
	}
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	for _, name := range d.reg.List() {
		dev, err := d.reg.Get(name)
		if err != nil {
			continue
		}
		s := dev.Stats()
		counter(mDevIO, float64(s.Reads), name, devOps[dm.OpRead])
		counter(mDevIO, float64(s.Writes), name, devOps[dm.OpWrite])
		counter(mDevIO, float64(s.Flushes), name, devOps[dm.OpFlush])
		counter(mDevIO, float64(s.Discards), name, devOps[dm.OpDiscard])
		counter(mDevIO, float64(s.WriteZeroes), name, devOps[dm.OpWriteZeroes])
		counter(mDevBytes, float64(s.ReadBytes), name, "read")
		counter(mDevBytes, float64(s.WriteBytes), name, "write")
		counter(mDevErrors, float64(s.Errors), name)
		counter(mDevPushed, float64(s.Pushbacks), name)
		gauge(mDevInfl, float64(s.InFlight), name)
		gauge(mDevDefer, float64(s.Deferred), name)
		gauge(mDevPush, float64(s.Pushback), name)
		gauge(mDevSusp, b2f(s.Suspended), name)
		info := dev.Info()
		gauge(mDevOpen, float64(info.OpenCount), name)
		counter(mDevEvent, float64(info.EventNr), name)
		gauge(mDevSize, float64(dev.Size()), name)
		for i, h := range dev.LatencyByOp() {
			ch <- constHistogram(mDevLat, h, name, devOps[i])
		}
	}
	if d.nbd != nil {
		st := d.nbd.Stats()
		counter(mNBDAcc, float64(st.Accepted.Load()))
		gauge(mNBDActive, float64(st.Active.Load()))
		counter(mNBDShake, float64(st.HandshakeErr.Load()))
		counter(mNBDReqs, float64(st.Requests.Load()))
		counter(mNBDErrs, float64(st.Errors.Load()))
		counter(mNBDRecvs, float64(st.Receives.Load()))
		counter(mNBDGath, float64(st.Gathered.Load()))
		for exp, n := range d.nbd.ConnsByExport() {
			gauge(mNBDExport, float64(n), exp)
		}
	}
	version, revision, goversion := buildInfo()
	gauge(mBuild, 1, version, revision, goversion)
	for _, l := range d.loops {
		st := l.Stats()
		id := strconv.Itoa(l.ID())
		counter(mLoopSubmitted, float64(st.Submitted), id)
		counter(mLoopCompleted, float64(st.Completed), id)
		counter(mLoopEnters, float64(st.Enters), id)
		counter(mLoopWakes, float64(st.Wakes), id)
		counter(mLoopPosted, float64(st.Posted), id)
		counter(mLoopSpins, float64(st.SpinHits), id, "hit")
		counter(mLoopSpins, float64(st.SpinMisses), id, "miss")
		counter(mLoopRests, float64(st.SpinRests-st.SpinContended), id, "idle")
		counter(mLoopRests, float64(st.SpinContended), id, "contended")
	}
	d.mp.collect(ch)
	d.collectLimits(ch)
}

// constHistogram converts a dm latency histogram (per-bucket counts) to
// Prometheus' cumulative form, in seconds.
func constHistogram(desc *prometheus.Desc, h dm.LatencyHistogram, labels ...string) prometheus.Metric {
	buckets := make(map[float64]uint64, dm.NumLatencyBuckets)
	var cum uint64
	for i := 0; i < dm.NumLatencyBuckets; i++ {
		cum += h.Counts[i]
		buckets[dm.LatencyBound(i).Seconds()] = cum
	}
	total := cum + h.Counts[dm.NumLatencyBuckets]
	return prometheus.MustNewConstHistogram(desc, total, h.Sum.Seconds(), buckets, labels...)
}

// buildInfo reads the version, VCS revision and Go version of the
// binary ("unknown" where the build recorded none).
func buildInfo() (version, revision, goversion string) {
	version, revision, goversion = "unknown", "unknown", runtime.Version()
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return
	}
	if bi.Main.Version != "" {
		version = bi.Main.Version
	}
	for _, kv := range bi.Settings {
		if kv.Key == "vcs.revision" && kv.Value != "" {
			revision = kv.Value
		}
	}
	if bi.GoVersion != "" {
		goversion = bi.GoVersion
	}
	return
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// metricsHandler serves /metrics (and the Go runtime's and process'
// collectors).
func (d *Daemon) metricsHandler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{d}, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: stdLogger(d.log, "metrics")}))
	// The Go profiler, for profiling the I/O path under load, only when
	// asked for (Config.PProf): it hands out CPU profiles, traces and
	// goroutine dumps.
	index := "udm metrics: /metrics\n"
	if d.cfg.PProf {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		index = "udm metrics: /metrics; profiles: /debug/pprof/\n"
	}
	mux.HandleFunc("/debug/allocs", allocsHandler)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte(index))
	})
	return mux
}

// allocsHandler serves the count of heap allocations so far, in the
// Prometheus text format, for measuring allocations per I/O: unlike a
// scrape of /metrics, whose own allocations vary by thousands, reading it
// costs a few dozen, the same each time.
func allocsHandler(w http.ResponseWriter, _ *http.Request) {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:objects"}}
	metrics.Read(s)
	var n uint64
	if s[0].Value.Kind() == metrics.KindUint64 {
		n = s[0].Value.Uint64()
	}
	fmt.Fprintf(w, "udm_heap_allocs_total %d\n", n)
}
