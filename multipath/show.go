package multipath

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// MapStatus describes one multipath map for listings (multipathd's show
// maps, show paths, show topology). The JSON names are multipathd's
// where it has the field (name, uuid, dm_st, chk_st, ...).
type MapStatus struct {
	Name      string `json:"name"`
	UUID      string `json:"uuid"`
	Size      int64  `json:"size"`      // bytes
	Features  string `json:"features"`  // "1 queue_if_no_path", as in the table
	HWHandler string `json:"hwhandler"` // "0", or "1 alua" (accepted and ignored)
	// QueueIfNoPath is the current queueing (off while suspending).
	QueueIfNoPath bool `json:"queue_if_no_path"`
	Queued        int  `json:"queued"` // I/Os held for lack of a path
	ValidPaths    int  `json:"valid_paths"`
	Suspended     bool `json:"suspended"`
	// Checker settings ("" when the map is not checked).
	NoPathRetry string        `json:"no_path_retry"`
	Failback    string        `json:"failback"`
	Groups      []GroupStatus `json:"path_groups"`
}

// GroupStatus is one priority group.
type GroupStatus struct {
	Num      int    `json:"group"`    // 1-based
	Selector string `json:"selector"` // "round-robin 0"
	// Status is active (in use), enabled, or disabled (bypassed).
	Status string       `json:"dm_st"`
	Paths  []PathStatus `json:"paths"`
}

// PathStatus is one path.
type PathStatus struct {
	Map   string `json:"multipath"`
	Dev   string `json:"dev"`   // as in the table
	Group int    `json:"group"` // 1-based
	// DMState is the target's view: active or failed.
	DMState   string `json:"dm_st"`
	FailCount uint32 `json:"fail_count"`
	// Checker is the last check's result: ready, faulty, gone, undef
	// (not checked yet), or "" when the map has no checker.
	Checker string `json:"chk_st"`
	// Operator: failed by hand; the checker leaves it alone.
	Operator bool `json:"operator_failed"`
	// NextCheck is the time to the next check (0 if unknown); Checks
	// counts the checks done.
	NextCheck time.Duration `json:"next_check_ns"`
	Checks    int64         `json:"checks"`
	LastError string        `json:"last_error,omitempty"`
	// Info is the selector's per-path status (in-flight I/O or bytes).
	Info string `json:"info"`
}

// MapStatus describes the map (without checker information).
func (t *Multipath) MapStatus() MapStatus {
	st := t.state()
	ms := MapStatus{
		Name:          t.Name(),
		Features:      t.spec.Features(st.queueNext),
		HWHandler:     "0",
		QueueIfNoPath: st.queue,
		Queued:        st.held,
		ValidPaths:    st.valid,
		Suspended:     st.suspended,
	}
	if t.spec.HWHandler != "" {
		ms.HWHandler = "1 " + t.spec.HWHandler
	}
	if d := t.Device(); d != nil {
		ms.UUID, ms.Size = d.UUID(), d.Size()
	}
	for gi, g := range t.groups {
		gs := &t.spec.Groups[gi]
		var sb strings.Builder
		gs.formatSelector(&sb)
		grp := GroupStatus{Num: gi + 1, Selector: strings.TrimSpace(gs.Selector + " " + sb.String()), Status: "enabled"}
		switch {
		case st.bypassed[gi]:
			grp.Status = "disabled"
		case gi == st.cur:
			grp.Status = "active"
		}
		for _, p := range g.paths {
			dmst := "failed"
			if st.active[p.idx] {
				dmst = "active"
			}
			grp.Paths = append(grp.Paths, PathStatus{
				Map: ms.Name, Dev: p.name, Group: gi + 1, DMState: dmst,
				FailCount: st.fails[p.idx], Info: strings.TrimSpace(p.info()),
			})
		}
		ms.Groups = append(ms.Groups, grp)
	}
	return ms
}

