package perf

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// Check is one performance target and whether the run met it.
type Check struct {
	Target string
	Pass   bool
	Detail string
	// Missing: a contender the check needs was not measured.
	Missing bool
}

func med(r *Report, workload, contender string) *Result {
	i := r.ContenderIndex(contender)
	m := r.Median[workload]
	if i < 0 || i >= len(m) {
		return nil
	}
	return m[i]
}

// EvaluateTargets checks udm's performance targets (the table at the top
// of BENCHMARKS.md: IOPS, p50, p99.9 and CPU per I/O against the best
// peer, allocations per I/O) against the medians of a full run.
func EvaluateTargets(r *Report) []Check {
	var cs []Check
	missing := func(target, what string) {
		cs = append(cs, Check{Target: target, Missing: true, Detail: what + " not measured"})
	}
	for _, w := range r.Workloads {
		if w.Name == Ext4Workload.Name || w.Name == TarWorkload.Name {
			target := "real stack: udm IOPS ≥ nbdkit's, " + w.Name
			u, nk := med(r, w.Name, CUdmExt4), med(r, w.Name, CNbdkitExt4)
			if u == nil || nk == nil {
				missing(target, "udm or nbdkit on ext4")
				continue
			}
			cs = append(cs, Check{Target: target, Pass: u.IOPS >= nk.IOPS,
				Detail: fmt.Sprintf("udm %.0f vs nbdkit %.0f (%.2f×)", u.IOPS, nk.IOPS, u.IOPS/nk.IOPS)})
			continue
		}
		for _, unix := range []bool{false, true} {
			tr, udm := "tcp", CUdmLinTCP
			if unix {
				tr, udm = "unix", CUdmLinUnix
			}
			target := fmt.Sprintf("IOPS ≥ best peer: %s over %s", w.Name, tr)
			u := med(r, w.Name, udm)
			var best *Result
			for _, p := range Peers(unix) {
				if m := med(r, w.Name, p); m != nil && (best == nil || m.IOPS > best.IOPS) {
					best = m
				}
			}
			if u == nil || best == nil {
				missing(target, "udm or its peers")
				continue
			}
			cs = append(cs, Check{Target: target, Pass: u.IOPS >= best.IOPS,
				Detail: fmt.Sprintf("udm %.0f vs %s %.0f (%.2f×)", u.IOPS, best.Engine, best.IOPS, u.IOPS/best.IOPS)})
			if w.Hogs > 0 {
				// Shared CPUs: stable as well as fast; the quiet
				// machine's latency and CPU targets don't apply.
				runs := r.Runs[w.Name][r.ContenderIndex(udm)]
				lo := u.IOPS
				for _, x := range runs {
					lo = min(lo, x.IOPS)
				}
				cs = append(cs, Check{Target: fmt.Sprintf("no repetition below 0.8× udm's median: %s over %s", w.Name, tr),
					Pass: lo >= 0.8*u.IOPS, Detail: fmt.Sprintf("lowest %.0f, median %.0f (%.2f×) over %d reps", lo, u.IOPS, lo/u.IOPS, len(runs))})
				continue
			}
			nk := med(r, w.Name, map[bool]string{false: CNbdkitTCP, true: CNbdkitUnix}[unix])
			if nk == nil {
				continue
			}
			if w.BS == 4096 {
				cs = append(cs, Check{Target: fmt.Sprintf("server CPU/IO ≤ ½ nbdkit's: %s over %s", w.Name, tr),
					Pass:   u.ServerCPUPerIO > 0 && u.ServerCPUPerIO <= nk.ServerCPUPerIO/2,
					Detail: fmt.Sprintf("udm %.2f µs vs nbdkit %.2f µs (%.2f×)", u.ServerCPUPerIO, nk.ServerCPUPerIO, u.ServerCPUPerIO/nk.ServerCPUPerIO)})
			}
			if w.Depth == 32 {
				cs = append(cs, Check{Target: fmt.Sprintf("p99.9 ≤ nbdkit's/10: %s over %s", w.Name, tr),
					Pass:   u.Lat.P999 <= nk.Lat.P999/10,
					Detail: fmt.Sprintf("udm %.0f µs vs nbdkit %.0f µs (%.2f×)", u.Lat.P999, nk.Lat.P999, u.Lat.P999/nk.Lat.P999)})
			}
			if w.Depth == 1 {
				d := fmt.Sprintf("udm %.1f µs vs nbdkit %.1f µs (%.2f×)", u.Lat.P50, nk.Lat.P50, u.Lat.P50/nk.Lat.P50)
				if fl := med(r, w.Name, map[bool]string{false: CFloorTCP, true: CFloorUnix}[unix]); fl != nil {
					d += fmt.Sprintf("; floor server %.1f µs (%.2f×)", fl.Lat.P50, fl.Lat.P50/nk.Lat.P50)
				}
				cs = append(cs, Check{Target: fmt.Sprintf("p50 ≥ 30%% below nbdkit's: %s over %s", w.Name, tr),
					Pass: u.Lat.P50 <= 0.7*nk.Lat.P50, Detail: d})
			}
		}
	}
	raw1, lin1, mp1 := med(r, "randread-4k-qd1", CUdmRawLoop), med(r, "randread-4k-qd1", CUdmLinLoop), med(r, "randread-4k-qd1", CUdmMpLoop)
	if raw1 != nil && lin1 != nil {
		cs = append(cs, Check{Target: "in process, randread 4k qd1: linear adds ≤ 1 µs to p50 over the raw loop device",
			Pass: lin1.Lat.P50-raw1.Lat.P50 <= 1, Detail: fmt.Sprintf("linear %.2f µs, raw %.2f µs (+%.2f µs)", lin1.Lat.P50, raw1.Lat.P50, lin1.Lat.P50-raw1.Lat.P50)})
	} else {
		missing("in process linear p50", "raw loop device or linear")
	}
	if raw1 != nil && mp1 != nil {
		cs = append(cs, Check{Target: "in process, randread 4k qd1: 2-path multipath adds ≤ 2 µs to p50",
			Pass: mp1.Lat.P50-raw1.Lat.P50 <= 2, Detail: fmt.Sprintf("multipath %.2f µs, raw %.2f µs (+%.2f µs)", mp1.Lat.P50, raw1.Lat.P50, mp1.Lat.P50-raw1.Lat.P50)})
	}
	fio32, lin32 := med(r, "randread-4k-qd32", CFioLoop), med(r, "randread-4k-qd32", CUdmLinLoop)
	if fio32 != nil && lin32 != nil {
		cs = append(cs, Check{Target: "in process, randread 4k qd32: linear IOPS ≥ 90% of fio io_uring on the loop device",
			Pass: lin32.IOPS >= 0.9*fio32.IOPS, Detail: fmt.Sprintf("linear %.0f vs fio %.0f (%.2f×)", lin32.IOPS, fio32.IOPS, lin32.IOPS/fio32.IOPS)})
	} else {
		missing("in process linear IOPS", "fio on the loop device or linear")
	}
	cs = append(cs, fuseTargets(r)...)
	for _, c := range []string{CUdmLinTCP, CUdmLinUnix, CUdmMpTCP, CUdmMpUnix} {
		worst := -1.0
		for _, w := range r.Workloads {
			if m := med(r, w.Name, c); m != nil && m.ServerAllocsPerIO >= 0 {
				worst = max(worst, m.ServerAllocsPerIO)
			}
		}
		if worst >= 0 {
			cs = append(cs, Check{Target: "zero allocations per I/O through NBD: " + c, Pass: worst < 0.01,
				Detail: fmt.Sprintf("worst workload: %.3f allocations per I/O in the daemon", worst)})
		}
	}
	return cs
}

