package main

import (
	"context"
	"fmt"
)

// cmdCheck is a placeholder until the orchestrator issue (#5) lands.
func cmdCheck(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd check: not implemented yet")
	return exitUsage
}
