package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"syscall"

	"udm/multipath"
)

// CLI runs the dmsetup-like verbs against a daemon and prints what
// dmsetup (or multipathd) would print. cmd/udm parses the flags and
// calls it.
type CLI struct {
	C   *Client
	Out io.Writer
}

// Create creates a device with a table (udm create).
func (c CLI) Create(ctx context.Context, name, uuid, table string, readOnly bool) error {
	_, err := c.C.Create(ctx, CreateRequest{Name: name, UUID: uuid, Table: table, ReadOnly: readOnly})
	return err
}

// Load loads a table into a device's inactive slot (udm load).
func (c CLI) Load(ctx context.Context, name, table string) error { return c.C.Load(ctx, name, table) }

// Clear drops a device's inactive table (udm clear).
func (c CLI) Clear(ctx context.Context, name string) error { return c.C.Clear(ctx, name) }

// Suspend suspends a device (udm suspend [--noflush]).
func (c CLI) Suspend(ctx context.Context, name string, noflush bool) error {
	_, err := c.C.Suspend(ctx, name, noflush)
	return err
}

// Resume resumes a device (udm resume).
func (c CLI) Resume(ctx context.Context, name string, noflush bool) error {
	_, err := c.C.Resume(ctx, name, noflush)
	return err
}

// Remove removes a device (udm remove [-f|--deferred]).
func (c CLI) Remove(ctx context.Context, name string, force, deferred bool) error {
	return c.C.Remove(ctx, name, force, deferred)
}

// Ls prints one device per line (or dmsetup's "No devices found").
func (c CLI) Ls(ctx context.Context) error {
	return c.forAll(ctx, func(d DeviceInfo) error {
		_, err := fmt.Fprintln(c.Out, d.Name)
		return err
	})
}

// forAll calls print for every device, or prints dmsetup's "No devices
// found" if there are none.
func (c CLI) forAll(ctx context.Context, print func(d DeviceInfo) error) error {
	devs, err := c.someDevices(ctx, nil)
	if err != nil {
		return err
	}
	for _, d := range devs {
		if err := print(d); err != nil {
			return err
		}
	}
	return nil
}

// Table prints a device's table, or every device's as `NAME: line`
// when name is empty (dmsetup table).
func (c CLI) Table(ctx context.Context, name string, inactive bool) error {
	return c.lines(ctx, name, func(n string) ([]string, error) { return c.C.Table(ctx, n, inactive) })
}

// Status prints a device's status, or every device's as `NAME: line`
// when name is empty (dmsetup status).
func (c CLI) Status(ctx context.Context, name string) error {
	return c.lines(ctx, name, func(n string) ([]string, error) { return c.C.Status(ctx, n) })
}

func (c CLI) lines(ctx context.Context, name string, get func(string) ([]string, error)) error {
	if name != "" {
		lines, err := get(name)
		if err != nil {
			return err
		}
		fmt.Fprint(c.Out, FormatLines("", lines))
		return nil
	}
	return c.forAll(ctx, func(d DeviceInfo) error {
		lines, err := get(d.Name)
		if errors.Is(err, syscall.ENXIO) {
			return nil // removed meanwhile
		}
		if err == nil {
			fmt.Fprint(c.Out, FormatLines(d.Name, lines))
		}
		return err
	})
}

// FormatLines prints table or status lines as dmsetup does: each is
// `<start> <len> <type> <params>`, with the space after the type even
// when params are empty; each is prefixed with "NAME: " when name is not
// empty (dmsetup listing every device); a device without a table prints
// one empty line (after its prefix).
func FormatLines(name string, lines []string) string {
	prefix := ""
	if name != "" {
		prefix = name + ": "
	}
	if len(lines) == 0 {
		return prefix + "\n"
	}
	var b strings.Builder
	for _, l := range lines {
		if len(strings.SplitN(l, " ", 4)) == 3 {
			l += " " // no params
		}
		b.WriteString(prefix + l + "\n")
	}
	return b.String()
}

// Info prints dmsetup info for a device, or for every device.
func (c CLI) Info(ctx context.Context, name string) error {
	if name != "" {
		i, err := c.C.Info(ctx, name)
		if err != nil {
			return err
		}
		fmt.Fprint(c.Out, FormatInfo(i))
		return nil
	}
	return c.forAll(ctx, func(d DeviceInfo) error {
		_, err := fmt.Fprint(c.Out, FormatInfo(d))
		return err
	})
}