// fuseTargets checks udm's FUSE frontend (a loop device over its file)
// against a loop device over nbdfuse to udm's and to nbdkit's NBD export
// (4 KiB random reads and writes: at depth 32 ≥ 2× their IOPS, at depth
// 1 ≤ 0.6× their p50), and against the floor, a loop device straight
// over the backing file (within 2×: IOPS ≥ ½, p50 ≤ 2×).
func fuseTargets(r *Report) []Check {
	var cs []Check
	for _, rw := range []string{"randread", "randwrite"} {
		for _, d := range []int{32, 1} {
			w := fmt.Sprintf("%s-4k-qd%d", rw, d)
			a := med(r, w, CUdmFuseLoop)
			if a == nil {
				continue
			}
			for _, o := range []string{CUdmNbdfuse, CNbdkitNbdfuse, CFioLoop} {
				b := med(r, w, o)
				if b == nil {
					cs = append(cs, Check{Target: "FUSE frontend against " + o + ": " + w, Missing: true, Detail: o + " not measured"})
					continue
				}
				iops := fmt.Sprintf("IOPS %.0f vs %.0f (%.2f×)", a.IOPS, b.IOPS, a.IOPS/b.IOPS)
				p50 := fmt.Sprintf("p50 %.1f µs vs %.1f µs (%.2f×)", a.Lat.P50, b.Lat.P50, a.Lat.P50/b.Lat.P50)
				switch {
				case o == CFioLoop && d == 32:
					cs = append(cs, Check{Target: "FUSE frontend IOPS ≥ ½ the loop device on the backing: " + w, Pass: a.IOPS >= b.IOPS/2, Detail: iops})
				case o == CFioLoop:
					cs = append(cs, Check{Target: "FUSE frontend p50 ≤ 2× the loop device on the backing: " + w, Pass: a.Lat.P50 <= 2*b.Lat.P50, Detail: p50})
				case d == 32:
					cs = append(cs, Check{Target: "FUSE frontend IOPS ≥ 2× " + o + ": " + w, Pass: a.IOPS >= 2*b.IOPS, Detail: iops})
				default:
					cs = append(cs, Check{Target: "FUSE frontend p50 ≤ 0.6× " + o + ": " + w, Pass: a.Lat.P50 <= 0.6*b.Lat.P50, Detail: p50})
				}
			}
		}
	}
	return cs
}

