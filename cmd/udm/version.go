package main

import (
	"context"
	"strings"

	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"udm/daemon/api"
)

// runVersion prints the module version and what the binary was built
// from (udm version, udm --version).
func runVersion(args []string) error {
	v := newFlags("version", "version").withControl(controlHelp + "; its daemon's version is printed too")
	pos, err := v.parse(args, 0, 0)
	if err != nil {
		return err
	}
	bi, ok := debug.ReadBuildInfo()
	writeVersion(os.Stdout, bi, ok)
	// As dmsetup version prints the library's and the driver's: the
	// control API this binary speaks, and the daemon's build.
	return v.run(pos, func(ctx context.Context, c api.CLI, _ []string) error {
		fmt.Fprintf(os.Stdout, "api:      %s\ndaemon:   %s\n", strings.TrimPrefix(api.APIVersion, "/"), c.DaemonVersion(ctx))
		return nil
	})
}

// writeVersion prints the version lines: "udm VERSION" first, then the
// module, the VCS revision, time and whether the tree was modified (when
// the build recorded them), and the Go version and platform.
func writeVersion(w io.Writer, bi *debug.BuildInfo, ok bool) {
	if !ok {
		fmt.Fprintf(w, "udm (unknown version: no build information)\ngo: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return
	}
	version := bi.Main.Version
	if version == "" {
		version = "(devel)"
	}
	fmt.Fprintf(w, "udm %s\n", version)
	if bi.Main.Path != "" {
		fmt.Fprintf(w, "module:   %s %s\n", bi.Main.Path, version)
	}
	s := map[string]string{}
	for _, kv := range bi.Settings {
		s[kv.Key] = kv.Value
	}
	if rev := s["vcs.revision"]; rev != "" {
		fmt.Fprintf(w, "revision: %s\n", rev)
		if t := s["vcs.time"]; t != "" {
			fmt.Fprintf(w, "time:     %s\n", t)
		}
		if m := s["vcs.modified"]; m != "" {
			fmt.Fprintf(w, "modified: %s\n", m)
		}
	} else {
		fmt.Fprintln(w, "revision: unknown (built without VCS information)")
	}
	fmt.Fprintf(w, "go:       %s %s/%s\n", bi.GoVersion, runtime.GOOS, runtime.GOARCH)
}
