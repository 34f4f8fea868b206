package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/cmd/internal/daemon"
	"github.com/batchd/batchd/config"
)

const serveUsage = `Usage: batchd serve [--config FILE]

Runs the daemon: the triggers, the workers that check and submit jobs, the
tracker that follows them, and the HTTP server on BATCHD_HTTP_ADDR
(/healthz, /readyz, /metrics, /api/v1/..., /eventgrid, and the status
page at /).

State lives in NATS JetStream: an embedded server in BATCHD_STATE_DIR, or
the cluster at BATCHD_NATS_URL (then any number of replicas may run).

SIGTERM or SIGINT stops taking new work, gives submissions in flight
BATCHD_SHUTDOWN_GRACE to finish, and exits 0; tracking resumes on the next
start. Configuration problems are all listed before anything starts (exit 2).

Flags:
`

// cmdServe is `batchd serve`.
func cmdServe(ctx context.Context, c *cli, args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	file := fs.String("config", "", "pipelines file (default: $BATCHD_PIPELINES)")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, serveUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cmdutil.FlagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "batchd serve: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	env, f, err := config.Load(ctx, c.env, *file)
	if err == nil {
		err = daemon.Check(env)
	}
	if err != nil {
		return cmdutil.ConfigExit(c.stderr, err)
	}
	log := cmdutil.NewLogger(c.stderr, env.LogLevel, env.LogFormat)
	if err := daemon.Serve(ctx, env, f, daemon.Options{
		Logs: c.stderr, Transport: azureTransport, Version: buildVersion().Version, Host: hostname(),
	}); err != nil {
		if config.IsConfigError(err) {
			return cmdutil.ConfigExit(c.stderr, err)
		}
		log.Error("batchd stopped", "err", err)
		return exitFailed
	}
	return exitOK
}
