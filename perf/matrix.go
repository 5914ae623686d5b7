package perf

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Workload is one row of a side-by-side comparison.
type Workload struct {
	Name    string `json:"name"`
	RW      string `json:"rw"`
	BS      int    `json:"bs"`
	Depth   int    `json:"iodepth"`
	ReadPct int    `json:"rwmixread,omitempty"`
	// Hogs is the condition the workload runs in: this many CPU-bound
	// processes (busy shell loops at normal priority) run beside every
	// run of it, started just before and ended just after, as when the
	// server shares its CPUs with its clients and neighbours. 0: a quiet
	// machine.
	Hogs int `json:"hogs,omitempty"`
	// For, if set, runs the workload only for contenders whose names
	// contain one of these.
	For []string `json:"for,omitempty"`
}

// Runs reports whether contender name runs workload w.
func (w Workload) Runs(name string) bool { return len(w.For) == 0 || keep(name, w.For) }

// Contender is one thing measured on every workload: fio on a device,
// udm in process, an NBD server with fio as its client, ...
type Contender struct {
	Name string
	// Run measures one workload for runtime (after ramp).
	Run func(ctx context.Context, w Workload, runtime, ramp time.Duration) (*Result, error)
	// Workloads, if set, are the only workloads (by name) it runs.
	Workloads []string
}

// runs reports whether c runs workload w (see Workload.For).
func (c Contender) runs(w Workload) bool {
	if !w.Runs(c.Name) {
		return false
	}
	if len(c.Workloads) == 0 {
		return true
	}
	for _, n := range c.Workloads {
		if n == w.Name {
			return true
		}
	}
	return false
}

// Matrix runs every contender on every workload, Reps times, rotating the
// contenders' order each repetition so drift on a noisy machine spreads
// evenly, and reports medians.
type Matrix struct {
	Workloads  []Workload
	Contenders []Contender
	Reps       int
	Runtime    time.Duration
	Ramp       time.Duration
	Log        io.Writer // progress lines; nil for none
}

// Report holds every run and the medians.
type Report struct {
	Started    time.Time              `json:"started"`
	Reps       int                    `json:"reps"`
	RuntimeS   float64                `json:"runtime_s"`
	Workloads  []Workload             `json:"workloads"`
	Contenders []string               `json:"contenders"`
	Runs       map[string][][]*Result `json:"runs"`   // workload -> contender index -> reps
	Median     map[string][]*Result   `json:"median"` // workload -> contender index
	Failures   []string               `json:"failures,omitempty"`
}

// Run executes the matrix.
func (m *Matrix) Run(ctx context.Context) (*Report, error) {
	if m.Reps <= 0 {
		m.Reps = 3
	}
	rep := &Report{Started: time.Now(), Reps: m.Reps, RuntimeS: m.Runtime.Seconds(), Workloads: m.Workloads,
		Runs: map[string][][]*Result{}, Median: map[string][]*Result{}}
	for _, c := range m.Contenders {
		rep.Contenders = append(rep.Contenders, c.Name)
	}
	for _, w := range m.Workloads {
		rep.Runs[w.Name] = make([][]*Result, len(m.Contenders))
	}
	n := len(m.Contenders)
	for r := 0; r < m.Reps; r++ {
		for _, w := range m.Workloads {
			for k := 0; k < n; k++ {
				ci := (k + r) % n
				if ctx.Err() != nil {
					return rep, ctx.Err()
				}
				c := m.Contenders[ci]
				if !c.runs(w) {
					continue
				}
				stop := StartHogs(w.Hogs, m.Runtime+m.Ramp+hogSlack)
				res, err := c.Run(ctx, w, m.Runtime, m.Ramp)
				stop()
				if err != nil {
					msg := fmt.Sprintf("%s on %s (rep %d): %v", c.Name, w.Name, r+1, err)
					rep.Failures = append(rep.Failures, msg)
					m.logf("FAILED %s\n", msg)
					continue
				}
				res.Engine = c.Name
				rep.Runs[w.Name][ci] = append(rep.Runs[w.Name][ci], res)
				m.logf("rep %d/%d  %-22s %s\n", r+1, m.Reps, w.Name, res)
			}
		}
	}
	for _, w := range m.Workloads {
		meds := make([]*Result, n)
		for ci, rs := range rep.Runs[w.Name] {
			meds[ci] = Median(rs)
			if meds[ci] != nil {
				meds[ci].Engine = m.Contenders[ci].Name
			}
		}
		rep.Median[w.Name] = meds
	}
	return rep, nil
}

func (m *Matrix) logf(format string, a ...any) {
	if m.Log != nil {
		fmt.Fprintf(m.Log, format, a...)
	}
}

// Ratio names a comparison column: each row's figure divided by the
// figure of contender Ref on the same workload.
type Ratio struct {
	Label string
	// Ref picks the reference contender for a row (by index), or -1.
	Ref func(workload string, row int, meds []*Result) int
}

// RefByName returns a Ratio reference that is always the named contender.
func RefByName(names []string, name string) func(string, int, []*Result) int {
	idx := -1
	for i, n := range names {
		if n == name {
			idx = i
		}
	}
	return func(string, int, []*Result) int { return idx }
}

