// Command batchd turns events into Azure Machine Learning batch-endpoint jobs
// and follows every job to its end. One binary: the daemon (`batchd serve`)
// and the CLI around it.
//
// This package is wiring only: flags, subcommands, signals and exit codes.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/batchd/batchd/config"
)

// Exit codes. Scripts rely on them; they are part of the CLI's contract.
const (
	exitOK        = 0 // done: completed (or submitted, without --wait); explain: every verdict allows
	exitFailed    = 1 // the job Failed or was Canceled; explain: a verdict rejects
	exitUsage     = 2 // usage or configuration error
	exitAuth      = 3 // authentication or authorization failure
	exitRejected  = 4 // the endpoint rejected the request (other 4xx)
	exitTransient = 5 // transient or ambiguous failure: try again, or check before retrying
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
		{"dev", "run everything locally: NATS, Azurite, an Azure ML simulator and sample pipelines", cmdDev},
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

// newLogger builds the process logger from the environment's level and format.
func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// configExit prints a configuration error and returns exitUsage. Every
// problem is on its own line with its field path.
func configExit(c *cli, err error) int {
	var ce *config.Error
	if errors.As(err, &ce) {
		where := "configuration"
		if ce.File != "" {
			where = ce.File
		}
		fmt.Fprintf(c.stderr, "batchd: %d problem(s) in %s:\n", len(ce.Problems), where)
		for _, p := range ce.Problems {
			fmt.Fprintf(c.stderr, "  %v\n", p)
		}
		return exitUsage
	}
	fmt.Fprintf(c.stderr, "batchd: %v\n", err)
	return exitUsage
}

func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
