package stress

import (
	"strings"
	"testing"
)

// Multipath tables compare equal whatever queue_if_no_path and the
// initial group are; anything else that differs is a difference.
func TestNormTable(t *testing.T) {
	same := [][2]string{
		{"0 8192 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 /a 1 /b 1",
			"0 8192 multipath 0 0 1 1 round-robin 0 2 1 /a 1 /b 1 "},
		{"0 8192 multipath 0 0 2 1 round-robin 0 1 1 /a 1 service-time 0 2 2 /b 1 1 /c 1 1",
			"0  8192 multipath 1 queue_if_no_path 0 2 2 round-robin 0 1 1 /a 1 service-time 0 2 2 /b 1 1 /c 1 1"},
		{"0 4096 linear /a 0\n4096 4096 linear /b 4096", "0 4096 linear /a 0\n\n4096 4096 linear /b 4096\n"},
	}
	for _, c := range same {
		if normTable(c[0]) != normTable(c[1]) {
			t.Errorf("%q and %q differ: %q, %q", c[0], c[1], normTable(c[0]), normTable(c[1]))
		}
	}
	differ := [][2]string{
		{"0 8192 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 /a 1 /b 1",
			"0 8192 multipath 1 queue_if_no_path 0 1 1 round-robin 0 2 1 /a 1 /c 1"},
		{"0 8192 multipath 2 queue_if_no_path retain_attached_hw_handler 0 1 1 round-robin 0 1 1 /a 1",
			"0 8192 multipath 0 0 1 1 round-robin 0 1 1 /a 1"},
		{"0 8192 linear /a 0", "0 8192 linear /a 8192"},
	}
	for _, c := range differ {
		if normTable(c[0]) == normTable(c[1]) {
			t.Errorf("%q and %q compare equal", c[0], c[1])
		}
	}
}

// A block reads back right as the acknowledged write, a write in doubt,
// or (never written) zeroes, sector by sector; anything else is named.
func TestBookCheck(t *testing.T) {
	b := newBook(3)
	blk := make([]byte, blockSize)
	if msg := b.check(7, blk); msg != "" {
		t.Fatalf("zeroes, never written: %s", msg)
	}
	s1, s2, s3 := b.next(), b.next(), b.next()
	b.acked(7, s1)
	b.inDoubt(7, s2, true)
	for _, seq := range []uint32{s1, s2} {
		fillBlock(blk, 3, 7, seq)
		if msg := b.check(7, blk); msg != "" {
			t.Errorf("write %d: %s", seq, msg)
		}
	}
	// Torn: the first sector from s2, the rest from s1.
	fillBlock(blk, 3, 7, s1)
	fillSector(blk[:sectorSize], 3, 7, 0, s2)
	if msg := b.check(7, blk); msg != "" {
		t.Errorf("torn between acked and in doubt: %s", msg)
	}
	bad := map[string][]byte{}
	p := make([]byte, blockSize)
	fillBlock(p, 3, 7, s3)
	bad["a write never made"] = p
	p = make([]byte, blockSize)
	fillBlock(p, 4, 7, s1)
	bad["another slot's"] = p
	p = make([]byte, blockSize)
	fillBlock(p, 3, 8, s1)
	bad["another block's"] = p
	p = make([]byte, blockSize)
	fillBlock(p, 3, 7, s1)
	p[blockSize-1] ^= 1
	bad["a flipped bit"] = p
	p = make([]byte, blockSize)
	fillBlock(p, 3, 7, s1)
	copy(p[sectorSize:], make([]byte, sectorSize))
	bad["a zeroed sector after a write"] = p
	for what, p := range bad {
		if msg := b.check(7, p); msg == "" {
			t.Errorf("%s passed", what)
		}
	}
	// The kill's doubt goes with the next acknowledged write; a closed
	// client's stays (its write may still land).
	b.acked(7, s3)
	fillBlock(blk, 3, 7, s2)
	if msg := b.check(7, blk); !strings.Contains(msg, "holds write") {
		t.Errorf("a write the kill cut off, after a newer one was acknowledged: %q", msg)
	}
	s4 := b.next()
	b.inDoubt(7, s4, false)
	b.acked(7, b.next())
	fillBlock(blk, 3, 7, s4)
	if msg := b.check(7, blk); msg != "" {
		t.Errorf("a closed client's write in doubt: %s", msg)
	}
}
