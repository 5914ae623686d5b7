package perf

import (
	"bytes"
	"fmt"
	"regexp"
	"testing"
)

// TestPlotSeriesStylesUnique: in a percentile plot of more series than
// the palette has colours (as make bench's, with udm's solid and the
// others dashed), no two lines share colour and dash pattern, and each
// legend entry is drawn as its line is.
func TestPlotSeriesStylesUnique(t *testing.T) {
	for _, n := range []int{5, 19, 40} {
		var ss []Series
		for i := 0; i < n; i++ {
			ss = append(ss, Series{Name: fmt.Sprintf("s%d", i), Points: [][2]float64{{50, 10 + float64(i)}, {99, 100 + float64(i)}}, Dashed: i%3 != 0})
		}
		var b bytes.Buffer
		if err := PlotPercentiles(&b, "t", ss); err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile(`<(path|line) fill="none" stroke="([^"]+)" stroke-width="2"( stroke-dasharray="([^"]+)")?`)
		lines := re.FindAllStringSubmatch(b.String(), -1)
		if len(lines) != n {
			t.Fatalf("%d series: %d lines drawn", n, len(lines))
		}
		seen := map[string]int{}
		for i, m := range lines {
			style := m[2] + "/" + m[4]
			if j, dup := seen[style]; dup {
				t.Errorf("%d series: s%d and s%d share colour and dash (%s)", n, j, i, style)
			}
			seen[style] = i
		}
		legend := regexp.MustCompile(`<line x1="\d+" x2="\d+" y1="\d+" y2="\d+" stroke="([^"]+)" stroke-width="3"( stroke-dasharray="([^"]+)")?/>`).FindAllStringSubmatch(b.String(), -1)
		if len(legend) != n {
			t.Fatalf("%d series: %d legend entries", n, len(legend))
		}
		for i, m := range legend {
			if m[1]+"/"+m[3] != lines[i][2]+"/"+lines[i][4] {
				t.Errorf("legend of s%d drawn %s/%s, its line %s/%s", i, m[1], m[3], lines[i][2], lines[i][4])
			}
		}
	}
}
