package daemon

import (
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"udm/daemon/api"
	"udm/dm"
	"udm/multipath"
)

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		name, text, want string
	}{
		{"unknown key with its line", "[defaults]\npolling_interval = 5\npolling_intervall = 5\n", "f.conf:3: unknown key defaults.polling_intervall"},
		{"unknown key in the second map", "[[multipaths]]\nalias = \"a\"\npaths = [\"/x\"]\n[[multipaths]]\nalias = \"b\"\npaths = [\"/y\"]\nwwid = \"3600\"\n", "f.conf:7: unknown key multipaths.wwid"},
		{"unknown section", "[default]\nfailback = \"manual\"\n", "f.conf:1: unknown section default"},
		{"every unknown key", "[defaults]\nx = 1\ny = 2\n", "f.conf:2: unknown key defaults.x\nf.conf:3: unknown key defaults.y"},
		{"syntax", "[defaults\n", "f.conf:1:"},
		{"a string where a list goes", "[blacklist]\npaths = \"/dev/sdz\"\n", "f.conf:2:"},
		{"number for a string setting", "[defaults]\npath_grouping_policy = 1\n", "f.conf:2: defaults: path_grouping_policy: want a string"},
		{"bad policy", "[[multipaths]]\nalias = \"a\"\npaths = [\"/x\"]\npath_grouping_policy = \"group_by_serial\"\n", `f.conf:4: multipaths[1] (a): path_grouping_policy "group_by_serial"`},
		{"bad selector", "[defaults]\npath_selector = \"fastest 0\"\n", `f.conf:2: defaults: path_selector "fastest 0"`},
		{"selector argument count", "[defaults]\npath_selector = \"round-robin 1\"\n", `the number after the name counts`},
		{"features count", "[defaults]\nfeatures = \"2 queue_if_no_path\"\n", `features "2 queue_if_no_path": the first number counts`},
		{"feature the kernel refuses", "[defaults]\nfeatures = \"1 no_such_feature\"\n", `unrecognised multipath feature request`},
		{"bad no_path_retry", "[defaults]\nno_path_retry = \"sometimes\"\n", `f.conf:2: defaults: bad no_path_retry "sometimes"`},
		{"bad polling_interval", "[defaults]\npolling_interval = \"5 s\"\n", `f.conf:2: defaults: bad polling_interval "5 s"`},
		{"prio", "[defaults]\nprio = \"alua\"\n", `prio "alua": want const or weightedpath`},
		{"weightedpath hbtl", "[defaults]\nprio = \"weightedpath\"\nprio_args = \"hbtl 1:0:.:. 10\"\n", `no hbtl, serial or wwn`},
		{"weightedpath pairs", "[defaults]\nprio = \"weightedpath\"\nprio_args = \"devname /a 10 /b\"\n", `want pairs`},
		{"weightedpath regex", "[defaults]\nprio = \"weightedpath\"\nprio_args = \"devname ( 10\"\n", `bad regex "("`},
		{"const args", "[defaults]\nprio_args = \"devname a 1\"\n", `f.conf:2: defaults: prio_args "devname a 1": const takes none`},
		{"a setting that fails with the defaults'", "[defaults]\nprio = \"weightedpath\"\nprio_args = \"devname a 1\"\n[[multipaths]]\nalias = \"a\"\npaths = [\"/x\"]\nprio = \"const\"\n",
			`f.conf:3: multipaths[1] (a) (from defaults): prio_args "devname a 1": const takes none`},
		{"a feature on the entry's line", "[[multipaths]]\nalias = \"a\"\npaths = [\"/x\"]\nfeatures = \"1 pg_init_retries\"\n", `f.conf:4: multipaths[1] (a): multipath: invalid table`},
		{"no alias", "[[multipaths]]\npaths = [\"/x\"]\n", "f.conf:1: multipaths[1]: no alias"},
		{"no paths", "[[multipaths]]\nalias = \"a\"\n", "f.conf:1: multipaths[1] (a): no paths"},
		{"alias twice", "[[multipaths]]\nalias = \"a\"\npaths = [\"/x\"]\n[[devices]]\nalias = \"a\"\ntable = \"0 8 zero\"\n", `f.conf:5: devices[1] (a): alias "a" is also multipaths[1] (a)`},
		{"path twice", "[[multipaths]]\nalias = \"a\"\npaths = [\"/x\", \"/x\"]\n", "f.conf:3: multipaths[1] (a): path /x listed twice"},
		{"all blacklisted", "[blacklist]\npaths = [\"/x*\"]\n[[multipaths]]\nalias = \"a\"\npaths = [\"/x1\", \"/x2\"]\n", "f.conf:5: multipaths[1] (a): every path is blacklisted"},
		{"bad glob", "[blacklist]\npaths = [\"/x[\"]\n", `f.conf:2: blacklist: bad glob "/x["`},
		{"device table", "[[devices]]\nalias = \"l\"\ntable = \"0 8\"\n", "f.conf:3: devices[1] (l):"},
		{"device without table", "[[devices]]\nalias = \"l\"\n", "f.conf:1: devices[1] (l): no table"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := parseConfig("f.conf", []byte(c.text))
			if err == nil {
				t.Fatalf("no error")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q, want it to contain %q", err, c.want)
			}
		})
	}
}

