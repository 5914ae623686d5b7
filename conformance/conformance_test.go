package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"udm/internal/testutil"
)

// A case of testdata/cases.py. Each runs against udm, nbdkit and
// nbd-server; udm's outcome must equal each reference's, except the
// references named in skip (the protocol lets that server answer
// otherwise, or it lacks the feature: the reason says which).
type confCase struct {
	name string
	// loose only: libnbd's strict mode refuses the request before it is
	// sent, so strict mode would test libnbd, not the server.
	looseOnly bool
	skip      map[string]string
}

const (
	nbdServerNoStructured = "nbd-server 3.24 has no structured replies, so no meta contexts or DF"
	nbdServerNoCache      = "nbd-server 3.24 does not offer NBD_CMD_CACHE (optional)"
	nbdServerNoFastZero   = "nbd-server 3.24 does not offer FAST_ZERO (optional)"
	nbdServerROZero       = "nbd-server advertises WRITE_ZEROES on a read-only export (the protocol doesn't forbid it; then it answers EPERM)"
	nbdServerLongName     = "nbd-server 3.24 sends no reply to an NBD_OPT_INFO whose name is over 4096 bytes (the protocol's string limit; nbdkit answers ERR_INVALID)"
	nbdServerFlags        = "nbd-server 3.24 ignores a flag the command doesn't take (the protocol says it SHOULD answer EINVAL)"
	nbdkitDisc            = "nbdkit 1.32 now and then closes after NBD_CMD_DISC with replies still owed (30 of 32 seen; the protocol says every request is answered first)"
	nbdkitDiscErr         = "nbdkit 1.32 now and then answers a request in flight at NBD_CMD_DISC with ESHUTDOWN (seen once in 32)"
)

var cases = []confCase{
	// Handshake.
	{name: "list"},
	{name: "info_missing"},
	{name: "go_missing"},
	{name: "odd_names"},
	{name: "long_name"},
	{name: "long_name_raw", skip: map[string]string{"nbd-server": nbdServerLongName}},
	{name: "option_1mib"},
	{name: "meta_list", skip: map[string]string{"nbd-server": nbdServerNoStructured}},
	{name: "meta_set", skip: map[string]string{"nbd-server": nbdServerNoStructured}},
	{name: "no_structured"},
	{name: "flags_rw"},
	{name: "flags_ro", skip: map[string]string{"nbd-server": nbdServerROZero}},
	// Every command and flag.
	{name: "read_write"},
	{name: "write_fua"},
	{name: "flush"},
	{name: "trim"},
	{name: "zero"},
	{name: "fast_zero", skip: map[string]string{"nbd-server": nbdServerNoFastZero}},
	{name: "cache", skip: map[string]string{"nbd-server": nbdServerNoCache}},
	{name: "df_read", skip: map[string]string{"nbd-server": nbdServerNoStructured}},
	{name: "block_status", skip: map[string]string{"nbd-server": nbdServerNoStructured}},
	{name: "block_status_req_one", skip: map[string]string{"nbd-server": nbdServerNoStructured}},
	{name: "block_status_past_end", looseOnly: true, skip: map[string]string{"nbd-server": nbdServerNoStructured}},
	// Byte-granular requests from a client that negotiated no block size.
	{name: "unaligned_write"},
	{name: "unaligned_trim"},
	{name: "unaligned_zero"},
	{name: "unaligned_read"},
	{name: "unaligned_concurrent"},
	{name: "unaligned_negotiated", looseOnly: true},
	// Out of range, odd flags, zero lengths.
	{name: "read_past_end", looseOnly: true},
	{name: "write_past_end", looseOnly: true},
	{name: "trim_past_end", looseOnly: true},
	{name: "zero_past_end", looseOnly: true},
	{name: "cache_past_end", looseOnly: true, skip: map[string]string{"nbd-server": nbdServerNoCache}},
	{name: "unknown_flag", looseOnly: true, skip: map[string]string{"nbd-server": nbdServerFlags}},
	{name: "zero_length", looseOnly: true},
	// Refused requests.
	{name: "ro_write_4m"},
	{name: "ro_trim_zero", looseOnly: true},
	{name: "ro_read"},
	{name: "refused_payload_raw"},
	{name: "oversize_write_raw"},
	// Sizes.
	{name: "big_48m"},
	{name: "big_64m"},
	// Many connections and requests, disconnects.
	{name: "inflight_many"},
	{name: "shutdown_inflight", skip: map[string]string{"nbdkit": nbdkitDisc}},
	{name: "halfclose", skip: map[string]string{"nbdkit": nbdkitDiscErr}},
	{name: "disc_raw", skip: map[string]string{"nbdkit": nbdkitDiscErr}},
	{name: "multi_conn"},
	// Tools.
	{name: "nbdcopy_ro"},
	{name: "nbdinfo_map_ro", skip: map[string]string{"nbd-server": nbdServerNoStructured}},
}

