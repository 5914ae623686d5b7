package perf

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// FullWorkloads are the side-by-side workloads of `make bench`.
var FullWorkloads = []Workload{
	{Name: "randread-4k-qd1", RW: "randread", BS: 4096, Depth: 1},
	{Name: "randread-4k-qd32", RW: "randread", BS: 4096, Depth: 32},
	{Name: "randwrite-4k-qd1", RW: "randwrite", BS: 4096, Depth: 1},
	{Name: "randwrite-4k-qd32", RW: "randwrite", BS: 4096, Depth: 32},
	{Name: "read-128k-qd8", RW: "read", BS: 128 << 10, Depth: 8},
	{Name: "write-128k-qd8", RW: "write", BS: 128 << 10, Depth: 8},
	{Name: "randrw70-4k-qd16", RW: "randrw", BS: 4096, Depth: 16, ReadPct: 70},
	// Shared CPUs: as many CPU hogs as CPUs beside the run, udm against
	// nbdkit (see Workload.Hogs).
	sharedWorkload("randread", 1), sharedWorkload("randread", 32),
	sharedWorkload("randwrite", 1), sharedWorkload("randwrite", 32),
	// The real stack (root, FUSE and nbdfuse): ext4 on the export.
	ext4Workload(), tarWorkload(),
}

func ext4Workload() Workload {
	w := Ext4Workload
	w.For = []string{ext4Rows}
	return w
}

func tarWorkload() Workload {
	w := TarWorkload
	w.For = []string{ext4Rows}
	return w
}

// ext4Rows is in the name of every real-stack row: udm's, nbdkit's and
// those of udm's --variant servers.
const ext4Rows = "ext4 via nbdfuse"

// sharedWorkload is the 4 KiB rw workload at depth d in the shared-CPU
// condition, for udm's linear export (and its --variant servers) and
// nbdkit over both transports.
func sharedWorkload(rw string, d int) Workload {
	return Workload{Name: fmt.Sprintf("shared-%s-4k-qd%d", rw, d), RW: rw, BS: 4096, Depth: d,
		Hogs: runtime.NumCPU(), For: []string{"udm nbd linear", CNbdkitTCP, CNbdkitUnix}}
}

// Contender names of the full suite. Peers are the other NBD servers.
const (
	CFioFile     = "fio io_uring, file"
	CFioLoop     = "fio io_uring, loop dev"
	CUdmRawLoop  = "udm loop raw, loop dev"
	CUdmLinLoop  = "udm in-process linear, loop dev"
	CUdmMpLoop   = "udm in-process multipath, 2 loop devs"
	CUdmLinTCP   = "udm nbd linear, tcp"
	CUdmLinUnix  = "udm nbd linear, unix"
	CUdmMpTCP    = "udm nbd multipath, tcp"
	CUdmMpUnix   = "udm nbd multipath, unix"
	CNbdkitTCP   = "nbdkit file, tcp"
	CNbdkitUnix  = "nbdkit file, unix"
	CQemuThrTCP  = "qemu-nbd aio=threads, tcp"
	CQemuThrUnix = "qemu-nbd aio=threads, unix"
	CQemuUrTCP   = "qemu-nbd aio=io_uring, tcp"
	CQemuUrUnix  = "qemu-nbd aio=io_uring, unix"
	// ext4 on the export through nbdfuse and a loop device (FsContender).
	CUdmExt4    = "udm nbd linear, ext4 via nbdfuse"
	CNbdkitExt4 = "nbdkit file, ext4 via nbdfuse"
	// A loop device over a device's file: udm's FUSE frontend (udm serve
	// --fuse), and the NBD export through nbdfuse (LoopFileContender).
	CUdmFuseLoop   = "udm fuse linear, loop dev"
	CUdmNbdfuse    = "udm nbd linear, loop via nbdfuse"
	CNbdkitNbdfuse = "nbdkit file, loop via nbdfuse"
	// The floor server (ServeFloor) is a reference, not a peer: the least
	// a server can do per request, busy-polling one connection.
	CFloorTCP  = "floor server, tcp"
	CFloorUnix = "floor server, unix"
)

// FullOptions configure FullSuite.
type FullOptions struct {
	Self  string // the udm binary
	Dir   string // scratch: sockets, state, logs
	Size  int64  // backing file size
	Loops int    // udm serve --loops
	// Only keeps contenders whose names contain one of these (all if
	// empty); Workloads likewise for workloads.
	Only, Workloads []string
	// Variants are more udm serve command lines' extra arguments ("--gather
	// 0"): each one's linear export runs beside the others, its rows
	// named "udm nbd linear [ARGS], tcp" (and unix).
	Variants []string
}

