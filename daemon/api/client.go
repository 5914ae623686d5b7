package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"udm/multipath"
)

// Client talks to a daemon's control API.
type Client struct {
	sock string
	hc   *http.Client
}

// NewClient returns a client for the control socket sock.
func NewClient(sock string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var dl net.Dialer
			return dl.DialContext(ctx, "unix", sock)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{sock: sock, hc: &http.Client{Transport: tr}}
}

// Socket is the control socket the client uses.
func (c *Client) Socket() string { return c.sock }

// ErrNotRunning is returned when nothing answers on the control socket.
var ErrNotRunning = errors.New("daemon not running")

// NotRunningError says which socket was tried.
type NotRunningError struct {
	Socket string
	Err    error
}

func (e *NotRunningError) Error() string {
	if errors.Is(e.Err, syscall.EACCES) || errors.Is(e.Err, syscall.EPERM) {
		return fmt.Sprintf("permission denied on the control socket %s (the daemon's user, or root, may use it)", e.Socket)
	}
	return fmt.Sprintf("daemon not running (no answer on %s)", e.Socket)
}

func (e *NotRunningError) Unwrap() []error { return []error{ErrNotRunning, e.Err} }

// APIError is an error the daemon replied with.
type APIError struct {
	Status int
	Msg    string
	Errno  string // EBUSY, ENXIO, ...
}

func (e *APIError) Error() string { return e.Msg }

// Is matches the errno the error carries (errors.Is(err, syscall.EBUSY)).
func (e *APIError) Is(target error) bool {
	t, ok := target.(syscall.Errno)
	return ok && e.Errno != "" && unix.ErrnoName(t) == e.Errno
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	u := "http://udm" + APIVersion + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return &NotRunningError{Socket: c.sock, Err: err}
		}
		return fmt.Errorf("control socket %s: %w", c.sock, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("control socket %s: %w", c.sock, err)
	}
	if resp.StatusCode != http.StatusOK {
		var er ErrorReply
		if json.Unmarshal(data, &er) != nil || er.Error == "" {
			return &APIError{Status: resp.StatusCode, Msg: fmt.Sprintf("daemon replied %s", resp.Status)}
		}
		return &APIError{Status: resp.StatusCode, Msg: er.Error, Errno: er.Errno}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("control socket %s: bad reply: %w", c.sock, err)
	}
	return nil
}

func devPath(name string, rest string) string {
	return "/devices/" + url.PathEscape(name) + rest
}

// Daemon reports the daemon's addresses and settings.
func (c *Client) Daemon(ctx context.Context) (DaemonInfo, error) {
	var v DaemonInfo
	return v, c.do(ctx, "GET", "/daemon", nil, nil, &v)
}

// List lists the devices.
func (c *Client) List(ctx context.Context) ([]DeviceInfo, error) {
	var v []DeviceInfo
	return v, c.do(ctx, "GET", "/devices", nil, nil, &v)
}

// Create creates a device.
func (c *Client) Create(ctx context.Context, req CreateRequest) (DeviceInfo, error) {
	var v DeviceInfo
	if !utf8.ValidString(req.Name) { // JSON would make it U+FFFD
		return v, fmt.Errorf("invalid device name %q: not valid UTF-8: %w", req.Name, syscall.EINVAL)
	}
	return v, c.do(ctx, "POST", "/devices", nil, req, &v)
}

// Info reports one device.
func (c *Client) Info(ctx context.Context, name string) (DeviceInfo, error) {
	var v DeviceInfo
	return v, c.do(ctx, "GET", devPath(name, ""), nil, nil, &v)
}

// Remove removes a device.
func (c *Client) Remove(ctx context.Context, name string, force, deferred bool) error {
	q := url.Values{}
	if force {
		q.Set("force", "true")
	}
	if deferred {
		q.Set("deferred", "true")
	}
	return c.do(ctx, "DELETE", devPath(name, ""), q, nil, nil)
}

