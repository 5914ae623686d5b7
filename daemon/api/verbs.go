package api

import (
	"context"
	"net/url"

	"udm/multipath"
)

// The types and client calls of the verbs dmsetup and multipathd
// scripts use beyond the basic ones: rename, deps, remove_all, and the
// multipath map edits (add path, del path, resize map).

// DeviceLines is one device's table or status lines (table -o json,
// status -o json).
type DeviceLines struct {
	Name  string   `json:"name"`
	Lines []string `json:"lines"`
}

// PathsReply is show paths -o json: every map's paths.
type PathsReply struct {
	Paths []multipath.PathStatus `json:"paths"`
}

// RenameRequest renames a device (udm rename).
type RenameRequest struct {
	NewName string `json:"new_name"`
}

// DepsReply lists what a device's live table opened (udm deps): files,
// block devices and NBD URIs as the table names them, udm's own devices
// as /dev/mapper/NAME.
type DepsReply struct {
	Name string   `json:"name"`
	Deps []string `json:"deps"`
}

// RemoveAllReply says what remove_all removed and what it left (open
// devices, without force).
type RemoveAllReply struct {
	Removed []string `json:"removed"`
	Left    []string `json:"left"`
}

// AddPathRequest adds a path to a multipath map's live table (udm add
// path). Group is 1-based; 0 adds it to the last group.
type AddPathRequest struct {
	Path  string `json:"path"`
	Group int    `json:"group,omitempty"`
}

// Rename renames a device; its state file goes with it.
func (c *Client) Rename(ctx context.Context, name, newName string) (DeviceInfo, error) {
	var v DeviceInfo
	return v, c.do(ctx, "POST", devPath(name, "/rename"), nil, RenameRequest{NewName: newName}, &v)
}

// Deps lists what a device's live table opened.
func (c *Client) Deps(ctx context.Context, name string) ([]string, error) {
	var v DepsReply
	return v.Deps, c.do(ctx, "GET", devPath(name, "/deps"), nil, nil, &v)
}

// RemoveAll removes every device that is not open (force: those too,
// their tables replaced by error tables first).
func (c *Client) RemoveAll(ctx context.Context, force bool) (RemoveAllReply, error) {
	var v RemoveAllReply
	var q url.Values
	if force {
		q = url.Values{"force": {"true"}}
	}
	return v, c.do(ctx, "POST", "/remove_all", q, nil, &v)
}

// AddPath adds a path to a multipath map (a noflush reload).
func (c *Client) AddPath(ctx context.Context, mapName, path string, group int) error {
	return c.do(ctx, "POST", "/multipath/maps/"+url.PathEscape(mapName)+"/paths", nil, AddPathRequest{Path: path, Group: group}, nil)
}

// DelPath takes a path out of a multipath map (a noflush reload).
func (c *Client) DelPath(ctx context.Context, mapName, path string) error {
	return c.do(ctx, "DELETE", "/multipath/maps/"+url.PathEscape(mapName)+"/paths", url.Values{"path": {path}}, nil, nil)
}

// ResizeMap reloads a multipath map with the size of its smallest path.
func (c *Client) ResizeMap(ctx context.Context, mapName string) (DeviceInfo, error) {
	var v DeviceInfo
	return v, c.do(ctx, "POST", "/multipath/maps/"+url.PathEscape(mapName)+"/resize", nil, nil, &v)
}