// Suite is a prepared side-by-side run and what to tear down after it.
type Suite struct {
	Matrix  *Matrix
	cleanup []func()
}

// Close stops servers and removes scratch files and loop devices.
func (s *Suite) Close() {
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		s.cleanup[i]()
	}
}

func keep(name string, only []string) bool {
	if len(only) == 0 {
		return true
	}
	for _, o := range only {
		if strings.Contains(name, o) {
			return true
		}
	}
	return false
}

// FullSuite prepares `make bench`: one backing file on /dev/shm (plus a
// hard link to it, the second multipath path), two loop devices over it,
// udm serve with a linear and a multipath export, nbdkit's file plugin and
// qemu-nbd in both aio modes, each over TCP and a Unix socket.
func FullSuite(opt FullOptions) (*Suite, error) {
	s := &Suite{Matrix: &Matrix{}}
	ok := false
	defer func() {
		if !ok {
			s.Close()
		}
	}()
	for _, w := range FullWorkloads {
		if keep(w.Name, opt.Workloads) {
			s.Matrix.Workloads = append(s.Matrix.Workloads, w)
		}
	}
	file, err := Scratch("/dev/shm", opt.Size)
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, func() { os.Remove(file) })
	link := file + ".path1"
	if err := os.Link(file, link); err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, func() { os.Remove(link) })
	sectors := opt.Size / 512
	add := func(c Contender) {
		if keep(c.Name, opt.Only) {
			s.Matrix.Contenders = append(s.Matrix.Contenders, c)
		}
	}
	add(FioContender(CFioFile, FioJob{Filename: file}))
	var loops []string
	if os.Geteuid() == 0 {
		for i := 0; i < 2; i++ {
			dev, detach, err := LoopAttach(file)
			if err != nil {
				return nil, err
			}
			s.cleanup = append(s.cleanup, detach)
			loops = append(loops, dev)
		}
		add(FioContender(CFioLoop, FioJob{Filename: loops[0]}))
		add(CommandContender(CUdmRawLoop, []string{opt.Self, "bench", "--raw", loops[0]}))
		add(CommandContender(CUdmLinLoop, []string{opt.Self, "bench", "--table", fmt.Sprintf("0 %d linear %s 0", sectors, loops[0])}))
		add(CommandContender(CUdmMpLoop, []string{opt.Self, "bench", "--table",
			fmt.Sprintf("0 %d multipath 0 0 1 1 round-robin 0 2 1 %s 1 %s 1", sectors, loops[0], loops[1])}))
	}
	want := func(names ...string) bool {
		for _, n := range names {
			if keep(n, opt.Only) {
				return true
			}
		}
		return false
	}
	// udm serve, and a server for each variant (rows named after its
	// arguments, linear only: an A/B of a setting in one interleaved run).
	if want(CUdmLinTCP, CUdmLinUnix, CUdmMpTCP, CUdmMpUnix, CUdmExt4, CUdmNbdfuse) {
		if err := s.startUdm(opt, file, link, "", nil, add); err != nil {
			return nil, err
		}
	}
	// udm serve --fuse, a server of its own (its loops take 128-byte
	// SQEs and ring entries the NBD rows' server has not).
	if _, err := os.Stat("/dev/fuse"); err == nil && want(CUdmFuseLoop) && os.Geteuid() == 0 {
		if err := s.startUdm(opt, file, "", fuseTag, []string{"--fuse", filepath.Join(opt.Dir, "fuse")}, add); err != nil {
			return nil, err
		}
	}
	for i, v := range opt.Variants {
		args := strings.Fields(v)
		if err := s.startUdm(opt, file, "", fmt.Sprintf("v%d", i), args, add); err != nil {
			return nil, err
		}
	}
	// Peers: one server process per transport, so each one's CPU is its
	// own.
	type peer struct {
		name string
		argv func(listen []string) []string
		tcp  bool
	}
	nbdkit := func(l []string) []string {
		return append(append([]string{"nbdkit", "-f", "--exit-with-parent"}, l...), "file", file)
	}
	qemu := func(aio string) func(l []string) []string {
		return func(l []string) []string {
			return append([]string{"qemu-nbd", "--image-opts", "--persistent", "--shared=16"}, append(l,
				"driver=raw,file.driver=file,file.filename="+file+",file.locking=off,file.aio="+aio+",cache.direct=on")...)
		}
	}
	floor := func(l []string) []string {
		return append(append([]string{opt.Self, "bench", "floor-server"}, l...), file)
	}
	peers := []peer{
		{CNbdkitTCP, nbdkit, true}, {CNbdkitUnix, nbdkit, false},
		{CQemuThrTCP, qemu("threads"), true}, {CQemuThrUnix, qemu("threads"), false},
		{CQemuUrTCP, qemu("io_uring"), true}, {CQemuUrUnix, qemu("io_uring"), false},
		{CFloorTCP, floor, true}, {CFloorUnix, floor, false},
	}
	for i, p := range peers {
		if !keep(p.name, opt.Only) && (p.name != CNbdkitUnix || !want(CNbdkitExt4, CNbdkitNbdfuse)) {
			continue
		}
		var listen []string
		var addr, uri string
		isQemu, isFloor := strings.HasPrefix(p.name, "qemu"), strings.HasPrefix(p.name, "floor")
		if p.tcp {
			port, err := FreePort()
			if err != nil {
				return nil, err
			}
			addr = fmt.Sprintf("127.0.0.1:%d", port)
			uri = "nbd://" + addr + "/"
			switch {
			case isQemu:
				listen = []string{"-b", "127.0.0.1", "-p", fmt.Sprint(port)}
			case isFloor:
				listen = []string{"--listen", addr}
			default:
				listen = []string{"-i", "127.0.0.1", "-p", fmt.Sprint(port)}
			}
		} else {
			addr = filepath.Join(opt.Dir, fmt.Sprintf("peer%d.sock", i))
			os.Remove(addr)
			uri = "nbd+unix:///?socket=" + addr
			switch {
			case isQemu:
				listen = []string{"-k", addr}
			case isFloor:
				listen = []string{"--unix", addr}
			default:
				listen = []string{"-U", addr}
			}
		}
		srv, err := StartServer(p.name, opt.Dir, p.argv(listen), addr)
		if err != nil {
			return nil, err
		}
		s.cleanup = append(s.cleanup, srv.Stop)
		add(NBDContender(p.name, uri, srv, nil))
		if p.name == CNbdkitUnix && canFuse() {
			add(FsContender(CNbdkitExt4, uri, opt.Dir, srv))
			add(LoopFileContender(CNbdkitNbdfuse, func() (string, func(), error) { return NBDFuse(uri, opt.Dir) }, srv))
		}
	}
	ok = true
	return s, nil
}

