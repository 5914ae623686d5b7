package perf

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
)

// Series is one line of a plot.
type Series struct {
	Name   string
	Points [][2]float64 // x, y
	Dashed bool
}

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
	"#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"}

// Line dash patterns ("": solid). A series asks for a solid or a dashed
// line; past the palette's length the next pattern of its kind is used,
// so that no two series of a plot share colour and pattern.
var (
	solidDashes  = []string{"", "1 3", "8 2 1 2", "12 3 3 3"}
	dashedDashes = []string{"6 3", "2 2", "10 3 2 3", "4 2 1 2 1 2"}
)

// seriesStyle returns the colour and dash pattern of the i-th series of
// a plot: the colour cycles through the palette, the pattern steps at
// each cycle, so (colour, pattern) is unique to i for i up to
// len(palette)*len(solidDashes).
func seriesStyle(i int, dashed bool) (colour, dash string) {
	dashes := solidDashes
	if dashed {
		dashes = dashedDashes
	}
	return palette[i%len(palette)], dashes[(i/len(palette))%len(dashes)]
}

// PlotPercentiles draws latency-percentile curves: x is the percentile on
// a "nines" scale (50, 90, 99, 99.9, ... evenly spaced), y is latency in
// µs on a log scale.
func PlotPercentiles(w io.Writer, title string, series []Series) error {
	nines := func(p float64) float64 { return -math.Log10(1 - min(p, 99.999)/100) }
	var ss []Series
	for _, s := range series {
		var pts [][2]float64
		for _, p := range s.Points {
			if p[0] >= 10 && p[1] > 0 {
				pts = append(pts, [2]float64{nines(p[0]), p[1]})
			}
		}
		if len(pts) > 0 {
			ss = append(ss, Series{Name: s.Name, Points: pts, Dashed: s.Dashed})
		}
	}
	xt := []float64{50, 90, 99, 99.9, 99.99}
	return plot(w, title, "percentile", "latency (µs, log)", ss, nines(10), nines(99.99), xt, func(v float64) string {
		for _, p := range xt {
			if math.Abs(nines(p)-v) < 1e-9 {
				return fmt.Sprintf("p%g", p)
			}
		}
		return ""
	}, true, nines)
}

// PlotTimeline draws a value over time (seconds) on a linear or log y
// axis, with optional vertical event markers. A point whose y is NaN
// breaks its line (no value there).
func PlotTimeline(w io.Writer, title, ylabel string, series []Series, logY bool, events []Marker) error {
	var xmax float64
	for _, s := range series {
		for _, p := range s.Points {
			xmax = max(xmax, p[0])
		}
	}
	if xmax == 0 {
		xmax = 1
	}
	var xt []float64
	step := niceStep(xmax / 8)
	for x := 0.0; x <= xmax+1e-9; x += step {
		xt = append(xt, x)
	}
	return plotWith(w, title, "time (s)", ylabel, series, 0, xmax, xt, func(v float64) string { return fmt.Sprintf("%g", v) }, logY, events)
}

// markerFont is the size of marker labels. Rotated to read upwards, a
// label's glyphs lie left of its baseline x: from x-markerFont to x+2
// (descenders).
const markerFont = 10

// markerLabelX places the label of the marker at xs[i] (the x of every
// marker's line): its baseline just left of its line, so that the glyphs
// end 2 px before it, unless another marker's line would be under them;
// then just right of it, if that side is clear.
func markerLabelX(xs []float64, i int) float64 {
	clear := func(lx float64) bool {
		for _, x := range xs {
			if x >= lx-markerFont-1 && x <= lx+3 {
				return false
			}
		}
		return true
	}
	left, right := xs[i]-4, xs[i]+markerFont+4
	if !clear(left) && clear(right) {
		return right
	}
	return left
}

// Marker is a labelled vertical line (a fault event on a timeline).
type Marker struct {
	X     float64
	Label string
}

func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	e := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= raw {
			return m * e
		}
	}
	return 10 * e
}

func plot(w io.Writer, title, xl, yl string, ss []Series, x0, x1 float64, xt []float64, xfmt func(float64) string, logY bool, xmap func(float64) float64) error {
	xs := make([]float64, len(xt))
	for i, t := range xt {
		xs[i] = xmap(t)
	}
	return plotWith(w, title, xl, yl, ss, x0, x1, xs, xfmt, logY, nil)
}

