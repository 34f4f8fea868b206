package main

import (
	"context"
	"fmt"
)

// cmdScore is a placeholder until the online endpoints issue (#10) lands.
func cmdScore(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd score: not implemented yet")
	return exitUsage
}
