package main

import (
	"context"
	"fmt"
)

// cmdToken is a placeholder until the jobs issue (#3) lands.
func cmdToken(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd token: not implemented yet")
	return exitUsage
}
