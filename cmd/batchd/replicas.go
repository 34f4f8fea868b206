package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
)

// cmdReplicas is `batchd replicas`.
func cmdReplicas(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "replicas", `Usage: batchd replicas [--json]

Lists the live batchd replicas sharing this daemon's NATS, from the replica
registry: id, host, version, pipelines file (config hash), start and last
heartbeat. Talks to a running daemon (BATCHD_URL, or BATCHD_HTTP_ADDR;
BATCHD_API_TOKEN).

Exit codes: 0 the replicas agree on the pipelines file; 1 they do not
(config drift); 2 usage; 3 the API token was refused; 5 the daemon could not
be reached.
`)

	cf := addClientFlags(fs)
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(c.stderr, "batchd replicas: unexpected argument %q\n", pos[0])
		return exitUsage
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	list, err := cl.Replicas(ctx)
	if err != nil {
		return cmdutil.APIExit(c.stderr, "replicas", err)
	}
	drift := exitOK
	if list.ConfigDrift {
		drift = exitFailed
	}
	if *cf.asJSON {
		cmdutil.PrintJSON(c.stdout, list)
		return drift
	}
	now := time.Now()
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tHOST\tVERSION\tCONFIG\tSTARTED\tHEARTBEAT")
	for _, r := range list.Replicas {
		id := r.ID
		if r.Self {
			id += " (this)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s ago\n", id, r.Host, r.Version, cmdutil.Dash(r.ConfigHash),
			r.Started.Local().Format(time.DateTime), now.Sub(r.Heartbeat).Round(time.Second))
	}
	_ = tw.Flush()
	if list.ConfigDrift {
		fmt.Fprintf(c.stderr, "warning: %s\n", list.Drift)
	}
	return drift
}

// hostname names this machine in the replica registry.
func hostname() string {
	h, err := os.Hostname()
	if err != nil {
		return ""
	}
	return h
}