func plotWith(w io.Writer, title, xl, yl string, ss []Series, x0, x1 float64, xt []float64, xfmt func(float64) string, logY bool, markers []Marker) error {
	const W, H, L, R, T, B = 900, 420, 70, 290, 40, 50
	pw, ph := float64(W-L-R), float64(H-T-B)
	ymin, ymax := math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, p := range s.Points {
			if logY && p[1] <= 0 || math.IsNaN(p[1]) {
				continue
			}
			ymin, ymax = min(ymin, p[1]), max(ymax, p[1])
		}
	}
	if math.IsInf(ymin, 1) {
		ymin, ymax = 1, 10
	}
	if !logY {
		ymin = 0
	}
	var yt []float64
	ty := func(v float64) float64 { return v }
	if logY {
		lo, hi := math.Floor(math.Log10(ymin)), math.Ceil(math.Log10(ymax))
		if hi == lo {
			hi++
		}
		ymin, ymax = math.Pow(10, lo), math.Pow(10, hi)
		for e := lo; e <= hi; e++ {
			yt = append(yt, math.Pow(10, e))
		}
		ty = math.Log10
	} else {
		step := niceStep(ymax / 5)
		ymax = math.Ceil(ymax/step) * step
		if ymax == 0 {
			ymax = 1
		}
		for v := 0.0; v <= ymax+1e-9; v += step {
			yt = append(yt, v)
		}
	}
	px := func(x float64) float64 { return float64(L) + (x-x0)/(x1-x0)*pw }
	py := func(y float64) float64 {
		return float64(T) + ph - (ty(max(y, ymin))-ty(ymin))/(ty(ymax)-ty(ymin))*ph
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", W, H, W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">%s</text>`+"\n", L, html.EscapeString(title))
	for _, y := range yt {
		fmt.Fprintf(&b, `<line x1="%d" x2="%.1f" y1="%.1f" y2="%.1f" stroke="#ddd"/>`, L, float64(L)+pw, py(y), py(y))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", L-6, py(y)+4, fmtNum(y))
	}
	for _, x := range xt {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#ddd"/>`, px(x), px(x), T, float64(T)+ph)
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(x), float64(T)+ph+16, html.EscapeString(xfmt(x)))
	}
	xs := make([]float64, len(markers))
	for i, m := range markers {
		xs[i] = px(m.X)
	}
	for i, m := range markers {
		fmt.Fprintf(&b, `<line x1="%.1f" x2="%.1f" y1="%d" y2="%.1f" stroke="#c00" stroke-dasharray="4 3"/>`, xs[i], xs[i], T, float64(T)+ph)
		// Rotated to read upwards, ending at the top of the plot, beside
		// its line (not on it).
		lx := markerLabelX(xs, i)
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" fill="#c00" font-size="%d" text-anchor="end" transform="rotate(-90 %.1f %d)">%s</text>`+"\n",
			lx, T+4, markerFont, lx, T+4, html.EscapeString(m.Label))
	}
	fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%.0f" height="%.0f" fill="none" stroke="#333"/>`+"\n", L, T, pw, ph)
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", float64(L)+pw/2, H-10, html.EscapeString(xl))
	fmt.Fprintf(&b, `<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">%s</text>`+"\n", float64(T)+ph/2, float64(T)+ph/2, html.EscapeString(yl))
	for i, s := range ss {
		col, pattern := seriesStyle(i, s.Dashed)
		// A NaN y ends a stretch of the line (a gap: no value there).
		var path strings.Builder
		move := true
		for _, p := range s.Points {
			if math.IsNaN(p[1]) {
				move = true
				continue
			}
			if logY && p[1] <= 0 {
				continue
			}
			cmd := "L"
			if move {
				cmd, move = "M", false
			}
			fmt.Fprintf(&path, "%s%.1f,%.1f ", cmd, px(p[0]), py(p[1]))
		}
		dash := ""
		if pattern != "" {
			dash = ` stroke-dasharray="` + pattern + `"`
		}
		fmt.Fprintf(&b, `<path fill="none" stroke="%s" stroke-width="2"%s d="%s"/>`+"\n", col, dash, strings.TrimSpace(path.String()))
		ly := T + 14 + i*18
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="%s" stroke-width="3"%s/>`, W-R+12, W-R+36, ly-4, ly-4, col, dash)
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", W-R+42, ly, html.EscapeString(s.Name))
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func fmtNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}
