package main

import (
	"context"
	"fmt"
)

// cmdExplain is a placeholder until the datastores issue (#4) lands.
func cmdExplain(_ context.Context, c *cli, _ []string) int {
	fmt.Fprintln(c.stderr, "batchd explain: not implemented yet")
	return exitUsage
}