// fuseTag is startUdm's tag of the FUSE frontend's server.
const fuseTag = "fuse"

// startUdm starts a udm serve (with extra arguments) exporting a linear
// device over file and, given link, a 2-path multipath over file and
// link, and adds its contenders. tag names the scratch files of a
// variant ("" for the main server).
func (s *Suite) startUdm(opt FullOptions, file, link, tag string, extra []string, add func(Contender)) error {
	port, err := FreePort()
	if err != nil {
		return err
	}
	mport, err := FreePort()
	if err != nil {
		return err
	}
	state := filepath.Join(opt.Dir, "udm-state"+tag)
	ctl := filepath.Join(opt.Dir, "udm-control"+tag+".sock")
	usock := filepath.Join(opt.Dir, "udm-nbd"+tag+".sock")
	os.RemoveAll(state)
	argv := []string{opt.Self, "serve", "--state-dir", state, "--control", ctl, "--no-demo",
		"--nbd", fmt.Sprintf("127.0.0.1:%d", port), "--nbd-unix", usock, "--log-level", "warn",
		"--metrics", fmt.Sprintf("127.0.0.1:%d", mport)}
	if opt.Loops > 0 {
		argv = append(argv, "--loops", fmt.Sprint(opt.Loops))
	}
	argv = append(argv, extra...)
	srv, err := StartServer("udm serve"+tag, opt.Dir, argv, usock)
	if err != nil {
		return err
	}
	s.cleanup = append(s.cleanup, srv.Stop)
	sectors := opt.Size / 512
	tables := map[string]string{"lin": fmt.Sprintf("0 %d linear %s 0", sectors, file)}
	if link != "" {
		tables["mp"] = fmt.Sprintf("0 %d multipath 0 0 1 1 round-robin 0 2 1 %s 1 %s 1", sectors, file, link)
	}
	for name, table := range tables {
		cmd := exec.Command(opt.Self, "create", name, "--table", table)
		cmd.Env = append(os.Environ(), "UDM_SOCKET="+ctl)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("perf: udm create %s: %v: %s", name, err, out)
		}
	}
	allocs := MetricsCounter(fmt.Sprintf("http://127.0.0.1:%d/debug/allocs", mport), "udm_heap_allocs_total")
	tcp := func(exp string) string { return fmt.Sprintf("nbd://127.0.0.1:%d/%s", port, exp) }
	unix := func(exp string) string { return fmt.Sprintf("nbd+unix:///%s?socket=%s", exp, usock) }
	if tag == fuseTag {
		file := filepath.Join(opt.Dir, "fuse", "lin")
		add(LoopFileContender(CUdmFuseLoop, func() (string, func(), error) {
			// The device's file appears once the mount has seen it.
			for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if _, err := os.Stat(file); err == nil {
					return file, func() {}, nil
				} else if time.Now().After(deadline) {
					return "", nil, fmt.Errorf("perf: udm's FUSE file: %w", err)
				}
			}
		}, srv))
		return nil
	}
	if tag != "" {
		name := "udm nbd linear [" + strings.Join(extra, " ") + "]"
		add(NBDContender(name+", tcp", tcp("lin"), srv, allocs))
		add(NBDContender(name+", unix", unix("lin"), srv, allocs))
		if canFuse() {
			add(FsContender(name+", ext4 via nbdfuse", unix("lin"), opt.Dir, srv))
		}
		return nil
	}
	add(NBDContender(CUdmLinTCP, tcp("lin"), srv, allocs))
	add(NBDContender(CUdmLinUnix, unix("lin"), srv, allocs))
	add(NBDContender(CUdmMpTCP, tcp("mp"), srv, allocs))
	add(NBDContender(CUdmMpUnix, unix("mp"), srv, allocs))
	if canFuse() {
		add(FsContender(CUdmExt4, unix("lin"), opt.Dir, srv))
		add(LoopFileContender(CUdmNbdfuse, func() (string, func(), error) { return NBDFuse(unix("lin"), opt.Dir) }, srv))
	}
	return nil
}

