package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/datastores/azurite/azuritetest"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker/brokertest"
)

// TestSoak is the chaos soak (make soak; SOAK=60s is the short form that
// make test runs). For BATCHD_SOAK it feeds one batchd process a steady
// mix of work from every kind of trigger:
//
//   - blobs uploaded to Azurite, their BlobCreated events posted to
//     /eventgrid (some twice) and the poller sweeping the same container;
//   - a cron schedule firing every 2 s with catch_up: all;
//   - JetStream messages with Nats-Msg-Ids, some redelivered past the
//     stream's duplicate window, some malformed, some carrying a SAS URL;
//   - manual runs through the API.
//
// Meanwhile the simulator injects 5xx (before and after creating the job),
// 429 with Retry-After, resets after job creation and token endpoint
// failures; batchd is SIGKILLed at random (about every 30 s, more often in
// short soaks) and restarted; the NATS server, a separate process, is
// restarted twice (once with SIGKILL).
//
// At the end every accepted event must have exactly one finished run and
// the simulator exactly one job per run: it prints lost=0 duplicate=0 with
// the counts, and fails otherwise. Then it audits everything batchd wrote
// or answered (logs, API, metrics, completion messages) for the
// simulator's tokens, the client secret, the webhook secret, the storage
// key and any SAS sig= value.
func TestSoak(t *testing.T) {
	raw := os.Getenv("BATCHD_SOAK")
	if raw == "" {
		t.Skip("the chaos soak runs with BATCHD_SOAK=<duration> (make soak)")
	}
	soak, err := time.ParseDuration(raw)
	if err != nil || soak < 20*time.Second {
		t.Fatalf("BATCHD_SOAK=%q: want a duration of at least 20s", raw)
	}
	s := newSoak(t)
	s.run(soak)
	s.check()
	s.checkSweeps()
	s.audit()
}

const (
	soakClientID     = "soak-app"
	soakClientSecret = "soak-client-secret-Qm9vZ2xl"
	soakWebhook      = "soak-webhook-secret-8c1e"
	soakSASSig       = "c29ha1NBU3NpZ25hdHVyZQ%3D%3D"
	soakStream       = "SOAK"
	soakSubject      = "soak.in"
	soakCronEvery    = 2 * time.Second
)

type soak struct {
	t   *testing.T
	dir string
	sim *jobstest.Sim
	az  *azurite.Server
	p   *batchdProc

	// The NATS: one nats-server process, or three (R3) in cluster mode
	// (BATCHD_SOAK_CLUSTER=1), where two batchd replicas run (p is the
	// first).
	cluster   *brokertest.Cluster
	clustered bool
	replicas  []*batchdProc
	// NATS nodes SIGKILLed by role, and rolling restarts done.
	nodeKills map[string]int
	rolling   int

	mu sync.Mutex
	// accepted events by pipeline: key -> the input URI its job must have
	// ("" for an event that must end rejected).
	accepted map[string]map[string]string
	// webhook deliveries answered 200, duplicate deliveries among them.
	hookOK, hookDup atomic.Int64
	// reuploads counts second versions of a blob whose event was accepted.
	reuploads atomic.Int64
	// lastBlob is the index of the last blob uploaded and accepted (-1: none).
	lastBlob atomic.Int64
	// NATS publishes acknowledged, and redeliveries past the duplicate window.
	pubOK, pubDup atomic.Int64
	// messages acknowledged that carried a SAS signature.
	sasSent atomic.Int64
	// kills, NATS restarts and unexpected exits of batchd.
	kills, natsRestarts, selfExits int
}

func newSoak(t *testing.T) *soak {
	dir := t.TempDir()
	s := &soak{t: t, dir: dir, accepted: map[string]map[string]string{}}
	s.lastBlob.Store(-1)
	s.sim = jobstest.New(t, jobstest.Options{
		Lifecycle:     procQuickLifecycle(),
		ClientSecrets: map[string]string{soakClientID: soakClientSecret},
	})
	s.az = azuritetest.Start(t)
	if _, err := azuritetest.Client(t, s.az).CreateContainer(t.Context(), "soak", nil); err != nil {
		t.Fatal(err)
	}
	s.clustered = os.Getenv("BATCHD_SOAK_CLUSTER") == "1"
	s.nodeKills = map[string]int{}
	if s.clustered {
		s.cluster = brokertest.StartCluster(t, 3)
	} else {
		s.cluster = brokertest.StartCluster(t, 1)
	}
	s.createStream()

	bin := procBuild(t, dir)
	env := procSimEnv(t, s.sim, dir)
	// A service principal, so that a client secret is there to leak.
	delete(env, "IDENTITY_ENDPOINT")
	delete(env, "IDENTITY_HEADER")
	env["BATCHD_CREDENTIAL"] = "client-secret"
	env["AZURE_TENANT_ID"] = s.sim.Tenant()
	env["AZURE_CLIENT_ID"] = soakClientID
	env["AZURE_CLIENT_SECRET"] = soakClientSecret
	env["AZURE_AUTHORITY_HOST"] = s.sim.AuthorityHost()
	env["BATCHD_NATS_URL"] = s.cluster.URL()
	if s.clustered {
		env["BATCHD_NATS_REPLICAS"] = "3"
	}
	env["BATCHD_WEBHOOK_SECRET"] = soakWebhook
	env["BATCHD_PIPELINES"] = s.writePipelines()
	// Longer than the slowest create the simulator is told to make (2.5 s):
	// reconciliation must not give up on a job that is still being created.
	env["BATCHD_RECONCILE_GRACE"] = "5s"
	// Bulk status from the ARM job list, under the same faults.
	env["BATCHD_JOB_LIST_INTERVAL"] = "1s"
	// Debug records: the poller's sweeps (checkSweeps), and more text for
	// the secrets audit.
	env["BATCHD_LOG_LEVEL"] = "debug"
	s.p = newProc(t, bin, env, "batchd")
	s.replicas = []*batchdProc{s.p}
	if s.clustered {
		s.replicas = append(s.replicas, newProc(t, bin, env, "batchd-2"))
	}
	return s
}