// mustParse parses text as the configuration file name, failing the
// test (with the text) if it does not parse.
func mustParse(t *testing.T, name, text string) *confFile {
	t.Helper()
	cf, err := parseConfig(name, []byte(text))
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	return cf
}

func TestConfigMerge(t *testing.T) {
	cf := mustParse(t, "f.conf", `
[defaults]
path_grouping_policy = "multibus"
features = "1 queue_if_no_path"
polling_interval = 2
failback = 30

[blacklist]
paths = ["/dev/sdz", "nbd://10.0.0.9:10809/*"]

[[multipaths]]
alias = "a"
paths = ["/dev/sdb", "nbd://10.0.0.9:10809/old", "/dev/sdz", "nbd://10.0.0.2:10809/disk"]

[[multipaths]]
alias = "b"
paths = ["/dev/sdc"]
path_selector = "round-robin 0"
no_path_retry = 12
polling_interval = "off"
failback = "immediate"

[[devices]]
alias = "lin"
table = "0 2048 linear /dev/sdd 0"
`)
	want := api.MapSettings{PathSelector: "service-time 0", PathGroupingPolicy: "multibus", Features: "1 queue_if_no_path",
		Prio: "const", CheckerSettings: api.CheckerSettings{PollingInterval: "2s", MaxPollingInterval: "8s",
			CheckTimeout: "2s", NoPathRetry: "queue", Failback: "30", IODeadline: "2s"}}
	if cf.defaults != want {
		t.Errorf("defaults:\n got %+v\nwant %+v", cf.defaults, want)
	}
	a := cf.maps[0]
	if a.MapSettings != want {
		t.Errorf("map a:\n got %+v\nwant %+v", a.MapSettings, want)
	}
	if !reflect.DeepEqual(a.Paths, []string{"/dev/sdb", "nbd://10.0.0.2:10809/disk"}) ||
		!reflect.DeepEqual(a.Blacklisted, []string{"nbd://10.0.0.9:10809/old", "/dev/sdz"}) {
		t.Errorf("map a: paths %q, blacklisted %q", a.Paths, a.Blacklisted)
	}
	b := cf.maps[1].MapSettings
	wantB := want
	wantB.PathSelector, wantB.NoPathRetry, wantB.PollingInterval, wantB.MaxPollingInterval, wantB.Failback =
		"round-robin 0", "12", "off", "", "immediate"
	if b != wantB {
		t.Errorf("map b:\n got %+v\nwant %+v", b, wantB)
	}
	if len(cf.devices) != 1 || cf.devices[0] != (api.ConfigDevice{Alias: "lin", Table: "0 2048 linear /dev/sdd 0"}) {
		t.Errorf("devices: %+v", cf.devices)
	}

	// Nothing set: multipath-tools' defaults and the checker's.
	cf = mustParse(t, "f.conf", "[[multipaths]]\nalias = \"a\"\npaths = [\"/x\"]\n")
	def := builtinSettings()
	def.NoPathRetry, def.MaxPollingInterval = "fail", "20s"
	if cf.defaults != def || cf.maps[0].MapSettings != def {
		t.Errorf("built-in defaults:\n got %+v\n and %+v\nwant %+v", cf.defaults, cf.maps[0].MapSettings, def)
	}
}

