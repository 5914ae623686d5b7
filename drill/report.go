package drill

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"udm/perf"
)

// formLabel is the drill's form as its titles give it, naming fio when
// fio ran the workload ("short", "full, fio workload").
func (r *Report) formLabel() string {
	if strings.HasPrefix(r.Workload, "fio ") {
		return r.Form + ", fio workload"
	}
	return r.Form
}

// Summary writes the report's text summary: what ran, the figures, the
// checks and the verdict (the first line says PASS, or FAIL and why).
func (r *Report) Summary(w io.Writer) {
	a, rec := r.Analysis, r.Record
	head := fmt.Sprintf("udm drill %s (%s): %s", r.Name, r.formLabel(), a.Verdict)
	if a.Verdict != "PASS" {
		head += ": " + a.Reason
	}
	fmt.Fprintln(w, head)
	row := func(k, format string, args ...any) {
		fmt.Fprintln(w, strings.TrimRight(fmt.Sprintf("  %-9s %s", k, fmt.Sprintf(format, args...)), " "))
	}
	if r.Outcome != "" {
		row("outcome", "%s", r.Outcome)
	}
	row("workload", "%s, seed %d", r.Workload, r.Seed)
	row("map", "%s", r.Table)
	var paths []string
	for _, n := range rec.Paths {
		paths = append(paths, n+" = "+r.PathDevs[n])
	}
	row("paths", "%s", strings.Join(paths, ", "))
	row("checker", "%s", checkerString(r))
	for i, e := range rec.Events {
		k := ""
		if i == 0 {
			k = "events"
		}
		note := e.Detail
		if e.Err != "" {
			note = "ERROR: " + e.Err
		}
		row(k, "%6.2f s  %-28s %s", e.Start, e.Action, note)
	}
	row("I/O", "%d I/Os in %.1f s: %.0f IOPS mean, %.0f before the first event; %d reads, %d writes",
		rec.Ops, rec.End, a.Mean, a.Baseline, rec.Reads, rec.Writes)
	errs := fmt.Sprintf("%d unexpected, %d expected", a.UnexpectedErrors, a.ExpectedErrors)
	if len(a.ErrorsByErrno) > 0 {
		var parts []string
		for k, v := range a.ErrorsByErrno {
			parts = append(parts, fmt.Sprintf("%s×%d", k, v))
		}
		sort.Strings(parts)
		errs += " (described: " + strings.Join(parts, ", ") + ")"
	}
	row("errors", "%s", errs)
	if e := a.FirstUnexpected; e != nil {
		row("", "first unexpected: %s at offset %d (%d bytes) at %.3f s: %s", e.Op, e.Offset, e.Len, e.At.Seconds(), e.Err)
	}
	gap := "every 100 ms interval had completions"
	if a.LongestGap > 0 {
		gap = fmt.Sprintf("longest time without a completion %s (from %.1f s)", fmtDur(a.LongestGap), a.GapAt)
	}
	row("stall", "longest I/O %s; %s", fmtDur(a.LongestIO), gap)
	for _, f := range a.Faults {
		row(f.Path, "%s", faultString(f))
	}
	ver := fmt.Sprintf("%s read and checked", bytesStr(rec.VerifiedBytes))
	if rec.ReadBackBytes > 0 {
		ver += fmt.Sprintf(" (%s in the read-back pass after the run)", bytesStr(rec.ReadBackBytes))
	}
	ver += fmt.Sprintf("; %d failures", len(rec.VerifyFailures))
	row("verified", "%s", ver)
	for i, c := range a.Checks {
		k := ""
		if i == 0 {
			k = "checks"
		}
		st := "ok  "
		if !c.Pass {
			st = "FAIL"
		}
		d := ""
		if c.Detail != "" {
			d = ": " + c.Detail
		}
		row(k, "%s %s%s", st, c.Name, d)
	}
	if rec.Hung != "" {
		row("hung", "%s", rec.Hung)
	}
	row("verdict", "%s", a.Verdict)
}