// Markdown writes one table per workload with the medians and ratio
// columns (IOPS ratio, and p50 ratio where lower is better).
func (r *Report) Markdown(w io.Writer, ratios []Ratio) {
	for _, wl := range r.Workloads {
		meds := r.Median[wl.Name]
		if wl.RW == TarWorkload.RW {
			fmt.Fprintf(w, "\n### %s — tar -xf of a %d-file source tree, then sync (IOPS: files per second)\n\n", wl.Name, srcFiles)
		} else {
			fmt.Fprintf(w, "\n### %s — %s, bs %s, iodepth %d\n\n", wl.Name, wl.RW, sizeStr(wl.BS), wl.Depth)
		}
		hdr := "| contender | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs | CPU µs/IO |"
		sep := "|---|---:|---:|---:|---:|---:|---:|"
		for _, ra := range ratios {
			hdr += " IOPS vs " + ra.Label + " | p50 vs " + ra.Label + " |"
			sep += "---:|---:|"
		}
		fmt.Fprintln(w, hdr)
		fmt.Fprintln(w, sep)
		for i, m := range meds {
			if m == nil && !r.ran(wl.Name, i) {
				continue
			}
			if m == nil {
				fmt.Fprintf(w, "| %s | failed | | | | | |", r.Contenders[i])
				for range ratios {
					fmt.Fprint(w, " | |")
				}
				fmt.Fprintln(w)
				continue
			}
			cpu := m.CPUPerIO
			if m.ServerCPUPerIO > 0 {
				cpu = m.ServerCPUPerIO
			}
			fmt.Fprintf(w, "| %s | %.0f | %.1f | %s | %s | %s | %.2f |", m.Engine, m.IOPS, m.MBps, latCell(m.Lat.P50), latCell(m.Lat.P99), latCell(m.Lat.P999), cpu)
			for _, ra := range ratios {
				ref := ra.Ref(wl.Name, i, meds)
				if ref < 0 || ref >= len(meds) || meds[ref] == nil || ref == i {
					fmt.Fprint(w, " – | – |")
					continue
				}
				p50 := "–"
				if m.Lat.P50 > 0 && meds[ref].Lat.P50 > 0 {
					p50 = fmt.Sprintf("%.2f", m.Lat.P50/meds[ref].Lat.P50)
				}
				fmt.Fprintf(w, " %.2f | %s |", m.IOPS/meds[ref].IOPS, p50)
			}
			fmt.Fprintln(w)
		}
		if wl.Hogs > 0 || len(wl.For) > 0 {
			r.spread(w, wl)
		}
	}
	if len(r.Failures) > 0 {
		fmt.Fprintf(w, "\nFailures:\n")
		for _, f := range r.Failures {
			fmt.Fprintf(w, "- %s\n", f)
		}
	}
}

// latCell is a latency percentile's cell: "–" where the workload
// measures none (the tar row times the whole extract).
func latCell(us float64) string {
	if us <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", us)
}

// ran reports whether contender ci ran workload wl, or tried to.
func (r *Report) ran(wl string, ci int) bool {
	if len(r.Runs[wl][ci]) > 0 {
		return true
	}
	prefix := r.Contenders[ci] + " on " + wl + " ("
	for _, f := range r.Failures {
		if strings.HasPrefix(f, prefix) {
			return true
		}
	}
	return false
}

// spread lists each contender's IOPS per repetition and the lowest as a
// share of the median: how stable the figure is, not just where its
// middle lies. Shown for the shared-CPU and the real-stack workloads.
func (r *Report) spread(w io.Writer, wl Workload) {
	if wl.Hogs > 0 {
		fmt.Fprintf(w, "\nPer repetition, beside %d CPU hogs (IOPS; lowest/median):\n\n", wl.Hogs)
	} else {
		fmt.Fprintf(w, "\nPer repetition (IOPS; lowest/median):\n\n")
	}
	for i, runs := range r.Runs[wl.Name] {
		med := r.Median[wl.Name][i]
		if len(runs) == 0 || med == nil || med.IOPS <= 0 {
			continue
		}
		lo := runs[0].IOPS
		var reps []string
		for _, x := range runs {
			lo = min(lo, x.IOPS)
			reps = append(reps, fmt.Sprintf("%.0f", x.IOPS))
		}
		fmt.Fprintf(w, "- %s: %s; %.2f\n", r.Contenders[i], strings.Join(reps, ", "), lo/med.IOPS)
	}
}

// WriteJSON saves the report.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// ContenderIndex finds a contender by name, or -1.
func (r *Report) ContenderIndex(name string) int {
	for i, n := range r.Contenders {
		if n == name {
			return i
		}
	}
	return -1
}

// FioContender measures fio with the given job template; Filename or URI
// set by the caller.
func FioContender(name string, tmpl FioJob) Contender {
	return Contender{Name: name, Run: func(ctx context.Context, w Workload, runtime, ramp time.Duration) (*Result, error) {
		j := tmpl
		j.Name = name
		j.RW, j.BlockSize, j.Depth, j.ReadPct = w.RW, w.BS, w.Depth, w.ReadPct
		j.Runtime, j.Ramp = runtime, ramp
		return RunFio(ctx, j)
	}}
}

// CommandContender runs an external command that prints a Result as JSON
// (udm bench --json), with the workload's parameters appended as flags.
func CommandContender(name string, argv []string) Contender {
	return Contender{Name: name, Run: func(ctx context.Context, w Workload, runtime, ramp time.Duration) (*Result, error) {
		args := append([]string(nil), argv[1:]...)
		args = append(args, "--rw", w.RW, "--bs", fmt.Sprint(w.BS), "--iodepth", fmt.Sprint(w.Depth),
			"--runtime", runtime.String(), "--ramp", ramp.String(), "--json", "--quiet")
		if w.ReadPct > 0 {
			args = append(args, "--rwmixread", fmt.Sprint(w.ReadPct))
		}
		out, err := runCmd(ctx, argv[0], args...)
		if err != nil {
			return nil, err
		}
		var res Result
		if err := json.Unmarshal(out, &res); err != nil {
			return nil, fmt.Errorf("perf: %s printed no result: %v: %s", strings.Join(argv, " "), err, out)
		}
		return &res, nil
	}}
}
