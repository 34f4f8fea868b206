package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/batchd/batchd/cmd/internal/daemon"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
	"github.com/batchd/batchd/triggers/cron"
)

// cliDaemon is an orchestrator with its API on httptest, against the
// simulator: what `batchd runs` and `batchd pipelines` talk to.
type cliDaemon struct {
	url   string
	token string
	sim   *jobstest.Sim
	orch  *orchestrator.Orchestrator
}

const cliToken = "cli-test-token-1234567890"

func startCLIDaemon(t *testing.T) *cliDaemon {
	t.Helper()
	sim := jobstest.New(t, jobstest.Options{Lifecycle: procQuickLifecycle()})
	if err := sim.AddEndpoint("failing", jobstest.EndpointOptions{DefaultDeployment: "default", Lifecycle: jobstest.Fails("No succeeded mini batch item returned from run()")}); err != nil {
		t.Fatal(err)
	}
	b, err := broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("broker: %v", err)
	}
	t.Cleanup(b.Close)
	client, err := jobs.New(sim.Credential("cli-test"), jobs.Options{ARMEndpoint: sim.ARMEndpoint(), Transport: sim.HTTPClient(),
		GetRetry: policy.RetryOptions{MaxRetries: 1, RetryDelay: 10 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	uri, err := orchestrator.CompileTemplate("{{ .Fields.uri }}")
	if err != nil {
		t.Fatal(err)
	}
	pipeline := func(name, endpoint string) *orchestrator.Pipeline {
		return &orchestrator.Pipeline{
			Name:     name,
			Endpoint: orchestrator.Endpoint{Endpoint: sim.Endpoint(endpoint), DeploymentKind: datastores.DeploymentModel},
			Inputs:   map[string]orchestrator.IOTemplate{"data": {Type: jobs.TypeUriFile, URI: uri}},
			Retry:    orchestrator.RetryPolicy{MaxAttempts: 1},
		}
	}
	log := slog.New(slog.DiscardHandler)
	// nightly is a cron pipeline, for backfill.
	nightly := pipeline("nightly", "scorer")
	nightly.Trigger = "cron"
	day, err := orchestrator.CompileTemplate(`azureml://locations/westeurope/workspaces/sim/data/day-{{ date "20060102" .Schedule.Time }}/versions/1`)
	if err != nil {
		t.Fatal(err)
	}
	nightly.Inputs = map[string]orchestrator.IOTemplate{"data": {Type: jobs.TypeUriFolder, URI: day}}
	orch, err := orchestrator.New(t.Context(), orchestrator.Options{
		JS: b.JS, Conn: b.Conn, Submitter: client,
		Checker: datastores.NewChecker(datastores.CheckerOptions{Logger: log}),
		Pipelines: map[string]*orchestrator.Pipeline{"score": pipeline("score", "scorer"), "flaky": pipeline("flaky", "failing"),
			"nightly": nightly},
		Logger: log, PollMin: 20 * time.Millisecond, PollMax: 100 * time.Millisecond, PollBudget: 1000,
	})
	if err != nil {
		t.Fatalf("orchestrator: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- orch.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	backfill := daemon.BackfillFunc(&config.File{Triggers: config.Triggers{Cron: map[string]cron.Config{"nightly": {Schedule: "0 6 * * *"}}}}, nil)
	srv := httptest.NewServer(orch.Handler(orchestrator.HandlerOptions{APIToken: cliToken, Backfill: backfill}))
	t.Cleanup(srv.Close)
	procWaitFor(t, 10*time.Second, "the daemon to be ready", func() bool { return orch.Ready() == nil })
	return &cliDaemon{url: srv.URL, token: cliToken, sim: sim, orch: orch}
}

// cli runs the CLI in-process against the daemon.
func (d *cliDaemon) cli(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	if env == nil {
		env = map[string]string{"BATCHD_URL": d.url, "BATCHD_API_TOKEN": d.token}
	}
	var out, errb bytes.Buffer
	c := &cli{stdout: &out, stderr: &errb, env: config.MapEnv(env)}
	code := run(t.Context(), c, args)
	if strings.Contains(out.String()+errb.String(), d.token) {
		t.Errorf("the API token appears in the output of %v", args)
	}
	return code, out.String(), errb.String()
}

func TestRunsAndPipelinesCLI(t *testing.T) {
	t.Parallel()
	d := startCLIDaemon(t)
	uri := "azureml://locations/westeurope/workspaces/sim/data/cli/versions/1"

	code, out, errs := d.cli(t, nil, "pipelines", "list")
	if code != exitOK || !strings.Contains(out, "PIPELINE") || !strings.Contains(out, "score") || !strings.Contains(out, "data={{ .Fields.uri }}") {
		t.Errorf("pipelines list = %d\n%s%s", code, out, errs)
	}

	code, out, errs = d.cli(t, nil, "pipelines", "run", "score", "--key", "k1", "--field", "uri="+uri, "--wait", "--timeout", "30s")
	if code != exitOK || !strings.Contains(out, "completed") || !strings.Contains(out, "History:") {
		t.Fatalf("pipelines run --wait = %d\nstdout:\n%s\nstderr:\n%s", code, out, errs)
	}
	id := orchestrator.RunID("score", "k1")
	if !strings.Contains(out, id) {
		t.Errorf("pipelines run output does not name run %s:\n%s", id, out)
	}
	code, out, _ = d.cli(t, nil, "pipelines", "run", "score", "--key", "k1", "--field", "uri="+uri)
	if code != exitOK || !strings.Contains(out, "exists already") {
		t.Errorf("same key again = %d %s, want exit 0 naming the existing run", code, out)
	}
	if n := d.sim.JobCount(); n != 1 {
		t.Errorf("jobs created = %d, want 1", n)
	}

	code, out, _ = d.cli(t, nil, "runs", "list")
	if code != exitOK || !strings.Contains(out, "RUN") || !strings.Contains(out, id) || !strings.Contains(out, "completed") {
		t.Errorf("runs list = %d\n%s", code, out)
	}
	code, out, _ = d.cli(t, nil, "runs", "list", "--state", "completed", "--json")
	var list orchestrator.RunList
	if err := json.Unmarshal([]byte(out), &list); code != exitOK || err != nil || len(list.Runs) != 1 || list.Runs[0].ID != id {
		t.Errorf("runs list --json = %d %v\n%s", code, err, out)
	}
	code, out, _ = d.cli(t, nil, "runs", "show", id)
	if code != exitOK || !strings.Contains(out, "State:") || !strings.Contains(out, "completed") || !strings.Contains(out, "Decision:") {
		t.Errorf("runs show = %d\n%s", code, out)
	}
	code, out, _ = d.cli(t, nil, "runs", "show", id, "--json")
	var shown map[string]any
	if err := json.Unmarshal([]byte(out), &shown); code != exitOK || err != nil || shown["id"] != id || shown["history"] == nil {
		t.Errorf("runs show --json = %d %v\n%s", code, err, out)
	}

	// The exit codes scripts rely on.
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want int
	}{
		{"a failed job", nil, []string{"pipelines", "run", "flaky", "--field", "uri=" + uri, "--wait"}, exitFailed},
		{"a missing template field", nil, []string{"pipelines", "run", "score", "--key", "k2"}, exitUsage},
		{"an unknown pipeline", nil, []string{"pipelines", "run", "nope"}, exitUsage},
		{"cancel a finished run", nil, []string{"runs", "cancel", id}, exitRejected},
		{"show an unknown run", nil, []string{"runs", "show", "0123456789abcdef0123456789abcdef"}, exitRejected},
		{"resolve without a verdict", nil, []string{"runs", "resolve", id}, exitUsage},
		{"a bad state filter", nil, []string{"runs", "list", "--state", "bogus"}, exitUsage},
		{"no subcommand", nil, []string{"runs"}, exitUsage},
		{"a wrong token", map[string]string{"BATCHD_URL": d.url, "BATCHD_API_TOKEN": "wrong"}, []string{"runs", "list"}, exitAuth},
		{"no daemon there", map[string]string{"BATCHD_URL": "http://127.0.0.1:1"}, []string{"runs", "list"}, exitTransient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code, out, errs := d.cli(t, tt.env, tt.args...); code != tt.want {
				t.Errorf("%v = %d, want %d\nstdout:\n%s\nstderr:\n%s", tt.args, code, tt.want, out, errs)
			}
		})
	}

	// Retry the finished run: a new attempt, a second job.
	code, out, errs = d.cli(t, nil, "runs", "retry", id, "--reason", "again")
	if code != exitOK {
		t.Fatalf("runs retry = %d\n%s%s", code, out, errs)
	}
	procWaitFor(t, 20*time.Second, "the retried run to complete", func() bool {
		r, err := d.orch.Get(t.Context(), id)
		return err == nil && r.State == orchestrator.StateCompleted && len(r.PreviousJobs) == 1
	})
}
