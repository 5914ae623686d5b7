package main

import (
	"context"

	"udm/daemon/api"
)

// runReconfigure is multipathd's reconfigure: the daemon re-reads its
// configuration file (udm serve --config) and reconciles its devices.
func runReconfigure(args []string) error {
	return verb("reconfigure", "reconfigure", args, 0, 0, nil, func(ctx context.Context, c api.CLI, _ []string) error {
		return c.Reconfigure(ctx)
	})
}
