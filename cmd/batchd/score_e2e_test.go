package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/cmd/internal/daemon"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
)

// onlineDaemon is `batchd serve` in-process, wired to the simulator's
// online endpoint "ep" (aad_token), with one pipeline "classify" answering
// core NATS requests on classify.requests (the body is the request) and
// one "shaped" on shaped.requests (a JSON template around a message field)
// through the embedded NATS, which listens on loopback for the test's
// client.
type onlineDaemon struct {
	sim  *jobstest.Sim
	nc   *nats.Conn
	base string
	// ownNATS is the daemon's own (embedded) NATS, which the client may
	// not be on.
	ownNATS, ownToken string
	stateDir          string
	logs              *serveLogBuffer
	stop              func()
}

func startOnlineDaemon(tb testing.TB, ep jobstest.OnlineOptions, extraEnv map[string]string) *onlineDaemon {
	tb.Helper()
	return startOnlineDaemonOn(tb, ep, extraEnv, "")
}

// startOnlineDaemonOn is startOnlineDaemon with the trigger on the NATS
// server at triggerURL (the trigger's url:), where the test's client then
// sends its requests; "" is the daemon's own NATS.
func startOnlineDaemonOn(tb testing.TB, ep jobstest.OnlineOptions, extraEnv map[string]string, triggerURL string) *onlineDaemon {
	tb.Helper()
	sim := jobstest.New(tb, jobstest.Options{RecordBodies: true})
	if err := sim.AddOnlineEndpoint("ep", ep); err != nil {
		tb.Fatal(err)
	}
	useSimInProcess(tb, sim)

	dir := tb.TempDir()
	pf := filepath.Join(dir, "pipelines.yaml")
	yaml := fmt.Sprintf(`endpoints:
  ep:
    kind: online
    uri: %[1]s
    timeout: 10s
pipelines:
  classify:
    endpoint: ep
    trigger:
      nats: {subject: classify.requests, queue: batchd%[2]s}
    request: '{{ .Message.Body }}'
    timeout: 20s
  shaped:
    endpoint: ep
    trigger:
      nats: {subject: shaped.requests, queue: batchd%[2]s}
    request: '{"text": {{ json .Message.Data.text }}, "lang": "en"}'
    timeout: 20s
`, sim.OnlineScoringURI("ep"), map[bool]string{true: `, url: "` + triggerURL + `"`}[triggerURL != ""])
	if err := os.WriteFile(pf, []byte(yaml), 0o644); err != nil {
		tb.Fatal(err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	addr, natsAddr := procFreeAddr(tb), procFreeAddr(tb)
	env := map[string]string{
		"BATCHD_PIPELINES":    pf,
		"BATCHD_STATE_DIR":    filepath.Join(dir, "state"),
		"BATCHD_HTTP_ADDR":    addr,
		"BATCHD_NATS_LISTEN":  natsAddr,
		"BATCHD_CREDENTIAL":   "managed-identity",
		"AZURE_CLIENT_ID":     "online-" + hex.EncodeToString(b), // azidentity's MI cache is process-wide
		"BATCHD_ARM_ENDPOINT": sim.ARMEndpoint(),
		"BATCHD_WORKERS":      "32",
		"BATCHD_LOG_LEVEL":    "info",
	}
	for k, v := range extraEnv {
		env[k] = v
	}
	logs := &serveLogBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, &cli{stdout: &bytes.Buffer{}, stderr: logs, env: config.MapEnv(env)}, []string{"serve"})
	}()
	d := &onlineDaemon{sim: sim, base: "http://" + addr, logs: logs}
	var once sync.Once
	d.stop = func() {
		once.Do(func() {
			if d.nc != nil {
				d.nc.Close()
			}
			cancel()
			select {
			case code := <-done:
				if code != exitOK {
					tb.Errorf("serve exit code %d\n%s", code, logs.String())
				}
			case <-time.After(60 * time.Second):
				tb.Errorf("serve did not stop within 60s")
			}
		})
	}
	tb.Cleanup(d.stop)
	procWaitFor(tb, 30*time.Second, "serve to be ready", func() bool {
		resp, err := http.Get(d.base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	// The daemon's listener takes only clients with its token.
	token, err := os.ReadFile(daemon.ListenTokenFile(env["BATCHD_STATE_DIR"]))
	if err != nil {
		tb.Fatalf("the NATS listener's token: %v", err)
	}
	d.ownNATS, d.ownToken, d.stateDir = "nats://"+natsAddr, strings.TrimSpace(string(token)), env["BATCHD_STATE_DIR"]
	clientURL, clientOpts := d.ownNATS, []nats.Option{nats.Name("online-e2e"), nats.Token(d.ownToken)}
	if triggerURL != "" {
		clientURL, clientOpts = triggerURL, clientOpts[:1]
	}
	nc, err := nats.Connect(clientURL, clientOpts...)
	if err != nil {
		tb.Fatalf("connect to the daemon's NATS: %v\n%s", err, logs.String())
	}
	d.nc = nc
	// The trigger subscribes as it starts: probe until a request is
	// answered.
	procWaitFor(tb, 30*time.Second, "the NATS trigger to answer", func() bool {
		_, err := d.request(context.Background(), "probe-"+hex.EncodeToString(b), `{"probe":true}`, 5*time.Second)
		return err == nil
	})
	return d
}

// request sends one core NATS request with a Nats-Msg-Id and returns the
// reply.
func (d *onlineDaemon) request(ctx context.Context, msgID, body string, timeout time.Duration) (*nats.Msg, error) {
	m := nats.NewMsg("classify.requests")
	m.Data = []byte(body)
	if msgID != "" {
		m.Header.Set(jetstream.MsgIDHeader, msgID)
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return d.nc.RequestMsgWithContext(rctx, m)
}

// 1,000 core NATS requests through batchd to the simulator: every reply
// matched to its request, none lost; then duplicates of their Nats-Msg-Ids,
// answered from the runs and scored once (the simulator's counts). The
// endpoint caps its concurrency, so some requests meet 429s on the way.
func TestOnlineRequestReplyEndToEnd(t *testing.T) {
	const n, dups = 1000, 200
	d := startOnlineDaemon(t, jobstest.OnlineOptions{MaxConcurrent: 4, RetryAfter: 5 * time.Millisecond, Latency: 2 * time.Millisecond}, nil)
	scoredBefore := d.sim.OnlineScored("ep") // the probe

	type result struct {
		i    int
		msg  *nats.Msg
		err  error
		took time.Duration
	}
	send := func(ids []int) []result {
		results := make([]result, len(ids))
		var wg sync.WaitGroup
		sem := make(chan struct{}, 64)
		for k, i := range ids {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				start := time.Now()
				m, err := d.request(t.Context(), fmt.Sprintf("req-%d", i), fmt.Sprintf(`{"i":%d,"text":"request number %d"}`, i, i), 60*time.Second)
				results[k] = result{i: i, msg: m, err: err, took: time.Since(start)}
			})
		}
		wg.Wait()
		return results
	}
	check := func(rs []result, duplicate bool) {
		t.Helper()
		failures := 0
		for _, r := range rs {
			want := fmt.Sprintf(`{"deployment":"blue","input":{"i":%d,"text":"request number %d"}}`, r.i, r.i)
			switch {
			case r.err != nil:
				t.Errorf("request %d: %v", r.i, r.err)
			case string(r.msg.Data) != want || r.msg.Header.Get(orchestrator.HeaderState) != "completed":
				t.Errorf("request %d answered %q (state %q), want %s", r.i, r.msg.Data, r.msg.Header.Get(orchestrator.HeaderState), want)
			case duplicate != (r.msg.Header.Get(orchestrator.HeaderDuplicate) == "true"):
				t.Errorf("request %d: duplicate header %q, want duplicate=%v", r.i, r.msg.Header.Get(orchestrator.HeaderDuplicate), duplicate)
			default:
				continue
			}
			if failures++; failures > 10 {
				t.Fatal("more than 10 failures")
			}
		}
	}
	ids := make([]int, n)
	for i := range ids {
		ids[i] = i
	}
	start := time.Now()
	check(send(ids), false)
	t.Logf("%d requests answered in %s", n, time.Since(start).Round(time.Millisecond))

	dupIDs := make([]int, dups)
	for k := range dupIDs {
		dupIDs[k] = (k * 7) % n
	}
	check(send(dupIDs), true)

	if got := d.sim.OnlineScored("ep") - scoredBefore; got != n {
		t.Errorf("the endpoint scored %d requests, want %d: one per Nats-Msg-Id", got, n)
	}
	seen := map[string]int{}
	for _, r := range d.sim.OnlineRequests("ep") {
		seen[string(r.Body)]++
	}
	for body, c := range seen {
		if c != 1 {
			t.Errorf("request %s scored %d times", body, c)
		}
	}
	if d.sim.OnlineThrottled("ep") == 0 {
		t.Errorf("the endpoint never answered 429: the test did not exercise the retries it means to")
	}
	d.stop()
	for _, tok := range d.sim.IssuedTokens() {
		if strings.Contains(d.logs.String(), tok[strings.LastIndex(tok, ".")+1:]) {
			t.Errorf("a token reached the log")
		}
	}
}

// The embedded NATS listener (BATCHD_NATS_LISTEN) takes no client without
// the token batchd made in its state directory (mode 0600): another local
// user cannot write the ledger through it.
func TestNATSListenerRequiresTheToken(t *testing.T) {
	d := startOnlineDaemon(t, jobstest.OnlineOptions{}, nil)
	for name, opts := range map[string][]nats.Option{
		"no token":    nil,
		"wrong token": {nats.Token(strings.Repeat("0", 64))},
	} {
		if nc, err := nats.Connect(d.ownNATS, opts...); err == nil {
			nc.Close()
			t.Errorf("%s: connected to the daemon's NATS listener", name)
		} else if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Errorf("%s: %v, want an authorization error", name, err)
		}
	}
	if fi, err := os.Stat(daemon.ListenTokenFile(d.stateDir)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("token file: %v; want it, mode 0600", err)
	}
	if strings.Contains(d.logs.String(), d.ownToken) {
		t.Error("the listener's token reached the log")
	}
}

// A trigger on another NATS server (url:) gets its deferred replies there,
// duplicates' too, on the connection the requests came in on: never on the
// daemon's own NATS, where the requester is not.
func TestOnlineDeferredReplyGoesOutWhereTheRequestCameIn(t *testing.T) {
	other, err := broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir(), Listen: procFreeAddr(t), ClientName: "other"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)
	d := startOnlineDaemonOn(t, jobstest.OnlineOptions{}, nil, other.ClientURL())
	own, err := nats.Connect(d.ownNATS, nats.Name("spy"), nats.Token(d.ownToken))
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	// The requester's replies arrive under its connection's response
	// prefix; on the daemon's own NATS nothing may arrive there.
	inbox := d.nc.NewRespInbox()
	spy, err := own.SubscribeSync(inbox[:strings.LastIndex(inbox, ".")] + ".>")
	if err != nil {
		t.Fatal(err)
	}
	if err := own.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"", "true"} { // the request, then its duplicate
		m, err := d.request(t.Context(), "other-server-1", `{"i":1}`, 20*time.Second)
		if err != nil {
			t.Fatalf("request on the trigger's server (duplicate %q): %v\n%s", want, err, d.logs.String())
		}
		if m.Header.Get(orchestrator.HeaderState) != "completed" || m.Header.Get(orchestrator.HeaderDuplicate) != want {
			t.Errorf("reply %q, state %q, duplicate %q; want completed, duplicate %q", m.Data, m.Header.Get(orchestrator.HeaderState),
				m.Header.Get(orchestrator.HeaderDuplicate), want)
		}
	}
	if m, err := spy.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("a reply went out on the daemon's own NATS (subject %s): the requester is not there", m.Subject)
	}
}

