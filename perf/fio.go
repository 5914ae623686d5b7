package perf

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// FioJob describes one fio run; its fields map to fio options.
type FioJob struct {
	Name      string // engine label for the report
	Filename  string // file or device (ioengine io_uring/libaio/...)
	IOEngine  string // default io_uring
	URI       string // for ioengine=nbd: nbd://... or nbd+unix://...
	RW        string
	BlockSize int
	Depth     int
	Jobs      int // numjobs (default 1)
	Runtime   time.Duration
	Ramp      time.Duration
	ReadPct   int // rwmixread
	Size      int64
	Verify    bool // verify=crc32c
	Extra     []string
}

// Args returns fio's command line for the job (JSON output to stdout).
func (j FioJob) Args() []string {
	eng := j.IOEngine
	if eng == "" {
		eng = "io_uring"
	}
	a := []string{
		"--name=" + nonEmpty(j.Name, "job"),
		"--ioengine=" + eng,
		"--rw=" + j.RW,
		"--bs=" + strconv.Itoa(j.BlockSize),
		"--iodepth=" + strconv.Itoa(max(j.Depth, 1)),
		"--numjobs=" + strconv.Itoa(max(j.Jobs, 1)),
		"--group_reporting",
		"--output-format=json",
		"--randrepeat=0",
		"--norandommap",
		// Total latency (submission + completion), as udm measures it;
		// fio's default clat leaves out time spent submitting.
		"--lat_percentiles=1",
	}
	if eng == "nbd" {
		a = append(a, "--uri="+j.URI)
	} else {
		a = append(a, "--filename="+j.Filename, "--direct=1")
	}
	if eng == "io_uring" {
		a = append(a, "--fixedbufs", "--registerfiles")
	}
	if j.Runtime > 0 {
		a = append(a, "--time_based", fmt.Sprintf("--runtime=%dms", j.Runtime.Milliseconds()))
	}
	if j.Ramp > 0 {
		a = append(a, fmt.Sprintf("--ramp_time=%dms", j.Ramp.Milliseconds()))
	}
	if j.ReadPct > 0 {
		a = append(a, "--rwmixread="+strconv.Itoa(j.ReadPct))
	}
	if strings.Contains(j.RW, "rw") {
		a = append(a, "--unified_rw_reporting=mixed")
	}
	if j.Size > 0 {
		a = append(a, "--size="+strconv.FormatInt(j.Size, 10))
	}
	if j.Verify {
		a = append(a, "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0")
	}
	return append(a, j.Extra...)
}

// RunFio runs fio and converts its JSON report.
func RunFio(ctx context.Context, j FioJob) (*Result, error) {
	cmd := exec.CommandContext(ctx, "fio", j.Args()...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("perf: fio %s: %v: %s", strings.Join(j.Args(), " "), err, strings.TrimSpace(stderr.String()))
	}
	res, err := ParseFioJSON(out)
	if err != nil {
		return nil, err
	}
	res.Engine = nonEmpty(j.Name, "fio")
	res.BlockSize = j.BlockSize
	res.Depth = j.Depth
	res.RW = j.RW
	return res, nil
}

