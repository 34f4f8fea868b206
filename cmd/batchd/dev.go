package main

import (
	"context"
	"fmt"
)

// cmdDev is a placeholder until the dev issue (#7) lands.
func cmdDev(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd dev: not implemented yet")
	return exitUsage
}
