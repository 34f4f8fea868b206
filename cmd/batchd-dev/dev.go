package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
)

const devUsage = `Usage: batchd-dev [--http ADDR] [--nats-port N] [--azurite-port N] [--state DIR] [--keep] [--quiet]
       batchd-dev upload FILE [--container C] [--name NAME] [--wait] [--state DIR]
       batchd-dev publish SUBJECT JSON [--wait] [--state DIR]

Runs batchd on this machine, with no Azure account, together with everything
it talks to: an embedded NATS server with JetStream, Azurite (the Azure
Storage emulator, installed by 'make deps' under tools/azurite; it needs
Node.js), and a simulator of Azure ML batch endpoints and Microsoft Entra
(TLS with its own CA, trusted only inside this process). It writes a sample
pipelines file into the state directory, uploads a few sample files, and
then runs exactly what 'batchd serve' runs, printing one line per run state
change. 'make demo' installs what is needed, builds, and runs this.

The sample pipelines (DIR/pipelines.yaml):
  uploads     a file in container "incoming": Event Grid BlobCreated events
              (batchd-dev posts them to its own /eventgrid webhook, because
              Azurite has no Event Grid) plus a poller that finds files whose
              event was lost. Both derive the same run id from the blob's URL
              and eTag, so a file is never submitted twice.
  nightly     a schedule (@every 30s) that scores the folder data/nightly/.
  on-message  a NATS message on subject demo.score: {"uri": "<blob URL>"}.
A file whose name contains "fail" gets a job that ends Failed, to show how a
failure is reported. Simulated jobs are Queued for 3 s, Running for 10 s.

Credentials: the managed-identity App Service protocol against the simulator
(BATCHD_CREDENTIAL=managed-identity). batchd-dev sets IDENTITY_ENDPOINT and
IDENTITY_HEADER in its own process environment, nowhere else. Every listener
is on 127.0.0.1 and nothing leaves the machine.

Ctrl-C (or SIGTERM) stops batchd (with its shutdown grace), the simulator
and Azurite, and exits 0; a second Ctrl-C (a second or more later) stops at
once, with exit 1. Azurite also dies when batchd-dev is killed.

Subcommands (they find the running batchd-dev through DIR/dev.json):
  upload FILE           upload FILE to Azurite (container incoming, named
                        after the file) and post its BlobCreated event;
                        prints the run id
  publish SUBJECT JSON  publish a NATS message (as a request: the trigger
                        answers with the run id)
Both take --wait (follow the run to its end; exit codes as 'batchd
pipelines run') and --state DIR.

Flags:
  --http ADDR          HTTP address: API, /eventgrid, /metrics, status page
                       (default 127.0.0.1:8080; loopback only)
  --nats-port N        port of the embedded NATS server's client listener
                       (default 4222)
  --azurite-port N     Azurite's blob port (default 10000)
  --state DIR          state directory (default .batchd-dev)
  --keep               keep the state of the previous run: runs, blobs, cron
                       progress, and its ports (default: start afresh)
  --quiet              no progress lines

A default port that is taken falls back to a free one (and says so); a port
given as a flag must be free. Without --keep, the files batchd-dev writes in
DIR are removed at start (nothing else in DIR is touched).

Exit codes: 0 stopped by Ctrl-C or SIGTERM; 1 something failed while running;
2 usage, configuration, or a missing prerequisite (Node.js, Azurite, a taken
port, another batchd-dev on DIR).
`

// devDefaultState is the default state directory (in .gitignore).
const devDefaultState = ".batchd-dev"

// devOptions are the flags of `batchd-dev`.
type devOptions struct {
	httpAddr    string
	natsPort    int
	azuritePort int
	stateDir    string
	keep        bool
	quiet       bool
	// fast (hidden, for tests): sub-second simulated jobs, a 2 s poller,
	// a cron schedule of @every 5s and quick tracking.
	fast bool
	// explicit names the flags given on the command line: their ports must
	// be free, where defaults fall back to free ones.
	explicit map[string]bool
}

// cmdDev is batchd-dev: the stack, or one of its client subcommands.
func cmdDev(ctx context.Context, c *cli, args []string) int {
	if len(args) > 0 {
		switch args[0] {
		case "upload":
			return devUpload(ctx, c, args[1:])
		case "publish":
			return devPublish(ctx, c, args[1:])
		}
	}
	o, code, ok := parseDevFlags(c.stderr, args)
	if !ok {
		return code
	}
	return runDev(ctx, c, o)
}