// outcome is what one case answered on one server.
type outcome struct {
	raw  map[string]any
	text string // the whole outcome, as printed
	cmp  string // what is compared: the keys without a leading "_"
}

func parseOutcome(out []byte, err error) outcome {
	o := outcome{raw: map[string]any{}}
	if err != nil {
		o.raw["crash"] = err.Error()
	} else if jerr := json.Unmarshal(bytes.TrimSpace(lastLine(out)), &o.raw); jerr != nil {
		o.raw["crash"] = fmt.Sprintf("bad output: %v: %q", jerr, out)
	}
	full, _ := json.Marshal(o.raw)
	o.text = string(full)
	cmp := map[string]any{}
	for k, v := range o.raw {
		if !strings.HasPrefix(k, "_") {
			cmp[k] = v
		}
	}
	c, _ := json.Marshal(cmp)
	o.cmp = string(c)
	return o
}

func lastLine(b []byte) []byte {
	b = bytes.TrimRight(b, "\n")
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		return b[i+1:]
	}
	return b
}

// runner runs cases.py.
type runner struct {
	py, script, tmp string
}

func (r runner) run(s *server, c, mode string) outcome {
	cfg, _ := json.Marshal(map[string]any{"disk": s.disk, "ro": s.ro, "size": diskSize, "rosize": roSize})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, r.py, "-I", r.script, string(cfg), c, mode)
	cmd.Dir = r.tmp
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w after %v: %s", errTimeout, 3*time.Minute, stderr.String())
	} else if err != nil {
		err = fmt.Errorf("%v: %s", err, stderr.String())
	}
	return parseOutcome(out, err)
}

// TestConformance runs every case against udm, nbdkit and nbd-server in
// libnbd's strict and non-strict (loose) modes and compares udm's
// outcome with each reference's.
func TestConformance(t *testing.T) {
	testutil.SkipShort(t, "runs udm serve, nbdkit and nbd-server")
	testutil.RequireTool(t, "nbdinfo")
	testutil.RequireTool(t, "nbdcopy")
	py := python(t)
	root := testutil.ModuleRoot(t)
	dir := t.TempDir()
	r := runner{py: py, script: filepath.Join(root, "conformance", "testdata", "cases.py"), tmp: dir}

	// Every case of the script is in the table, and the other way round.
	out, err := exec.Command(py, "-I", r.script, "{\"size\":0,\"rosize\":0}", "--list", "-").Output()
	if err != nil {
		t.Fatalf("listing the cases: %v", err)
	}
	var listed []string
	if err := json.Unmarshal(out, &listed); err != nil {
		t.Fatal(err)
	}
	var tabled []string
	for _, c := range cases {
		tabled = append(tabled, c.name)
	}
	sort.Strings(tabled)
	if strings.Join(listed, " ") != strings.Join(tabled, " ") {
		t.Fatalf("cases.py has %v\nthe table has %v", listed, tabled)
	}

	for _, mode := range []string{"strict", "loose"} {
		t.Run(mode, func(t *testing.T) {
			// Fresh servers for each mode: cases run in order, each in
			// regions of the disk no other case touches.
			md := filepath.Join(dir, mode)
			refs := []*server{startNbdkit(t, filepath.Join(md, "nbdkit")), startNbdServer(t, filepath.Join(md, "nbd-server"))}
			u := startUDM(t, filepath.Join(md, "udm"))
			for _, c := range cases {
				if c.looseOnly && mode == "strict" {
					continue
				}
				t.Run(c.name, func(t *testing.T) {
					all := append([]*server{u.server}, refs...)
					outs := make([]outcome, len(all))
					var wg sync.WaitGroup
					for i, s := range all {
						wg.Add(1)
						go func() { defer wg.Done(); outs[i] = r.run(s, c.name, mode) }()
					}
					wg.Wait()
					var report strings.Builder
					for i, s := range all {
						fmt.Fprintf(&report, "\n  %-10s %s", s.name, outs[i].text)
						if why := c.skip[s.name]; why != "" {
							fmt.Fprintf(&report, "\n  %-10s (not compared: %s)", "", why)
						}
					}
					t.Logf("%s:%s", c.name, report.String())
					for i, s := range refs {
						o := outs[i+1]
						if _, ok := o.raw["crash"]; ok && c.skip[s.name] == "" {
							t.Errorf("reference %s could not run the case:%s\n%s", s.name, report.String(), tail(s.log(), 3000))
						}
					}
					if _, ok := outs[0].raw["crash"]; ok {
						t.Errorf("udm: the case could not run:%s", report.String())
						return
					}
					for i, s := range refs {
						if c.skip[s.name] != "" {
							continue
						}
						if outs[0].cmp != outs[i+1].cmp {
							t.Errorf("udm and %s disagree:%s", s.name, report.String())
						}
					}
				})
			}
		})
	}
}

// tail is the last n bytes of s.
func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
