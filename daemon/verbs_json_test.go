package daemon_test

import (
	"context"
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"udm/daemon/api"
	"udm/multipath"
)

// TestVerbsJSON checks that each verb's -o json output decodes into the
// API's types with the same values as the API's own reply.
func TestVerbsJSON(t *testing.T) {
	u, dir := startScratch(t)
	a := backing(t, dir, "a", 8<<20)
	b := backing(t, dir, "b", 8<<20)
	u.ok("create", "lin", "--table", "0 2048 linear "+a+" 0")
	u.ok("create", "top", "--uuid", "UDM-top", "--table", "0 1024 linear /dev/mapper/lin 0\n1024 1024 zero")
	u.ok("create", "mp", "--table", "0 2048 multipath 1 queue_if_no_path 0 2 1 round-robin 0 1 1 "+a+" 1 round-robin 0 1 1 "+b+" 1")
	// The checker off: the paths' next check and check count hold still
	// between the verb's reply and the API's.
	u.ok("checker", "mp", "polling_interval=off")
	cl := api.NewClient(u.sock)
	ctx := context.Background()

	// decode runs the verb with -o json and decodes its output into out,
	// refusing fields the type does not have.
	decode := func(t *testing.T, out any, args ...string) {
		t.Helper()
		got := u.ok(append(args, "-o", "json")...)
		dec := json.NewDecoder(strings.NewReader(got))
		dec.DisallowUnknownFields()
		if err := dec.Decode(out); err != nil {
			t.Fatalf("udm %s -o json: %v\n%s", strings.Join(args, " "), err, got)
		}
		if again := u.ok(append(args, "--json")...); again != got {
			t.Fatalf("udm %s: --json printed\n%s\n-o json\n%s", strings.Join(args, " "), again, got)
		}
	}
	same := func(t *testing.T, what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: -o json gave\n%+v\nthe API\n%+v", what, got, want)
		}
	}
	list, err := cl.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 3 {
		t.Fatalf("devices: %+v", list)
	}

	t.Run("ls", func(t *testing.T) {
		var got []api.DeviceInfo
		decode(t, &got, "ls")
		same(t, "ls", got, list)
	})
	t.Run("info", func(t *testing.T) {
		var got []api.DeviceInfo
		decode(t, &got, "info")
		same(t, "info", got, list)
		decode(t, &got, "info", "top", "lin")
		top, _ := cl.Info(ctx, "top")
		lin, _ := cl.Info(ctx, "lin")
		same(t, "info top lin", got, []api.DeviceInfo{top, lin})
		if top.UUID != "UDM-top" || top.Targets != 2 || lin.OpenCount != 1 {
			t.Fatalf("info: top %+v, lin %+v", top, lin)
		}
	})
	for _, verb := range []string{"table", "status"} {
		t.Run(verb, func(t *testing.T) {
			get := func(n string) []string {
				var l []string
				var err error
				if verb == "table" {
					l, err = cl.Table(ctx, n, false)
				} else {
					l, err = cl.Status(ctx, n)
				}
				if err != nil {
					t.Fatal(err)
				}
				return l
			}
			var want []api.DeviceLines
			for _, d := range list {
				want = append(want, api.DeviceLines{Name: d.Name, Lines: get(d.Name)})
			}
			var got []api.DeviceLines
			decode(t, &got, verb)
			same(t, verb, got, want)
			decode(t, &got, verb, "top")
			same(t, verb+" top", got, []api.DeviceLines{{Name: "top", Lines: get("top")}})
			decode(t, &got, verb, "--target", "zero")
			same(t, verb+" --target zero", got, []api.DeviceLines{{Name: "top", Lines: get("top")[1:]}})
		})
	}
	t.Run("deps", func(t *testing.T) {
		var got []api.DepsReply
		decode(t, &got, "deps")
		var want []api.DepsReply
		for _, d := range list {
			deps, err := cl.Deps(ctx, d.Name)
			if err != nil {
				t.Fatal(err)
			}
			want = append(want, api.DepsReply{Name: d.Name, Deps: deps})
		}
		same(t, "deps", got, want)
		if !reflect.DeepEqual(want[2].Deps, []string{"/dev/mapper/lin"}) || !reflect.DeepEqual(want[1].Deps, []string{a, b}) {
			t.Fatalf("deps: %+v", want)
		}
	})
	maps, err := cl.Maps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, view := range []string{"maps", "topology"} {
		t.Run("show-"+view, func(t *testing.T) {
			var got api.MapsReply
			decode(t, &got, "show", view)
			same(t, "show "+view, got.Maps, maps)
			if len(maps) != 1 || maps[0].Name != "mp" || len(maps[0].Groups) != 2 {
				t.Fatalf("maps: %+v", maps)
			}
		})
	}
	t.Run("show-paths", func(t *testing.T) {
		var got api.PathsReply
		decode(t, &got, "show", "paths")
		same(t, "show paths", got.Paths, multipath.Paths(maps))
		if len(got.Paths) != 2 {
			t.Fatalf("paths: %+v", got.Paths)
		}
	})
	t.Run("checker", func(t *testing.T) {
		var got api.CheckerSettings
		decode(t, &got, "checker", "mp")
		want, err := cl.Checker(ctx, "mp")
		if err != nil {
			t.Fatal(err)
		}
		same(t, "checker", got, want)
		if want.PollingInterval != "off" {
			t.Fatalf("checker: %+v", want)
		}
		// KEY=VALUE with -o json prints the settings as changed.
		decode(t, &got, "checker", "mp", "failback=immediate")
		if want, _ = cl.Checker(ctx, "mp"); !reflect.DeepEqual(got, want) || want.Failback != "immediate" {
			t.Fatalf("checker after failback=immediate: printed %+v, the API %+v", got, want)
		}
	})
}