func parseDevFlags(stderr io.Writer, args []string) (devOptions, int, bool) {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, devUsage) }
	o := devOptions{explicit: map[string]bool{}}
	fs.StringVar(&o.httpAddr, "http", "127.0.0.1:8080", "")
	fs.IntVar(&o.natsPort, "nats-port", 4222, "")
	fs.IntVar(&o.azuritePort, "azurite-port", 10000, "")
	fs.StringVar(&o.stateDir, "state", devDefaultState, "")
	fs.BoolVar(&o.keep, "keep", false, "")
	fs.BoolVar(&o.quiet, "quiet", false, "")
	fs.BoolVar(&o.fast, "fast", false, "")
	if err := fs.Parse(args); err != nil {
		return o, cmdutil.FlagExit(err), false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "batchd-dev: unexpected argument %q (subcommands: upload, publish)\n", fs.Arg(0))
		return o, exitUsage, false
	}
	fs.Visit(func(f *flag.Flag) { o.explicit[f.Name] = true })
	for _, p := range []struct {
		name string
		v    int
	}{{"nats-port", o.natsPort}, {"azurite-port", o.azuritePort}} {
		if p.v < 0 || p.v > 65535 {
			fmt.Fprintf(stderr, "batchd-dev: --%s %d is not a port (0 picks a free one)\n", p.name, p.v)
			return o, exitUsage, false
		}
	}
	if o.stateDir == "" {
		fmt.Fprintln(stderr, "batchd-dev: --state must not be empty")
		return o, exitUsage, false
	}
	return o, exitOK, true
}

// runDev starts everything, runs until ctx ends (a signal) or batchd
// fails, and stops everything it started, in reverse order.
func runDev(ctx context.Context, c *cli, o devOptions) int {
	d := &devRun{c: c, o: o, out: &syncWriter{w: c.stdout}}
	code := d.start(ctx)
	if code != exitOK || d.serveDone == nil { // failed, or a signal before batchd started
		d.stop()
		if code == exitOK {
			d.say("dev", "stopped while starting")
		}
		return code
	}
	code = d.wait(ctx)
	d.stop()
	if code == exitOK {
		d.say("dev", "stopped; the state stays in %s: 'batchd-dev --keep' resumes from it, 'batchd-dev' starts afresh", d.rel(d.dir))
	}
	return code
}

// wait blocks until a signal or until batchd fails, then stops batchd.
// A second signal during the shutdown kills Azurite and exits at once.
func (d *devRun) wait(ctx context.Context) int {
	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-d.serveDone:
		d.serveDone = nil
		if serveErr == nil {
			serveErr = errors.New("returned before shutdown")
		}
	}
	force := make(chan os.Signal, 1)
	signal.Notify(force, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(force)
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		// A signal within the first second is the same stop request
		// delivered twice (tools such as timeout(1) signal the process
		// group and the child), not a second Ctrl-C.
		settle := time.Now().Add(time.Second)
		for {
			select {
			case <-force:
				if time.Now().Before(settle) {
					continue
				}
				fmt.Fprintln(d.c.stderr, "batchd-dev: second signal: stopping at once")
				if d.az != nil {
					_ = d.az.Close()
				}
				os.Exit(exitFailed)
			case <-stopped:
				return
			}
		}
	}()

	if serveErr == nil {
		d.say("dev", "stopping: batchd (in-flight steps get up to %s), then the simulator and Azurite; Ctrl-C again to stop at once", d.env.ShutdownGrace)
	}
	d.cancel()
	if d.serveDone != nil {
		serveErr = <-d.serveDone
		d.serveDone = nil
	}
	d.bg.Wait()
	if serveErr != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: batchd stopped: %v\n", serveErr)
		if d.logPath != "" {
			fmt.Fprintf(d.c.stderr, "batchd-dev: the log is %s\n", d.logPath)
		}
		return exitFailed
	}
	return exitOK
}

// say prints one line of dev's own output: the time, a pipeline (or a
// tag) column, then the message.
func (d *devRun) say(tag, format string, args ...any) {
	d.out.line(fmt.Sprintf("%s  %-11s %s", time.Now().Format("15:04:05"), tag, fmt.Sprintf(format, args...)))
}