// A message whose body is not JSON is answered by the trigger at once; a
// request the endpoint refuses is answered with the error (state rejected).
func TestOnlineRequestReplyErrors(t *testing.T) {
	d := startOnlineDaemon(t, jobstest.OnlineOptions{Handler: func(r jobstest.OnlineRequest) (int, []byte) {
		if bytes.Contains(r.Body, []byte("refuse")) {
			return 422, []byte(`{"message":"feature vector has 3 values, the model takes 4"}`)
		}
		return 200, r.Body
	}}, nil)
	m, err := d.request(t.Context(), "", `not json`, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(m.Data), `"state":"rejected"`) {
		t.Errorf("malformed request answered %q", m.Data)
	}
	m, err = d.request(t.Context(), "", `{"refuse":true}`, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var e orchestrator.OnlineErrorBody
	if err := json.Unmarshal(m.Data, &e); err != nil {
		t.Fatalf("reply %q: %v", m.Data, err)
	}
	if e.State != orchestrator.StateRejected || e.Status != 422 || !strings.Contains(e.Error, "the model takes 4") ||
		m.Header.Get(orchestrator.HeaderState) != "rejected" || e.RunID == "" {
		t.Errorf("refused request answered %+v (headers %v)", e, m.Header)
	}
	// The run says the same through the API.
	resp, err := http.Get(d.base + "/api/v1/runs/" + e.RunID)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r orchestrator.Run
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatal(err)
	}
	if r.State != orchestrator.StateRejected || r.Online == nil || r.Online.Response == nil || r.Online.Response.Status != 422 {
		t.Errorf("run %+v", r)
	}
	if _, err := d.request(t.Context(), "", `{"ok":1}`, 10*time.Second); errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("the trigger stopped answering")
	}
}
