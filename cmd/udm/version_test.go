package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestWriteVersion(t *testing.T) {
	plat := runtime.GOOS + "/" + runtime.GOARCH
	for _, tc := range []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want string
	}{
		{"release with VCS", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "udm", Version: "v1.2.3"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2026-12-07T15:00:00Z"}, {Key: "vcs.modified", Value: "true"}}},
			true, "udm v1.2.3\nmodule:   udm v1.2.3\nrevision: abc123\ntime:     2026-12-07T15:00:00Z\nmodified: true\ngo:       go1.26.8 " + plat + "\n"},
		{"devel without VCS", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "udm", Version: "(devel)"}},
			true, "udm (devel)\nmodule:   udm (devel)\nrevision: unknown (built without VCS information)\ngo:       go1.26.8 " + plat + "\n"},
		{"no build info", nil, false, "udm (unknown version: no build information)\ngo: " + runtime.Version() + " " + plat + "\n"},
	} {
		var b strings.Builder
		writeVersion(&b, tc.bi, tc.ok)
		if b.String() != tc.want {
			t.Errorf("%s:\n%s\nwant\n%s", tc.name, b.String(), tc.want)
		}
	}
}
