package perf

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Result is what one run measured (by perf itself or read from fio).
type Result struct {
	Engine    string  `json:"engine"`
	RW        string  `json:"rw"`
	BlockSize int     `json:"bs"`
	Depth     int     `json:"iodepth"`
	Loops     int     `json:"loops"`
	Seconds   float64 `json:"seconds"`
	Ops       int64   `json:"ops"`
	RampOps   int64   `json:"ramp_ops,omitempty"`
	Reads     int64   `json:"reads"`
	Writes    int64   `json:"writes"`
	Errors    int64   `json:"errors"`
	IOPS      float64 `json:"iops"`
	MBps      float64 `json:"mb_s"` // 10^6 bytes per second
	Lat       Latency `json:"lat"`
	ReadLat   Latency `json:"read_lat"`
	WriteLat  Latency `json:"write_lat"`
	// CPUPerIO is user+sys CPU time per I/O in microseconds, of this
	// process (the client side) for perf runs, of the server for
	// side-by-side runs that measure one.
	CPUPerIO float64 `json:"cpu_per_io_us"`
	// ServerCPUPerIO is filled by side-by-side runners.
	ServerCPUPerIO float64 `json:"server_cpu_per_io_us,omitempty"`
	// ServerAllocsPerIO is the daemon's heap allocations per I/O (udm
	// serve only; -1 when not measured).
	ServerAllocsPerIO float64  `json:"server_allocs_per_io,omitempty"`
	FirstError        string   `json:"first_error,omitempty"`
	ErrorLog          []string `json:"error_log,omitempty"`
	VerifiedBytes     int64    `json:"verified_bytes,omitempty"`
	VerifyFailures    []string `json:"verify_failures,omitempty"`
	Timeline          []Point  `json:"timeline,omitempty"`
	// Started is when the run's clock (IOError.At, Point.T) started.
	Started time.Time `json:"started"`
	// IOErrors describes failed I/Os, in order of completion: every one
	// up to 100 per loop, then the first of each timeline interval.
	IOErrors []IOError `json:"io_errors,omitempty"`
	// ReadBackBytes is what the read-back pass (Config.ReadBack) read and
	// checked.
	ReadBackBytes int64 `json:"read_back_bytes,omitempty"`
}

func (r *run) result(end int64) *Result {
	cfg := r.cfg
	res := &Result{Engine: r.eng.Name(), RW: cfg.RW, BlockSize: cfg.BlockSize, Depth: cfg.Depth, Loops: cfg.Loops, Started: r.start}
	all, rd, wr := newHist(), newHist(), newHist()
	var bytes int64
	last := r.measureFrom
	for _, w := range r.workers {
		res.Ops += w.ops
		res.RampOps += w.rampOps
		res.Errors += w.errCount
		res.Reads += w.reads
		res.Writes += w.writes
		bytes += w.rbytes + w.wbytes
		all.Merge(w.lat.read)
		all.Merge(w.lat.write)
		rd.Merge(w.lat.read)
		wr.Merge(w.lat.write)
		if w.firstErr != nil && res.FirstError == "" {
			res.FirstError = w.firstErr.Error()
		}
		res.ErrorLog = append(res.ErrorLog, w.errLog...)
		res.IOErrors = append(res.IOErrors, w.ioErrs...)
		last = max(last, w.stoppedAt)
	}
	sortIOErrors(res.IOErrors)
	if end < last || last == r.measureFrom {
		last = end
	}
	el := time.Duration(last - r.measureFrom)
	if el <= 0 {
		el = time.Duration(end - r.startNs)
	}
	res.Seconds = el.Seconds()
	res.IOPS = float64(res.Ops) / el.Seconds()
	res.MBps = float64(bytes) / el.Seconds() / 1e6
	res.Lat, res.ReadLat, res.WriteLat = summarize(all), summarize(rd), summarize(wr)
	if cfg.Interval > 0 {
		res.Timeline = mergeTimeline(r.workers, cfg.Interval)
	}
	return res
}

func sortIOErrors(es []IOError) {
	sort.SliceStable(es, func(i, j int) bool { return es[i].At < es[j].At })
}

