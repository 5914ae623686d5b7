package api

import (
	"strings"
	"testing"
	"time"

	"udm/multipath"
)

func TestDefaults(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	for _, tc := range []struct {
		name     string
		uid      int
		env      func(string) string
		stateDir string
		want     Paths
	}{
		{"root", 0, env("XDG_RUNTIME_DIR", "/run/user/0", "XDG_STATE_HOME", "/x"), "",
			Paths{StateDir: "/var/lib/udm", Control: "/run/udm/control.sock", NBDUnix: "/run/udm/nbd.sock"}},
		{"root with a state dir", 0, env(), "/srv/udm",
			Paths{StateDir: "/srv/udm", Control: "/run/udm/control.sock", NBDUnix: "/run/udm/nbd.sock"}},
		{"user with XDG dirs", 1000, env("XDG_RUNTIME_DIR", "/run/user/1000", "XDG_STATE_HOME", "/home/u/.st"), "",
			Paths{StateDir: "/home/u/.st/udm", Control: "/run/user/1000/udm/control.sock", NBDUnix: "/run/user/1000/udm/nbd.sock"}},
		{"user without XDG dirs", 1000, env(), "",
			Paths{StateDir: "/home/u/.local/state/udm", Control: "/home/u/.local/state/udm/control.sock",
				NBDUnix: "/home/u/.local/state/udm/nbd.sock"}},
		{"user with a state dir", 1000, env(), "/tmp/s",
			Paths{StateDir: "/tmp/s", Control: "/tmp/s/control.sock", NBDUnix: "/tmp/s/nbd.sock"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := defaultsFor(tc.uid, tc.env, "/home/u", tc.stateDir)
			if got.NBD != DefaultNBD || got.Loops < 1 || got.Metrics != "" {
				t.Fatalf("NBD %q, loops %d, metrics %q", got.NBD, got.Loops, got.Metrics)
			}
			got.NBD, got.Loops = "", 0
			if got != tc.want {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	t.Setenv(Env, "/x/env.sock")
	if got := ControlSocket("/x/flag.sock"); got != "/x/flag.sock" {
		t.Fatalf("flag: %s", got)
	}
	if got := ControlSocket(""); got != "/x/env.sock" {
		t.Fatalf("env: %s", got)
	}
	t.Setenv(Env, "")
	if got := ControlSocket(""); got != Defaults("").Control {
		t.Fatalf("default: %s", got)
	}
}

func TestFormat(t *testing.T) {
	if got := FormatLines("", []string{"0 8 linear /a 0", "8 8 zero", "16 8 multipath 2 0 0 0 1 1 A 0 1 0 /b A 0 "}); got != "0 8 linear /a 0\n8 8 zero \n16 8 multipath 2 0 0 0 1 1 A 0 1 0 /b A 0 \n" {
		t.Fatalf("lines: %q", got)
	}
	if got := FormatLines("d", []string{"0 8 error"}); got != "d: 0 8 error \n" {
		t.Fatalf("named: %q", got)
	}
	if got := FormatLines("d", nil); got != "d: \n" {
		t.Fatalf("no table, named: %q", got)
	}
	if got := FormatLines("", nil); got != "\n" {
		t.Fatalf("no table: %q", got)
	}
	i := DeviceInfo{Name: "n", State: "SUSPENDED", Suspended: true, ReadOnly: true, Inactive: true, OpenCount: 2, EventNr: 7, DeferredRemove: true}
	want := "Name:              n\nState:             SUSPENDED (READ-ONLY) (DEFERRED REMOVE)\nTables present:    INACTIVE\n" +
		"Open count:        2\nEvent number:      7\nNumber of targets: 0\n\n"
	if got := FormatInfo(i); got != want {
		t.Fatalf("info:\n%s\nwant\n%s", got, want)
	}
}

func TestCheckerSettings(t *testing.T) {
	s := CheckerSettings{}
	for _, kv := range [][2]string{{"polling_interval", "2s"}, {"max_polling_interval", "10s"}, {"check_timeout", "500ms"},
		{"no_path_retry", "12"}, {"failback", "immediate"}, {"io_deadline", "-1s"}} {
		if err := s.Set(kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	c, err := s.MapConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.PollingInterval != 2*time.Second || c.MaxPollingInterval != 10*time.Second || c.CheckTimeout != 500*time.Millisecond ||
		c.NoPathRetry != 12 || c.Failback.Mode != multipath.FailbackImmediate || c.IODeadline != -time.Second {
		t.Fatalf("config: %+v", c)
	}
	if err := s.Set("polling", "1s"); err == nil {
		t.Fatal("unknown setting accepted")
	}
	for _, bad := range []CheckerSettings{{PollingInterval: "5"}, {NoPathRetry: "sometimes"}, {Failback: "later"}, {IODeadline: "x"}, {IODeadline: "1ms"}, {IODeadline: "49ms"}, {IODeadline: "25h"},
		{PollingInterval: "1us"}, {PollingInterval: "-1s"}, {PollingInterval: "0s"}, {MaxPollingInterval: "-5s"}, {CheckTimeout: "1ns"},
		{CheckTimeout: "-1s"}, {PollingInterval: "48h"}} {
		if _, err := bad.MapConfig(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if c, err := (CheckerSettings{PollingInterval: "off"}).MapConfig(); err != nil || c.PollingInterval >= 0 {
		t.Fatalf("polling_interval off: %+v %v", c, err)
	}
	if _, err := (CheckerSettings{PollingInterval: "1us"}).MapConfig(); err == nil || !strings.Contains(err.Error(), "bad polling_interval \"1us\": multipath: want a duration from 50ms to 24h, or off") {
		t.Fatalf("polling_interval 1us: %v", err)
	}
	if c, err := (CheckerSettings{}).MapConfig(); err != nil || c != (multipath.MapConfig{}) {
		t.Fatalf("empty settings: %+v %v", c, err)
	}
}