// TestConfigTables checks the tables the grouping policies and
// prioritizers build, and that each reads back through the multipath
// target's parser and prints the same.
func TestConfigTables(t *testing.T) {
	const paths = `paths = ["/srv/a", "/srv/fast1", "/srv/b", "/srv/fast2"]`
	for _, c := range []struct {
		name, settings, want string
		prios                []int
	}{
		{"failover, const", `path_grouping_policy = "failover"`,
			"0 2048 multipath 0 0 4 1 service-time 0 1 2 /srv/a 1 1 service-time 0 1 2 /srv/fast1 1 1 service-time 0 1 2 /srv/b 1 1 service-time 0 1 2 /srv/fast2 1 1",
			[]int{1, 1, 1, 1}},
		{"multibus, queueing", "path_grouping_policy = \"multibus\"\nno_path_retry = \"queue\"\npath_selector = \"round-robin 0\"",
			"0 2048 multipath 1 queue_if_no_path 0 1 1 round-robin 0 4 1 /srv/a 1 /srv/fast1 1 /srv/b 1 /srv/fast2 1",
			[]int{1, 1, 1, 1}},
		{"group_by_prio, weightedpath", "path_grouping_policy = \"group_by_prio\"\nprio = \"weightedpath\"\nprio_args = \"devname fast 50 /srv/b 10\"\npath_selector = \"queue-length 0\"",
			"0 2048 multipath 0 0 3 1 queue-length 0 2 1 /srv/fast1 1 /srv/fast2 1 queue-length 0 1 1 /srv/b 1 queue-length 0 1 1 /srv/a 1",
			[]int{0, 50, 10, 50}},
		{"failover ordered by priority", "prio = \"weightedpath\"\nprio_args = \"devname /srv/b 5 fast2 7\"\nfeatures = \"3 queue_if_no_path pg_init_retries 5\"\nno_path_retry = \"fail\"",
			"0 2048 multipath 2 pg_init_retries 5 0 4 1 service-time 0 1 2 /srv/fast2 1 1 service-time 0 1 2 /srv/b 1 1 service-time 0 1 2 /srv/a 1 1 service-time 0 1 2 /srv/fast1 1 1",
			[]int{0, 0, 5, 7}},
		{"group_by_prio, const: one group", `path_grouping_policy = "group_by_prio"`,
			"0 2048 multipath 0 0 1 1 service-time 0 4 2 /srv/a 1 1 /srv/fast1 1 1 /srv/b 1 1 /srv/fast2 1 1",
			[]int{1, 1, 1, 1}},
		{"no_path_retry count queues", "no_path_retry = 3\npath_grouping_policy = \"multibus\"\npath_selector = \"historical-service-time 0\"",
			"0 2048 multipath 1 queue_if_no_path 0 1 1 historical-service-time 2 984 0 4 1 /srv/a 0 /srv/fast1 0 /srv/b 0 /srv/fast2 0",
			[]int{1, 1, 1, 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cf := mustParse(t, "f.conf", "[[multipaths]]\nalias = \"m\"\n"+paths+"\n"+c.settings+"\n")
			m := cf.maps[0]
			if !reflect.DeepEqual(m.Priorities, c.prios) {
				t.Errorf("priorities %v, want %v", m.Priorities, c.prios)
			}
			got, err := m.table(2048)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Fatalf("table\n got %s\nwant %s", got, c.want)
			}
			// The round trip: the kernel's parser reads the table back
			// and prints it the same.
			tl, err := dm.ParseTableLine(got)
			if err != nil {
				t.Fatal(err)
			}
			spec, err := multipath.ParseSpec(tl.Args)
			if err != nil {
				t.Fatalf("the table does not parse: %v", err)
			}
			if again := strings.TrimRight(spec.Format(spec.QueueIfNoPath), " "); again != strings.Join(strings.Fields(got)[3:], " ") {
				t.Fatalf("reprinted\n got %s\nwant %s", again, got)
			}
			if len(spec.Groups) != len(m.groups()) {
				t.Fatalf("%d groups, want %d", len(spec.Groups), len(m.groups()))
			}
		})
	}
}

