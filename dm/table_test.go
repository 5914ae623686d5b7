package dm_test

import (
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"udm/dm"
	"udm/dm/dmtest"
	"udm/internal/testutil"
)

func TestSplitArgs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"   \t ", nil},
		{"a", []string{"a"}},
		{"  a  b\tc\n", []string{"a", "b", "c"}},
		{`a\ b c`, []string{"a b", "c"}},
		{`a\\b`, []string{`a\b`}},
		{`a\`, []string{`a\`}},
		{`\x\y`, []string{"xy"}},
		{`a\	b`, []string{"a\tb"}},
		{`\ `, []string{" "}},
		{"0 100 linear /dev/loop0 0", []string{"0", "100", "linear", "/dev/loop0", "0"}},
	} {
		if got := dm.SplitArgs(tc.in); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SplitArgs(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestQuoteArgRoundTrip(t *testing.T) {
	for _, a := range []string{"plain", "with space", `back\slash`, "tab\there", `trailing\`, " ", "#hash"} {
		got := dm.SplitArgs(dm.QuoteArg(a))
		if len(got) != 1 || got[0] != a {
			t.Errorf("SplitArgs(QuoteArg(%q)) = %q", a, got)
		}
	}
}

// tableCases seed FuzzParseTable as well.
var tableCases = []struct {
	name string
	in   string
	want []dm.TableLine // nil with wantErr
	err  string         // substring of the error, "" for success
}{
	{"empty", "", nil, ""},
	{"comments and blanks", "# a comment\n\n   # indented comment\n\t\n", nil, ""},
	{"one linear", "0 2097152 linear /dev/loop0 0", []dm.TableLine{{0, 2097152, "linear", []string{"/dev/loop0", "0"}}}, ""},
	{"two lines", "0 100 linear /dev/a 0\n100 50 zero\n", []dm.TableLine{
		{0, 100, "linear", []string{"/dev/a", "0"}},
		{100, 50, "zero", nil},
	}, ""},
	{"crlf and comment", "0 8 error\r\n# x\r\n8 8 zero\r\n", []dm.TableLine{{0, 8, "error", nil}, {8, 8, "zero", nil}}, ""},
	{"escaped arg", `0 8 linear /dev/with\ space 0`, []dm.TableLine{{0, 8, "linear", []string{"/dev/with space", "0"}}}, ""},
	{"multipath line", "0 2097152 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 /dev/loop0 1000 /dev/loop1 1000",
		[]dm.TableLine{{0, 2097152, "multipath", strings.Fields("1 queue_if_no_path 0 1 1 round-robin 0 2 1 /dev/loop0 1000 /dev/loop1 1000")}}, ""},
	{"hash inside line is an arg", "0 8 linear #dev 0", []dm.TableLine{{0, 8, "linear", []string{"#dev", "0"}}}, ""},
	{"missing type", "0 8", nil, "want <start> <length> <type>"},
	{"bad start", "x 8 zero", nil, "bad start"},
	{"negative len", "0 -8 zero", nil, "bad length"},
	{"overflowing len", "0 99999999999999999999 zero", nil, "bad length"},
	{"error names the line", "0 8 zero\n\n8 zz zero", nil, "line 3"},
	// A device ends at sector 2^54-1 at most (its size in bytes fits in
	// an int64): larger ones wrapped to negative or zero sizes.
	{"largest device", "0 18014398509481983 zero", []dm.TableLine{{0, 1<<54 - 1, "zero", nil}}, ""},
	{"largest device in two targets", "0 8 zero\n8 18014398509481975 zero", []dm.TableLine{{0, 8, "zero", nil}, {8, 1<<54 - 9, "zero", nil}}, ""},
	{"2^54 sectors", "0 18014398509481984 zero", nil, "too large"},
	{"2^55 sectors", "0 36028797018963968 zero", nil, "too large"},
	{"largest uint64 length", "0 18446744073709551615 zero", nil, "too large"},
	{"end past the largest device", "8 18014398509481976 zero", nil, "too large"},
	{"start past the largest device", "18014398509481984 1 zero", nil, "too large"},
	{"end wraps around", "18446744073709551615 2 zero", nil, "too large"},
}

func TestParseTable(t *testing.T) {
	for _, tc := range tableCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := dm.ParseTable(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				if !errors.Is(err, dm.ErrInvalidTable) || !errors.Is(err, syscall.EINVAL) {
					t.Fatalf("err = %v: not ErrInvalidTable/EINVAL", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v\nwant %#v", got, tc.want)
			}
			// Printing round-trips.
			again, err := dm.ParseTable(dm.FormatTable(got))
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("round trip: %#v, %v", again, err)
			}
		})
	}
}

func FuzzParseTable(f *testing.F) {
	for _, tc := range tableCases {
		f.Add(tc.in)
	}
	f.Add("0 8 linear a\\\\\\ b 0\n")
	f.Fuzz(func(t *testing.T, in string) {
		lines, err := dm.ParseTable(in)
		if err != nil {
			return
		}
		for _, l := range lines {
			if l.Start > dm.MaxSectors || l.Len > dm.MaxSectors || l.Start+l.Len > dm.MaxSectors {
				t.Fatalf("parsed %v, which ends beyond MaxSectors", l)
			}
		}
		out := dm.FormatTable(lines)
		again, err := dm.ParseTable(out)
		if err != nil {
			t.Fatalf("printed table %q does not parse: %v", out, err)
		}
		if len(again) != len(lines) || (len(lines) > 0 && !reflect.DeepEqual(again, lines)) {
			t.Fatalf("parse(print(parse(%q))) = %#v, want %#v", in, again, lines)
		}
		if out2 := dm.FormatTable(again); out2 != out {
			t.Fatalf("print not stable: %q then %q", out, out2)
		}
	})
}

func TestLoadValidation(t *testing.T) {
	a := dmtest.NewMemDevice("a", 1*MiB)
	log := &eventLog{}
	reg := testTargets(t, log)
	single := dm.TargetType{Name: "solo", Singleton: true, New: func(*dm.TargetContext, []string) (dm.Target, error) { return dm.ErrorTarget{}, nil }}
	imm := dm.TargetType{Name: "imm", Immutable: true, New: func(*dm.TargetContext, []string) (dm.Target, error) { return dm.ErrorTarget{}, nil }}
	failing := dm.TargetType{Name: "failing", New: func(*dm.TargetContext, []string) (dm.Target, error) { return nil, fmt.Errorf("no good") }}
	for _, tt := range []dm.TargetType{single, imm, failing} {
		if err := reg.Register(tt); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name  string
		table string
		err   string
		is    error
	}{
		{"ok", "0 8 zero\n8 8 error", "", nil},
		{"not at zero", "8 8 zero", "first target must start at sector 0", dm.ErrInvalidTable},
		{"gap", "0 8 zero\n16 8 zero", "gap in table", dm.ErrInvalidTable},
		{"overlap", "0 8 zero\n4 8 zero", "overlaps", dm.ErrInvalidTable},
		{"zero length", "0 0 zero", "zero-length", dm.ErrInvalidTable},
		{"too large", "0 18014398509481984 zero", "too large", dm.ErrInvalidTable},
		{"largest", "0 18014398509481983 zero", "", nil},
		{"unknown type names the word", "0 8 zero\n8 8 frobnicate x", `"frobnicate"`, dm.ErrUnknownTarget},
		{"constructor error names the line", "0 8 zero\n8 8 failing", "line 2 (8 8 failing): failing: no good", dm.ErrInvalidTable},
		{"linear arg count", "0 8 linear a", "line 1 (0 8 linear a): linear: invalid argument count", dm.ErrInvalidTable},
		{"linear unknown device", "0 8 linear nosuch 0", "device lookup failed", dm.ErrInvalidTable},
		{"linear device too small", "0 4096 linear a 1", "too small", dm.ErrInvalidTable},
		{"zero takes no args", "0 8 zero x", "no arguments", dm.ErrInvalidTable},
		{"singleton alone", "0 8 solo", "", nil},
		{"singleton not alone", "0 8 solo\n8 8 zero", "must appear alone", dm.ErrInvalidTable},
		{"immutable mixed", "0 8 imm\n8 8 zero", "cannot be mixed", dm.ErrInvalidTable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := dm.NewDevice(dm.DeviceConfig{Name: "v", Targets: reg, Open: dm.StaticOpener(a)})
			err := d.Load(tc.table)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v, want one containing %q", err, tc.err)
			}
			if !errors.Is(err, tc.is) || !errors.Is(err, syscall.EINVAL) {
				t.Fatalf("err = %v, want errors.Is %v and EINVAL", err, tc.is)
			}
			if d.Info().Inactive {
				t.Fatal("a failed load left an inactive table")
			}
		})
	}
}

// The largest device has a positive size in bytes and serves its last
// sector; a table built without the parser is held to the same limit.
func TestLargestDevice(t *testing.T) {
	d := dm.NewDevice(dm.DeviceConfig{Name: "big"})
	if err := d.LoadLines([]dm.TableLine{{Start: 0, Len: dm.MaxSectors + 1, Type: "zero"}}); !errors.Is(err, dm.ErrInvalidTable) || !strings.Contains(err.Error(), "too large") {
		t.Fatalf("load of 2^54 sectors: %v", err)
	}
	if err := d.LoadLines([]dm.TableLine{{0, 8, "zero", nil}, {8, 1<<64 - 8, "zero", nil}}); !errors.Is(err, dm.ErrInvalidTable) {
		t.Fatalf("load of a table that ends at 2^64: %v", err)
	}
	if err := d.Load("0 18014398509481983 zero"); err != nil {
		t.Fatal(err)
	}
	mustResume(t, d)
	if got, want := d.Size(), int64(dm.MaxSectors)*dm.SectorSize; got != want || got <= 0 {
		t.Fatalf("size %d, want %d", got, want)
	}
	r := dmtest.NewRec(dm.OpRead, dm.MaxSectors-1, 512)
	d.Submit(&r.Bio)
	testutil.MustErrno(t, "read of the last sector", r.Wait(t), 0)
}

// A constructor failing on line 2 releases what line 1 opened.
func TestLoadFailureReleasesDevices(t *testing.T) {
	var opened, closed int
	open := func(name string, ro bool) (dm.BlockDevice, io.Closer, error) {
		opened++
		return dmtest.NewMemDevice(name, MiB), dm.CloserFunc(func() error { closed++; return nil }), nil
	}
	d := dm.NewDevice(dm.DeviceConfig{Name: "v", Open: open})
	if err := d.Load("0 8 linear a 0\n8 8 linear b 0\n16 8 frob"); err == nil {
		t.Fatal("load succeeded")
	}
	if opened != 0 {
		t.Fatalf("unknown type must be found before constructing anything; opened %d", opened)
	}
	if err := d.Load("0 8 linear a 0\n8 8 linear b x"); err == nil {
		t.Fatal("load succeeded")
	}
	if opened != 1 || closed != 1 {
		t.Fatalf("opened %d closed %d, want 1 and 1", opened, closed)
	}
}

func TestImmutableTables(t *testing.T) {
	reg := dm.DefaultTargets()
	imm := dm.TargetType{Name: "imm", Immutable: true, New: func(*dm.TargetContext, []string) (dm.Target, error) { return dm.ZeroTarget{}, nil }}
	if err := reg.Register(imm); err != nil {
		t.Fatal(err)
	}
	d := dm.NewDevice(dm.DeviceConfig{Name: "i", Targets: reg})
	if err := d.Load("0 8 imm"); err != nil {
		t.Fatal(err)
	}
	mustResume(t, d)
	err := d.Load("0 8 zero")
	if !errors.Is(err, dm.ErrImmutable) || !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("replacing an immutable table: %v", err)
	}
	if err := d.Load("0 16 imm"); err != nil {
		t.Fatalf("same immutable type: %v", err)
	}
	// error tables are wildcards (force removal uses them).
	if err := d.Load("0 8 error"); err != nil {
		t.Fatalf("error table over immutable: %v", err)
	}
}

func TestTargetRegistry(t *testing.T) {
	r := dm.NewTargetRegistry()
	if _, ok := r.Lookup("linear"); ok {
		t.Fatal("a new registry is not empty")
	}
	if err := dm.RegisterBuiltins(r); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tt := range r.Types() {
		names = append(names, tt.Name)
	}
	if want := []string{"delay", "error", "flakey", "linear", "striped", "zero"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("builtins %v, want %v", names, want)
	}
	if err := dm.RegisterBuiltins(r); err == nil {
		t.Fatal("registering twice succeeded")
	}
	for _, bad := range []dm.TargetType{
		{Name: "", New: dm.NewLinear},
		{Name: "two words", New: dm.NewLinear},
		{Name: "nonew"},
	} {
		if err := r.Register(bad); err == nil {
			t.Errorf("Register(%q) succeeded", bad.Name)
		}
	}
	// Registries are independent.
	if _, ok := dm.DefaultTargets().Lookup("linear"); !ok {
		t.Fatal("DefaultTargets lacks linear")
	}
}
