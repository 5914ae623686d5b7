package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"udm/daemon/api"
	"udm/dm"
)

// stateVersion is the format of a device state file.
const stateVersion = 1

// DeviceState is what is kept of one device across restarts: one JSON
// file per device in <state dir>/devices/.
type DeviceState struct {
	Version int    `json:"version"`
	Name    string `json:"name"`
	UUID    string `json:"uuid,omitempty"`
	// Table is the live table (as `udm table` prints it); empty if the
	// device has none.
	Table string `json:"table,omitempty"`
	// Inactive is the inactive table, if one is loaded.
	Inactive  string `json:"inactive,omitempty"`
	Suspended bool   `json:"suspended,omitempty"`
	ReadOnly  bool   `json:"read_only,omitempty"`
	// Checker holds the path checker's settings for a multipath device.
	Checker *api.CheckerSettings `json:"checker,omitempty"`
	// FailedPaths are the paths an operator failed by hand (`udm fail
	// path`): they stay failed, with their checker paused, until
	// reinstated.
	FailedPaths []string `json:"failed_paths,omitempty"`
	// DeferredRemove: the device goes on last close; after a restart,
	// which leaves it no user, it is not brought back.
	DeferredRemove bool `json:"deferred_remove,omitempty"`
}

// MaxNameLen is the longest device name, in bytes (the kernel's
// DM_NAME_LEN less its NUL).
const MaxNameLen = 127

// CheckName says whether name can name a device: 1 to MaxNameLen bytes
// of UTF-8, without '/', whitespace the tables can't carry (space, tab,
// newline), control characters, or a leading '.' (so not "." or ".."
// either). A name that passes is its own state file name (NAME.json),
// which can't be taken for one of the store's temporary files (which
// begin with '.'), and survives a restart.
func CheckName(name string) error {
	bad := func(why string) error {
		return badRequest("invalid device name %s: %s", strconv.Quote(clip(name)), why)
	}
	switch {
	case name == "":
		return badRequest("invalid device name: empty")
	case len(name) > MaxNameLen:
		return bad(fmt.Sprintf("%d bytes, at most %d", len(name), MaxNameLen))
	case !utf8.ValidString(name):
		return bad("not valid UTF-8")
	case name[0] == '.':
		return bad("begins with '.'")
	case strings.ContainsRune(name, '/'):
		return bad("contains '/'")
	case strings.ContainsAny(name, " \t\n"):
		return bad("contains whitespace")
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return bad("contains a control character")
	}
	return nil
}

// Store keeps device states in a directory, one file each, written
// atomically: a temporary file is written and fsynced, renamed over the
// old one, and the directory is fsynced.
type Store struct {
	dir string
}

// OpenStore makes (if needed) and returns the store in dir.
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state: %w", err)
	}
	return &Store{dir: dir}, nil
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

const stateExt = ".json"

func (s *Store) path(name string) string { return filepath.Join(s.dir, name+stateExt) }

// Save writes st atomically.
func (s *Store) Save(st DeviceState) error {
	st.Version = stateVersion
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("state: %s: %w", st.Name, err)
	}
	b = append(b, '\n')
	if err := writeAtomic(s.path(st.Name), b); err != nil {
		return fmt.Errorf("state: %s: %w", st.Name, err)
	}
	return nil
}

// Delete removes name's state (no error if there is none).
func (s *Store) Delete(name string) error {
	if err := os.Remove(s.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("state: %w", err)
	}
	return syncDir(s.dir)
}

// Corrupt is a state file that could not be used.
type Corrupt struct {
	File string // where it was
	Err  error
}

