package main

import (
	"context"
	"fmt"
)

// cmdRuns is a placeholder until the orchestrator issue (#5) lands.
func cmdRuns(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd runs: not implemented yet")
	return exitUsage
}
