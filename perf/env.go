package perf

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// Scratch makes a file of size bytes filled with data (so reads hit real
// pages, not holes) in dir, usually /dev/shm.
func Scratch(dir string, size int64) (string, error) {
	f, err := os.CreateTemp(dir, "udm-bench-*.img")
	if err != nil {
		return "", err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i*131 + i>>8)
	}
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			os.Remove(f.Name())
			return "", err
		}
	}
	return f.Name(), nil
}

// LoopAttach attaches file to a loop device with direct I/O and returns
// the device and a function that detaches it.
func LoopAttach(file string) (string, func(), error) {
	out, err := runCmd(context.Background(), "losetup", "--direct-io=on", "--find", "--show", file)
	if err != nil {
		return "", nil, err
	}
	dev := strings.TrimSpace(string(out))
	return dev, func() { exec.Command("losetup", "-d", dev).Run() }, nil
}