// LoadAll reads every state file, sorted by device name. Files that
// don't parse are returned in bad (not moved: see SetAside).
func (s *Store) LoadAll() (states []DeviceState, bad []Corrupt, err error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("state: %w", err)
	}
	for _, e := range ents {
		n := e.Name()
		if !e.Type().IsRegular() || !strings.HasSuffix(n, stateExt) {
			continue
		}
		file := filepath.Join(s.dir, n)
		st, err := readState(file)
		if err == nil && st.Name != strings.TrimSuffix(n, stateExt) {
			err = fmt.Errorf("names device %q", st.Name)
		}
		if err != nil {
			bad = append(bad, Corrupt{File: file, Err: err})
			continue
		}
		states = append(states, st)
	}
	sort.Slice(states, func(i, j int) bool { return states[i].Name < states[j].Name })
	return states, bad, nil
}

func readState(file string) (DeviceState, error) {
	var st DeviceState
	b, err := os.ReadFile(file)
	if err != nil {
		return st, err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return st, fmt.Errorf("does not parse: %w", err)
	}
	if dec.More() {
		return st, errors.New("does not parse: trailing data")
	}
	if st.Version != stateVersion {
		return st, fmt.Errorf("unknown version %d", st.Version)
	}
	if st.Name == "" {
		return st, errors.New("no device name")
	}
	return st, nil
}

// SetAside renames a state file that could not be used to
// <file>.corrupt-<unix time>, so that it is kept for inspection and not
// read again. It returns the new name.
func (s *Store) SetAside(file string, now time.Time) (string, error) {
	to := fmt.Sprintf("%s.corrupt-%d", file, now.Unix())
	for i := 1; ; i++ {
		if _, err := os.Lstat(to); errors.Is(err, os.ErrNotExist) {
			break
		}
		to = fmt.Sprintf("%s.corrupt-%d.%d", file, now.Unix(), i)
	}
	if err := os.Rename(file, to); err != nil {
		return "", fmt.Errorf("state: %w", err)
	}
	return to, syncDir(filepath.Dir(file))
}

// writeAtomic replaces file with data: write a temporary file beside it,
// fsync it, rename it over file, fsync the directory.
func writeAtomic(file string, data []byte) error {
	dir := filepath.Dir(file)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(file)+".tmp-*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(name)
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		return err
	}
	if err := tmp.Sync(); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(name, file); err != nil {
		return err
	}
	ok = true
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// CleanTemps removes temporary files a crash left behind mid-write.
func (s *Store) CleanTemps() {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), stateExt+".tmp-") {
			os.Remove(filepath.Join(s.dir, e.Name()))
		}
	}
}

// restoreOrder sorts states so that a device comes after the devices its
// tables stack on (/dev/mapper/NAME). Devices in a cycle, or stacked on
// devices that have no state, keep their place at the end (their restore
// then fails and is reported).
func restoreOrder(states []DeviceState) []DeviceState {
	byName := make(map[string]int, len(states))
	for i, st := range states {
		byName[st.Name] = i
	}
	deps := make([][]int, len(states))
	for i, st := range states {
		for _, n := range stackedOn(st) {
			if j, ok := byName[n]; ok && j != i {
				deps[i] = append(deps[i], j)
			}
		}
	}
	const (
		unseen = iota
		visiting
		done
	)
	mark := make([]int, len(states))
	out := make([]DeviceState, 0, len(states))
	var visit func(i int)
	visit = func(i int) {
		if mark[i] != unseen {
			return // done, or a cycle: leave it where it is
		}
		mark[i] = visiting
		for _, j := range deps[i] {
			visit(j)
		}
		mark[i] = done
		out = append(out, states[i])
	}
	for i := range states {
		visit(i)
	}
	return out
}

// stackedOn lists the udm devices a state's tables name.
func stackedOn(st DeviceState) []string {
	var out []string
	for _, text := range []string{st.Table, st.Inactive} {
		lines, err := dm.ParseTable(text)
		if err != nil {
			continue
		}
		for _, l := range lines {
			for _, a := range l.Args {
				if n, ok := strings.CutPrefix(a, dm.MapperPrefix); ok && n != "" {
					out = append(out, n)
				}
			}
		}
	}
	return out
}
