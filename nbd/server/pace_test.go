package server

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"udm/internal/testutil"
	"udm/nbd/wire"
)

// simulate feeds p the receives of a client model for dur of simulated
// time. model says how many requests the next receive brings and how
// long it took, given whether it waited for the gather window. It
// returns the receives that gathered, all receives, and the share of
// the time spent gathering.
func simulate(p *pacer, dur time.Duration, model func(i int, gather bool) (int, time.Duration)) (gathered, total int, share float64) {
	now := int64(time.Second) // the loop clock never starts at 0
	end := now + int64(dur)
	gather := false
	var inGather int64
	for i := 0; now < end; i++ {
		n, dt := model(i, gather)
		now += int64(dt)
		if gather {
			gathered++
			inGather += int64(dt)
		}
		total++
		p.received(now, n, gather)
		gather = p.gathering()
	}
	return gathered, total, float64(inGather) / float64(dur)
}

// client is a model for simulate: a gathered receive brings gn requests
// after gd, a prompt one pn after pd.
func client(gn int, gd time.Duration, pn int, pd time.Duration) func(int, bool) (int, time.Duration) {
	return func(_ int, gather bool) (int, time.Duration) {
		if gather {
			return gn, gd
		}
		return pn, pd
	}
}

// A client at depth 1 waits for each reply: a gathered receive brings one
// request after the window. Trials stop after three such receives and
// back off to paceMaxBackoff, so hardly a request waits.
func TestPacerDepthOne(t *testing.T) {
	var p pacer
	gathered, total, _ := simulate(&p, 10*time.Second, client(1, 70*time.Microsecond, 1, 22*time.Microsecond))
	// Trials at 50ms, then 100, 200, ... 2s between: about 9 in 10s.
	if gathered == 0 || gathered > 3*12 {
		t.Fatalf("%d of %d receives gathered, want a few trials of %d", gathered, total, paceSingles)
	}
	if p.backoff != paceMaxBackoff || p.mode != pacePrompt {
		t.Fatalf("mode %v, back-off %v: want prompt at the longest back-off", p.mode, time.Duration(p.backoff))
	}
}

// A pipelining client whose requests gather six to a window goes faster
// gathered (100k/s) than prompt (83k/s): the pacer stays gathering but
// for one prompt epoch and one trial every paceGatherEpochs.
func TestPacerPipelined(t *testing.T) {
	var p pacer
	gathered, total, share := simulate(&p, 5*time.Second, client(6, 60*time.Microsecond, 1, 12*time.Microsecond))
	if share < 0.85 {
		t.Fatalf("gathered %.0f%% of the time (%d of %d receives), want most", 100*share, gathered, total)
	}
}

// Gathering that costs the client throughput (three requests a window:
// 50k/s against 83k/s prompt) is tried less and less often.
func TestPacerGatherSlower(t *testing.T) {
	var p pacer
	_, _, share := simulate(&p, 10*time.Second, client(3, 60*time.Microsecond, 1, 12*time.Microsecond))
	if share > 0.03 {
		t.Fatalf("gathered %.1f%% of the time, want trials only", 100*share)
	}
	if p.backoff != paceMaxBackoff {
		t.Fatalf("back-off %v after failed trials, want %v", time.Duration(p.backoff), time.Duration(paceMaxBackoff))
	}
}

// A connection with fewer than paceMinReqs requests an epoch is never
// made to wait.
func TestPacerSlowClient(t *testing.T) {
	var p pacer
	gathered, _, _ := simulate(&p, 5*time.Second, func(int, bool) (int, time.Duration) {
		return 1, 200 * time.Microsecond // 5k requests/s
	})
	if gathered != 0 {
		t.Fatalf("%d receives gathered for a client at 5k requests/s, want none", gathered)
	}
}

// One gathered receive that brings a single request now and then (the
// client was busy) doesn't end gathering; paceSingles in a row do.
func TestPacerSingles(t *testing.T) {
	var p pacer
	_, _, share := simulate(&p, 5*time.Second, func(i int, gather bool) (int, time.Duration) {
		if gather {
			if i%50 == 0 {
				return 1, 60 * time.Microsecond
			}
			return 6, 60 * time.Microsecond
		}
		return 1, 12 * time.Microsecond
	})
	if share < 0.8 {
		t.Fatalf("gathered %.0f%% of the time with a single request now and then, want most", 100*share)
	}

	p = pacer{}
	simulate(&p, time.Second, client(6, 60*time.Microsecond, 1, 12*time.Microsecond))
	if p.mode == pacePrompt {
		t.Fatal("not gathering after a second of a pipelining client")
	}
	now := int64(2 * time.Second)
	for i := 0; i < paceSingles-1; i++ {
		now += int64(60 * time.Microsecond)
		if p.received(now, 1, true); !p.gathering() {
			t.Fatalf("stopped gathering after %d single requests, want %d", i+1, paceSingles)
		}
	}
	if p.received(now+int64(60*time.Microsecond), 1, true); p.gathering() {
		t.Fatalf("still gathering after %d single requests in a row", paceSingles)
	}
}

// Receives that didn't wait for the window (the rest of a write's
// payload came in first, then the next header at once) don't count as
// gathered receives with one request.
func TestPacerPromptReceivesDontCount(t *testing.T) {
	var p pacer
	simulate(&p, time.Second, client(6, 60*time.Microsecond, 1, 12*time.Microsecond))
	if !p.gathering() {
		t.Fatal("not gathering after a second of a pipelining client")
	}
	now := int64(2 * time.Second)
	for i := 0; i < 10*paceSingles; i++ {
		now += int64(20 * time.Microsecond)
		p.received(now, 1, false)
		now += int64(60 * time.Microsecond)
		p.received(now, 5, true)
	}
	if !p.gathering() {
		t.Fatal("stopped gathering over prompt receives of one request")
	}
}

