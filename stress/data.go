package stress

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"udm/nbd/client"
)

// The data a slot's NBD clients write: every 512-byte sector of a block
// carries a header (magic, slot, block, sector, sequence number) and a
// filler derived from them, so that a sector read back names the write
// it came from.

var magic = [8]byte{'u', 'd', 'm', 's', 't', 'r', 's', '1'}

const sectorSize = 512

func fillSector(p []byte, slot, block, sector int, seq uint32) {
	copy(p, magic[:])
	binary.LittleEndian.PutUint32(p[8:], uint32(slot))
	binary.LittleEndian.PutUint32(p[12:], uint32(block))
	binary.LittleEndian.PutUint32(p[16:], uint32(sector))
	binary.LittleEndian.PutUint32(p[20:], seq)
	x := seq*2654435761 + uint32(block)*40503 + uint32(sector)
	for i := 24; i < sectorSize; i++ {
		x = x*1664525 + 1013904223
		p[i] = byte(x >> 24)
	}
}

func fillBlock(p []byte, slot, block int, seq uint32) {
	for s := 0; s < blockSize/sectorSize; s++ {
		fillSector(p[s*sectorSize:(s+1)*sectorSize], slot, block, s, seq)
	}
}

var zeroSector [sectorSize]byte

// sectorSeq says which write a sector holds: 0 for zeroes, else the
// sequence number of a well-formed sector of this slot, block and
// sector; ok is false for anything else.
func sectorSeq(p []byte, slot, block, sector int) (uint32, bool) {
	if bytes.Equal(p, zeroSector[:]) {
		return 0, true
	}
	if !bytes.Equal(p[:8], magic[:]) || binary.LittleEndian.Uint32(p[8:]) != uint32(slot) ||
		binary.LittleEndian.Uint32(p[12:]) != uint32(block) || binary.LittleEndian.Uint32(p[16:]) != uint32(sector) {
		return 0, false
	}
	seq := binary.LittleEndian.Uint32(p[20:])
	var want [sectorSize]byte
	fillSector(want[:], slot, block, sector, seq)
	return seq, bytes.Equal(p, want[:])
}

// book is what a slot's data should be: per block, the last write
// acknowledged and the writes since whose outcome is unknown.
type book struct {
	slot int
	mu   sync.Mutex // guards the following
	seq  uint32
	blk  [devBlocks]blockState
}

type blockState struct {
	acked uint32
	// doubt are writes since acked whose reply did not arrive. Those a
	// kill cut off are dropped at the next acknowledged write (the dead
	// daemon can't do them later); others (a client closed while its
	// write was held) may still land, and stay.
	doubt []doubtWrite
}

type doubtWrite struct {
	seq    uint32
	killed bool
}

func newBook(slot int) *book { return &book{slot: slot} }

func (b *book) next() uint32 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.seq++
	return b.seq
}

func (b *book) acked(block int, seq uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := &b.blk[block]
	st.acked = seq
	kept := st.doubt[:0]
	for _, d := range st.doubt {
		if !d.killed && d.seq != seq {
			kept = append(kept, d)
		}
	}
	st.doubt = kept
}

func (b *book) inDoubt(block int, seq uint32, killed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := &b.blk[block]
	if len(st.doubt) >= 64 {
		st.doubt = st.doubt[1:] // keep it bounded; 64 unknown writes to one block don't happen
	}
	st.doubt = append(st.doubt, doubtWrite{seq: seq, killed: killed})
}

// check verifies one block's contents; it returns a description of what
// is wrong, or "".
func (b *book) check(block int, p []byte) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.blk[block]
	for s := 0; s < blockSize/sectorSize; s++ {
		seq, ok := sectorSeq(p[s*sectorSize:(s+1)*sectorSize], b.slot, block, s)
		if !ok {
			return fmt.Sprintf("block %d sector %d is not a sector this slot wrote there (acked seq %d)", block, s, st.acked)
		}
		if seq == st.acked {
			continue
		}
		found := false
		for _, d := range st.doubt {
			found = found || d.seq == seq
		}
		if !found {
			var ds []uint32
			for _, d := range st.doubt {
				ds = append(ds, d.seq)
			}
			return fmt.Sprintf("block %d sector %d holds write %d; want the acknowledged %d or one in doubt %v",
				block, s, seq, st.acked, ds)
		}
	}
	return ""
}