// canFuse reports whether the real-stack row can run here: root, and
// nbdfuse and mkfs.ext4 installed.
func canFuse() bool {
	if os.Geteuid() != 0 {
		return false
	}
	for _, tool := range []string{"nbdfuse", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false
		}
	}
	return true
}

// Peers are the other NBD servers of a transport.
func Peers(unix bool) []string {
	if unix {
		return []string{CNbdkitUnix, CQemuThrUnix, CQemuUrUnix}
	}
	return []string{CNbdkitTCP, CQemuThrTCP, CQemuUrTCP}
}

// FullRatios: udm NBD rows against the best peer on their transport and
// against fio on the raw file; in-process rows against the raw loop
// device.
func FullRatios(names []string) []Ratio {
	idx := map[string]int{}
	for i, n := range names {
		idx[n] = i
	}
	bestPeer := func(_ string, row int, meds []*Result) int {
		n := names[row]
		if n == CUdmExt4 {
			if i, ok := idx[CNbdkitExt4]; ok {
				return i
			}
			return -1
		}
		if n == CUdmFuseLoop {
			// The faster of the two nbdfuse rows.
			best := -1
			for _, p := range []string{CUdmNbdfuse, CNbdkitNbdfuse} {
				if i, ok := idx[p]; ok && meds[i] != nil && (best < 0 || meds[i].IOPS > meds[best].IOPS) {
					best = i
				}
			}
			return best
		}
		if !strings.HasPrefix(n, "udm nbd") || strings.HasSuffix(n, "via nbdfuse") {
			return -1
		}
		best := -1
		for _, p := range Peers(strings.HasSuffix(n, "unix")) {
			if i, ok := idx[p]; ok && meds[i] != nil && (best < 0 || meds[i].IOPS > meds[best].IOPS) {
				best = i
			}
		}
		return best
	}
	raw := func(_ string, row int, _ []*Result) int {
		n := names[row]
		switch {
		case strings.HasPrefix(n, "udm in-process"), n == CUdmRawLoop, n == CUdmFuseLoop, n == CUdmNbdfuse, n == CNbdkitNbdfuse:
			if i, ok := idx[CFioLoop]; ok {
				return i
			}
		case strings.HasPrefix(n, "udm nbd") || strings.HasPrefix(n, "nbdkit") || strings.HasPrefix(n, "qemu") || strings.HasPrefix(n, "floor"):
			if i, ok := idx[CFioFile]; ok {
				return i
			}
		}
		return -1
	}
	return []Ratio{{Label: "best peer", Ref: bestPeer}, {Label: "raw device", Ref: raw}}
}
