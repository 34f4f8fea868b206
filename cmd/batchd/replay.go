package main

import (
	"context"
	"fmt"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/orchestrator"
)

const replayUsage = `Usage: batchd replay RUN_ID... [--key KEY] [--json]

Runs the event of each given run again as a new run (source "replay"), for
example after the model behind the endpoint was fixed. The original runs keep
their outcome; each new run submits its own job and links back to the
original (replay_of). With --key, replaying the same run with the same key
again returns the same new run instead of submitting another job: scripts
can retry safely. (To retry a run in place, use batchd runs retry.)

Talks to a running daemon (BATCHD_URL or BATCHD_HTTP_ADDR, BATCHD_API_TOKEN).
`

// cmdReplay is `batchd replay`.
func cmdReplay(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "replay", replayUsage)
	cf := addClientFlags(fs)
	key := fs.String("key", "", "idempotency key of this replay (default: a new replay each time)")
	ids, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	if len(ids) == 0 {
		fmt.Fprint(c.stderr, "batchd replay: give at least one run id\n\n"+replayUsage)
		return exitUsage
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	var out []*orchestrator.ReplayResponse
	for _, id := range ids {
		resp, created, err := cl.Replay(ctx, id, orchestrator.ReplayRequest{Key: *key})
		if err != nil {
			return cmdutil.APIExit(c.stderr, "replay "+id, err)
		}
		out = append(out, resp)
		if !*cf.asJSON {
			what := "new run"
			if !created {
				what = "existing replay"
			}
			fmt.Fprintf(c.stdout, "%s -> %s (%s, %s)\n", id, resp.RunID, what, resp.State)
		}
	}
	if *cf.asJSON {
		cmdutil.PrintJSON(c.stdout, out)
	}
	return exitOK
}
