package drill

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
)

// Remote paths live in network namespaces of their own, one per path,
// each joined to the root namespace by a veth pair:
//
//	root ns: udd<pid>h<i>  169.254.X.(4i+1)/30  ──veth──  udmdrill-<pid>-<i>: udd<pid>n<i>  169.254.X.(4i+2)/30
//
// The addresses are link-local, on a /24 (X) that no interface or route
// of the root namespace uses, never 169.254.169.0/24 (cloud metadata
// lives there); the namespaces have no other route. While a link is cut
// (its root end down) its connected route is gone, and without more the
// root namespace would send what is meant for the namespace to its
// default gateway: so the drill adds "unreachable 169.254.X.0/24" for
// its /24, and nothing a drill sends can leave the machine (a cut path
// gets EHOSTUNREACH).
// Namespaces left by a drill that died are removed by the next one (the
// pid in their names says whose they are).

// ErrNoNetns is returned when network namespaces can't be used here.
var ErrNoNetns = errors.New("drill: network namespaces unavailable")

const netnsPrefix = "udmdrill-"

// netPath is one remote path's namespace and link.
type netPath struct {
	ns, host, peer string
	hostIP, nsIP   string
}

// ipCmd runs ip with args and returns its error with its output.
func ipCmd(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// NetnsAvailable reports why remote drills can't run here (nil if they
// can): they need root, iproute2 and network namespaces.
func NetnsAvailable() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("%w: remote drills need root", ErrNoNetns)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("%w: no ip command (install iproute2)", ErrNoNetns)
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("%w: %v", ErrNoNetns, err)
	}
	ns := fmt.Sprintf("%sprobe-%d", netnsPrefix, os.Getpid())
	if err := ipCmd("netns", "add", ns); err != nil {
		return fmt.Errorf("%w: %v", ErrNoNetns, err)
	}
	ipCmd("netns", "del", ns)
	return nil
}

// cleanStaleNetns removes namespaces of drills whose process is gone.
func cleanStaleNetns() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], netnsPrefix) {
			continue
		}
		rest := strings.TrimPrefix(f[0], netnsPrefix)
		rest = strings.TrimPrefix(rest, "probe-")
		pidStr, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			ipCmd("netns", "del", f[0])
		}
	}
}

// freeSubnet picks X for 169.254.X.0/24: one no address or route of the
// root namespace falls in.
func freeSubnet() (int, error) {
	out, err := exec.Command("ip", "-4", "-o", "addr", "show").Output()
	if err != nil {
		return 0, fmt.Errorf("ip addr: %w", err)
	}
	rt, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return 0, fmt.Errorf("ip route: %w", err)
	}
	used := string(out) + "\n" + string(rt)
	start := 100 + os.Getpid()%140
	for i := 0; i < 150; i++ {
		x := 100 + (start-100+i)%150
		if x == 169 {
			continue
		}
		if !strings.Contains(used, fmt.Sprintf("169.254.%d.", x)) {
			return x, nil
		}
	}
	return 0, fmt.Errorf("drill: no free 169.254.X.0/24 for remote paths")
}

// guardSubnet makes 169.254.x.0/24 unreachable but for the links the
// drill makes in it (their /30s are more specific); the returned func
// removes the route.
func guardSubnet(x int) (func(), error) {
	dst := fmt.Sprintf("169.254.%d.0/24", x)
	if err := ipCmd("route", "add", "unreachable", dst); err != nil {
		return nil, fmt.Errorf("drill: %w", err)
	}
	return func() { ipCmd("route", "del", "unreachable", dst) }, nil
}

// newNetPath makes namespace i with its veth pair on subnet x.
func newNetPath(x, i int) (*netPath, error) {
	pid := os.Getpid()
	n := &netPath{
		ns:     fmt.Sprintf("%s%d-%d", netnsPrefix, pid, i),
		host:   fmt.Sprintf("udd%dh%d", pid, i),
		peer:   fmt.Sprintf("udd%dn%d", pid, i),
		hostIP: fmt.Sprintf("169.254.%d.%d", x, 4*i+1),
		nsIP:   fmt.Sprintf("169.254.%d.%d", x, 4*i+2),
	}
	steps := [][]string{
		{"netns", "add", n.ns},
		{"link", "add", n.host, "type", "veth", "peer", "name", n.peer, "netns", n.ns},
		{"addr", "add", n.hostIP + "/30", "dev", n.host},
		{"link", "set", n.host, "up"},
		{"-n", n.ns, "addr", "add", n.nsIP + "/30", "dev", n.peer},
		{"-n", n.ns, "link", "set", n.peer, "up"},
		{"-n", n.ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ipCmd(s...); err != nil {
			n.close()
			return nil, fmt.Errorf("drill: remote path %d: %w", i, err)
		}
	}
	return n, nil
}

// setLink takes the root end of the pair down or up.
func (n *netPath) setLink(up bool) error {
	st := "down"
	if up {
		st = "up"
	}
	return ipCmd("link", "set", n.host, st)
}

// exec returns argv run inside the namespace.
func (n *netPath) exec(argv ...string) []string {
	return append([]string{"ip", "netns", "exec", n.ns}, argv...)
}

// close removes the pair and the namespace (processes in it must be gone).
func (n *netPath) close() error {
	ipCmd("link", "del", n.host) // may be gone with the namespace already
	return ipCmd("netns", "del", n.ns)
}
