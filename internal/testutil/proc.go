package testutil

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
)

// procDir is /proc/PID, or /proc/self for pid 0.
func procDir(pid int) string {
	if pid == 0 {
		return "/proc/self"
	}
	return fmt.Sprintf("/proc/%d", pid)
}

// ProcStatus reads a field of /proc/PID/status given in kB (VmRSS,
// VmHWM, ...), in bytes; pid 0 is this process.
func ProcStatus(t testing.TB, pid int, field string) int64 {
	t.Helper()
	file := procDir(pid) + "/status"
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == field+":" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("%s: %s: %v", file, field, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in %s", field, file)
	return 0
}

// ProcFDs is how many file descriptors process pid has open; pid 0 is
// this process.
func ProcFDs(t testing.TB, pid int) int {
	t.Helper()
	es, err := os.ReadDir(procDir(pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}