type fioSide struct {
	IOPS     float64 `json:"iops"`
	BWBytes  float64 `json:"bw_bytes"`
	TotalIOs int64   `json:"total_ios"`
	ClatNs   struct {
		Mean       float64            `json:"mean"`
		Max        float64            `json:"max"`
		N          int64              `json:"N"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"clat_ns"`
	LatNs struct {
		Mean       float64            `json:"mean"`
		Max        float64            `json:"max"`
		Percentile map[string]float64 `json:"percentile"`
	} `json:"lat_ns"`
}

type fioReport struct {
	Jobs []struct {
		Error   int      `json:"error"`
		Read    fioSide  `json:"read"`
		Write   fioSide  `json:"write"`
		Mixed   *fioSide `json:"mixed"`
		UsrCPU  float64  `json:"usr_cpu"`
		SysCPU  float64  `json:"sys_cpu"`
		Elapsed float64  `json:"elapsed"`
		JobRT   float64  `json:"job_runtime"` // ms
	} `json:"jobs"`
}

// ParseFioJSON reads fio's --output-format=json report (the first job,
// group_reporting assumed). fio may print warnings before the JSON.
func ParseFioJSON(out []byte) (*Result, error) {
	if i := strings.IndexByte(string(out), '{'); i > 0 {
		out = out[i:]
	}
	var rep fioReport
	if err := json.Unmarshal(out, &rep); err != nil {
		return nil, fmt.Errorf("perf: parse fio JSON: %w", err)
	}
	if len(rep.Jobs) == 0 {
		return nil, fmt.Errorf("perf: fio JSON has no jobs")
	}
	j := rep.Jobs[0]
	r := &Result{}
	r.Reads, r.Writes = j.Read.TotalIOs, j.Write.TotalIOs
	r.Ops = r.Reads + r.Writes
	r.IOPS = j.Read.IOPS + j.Write.IOPS
	r.MBps = (j.Read.BWBytes + j.Write.BWBytes) / 1e6
	r.Seconds = j.JobRT / 1e3
	if j.Error != 0 {
		r.Errors = 1
		r.FirstError = fmt.Sprintf("fio job error %d", j.Error)
	}
	r.ReadLat = fioLat(j.Read)
	r.WriteLat = fioLat(j.Write)
	switch {
	case j.Mixed != nil:
		r.Lat = fioLat(*j.Mixed)
		r.Ops = j.Mixed.TotalIOs
		r.IOPS = j.Mixed.IOPS
		r.MBps = j.Mixed.BWBytes / 1e6
	case r.Writes == 0:
		r.Lat = r.ReadLat
	case r.Reads == 0:
		r.Lat = r.WriteLat
	default:
		r.Lat = mixLat(r.ReadLat, r.WriteLat)
	}
	if r.Ops > 0 && r.Seconds > 0 {
		// fio reports CPU as a percentage of the job's runtime.
		cpu := (j.UsrCPU + j.SysCPU) / 100 * r.Seconds
		r.CPUPerIO = cpu * 1e6 / float64(r.Ops)
	}
	return r, nil
}

func fioLat(s fioSide) Latency {
	if s.TotalIOs == 0 {
		return Latency{}
	}
	pcs, mean, mx := s.LatNs.Percentile, s.LatNs.Mean, s.LatNs.Max
	if len(pcs) == 0 {
		pcs, mean, mx = s.ClatNs.Percentile, s.ClatNs.Mean, s.ClatNs.Max
	}
	p := func(q float64) float64 {
		for k, v := range pcs {
			if f, err := strconv.ParseFloat(k, 64); err == nil && abs(f-q) < 1e-6 {
				return v / 1e3
			}
		}
		return 0
	}
	l := Latency{Count: s.TotalIOs, Mean: mean / 1e3, Max: mx / 1e3,
		P50: p(50), P90: p(90), P99: p(99), P999: p(99.9)}
	for _, q := range curve {
		if v := p(q); v > 0 {
			l.Percentiles = append(l.Percentiles, [2]float64{q, v})
		}
	}
	return l
}

// mixLat approximates a combined summary of a mixed workload (each
// percentile weighted by operation counts is not exact; we take the
// larger of the two, which bounds the true value from above).
func mixLat(a, b Latency) Latency {
	w := float64(a.Count) / float64(a.Count+b.Count)
	l := Latency{Count: a.Count + b.Count, Mean: a.Mean*w + b.Mean*(1-w),
		P50: max(a.P50, b.P50), P90: max(a.P90, b.P90), P99: max(a.P99, b.P99), P999: max(a.P999, b.P999), Max: max(a.Max, b.Max)}
	for i := range a.Percentiles {
		if i < len(b.Percentiles) {
			l.Percentiles = append(l.Percentiles, [2]float64{a.Percentiles[i][0], max(a.Percentiles[i][1], b.Percentiles[i][1])})
		}
	}
	return l
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func nonEmpty(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
