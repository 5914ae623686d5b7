package daemon_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"sort"
	"strings"
	"testing"

	"udm/internal/testutil"
)

// TestMetricsConventions scrapes a daemon serving a multipath map (with
// a path checker), a linear device and an open NBD connection, and
// checks the names against Prometheus' conventions: promtool check
// metrics finds nothing, every counter ends in _total, udm_build_info
// is there with its labels, the NBD connection is counted under its
// export's name, and the op label of udm_device_io_total and
// udm_device_latency_seconds takes the same values (as does that of
// udm_path_io_total and udm_path_latency_seconds).
func TestMetricsConventions(t *testing.T) {
	promtool := testutil.RequireTool(t, "promtool")
	u, dir := startScratch(t, "--metrics", "127.0.0.1:0")
	a, p0, p1 := backing(t, dir, "lin", 8<<20), backing(t, dir, "p0", 8<<20), backing(t, dir, "p1", 8<<20)
	u.ok("create", "lin", "--table", "0 16384 linear "+a+" 0")
	u.ok("create", "mp", "--table", "0 16384 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 "+p0+" 1 "+p1+" 1")
	cl := dialNBD(t, u.nbdURI("lin"))
	ctx := context.Background()
	if err := cl.WriteAt(ctx, make([]byte, 4096), 0, false); err != nil {
		t.Fatal(err)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	mp := dialNBD(t, u.nbdURI("mp"))
	if err := mp.ReadAt(ctx, make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Get("http://" + u.info.Metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	check := exec.Command(promtool, "check", "metrics")
	check.Stdin = bytes.NewReader(body)
	if out, err := check.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}

	types := map[string]string{}
	for _, m := range regexp.MustCompile(`(?m)^# TYPE (\S+) (\S+)$`).FindAllStringSubmatch(string(body), -1) {
		types[m[1]] = m[2]
	}
	for name, typ := range types {
		if typ == "counter" && !strings.HasSuffix(name, "_total") {
			t.Errorf("counter %s does not end in _total", name)
		}
	}
	for _, name := range []string{"udm_device_events_total", "udm_path_failures_total", "udm_build_info"} {
		if types[name] == "" {
			t.Errorf("no %s", name)
		}
	}
	if !regexp.MustCompile(`(?m)^udm_build_info\{goversion="go[^"]+",revision="[^"]+",version="[^"]+"\} 1$`).Match(body) {
		t.Errorf("udm_build_info is not 1 with goversion, revision and version:\n%s", grepLines(body, "udm_build_info"))
	}
	for _, exp := range []string{"lin", "mp"} {
		if n := scrape(t, u.info.Metrics, `udm_nbd_export_connections_active{export="`+exp+`"}`); n != 1 {
			t.Errorf("udm_nbd_export_connections_active{export=%q} = %v with one connection open", exp, n)
		}
	}
	opsOf := func(metric string) string {
		seen := map[string]bool{}
		re := regexp.MustCompile(`(?m)^` + metric + `\{[^}]*device="lin"[^}]*op="([^"]+)"`)
		if strings.HasPrefix(metric, "udm_path") {
			re = regexp.MustCompile(`(?m)^` + metric + `\{[^}]*device="mp"[^}]*op="([^"]+)"`)
		}
		for _, m := range re.FindAllStringSubmatch(string(body), -1) {
			seen[m[1]] = true
		}
		var ops []string
		for op := range seen {
			ops = append(ops, op)
		}
		sort.Strings(ops)
		return strings.Join(ops, ",")
	}
	for _, pair := range [][2]string{{"udm_device_io_total", "udm_device_latency_seconds_count"}, {"udm_path_io_total", "udm_path_latency_seconds_count"}} {
		io, lat := opsOf(pair[0]), opsOf(pair[1])
		if io == "" || io != lat {
			t.Errorf("op values differ: %s has %q, %s has %q", pair[0], io, pair[1], lat)
		}
	}
	// A flush is counted under op="flush" in both.
	if n := scrape(t, u.info.Metrics, `udm_device_latency_seconds_count{device="lin",op="flush"}`); n < 1 {
		t.Errorf(`udm_device_latency_seconds_count{device="lin",op="flush"} = %v after a flush`, n)
	}
}

func grepLines(b []byte, s string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
