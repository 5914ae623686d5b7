package drill

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"udm/multipath"
)

// hangMs is the delay layer's delay for "hang": an hour.
const hangMs = 3600 * 1000

// do plays one event (awaits and expect-errors are the player's). It
// returns a detail worth reporting, if any.
func (e *env) do(ctx context.Context, ev Event) (string, error) {
	var p *envPath
	if len(ev.Args) > 0 {
		p = e.paths[ev.Args[0]]
	}
	switch ev.Action {
	case "fail-path", "reinstate-path":
		msg := strings.Replace(ev.Action, "-", "_", 1)
		_, err := e.ctl.Message(ctx, e.mapName, 0, []string{msg, p.dev})
		return "", err
	case "operator-fail":
		return "", e.ctl.FailPath(ctx, e.mapName, p.dev)
	case "operator-reinstate":
		return "", e.ctl.ReinstatePath(ctx, e.mapName, p.dev)
	case "error":
		return "", e.setLower(ctx, p, fmt.Sprintf("0 %d error", e.sectors))
	case "flakey":
		return "", e.setLower(ctx, p, fmt.Sprintf("0 %d flakey %s 0 %s", e.sectors, e.backing, strings.Join(ev.Args[1:], " ")))
	case "hang":
		if p.spec.Kind == KindRemote {
			p.stopped = true
			return fmt.Sprintf("server pid %d stopped", p.srv.Pid()), p.srv.Signal(syscall.SIGSTOP)
		}
		return "", e.setLower(ctx, p, fmt.Sprintf("0 %d delay %s 0 %d", e.sectors, e.backing, hangMs))
	case "restore":
		if p.spec.Kind == KindRemote {
			return e.restoreRemote(ctx, p)
		}
		return "", e.setLower(ctx, p, e.linear())
	case "vanish":
		if p.spec.Kind == KindFile {
			return "", os.Remove(p.file)
		}
		p.srv.Kill()
		return fmt.Sprintf("server pid %d killed", p.srv.Pid()), nil
	case "cut", "uncut":
		p.cut = ev.Action == "cut"
		return "", p.net.setLink(!p.cut)
	case "suspend":
		_, err := e.ctl.Suspend(ctx, e.mapName, len(ev.Args) == 1)
		return "", err
	case "resume":
		_, err := e.ctl.Resume(ctx, e.mapName, false)
		return "", err
	case "load":
		return "", e.ctl.Load(ctx, e.mapName, e.mapTable(ev.Args))
	case "storm":
		n, noflush, every, _ := parseStorm(ev.Args)
		start := time.Now()
		for i := 0; i < n; i++ {
			if _, err := e.ctl.Suspend(ctx, e.mapName, noflush); err != nil {
				return "", fmt.Errorf("cycle %d: suspend: %w", i+1, err)
			}
			if _, err := e.ctl.Resume(ctx, e.mapName, false); err != nil {
				return "", fmt.Errorf("cycle %d: resume: %w", i+1, err)
			}
			if err := sleepCtx(ctx, every); err != nil {
				return "", err
			}
		}
		return fmt.Sprintf("%d cycles in %s", n, fmtDur(time.Since(start).Seconds())), nil
	case "restart":
		return e.restartDaemon(ctx)
	case "message":
		reply, err := e.ctl.Message(ctx, e.mapName, 0, ev.Args)
		return strings.TrimSpace(reply), err
	case "checker":
		c := e.checker
		for _, kv := range ev.Args {
			k, v, _ := strings.Cut(kv, "=")
			if err := c.Set(k, v); err != nil {
				return "", err
			}
		}
		if err := e.ctl.SetChecker(ctx, e.mapName, c); err != nil {
			return "", err
		}
		e.checker = c
		return "", nil
	}
	return "", fmt.Errorf("drill: action %q is not played by the environment", ev.Action)
}

// restoreRemote brings a remote path's server and link back.
func (e *env) restoreRemote(ctx context.Context, p *envPath) (string, error) {
	var did []string
	if p.cut {
		if err := p.net.setLink(true); err != nil {
			return "", err
		}
		p.cut = false
		did = append(did, "link up")
	}
	if p.stopped {
		p.stopped = false
		if err := p.srv.Signal(syscall.SIGCONT); err == nil {
			did = append(did, "server continued")
		}
	}
	if p.srv.Exited() {
		srv, err := e.runRemote(ctx, p, filepath.Join(e.dir, "remote-"+p.spec.Name+".log"))
		if err != nil {
			return "", err
		}
		p.srv = srv
		did = append(did, fmt.Sprintf("server restarted (pid %d)", srv.Pid()))
	}
	return strings.Join(did, ", "), nil
}

// await polls the map until cond holds, or fails after its bound.
func (e *env) await(ctx context.Context, c awaitCond) (string, error) {
	start := time.Now()
	var last *multipath.MapStatus
	var lastErr error
	for {
		ms, err := e.mapStatus(ctx)
		if e.observe != nil {
			if err != nil {
				e.observe(time.Now(), nil)
			} else {
				e.observe(time.Now(), ms)
			}
		}
		if err == nil {
			last = ms
			if e.holds(ms, c) {
				return fmt.Sprintf("after %s", fmtDur(time.Since(start).Seconds())), nil
			}
		} else {
			lastErr = err
		}
		if time.Since(start) > c.within {
			if last == nil {
				return "", fmt.Errorf("not within %s: %v", c.within, lastErr)
			}
			return "", fmt.Errorf("not within %s (paths: %s; queued %d, queue_if_no_path %v)", c.within, describeMap(last), last.Queued, last.QueueIfNoPath)
		}
		if err := sleepCtx(ctx, 20*time.Millisecond); err != nil {
			return "", err
		}
	}
}

func (e *env) holds(ms *multipath.MapStatus, c awaitCond) bool {
	s := e.sample(ms)
	switch c.state {
	case "failed":
		return down(s.Paths[c.path])
	case "active":
		return s.Paths[c.path] == StateActive
	case "all-failed":
		n := 0
		for _, st := range s.Paths {
			if !down(st) {
				return false
			}
			n++
		}
		return n > 0
	case "queued":
		return ms.Queued > 0
	case "queueing-off":
		return !ms.QueueIfNoPath && !ms.Suspended
	case "queueing-on":
		return ms.QueueIfNoPath
	}
	return false
}
