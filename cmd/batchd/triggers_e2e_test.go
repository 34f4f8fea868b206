package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/datastores/azurite/azuritetest"
	"github.com/batchd/batchd/jobs/jobstest"
)

// TestBlobTriggersEndToEnd runs the daemon as a process against real
// Azurite, the embedded NATS and the Azure ML simulator:
//   - a blob's BlobCreated event delivered twice makes exactly one job;
//   - 100 blobs found by the poller (no events) make 100 jobs;
//   - after a restart, a full sweep and a third delivery make none;
//   - batchd backfill runs the blobs whose events never came, once.
func TestBlobTriggersEndToEnd(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds and runs the daemon as a process")
	}
	ctx := t.Context()
	sim := jobstest.New(t, jobstest.Options{Lifecycle: procQuickLifecycle()})
	az := azuritetest.Start(t)
	client := azuritetest.Client(t, az)
	for _, c := range []string{"events", "swept"} {
		if _, err := client.CreateContainer(ctx, c, nil); err != nil {
			t.Fatal(err)
		}
	}

	dir := t.TempDir()
	bin := procBuild(t, dir)
	env := procSimEnv(t, sim, dir)
	keyFile := filepath.Join(dir, "azurite.key")
	if err := os.WriteFile(keyFile, []byte(azurite.Key), 0o600); err != nil {
		t.Fatal(err)
	}
	ws := sim.Workspace()
	pipelines := fmt.Sprintf(`endpoints:
  sim:
    uri: %[1]s
    workspace: {subscription: %[2]s, resource_group: %[3]s, name: %[4]s}
storage:
  accounts:
    devstoreaccount1: {blob_endpoint: "%[5]s", auth: shared_key, key_file: "%[6]s"}
pipelines:
  events:
    endpoint: sim
    trigger:
      blob: {account: devstoreaccount1, container: events, prefix: in/}
    inputs:
      data: {type: UriFile, uri: "{{ .Blob.URL }}"}
    allow: {accounts: [devstoreaccount1], containers: [events]}
  swept:
    endpoint: sim
    trigger:
      blob: {account: devstoreaccount1, container: swept, source: poll, poll_interval: 1s}
    inputs:
      data: {type: UriFile, uri: "{{ .Blob.URL }}"}
    allow: {accounts: [devstoreaccount1], containers: [swept]}
`, sim.ScoringURI("blobs"), ws.Subscription, ws.ResourceGroup, ws.Name, az.AccountURL(), keyFile)
	env["BATCHD_PIPELINES"] = filepath.Join(dir, "blob-pipelines.yaml")
	if err := os.WriteFile(env["BATCHD_PIPELINES"], []byte(pipelines), 0o600); err != nil {
		t.Fatal(err)
	}
	const secret = "e2e-webhook-secret-7f3a9c"
	env["BATCHD_WEBHOOK_SECRET"] = secret

	proc := newProc(t, bin, env, "blob-e2e")
	proc.start()

	// The webhook: one upload, its event delivered twice.
	up, err := client.UploadBuffer(ctx, "events", "in/a.csv", []byte("x,y\n1,2\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	blobURL := az.AccountURL() + "events/in/a.csv"
	event := fmt.Sprintf(`[{"topic":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
"subject":"/blobServices/default/containers/events/blobs/in/a.csv","eventType":"Microsoft.Storage.BlobCreated",
"eventTime":"2026-11-24T10:00:00Z","id":"evt-1","dataVersion":"","metadataVersion":"1",
"data":{"api":"PutBlob","eTag":%q,"contentType":"text/csv","contentLength":8,"blobType":"BlockBlob",
"url":%q,"sequencer":"0000000000000001000000000000000100000000000000a1"}}]`, string(*up.ETag), blobURL)
	deliver := func() {
		t.Helper()
		resp, err := http.Post(proc.url()+"/eventgrid?code="+secret, "application/json", strings.NewReader(event))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("Event Grid delivery answered %d, want 200", resp.StatusCode)
		}
	}
	deliver()
	deliver()

	// The poller: 100 blobs, no events.
	for i := range 100 {
		if _, err := client.UploadBuffer(ctx, "swept", fmt.Sprintf("batch/%03d.csv", i), []byte("a\n1\n"), nil); err != nil {
			t.Fatal(err)
		}
	}

	runs := procWaitFinished(t, proc.url, 101, 3*time.Minute)
	procCheckOneJobPerRun(t, sim, runs, func(key string) string {
		url, _, _ := strings.Cut(key, "@") // the key is the blob URL + "@" + eTag
		return url
	})
	var eventRuns int
	for _, r := range runs {
		if r.Pipeline == "events" {
			eventRuns++
		}
	}
	if eventRuns != 1 {
		t.Errorf("the twice-delivered event made %d runs, want 1", eventRuns)
	}

	// The same series that must read 0 after the restart reads 100 now, so
	// that assertion cannot pass by naming a series that does not exist.
	emitted := `batchd_trigger_events_total{outcome="emitted",pipeline="swept",trigger="poll"}`
	if n := metricValue(t, proc.url(), emitted); n != 100 {
		t.Fatalf("%s = %v before the restart, want 100", emitted, n)
	}
	// One registry, main's, carries every component's metrics: the
	// triggers', the orchestrator's, the credential's token count, Go's.
	for _, series := range []string{`batchd_token_fetches_total{scope="https://ml.azure.com/.default"}`,
		`batchd_runs{state="completed"}`, "go_goroutines"} {
		if n := metricValue(t, proc.url(), series); n <= 0 {
			t.Errorf("/metrics: %s = %v, want > 0", series, n)
		}
	}

	// Restart: a complete sweep of the same 100 blobs and a third delivery
	// of the event must submit nothing.
	if code := proc.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("batchd exit code after SIGTERM = %d, want 0", code)
	}
	proc.start()
	procWaitFor(t, time.Minute, "a complete sweep after the restart", func() bool {
		return metricValue(t, proc.url(), `batchd_trigger_poll_sweeps_total{pipeline="swept",result="complete"}`) >= 1
	})
	deliver()
	if n := metricValue(t, proc.url(), emitted); n != 0 {
		t.Errorf("after the restart the poller emitted %v blobs, want 0", n)
	}
	after, err := procListAll(proc.url())
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 101 || sim.JobCount() != 101 {
		t.Errorf("after the restart: %d runs and %d simulator jobs, want 101 and 101", len(after), sim.JobCount())
	}

	// Blobs whose events never came (the events pipeline has no poller)
	// run through batchd backfill, once: the blob already run by its event
	// is reported, not submitted again.
	for _, name := range []string{"in/b.csv", "in/c.csv", "other/d.csv"} {
		if _, err := client.UploadBuffer(ctx, "events", name, []byte("x,y\n3,4\n"), nil); err != nil {
			t.Fatal(err)
		}
	}
	cliEnv := map[string]string{"BATCHD_URL": proc.url()}
	from, to := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	code, out, errOut := runCLI(t, cliEnv, "backfill", "events", "--from", from, "--to", to)
	if code != exitOK || !strings.Contains(out, "3 blob(s): submitted 2, 1 already had a run.") ||
		!strings.Contains(out, "events/in/b.csv") || !strings.Contains(out, "already completed") || strings.Contains(out, "other/d.csv") {
		t.Fatalf("batchd backfill events: exit %d\n%s%s\nwant b.csv and c.csv submitted, a.csv already completed, other/ outside the prefix", code, out, errOut)
	}
	runs = procWaitFinished(t, proc.url, 103, time.Minute)
	if code, out, _ = runCLI(t, cliEnv, "backfill", "events", "--from", from, "--to", to); code != exitOK || !strings.Contains(out, "3 blob(s): submitted 0, 3 already had a run.") {
		t.Errorf("batchd backfill events again: exit %d\n%s\nwant all 3 already run", code, out)
	}
	if sim.JobCount() != 103 {
		t.Errorf("after the backfills: %d simulator jobs, want 103", sim.JobCount())
	}
	for _, r := range runs {
		if r.Pipeline == "events" && strings.Contains(r.Key, "/in/b.csv@") && r.Source != "backfill" {
			t.Errorf("the backfilled run of b.csv has source %q, want backfill", r.Source)
		}
	}

	var logs bytes.Buffer
	if b, err := os.ReadFile(proc.log); err == nil {
		logs.Write(b)
	}
	if strings.Contains(logs.String(), secret) || strings.Contains(logs.String(), azurite.Key) {
		t.Errorf("the webhook secret or the account key reached the log")
	}
}

// metricValue reads one sample from /metrics; 0 when it is absent. The
// series is written with its labels in the order Prometheus prints them
// (sorted by name).
func metricValue(t *testing.T, base, series string) float64 {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			if err == nil {
				return v
			}
		}
	}
	return 0
}
