package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/apiclient"
)

const pipelinesUsage = `Usage: batchd pipelines <command> [flags]

Talks to a running daemon (BATCHD_URL, or BATCHD_HTTP_ADDR; BATCHD_API_TOKEN).

Commands:
  list                                       the configured pipelines
  run NAME [--key K] [--field k=v ...] [--wait] [--timeout D]
                                             run a pipeline by hand

Exit codes of run: 0 accepted (with --wait: completed); 1 the job failed,
was canceled or timed out; 2 usage; 3 the API token was refused; 4 rejected
(by the daemon, a preflight check or the endpoint); 5 the daemon could not be
reached, or --timeout passed (the run goes on), or the run is unknown.
`

// cmdPipelines is `batchd pipelines`.
func cmdPipelines(ctx context.Context, c *cli, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(c.stderr, pipelinesUsage)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	switch args[0] {
	case "list":
		return pipelinesList(ctx, c, args[1:])
	case "run":
		return pipelinesRun(ctx, c, args[1:])
	}
	fmt.Fprintf(c.stderr, "batchd pipelines: unknown command %q\n\n%s", args[0], pipelinesUsage)
	return exitUsage
}

func pipelinesList(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "pipelines list", "Usage: batchd pipelines list [--json]\n\nLists the pipelines the daemon runs.\n")
	cf := addClientFlags(fs)
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	if len(pos) > 0 {
		fmt.Fprintf(c.stderr, "batchd pipelines list: unexpected argument %q\n", pos[0])
		return exitUsage
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	list, err := cl.Pipelines(ctx)
	if err != nil {
		return cmdutil.APIExit(c.stderr, "pipelines list", err)
	}
	if *cf.asJSON {
		cmdutil.PrintJSON(c.stdout, list)
		return exitOK
	}
	if len(list.Pipelines) == 0 {
		fmt.Fprintln(c.stdout, "No pipelines.")
		return exitOK
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PIPELINE\tTRIGGER\tENDPOINT\tINPUTS\tTIMEOUT\tATTEMPTS")
	for _, p := range list.Pipelines {
		var ins []string
		for _, name := range cmdutil.SortedNames(p.Inputs) {
			in := p.Inputs[name]
			v := in.URI
			if v == "" {
				v = in.Value
			}
			ins = append(ins, name+"="+v)
		}
		trigger := p.Trigger
		if trigger == "" {
			trigger = "manual"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", p.Name, trigger, p.Endpoint, strings.Join(ins, " "), cmdutil.Dash(p.Timeout), p.MaxAttempts)
	}
	tw.Flush()
	return exitOK
}

// fieldFlags collects repeated --field k=v.
type fieldFlags map[string]string

func (f fieldFlags) String() string { return "" }

func (f fieldFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not NAME=VALUE", s)
	}
	f[k] = v
	return nil
}

func pipelinesRun(ctx context.Context, c *cli, args []string) int {
	fs := cmdutil.NewFlagSet(c.stderr, "pipelines run", "Usage: batchd pipelines run NAME [--key K] [--field k=v ...] [--wait] [--timeout D] [--json]\n\n"+
		"Runs a pipeline by hand. Its templates see the fields as {{ .Fields.NAME }}.\n"+
		"The same --key again is the same run (nothing is submitted twice).\n")

	cf := addClientFlags(fs)
	key := fs.String("key", "", "idempotency key (default: a new random one)")
	fields := fieldFlags{}
	fs.Var(fields, "field", "template field `NAME=VALUE`; repeatable")
	wait := fs.Bool("wait", false, "follow the run until it ends")
	timeout := fs.Duration("timeout", 0, "with --wait: stop waiting after this long and exit 5 (the run goes on; 0: no limit)")
	pos, err := cmdutil.ParseInterleaved(fs, args)
	if err != nil {
		return cmdutil.FlagExit(err)
	}
	if len(pos) != 1 {
		fmt.Fprintln(c.stderr, "batchd pipelines run: give exactly one pipeline name (see `batchd pipelines list`)")
		return exitUsage
	}
	cl, code := cf.client(ctx, c)
	if cl == nil {
		return code
	}
	resp, created, err := cl.RunPipeline(ctx, pos[0], orchestrator.ManualRunRequest{Key: *key, Fields: fields})
	if err != nil {
		if apiclient.StatusOf(err) == http.StatusNotFound {
			fmt.Fprintf(c.stderr, "batchd pipelines run: %v\n", err)
			return exitUsage
		}
		return cmdutil.APIExit(c.stderr, "pipelines run", err)
	}
	if !*wait {
		switch {
		case *cf.asJSON:
			cmdutil.PrintJSON(c.stdout, resp)
		case created:
			fmt.Fprintf(c.stdout, "Run %s accepted. Follow it with `batchd runs show %s`.\n", resp.RunID, resp.RunID)
		default:
			fmt.Fprintf(c.stdout, "Run %s exists already for this key (%s).\n", resp.RunID, resp.State)
		}
		return exitOK
	}
	if !created && !*cf.asJSON {
		fmt.Fprintf(c.stderr, "run %s exists already for this key; following it\n", resp.RunID)
	}
	run, err := cmdutil.WaitRun(ctx, c.stderr, cl, resp.RunID, *timeout)
	if err != nil {
		if errors.Is(err, cmdutil.ErrWaitTimeout) {
			fmt.Fprintf(c.stderr, "batchd pipelines run: %v (--timeout %s); run %s goes on\n", err, *timeout, resp.RunID)
			return exitTransient
		}
		if ctx.Err() != nil {
			fmt.Fprintf(c.stderr, "batchd pipelines run: interrupted; run %s goes on\n", resp.RunID)
			return exitTransient
		}
		return cmdutil.APIExit(c.stderr, "pipelines run", err)
	}
	if *cf.asJSON {
		cmdutil.PrintJSON(c.stdout, run)
	} else {
		cmdutil.PrintRun(c.stdout, run)
	}
	return cmdutil.StateExit(run.State)
}
