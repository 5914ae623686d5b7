package multipath

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"udm/dm"
)

var specTests = []struct {
	name  string
	args  string
	table string // Format(QueueIfNoPath) ("" with err)
	err   string // substring of the error
	warn  int    // warnings expected
}{
	{"two paths", "0 0 1 1 round-robin 0 2 1 a 1 b 1", "0 0 1 1 round-robin 0 2 1 a 1 b 1 ", "", 0},
	{"design example", "1 queue_if_no_path 0 1 1 round-robin 0 2 1 /dev/loop0 1000 /dev/loop1 1000",
		"1 queue_if_no_path 0 1 1 round-robin 0 2 1 /dev/loop0 1 /dev/loop1 1 ", "", 2},
	{"no path args", "0 0 1 1 round-robin 0 2 0 a b", "0 0 1 1 round-robin 0 2 1 a 1 b 1 ", "", 0},
	{"no groups", "0 0 0 0", "0 0 0 0 ", "", 0},
	{"two groups", "0 0 2 2 queue-length 0 1 1 a 1 service-time 0 2 2 b 1 50 c 1 0",
		"0 0 2 2 queue-length 0 1 1 a 1 service-time 0 2 2 b 1 50 c 1 0 ", "", 0},
	{"service-time defaults", "0 0 1 1 service-time 0 1 0 a", "0 0 1 1 service-time 0 1 2 a 1 1 ", "", 0},
	{"historical", "0 0 1 1 historical-service-time 2 1000 3 2 1 a 5 b 0",
		"0 0 1 1 historical-service-time 2 1000 3 2 1 a 0 b 0 ", "", 0},
	{"historical defaults", "0 0 1 1 historical-service-time 0 1 0 a",
		"0 0 1 1 historical-service-time 2 984 0 1 1 a 0 ", "", 0},
	{"selector args ignored", "0 0 1 1 round-robin 2 x y 1 0 a", "0 0 1 1 round-robin 0 1 1 a 1 ", "", 0},
	{"all features", "6 queue_if_no_path pg_init_retries 3 pg_init_delay_msecs 0 retain_attached_hw_handler 0 1 1 round-robin 0 1 0 a",
		"6 queue_if_no_path pg_init_retries 3 pg_init_delay_msecs 0 retain_attached_hw_handler 0 1 1 round-robin 0 1 1 a 1 ", "", 0},
	{"features any case", "2 QUEUE_IF_NO_PATH Retain_Attached_HW_Handler 0 1 1 round-robin 0 1 0 a",
		"2 queue_if_no_path retain_attached_hw_handler 0 1 1 round-robin 0 1 1 a 1 ", "", 0},
	{"queue_mode bio", "2 queue_mode bio 0 1 1 round-robin 0 1 0 a",
		"3 retain_attached_hw_handler queue_mode bio 0 1 1 round-robin 0 1 1 a 1 ", "", 0},
	{"queue_mode mq", "2 queue_mode mq 0 1 1 round-robin 0 1 0 a", "0 0 1 1 round-robin 0 1 1 a 1 ", "", 0},
	{"hw handler kept in rq mode", "0 2 alua x 1 1 round-robin 0 1 0 a", "0 1 alua 1 1 round-robin 0 1 1 a 1 ", "", 1},
	{"hw handler dropped in bio mode", "2 queue_mode bio 1 alua 1 1 round-robin 0 1 0 a",
		"3 retain_attached_hw_handler queue_mode bio 0 1 1 round-robin 0 1 1 a 1 ", "", 1},
	{"initial pg past the groups", "0 0 1 5 round-robin 0 1 0 a", "0 0 1 5 round-robin 0 1 1 a 1 ", "", 0},
	{"escaped path", `0 0 1 1 round-robin 0 1 0 a\ b`, `0 0 1 1 round-robin 0 1 1 a\ b 1 `, "", 0},

	{"empty", "", "", "invalid number of feature args", 0},
	{"too many features", "9 a b c d e f g h i 0 0 0", "", "invalid number of feature args", 0},
	{"features run short", "3 queue_if_no_path", "", "insufficient arguments", 0},
	{"unknown feature", "1 bogus 0 0 0", "", "unrecognised multipath feature", 0},
	{"pg_init_retries without value", "1 pg_init_retries 0 0 0", "", "unrecognised multipath feature", 0},
	{"pg_init_retries range", "2 pg_init_retries 51 0 0 0", "", "pg_init_retries must be between 1 and 50", 0},
	{"pg_init_delay range", "2 pg_init_delay_msecs 60001 0 0 0", "", "pg_init_delay_msecs must be between 0 and 60000", 0},
	{"bad queue_mode", "2 queue_mode xx 0 0 0", "", "unknown 'queue_mode'", 0},
	{"hw args run short", "0 2 alua", "", "insufficient arguments", 0},
	{"no group count", "0 0", "", "invalid number of priority groups", 0},
	{"no initial pg", "0 0 1", "", "invalid initial priority group", 0},
	{"initial pg without groups", "0 0 0 1", "", "invalid initial priority group", 0},
	{"no initial pg with groups", "0 0 1 0 round-robin 0 1 0 a", "", "invalid initial priority group", 0},
	{"group count mismatch", "0 0 2 1 round-robin 0 1 0 a", "", "priority group count mismatch", 0},
	{"extra group", "0 0 1 1 round-robin 0 1 0 a round-robin 0 1 0 b", "", "priority group count mismatch", 0},
	{"unknown selector", "0 0 1 1 fastest 0 1 0 a", "", "unknown path selector type", 0},
	{"selector args run short", "0 0 1 1 round-robin 3 a", "", "insufficient arguments", 0},
	{"zero paths", "0 0 1 1 round-robin 0 0 0", "", "invalid number of paths", 0},
	{"path count missing", "0 0 1 1 round-robin 0", "", "invalid number of paths", 0},
	{"path args missing", "0 0 1 1 round-robin 0 1", "", "invalid number of selector args", 0},
	{"not enough path parameters", "0 0 1 1 round-robin 0 2 1 a 1 b", "", "not enough path parameters", 0},
	{"too many rr path args", "0 0 1 1 round-robin 0 1 2 a 1 1", "", "round-robin ps: incorrect number of arguments", 0},
	{"bad repeat count", "0 0 1 1 queue-length 0 1 1 a x", "", "invalid repeat count", 0},
	{"relative throughput range", "0 0 1 1 service-time 0 1 2 a 1 101", "", "invalid relative_throughput", 0},
	{"too many st path args", "0 0 1 1 service-time 0 1 3 a 1 1 1", "", "service-time ps: incorrect number of arguments", 0},
	{"hst base weight range", "0 0 1 1 historical-service-time 1 1024 1 0 a", "", "invalid base weight", 0},
	{"hst too many args", "0 0 1 1 historical-service-time 3 1 1 1 1 0 a", "", "historical-service-time ps: incorrect number", 0},
	{"negative count", "-1 0 0 0", "", "invalid number of feature args", 0},
	{"signed count", "+0 0 0 0", "", "invalid number of feature args", 0},
}