// checkFile verifies the whole data region of the slot's backing file
// (read directly, with the daemon's clients stopped) and returns the
// blocks verified and the problems found.
func (b *book) checkFile(path string) (int, []string) {
	f, err := os.Open(path)
	if err != nil {
		return 0, []string{err.Error()}
	}
	defer f.Close()
	buf := make([]byte, devBytes)
	if _, err := f.ReadAt(buf, 0); err != nil {
		return 0, []string{err.Error()}
	}
	var bad []string
	for blk := 0; blk < devBlocks; blk++ {
		if msg := b.check(blk, buf[blk*blockSize:(blk+1)*blockSize]); msg != "" {
			bad = append(bad, msg)
		}
	}
	return devBlocks, bad
}

// ioSet is the NBD clients attached to one slot, each writing and
// reading its share of the blocks (block % n == its index).
type ioSet struct {
	r      *run
	s      *slot
	epoch  int64
	wg     sync.WaitGroup
	closed atomic.Bool // set by close: the loops stop
	// tolerant is set before operations after which errors are
	// expected (a forced remove, multipath with every path gone).
	tolerant atomic.Bool
	mu       sync.Mutex // guards clients
	clients  []*client.Client
	dialed   atomic.Int32
}

// attach dials n clients to the slot's export and starts their loops.
func (r *run) attach(ctx context.Context, s *slot, n int, rng *rand.Rand) (*ioSet, error) {
	set := &ioSet{r: r, s: s, epoch: r.epoch.Load()}
	set.tolerant.Store(r.noPath(s, s.dev))
	for i := 0; i < n; i++ {
		uri := r.p.nbdURI(s.name, rng.IntN(2) == 0)
		dctx, cancel := context.WithTimeout(ctx, r.cfg.CallBound)
		c, err := client.Dial(dctx, uri, client.Options{ReconnectTimeout: -1, Retries: -1, DialTimeout: r.cfg.CallBound})
		cancel()
		if err != nil {
			set.close()
			return nil, fmt.Errorf("dial %s: %w", uri, err)
		}
		set.mu.Lock()
		set.clients = append(set.clients, c)
		set.mu.Unlock()
		set.wg.Add(1)
		go set.loop(c, i, n, rng.Uint64())
	}
	return set, nil
}

// close stops the loops and closes the clients (idempotent).
func (set *ioSet) close() {
	if set.closed.Swap(true) {
		set.wg.Wait()
		return
	}
	set.mu.Lock()
	for _, c := range set.clients {
		c.Close()
	}
	set.mu.Unlock()
	set.wg.Wait()
}

func (set *ioSet) loop(c *client.Client, idx, n int, seed uint64) {
	defer set.wg.Done()
	r, s := set.r, set.s
	rng := rand.New(rand.NewPCG(seed, uint64(s.id)))
	buf := make([]byte, blockSize)
	for !set.closed.Load() && r.ctx.Err() == nil {
		blk := rng.IntN(devBlocks/n)*n + idx
		write := rng.IntN(100) < 55
		var seq uint32
		if write {
			seq = s.book.next()
			fillBlock(buf, s.id, blk, seq)
		}
		ctx, cancel := context.WithTimeout(r.ctx, r.cfg.IOBound)
		t0 := time.Now()
		var err error
		if write {
			err = c.WriteAt(ctx, buf, int64(blk)*blockSize, false)
		} else {
			err = c.ReadAt(ctx, buf, int64(blk)*blockSize)
		}
		timedOut := ctx.Err() != nil && r.ctx.Err() == nil
		cancel()
		op := "read"
		if write {
			op = "write"
		}
		if err == nil {
			if write {
				s.book.acked(blk, seq)
				r.stats.writes.Add(1)
			} else {
				r.stats.reads.Add(1)
				if msg := s.book.check(blk, buf); msg != "" {
					r.violation("data", fmt.Sprintf("%s: NBD read: %s", s.name, msg))
				} else {
					r.stats.verified.Add(1)
				}
			}
			continue
		}
		// The request failed: what it did is unknown.
		killed := r.epoch.Load() != set.epoch || r.dying.Load()
		if write {
			s.book.inDoubt(blk, seq, killed)
		}
		switch {
		case killed, set.closed.Load(), r.ctx.Err() != nil:
			r.stats.ioDoubt.Add(1)
			return
		case timedOut:
			r.hang(fmt.Sprintf("%s: NBD %s of block %d did not answer in %v (%v)", s.name, op, blk, time.Since(t0).Round(time.Millisecond), err))
			return
		case set.tolerant.Load():
			r.stats.ioErrors.Add(1)
			if errors.Is(err, context.Canceled) || !c.Connected() {
				return
			}
			time.Sleep(5 * time.Millisecond) // a map with no path fails at once: don't spin
		default:
			r.violation("io", fmt.Sprintf("%s: NBD %s of block %d failed with the daemon up: %v", s.name, op, blk, err))
			return
		}
	}
}
