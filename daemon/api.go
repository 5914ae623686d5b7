package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"udm/daemon/api"
	"udm/dm"
)

// The control API: HTTP+JSON on a Unix socket (README.md has the table
// of endpoints). Replies are JSON; errors are {"error": "...", "errno":
// "EBUSY"} with an HTTP status that fits the errno.

func (d *Daemon) apiHandler() http.Handler {
	mux := http.NewServeMux()
	h := func(pattern string, f func(r *http.Request) (any, error)) {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			v, err := f(r)
			if err != nil {
				writeError(w, r, err)
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
	}
	p := api.APIVersion
	h("GET "+p+"/daemon", func(r *http.Request) (any, error) {
		return api.DaemonInfo{PID: os.Getpid(), StateDir: d.cfg.StateDir, Loops: len(d.loops),
			Started: d.started.UTC().Format("2006-01-02T15:04:05Z"), Addrs: d.Addrs(), Version: daemonVersion()}, nil
	})
	h("GET "+p+"/devices", func(r *http.Request) (any, error) {
		out := []api.DeviceInfo{}
		for _, n := range d.reg.List() {
			if dev, err := d.reg.Get(n); err == nil {
				out = append(out, d.info(dev))
			}
		}
		return out, nil
	})
	h("POST "+p+"/devices", func(r *http.Request) (any, error) {
		var req api.CreateRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		info, err := d.create(r.Context(), req)
		if err != nil {
			return nil, named(err, req.Name)
		}
		return info, nil
	})
	h("GET "+p+"/devices/{name}", func(r *http.Request) (any, error) {
		dev, err := d.reg.Get(r.PathValue("name"))
		if err != nil {
			return nil, err
		}
		return d.info(dev), nil
	})
	h("DELETE "+p+"/devices/{name}", func(r *http.Request) (any, error) {
		q := r.URL.Query()
		return struct{}{}, d.remove(r.Context(), r.PathValue("name"), boolParam(q.Get("force")), boolParam(q.Get("deferred")))
	})
	h("GET "+p+"/devices/{name}/table", func(r *http.Request) (any, error) {
		dev, err := d.reg.Get(r.PathValue("name"))
		if err != nil {
			return nil, err
		}
		lines, err := dev.Table(boolParam(r.URL.Query().Get("inactive")))
		return api.TableReply{Lines: nonNil(lines)}, err
	})
	h("PUT "+p+"/devices/{name}/table", func(r *http.Request) (any, error) {
		var req api.TableRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		return struct{}{}, d.load(r.PathValue("name"), req.Table)
	})
	h("DELETE "+p+"/devices/{name}/table", func(r *http.Request) (any, error) {
		return struct{}{}, d.clear(r.PathValue("name"))
	})
	h("GET "+p+"/devices/{name}/status", func(r *http.Request) (any, error) {
		dev, err := d.reg.Get(r.PathValue("name"))
		if err != nil {
			return nil, err
		}
		lines, err := dev.Status()
		return api.TableReply{Lines: nonNil(lines)}, err
	})
	h("POST "+p+"/devices/{name}/suspend", func(r *http.Request) (any, error) {
		var req api.SuspendRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		return d.suspend(r.Context(), r.PathValue("name"), req.NoFlush)
	})
	h("POST "+p+"/devices/{name}/resume", func(r *http.Request) (any, error) {
		var req api.SuspendRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		return d.resume(r.Context(), r.PathValue("name"), req.NoFlush)
	})
	h("POST "+p+"/devices/{name}/message", func(r *http.Request) (any, error) {
		var req api.MessageRequest
		if err := readJSON(r, &req); err != nil {
			return nil, err
		}
		reply, err := d.message(r.Context(), r.PathValue("name"), req.Sector, req.Args)
		return api.MessageReply{Reply: reply}, err
	})
	h("GET "+p+"/devices/{name}/wait", func(r *http.Request) (any, error) {
		dev, err := d.reg.Get(r.PathValue("name"))
		if err != nil {
			return nil, err
		}
		after := dev.Event()
		if s := r.URL.Query().Get("event"); s != "" {
			n, err := strconv.ParseUint(s, 10, 32)
			if err != nil {
				return nil, badRequest("bad event number %q", s)
			}
			after = uint32(n)
		}
		n, err := dev.WaitEvent(r.Context(), after)
		if err != nil {
			return nil, fmt.Errorf("wait interrupted: %w", syscall.EINTR)
		}
		return api.WaitReply{Event: n}, nil
	})
	h("GET "+p+"/targets", func(r *http.Request) (any, error) {
		out := []api.TargetInfo{}
		for _, t := range d.targets.Types() {
			out = append(out, api.TargetInfo{Name: t.Name, Version: t.Version})
		}
		return out, nil
	})
	d.mp.routes(h)
	d.confRoutes(h)
	d.verbRoutes(h)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, &apiErr{status: http.StatusNotFound, errno: syscall.ENOENT,
			msg: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path)})
	})
	return mux
}