// soakMaxRunning is the sim endpoint's max_running_jobs in cluster mode:
// the simulator must never see more jobs running at once.
const soakMaxRunning = 6

// connect opens a client connection to the soak's NATS.
func (s *soak) connect() (*nats.Conn, jetstream.JetStream) { return s.cluster.Connect(s.t) }

// url is a replica's address: the first one outside cluster mode, any
// one in it (a killed one refuses, and the sender tries again).
func (s *soak) url() string {
	return s.replicas[rand.IntN(len(s.replicas))].url()
}

func (s *soak) writePipelines() string {
	keyFile := filepath.Join(s.dir, "azurite.key")
	if err := os.WriteFile(keyFile, []byte(azurite.Key), 0o600); err != nil {
		s.t.Fatal(err)
	}
	ws := s.sim.Workspace()
	text := fmt.Sprintf(`endpoints:
  sim:
    uri: %[1]s
    workspace: {subscription: %[2]s, resource_group: %[3]s, name: %[4]s}
  other:
    uri: %[8]s
    workspace: {subscription: %[2]s, resource_group: %[3]s, name: %[4]s}
storage:
  accounts:
    devstoreaccount1: {blob_endpoint: "%[5]s", auth: shared_key, key_file: "%[6]s"}
pipelines:
  blobs:
    endpoint: sim
    trigger:
      blob: {account: devstoreaccount1, container: soak, source: both, poll_interval: 3s}
    inputs:
      data: {type: UriFile, uri: "{{ .Blob.URL }}"}
    allow: {accounts: [devstoreaccount1], containers: [soak]}
  ticks:
    endpoint: sim
    trigger:
      cron: {schedule: "*/2 * * * * *", catch_up: all, catch_up_window: 1h}
    inputs:
      data: {type: UriFolder, uri: "azureml://locations/westeurope/workspaces/sim/data/tick-{{ .Schedule.Time.Unix }}/versions/1"}
  messages:
    endpoint: sim
    trigger:
      nats: {stream: %[7]s, consumer: batchd}
    inputs:
      data: {type: UriFile, uri: "{{ .Message.Data.uri }}"}
  manual:
    endpoint: other
    inputs:
      data: {type: UriFile, uri: "{{ .Fields.uri }}"}
`, s.sim.ScoringURI("soak"), ws.Subscription, ws.ResourceGroup, ws.Name, s.az.AccountURL(), keyFile, soakStream, s.sim.ScoringURI("soak-other"))
	if s.clustered {
		text = strings.Replace(text, "    workspace: {", fmt.Sprintf("    max_running_jobs: %d\n    workspace: {", soakMaxRunning), 1)
	}
	path := filepath.Join(s.dir, "soak-pipelines.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return path
}

// createStream makes the source stream of the messages pipeline. Its
// duplicate window is short, so that a message published again a few
// seconds later reaches batchd twice, as a redelivery would.
func (s *soak) createStream() {
	nc, js := s.connect()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(s.t.Context(), 10*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: soakStream, Subjects: []string{soakSubject}, Duplicates: time.Second, Replicas: len(s.cluster.Nodes),
	}); err != nil {
		s.t.Fatalf("create stream %s: %v", soakStream, err)
	}
}

func (s *soak) accept(pipeline, key, uri string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.accepted[pipeline] == nil {
		s.accepted[pipeline] = map[string]string{}
	}
	s.accepted[pipeline][key] = uri
}