// TestConfigShowRoundTrip checks that what udm show config prints reads
// back as the same configuration.
func TestConfigShowRoundTrip(t *testing.T) {
	cf := mustParse(t, "f.conf", `
[defaults]
path_grouping_policy = "group_by_prio"
prio = "weightedpath"
prio_args = "devname \\.fast$ 20"
no_path_retry = 5

[blacklist]
paths = ["/dev/sdz"]

[[multipaths]]
alias = "a"
paths = ["/dev/sdb.fast", "/dev/sdz", "/dev/sdc"]

[[devices]]
alias = "lin"
table = "0 2048 linear /dev/sdd 0"
`)
	r := api.ConfigReply{File: "f.conf", Defaults: cf.defaults, Blacklist: cf.blacklist, Devices: cf.devices}
	for _, m := range cf.maps {
		r.Multipaths = append(r.Multipaths, m.ConfigMap)
	}
	var b strings.Builder
	api.FormatConfig(&b, r)
	cf2 := mustParse(t, "shown", b.String())
	if cf2.defaults != cf.defaults || !reflect.DeepEqual(cf2.blacklist, cf.blacklist) ||
		!reflect.DeepEqual(cf2.devices, cf.devices) || !reflect.DeepEqual(cf2.maps[0].ConfigMap, cf.maps[0].ConfigMap) {
		t.Fatalf("read back differs:\n%s\n%+v\n%+v", b.String(), cf2.maps[0].ConfigMap, cf.maps[0].ConfigMap)
	}
	if cf.maps[0].Priorities[0] != 20 || cf.maps[0].Priorities[1] != 0 {
		t.Errorf("priorities %v", cf.maps[0].Priorities)
	}
}

// TestConfigExample checks that the example file in docs parses and
// that the defaults it shows are the defaults.
func TestConfigExample(t *testing.T) {
	cf, err := readConfig("../docs/udm.conf.example")
	if err != nil {
		t.Fatal(err)
	}
	none := mustParse(t, "empty", "")
	if cf.defaults != none.defaults {
		t.Fatalf("the example's defaults are not the defaults:\n got %+v\nwant %+v", cf.defaults, none.defaults)
	}
	// The commented-out entries parse too.
	b, err := os.ReadFile("../docs/udm.conf.example")
	if err != nil {
		t.Fatal(err)
	}
	var text strings.Builder
	entry := regexp.MustCompile(`^# (\[\[[a-z]+\]\]$|[a-z_]+ = )`)
	for _, l := range strings.Split(string(b), "\n") {
		if entry.MatchString(l) {
			l = l[2:]
		}
		text.WriteString(l + "\n")
	}
	cf = mustParse(t, "uncommented", text.String())
	if len(cf.maps) != 2 || len(cf.devices) != 1 || cf.maps[1].Priorities[0] != 50 {
		t.Fatalf("uncommented example: %d maps, %d devices", len(cf.maps), len(cf.devices))
	}
}
