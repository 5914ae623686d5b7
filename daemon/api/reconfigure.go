package api

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// The configuration file's API: POST /v1/reconfigure re-reads the file
// and reconciles the devices with it; GET /v1/config is the effective
// configuration (what the last reading made of the file, defaults
// merged).

// MapSettings are the settings of a multipath map, as multipath.conf
// names them: those that build its table, and its checker's.
type MapSettings struct {
	// PathSelector is the selector and its arguments ("service-time 0").
	PathSelector string `json:"path_selector"`
	// PathGroupingPolicy is failover, multibus or group_by_prio.
	PathGroupingPolicy string `json:"path_grouping_policy"`
	// Features is the table's feature list with its count ("0", "1
	// queue_if_no_path"). queue_if_no_path there stands for
	// no_path_retry queue when no_path_retry isn't given.
	Features string `json:"features"`
	// Prio is the prioritizer: const or weightedpath.
	Prio string `json:"prio"`
	// PrioArgs are weightedpath's "devname REGEX PRIO [REGEX PRIO]...".
	PrioArgs string `json:"prio_args,omitempty"`
	CheckerSettings
}

// ConfigMap is a multipath map of the configuration.
type ConfigMap struct {
	Alias string `json:"alias"`
	// Paths are the paths the map is built of (the blacklist applied).
	Paths []string `json:"paths"`
	// Blacklisted are the paths the configuration lists that the
	// blacklist leaves out.
	Blacklisted []string `json:"blacklisted,omitempty"`
	// Priorities are the prioritizer's verdicts, one per path.
	Priorities []int `json:"priorities"`
	MapSettings
	// Table is the table the map was last built with (empty if it could
	// not be: see the reconfigure reply).
	Table string `json:"table,omitempty"`
}

// ConfigDevice is a device of the configuration with a table of its own.
type ConfigDevice struct {
	Alias string `json:"alias"`
	Table string `json:"table"`
}

// ConfigReply answers GET /v1/config.
type ConfigReply struct {
	File       string         `json:"file"`
	Defaults   MapSettings    `json:"defaults"`
	Blacklist  []string       `json:"blacklist"`
	Multipaths []ConfigMap    `json:"multipaths"`
	Devices    []ConfigDevice `json:"devices"`
}

// ConfigAction is what a reconfigure did to one device, and why.
type ConfigAction struct {
	Name string `json:"name"`
	Why  string `json:"why,omitempty"`
}

// ReconfigureReply answers POST /v1/reconfigure: every device, in one of
// the lists.
type ReconfigureReply struct {
	File      string         `json:"file"`
	Created   []ConfigAction `json:"created"`
	Changed   []ConfigAction `json:"changed"`
	Unchanged []ConfigAction `json:"unchanged"`
	Removed   []ConfigAction `json:"removed"`
	LeftAlone []ConfigAction `json:"left_alone"`
	Failed    []ConfigAction `json:"failed"`
}

// Reconfigure has the daemon re-read its configuration file and
// reconcile its devices with it.
func (c *Client) Reconfigure(ctx context.Context) (ReconfigureReply, error) {
	var v ReconfigureReply
	return v, c.do(ctx, "POST", "/reconfigure", nil, nil, &v)
}

// Config returns the effective configuration.
func (c *Client) Config(ctx context.Context) (ConfigReply, error) {
	var v ConfigReply
	return v, c.do(ctx, "GET", "/config", nil, nil, &v)
}

// Reconfigure re-reads the configuration file and prints what was done
// to each device (udm reconfigure). It fails if a device could not be
// brought to what the file says.
func (c CLI) Reconfigure(ctx context.Context) error {
	r, err := c.C.Reconfigure(ctx)
	if err != nil {
		return err
	}
	FormatReconfigure(c.Out, r)
	if len(r.Failed) > 0 {
		return fmt.Errorf("reconfigure: %d device(s) failed", len(r.Failed))
	}
	return nil
}

// FormatReconfigure prints one line per device: what was done, its
// name, and why.
func FormatReconfigure(w io.Writer, r ReconfigureReply) {
	for _, l := range []struct {
		what string
		as   []ConfigAction
	}{{"created", r.Created}, {"changed", r.Changed}, {"unchanged", r.Unchanged}, {"removed", r.Removed},
		{"left alone", r.LeftAlone}, {"failed", r.Failed}} {
		for _, a := range l.as {
			line := fmt.Sprintf("%-10s %s", l.what, a.Name)
			if a.Why != "" {
				line += ": " + a.Why
			}
			fmt.Fprintln(w, line)
		}
	}
}

// ShowConfig prints the effective configuration (udm show config) in
// the file's own syntax, every setting spelled out.
func (c CLI) ShowConfig(ctx context.Context) error {
	r, err := c.C.Config(ctx)
	if err != nil {
		return err
	}
	FormatConfig(c.Out, r)
	return nil
}

// FormatConfig prints a configuration as a file that reads back to it:
// defaults, blacklist, each multipath map with every setting (the
// defaults merged) and the table built from it as a comment, and the
// devices.
func FormatConfig(w io.Writer, r ConfigReply) {
	fmt.Fprintf(w, "# udm configuration, from %s\n", r.File)
	fmt.Fprintln(w, "\n[defaults]")
	formatSettings(w, r.Defaults)
	fmt.Fprintln(w, "\n[blacklist]")
	fmt.Fprintf(w, "paths = %s\n", tomlList(r.Blacklist))
	for _, m := range r.Multipaths {
		fmt.Fprintln(w, "\n[[multipaths]]")
		fmt.Fprintf(w, "alias = %s\n", strconv.Quote(m.Alias))
		fmt.Fprintf(w, "paths = %s\n", tomlList(append(append([]string(nil), m.Paths...), m.Blacklisted...)))
		if len(m.Blacklisted) > 0 {
			fmt.Fprintf(w, "# blacklisted: %s\n", strings.Join(m.Blacklisted, " "))
		}
		formatSettings(w, m.MapSettings)
		if len(m.Priorities) > 0 {
			var ps []string
			for i, p := range m.Priorities {
				ps = append(ps, fmt.Sprintf("%s=%d", m.Paths[i], p))
			}
			fmt.Fprintf(w, "# priorities: %s\n", strings.Join(ps, " "))
		}
		if m.Table != "" {
			fmt.Fprintf(w, "# table: %s\n", strings.TrimRight(m.Table, " "))
		}
	}
	for _, d := range r.Devices {
		fmt.Fprintln(w, "\n[[devices]]")
		fmt.Fprintf(w, "alias = %s\n", strconv.Quote(d.Alias))
		fmt.Fprintf(w, "table = %s\n", strconv.Quote(strings.TrimRight(d.Table, "\n")))
	}
}

func formatSettings(w io.Writer, s MapSettings) {
	kv := func(k, v string) { fmt.Fprintf(w, "%s = %s\n", k, strconv.Quote(v)) }
	kv("path_selector", s.PathSelector)
	kv("path_grouping_policy", s.PathGroupingPolicy)
	kv("features", s.Features)
	kv("prio", s.Prio)
	if s.PrioArgs != "" {
		kv("prio_args", s.PrioArgs)
	}
	for _, f := range s.CheckerSettings.fields() {
		if *f.v != "" {
			kv(f.key, *f.v)
		}
	}
}

func tomlList(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = strconv.Quote(v)
	}
	return "[" + strings.Join(q, ", ") + "]"
}