// WriteBenchmarks writes BENCHMARKS.md (to mdPath), the JSON report (to
// dir/report.json) and one latency-percentile SVG per workload (to
// plotDir, or dir if plotDir is empty; linked relative to the markdown
// file).
func WriteBenchmarks(r *Report, mdPath, dir, plotDir, command string) error {
	if plotDir == "" {
		plotDir = dir
	}
	for _, d := range []string{dir, plotDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := r.WriteJSON(filepath.Join(dir, "report.json")); err != nil {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(mdPath), plotDir)
	if err != nil {
		rel = plotDir
	}
	for _, w := range r.Workloads {
		var ss []Series
		for i, m := range r.Median[w.Name] {
			if m == nil || len(m.Lat.Percentiles) == 0 {
				continue
			}
			ss = append(ss, Series{Name: r.Contenders[i], Points: m.Lat.Percentiles, Dashed: !strings.HasPrefix(r.Contenders[i], "udm")})
		}
		if len(ss) == 0 {
			continue // no latencies (the tar row): no picture
		}
		f, err := os.Create(filepath.Join(plotDir, w.Name+".svg"))
		if err != nil {
			return err
		}
		PlotPercentiles(f, fmt.Sprintf("%s: latency percentiles (medians of %d runs)", w.Name, r.Reps), ss)
		f.Close()
	}
	f, err := os.Create(mdPath)
	if err != nil {
		return err
	}
	defer f.Close()
	writeBenchmarksMD(f, r, rel, command)
	return nil
}

func machine() string {
	var b strings.Builder
	if m, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(m), "\n") {
			if strings.HasPrefix(l, "model name") {
				b.WriteString(strings.TrimSpace(strings.SplitN(l, ":", 2)[1]))
				break
			}
		}
	}
	fmt.Fprintf(&b, ", %d CPUs", runtime.NumCPU())
	if v, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		fmt.Fprintf(&b, ", Linux %s", strings.TrimSpace(string(v)))
	}
	fmt.Fprintf(&b, ", %s", runtime.Version())
	return b.String()
}

func writeBenchmarksMD(w io.Writer, r *Report, svgDir, command string) {
	fmt.Fprintf(w, "# udm benchmarks\n\n")
	fmt.Fprintf(w, "Generated by `%s` on %s (%s). Every contender runs every workload %d times for %.0f s after a warm-up, "+
		"in one interleaved run whose order rotates each repetition; figures are medians. All contenders use the same "+
		"backing file on /dev/shm (the loop devices sit on it too). fio is the client for every NBD server "+
		"(`ioengine=nbd`, one connection); *CPU µs/IO* is the server process's user+system time per I/O for NBD rows "+
		"(read from /proc) and the whole process's for in-process rows. Latency is fio's total latency "+
		"(submission to completion), as udm's own harness measures it. The *floor server* is a reference, not a peer "+
		"(`udm bench floor-server`): it busy-polls its one connection and answers each request with a pread or "+
		"pwrite and one writev, so at depth 1 its latency is about the least a server can add to fio's; with many "+
		"requests in flight it does nothing to batch them.\n\n",
		command, r.Started.Format(time.DateOnly), machine(), r.Reps, r.RuntimeS)
	checks := EvaluateTargets(r)
	pass, fail := 0, 0
	for _, c := range checks {
		switch {
		case c.Missing:
		case c.Pass:
			pass++
		default:
			fail++
		}
	}
	fmt.Fprintf(w, "## Targets: %d met, %d missed\n\n| target | met | measured |\n|---|:---:|---|\n", pass, fail)
	for _, c := range checks {
		mark := "✅"
		if c.Missing {
			mark = "–"
		} else if !c.Pass {
			mark = "❌"
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", c.Target, mark, c.Detail)
	}
	fmt.Fprintf(w, "\n## Results by workload\n\nRatios: *vs best peer* divides by the best of nbdkit and qemu-nbd (both aio modes) on the same transport; "+
		"*vs raw device* divides NBD rows by fio on the raw file and in-process rows by fio on the loop device. "+
		"A p50 ratio below 1 is better.\n")
	names := r.Contenders
	var b strings.Builder
	r.Markdown(&b, FullRatios(names))
	// Interleave the plots after each workload's table.
	out := b.String()
	for _, wl := range r.Workloads {
		marker := fmt.Sprintf("\n### %s —", wl.Name)
		next := strings.Index(out, marker)
		if next < 0 || !hasLatencies(r, wl.Name) {
			continue
		}
		end := strings.Index(out[next+len(marker):], "\n### ")
		img := fmt.Sprintf("\n![%s latency percentiles](%s/%s.svg)\n", wl.Name, svgDir, wl.Name)
		if end < 0 {
			out = out + img
		} else {
			pos := next + len(marker) + end
			out = out[:pos] + img + out[pos:]
		}
	}
	io.WriteString(w, out)
}

// hasLatencies reports whether any contender measured latencies on the
// workload (the tar row measures none, and has no picture).
func hasLatencies(r *Report, wl string) bool {
	for _, m := range r.Median[wl] {
		if m != nil && len(m.Lat.Percentiles) > 0 {
			return true
		}
	}
	return false
}
