// Command batchd-dev runs batchd on one machine with no Azure account: an
// embedded NATS server, Azurite, a simulator of Azure ML and Microsoft Entra,
// sample pipelines, and the same daemon wiring `batchd serve` runs
// (cmd/internal/daemon). `make demo` builds and runs it.
//
// It is a separate binary so that the production one, cmd/batchd, links no
// simulator and never trusts a test CA.
package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/config"
)

// Exit codes: cmdutil's, as batchd's.
const (
	exitOK        = cmdutil.ExitOK
	exitFailed    = cmdutil.ExitFailed
	exitUsage     = cmdutil.ExitUsage
	exitRejected  = cmdutil.ExitRejected
	exitTransient = cmdutil.ExitTransient
)

// cli is what the command gets: its streams and its environment lookup
// (BATCHD_LOG_LEVEL only), so that it runs in-process in tests.
type cli struct {
	stdout, stderr io.Writer
	env            config.Lookuper
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cmdDev(ctx, &cli{stdout: os.Stdout, stderr: os.Stderr, env: config.OSEnv()}, os.Args[1:])
	stop()
	os.Exit(code)
}

// devVersion names this build in the replica registry.
func devVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version + " (batchd-dev)"
	}
	return "batchd-dev"
}

// devHost names this machine in the replica registry.
func devHost() string {
	h, _ := os.Hostname()
	return h
}