func mergeTimeline(ws []*worker, iv time.Duration) []Point {
	type agg struct {
		ops, errs int64
		h         *hdrhistogram.Histogram
	}
	m := map[int]*agg{}
	maxIdx := 0
	for _, w := range ws {
		for _, b := range w.timeline {
			a := m[b.idx]
			if a == nil {
				a = &agg{h: hdrhistogram.New(histMin, histMax, 2)}
				m[b.idx] = a
			}
			a.ops += b.ops
			a.errs += b.errors
			a.h.Merge(b.hist)
			maxIdx = max(maxIdx, b.idx)
		}
	}
	pts := make([]Point, 0, maxIdx+1)
	for i := 0; i <= maxIdx; i++ {
		p := Point{T: (time.Duration(i) * iv).Seconds()}
		if a := m[i]; a != nil {
			p.IOPS = float64(a.ops) / iv.Seconds()
			p.Errors = a.errs
			p.P99 = float64(a.h.ValueAtQuantile(99)) / 1e3
			p.Max = float64(a.h.Max()) / 1e3
		}
		pts = append(pts, p)
	}
	return pts
}

// WriteTable prints results as an aligned human table: each column as
// wide as its widest cell (engine and rw left-aligned, figures right),
// two spaces between columns.
func WriteTable(w io.Writer, rs []*Result) {
	rows := [][]string{{"engine", "rw", "bs", "qd", "IOPS", "MB/s", "p50us", "p99us", "p99.9us", "maxus", "cpu/io", "errors"}}
	for _, r := range rs {
		rows = append(rows, []string{r.Engine, r.RW, sizeStr(r.BlockSize), fmt.Sprint(r.Depth),
			fmt.Sprintf("%.0f", r.IOPS), fmt.Sprintf("%.1f", r.MBps), fmt.Sprintf("%.1f", r.Lat.P50),
			fmt.Sprintf("%.1f", r.Lat.P99), fmt.Sprintf("%.1f", r.Lat.P999), fmt.Sprintf("%.0f", r.Lat.Max),
			fmt.Sprintf("%.2f", r.CPUPerIO), fmt.Sprint(r.Errors)})
	}
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, row := range rows {
		var b strings.Builder
		for i, c := range row {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			switch {
			case i < 2 && i == len(row)-1:
				b.WriteString(c)
			case i < 2:
				b.WriteString(c + pad + "  ")
			case i == len(row)-1:
				b.WriteString(pad + c)
			default:
				b.WriteString(pad + c + "  ")
			}
		}
		fmt.Fprintln(w, b.String())
	}
}

func sizeStr(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dM", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dk", n>>10)
	}
	return fmt.Sprint(n)
}

// Median returns the result whose IOPS is the median of rs (for odd
// counts; the lower middle for even), with latency figures taken as the
// medians of each figure independently.
func Median(rs []*Result) *Result {
	if len(rs) == 0 {
		return nil
	}
	med := func(get func(*Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		sort.Float64s(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	out := *rs[0]
	out.IOPS = med(func(r *Result) float64 { return r.IOPS })
	out.MBps = med(func(r *Result) float64 { return r.MBps })
	out.Lat.P50 = med(func(r *Result) float64 { return r.Lat.P50 })
	out.Lat.P90 = med(func(r *Result) float64 { return r.Lat.P90 })
	out.Lat.P99 = med(func(r *Result) float64 { return r.Lat.P99 })
	out.Lat.P999 = med(func(r *Result) float64 { return r.Lat.P999 })
	out.Lat.Max = med(func(r *Result) float64 { return r.Lat.Max })
	out.Lat.Mean = med(func(r *Result) float64 { return r.Lat.Mean })
	out.CPUPerIO = med(func(r *Result) float64 { return r.CPUPerIO })
	out.ServerCPUPerIO = med(func(r *Result) float64 { return r.ServerCPUPerIO })
	out.ServerAllocsPerIO = med(func(r *Result) float64 { return r.ServerAllocsPerIO })
	if len(out.Lat.Percentiles) > 0 {
		pc := make([][2]float64, len(out.Lat.Percentiles))
		for i := range pc {
			pc[i][0] = out.Lat.Percentiles[i][0]
			pc[i][1] = med(func(r *Result) float64 {
				if i < len(r.Lat.Percentiles) {
					return r.Lat.Percentiles[i][1]
				}
				return 0
			})
		}
		out.Lat.Percentiles = pc
	}
	var errs int64
	for _, r := range rs {
		errs += r.Errors
	}
	out.Errors = errs
	out.Timeline = nil
	return &out
}

// String is a one-line summary.
func (r *Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s bs=%s qd=%d: %.0f IOPS, %.1f MB/s, p50 %.1fus p99 %.1fus p99.9 %.1fus max %.0fus, cpu/io %.2fus",
		r.Engine, r.RW, sizeStr(r.BlockSize), r.Depth, r.IOPS, r.MBps, r.Lat.P50, r.Lat.P99, r.Lat.P999, r.Lat.Max, r.CPUPerIO)
	if r.Errors > 0 {
		fmt.Fprintf(&b, ", %d errors (first: %s)", r.Errors, r.FirstError)
	}
	return b.String()
}