// run feeds work for d while killing and restarting batchd and NATS, then
// stops feeding. Chaos runs on the test goroutine (procs call t.Fatal);
// the feeders run beside it and retry each event until it is acknowledged,
// as a real source would.
func (s *soak) run(d time.Duration) {
	t := s.t
	s.sim.SetFaultRate(jobstest.RouteCreate, 0.2,
		jobstest.Fault{Status: 503},
		jobstest.Fault{Status: 502, AfterHandling: true},
		jobstest.Fault{Status: 429, RetryAfter: time.Second},
		jobstest.Fault{Reset: jobstest.ResetAfter},
		jobstest.Fault{Reset: jobstest.ResetBefore},
		jobstest.Fault{Delay: 2500 * time.Millisecond}) // past BATCHD_SUBMIT_TIMEOUT: an answer that never comes
	for _, r := range []jobstest.Route{jobstest.RouteARMGet, jobstest.RouteGet, jobstest.RouteARMList} {
		s.sim.SetFaultRate(r, 0.1, jobstest.Fault{Status: 503}, jobstest.Fault{Status: 429, RetryAfter: time.Second})
	}
	// Tokens are fetched about once per process start: fail them often.
	s.sim.SetFaultRate(jobstest.RouteToken, 0.4, jobstest.Fault{Status: 500}, jobstest.Fault{Status: 503})
	if s.clustered {
		// Replicas start together, on a cluster with no batchd stream yet.
		for _, p := range s.replicas {
			p.launch()
		}
		for _, p := range s.replicas {
			if err := p.waitReady(90 * time.Second); err != nil {
				t.Fatal(err)
			}
		}
	} else {
		s.p.start()
	}

	start := time.Now()
	feedCtx, stopFeeding := context.WithDeadline(t.Context(), start.Add(d))
	defer stopFeeding()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for _, feed := range []func(context.Context) error{s.feedBlobs, s.feedMessages, s.feedManual} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := feed(feedCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
				errs <- err
			}
		}()
	}

	if s.clustered {
		s.clusterChaos(start, d)
	} else {
		s.singleChaos(start, d)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("feeding: %v", err)
	}
	for _, p := range s.replicas {
		if p.exited() {
			s.selfExits++
			p.start()
		}
	}
	t.Logf("fed for %s: %d kills of batchd, %d NATS restarts, NATS nodes killed by role %v, %d rolling restarts, %d unexpected exits",
		d, s.kills, s.natsRestarts, s.nodeKills, s.rolling, s.selfExits)
}

