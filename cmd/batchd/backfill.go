package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/orchestrator"
)

const backfillUsage = `Usage: batchd backfill PIPELINE --from TIME --to TIME [--limit N] [--dry-run] [--json]

Runs a pipeline's past in (--from, --to]:
  cron  every schedule slot becomes the same run the schedule would have
        made (same key, same template data). Use it after an outage longer
        than catch_up_window, or to run a new pipeline over past days.
  blob  every blob last modified in the range that the pipeline's filters
        accept becomes the run its Event Grid event or the poller would have
        made (same key: URL and eTag). Use it for blobs the poller left as
        history (older than its first sweep), or whose events never came.
        Not for folder-batch pipelines.
A slot or blob that already ran is reported and not submitted again. Times
are RFC 3339 (2026-11-01T00:00:00Z) or dates (2026-11-01, midnight UTC).
--dry-run lists what would run without submitting.

Talks to a running daemon (BATCHD_URL or BATCHD_HTTP_ADDR, BATCHD_API_TOKEN).
`

// cmdBackfill is `batchd backfill`.
func cmdBackfill(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "backfill", backfillUsage)
	cf := addClientFlags(fs)
	from := fs.String("from", "", "start of the range, exclusive (RFC 3339 or YYYY-MM-DD)")
	to := fs.String("to", "", "end of the range, inclusive (RFC 3339 or YYYY-MM-DD)")
	limit := fs.Int("limit", 100, "at most this many slots (1-1000)")
	dry := fs.Bool("dry-run", false, "list the slots and their runs; submit nothing")
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	if len(pos) != 1 {
		fmt.Fprint(c.stderr, "batchd backfill: give exactly one pipeline\n\n"+backfillUsage)
		return exitUsage
	}
	req := orchestrator.BackfillRequest{Limit: *limit, DryRun: *dry}
	for _, t := range []struct {
		name, val string
		out       *time.Time
	}{{"--from", *from, &req.From}, {"--to", *to, &req.To}} {
		if t.val == "" {
			fmt.Fprintf(c.stderr, "batchd backfill: %s is required\n", t.name)
			return exitUsage
		}
		v, err := parseTimeArg(t.val)
		if err != nil {
			fmt.Fprintf(c.stderr, "batchd backfill: %s %q: want RFC 3339 (2026-11-01T06:00:00Z) or a date (2026-11-01)\n", t.name, t.val)
			return exitUsage
		}
		*t.out = v
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	resp, err := cl.Backfill(ctx, pos[0], req)
	if err != nil {
		return cmdutil.APIExit(c.stderr, "backfill", err)
	}
	if *cf.asJSON {
		cmdutil.PrintJSON(c.stdout, resp)
		return exitOK
	}
	blobs := len(resp.Slots) > 0 && resp.Slots[0].Blob != ""
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	if blobs {
		fmt.Fprintln(tw, "MODIFIED\tRUN\tRESULT\tBLOB")
	} else {
		fmt.Fprintln(tw, "SLOT\tRUN\tRESULT")
	}
	var added, existing int
	for _, s := range resp.Slots {
		result := "submitted"
		switch {
		case s.Duplicate:
			result = "already " + string(s.State)
			existing++
		case resp.DryRun:
			result = "would submit"
			added++
		default:
			added++
		}
		if blobs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Time.UTC().Format(time.RFC3339), s.RunID, result, s.Blob)
		} else {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", s.Time.UTC().Format(time.RFC3339), s.RunID, result)
		}
	}
	_ = tw.Flush()
	verb := "submitted"
	if resp.DryRun {
		verb = "would submit"
	}
	what := "slot(s)"
	if blobs {
		what = "blob(s)"
	}
	fmt.Fprintf(c.stdout, "\n%d %s: %s %d, %d already had a run.\n", len(resp.Slots), what, verb, added, existing)
	if resp.More {
		fmt.Fprintf(c.stdout, "The range has more than --limit %d: run again with --from one second before the last time shown (what already ran is not submitted twice).\n", *limit)
	}
	return exitOK
}

// parseTimeArg reads RFC 3339 or a date (midnight UTC).
func parseTimeArg(s string) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	return time.Parse(time.DateOnly, s)
}
