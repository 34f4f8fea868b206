package main

import (
	"context"
	"fmt"
)

// cmdPipelines is a placeholder until the orchestrator issue (#5) lands.
func cmdPipelines(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd pipelines: not implemented yet")
	return exitUsage
}