// Maps describes every live map the checker knows, sorted by name, with
// the checker's view of each path.
func (c *Checker) Maps() []MapStatus {
	es := c.entries()
	out := make([]MapStatus, 0, len(es))
	for _, e := range es {
		ms := e.t.MapStatus()
		ms.NoPathRetry = e.cfg.NoPathRetry.String()
		if ms.NoPathRetry == "" {
			ms.NoPathRetry = "table"
		}
		ms.Failback = e.cfg.Failback.String()
		now := e.clock.Now()
		e.mu.Lock()
		m := e.mu.m
		for gi := range ms.Groups {
			for pi := range ms.Groups[gi].Paths {
				ps := &ms.Groups[gi].Paths[pi]
				pc := &m.paths[e.t.groups[gi].paths[pi].idx]
				ps.Checker = pc.state.String()
				ps.Operator = pc.Operator
				ps.LastError = pc.lastErr
				ps.Checks = pc.checks
				if e.cfg.PollingInterval > 0 {
					ps.NextCheck = max(pc.next.Sub(now), 0)
				}
			}
		}
		e.mu.Unlock()
		out = append(out, ms)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Paths flattens the maps' paths.
func Paths(maps []MapStatus) []PathStatus {
	var out []PathStatus
	for _, m := range maps {
		for _, g := range m.Groups {
			out = append(out, g.Paths...)
		}
	}
	return out
}

// FormatMaps prints one line per map (multipathd show maps).
func FormatMaps(w io.Writer, maps []MapStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "name\tuuid\tsize\tfeatures\tqueued\tpaths\tvalid\tno_path_retry\tfailback")
	for _, m := range maps {
		n := 0
		for _, g := range m.Groups {
			n += len(g.Paths)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", m.Name, dash(m.UUID), sizeString(m.Size),
			m.Features, m.Queued, n, m.ValidPaths, dash(m.NoPathRetry), dash(m.Failback))
	}
	return tw.Flush()
}

// FormatPaths prints one line per path (multipathd show paths).
func FormatPaths(w io.Writer, maps []MapStatus) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "map\tdev\tpg\tdm_st\tchk_st\tfail_count\tnext_check\tinfo")
	for _, p := range Paths(maps) {
		chk := p.Checker
		if p.Operator {
			chk += " (operator)"
		}
		next := "-"
		if p.NextCheck > 0 || p.Checker != "" {
			next = p.NextCheck.Round(time.Millisecond).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", p.Map, p.Dev, p.Group, p.DMState, dash(chk),
			p.FailCount, next, dash(p.Info))
	}
	return tw.Flush()
}

// FormatTopology prints maps with their groups and paths as multipathd's
// show topology does:
//
//	mpatha (uuid)
//	size=1.0G features='1 queue_if_no_path' hwhandler='0' queued=0
//	|-+- policy='round-robin 0' status=active
//	| `- /dev/loop0 active ready fail_count=0
//	`-+- policy='round-robin 0' status=enabled
//	  `- /dev/loop1 failed faulty fail_count=1
func FormatTopology(w io.Writer, maps []MapStatus) error {
	var b strings.Builder
	for _, m := range maps {
		b.WriteString(m.Name)
		if m.UUID != "" {
			fmt.Fprintf(&b, " (%s)", m.UUID)
		}
		if m.Suspended {
			b.WriteString(" suspended")
		}
		b.WriteByte('\n')
		fmt.Fprintf(&b, "size=%s features='%s' hwhandler='%s' queued=%d\n", sizeString(m.Size), m.Features, m.HWHandler, m.Queued)
		for gi, g := range m.Groups {
			lastG := gi == len(m.Groups)-1
			branch, indent := "|-+- ", "| "
			if lastG {
				branch, indent = "`-+- ", "  "
			}
			fmt.Fprintf(&b, "%spolicy='%s' status=%s\n", branch, g.Selector, g.Status)
			for pi, p := range g.Paths {
				leaf := "|- "
				if pi == len(g.Paths)-1 {
					leaf = "`- "
				}
				chk := p.Checker
				if chk == "" {
					chk = "unchecked"
				}
				if p.Operator {
					chk += "(operator)"
				}
				fmt.Fprintf(&b, "%s%s%s %s %s fail_count=%d\n", indent, leaf, p.Dev, p.DMState, chk, p.FailCount)
			}
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// sizeString prints a size as multipathd does (1.0G, 512M).
func sizeString(n int64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%dB", n)
	}
	f := float64(n)
	u := -1
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	return fmt.Sprintf("%.1f%c", f, units[u])
}

// SizeString prints a size in bytes as multipathd does (1.0G, 512M).
func SizeString(n int64) string { return sizeString(n) }
