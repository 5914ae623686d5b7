package daemon_test

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"udm/internal/testutil"
)

// asUser runs a command with another uid and gid and no supplementary
// groups but those given (setpriv).
func asUser(uid, gid int, groups []int, name string, args ...string) (string, error) {
	pa := []string{"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid)}
	if len(groups) == 0 {
		pa = append(pa, "--clear-groups")
	} else {
		var gs []string
		for _, g := range groups {
			gs = append(gs, strconv.Itoa(g))
		}
		pa = append(pa, "--groups="+strings.Join(gs, ","))
	}
	out, err := exec.Command("setpriv", append(append(pa, name), args...)...).CombinedOutput()
	return string(out), err
}

// connectAs tries to connect to a Unix socket as uid/gid; it returns the
// error Python's connect raised ("" when it connected).
func connectAs(t *testing.T, uid, gid int, groups []int, sock string) string {
	t.Helper()
	out, err := asUser(uid, gid, groups, "/usr/bin/python3", "-c", `
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(type(e).__name__, e)
`, sock)
	if err != nil {
		t.Fatalf("python3 as %d: %v\n%s", uid, err, out)
	}
	return strings.TrimSpace(out)
}

// tempGroupUser makes a system group and a user in it, removed after the
// test.
func tempGroupUser(t *testing.T) (group string, uid, gid int) {
	t.Helper()
	for _, tool := range []string{"groupadd", "useradd", "userdel", "groupdel"} {
		testutil.RequireTool(t, tool)
	}
	suffix := fmt.Sprintf("%d%04d", os.Getpid()%100000, rand.IntN(10000))
	group, name := "udmtg"+suffix, "udmtu"+suffix
	if out, err := exec.Command("groupadd", "-r", group).CombinedOutput(); err != nil {
		t.Fatalf("groupadd: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("groupdel", group).Run() })
	if out, err := exec.Command("useradd", "-r", "-M", "-g", group, "-s", "/usr/sbin/nologin", name).CombinedOutput(); err != nil {
		t.Fatalf("useradd: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ = strconv.Atoi(u.Uid)
	gid, _ = strconv.Atoi(u.Gid)
	return group, uid, gid
}

const nobody = 65534

// The NBD and control sockets refuse other users: connecting fails with
// permission denied and qemu-io cannot write an export. With
// --nbd-unix-group, the group's members can use the NBD socket (mode
// 0660), others still cannot, and the control socket stays the owner's.
func TestSocketsRefuseOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (to run commands as other users)")
	}
	testutil.RequireTool(t, "setpriv")
	testutil.RequireTool(t, "qemu-io")
	testutil.RequireTool(t, "/usr/bin/python3")
	group, uid, gid := tempGroupUser(t)
	for _, withGroup := range []bool{false, true} {
		t.Run(fmt.Sprintf("group=%v", withGroup), func(t *testing.T) {
			var extra []string
			if withGroup {
				extra = []string{"--nbd-unix-group", group}
			}
			u := startUDM(t, t.TempDir(), append([]string{"--no-demo"}, extra...)...)
			// Let everyone reach the sockets' directory: the sockets'
			// own modes must do the refusing.
			if err := os.Chmod(filepath.Dir(u.sock), 0o755); err != nil {
				t.Fatal(err)
			}
			a := backing(t, shmDir(t), "a.img", 8<<20)
			u.ok("create", "d", "--table", fmt.Sprintf("0 %d linear %s 0", 8<<20>>9, a))
			fi, err := os.Stat(u.nbdUnix)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			wantMode := os.FileMode(0o600)
			if withGroup {
				wantMode = 0o660
				if int(st.Gid) != gid {
					t.Errorf("NBD socket group %d, want %d (%s)", st.Gid, gid, group)
				}
			}
			if fi.Mode().Perm() != wantMode {
				t.Errorf("NBD socket mode %v, want %v", fi.Mode().Perm(), wantMode)
			}
			uri := "nbd+unix:///d?socket=" + u.nbdUnix
			for _, sock := range []string{u.nbdUnix, u.sock} {
				if e := connectAs(t, nobody, nobody, nil, sock); !strings.Contains(e, "PermissionError") {
					t.Errorf("nobody connecting to %s: %q, want permission denied", sock, e)
				}
			}
			out, err := asUser(nobody, nobody, nil, "qemu-io", "-f", "raw", "-c", "write -P 0x66 0 4k", uri)
			if err == nil || strings.Contains(out, "wrote 4096/4096") || !strings.Contains(out, "Permission denied") {
				t.Errorf("qemu-io as nobody: %v\n%s", err, out)
			}
			out, err = asUser(uid, gid, []int{gid}, "qemu-io", "-f", "raw", "-c", "write -P 0x66 0 4k", uri)
			if withGroup {
				if err != nil || !strings.Contains(out, "wrote 4096/4096") {
					t.Errorf("qemu-io as a member of %s: %v\n%s", group, err, out)
				}
			} else if err == nil || !strings.Contains(out, "Permission denied") {
				t.Errorf("qemu-io as a user outside any socket group: %v\n%s", err, out)
			}
			if e := connectAs(t, uid, gid, []int{gid}, u.sock); !strings.Contains(e, "PermissionError") {
				t.Errorf("group member connecting to the control socket: %q, want permission denied", e)
			}
			// Root still can.
			pat := "0x66" // written by the group member
			if !withGroup {
				pat = "0"
			}
			if out, err := exec.Command("qemu-io", "-f", "raw", "-c", "read -P "+pat+" 0 4k", uri).CombinedOutput(); err != nil || !strings.Contains(string(out), "read 4096/4096") {
				t.Errorf("qemu-io as root: %v\n%s", err, out)
			}
		})
	}
}

// With no --nbd-unix, the NBD socket sits next to the control socket,
// so two daemons with their own control sockets don't collide.
func TestNBDSocketFollowsControl(t *testing.T) {
	var us []*udmd
	for _, name := range []string{"control.sock", "ctl.sock"} {
		sd := sockDir(t)
		u := &udmd{t: t, stateDir: t.TempDir(), sock: filepath.Join(sd, name)}
		u.args = []string{"serve", "--state-dir", u.stateDir, "--control", u.sock, "--nbd", "", "--loops", "1", "--no-demo"}
		u.start()
		t.Cleanup(func() {
			if u.running() {
				u.cmd.Process.Kill()
				<-u.done
			}
		})
		us = append(us, u)
	}
	for i, want := range []string{filepath.Join(filepath.Dir(us[0].sock), "nbd.sock"), filepath.Join(filepath.Dir(us[1].sock), "ctl.nbd.sock")} {
		if us[i].info.NBDUnix != want {
			t.Errorf("daemon %d: NBD socket %q, want %q", i, us[i].info.NBDUnix, want)
		}
		if fi, err := os.Stat(want); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Errorf("daemon %d: %s: %v", i, want, err)
		}
		us[i].stop()
	}
}

// The Go profiler is served only with --pprof; listening beyond loopback
// without TLS is logged.
func TestPprofAndExposureWarnings(t *testing.T) {
	get := func(addr, path string) int {
		resp, err := http.Get("http://" + addr + path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	u := startUDM(t, t.TempDir(), "--no-demo", "--metrics", "127.0.0.1:0")
	if c := get(u.info.Metrics, "/debug/pprof/"); c != http.StatusNotFound {
		t.Errorf("pprof without --pprof: status %d", c)
	}
	if c := get(u.info.Metrics, "/metrics"); c != http.StatusOK {
		t.Errorf("metrics: status %d", c)
	}
	if strings.Contains(u.stderr.String(), "beyond loopback") {
		t.Errorf("loopback listeners warned about:\n%s", u.stderr)
	}
	u.stop()
	u = startUDM(t, t.TempDir(), "--no-demo", "--metrics", "0.0.0.0:0", "--pprof", "--nbd", "0.0.0.0:0")
	if c := get(strings.Replace(u.info.Metrics, "0.0.0.0", "127.0.0.1", 1), "/debug/pprof/"); c != http.StatusOK {
		t.Errorf("pprof with --pprof: status %d", c)
	}
	for _, w := range []string{"NBD listens beyond loopback without TLS", "metrics listen beyond loopback", "the Go profiler"} {
		if !strings.Contains(u.stderr.String(), w) {
			t.Errorf("no warning %q in the log:\n%s", w, u.stderr)
		}
	}
}
