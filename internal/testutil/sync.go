package testutil

import (
	"bytes"
	"os"
	"sync"
	"testing"
)

// SyncBuffer is a bytes.Buffer safe for writer goroutines (a subprocess's
// output, a logger) and readers at once. The zero value is ready.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns what has been written so far.
func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Closed reports, without waiting, whether done (a channel that is only
// ever closed, never sent on) has been closed.
func Closed(done <-chan struct{}) bool {
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// SockDir returns a short new directory below the system's temp dir,
// removed when the test ends: Unix socket paths are limited to 108 bytes,
// and a test's own temp dir can be longer.
func SockDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "udm-s")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}