// patternClient starts a server with cfg exporting "disk", size bytes
// filled by fillPattern, and connects a raw client to it over addr(ts).
func patternClient(t *testing.T, cfg Config, size int64, unix, structured bool) (*testServer, *rawClient) {
	t.Helper()
	ts := newTestServer(t, 1, cfg)
	fillPattern(t, ts.memDisk("disk", size), 0)
	addr := ts.tcp
	if unix {
		addr = ts.unix
	}
	rc := dialRaw(t, addr)
	rc.goExport("disk", structured)
	return ts, rc
}

// pipeline plays a client like fio's nbd engine: depth requests in flight,
// a new one sent as each reply is read, total in all; every read is
// checked against fillPattern's content.
func pipeline(t *testing.T, rc *rawClient, size uint64, depth, total int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	offs := map[uint64]uint64{}
	sent := 0
	next := func() []byte {
		off := rng.Uint64N(size/4096) * 4096
		offs[uint64(sent)] = off
		var b [wire.RequestSize]byte
		wire.Request{Type: wire.CmdRead, Cookie: uint64(sent), Offset: off, Length: 4096}.Encode(b[:])
		sent++
		return b[:]
	}
	var burst []byte
	for sent < depth {
		burst = append(burst, next()...)
	}
	rc.write(burst)
	for done := 0; done < total; done++ {
		cookie, werr, data := rc.reply()
		off, ok := offs[cookie]
		if !ok || werr != 0 {
			t.Fatalf("reply for cookie %d (known %v): error %d", cookie, ok, werr)
		}
		delete(offs, cookie)
		if !bytes.Equal(data, pattern(off, 4096)) {
			t.Fatalf("read at %d: wrong data", off)
		}
		if sent < total {
			rc.write(next())
		}
	}
}

// Gathering over a real socket: a client with 32 requests in flight has
// them taken several to a receive after the window, and every reply is
// right. (A long window: the race detector slows the client down.)
func TestGatherPipelinedClient(t *testing.T) {
	for _, unix := range []bool{false, true} {
		t.Run(fmt.Sprintf("unix=%v", unix), func(t *testing.T) {
			ts, rc := patternClient(t, Config{forceGather: true, GatherWindow: 2 * time.Millisecond}, 8<<20, unix, true)
			pipeline(t, rc, 8<<20, 32, 4000)
			st := ts.srv.Stats()
			reqs, recvs, gathered := st.Requests.Load(), st.Receives.Load(), st.Gathered.Load()
			if gathered == 0 || float64(reqs)/float64(recvs) < 2 {
				t.Fatalf("%d requests in %d receives (%d gathered): want several a receive", reqs, recvs, gathered)
			}
		})
	}
}

// A client that hangs up while its connection gathers is let go.
func TestGatherHangUp(t *testing.T) {
	ts, rc := patternClient(t, Config{forceGather: true}, 1<<20, false, true)
	pipeline(t, rc, 1<<20, 8, 100)
	rc.c.Close()
	testutil.Eventually(t, "the connection to end after its client hung up", func() bool { return ts.srv.Stats().Active.Load() == 0 })
}

// Shutdown cancels a gather window: the server doesn't wait for it.
func TestShutdownCancelsGather(t *testing.T) {
	ts, rc := patternClient(t, Config{forceGather: true, GatherWindow: time.Hour}, 1<<20, false, false)
	// The first receive is prompt; the hour's window starts after it.
	rc.send(wire.CmdRead, 0, 1, 0, 4096, nil)
	if _, werr, _ := rc.reply(); werr != 0 {
		t.Fatalf("error %d", werr)
	}
	rc.readData(4096)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with a connection in its gather window: %v", err)
	}
	if !rc.closed() {
		t.Fatal("connection still open after shutdown")
	}
}

// With the pacer deciding (the default), a pipelining client is found
// out: its receives come to be gathered.
func TestPacingFindsPipelinedClient(t *testing.T) {
	ts, rc := patternClient(t, Config{}, 8<<20, true, true)
	deadline := time.Now().Add(20 * time.Second)
	for ts.srv.Stats().Gathered.Load() == 0 {
		if time.Now().After(deadline) {
			st := ts.srv.Stats()
			t.Fatalf("no receive gathered in 20s of a client with 64 requests in flight (%d requests, %d receives)",
				st.Requests.Load(), st.Receives.Load())
		}
		pipeline(t, rc, 8<<20, 64, 20000)
	}
}

// A client at depth 1 is hardly ever made to wait: at most paceSingles
// receives per trial, and trials back off.
func TestPacingLeavesDepthOneAlone(t *testing.T) {
	ts, rc := patternClient(t, Config{}, 8<<20, true, true)
	start := time.Now()
	pipeline(t, rc, 8<<20, 1, 20000)
	el := time.Since(start)
	st := ts.srv.Stats()
	// Back-offs of 50ms, 100ms, ...: fewer trials than 50ms periods.
	if most := int64(paceSingles * (1 + el/(50*time.Millisecond))); st.Gathered.Load() > most {
		t.Fatalf("%d of %d receives gathered in %v at depth 1, want at most %d", st.Gathered.Load(), st.Receives.Load(), el, most)
	}
}
