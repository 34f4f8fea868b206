// Command batchd turns events into Azure Machine Learning batch-endpoint jobs
// and follows every job to its end. One binary: the daemon (`batchd serve`)
// and the CLI around it.
//
// This package is wiring only: flags, subcommands, signals and exit codes.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/config"
)

// Exit codes: the contract is cmdutil's (batchd-dev shares it).
const (
	exitOK        = cmdutil.ExitOK
	exitFailed    = cmdutil.ExitFailed
	exitUsage     = cmdutil.ExitUsage
	exitAuth      = cmdutil.ExitAuth
	exitRejected  = cmdutil.ExitRejected
	exitTransient = cmdutil.ExitTransient
)

// cli is what every subcommand gets: its streams and its environment lookup.
// Subcommands never touch os.Stdout, os.Args or os.Getenv themselves, so they
// can be tested in-process.
type cli struct {
	stdout, stderr io.Writer
	env            config.Lookuper
	// isTerminal reports whether stdout is a terminal (live progress).
	isTerminal bool
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, c *cli, args []string) int
}

func commands() []command {
	return []command{
		{"serve", "run the daemon: triggers, workers, tracker and the HTTP API", cmdServe},
		{"check", "validate the environment and the pipelines file", cmdCheck},
		{"invoke", "submit one batch job to an endpoint (and optionally wait for it)", cmdInvoke},
		{"token", "show the claims of the Entra token batchd would use (never the token)", cmdToken},
		{"explain", "show the data-access decision for input URIs", cmdExplain},
		{"runs", "list, show, cancel, retry or resolve runs (talks to a running daemon)", cmdRuns},
		{"pipelines", "list pipelines or run one by hand (talks to a running daemon)", cmdPipelines},
		{"replicas", "list the live replicas: version, pipelines file, heartbeat (talks to a running daemon)", cmdReplicas},
		{"backfill", "emit cron slots of a past time range", cmdBackfill},
		{"replay", "emit runs again for events already seen", cmdReplay},
		{"score", "send one request to an online endpoint", cmdScore},
		{"version", "print the version and build information", cmdVersion},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	c := &cli{stdout: os.Stdout, stderr: os.Stderr, env: config.OSEnv(), isTerminal: isTerminal(os.Stdout)}
	code := run(ctx, c, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, c *cli, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(c.stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, cmd := range commands() {
		if cmd.name == args[0] {
			return cmd.run(ctx, c, args[1:])
		}
	}
	if args[0] == "dev" {
		fmt.Fprintln(c.stderr, "batchd: the local stack is its own command now, batchd-dev (make build puts it in bin/; `make demo` builds and runs it): ./bin/batchd-dev")
		return exitUsage
	}
	fmt.Fprintf(c.stderr, "batchd: unknown command %q\n\n", args[0])
	usage(c.stderr)
	return exitUsage
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "batchd turns events into Azure ML batch-endpoint jobs and follows each job to its end.\n\nUsage:\n  batchd <command> [flags]\n\nCommands:\n")
	for _, cmd := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(w, "\nRun `batchd <command> -h` for a command's flags.\n")
	fmt.Fprintf(w, "Exit codes: 0 ok, 1 job failed or canceled, 2 usage or config error, 3 auth failure,\n4 request rejected by the endpoint, 5 transient or ambiguous failure.\n")
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
