package drill

import (
	"context"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"udm/daemon/api"
	"udm/internal/child"
)

// proc is a process the drill started: a daemon, a remote server, fio.
// Its output goes to a log file in the drill's directory. It dies with
// the drill (Pdeathsig), and Stop ends it.
type proc = child.Proc

func startProc(name, logPath string, argv []string) (*proc, error) {
	p, err := child.Start(name, logPath, argv, []string{api.Env + "=/nonexistent/udm-drill.sock"})
	if err != nil {
		return nil, fmt.Errorf("drill: %w", err)
	}
	return p, nil
}

// tail returns the end of the process's log, for error messages.
func tail(p *proc, n int) string {
	s := strings.TrimSpace(p.LogSince(0, math.MaxInt))
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// startDaemon starts `udm serve` and waits until its control API
// answers.
func startDaemon(ctx context.Context, name, logPath string, argv []string, sock string) (*proc, error) {
	p, err := startProc(name, logPath, argv)
	if err != nil {
		return nil, err
	}
	if err := waitAPI(ctx, p, sock); err != nil {
		p.Kill()
		return nil, err
	}
	return p, nil
}

// waitAPI waits until the daemon answers on sock (or exits).
func waitAPI(ctx context.Context, p *proc, sock string) error {
	c := api.NewClient(sock)
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := c.Daemon(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("drill: %s exited before answering (%v): %s", p.Name, p.Err(), tail(p, 2000))
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("drill: %s did not answer on %s: %v", p.Name, sock, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// shortDir makes a directory for Unix sockets, whose paths are limited to
// 108 bytes.
func shortDir() (string, error) {
	return os.MkdirTemp("", "udmd")
}

// scratchDir makes the drill's directory on tmpfs (O_DIRECT works there
// and nothing touches a disk), or in the temp dir without /dev/shm.
func scratchDir(base string) (string, error) {
	if base == "" {
		base = "/dev/shm"
		if st, err := os.Stat(base); err != nil || !st.IsDir() {
			base = os.TempDir()
		}
	}
	return os.MkdirTemp(base, "udm-drill-")
}

// sparseFile makes a sparse file of size bytes.
func sparseFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