// FormatInfo prints a device as dmsetup info does (without the Read
// Ahead and Major, minor lines, which have no meaning here), ending with
// an empty line.
func FormatInfo(i DeviceInfo) string {
	var b strings.Builder
	state := i.State
	if i.ReadOnly {
		state += " (READ-ONLY)"
	}
	if i.DeferredRemove {
		state += " (DEFERRED REMOVE)"
	}
	fmt.Fprintf(&b, "Name:              %s\n", i.Name)
	fmt.Fprintf(&b, "State:             %s\n", state)
	fmt.Fprintf(&b, "Tables present:    %s\n", tablesPresent(i))
	fmt.Fprintf(&b, "Open count:        %d\n", i.OpenCount)
	fmt.Fprintf(&b, "Event number:      %d\n", i.EventNr)
	fmt.Fprintf(&b, "Number of targets: %d\n", i.Targets)
	if i.UUID != "" {
		fmt.Fprintf(&b, "UUID: %s\n", i.UUID)
	}
	if i.Error != "" {
		fmt.Fprintf(&b, "Error:             %s\n", i.Error)
	}
	b.WriteString("\n")
	return b.String()
}

// Message sends a message to the target at sector and prints its reply,
// if any.
func (c CLI) Message(ctx context.Context, name, sector string, args []string) error {
	s, err := strconv.ParseUint(sector, 10, 64)
	if err != nil {
		return fmt.Errorf("bad sector %q", sector)
	}
	if len(args) == 0 {
		return errors.New("message: no message given")
	}
	reply, err := c.C.Message(ctx, name, s, args)
	if err != nil {
		return err
	}
	if reply != "" {
		fmt.Fprintln(c.Out, strings.TrimRight(reply, "\n"))
	}
	return nil
}

// Wait waits until the device's event counter passes event (its current
// value if event is empty) and prints the new event number.
func (c CLI) Wait(ctx context.Context, name, event string) error {
	after := int64(-1)
	if event != "" {
		n, err := strconv.ParseUint(event, 10, 32)
		if err != nil {
			return fmt.Errorf("bad event number %q", event)
		}
		after = int64(n)
	}
	n, err := c.C.Wait(ctx, name, after)
	if err != nil {
		return err
	}
	fmt.Fprintln(c.Out, n)
	return nil
}

// Targets prints the target types as dmsetup targets does.
func (c CLI) Targets(ctx context.Context) error {
	ts, err := c.C.Targets(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		fmt.Fprintf(c.Out, "%-16s v%d.%d.%d\n", t.Name, t.Version[0], t.Version[1], t.Version[2])
	}
	return nil
}

// ShowPaths prints one line per path (multipathd show paths).
func (c CLI) ShowPaths(ctx context.Context) error {
	maps, err := c.C.Maps(ctx)
	if err != nil {
		return err
	}
	return multipath.FormatPaths(c.Out, maps)
}

// ShowMaps prints one line per map (multipathd show maps).
func (c CLI) ShowMaps(ctx context.Context) error {
	maps, err := c.C.Maps(ctx)
	if err != nil {
		return err
	}
	return multipath.FormatMaps(c.Out, maps)
}

// ShowTopology prints the maps with their groups and paths (multipathd
// show topology).
func (c CLI) ShowTopology(ctx context.Context) error {
	maps, err := c.C.Maps(ctx)
	if err != nil {
		return err
	}
	return multipath.FormatTopology(c.Out, maps)
}

// FailPath fails a path by hand and pauses its checker (multipathd fail
// path).
func (c CLI) FailPath(ctx context.Context, dev string) error { return c.C.FailPath(ctx, "", dev) }

// ReinstatePath reinstates a path and resumes its checker.
func (c CLI) ReinstatePath(ctx context.Context, dev string) error {
	return c.C.ReinstatePath(ctx, "", dev)
}

// Checker prints a device's checker settings, after changing those given
// as KEY=VALUE.
func (c CLI) Checker(ctx context.Context, name string, set []string) error {
	s, err := c.setChecker(ctx, name, set)
	if err != nil {
		return err
	}
	show := func(k, v, def string) {
		if v == "" {
			v = def
		}
		fmt.Fprintf(c.Out, "%-21s %s\n", k, v)
	}
	show("polling_interval", s.PollingInterval, "5s (default)")
	show("max_polling_interval", s.MaxPollingInterval, "4 x polling_interval (default)")
	show("check_timeout", s.CheckTimeout, "2s (default)")
	show("no_path_retry", s.NoPathRetry, "as the table says (default)")
	show("failback", s.Failback, "manual (default)")
	show("io_deadline", s.IODeadline, "2s (default)")
	return nil
}

// setChecker returns a device's checker settings after changing those
// given as KEY=VALUE (none: it only reads them).
func (c CLI) setChecker(ctx context.Context, name string, set []string) (CheckerSettings, error) {
	s, err := c.C.Checker(ctx, name)
	if err != nil || len(set) == 0 {
		return s, err
	}
	for _, kv := range set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return s, fmt.Errorf("checker: want KEY=VALUE, got %q", kv)
		}
		if err := s.Set(k, v); err != nil {
			return s, err
		}
	}
	return s, c.C.SetChecker(ctx, name, s)
}