func boolParam(s string) bool {
	b, _ := strconv.ParseBool(s)
	return b
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// apiErr is an error with its reply already decided.
type apiErr struct {
	status int
	errno  syscall.Errno
	msg    string
}

func (e *apiErr) Error() string { return e.msg }

// named describes err for the device name (for requests that carry the
// name in their body).
func named(err error, name string) error {
	status, errno, msg := describe(err, name)
	return &apiErr{status: status, errno: errno, msg: msg}
}

func badRequest(format string, args ...any) error {
	return &apiErr{status: http.StatusBadRequest, errno: syscall.EINVAL, msg: fmt.Sprintf(format, args...)}
}

func readJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		return badRequest("reading the request: %v", err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("bad request body: %v", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.Encode(v)
}

func writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, errno, msg := describe(err, r.PathValue("name"))
	rep := api.ErrorReply{Error: clipReply(msg)}
	if errno != 0 {
		rep.Errno = unix.ErrnoName(errno)
	}
	writeJSON(w, status, rep)
}

// describe turns an error into the one line the CLI prints, its errno,
// and an HTTP status.
func describe(err error, name string) (status int, errno syscall.Errno, msg string) {
	var ae *apiErr
	if errors.As(err, &ae) {
		return ae.status, ae.errno, ae.msg
	}
	errno = errnoOf(err)
	msg = strings.TrimPrefix(err.Error(), "dm: ")
	dev := fmt.Sprintf("device %q", clip(name))
	switch {
	case errors.Is(err, dm.ErrNoDevice), errors.Is(err, dm.ErrRemoved) && name != "":
		msg = dev + " not found"
	case errors.Is(err, dm.ErrBusy):
		msg = dev + " is busy (open; remove -f forces it, --deferred removes it on last close)"
	case errors.Is(err, dm.ErrExists) && strings.Contains(msg, "uuid"):
		msg = dev + ": " + strings.TrimPrefix(msg, "device exists: ") + " already"
	case errors.Is(err, dm.ErrExists):
		msg = dev + " already exists"
	case errors.Is(err, dm.ErrUnknownTarget):
		msg = "bad table: " + msg
	case errors.Is(err, dm.ErrInvalidTable):
		msg = "bad table: " + strings.TrimPrefix(msg, "invalid table: ")
	case errors.Is(err, dm.ErrImmutable), errors.Is(err, dm.ErrLoop):
		msg = "bad table: " + msg
	case errors.Is(err, dm.ErrInterrupted):
		msg = dev + ": " + msg
	case errors.Is(err, dm.ErrSuspended):
		msg = dev + " is suspended"
	case errors.Is(err, dm.ErrNoTable):
		msg = dev + " has no table (load one first)"
	case errors.Is(err, dm.ErrZeroSize):
		msg = dev + ": table has zero size"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		errno = syscall.EINTR
		msg = "interrupted: " + msg
	}
	return httpStatus(errno), errno, msg
}

// errnoOf finds the errno an error stands for (EIO if none).
func errnoOf(err error) syscall.Errno {
	var de *dm.Error
	if errors.As(err, &de) {
		return de.Errno()
	}
	var en syscall.Errno
	if errors.As(err, &en) && en != 0 {
		return en
	}
	var ee interface{ Errno() syscall.Errno }
	if errors.As(err, &ee) {
		return ee.Errno()
	}
	for _, e := range []syscall.Errno{syscall.EINVAL, syscall.EBUSY, syscall.ENXIO, syscall.ENOENT, syscall.EEXIST} {
		if errors.Is(err, e) {
			return e
		}
	}
	return syscall.EIO
}

func httpStatus(e syscall.Errno) int {
	switch e {
	case syscall.ENXIO, syscall.ENOENT, syscall.ENODEV:
		return http.StatusNotFound
	case syscall.EBUSY, syscall.EEXIST:
		return http.StatusConflict
	case syscall.EINVAL, syscall.ELOOP, syscall.E2BIG, syscall.ERANGE:
		return http.StatusBadRequest
	case syscall.EPERM, syscall.EACCES, syscall.EROFS:
		return http.StatusForbidden
	case syscall.EINTR, syscall.EAGAIN:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
