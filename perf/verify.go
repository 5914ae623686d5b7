package perf

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Verified data layout: every 512-byte sector of a written block starts
// with a 32-byte header, followed by bytes from a PRNG seeded by the
// header; the header's CRC-32C covers the whole sector.
//
//	0  magic   "udmV"
//	4  crc32c  of the sector with this field zeroed
//	8  offset  of the sector on the target (bytes)
//	16 gen     write generation of its block
//	24 seed    run seed
const (
	sectorSize = 512
	hdrSize    = 32
	magic      = 0x566d6475 // "udmV" little-endian
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// verifier tracks, per block, the generation of the last acknowledged
// write. Blocks are partitioned by loop (block % loops == loop id), so each
// entry is touched by one loop only; the slice itself is shared.
type verifier struct {
	seed  uint64
	bs    int
	gens  []uint32 // acknowledged generation; 0 = never written this run
	next  []uint32 // generation of the write in flight (or last issued)
	state []uint8  // blockKnown, blockUnknown
	// verified counts bytes read back and checked.
	verified atomic.Int64

	mu    sync.Mutex // guards fails
	fails []string
}

const (
	blockKnown   = 0
	blockUnknown = 1 // a write failed: either old or new content is fine
)

func newVerifier(cfg Config, blocks int64) *verifier {
	return &verifier{
		seed:  cfg.Seed,
		bs:    cfg.BlockSize,
		gens:  make([]uint32, blocks),
		next:  make([]uint32, blocks),
		state: make([]uint8, blocks),
	}
}

// fill writes the pattern for io's block at its next generation.
func (v *verifier) fill(io *IO, loop int) {
	gen := max(v.gens[io.block], v.next[io.block]) + 1
	v.next[io.block] = gen
	b := io.Buf.B
	for s := 0; s+sectorSize <= len(b); s += sectorSize {
		sec := b[s : s+sectorSize]
		off := uint64(io.Off) + uint64(s)
		binary.LittleEndian.PutUint32(sec[0:], magic)
		binary.LittleEndian.PutUint32(sec[4:], 0)
		binary.LittleEndian.PutUint64(sec[8:], off)
		binary.LittleEndian.PutUint64(sec[16:], uint64(gen))
		binary.LittleEndian.PutUint64(sec[24:], v.seed)
		rng := rand.New(rand.NewPCG(off^v.seed, uint64(gen)))
		for i := hdrSize; i < sectorSize; i += 8 {
			binary.LittleEndian.PutUint64(sec[i:], rng.Uint64())
		}
		binary.LittleEndian.PutUint32(sec[4:], crc32.Checksum(sec, castagnoli))
	}
}

// settle records the outcome of io once it completed.
func (v *verifier) settle(io *IO, err error) {
	if io.Op != Write {
		return
	}
	if err == nil {
		v.gens[io.block] = v.next[io.block]
		v.state[io.block] = blockKnown
		return
	}
	// A failed write may or may not have reached the media.
	v.state[io.block] = blockUnknown
}

// check verifies a completed read of io's block.
func (v *verifier) check(io *IO, at time.Duration) {
	blk := io.block
	want := v.gens[blk]
	unknown := v.state[blk] == blockUnknown
	b := io.Buf.B
	for s := 0; s+sectorSize <= len(b); s += sectorSize {
		sec := b[s : s+sectorSize]
		off := uint64(io.Off) + uint64(s)
		if want == 0 && !unknown {
			// Never written in this run: anything goes.
			continue
		}
		if msg := v.checkSector(sec, off, want, unknown); msg != "" {
			v.fail(fmt.Sprintf("read at offset %d (sector %d) after %v: %s", io.Off, off/sectorSize, at.Round(time.Millisecond), msg))
			return
		}
	}
	v.verified.Add(int64(len(b)))
}

func (v *verifier) checkSector(sec []byte, off uint64, want uint32, unknown bool) string {
	m := binary.LittleEndian.Uint32(sec[0:])
	if m != magic {
		if unknown && allZero(sec) {
			return ""
		}
		return fmt.Sprintf("no verify header (first bytes % x), want generation %d", sec[:8], want)
	}
	sum := binary.LittleEndian.Uint32(sec[4:])
	binary.LittleEndian.PutUint32(sec[4:], 0)
	got := crc32.Checksum(sec, castagnoli)
	binary.LittleEndian.PutUint32(sec[4:], sum)
	if got != sum {
		return fmt.Sprintf("checksum mismatch (stored %08x, computed %08x): torn or corrupt data", sum, got)
	}
	if o := binary.LittleEndian.Uint64(sec[8:]); o != off {
		return fmt.Sprintf("block carries offset %d: misdirected write or read", o)
	}
	if s := binary.LittleEndian.Uint64(sec[24:]); s != v.seed {
		return fmt.Sprintf("block from another run (seed %d, want %d)", s, v.seed)
	}
	gen := uint32(binary.LittleEndian.Uint64(sec[16:]))
	if gen != want && !(unknown && gen >= want) {
		return fmt.Sprintf("stale data: generation %d, want %d", gen, want)
	}
	return ""
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (v *verifier) fail(msg string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.fails) < 100 {
		v.fails = append(v.fails, msg)
	}
}

func (v *verifier) failures() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]string(nil), v.fails...)
}