// Load loads a table into the inactive slot.
func (c *Client) Load(ctx context.Context, name, table string) error {
	return c.do(ctx, "PUT", devPath(name, "/table"), nil, TableRequest{Table: table}, nil)
}

// Clear drops the inactive table.
func (c *Client) Clear(ctx context.Context, name string) error {
	return c.do(ctx, "DELETE", devPath(name, "/table"), nil, nil, nil)
}

// Table returns the live (or inactive) table's lines.
func (c *Client) Table(ctx context.Context, name string, inactive bool) ([]string, error) {
	var v TableReply
	var q url.Values
	if inactive {
		q = url.Values{"inactive": {"true"}}
	}
	return v.Lines, c.do(ctx, "GET", devPath(name, "/table"), q, nil, &v)
}

// Status returns the live table's status lines.
func (c *Client) Status(ctx context.Context, name string) ([]string, error) {
	var v TableReply
	return v.Lines, c.do(ctx, "GET", devPath(name, "/status"), nil, nil, &v)
}

// Suspend suspends a device.
func (c *Client) Suspend(ctx context.Context, name string, noflush bool) (DeviceInfo, error) {
	var v DeviceInfo
	return v, c.do(ctx, "POST", devPath(name, "/suspend"), nil, SuspendRequest{NoFlush: noflush}, &v)
}

// Resume resumes a device (swapping in its inactive table, if any).
func (c *Client) Resume(ctx context.Context, name string, noflush bool) (DeviceInfo, error) {
	var v DeviceInfo
	return v, c.do(ctx, "POST", devPath(name, "/resume"), nil, SuspendRequest{NoFlush: noflush}, &v)
}

// Message sends a message to the target at sector.
func (c *Client) Message(ctx context.Context, name string, sector uint64, args []string) (string, error) {
	var v MessageReply
	return v.Reply, c.do(ctx, "POST", devPath(name, "/message"), nil, MessageRequest{Sector: sector, Args: args}, &v)
}

// Wait blocks until the device's event number differs from after (its
// current one if after < 0) and returns the new number.
func (c *Client) Wait(ctx context.Context, name string, after int64) (uint32, error) {
	var v WaitReply
	var q url.Values
	if after >= 0 {
		q = url.Values{"event": {strconv.FormatInt(after, 10)}}
	}
	return v.Event, c.do(ctx, "GET", devPath(name, "/wait"), q, nil, &v)
}

// Targets lists the target types.
func (c *Client) Targets(ctx context.Context) ([]TargetInfo, error) {
	var v []TargetInfo
	return v, c.do(ctx, "GET", "/targets", nil, nil, &v)
}

// Maps lists the multipath maps with their paths.
func (c *Client) Maps(ctx context.Context) ([]multipath.MapStatus, error) {
	var v MapsReply
	return v.Maps, c.do(ctx, "GET", "/multipath/maps", nil, nil, &v)
}

// FailPath fails a path in every map that has it (or in mapName only)
// and pauses its checker.
func (c *Client) FailPath(ctx context.Context, mapName, dev string) error {
	return c.do(ctx, "POST", "/multipath/fail", nil, PathOpRequest{Path: dev, Map: mapName}, nil)
}

// ReinstatePath reinstates a path and resumes its checker.
func (c *Client) ReinstatePath(ctx context.Context, mapName, dev string) error {
	return c.do(ctx, "POST", "/multipath/reinstate", nil, PathOpRequest{Path: dev, Map: mapName}, nil)
}

// Checker returns a device's checker settings.
func (c *Client) Checker(ctx context.Context, name string) (CheckerSettings, error) {
	var v CheckerSettings
	return v, c.do(ctx, "GET", devPath(name, "/checker"), nil, nil, &v)
}

// SetChecker replaces a device's checker settings.
func (c *Client) SetChecker(ctx context.Context, name string, s CheckerSettings) error {
	return c.do(ctx, "PUT", devPath(name, "/checker"), nil, s, nil)
}
