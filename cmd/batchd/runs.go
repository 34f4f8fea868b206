package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/apiclient"
)

const runsUsage = `Usage: batchd runs <command> [flags]

Talks to a running daemon (BATCHD_URL, or BATCHD_HTTP_ADDR; BATCHD_API_TOKEN).

Commands:
  list    [--pipeline P] [--state S] [--limit N] [--cursor C]   newest first
  show    ID                                 the run, its decision and history
  cancel  ID [--reason R]                    cancel the run (its job, through ARM)
  retry   ID [--reason R]                    a new attempt of a finished or unknown run
  resolve ID --state S [--job NAME] [--reason R]
                                             settle a run (typically unknown): end it
                                             completed|failed|canceled, or adopt a job

Every command takes --json (the API's answer) and --url (the daemon's URL).
Exit codes: 0 ok; 2 usage; 3 the API token was refused; 4 the daemon refused
the request (no such run, not allowed in its state); 5 the daemon could not
be reached.
`

// cmdRuns is `batchd runs`.
func cmdRuns(ctx context.Context, c *cli, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(c.stderr, runsUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	switch args[0] {
	case "list":
		return runsList(ctx, c, args[1:])
	case "show":
		return runsShow(ctx, c, args[1:])
	case "cancel", "retry":
		return runsAction(ctx, c, args[0], args[1:])
	case "resolve":
		return runsResolve(ctx, c, args[1:])
	}
	fmt.Fprintf(c.stderr, "batchd runs: unknown command %q\n\n%s", args[0], runsUsage)
	return exitUsage
}

// clientFlags are the flags every client command has.
type clientFlags struct {
	url    *string
	asJSON *bool
}

func addClientFlags(fs *flag.FlagSet) clientFlags {
	return clientFlags{
		url:    fs.String("url", "", "the daemon's base URL (default: $BATCHD_URL, else http://$BATCHD_HTTP_ADDR)"),
		asJSON: fs.Bool("json", false, "print the API's JSON answer"),
	}
}

// client builds the API client from the environment and --url.
func (f clientFlags) client(ctx context.Context, c *cli) (*apiclient.Client, int) {
	cc, err := config.LoadClient(ctx, c.env)
	if err != nil {
		return nil, cmdutil.ConfigExit(c.stderr, err)
	}
	u := cc.URL
	if *f.url != "" {
		u = strings.TrimRight(*f.url, "/")
	}
	return apiclient.New(u, cc.APIToken, nil), exitOK
}

func runsList(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "runs list", "Usage: batchd runs list [--pipeline P] [--state S] [--limit N] [--cursor C] [--json]\n\nLists runs, newest first. The last line names the cursor of the next page.\n")
	cf := addClientFlags(fs)
	pipeline := fs.String("pipeline", "", "only runs of this pipeline")
	state := fs.String("state", "", "only runs in this state ("+stateList()+")")
	limit := fs.Int("limit", 50, "runs per page (1-1000)")
	cursor := fs.String("cursor", "", "the next_cursor of the previous page")
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(c.stderr, "batchd runs list: unexpected argument %q\n", pos[0])
		return exitUsage
	}
	if *state != "" && !orchestrator.State(*state).Valid() {
		fmt.Fprintf(c.stderr, "batchd runs list: --state %q is not one of %s\n", *state, stateList())
		return exitUsage
	}
	if *limit < 1 || *limit > 1000 {
		fmt.Fprintf(c.stderr, "batchd runs list: --limit %d is not between 1 and 1000\n", *limit)
		return exitUsage
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	opts := orchestrator.ListOptions{Pipeline: *pipeline, State: orchestrator.State(*state), Limit: *limit, Cursor: *cursor}
	if *cf.asJSON {
		raw, err := cl.ListRunsRaw(ctx, opts)
		if err != nil {
			return cmdutil.APIExit(c.stderr, "runs list", err)
		}
		cmdutil.PrintJSON(c.stdout, raw)
		return exitOK
	}
	list, err := cl.ListRuns(ctx, opts)
	if err != nil {
		return cmdutil.APIExit(c.stderr, "runs list", err)
	}
	if len(list.Runs) == 0 {
		fmt.Fprintln(c.stdout, "No runs.")
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RUN\tPIPELINE\tSTATE\tJOB\tATTEMPTS\tCREATED\tREASON")
	for _, r := range list.Runs {
		job := "-"
		if r.Job != nil {
			job = r.Job.Name
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.ID, cmdutil.Dash(r.Pipeline), r.State, job, r.Attempts,
			r.Created.Local().Format("2006-01-02 15:04:05"), cmdutil.Dash(truncate(r.Reason, 80)))
	}
	tw.Flush()
	if list.NextCursor != "" {
		fmt.Fprintf(c.stdout, "\nMore: batchd runs list --cursor %s\n", list.NextCursor)
	}
	return exitOK
}

func stateList() string {
	s := make([]string, len(orchestrator.States))
	for i, st := range orchestrator.States {
		s[i] = string(st)
	}
	return strings.Join(s, ", ")
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len([]rune(s)) <= n {
		return s
	}
	return string([]rune(s)[:n-1]) + "…"
}

func oneRunArg(c *cli, what string, pos []string) (string, bool) {
	if len(pos) != 1 {
		fmt.Fprintf(c.stderr, "batchd runs %s: give exactly one run id (see `batchd runs list`)\n", what)
		return "", false
	}
	return pos[0], true
}

func runsShow(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "runs show", "Usage: batchd runs show ID [--json]\n\nShows one run: its event, decision, job and history.\n")
	cf := addClientFlags(fs)
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	id, ok := oneRunArg(c, "show", pos)
	if !ok {
		return exitUsage
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	if *cf.asJSON {
		raw, err := cl.GetRunRaw(ctx, id)
		if err != nil {
			return cmdutil.APIExit(c.stderr, "runs show", err)
		}
		cmdutil.PrintJSON(c.stdout, raw)
		return exitOK
	}
	r, err := cl.GetRun(ctx, id)
	if err != nil {
		return cmdutil.APIExit(c.stderr, "runs show", err)
	}
	cmdutil.PrintRun(c.stdout, r)
	return exitOK
}

func runsAction(ctx context.Context, c *cli, verb string, args []string) int {
	usage := map[string]string{
		"cancel": "Usage: batchd runs cancel ID [--reason R] [--json]\n\nCancels a run: one not yet submitted ends canceled; a submitted or running\nrun's job is canceled through ARM (the endpoint needs a workspace).\n",
		"retry":  "Usage: batchd runs retry ID [--reason R] [--json]\n\nStarts a new attempt of a finished or unknown run (a new job; the earlier\none is kept). For an unknown run, check first that its job does not exist.\n",
	}[verb]
	fs := cmdutil.NewFlagSet(c.stderr, "runs "+verb, usage)
	cf := addClientFlags(fs)
	reason := fs.String("reason", "", "why (recorded in the run's history)")
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	id, ok := oneRunArg(c, verb, pos)
	if !ok {
		return exitUsage
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	var r *orchestrator.Run
	var done bool
	if verb == "cancel" {
		r, done, err = cl.Cancel(ctx, id, *reason)
	} else {
		r, done, err = cl.Retry(ctx, id, *reason)
	}
	if err != nil {
		return cmdutil.APIExit(c.stderr, "runs "+verb, err)
	}
	return actionResult(c, *cf.asJSON, verb, r, done)
}

func actionResult(c *cli, asJSON bool, verb string, r *orchestrator.Run, done bool) int {
	if asJSON {
		cmdutil.PrintJSON(c.stdout, r)
		return exitOK
	}
	if done {
		fmt.Fprintf(c.stdout, "%s: run %s is %s.\n", verb, r.ID, r.State)
	} else {
		fmt.Fprintf(c.stdout, "%s: requested for run %s (now %s); follow it with `batchd runs show %s`.\n", verb, r.ID, r.State, r.ID)
	}
	if n := len(r.History); n > 0 {
		fmt.Fprintf(c.stdout, "  %s\n", r.History[n-1].Reason)
	}
	return exitOK
}

func runsResolve(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "runs resolve", "Usage: batchd runs resolve ID --state completed|failed|canceled [--reason R] [--json]\n"+
		"       batchd runs resolve ID --job NAME [--reason R] [--json]\n\n"+
		"Settles a run batchd cannot settle itself, typically one whose submission is\n"+
		"unknown: end it in a state, or adopt the job you found and let batchd track it.\n")

	cf := addClientFlags(fs)
	state := fs.String("state", "", "the run's final state: completed, failed or canceled")
	job := fs.String("job", "", "a job name to adopt and track instead")
	reason := fs.String("reason", "", "why (recorded in the run's history)")
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	id, ok := oneRunArg(c, "resolve", pos)
	if !ok {
		return exitUsage
	}
	if *state == "" && *job == "" {
		fmt.Fprintln(c.stderr, "batchd runs resolve: give --state completed|failed|canceled, or --job NAME")
		return exitUsage
	}
	switch orchestrator.State(*state) {
	case "", orchestrator.StateCompleted, orchestrator.StateFailed, orchestrator.StateCanceled:
	default:
		fmt.Fprintf(c.stderr, "batchd runs resolve: --state %q must be completed, failed or canceled\n", *state)
		return exitUsage
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	r, done, err := cl.Resolve(ctx, id, orchestrator.ResolveRequest{State: orchestrator.State(*state), Job: *job, Reason: *reason})
	if err != nil {
		return cmdutil.APIExit(c.stderr, "runs resolve", err)
	}
	return actionResult(c, *cf.asJSON, "resolve", r, done)
}
