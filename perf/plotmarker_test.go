package perf

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestPlotMarkerLabelsBesideTheirLines: a marker's label (rotated, its
// glyphs left of its baseline) covers no marker line: not its own, and
// not a neighbour's a few pixels away (the label then goes to the other
// side).
func TestPlotMarkerLabelsBesideTheirLines(t *testing.T) {
	var b strings.Builder
	// The x axis runs 0..10 over 540 px: 0.15 s is about 8 px.
	ms := []Marker{{X: 1, Label: "fail p0"}, {X: 5, Label: "cut r0"}, {X: 5.15, Label: "heal r0"}, {X: 9, Label: "reinstate p0"}}
	if err := PlotTimeline(&b, "t", "y", []Series{{Name: "s", Points: [][2]float64{{0, 1}, {10, 2}}}}, false, ms); err != nil {
		t.Fatal(err)
	}
	svg := b.String()
	var lines []float64
	for _, m := range regexp.MustCompile(`<line x1="([0-9.]+)" x2="[0-9.]+" y1="\d+" y2="[0-9.]+" stroke="#c00"`).FindAllStringSubmatch(svg, -1) {
		x, _ := strconv.ParseFloat(m[1], 64)
		lines = append(lines, x)
	}
	labels := regexp.MustCompile(`<text x="([0-9.]+)" y="\d+" fill="#c00" font-size="(\d+)"[^>]*>([^<]*)<`).FindAllStringSubmatch(svg, -1)
	if len(lines) != len(ms) || len(labels) != len(ms) {
		t.Fatalf("%d marker lines and %d labels for %d markers:\n%s", len(lines), len(labels), len(ms), svg)
	}
	for _, l := range labels {
		x, _ := strconv.ParseFloat(l[1], 64)
		size, _ := strconv.ParseFloat(l[2], 64)
		for _, lx := range lines {
			if lx >= x-size && lx <= x+2 {
				t.Errorf("label %q (glyphs %.1f..%.1f) covers the marker line at %.1f", l[3], x-size, x+2, lx)
			}
		}
	}
}
