package perf

import (
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Latencies are recorded in nanoseconds from 100 ns to 10 minutes with 3
// significant digits.
const (
	histMin = 100
	histMax = int64(10 * time.Minute)
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, 3) }

type latencies struct {
	read, write *hdrhistogram.Histogram
}

func newLatencies() latencies {
	return latencies{read: newHist(), write: newHist()}
}

// record notes one latency: in the read or write histogram; all is
// merged from the two when the run ends.
func (l *latencies) record(op Op, d time.Duration) {
	v := max(int64(d), histMin)
	v = min(v, histMax)
	if op == Read {
		l.read.RecordValue(v)
	} else {
		l.write.RecordValue(v)
	}
}

// Micros converts a duration to float microseconds.
func Micros(d time.Duration) float64 { return float64(d) / 1e3 }

// Latency summarizes a histogram in microseconds.
type Latency struct {
	Count int64   `json:"count"`
	Mean  float64 `json:"mean_us"`
	P50   float64 `json:"p50_us"`
	P90   float64 `json:"p90_us"`
	P99   float64 `json:"p99_us"`
	P999  float64 `json:"p99_9_us"`
	Max   float64 `json:"max_us"`
	// Percentiles holds a latency-percentile curve for plots: pairs of
	// (percentile, microseconds).
	Percentiles [][2]float64 `json:"percentiles,omitempty"`
}

var curve = []float64{1, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 99, 99.5, 99.9, 99.95, 99.99}

func summarize(h *hdrhistogram.Histogram) Latency {
	if h.TotalCount() == 0 {
		return Latency{}
	}
	us := func(v int64) float64 { return float64(v) / 1e3 }
	l := Latency{
		Count: h.TotalCount(),
		Mean:  h.Mean() / 1e3,
		P50:   us(h.ValueAtQuantile(50)),
		P90:   us(h.ValueAtQuantile(90)),
		P99:   us(h.ValueAtQuantile(99)),
		P999:  us(h.ValueAtQuantile(99.9)),
		Max:   us(h.Max()),
	}
	for _, q := range curve {
		l.Percentiles = append(l.Percentiles, [2]float64{q, us(h.ValueAtQuantile(q))})
	}
	return l
}

// bucket is one interval of the timeline.
type bucket struct {
	idx    int
	ops    int64
	errors int64
	hist   *hdrhistogram.Histogram
}

func (w *worker) recordTimeline(since, d time.Duration, failed bool) {
	idx := int(since / w.r.cfg.Interval)
	n := len(w.timeline)
	if n == 0 || w.timeline[n-1].idx != idx {
		w.timeline = append(w.timeline, bucket{idx: idx, hist: hdrhistogram.New(histMin, histMax, 2)})
		n++
	}
	b := &w.timeline[n-1]
	b.ops++
	if failed {
		b.errors++
	}
	b.hist.RecordValue(min(max(int64(d), histMin), histMax))
}

// Point is one interval of a run's timeline.
type Point struct {
	T      float64 `json:"t_s"` // interval start, seconds from the run's start
	IOPS   float64 `json:"iops"`
	Errors int64   `json:"errors"`
	P99    float64 `json:"p99_us"`
	Max    float64 `json:"max_us"`
}
