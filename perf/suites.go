package perf

import (
	"fmt"
	"os"
)

// UringSuite compares the uring loop with fio's io_uring engine on the same
// targets: a file on tmpfs and a loop device over it (4 KiB random reads,
// depth 1 and 32). self is the udm binary (its `bench --raw`).
func UringSuite(self, file, loopdev string) *Matrix {
	m := &Matrix{Workloads: []Workload{
		{Name: "randread-4k-qd1", RW: "randread", BS: 4096, Depth: 1},
		{Name: "randread-4k-qd32", RW: "randread", BS: 4096, Depth: 32},
	}}
	add := func(label, target string) {
		m.Contenders = append(m.Contenders,
			FioContender("fio io_uring "+label, FioJob{Filename: target}),
			CommandContender("udm loop "+label, []string{self, "bench", "--raw", target}))
	}
	add("file", file)
	if loopdev != "" {
		add("loopdev", loopdev)
	}
	return m
}

// UringRatios: the loop against fio on the same target.
func UringRatios(names []string) []Ratio {
	return []Ratio{{Label: "fio same target", Ref: func(_ string, row int, _ []*Result) int {
		// Rows come in pairs: fio, udm.
		if row%2 == 1 {
			return row - 1
		}
		return -1
	}}}
}

// SuiteTargets prepares a scratch file on /dev/shm and, as root, a loop
// device over it; cleanup removes both.
func SuiteTargets(size int64) (file, loopdev string, cleanup func(), err error) {
	file, err = Scratch("/dev/shm", size)
	if err != nil {
		return "", "", nil, fmt.Errorf("perf: scratch file: %w", err)
	}
	cleanup = func() { os.Remove(file) }
	if os.Geteuid() == 0 {
		dev, detach, lerr := LoopAttach(file)
		if lerr == nil {
			loopdev = dev
			cleanup = func() { detach(); os.Remove(file) }
		}
	}
	return file, loopdev, cleanup, nil
}
