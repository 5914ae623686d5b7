package api

import "udm/multipath"

// The control API: HTTP+JSON on a Unix socket (README.md has the table
// of endpoints). Replies are JSON; errors are {"error": "...", "errno":
// "EBUSY"} with an HTTP status that fits the errno.

// APIVersion prefixes every path.
const APIVersion = "/v1"

// ErrorReply is the body of every error reply.
type ErrorReply struct {
	Error string `json:"error"`
	Errno string `json:"errno,omitempty"`
}

// DaemonInfo answers GET /v1/daemon.
type DaemonInfo struct {
	PID      int    `json:"pid"`
	StateDir string `json:"state_dir"`
	Loops    int    `json:"loops"`
	Started  string `json:"started"`
	// Version is the daemon's build version (udm version's "daemon").
	Version string `json:"version,omitempty"`
	Addrs
}

// TableReply carries table or status lines.
type TableReply struct {
	Lines []string `json:"lines"`
}

// TableRequest carries a table (load) — in the kernel's syntax, one
// target per line.
type TableRequest struct {
	Table string `json:"table"`
}

// SuspendRequest is the body of suspend and resume.
type SuspendRequest struct {
	NoFlush bool `json:"noflush,omitempty"`
}

// MessageRequest is a target message.
type MessageRequest struct {
	Sector uint64   `json:"sector"`
	Args   []string `json:"args"`
}

// MessageReply is a target's answer (often empty).
type MessageReply struct {
	Reply string `json:"reply"`
}

// WaitReply is the event number after a wait.
type WaitReply struct {
	Event uint32 `json:"event"`
}

// TargetInfo is one target type (udm targets).
type TargetInfo struct {
	Name    string `json:"name"`
	Version [3]int `json:"version"`
}

// Addrs are where a daemon listens (bound addresses: a port 0 in the
// configuration is resolved).
type Addrs struct {
	Control string `json:"control"`
	NBD     string `json:"nbd,omitempty"`
	NBDUnix string `json:"nbd_unix,omitempty"`
	Metrics string `json:"metrics,omitempty"`
}

// DeviceInfo is a device as `udm info` shows it.
type DeviceInfo struct {
	Name           string `json:"name"`
	UUID           string `json:"uuid,omitempty"`
	State          string `json:"state"` // ACTIVE or SUSPENDED
	Suspended      bool   `json:"suspended"`
	ReadOnly       bool   `json:"read_only"`
	Live           bool   `json:"live_table"`
	Inactive       bool   `json:"inactive_table"`
	OpenCount      int    `json:"open_count"`
	EventNr        uint32 `json:"event_nr"`
	Targets        int    `json:"targets"`
	DeferredRemove bool   `json:"deferred_remove,omitempty"`
	Size           int64  `json:"size"` // bytes
	// Error says why the device is not all there (its saved table
	// could not be restored); empty when it is.
	Error string `json:"error,omitempty"`
}

// CreateRequest creates a device (udm create).
type CreateRequest struct {
	Name     string `json:"name"`
	UUID     string `json:"uuid,omitempty"`
	Table    string `json:"table"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// MapsReply answers GET /v1/multipath/maps.
type MapsReply struct {
	Maps []multipath.MapStatus `json:"maps"`
}

// PathOpRequest names a path (and optionally its map) for fail and
// reinstate.
type PathOpRequest struct {
	Path string `json:"path"`
	Map  string `json:"map,omitempty"`
}
