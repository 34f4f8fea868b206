package main

import (
	"context"
	"fmt"
)

// cmdServe is a placeholder until the orchestrator issue (#5) lands.
func cmdServe(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd serve: not implemented yet")
	return exitUsage
}
