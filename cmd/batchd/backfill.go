package main

import (
	"context"
	"fmt"
)

// cmdBackfill is a placeholder until the triggers issue (#6) lands.
func cmdBackfill(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd backfill: not implemented yet")
	return exitUsage
}
