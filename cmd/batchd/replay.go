package main

import (
	"context"
	"fmt"
)

// cmdReplay is a placeholder until the triggers issue (#6) lands.
func cmdReplay(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd replay: not implemented yet")
	return exitUsage
}
