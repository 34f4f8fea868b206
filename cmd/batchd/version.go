package main

import (
	"context"
	"fmt"
)

// cmdVersion is a placeholder until the dev issue (#7) lands.
func cmdVersion(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd version: not implemented yet")
	return exitUsage
}