// singleChaos SIGKILLs batchd about every 30 s (every d/5 in short soaks)
// and restarts the NATS server at a third and two thirds of the way.
func (s *soak) singleChaos(start time.Time, d time.Duration) {
	t := s.t
	every := min(30*time.Second, d/5)
	natsAt := []time.Time{start.Add(d / 3), start.Add(2 * d / 3)}
	nextKill := start.Add(jitter(every))
	for time.Now().Before(start.Add(d)) {
		if s.p.exited() {
			s.selfExits++
			t.Logf("batchd exited by itself; restarting it")
			s.p.start()
		}
		now := time.Now()
		switch {
		case len(natsAt) > 0 && now.After(natsAt[0]):
			sig := syscall.SIGTERM
			if len(natsAt) == 1 {
				sig = syscall.SIGKILL
			}
			natsAt = natsAt[1:]
			nd := s.cluster.Nodes[0]
			nd.Stop(sig)
			nd.Start(t)
			s.cluster.WaitReady(t, time.Minute)
			s.natsRestarts++
		case now.After(nextKill):
			s.p.stop(syscall.SIGKILL)
			s.kills++
			s.p.start()
			nextKill = time.Now().Add(jitter(every))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// soakLeaderRoles are the NATS nodes the cluster chaos SIGKILLs in turn:
// the JetStream meta leader and the leaders of the streams and buckets
// batchd lives on.
var soakLeaderRoles = []string{"meta", "KV_" + orchestrator.BucketRuns, orchestrator.StreamIntake,
	orchestrator.StreamTrack, "KV_" + orchestrator.BucketTriggers, "KV_" + orchestrator.BucketAdmission}

// clusterChaos alternates, about every 20 s (d/6 in short soaks): SIGKILL
// and restart of a batchd replica, and SIGKILL of the NATS node leading
// the next role of soakLeaderRoles (found through the monitoring endpoint
// and stream info), restarted half an interval later. Two thirds of the
// way it does a rolling restart: each NATS node in turn (SIGTERM, start,
// wait until the cluster is ready), then each replica (SIGTERM, start).
func (s *soak) clusterChaos(start time.Time, d time.Duration) {
	t := s.t
	_, js := s.cluster.Connect(t)
	every := min(20*time.Second, d/6)
	rollAt := start.Add(2 * d / 3)
	next := start.Add(jitter(every))
	var down *brokertest.Node
	var downUntil time.Time
	for step := 0; time.Now().Before(start.Add(d)); time.Sleep(50 * time.Millisecond) {
		for _, p := range s.replicas {
			if p.exited() {
				s.selfExits++
				t.Logf("a replica exited by itself; restarting it")
				p.start()
			}
		}
		now := time.Now()
		switch {
		case down != nil && now.After(downUntil):
			down.Start(t)
			s.cluster.WaitReady(t, 2*time.Minute)
			s.natsRestarts++
			down = nil
		case down == nil && s.rolling == 0 && now.After(rollAt):
			for _, nd := range s.cluster.Nodes {
				nd.Stop(syscall.SIGTERM)
				nd.Start(t)
				s.cluster.WaitReady(t, 2*time.Minute)
				s.natsRestarts++
			}
			for _, p := range s.replicas {
				if code := p.stop(syscall.SIGTERM); code != 0 {
					t.Errorf("rolling restart: a replica's exit code after SIGTERM = %d, want 0", code)
				}
				p.start()
			}
			s.rolling++
			next = time.Now().Add(jitter(every))
		case down == nil && now.After(next):
			if step%2 == 0 {
				p := s.replicas[rand.IntN(len(s.replicas))]
				p.stop(syscall.SIGKILL)
				s.kills++
				p.start()
			} else {
				role := soakLeaderRoles[(step/2)%len(soakLeaderRoles)]
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				name := ""
				if role == "meta" {
					name = s.cluster.MetaLeader()
				} else {
					name = brokertest.StreamLeader(ctx, js, role)
				}
				cancel()
				down = s.cluster.Node(name)
				if down == nil {
					down = s.cluster.Nodes[rand.IntN(len(s.cluster.Nodes))]
					role += " (leader unknown: a random node)"
				}
				down.Stop(syscall.SIGKILL)
				s.nodeKills[role]++
				downUntil = time.Now().Add(every / 2)
			}
			step++
			next = time.Now().Add(jitter(every))
		}
	}
	if down != nil {
		down.Start(t)
		s.cluster.WaitReady(t, 2*time.Minute)
		s.natsRestarts++
	}
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// feedBlobs uploads a blob every 400 ms and posts its BlobCreated event,
// every fourth one twice. Every eighth blob is uploaded again once its
// first event is in (a new version: same URL, new eTag, so two runs and two
// jobs on one input URI, which a reconciliation matching by URI alone
// would confuse). The poller sweeps the same container, so every uploaded
// version is an accepted event whether or not its delivery got a 200
// before a kill.
func (s *soak) feedBlobs(ctx context.Context) error {
	client := azuritetest.Client(s.t, s.az)
	return every(ctx, 400*time.Millisecond, func(i int) error {
		name := fmt.Sprintf("in/%05d.csv", i)
		versions := 1
		if i%8 == 3 {
			versions = 2
		}
		for v := range versions {
			body := fmt.Sprintf("x,y\n1,%d\n", v)
			up, err := client.UploadBuffer(context.WithoutCancel(ctx), "soak", name, []byte(body), nil)
			if err != nil {
				return fmt.Errorf("upload %s: %w", name, err)
			}
			url := s.az.AccountURL() + "soak/" + name
			event := fmt.Sprintf(`[{"topic":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
"subject":"/blobServices/default/containers/soak/blobs/%s","eventType":"Microsoft.Storage.BlobCreated",
"eventTime":%q,"id":"soak-%d-%d","dataVersion":"","metadataVersion":"1",
"data":{"api":"PutBlob","eTag":%q,"contentType":"text/csv","contentLength":%d,"blobType":"BlockBlob",
"url":%q,"sequencer":"%048d"}}]`, name, time.Now().UTC().Format(time.RFC3339Nano), i, v, string(*up.ETag), len(body), url, (i+1)*10+v)
			deliveries := 1
			if i%4 == 0 {
				deliveries = 2
			}
			for k := range deliveries {
				if err := s.post(ctx, "/eventgrid?code="+soakWebhook, event); err != nil {
					return err
				}
				if k == 0 {
					// Accepted only once Event Grid would have its 200: a
					// delivery that never got one promised nothing.
					s.accept("blobs", url+"@"+strings.Trim(string(*up.ETag), `"`), url)
				}
				s.hookOK.Add(1)
				if k > 0 {
					s.hookDup.Add(1)
				}
			}
			if v > 0 {
				s.reuploads.Add(1)
			}
			s.lastBlob.Store(int64(i))
		}
		return nil
	})
}

// feedMessages publishes a message every 200 ms until its PubAck. Every
// 10th is published again 2 s later (past the 1 s duplicate window, so
// batchd sees it twice), every 25th is not JSON (it must end rejected),
// and one in 50 names a URL with a SAS signature (rejected, and the
// signature must never show).
func (s *soak) feedMessages(ctx context.Context) error {
	nc, js := s.connect()
	defer nc.Close()
	type later struct {
		at  time.Time
		msg *nats.Msg
	}
	var again []later
	publish := func(m *nats.Msg) error {
		for {
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			_, err := js.PublishMsg(pctx, m)
			cancel()
			if err == nil {
				return nil
			}
			select {
			case <-ctx.Done():
				// Keep trying after the deadline only for a message already
				// counted; the caller counts after success.
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return every(ctx, 200*time.Millisecond, func(i int) error {
		id := fmt.Sprintf("msg-%05d", i)
		m := nats.NewMsg(soakSubject)
		m.Header.Set(nats.MsgIdHdr, id)
		uri := procInputURI(id)
		switch {
		case i%25 == 24:
			m.Data = []byte(`{"uri": not json`)
			uri = ""
		case i%50 == 12:
			m.Data = fmt.Appendf(nil, `{"uri": %q}`, s.az.AccountURL()+"soak/missing.csv?sv=2025-01-05&sr=b&sp=r&sig="+soakSASSig)
			uri = ""
		default:
			m.Data = fmt.Appendf(nil, `{"uri": %q}`, uri)
		}
		if err := publish(m); err != nil {
			return err
		}
		s.pubOK.Add(1)
		if bytes.Contains(m.Data, []byte(soakSASSig)) {
			s.sasSent.Add(1)
		}
		s.accept("messages", "nats-msg-id:"+id, uri)
		if i%10 == 0 {
			again = append(again, later{time.Now().Add(2 * time.Second), m})
		}
		for len(again) > 0 && time.Now().After(again[0].at) {
			if err := publish(again[0].msg); err != nil {
				return err
			}
			s.pubOK.Add(1)
			s.pubDup.Add(1)
			again = again[1:]
		}
		return nil
	})
}

// feedManual asks for a manual run every 500 ms until it is acknowledged.
func (s *soak) feedManual(ctx context.Context) error {
	return every(ctx, 500*time.Millisecond, func(i int) error {
		key := fmt.Sprintf("manual-%05d", i)
		uri := procInputURI(key)
		if b := s.lastBlob.Load(); i%5 == 0 && b >= 0 {
			// The same input as a run of the blobs pipeline (an uploaded
			// blob), on another endpoint: neither may adopt the other's job.
			uri = s.az.AccountURL() + fmt.Sprintf("soak/in/%05d.csv", b)
		}
		if err := s.post(ctx, "/api/v1/pipelines/manual/runs", fmt.Sprintf(`{"key":%q,"fields":{"uri":%q}}`, key, uri)); err != nil {
			return err
		}
		s.accept("manual", key, uri)
		return nil
	})
}

// post sends body until batchd answers 200 or 202. A 4xx other than a
// daemon that is not ready is a bug, not chaos.
func (s *soak) post(ctx context.Context, path, body string) error {
	for {
		req, err := http.NewRequestWithContext(ctx, "POST", s.url()+path, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case resp.StatusCode == 200 || resp.StatusCode == 202:
				return nil
			case resp.StatusCode >= 400 && resp.StatusCode < 500 && resp.StatusCode != 409 && resp.StatusCode != 429:
				return fmt.Errorf("POST %s: %d %s", path, resp.StatusCode, b)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// check waits for every run to finish and compares the ledger and the
// simulator with what was accepted.
func (s *soak) check() {
	t := s.t
	s.sim.ClearFaults() // the reckoning, not more chaos
	runs := s.settle(4 * time.Minute)
	// A run whose resubmission was ambiguous too waits for an operator
	// (reconciliation submits once more, never twice). Act as one, as the
	// README says: adopt the job the workspace shows, else retry.
	operated := 0
	for _, r := range runs {
		if r.State != orchestrator.StateUnknown || !strings.Contains(r.Reason, "an operator must") {
			continue
		}
		operated++
		full, err := procGetRun(s.p.url(), r.ID)
		if err != nil || full.Request == nil {
			t.Fatalf("run %s: %v", r.ID, err)
		}
		// The run's job: on its input and endpoint, created after the run,
		// tracked by no other run (inputs are not unique in the soak).
		tracked := map[string]bool{}
		for _, o := range runs {
			if o.Job != nil && o.ID != r.ID {
				tracked[o.Job.Name] = true
			}
		}
		endpoint := "soak"
		if r.Pipeline == "manual" {
			endpoint = "soak-other"
		}
		var found []string
		for _, j := range s.sim.Jobs() {
			if j.Inputs["data"].URI == full.Request.Inputs["data"].URI && j.Endpoint == endpoint &&
				!j.CreatedAt.Before(full.Created) && !tracked[j.Name] {
				found = append(found, j.Name)
			}
		}
		path, body := "/retry", `{"reason":"soak operator: no job in the workspace"}`
		if len(found) > 0 {
			path, body = "/resolve", fmt.Sprintf(`{"job":%q,"reason":"soak operator: adopting the job the workspace shows"}`, found[0])
		}
		if err := s.post(t.Context(), "/api/v1/runs/"+r.ID+path, body); err != nil {
			t.Errorf("operator %s on run %s: %v", path, r.ID, err)
		}
	}
	if operated > 0 {
		runs = s.settle(4 * time.Minute)
	}

	byKey := map[string]map[string]orchestrator.RunSummary{}
	var cronSlots []int64
	states := map[orchestrator.State]int{}
	var notFinished []string
	for _, r := range runs {
		states[r.State]++
		if !r.State.Terminal() {
			notFinished = append(notFinished, fmt.Sprintf("%s %s %s (%s)", r.Pipeline, r.Key, r.State, r.Reason))
		}
		if byKey[r.Pipeline] == nil {
			byKey[r.Pipeline] = map[string]orchestrator.RunSummary{}
		}
		if _, dup := byKey[r.Pipeline][r.Key]; dup {
			t.Errorf("two runs for %s key %s", r.Pipeline, r.Key)
		}
		byKey[r.Pipeline][r.Key] = r
		if r.Pipeline == "ticks" {
			at, err := time.Parse(time.RFC3339Nano, strings.TrimPrefix(r.Key, "slot:"))
			if err != nil {
				t.Errorf("cron run key %q: %v", r.Key, err)
				continue
			}
			cronSlots = append(cronSlots, at.Unix())
		}
	}

	jobsByURI := map[string][]string{}
	for _, j := range s.sim.Jobs() {
		u := j.Inputs["data"].URI
		jobsByURI[u] = append(jobsByURI[u], j.Name)
	}
	lost, duplicate, wrong := 0, 0, 0
	history := func(r orchestrator.RunSummary) string {
		full, err := procGetRun(s.p.url(), r.ID)
		if err != nil {
			return err.Error()
		}
		var b strings.Builder
		for _, h := range full.History {
			fmt.Fprintf(&b, "\n\t%s %s: %s", h.At.Format("15:04:05.000"), h.State, h.Reason)
		}
		return b.String()
	}
	// Inputs are not unique (re-uploaded blobs): an input has as many jobs
	// as accepted events name it, each tracked by one run.
	wantJobs := map[string]int{}
	for _, keys := range s.accepted {
		for _, uri := range keys {
			if uri != "" {
				wantJobs[uri]++
			}
		}
	}
	owner := map[string]string{} // job name -> run id
	checkRun := func(pipeline, key, uri string) {
		r, ok := byKey[pipeline][key]
		switch {
		case !ok:
			lost++
			t.Errorf("lost: %s event %s has no run", pipeline, key)
			return
		case uri == "":
			if r.State != orchestrator.StateRejected {
				wrong++
				t.Errorf("%s event %s ended %s, want rejected:%s", pipeline, key, r.State, history(r))
			}
			return
		case r.State != orchestrator.StateCompleted:
			wrong++
			t.Errorf("%s run %s (%s) ended %s, want completed:%s", pipeline, r.ID, key, r.State, history(r))
		}
		got := jobsByURI[uri]
		switch {
		case len(got) > wantJobs[uri]:
			t.Errorf("duplicate: %d events on input %s made %d jobs %v (this one, %s %s:%s)", wantJobs[uri], uri, len(got), got, pipeline, key, history(r))
		case len(got) == 0 && r.State == orchestrator.StateCompleted:
			t.Errorf("%s run %s completed without a job in the simulator", pipeline, key)
		case r.Job == nil || !slices.Contains(got, r.Job.Name):
			t.Errorf("%s run %s tracks job %v, none of the jobs on its input %v:%s", pipeline, key, r.Job, got, history(r))
		case owner[r.Job.Name] != "":
			wrong++
			t.Errorf("%s run %s tracks job %s, which run %s tracks too: a reconciliation adopted another run's job:%s",
				pipeline, key, r.Job.Name, owner[r.Job.Name], history(r))
		default:
			owner[r.Job.Name] = r.ID
		}
	}
	events := 0
	for pipeline, keys := range s.accepted {
		for key, uri := range keys {
			events++
			checkRun(pipeline, key, uri)
		}
	}
	// Cron: every slot from the first to the last fired must have a run
	// (catch_up: all brings back the ones a kill missed), each with one job.
	sort.Slice(cronSlots, func(i, j int) bool { return cronSlots[i] < cronSlots[j] })
	if len(cronSlots) < 3 {
		t.Errorf("only %d cron slots fired", len(cronSlots))
	} else {
		step := int64(soakCronEvery / time.Second)
		for at := cronSlots[0]; at <= cronSlots[len(cronSlots)-1]; at += step {
			key := "slot:" + time.Unix(at, 0).UTC().Format(time.RFC3339Nano)
			events++
			uri := fmt.Sprintf("azureml://locations/westeurope/workspaces/sim/data/tick-%d/versions/1", at)
			wantJobs[uri]++
			checkRun("ticks", key, uri)
		}
	}
	// An input has one job per accepted event that names it: any more,
	// accepted or not, is a duplicate submission.
	for uri, names := range jobsByURI {
		duplicate += max(0, len(names)-max(1, wantJobs[uri]))
	}
	if len(notFinished) > 0 {
		t.Errorf("%d runs not finished: %v", len(notFinished), notFinished[:min(10, len(notFinished))])
		s.diagnoseAdmission(runs)
	}
	c := s.sim.Counts()
	fmt.Printf("soak: lost=%d duplicate=%d wrong_outcome=%d events=%d runs=%d jobs=%d states=%v "+
		"operator_actions=%d webhook_200=%d (dup %d, reuploads %d) nats_acked=%d (redelivered %d) cron_slots=%d kills=%d nats_restarts=%d unexpected_exits=%d "+
		"posts=%d status_reads=%d arm_lists=%d token_requests=%d\n",
		lost, duplicate, wrong, events, len(runs), s.sim.JobCount(), states, operated,
		s.hookOK.Load(), s.hookDup.Load(), s.reuploads.Load(), s.pubOK.Load(), s.pubDup.Load(), len(cronSlots),
		s.kills, s.natsRestarts, s.selfExits,
		c[jobstest.RouteCreate], c[jobstest.RouteGet]+c[jobstest.RouteARMGet], c[jobstest.RouteARMList], c[jobstest.RouteToken])
	if lost > 0 || duplicate > 0 || wrong > 0 {
		t.Errorf("lost=%d duplicate=%d wrong_outcome=%d, want all 0", lost, duplicate, wrong)
	}
	if s.clustered {
		peak := s.sim.PeakRunning("soak")
		nodeKills := 0
		for _, n := range s.nodeKills {
			nodeKills += n
		}
		fmt.Printf("soak: cluster: replicas=%d replica_kills=%d nats_node_kills=%d by_role=%v nats_restarts=%d rolling_restarts=%d peak_running=%d max_running_jobs=%d status_reads=%d\n",
			len(s.replicas), s.kills, nodeKills, s.nodeKills, s.natsRestarts, s.rolling, peak, soakMaxRunning,
			c[jobstest.RouteGet]+c[jobstest.RouteARMGet])
		if peak > soakMaxRunning {
			t.Errorf("the simulator saw %d jobs running at once on the endpoint, more than max_running_jobs %d", peak, soakMaxRunning)
		}
		if s.kills == 0 || nodeKills == 0 || s.rolling != 1 {
			t.Errorf("chaos did not happen: %d replica kills, %d NATS node kills, %d rolling restarts", s.kills, nodeKills, s.rolling)
		}
	} else if s.kills == 0 || s.natsRestarts != 2 {
		t.Errorf("chaos did not happen: %d kills, %d NATS restarts", s.kills, s.natsRestarts)
	}
	for _, p := range s.replicas {
		if code := p.stop(syscall.SIGTERM); code != 0 {
			t.Errorf("batchd exit code after SIGTERM = %d, want 0", code)
		}
	}
}

// allHaveRuns says whether every accepted event has a run.
func (s *soak) allHaveRuns(runs []orchestrator.RunSummary) bool {
	have := map[string]bool{}
	for _, r := range runs {
		have[r.Pipeline+" "+r.Key] = true
	}
	for pipeline, keys := range s.accepted {
		for key := range keys {
			if !have[pipeline+" "+key] {
				return false
			}
		}
	}
	return true
}

// settle waits until every accepted event has a run and every run is
// finished or waits for an operator, or until d has passed.
func (s *soak) settle(d time.Duration) []orchestrator.RunSummary {
	var runs []orchestrator.RunSummary
	// A run unfinished at every look since it was first seen so: the
	// cron keeps firing, so a timed-out settle names the runs that held
	// it (more than 30 s), not just the newest tick.
	since := map[string]time.Time{}
	for deadline := time.Now().Add(d); ; time.Sleep(250 * time.Millisecond) {
		var err error
		if runs, err = procListAll(s.p.url()); err == nil && settled(runs) && s.allHaveRuns(runs) {
			return runs
		}
		now := time.Now()
		open := map[string]bool{}
		for _, r := range runs {
			if !r.State.Terminal() {
				open[r.ID] = true
				if _, ok := since[r.ID]; !ok {
					since[r.ID] = now
				}
			}
		}
		for id := range since {
			if !open[id] {
				delete(since, id)
			}
		}
		if now.After(deadline) {
			break
		}
	}
	for _, r := range runs {
		if at, ok := since[r.ID]; ok && time.Since(at) > 30*time.Second {
			s.t.Logf("settle timed out: run %s (%s %s) unfinished for %s: %s (%s)", r.ID, r.Pipeline, r.Key,
				time.Since(at).Round(time.Second), r.State, r.Reason)
		}
	}
	return runs
}

func settled(runs []orchestrator.RunSummary) bool {
	for _, r := range runs {
		if !r.State.Terminal() && (r.State != orchestrator.StateUnknown || !strings.Contains(r.Reason, "an operator must")) {
			return false
		}
	}
	return len(runs) > 0
}

// sasSignature finds a SAS signature value that was not redacted.
// It takes no word boundary before "sig": in JSON, "&sig=" is often
// written "\u0026sig=".
var sasSignature = regexp.MustCompile(`(?i)sig(=|%3D)([^&;\s"'<>\[\\]{4,})`)

// diagnoseAdmission logs, for a run left waiting, who holds the endpoints'
// slots (and in what state the ledger has them), and what admission repair
// said in the replicas' logs.
func (s *soak) diagnoseAdmission(runs []orchestrator.RunSummary) {
	t := s.t
	state := map[string]string{}
	for _, r := range runs {
		state[r.ID] = string(r.State)
	}
	nc, js := s.connect()
	defer nc.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, orchestrator.BucketAdmission)
	if err != nil {
		t.Logf("admission bucket: %v", err)
		return
	}
	keys, err := kv.Keys(ctx)
	if err != nil {
		t.Logf("admission keys: %v", err)
	}
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Logf("admission %s: %v", k, err)
			continue
		}
		var v struct {
			Slots map[string]time.Time `json:"slots"`
		}
		_ = json.Unmarshal(e.Value(), &v)
		for id, at := range v.Slots {
			t.Logf("admission %s: slot held by run %s since %s, run state %q", k, id, at.Format(time.StampMilli), state[id])
		}
	}
	for _, p := range s.replicas {
		b, err := os.ReadFile(p.log)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			if strings.Contains(line, `"msg":"admission repair`) || strings.Contains(line, "test harness:") {
				t.Logf("%s: %s", filepath.Base(p.log), strings.TrimSpace(line))
			}
		}
	}
}

// checkSweeps fails if two replicas swept the blob container at once.
// Each replica's log (JSON, debug) has "sweep started" and then "sweep
// done" or "sweep incomplete…" for every sweep; a process that died in a
// sweep ends it at the harness's next mark ("process exited" or
// "process starting"), a bound no later than its successor's start.
func (s *soak) checkSweeps() {
	t := s.t
	type span struct {
		from, to time.Time
		who      string
	}
	var spans []span
	for _, p := range s.replicas {
		f, err := os.Open(p.log)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
		var open time.Time
		closeAt := func(at time.Time) {
			if !open.IsZero() {
				spans = append(spans, span{open, at, filepath.Base(p.log)})
				open = time.Time{}
			}
		}
		for sc.Scan() {
			var rec struct {
				Time     time.Time `json:"time"`
				Msg      string    `json:"msg"`
				Pipeline string    `json:"pipeline"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				continue
			}
			switch {
			case strings.HasPrefix(rec.Msg, "test harness:"):
				closeAt(rec.Time)
			case rec.Pipeline != "blobs":
			case rec.Msg == "sweep started":
				closeAt(rec.Time) // cannot happen: a sweep ends before the next
				open = rec.Time
			case rec.Msg == "sweep done" || strings.HasPrefix(rec.Msg, "sweep incomplete"):
				closeAt(rec.Time)
			}
		}
		closeAt(time.Now())
		if err := errors.Join(sc.Err(), f.Close()); err != nil {
			t.Fatal(err)
		}
	}
	if len(spans) == 0 {
		t.Fatalf("no poller sweeps in the replicas' logs: the sweep check would prove nothing")
	}
	slices.SortFunc(spans, func(a, b span) int { return a.from.Compare(b.from) })
	overlaps := 0
	for i, a := range spans {
		for _, b := range spans[i+1:] {
			if !b.from.Before(a.to) {
				break
			}
			if b.who != a.who {
				overlaps++
				t.Errorf("two replicas swept the container at once: %s %s–%s and %s %s–%s",
					a.who, a.from.Format(time.StampMilli), a.to.Format(time.StampMilli),
					b.who, b.from.Format(time.StampMilli), b.to.Format(time.StampMilli))
			}
		}
	}
	who := map[string]int{}
	for _, sp := range spans {
		who[sp.who]++
	}
	t.Logf("sweeps: %d (by replica %v), overlapping %d", len(spans), who, overlaps)
}

// audit scans every log, API answer, metric and completion message for a
// secret. It runs after check, with batchd stopped, so it starts it once
// more to read the API and metrics.
func (s *soak) audit() {
	t := s.t
	s.p.start()
	defer s.p.stop(syscall.SIGTERM)
	type section struct {
		what string
		text string
	}
	var corpus []section
	size := 0
	add := func(what string, b []byte) {
		corpus = append(corpus, section{what, string(b)})
		size += len(b)
	}
	logs := []string{}
	for _, p := range s.replicas {
		logs = append(logs, p.log)
	}
	for _, nd := range s.cluster.Nodes {
		add("nats log "+nd.Name, []byte(nd.Log()))
	}
	for _, p := range logs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		add(p, b)
	}
	get := func(path string) []byte {
		resp, err := http.Get(s.p.url() + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return b
	}
	add("/metrics", get("/metrics"))
	add("/api/v1/pipelines", get("/api/v1/pipelines"))
	add("/", get("/"))
	runs, err := procListAll(s.p.url())
	if err != nil {
		t.Fatal(err)
	}
	// Every run's API record and status page, not only the newest ones
	// the front page happens to show when the soak ends.
	for _, r := range runs {
		add("/api/v1/runs/"+r.ID, get("/api/v1/runs/"+r.ID))
		add("/runs/"+r.ID, get("/runs/"+r.ID))
	}
	nc, js := s.connect()
	defer nc.Close()
	completions := 0
	if cons, err := js.OrderedConsumer(t.Context(), "BATCHD_RUNS", jetstream.OrderedConsumerConfig{}); err != nil {
		t.Errorf("read completion messages: %v", err)
	} else {
		for {
			batch, err := cons.FetchNoWait(500)
			if err != nil {
				t.Fatalf("fetch completion messages: %v", err)
			}
			n := 0
			for m := range batch.Messages() {
				add("completion "+m.Subject(), m.Data())
				n++
			}
			completions += n
			if n == 0 {
				break
			}
		}
	}
	if completions == 0 {
		t.Errorf("no completion messages to audit")
	}

	secrets := map[string]string{
		"client secret":  soakClientSecret,
		"webhook secret": soakWebhook,
		"storage key":    azurite.Key,
		"SAS signature":  soakSASSig,
	}
	for i, tok := range s.sim.IssuedTokens() {
		secrets["simulator token "+strconv.Itoa(i)] = tok
	}
	if s.sasSent.Load() == 0 {
		t.Errorf("no message carried a SAS signature: the audit would prove nothing about them")
	}
	hits := 0
	for _, sec := range corpus {
		for what, secret := range secrets {
			if i := strings.Index(sec.text, secret); i >= 0 {
				hits++
				t.Errorf("secrets audit: the %s appears in %s: …%s…", what, sec.what, context100(sec.text, i))
			}
		}
		for _, m := range sasSignature.FindAllStringIndex(sec.text, -1) {
			hits++
			t.Errorf("secrets audit: a SAS signature appears in %s: …%s…", sec.what, context100(sec.text, m[0]))
		}
	}
	fmt.Printf("soak: secrets audit: %d hits in %d bytes (%d secrets, %d runs, %d completion messages, logs, metrics)\n",
		hits, size, len(secrets), len(runs), completions)
}

func context100(s string, i int) string {
	return s[max(0, i-60):min(len(s), i+40)]
}

// exited says whether the process ended without being stopped.
func (p *batchdProc) exited() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case err := <-p.done:
		p.t.Logf("batchd exited: %v", err)
		p.cmd = nil
		return true
	default:
		return false
	}
}

// every calls f(0), f(1), … once per tick of d until ctx ends (it returns
// ctx's error) or f returns an error.
func every(ctx context.Context, d time.Duration, f func(i int) error) error {
	tick := time.NewTicker(d)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if err := f(i); err != nil {
			return err
		}
	}
}
