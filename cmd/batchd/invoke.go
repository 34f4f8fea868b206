package main

import (
	"context"
	"fmt"
)

// cmdInvoke is a placeholder until the jobs issue (#3) lands.
func cmdInvoke(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd invoke: not implemented yet")
	return exitUsage
}
