package daemon_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"udm/internal/testutil"
)

// TestConfigReconfigureUnderFio starts a daemon with a configuration
// file — defaults, a multibus map, a group_by_prio map with weightedpath
// priorities, a linear device and a blacklist — and finds the three
// devices up; then, with fio writing and verifying through NBD on both
// maps, the file gets a path added to one map and the other's policy
// changed, and udm reconfigure changes both (noflush) while fio runs:
// fio ends with no error and its data verifies, no bio failed, and the
// new path and the new group carry writes. udm show config shows the
// effective values; a file with an error changes nothing; a restart
// finds the devices as the file says and leaves them untouched.
func TestConfigReconfigureUnderFio(t *testing.T) {
	testutil.RequireTool(t, "fio")
	dir := shmDir(t)
	const size = 128 << 20
	link := func(from string, to ...string) {
		for _, p := range to {
			if err := os.Link(from, filepath.Join(dir, p)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Each map's paths are hard links to one file: routes to one disk.
	backing(t, dir, "a0", size)
	link(filepath.Join(dir, "a0"), "a1", "a2")
	backing(t, dir, "b-slow", size)
	link(filepath.Join(dir, "b-slow"), "b-fast")
	backing(t, dir, "lin", 8<<20)
	p := func(n string) string { return filepath.Join(dir, n) }
	conf := filepath.Join(dir, "udm.conf")
	write := func(aPaths, bPolicy string) {
		text := fmt.Sprintf(`# a test configuration
[defaults]
path_selector = "round-robin 0"
no_path_retry = "queue"
polling_interval = 1

[blacklist]
paths = ["%[1]s/blocked-*"]

[[multipaths]]
alias = "mpa"
paths = [%[2]s]
path_grouping_policy = "multibus"

[[multipaths]]
alias = "mpb"
paths = ["%[1]s/b-slow", "%[1]s/b-fast"]
path_grouping_policy = "%[3]s"
prio = "weightedpath"
prio_args = "devname fast$ 50 slow$ 10"

[[devices]]
alias = "lin"
table = "0 16384 linear %[1]s/lin 0"
`, dir, aPaths, bPolicy)
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	quoted := func(names ...string) string {
		var q []string
		for _, n := range names {
			q = append(q, `"`+p(n)+`"`)
		}
		return strings.Join(q, ", ")
	}
	// blocked-1 doesn't exist: the blacklist keeps it out of the map.
	write(quoted("a0", "a1", "blocked-1"), "group_by_prio")
	u := startUDM(t, t.TempDir(), "--no-demo", "--metrics", "127.0.0.1:0", "--config", conf)

	u.okWant("ls", "lin\nmpa\nmpb\n", "ls")
	sectors := size >> 9
	wantA := fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 %s 1 %s 1 \n", sectors, p("a0"), p("a1"))
	wantB := fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 2 1 round-robin 0 1 1 %s 1 round-robin 0 1 1 %s 1 \n", sectors, p("b-fast"), p("b-slow"))
	for dev, want := range map[string]string{"mpa": wantA, "mpb": wantB, "lin": "0 16384 linear " + p("lin") + " 0\n"} {
		if got := u.ok("table", dev); got != want {
			t.Fatalf("table %s:\n got %q\nwant %q", dev, got, want)
		}
	}
	if got := u.ok("checker", "mpa"); !strings.Contains(got, "polling_interval      1s\n") || !strings.Contains(got, "no_path_retry         queue\n") {
		t.Fatalf("checker settings of mpa (the defaults section's):\n%s", got)
	}

	fioArgs := func(name string) []string {
		args := []string{"--name=" + name, "--ioengine=nbd", "--uri=" + u.nbdURI(name), "--rw=randwrite", "--bs=4k",
			"--iodepth=8", fmt.Sprintf("--size=%d", size), "--verify=crc32c", "--verify_state_save=0", "--do_verify=1",
			"--verify_fatal=1", "--verify_backlog=256", "--rate_iops=2000"}
		if testutil.Race {
			args[len(args)-1] = "--rate_iops=1000"
		}
		return args
	}
	fioA, fioB := startFio(t, fioArgs("mpa")...), startFio(t, fioArgs("mpb")...)
	m := u.info.Metrics
	pathWrites := func(dev, path string) float64 {
		return scrape(t, m, `udm_path_io_total{device="`+dev+`",path="`+p(path)+`",op="write"}`)
	}
	eventually(t, "fio to write through both maps", func() bool {
		return (pathWrites("mpa", "a0") >= 500 && pathWrites("mpb", "b-fast") >= 1000) || fioA.exited() || fioB.exited()
	})
	if fioA.exited() || fioB.exited() {
		t.Fatalf("fio finished before the reconfigure (make the job larger):\n%s\n%s", fioA.out, fioB.out)
	}
	// group_by_prio: the higher priority's group alone takes the I/O.
	if n := pathWrites("mpb", "b-slow"); n > 0 {
		t.Fatalf("%v writes went to mpb's lower priority group", n)
	}

	// A file with an error changes nothing and says where it is.
	if err := os.WriteFile(conf, []byte("[defaults]\npath_grouping_policy = \"multibus\"\nno_such_key = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := u.udm("reconfigure")
	if r.code != 1 || r.err != "udm: "+conf+":3: unknown key defaults.no_such_key\n" {
		t.Fatalf("reconfigure with a bad file: %s", r)
	}
	u.okWant("a bad file changed mpb's table", wantB, "table", "mpb")

	// A path added to mpa, mpb's policy changed: both change under fio.
	write(quoted("a0", "a1", "blocked-1", "a2"), "multibus")
	got := u.ok("reconfigure")
	wantRep := "changed    mpa: table reloaded (noflush); multibus, 3 path(s) in 1 group(s)\n" +
		"changed    mpb: table reloaded (noflush); multibus, 2 path(s) in 1 group(s)\n" +
		"unchanged  lin: table from the configuration\n"
	if got != wantRep {
		t.Fatalf("reconfigure:\n got %q\nwant %q", got, wantRep)
	}
	if fioA.exited() || fioB.exited() {
		t.Fatalf("fio finished before the reconfigure was done (make the job larger):\n%s\n%s", fioA.out, fioB.out)
	}
	wantA = fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 3 1 %s 1 %s 1 %s 1 \n", sectors, p("a0"), p("a1"), p("a2"))
	wantB = fmt.Sprintf("0 %d multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 %s 1 %s 1 \n", sectors, p("b-slow"), p("b-fast"))
	for dev, want := range map[string]string{"mpa": wantA, "mpb": wantB} {
		if got := u.ok("table", dev); got != want {
			t.Fatalf("table %s after reconfigure:\n got %q\nwant %q", dev, got, want)
		}
	}
	eventually(t, "writes through the added path and the joined group", func() bool {
		return (pathWrites("mpa", "a2") > 0 && pathWrites("mpb", "b-slow") > 0) || fioA.exited() || fioB.exited()
	})
	if pathWrites("mpa", "a2") <= 0 || pathWrites("mpb", "b-slow") <= 0 {
		t.Fatalf("fio ended before the new paths took writes")
	}

	// Once more: nothing to do.
	if got := u.ok("reconfigure"); got != "unchanged  lin: table from the configuration\n"+
		"unchanged  mpa: multibus, 3 path(s) in 1 group(s)\nunchanged  mpb: multibus, 2 path(s) in 1 group(s)\n" {
		t.Fatalf("second reconfigure: %q", got)
	}

	fioA.wait(t)
	fioB.wait(t)
	for _, dev := range []string{"mpa", "mpb"} {
		if n := scrape(t, m, `udm_device_errors_total{device="`+dev+`"}`); n != 0 {
			t.Errorf("%s: %v bios ended in error", dev, n)
		}
		if n := scrape(t, m, `udm_device_bytes_total{device="`+dev+`",op="write"}`); n != size {
			t.Errorf("%s: bytes_total write = %v, want fio's %d", dev, n, size)
		}
	}

	// The effective configuration: the defaults merged into each map,
	// the blacklisted path marked, the tables as built.
	show := u.ok("show", "config")
	for _, want := range []string{
		"# udm configuration, from " + conf + "\n\n[defaults]\npath_selector = \"round-robin 0\"\npath_grouping_policy = \"failover\"\n",
		"[[multipaths]]\nalias = \"mpb\"\npaths = [" + quoted("b-slow", "b-fast") + "]\npath_selector = \"round-robin 0\"\n" +
			"path_grouping_policy = \"multibus\"\nfeatures = \"0\"\nprio = \"weightedpath\"\nprio_args = \"devname fast$ 50 slow$ 10\"\n" +
			"polling_interval = \"1s\"\nmax_polling_interval = \"4s\"\ncheck_timeout = \"2s\"\nno_path_retry = \"queue\"\n" +
			"failback = \"manual\"\nio_deadline = \"2s\"\n# priorities: " + p("b-slow") + "=10 " + p("b-fast") + "=50\n" +
			"# table: " + strings.TrimRight(wantB, " \n") + "\n",
		"# blacklisted: " + p("blocked-1") + "\n",
		"# table: " + strings.TrimRight(wantA, " \n") + "\n",
		"[[devices]]\nalias = \"lin\"\ntable = \"0 16384 linear " + p("lin") + " 0\"\n",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("show config lacks\n%s\nin\n%s", want, show)
		}
	}

	// A restart applies the file to the restored devices: untouched.
	u.stop()
	u.restart()
	for dev, want := range map[string]string{"mpa": wantA, "mpb": wantB} {
		if got := u.ok("table", dev); got != want {
			t.Fatalf("table %s after a restart:\n got %q\nwant %q", dev, got, want)
		}
	}
	if !strings.Contains(u.stderr.String(), `"created":0,"changed":0,"unchanged":3`) {
		t.Fatalf("the restart changed devices:\n%s", u.stderr)
	}
	u.stop()
}

// TestConfigReconcile checks what a reconfigure does to devices in each
// situation: one dropped from the file is removed if unused and left
// alone while open; one made by hand is left alone unless the file
// names it, and then taken over; a suspended one is left alone; a map
// whose path can't be opened fails without holding up the others. And
// SIGHUP re-reads the file, as udm reconfigure does; a file that
// doesn't parse is logged and changes nothing.
func TestConfigReconcile(t *testing.T) {
	dir := t.TempDir()
	f0 := backing(t, dir, "f0", 8<<20)
	conf := filepath.Join(dir, "udm.conf")
	write := func(text string) {
		if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`
[[devices]]
alias = "x"
table = "0 2048 zero"
[[devices]]
alias = "y"
table = "0 2048 zero"
[[multipaths]]
alias = "m"
paths = ["` + f0 + `"]
`)
	u := startUDM(t, t.TempDir(), "--no-demo", "--config", conf)
	u.okWant("ls", "m\nx\ny\n", "ls")
	u.ok("create", "top", "--table", "0 2048 linear /dev/mapper/x 0") // x is open
	u.ok("create", "mine", "--table", "0 2048 zero")
	u.ok("create", "sus", "--table", "0 2048 zero")
	u.ok("suspend", "sus")

	write(`
[[devices]]
alias = "mine"
table = "0 4096 zero"
[[devices]]
alias = "sus"
table = "0 4096 zero"
[[multipaths]]
alias = "m"
paths = ["` + f0 + `"]
[[multipaths]]
alias = "broken"
paths = ["` + filepath.Join(dir, "missing") + `"]
`)
	r := u.udm("reconfigure")
	want := "changed    mine: table reloaded (noflush); table from the configuration\n" +
		"unchanged  m: failover, 1 path(s) in 1 group(s)\n" +
		"removed    y: no longer in the configuration, and unused\n" +
		"left alone sus: suspended (resume it, then reconfigure)\n" +
		"left alone top: not in the configuration (made by hand)\n" +
		"left alone x: no longer in the configuration, but open (1): not removed\n" +
		"failed     broken: path " + filepath.Join(dir, "missing") + ": uring: open " + filepath.Join(dir, "missing") + ": no such file or directory\n"
	if r.code != 1 || r.out != want || r.err != "udm: reconfigure: 1 device(s) failed\n" {
		t.Fatalf("reconfigure:\n%s\nwant stdout:\n%s", r, want)
	}
	u.okWant("mine was not taken over", "0 4096 zero \n", "table", "mine")
	u.okWant("the suspended device changed", "0 2048 zero \n", "table", "sus")
	u.okWant("ls", "m\nmine\nsus\ntop\nx\n", "ls")
	// Once top is gone, x is unused and goes.
	u.ok("remove", "top")
	write(`
[[devices]]
alias = "mine"
table = "0 4096 zero"
[[multipaths]]
alias = "m"
paths = ["` + f0 + `"]
`)
	if got := u.ok("reconfigure"); got != "unchanged  m: failover, 1 path(s) in 1 group(s)\n"+
		"unchanged  mine: table from the configuration\n"+
		"removed    x: no longer in the configuration, and unused\n"+
		"left alone sus: not in the configuration (made by hand)\n" {
		t.Fatalf("reconfigure: %q", got)
	}

	// SIGHUP: a bad file is logged and changes nothing; a good one is
	// applied.
	applied := func() int { return strings.Count(u.stderr.String(), `"message":"configuration applied"`) }
	n := applied()
	write("[[devices]]\nalias = \"new\"\ntable = \"0 2048 zero\"\nsize = 1\n")
	u.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "the bad file to be refused", func() bool {
		return strings.Contains(u.stderr.String(), `"error":"`+conf+`:4: unknown key devices.size"`)
	})
	u.okWant("a bad file changed devices", "m\nmine\nsus\n", "ls")
	write("[[devices]]\nalias = \"new\"\ntable = \"0 2048 zero\"\n")
	u.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, "SIGHUP to apply the file", func() bool { return applied() > n })
	// m and mine are unused: gone; new is made.
	u.okWant("ls after SIGHUP", "new\nsus\n", "ls")
	u.stop()
}
