package main

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/batchd/batchd/cmd/batchd/internal/benchtab"
	"github.com/batchd/batchd/cmd/internal/daemon"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
)

// BenchmarkBatchd is `make bench`: every figure of docs/BENCHMARKS.md,
// each measured side by side with its reference in the same run, printed as
// one table and written as JSON (BATCHD_BENCH_JSON, default bin/bench.json
// at the repository root).
//
// Each sub-benchmark is one whole experiment with its own counts (tens of
// thousands of events, 100,000 tracked jobs), so it runs once:
//
//	go test -run '^$' -bench '^BenchmarkBatchd$' -benchtime 1x -timeout 30m ./cmd/batchd/
//
// One figure: -bench 'BenchmarkBatchd/intake'. BATCHD_BENCH_SCALE (default
// 1) multiplies every size, for a quick look (0.1) on a busy machine.
func BenchmarkBatchd(b *testing.B) {
	rep := benchtab.NewReport(benchCommit())
	b.Run("intake", func(b *testing.B) { benchIntake(b, rep) })
	b.Run("webhook", func(b *testing.B) { benchWebhook(b, rep) })
	b.Run("event-to-post", func(b *testing.B) { benchEventToPOST(b, rep) })
	b.Run("head-of-line", func(b *testing.B) { benchHeadOfLine(b, rep) })
	b.Run("pushed-completion", func(b *testing.B) { benchJobEvents(b, rep) })
	b.Run("online", func(b *testing.B) { benchOnline(b, rep) })
	b.Run("tracking", func(b *testing.B) { benchTracking(b, rep) })
	b.Run("tracking-events", func(b *testing.B) { benchEventsAtScale(b, rep) })
	b.Run("bulk-status", func(b *testing.B) { benchBulkStatus(b, rep) })
	b.Run("starvation", func(b *testing.B) { benchStarvation(b, rep) })
	b.Run("history", func(b *testing.B) { benchHistory(b, rep) })
	b.Run("cluster", func(b *testing.B) { benchCluster(b, rep) })
	rep.Finish()
	var out strings.Builder
	rep.Render(&out)
	fmt.Fprint(os.Stdout, "\n"+out.String()+"\n")
	path := os.Getenv("BATCHD_BENCH_JSON")
	if path == "" {
		path = filepath.Join("..", "..", "bin", "bench.json")
	}
	if err := rep.WriteJSON(path); err != nil {
		b.Fatal(err)
	}
	fmt.Fprintf(os.Stdout, "written to %s\n", path)
}

// benchScaled scales a size by BATCHD_BENCH_SCALE.
func benchScaled(n int) int {
	s, err := strconv.ParseFloat(os.Getenv("BATCHD_BENCH_SCALE"), 64)
	if err != nil || s <= 0 {
		return n
	}
	return max(1, int(math.Round(float64(n)*s)))
}

func benchCommit() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// benchStack is the daemon's core wired in this process as serve wires it:
// the embedded NATS (no listener, as by default), the orchestrator with
// serve's default options, the jobs client and the preflight checker. The
// simulator runs in this process too, so batchd and every reference share
// the same two cores.
type benchStack struct {
	br   *broker.Broker
	orch *orchestrator.Orchestrator
	env  *config.Env
	file *config.File
}

// newBenchStack builds the stack for the pipelines file text. It does not
// run the orchestrator (run does).
func newBenchStack(b *testing.B, sim *jobstest.Sim, pipelines string) *benchStack {
	b.Helper()
	return newBenchStackOn(b, sim, pipelines, broker.Options{StoreDir: b.TempDir()}, 1)
}

// newBenchStackOn is newBenchStack on the NATS bopts names (an external
// cluster with bopts.URL), with streams and buckets at replicas.
func newBenchStackOn(b *testing.B, sim *jobstest.Sim, pipelines string, bopts broker.Options, replicas int) *benchStack {
	b.Helper()
	ctx := b.Context()
	env, err := config.LoadEnv(ctx, config.MapEnv(map[string]string{"BATCHD_STATE_DIR": b.TempDir()}))
	if err != nil {
		b.Fatal(err)
	}
	f, err := config.Parse([]byte(pipelines))
	if err != nil {
		b.Fatalf("pipelines: %v", err)
	}
	br, err := broker.Start(ctx, bopts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	cred := sim.Credential("bench")
	client, err := jobs.New(cred, jobs.Options{ARMEndpoint: sim.ARMEndpoint(), Transport: sim.HTTPClient()})
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	_, checker := daemon.NewStorageChecker(env, f, cred, log)
	orch, err := orchestrator.New(ctx, orchestrator.Options{
		JS: br.JS, Conn: br.Conn, Pipelines: f.Pipelines, Submitter: client, Checker: checker, Logger: log,
		Workers: env.Workers, Retention: env.Retention, ShutdownGrace: env.ShutdownGrace,
		SubmitTimeout: env.SubmitTimeout, PollMin: env.PollMin, PollMax: env.PollMax,
		PollBudget: env.PollBudget, ReconcileGrace: env.ReconcileGrace, Replicas: replicas,
	})
	if err != nil {
		b.Fatal(err)
	}
	return &benchStack{br: br, orch: orch, env: env, file: f}
}

// run runs the orchestrator until the benchmark ends.
func (s *benchStack) run(b *testing.B) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.orch.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("orchestrator: %v", err)
		}
	})
	procWaitFor(b, 30*time.Second, "the orchestrator to be ready", func() bool { return s.orch.Ready() == nil })
}

// benchParallel calls f(0..n-1) from conc goroutines and returns the
// elapsed time.
func benchParallel(b *testing.B, n, conc int, f func(i int) error) time.Duration {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := time.Now()
	for range conc {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					if failed.Add(1) == 1 {
						b.Error(err)
					}
					return
				}
			}
		})
	}
	wg.Wait()
	if failed.Load() > 0 {
		b.FailNow()
	}
	return time.Since(start)
}

// benchOpenLoop starts fire(i, at) for i in 0..n-1 at the offered rate, on
// its own goroutine each (at most 4096 at once), and waits for them all.
// at is the scheduled time: latencies measured from it include any delay in
// starting the call, so a system that falls behind cannot hide it
// (no coordinated omission).
func benchOpenLoop(n int, rate float64, fire func(i int, at time.Time)) {
	sem := make(chan struct{}, 4096)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if d := time.Until(at); d > 0 {
			time.Sleep(d)
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fire(i, at)
		})
	}
	wg.Wait()
}

// benchAssetURI is an input URI the preflight accepts without a storage
// call (a data asset), unique per name.
func benchAssetURI(name string) string {
	return "azureml://locations/westeurope/workspaces/sim/data/" + name + "/versions/1"
}

func benchPct(ds []time.Duration, p float64) float64 { return benchtab.Ms(benchtab.Percentile(ds, p)) }
