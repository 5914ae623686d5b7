package client

import (
	"testing"
	"udm/internal/refserver"
)

// BenchmarkClientReadWrite4K measures a synchronous 4 KiB write and read
// against nbdkit's memory plugin over a unix socket.
func BenchmarkClientReadWrite4K(b *testing.B) {
	srv := refserver.Nbdkit(b, true, "memory", "64M")
	c := ctDial(b, srv.URI, Options{})
	ctx := ctCtx(b)
	buf := make([]byte, 4096)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		off := int64(i%4096) * 4096
		if err := c.WriteAt(ctx, buf, off, false); err != nil {
			b.Fatal(err)
		}
		if err := c.ReadAt(ctx, buf, off); err != nil {
			b.Fatal(err)
		}
	}
}
