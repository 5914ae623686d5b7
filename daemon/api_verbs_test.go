package daemon

import (
	"strings"
	"testing"

	"udm/multipath"
)

// The map edits as tables: what add path and del path make of a
// multipath table, the initial group following its group.
func TestMapEditTables(t *testing.T) {
	for _, tc := range []struct {
		name, table string
		edit        func(s *multipath.Spec) error
		want, err   string
	}{
		{"add to the last group", "0 0 2 1 round-robin 0 1 1 a 1 round-robin 0 1 1 b 1",
			func(s *multipath.Spec) error { return addPath(s, "c", 0) },
			"0 0 2 1 round-robin 0 1 1 a 1 round-robin 0 2 1 b 1 c 1 ", ""},
		{"add to group 1 (service-time)", "0 0 1 1 service-time 0 1 2 a 1 5",
			func(s *multipath.Spec) error { return addPath(s, "c", 1) },
			"0 0 1 1 service-time 0 2 2 a 1 5 c 1 1 ", ""},
		{"add to no group", "0 0 1 1 round-robin 0 1 1 a 1",
			func(s *multipath.Spec) error { return addPath(s, "c", 2) }, "", "no group 2"},
		{"add a path it has", "0 0 1 1 round-robin 0 1 1 /x/a 1",
			func(s *multipath.Spec) error { return addPath(s, "/x//a", 1) }, "", "already has"},
		{"del: the initial group moves up", "0 0 3 3 round-robin 0 1 1 a 1 round-robin 0 1 1 b 1 round-robin 0 1 1 c 1",
			func(s *multipath.Spec) error { return delPath(s, "a") },
			"0 0 2 2 round-robin 0 1 1 b 1 round-robin 0 1 1 c 1 ", ""},
		{"del: the initial group goes", "0 0 3 2 round-robin 0 1 1 a 1 round-robin 0 1 1 b 1 round-robin 0 1 1 c 1",
			func(s *multipath.Spec) error { return delPath(s, "b") },
			"0 0 2 1 round-robin 0 1 1 a 1 round-robin 0 1 1 c 1 ", ""},
		{"del: a group keeps its other path", "0 0 1 1 round-robin 0 2 1 a 1 b 1",
			func(s *multipath.Spec) error { return delPath(s, "a") },
			"0 0 1 1 round-robin 0 1 1 b 1 ", ""},
		{"del the last path", "0 0 1 1 round-robin 0 1 1 a 1",
			func(s *multipath.Spec) error { return delPath(s, "a") }, "", "last path"},
		{"del a path it lacks", "0 0 1 1 round-robin 0 1 1 a 1",
			func(s *multipath.Spec) error { return delPath(s, "z") }, "", "no path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := multipath.ParseSpec(strings.Fields(tc.table))
			if err != nil {
				t.Fatal(err)
			}
			err = tc.edit(s)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := s.Format(s.QueueIfNoPath)
			if got != tc.want {
				t.Fatalf("table\n%q\nwant\n%q", got, tc.want)
			}
			if _, err := multipath.ParseSpec(strings.Fields(got)); err != nil {
				t.Fatalf("the edited table does not parse: %v", err)
			}
		})
	}
}
