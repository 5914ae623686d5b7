package dm

import (
	"slices"
	"testing"
)

// TestWriteOrder: plain writes run alongside each other, overlapping or
// not; a read-modify-write runs alongside no write it overlaps; a write
// that waits keeps its place behind the waiting writes it overlaps, and
// End hands the waiting back in order once they may go.
func TestWriteOrder(t *testing.T) {
	var o WriteOrder[string]
	o.Reserve(2) // grows past it
	w := func(name string, lo, hi uint64, rmw bool) *OrderedWrite[string] {
		return &OrderedWrite[string]{Lo: lo, Hi: hi, RMW: rmw, Owner: name}
	}
	names := func(ws []*OrderedWrite[string]) (n []string) {
		for _, w := range ws {
			n = append(n, w.Owner)
		}
		return n
	}
	a, b := w("a", 0, 4096, false), w("b", 0, 4096, false)
	if !o.Admit(a) || !o.Admit(b) {
		t.Fatal("two plain writes over the same sectors must run alongside")
	}
	r := w("r", 512, 1024, true)
	if o.Admit(r) {
		t.Fatal("a read-modify-write ran alongside writes it overlaps")
	}
	c := w("c", 8192, 12288, false)
	if !o.Admit(c) {
		t.Fatal("a write that overlaps nothing waited")
	}
	d := w("d", 1024, 2048, false) // overlaps a and b (at the device: fine), not r
	if !o.Admit(d) {
		t.Fatal("a plain write that overlaps only plain writes and no waiting one waited")
	}
	e := w("e", 768, 1536, false) // overlaps the waiting r: goes after it
	if o.Admit(e) {
		t.Fatal("a write overlapping a waiting one overtook it")
	}
	if o.Waiting() != 2 {
		t.Fatalf("waiting %d, want 2", o.Waiting())
	}
	if got := o.End(a, nil); len(got) != 0 {
		t.Fatalf("r went with b still at the device: %v", names(got))
	}
	if got := o.End(b, nil); !slices.Equal(names(got), []string{"r"}) {
		t.Fatalf("after the last overlapping write: %v, want [r] (e still behind r)", names(got))
	}
	if got := o.End(d, nil); len(got) != 0 {
		t.Fatalf("e went with r still at the device: %v", names(got))
	}
	if got := o.End(r, nil); !slices.Equal(names(got), []string{"e"}) {
		t.Fatalf("after r: %v, want [e]", names(got))
	}
	for _, x := range []*OrderedWrite[string]{c, e} {
		if got := o.End(x, nil); len(got) != 0 {
			t.Fatalf("nothing waits, yet End gave %v", names(got))
		}
	}
	if len(o.active) != 0 || o.rmws != 0 || o.Waiting() != 0 {
		t.Fatalf("not empty at the end: %d active, %d rmws, %d waiting", len(o.active), o.rmws, o.Waiting())
	}
}