func checkerString(r *Report) string {
	c := r.Checker
	var parts []string
	for _, kv := range [][2]string{{"polling_interval", c.PollingInterval}, {"check_timeout", c.CheckTimeout},
		{"io_deadline", c.IODeadline}, {"no_path_retry", c.NoPathRetry}, {"failback", c.Failback},
		{"max_polling_interval", c.MaxPollingInterval}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	return strings.Join(parts, " ")
}

func faultString(f Fault) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s at %.2f s: ", f.Action, f.At)
	if f.ToFailed != nil {
		fmt.Fprintf(&b, "failed after %s", fmtDur(*f.ToFailed))
	} else {
		b.WriteString("never seen failed")
	}
	if f.Failover != nil {
		fmt.Fprintf(&b, ", failover %s", fmtDur(*f.Failover))
	}
	if f.Repair != "" {
		fmt.Fprintf(&b, "; %s at %.2f s: ", f.Repair, f.RepairAt)
		if f.Reinstate != nil {
			fmt.Fprintf(&b, "reinstated after %s", fmtDur(*f.Reinstate))
		} else {
			b.WriteString("not reinstated")
		}
	}
	return b.String()
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteFiles writes NAME.txt (the summary), NAME.json and NAME.svg (the
// timeline) to dir, and returns their paths.
func (r *Report) WriteFiles(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	base := filepath.Join(dir, r.Name)
	var txt, js, svg bytes.Buffer
	r.Summary(&txt)
	if err := r.WriteJSON(&js); err != nil {
		return nil, err
	}
	if err := r.Plot(&svg); err != nil {
		return nil, err
	}
	var out []string
	for _, f := range []struct {
		ext string
		b   *bytes.Buffer
	}{{".txt", &txt}, {".json", &js}, {".svg", &svg}} {
		if err := os.WriteFile(base+f.ext, f.b.Bytes(), 0o644); err != nil {
			return out, err
		}
		out = append(out, base+f.ext)
	}
	return out, nil
}

// Plot draws the timeline as one SVG: IOPS (and errors) per interval,
// p99 and max latency per interval, and a band per path with its state
// as the daemon reported it; fault events are markers on all three.
func (r *Report) Plot(w io.Writer) error {
	rec := r.Record
	iv := rec.Interval
	xmax := rec.End
	var iops, errs, p99, mx [][2]float64
	for _, p := range rec.Timeline {
		if p.T+iv > rec.End+iv/2 {
			break // the last, partial interval (the workload stopping)
		}
		x := p.T + iv/2
		iops = append(iops, [2]float64{x, p.IOPS})
		errs = append(errs, [2]float64{x, float64(p.Errors) / iv})
		if p.IOPS > 0 {
			p99 = append(p99, [2]float64{x, p.P99 / 1e3})
			mx = append(mx, [2]float64{x, p.Max / 1e3})
		} else {
			// Nothing completed: a gap in the latency lines.
			p99 = append(p99, [2]float64{x, math.NaN()})
			mx = append(mx, [2]float64{x, math.NaN()})
		}
	}
	// Pin both plots' x range to [0, xmax].
	iops = append(iops, [2]float64{xmax, lastY(iops)})
	ser := []perf.Series{{Name: "IOPS", Points: iops}}
	if rec.Errors > 0 {
		ser = append(ser, perf.Series{Name: "errors/s", Points: append(errs, [2]float64{xmax, 0}), Dashed: true})
	}
	markers := r.markers()
	var top, mid bytes.Buffer
	title := fmt.Sprintf("udm drill %s (%s): %s", r.Name, r.formLabel(), r.Analysis.Verdict)
	if err := perf.PlotTimeline(&top, title, "I/O per second (100 ms intervals)", ser, false, markers); err != nil {
		return err
	}
	lat := []perf.Series{{Name: "p99 latency", Points: p99}, {Name: "max latency", Points: mx, Dashed: true}}
	lat[0].Points = append(lat[0].Points, [2]float64{xmax, math.NaN()})
	if err := perf.PlotTimeline(&mid, "latency per 100 ms interval", "ms (log)", lat, true, markers); err != nil {
		return err
	}
	const W, H = 900, 420
	rows := len(rec.Paths) + 2
	bandH := 40 + rows*22 + 50
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		W, 2*H+bandH, W, 2*H+bandH)
	fmt.Fprintf(w, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, 2*H+bandH)
	io.WriteString(w, nest(top.String(), 0))
	io.WriteString(w, nest(mid.String(), H))
	r.band(w, 2*H, xmax, markers)
	_, err := io.WriteString(w, "</svg>\n")
	return err
}

func lastY(pts [][2]float64) float64 {
	if len(pts) == 0 {
		return 0
	}
	return pts[len(pts)-1][1]
}

// nest places a standalone SVG at y inside another.
func nest(svg string, y int) string {
	return strings.Replace(svg, "<svg ", fmt.Sprintf(`<svg x="0" y="%d" `, y), 1)
}

// markers are the played events (awaits and expect-errors left out),
// those within 50 ms of each other merged.
func (r *Report) markers() []perf.Marker {
	var ms []perf.Marker
	for _, e := range r.Record.Events {
		a := actionOf(e.Action)
		if a == "await" || a == "expect-errors" {
			continue
		}
		if n := len(ms); n > 0 && e.Start-ms[n-1].X < 0.05 {
			ms[n-1].Label += "; " + e.Action
			continue
		}
		ms = append(ms, perf.Marker{X: e.Start, Label: e.Action})
	}
	return ms
}

// Colours of the path-state band.
var bandColors = map[string]string{
	StateActive: "#2ca02c",
	StateFailed: "#d62728",
	StateGone:   "#7f0000",
	"":          "#e8e8e8", // not in the live table
	"down":      "#999999", // the daemon didn't answer
	"queued":    "#ff7f0e",
	"suspended": "#9467bd",
}

// band draws one row per path (its state over time), then whether I/O
// was queued in the target and whether the map was suspended. The
// geometry matches perf.PlotTimeline's (plot area from x=70, 540 wide).
func (r *Report) band(w io.Writer, y0 int, xmax float64, markers []perf.Marker) {
	const L, PW, rowH = 70, 540, 22
	rec := r.Record
	px := func(x float64) float64 { return L + math.Max(0, math.Min(x, xmax))/xmax*PW }
	fmt.Fprintf(w, `<g transform="translate(0,%d)">`+"\n", y0)
	fmt.Fprintf(w, `<text x="%d" y="22" font-size="15" font-weight="bold">paths as the daemon listed them (polled every 100 ms)</text>`+"\n", L)
	rows := append(append([]string{}, rec.Paths...), "queued", "suspended")
	color := func(i int, s Sample) string {
		name := rows[i]
		switch {
		case !s.OK:
			return bandColors["down"]
		case i < len(rec.Paths):
			return bandColors[s.Paths[name]]
		case name == "queued" && s.Queued > 0:
			return bandColors["queued"]
		case name == "suspended" && s.Suspended:
			return bandColors["suspended"]
		}
		return ""
	}
	for i, name := range rows {
		y := 40 + i*rowH
		fmt.Fprintf(w, `<text x="%d" y="%d" text-anchor="end" font-size="11">%s</text>`+"\n", L-4, y+15, html.EscapeString(name))
		// One rectangle per run of samples of one colour, each sample
		// holding until the next.
		for j := 0; j < len(rec.Samples); {
			col := color(i, rec.Samples[j])
			k := j + 1
			for k < len(rec.Samples) && color(i, rec.Samples[k]) == col {
				k++
			}
			x0, x1 := rec.Samples[j].T, rec.End
			if k < len(rec.Samples) {
				x1 = rec.Samples[k].T
			}
			if col != "" && x1 > x0 {
				fmt.Fprintf(w, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>`, px(x0), y+2, math.Max(px(x1)-px(x0), 0.5), rowH-4, col)
			}
			j = k
		}
		fmt.Fprintf(w, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333"/>`+"\n", L, y+2, PW, rowH-4)
	}
	bottom := 40 + len(rows)*rowH
	for _, m := range markers {
		fmt.Fprintf(w, `<line x1="%.1f" x2="%.1f" y1="40" y2="%d" stroke="#c00" stroke-dasharray="4 3"/>`+"\n", px(m.X), px(m.X), bottom)
	}
	// Legend.
	lx := L + PW + 12
	for i, k := range []string{StateActive, StateFailed, StateGone, "", "down", "queued", "suspended"} {
		label := map[string]string{StateActive: "active", StateFailed: "failed", StateGone: "gone", "": "not in the table",
			"down": "daemon not answering", "queued": "I/O queued", "suspended": "suspended"}[k]
		ly := 44 + i*16
		fmt.Fprintf(w, `<rect x="%d" y="%d" width="14" height="10" fill="%s"/><text x="%d" y="%d">%s</text>`+"\n", lx, ly, bandColors[k], lx+20, ly+10, label)
	}
	step := 1.0
	for _, st := range []float64{0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300} {
		step = st
		if xmax/st <= 10 {
			break
		}
	}
	for x := 0.0; x <= xmax+1e-9; x += step {
		fmt.Fprintf(w, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%d" stroke="#333"/><text x="%.1f" y="%d" text-anchor="middle">%g</text>`+"\n",
			px(x), px(x), bottom, bottom+4, px(x), bottom+16, x)
	}
	fmt.Fprintf(w, `<text x="%.1f" y="%d" text-anchor="middle">time (s)</text>`+"\n", float64(L)+PW/2, bottom+32)
	fmt.Fprintln(w, `</g>`)
}
