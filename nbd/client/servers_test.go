package client

// Real NBD servers (nbdkit, qemu-nbd) for the client's interop tests.

import (
	"context"
	"testing"
	"time"

	"udm/internal/testutil"
)

// ctDial dials uri with test-friendly reconnection settings on top of
// opts.
func ctDial(t testing.TB, uri string, opts Options) *Client {
	t.Helper()
	if opts.MaxBackoff == 0 {
		opts.MaxBackoff = 100 * time.Millisecond
	}
	if opts.MinBackoff == 0 {
		opts.MinBackoff = 5 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	defer cancel()
	c, err := Dial(ctx, uri, opts)
	if err != nil {
		t.Fatalf("Dial %s: %v", uri, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ctCtx is a context bounded by testutil.Patience.
func ctCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testutil.Patience)
	t.Cleanup(cancel)
	return ctx
}