func TestParseSpec(t *testing.T) {
	for _, tc := range specTests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSpec(dm.SplitArgs(tc.args))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ParseSpec(%q) = %v, want an error containing %q", tc.args, err, tc.err)
				}
				if !errors.Is(err, ErrBadTable) || !errors.Is(err, syscall.EINVAL) {
					t.Fatalf("error %v is not ErrBadTable/EINVAL", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseSpec(%q): %v", tc.args, err)
			}
			if got := s.Format(s.QueueIfNoPath); got != tc.table {
				t.Errorf("Format:\n got %q\nwant %q", got, tc.table)
			}
			if len(s.Warnings) != tc.warn {
				t.Errorf("warnings %q, want %d", s.Warnings, tc.warn)
			}
			// The table loads back to the same table.
			s2, err := ParseSpec(dm.SplitArgs(tc.table))
			if err != nil {
				t.Fatalf("reloading %q: %v", tc.table, err)
			}
			if got := s2.Format(s2.QueueIfNoPath); got != tc.table {
				t.Errorf("reloaded table %q, want %q", got, tc.table)
			}
		})
	}
}

func TestFeatures(t *testing.T) {
	for _, tc := range []struct{ args, want string }{
		{"0 0 0 0", "0"},
		{"1 queue_if_no_path 0 0 0", "1 queue_if_no_path"},
		{"1 queue_if_no_path 1 alua 0 0", "1 queue_if_no_path"},
		{"2 queue_mode bio 0 0 0", "3 retain_attached_hw_handler queue_mode bio"},
	} {
		s, err := ParseSpec(dm.SplitArgs(tc.args))
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Features(s.QueueIfNoPath); got != tc.want {
			t.Errorf("Features(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

// FuzzParseMultipath: no input makes the parser panic, and a table that
// parses prints a table that parses to the same printed table.
func FuzzParseMultipath(f *testing.F) {
	for _, tc := range specTests {
		f.Add(tc.args)
	}
	f.Fuzz(func(t *testing.T, text string) {
		s, err := ParseSpec(dm.SplitArgs(text))
		if err != nil {
			if !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("error %v is not EINVAL", err)
			}
			return
		}
		for _, q := range []bool{false, true} {
			out := s.Format(q)
			s2, err := ParseSpec(dm.SplitArgs(out))
			if err != nil {
				t.Fatalf("table %q (from %q) does not load back: %v", out, text, err)
			}
			if out2 := s2.Format(q); out2 != out {
				t.Fatalf("table %q reloads as %q", out, out2)
			}
			if s2.QueueIfNoPath != q || len(s2.Groups) != len(s.Groups) || s2.NumPaths() != s.NumPaths() {
				t.Fatalf("reloaded spec differs: %q", out)
			}
		}
		m := NewMachine(s)
		_ = m.StatusInfo(nil)
		m.Choose()
		_ = m.StatusInfo(nil)
	})
}
