package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
)

// TestAttacks runs each attack against a real batchd serve on loopback
// without an API token (the install script's default before it makes one):
// every attack is refused with its status, and afterwards the ledger holds
// only the one legitimate run.
func TestAttacks(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon as a process")
	}
	t.Parallel()
	p, _ := procWithSim(t, "attack", map[string]string{"BATCHD_WEBHOOK_SECRET": "attack-test-webhook-secret"})
	_, port, _ := strings.Cut(p.addr, ":")
	run := `{"key":"evil","fields":{"uri":"` + procInputURI("evil") + `"}}`
	var events []string
	for i := range 5001 {
		events = append(events, fmt.Sprintf(`{"id":"%d","eventType":"Microsoft.Storage.BlobCreated"}`, i))
	}
	tooMany := "[" + strings.Join(events, ",") + "]"

	attacks := []struct {
		name         string
		method, path string
		host         string
		hdr          map[string]string
		body         string
		want         int
	}{
		{name: "a page's form post (text/plain, no preflight) starts a run", method: "POST", path: "/api/v1/pipelines/crash/runs",
			hdr: map[string]string{"Content-Type": "text/plain"}, body: run, want: http.StatusUnsupportedMediaType},
		{name: "a form-encoded post starts a run", method: "POST", path: "/api/v1/pipelines/crash/runs",
			hdr: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, body: run, want: http.StatusUnsupportedMediaType},
		{name: "a JSON post from another origin", method: "POST", path: "/api/v1/pipelines/crash/runs",
			hdr: map[string]string{"Content-Type": "application/json", "Origin": "https://evil.example"}, body: run, want: http.StatusForbidden},
		{name: "a JSON post from another port on localhost", method: "POST", path: "/api/v1/pipelines/crash/runs",
			hdr: map[string]string{"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"}, body: run, want: http.StatusForbidden},
		{name: "a sandboxed page (Origin null) cancels", method: "POST", path: "/api/v1/runs/00000000000000000000000000000000/cancel",
			hdr: map[string]string{"Content-Type": "application/json", "Origin": "null"}, body: `{}`, want: http.StatusForbidden},
		{name: "a cross-site fetch reads the runs", method: "GET", path: "/api/v1/runs",
			hdr: map[string]string{"Sec-Fetch-Site": "cross-site"}, want: http.StatusForbidden},
		{name: "DNS rebinding reads the runs", method: "GET", path: "/api/v1/runs", host: "evil.example:" + port, want: http.StatusMisdirectedRequest},
		{name: "DNS rebinding reads the status page", method: "GET", path: "/", host: "evil.example:" + port, want: http.StatusMisdirectedRequest},
		{name: "DNS rebinding starts a run", method: "POST", path: "/api/v1/pipelines/crash/runs", host: "rebind.evil.example",
			hdr: map[string]string{"Content-Type": "application/json"}, body: run, want: http.StatusMisdirectedRequest},
		{name: "more events in one delivery than Event Grid sends", method: "POST", path: "/eventgrid?code=attack-test-webhook-secret",
			hdr: map[string]string{"Content-Type": "application/json"}, body: tooMany, want: http.StatusRequestEntityTooLarge},
		{name: "a delivery without the webhook secret", method: "POST", path: "/eventgrid",
			hdr: map[string]string{"Content-Type": "application/json"}, body: `[]`, want: http.StatusUnauthorized},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			req, err := http.NewRequest(a.method, p.url()+a.path, strings.NewReader(a.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range a.hdr {
				req.Header.Set(k, v)
			}
			if a.host != "" {
				req.Host = a.host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != a.want {
				t.Errorf("status %d, want %d: %s", resp.StatusCode, a.want, b)
			}
		})
	}

	// What keeps working: a link to the status page from another site (a
	// top-level navigation shows the page to the user, never to the
	// linking site), the CLI, the page on loopback.
	nav, _ := http.NewRequest("GET", p.url()+"/", nil)
	nav.Header.Set("Sec-Fetch-Site", "cross-site")
	nav.Header.Set("Sec-Fetch-Mode", "navigate")
	resp, err := http.DefaultClient.Do(nav)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a cross-site navigation to the status page: status %d, want 200", resp.StatusCode)
	}
	if code, out, errOut := runCLI(t, map[string]string{"BATCHD_URL": p.url()}, "pipelines", "run", "crash", "--field", "uri="+procInputURI("legit")); code != exitOK {
		t.Errorf("batchd pipelines run: exit %d\n%s%s", code, out, errOut)
	}
	for _, host := range []string{"", "localhost:" + port} {
		req, _ := http.NewRequest("GET", p.url()+"/", nil)
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("the status page with Host %q: status %d, want 200", req.Host, resp.StatusCode)
		}
	}
	var runs []orchestrator.RunSummary
	procWaitFor(t, 10*time.Second, "the legitimate run in the ledger", func() bool {
		var err error
		runs, err = procListAll(p.url())
		return err == nil && len(runs) > 0
	})
	if len(runs) != 1 || runs[0].Key == "evil" {
		b, _ := json.Marshal(runs)
		t.Errorf("the ledger holds %d runs, want only the legitimate one: %s", len(runs), b)
	}
}

// TestNATSAttacks is the attack table's NATS half, against a real serve: a
// client that may publish on a trigger's subject names a reply subject
// batchd must not publish on (another service's, the ledger's $KV, the
// intake, the JetStream API), or sends message fields that would reshape
// a JSON scoring request. Each is refused: nothing is published on the
// named subject, the intake stream and the ledger key are untouched, the
// request is recorded rejected with the reason, and every scoring request
// has exactly the template's keys.
func TestNATSAttacks(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon")
	}
	// Not parallel: the in-process daemon's simulator is set through the
	// environment (useSimInProcess).
	d := startOnlineDaemon(t, jobstest.OnlineOptions{Handler: func(r jobstest.OnlineRequest) (int, []byte) { return 200, r.Body }}, nil)
	evil := []string{
		"orders.evil",
		"$KV.batchd_runs.0123456789abcdef0123456789abcdef",
		"batchd.intake.classify.evil",
		"$JS.API.STREAM.DELETE.BATCHD_INTAKE",
		"$JS.API.STREAM.PURGE.BATCHD_INTAKE",
	}
	spy, err := nats.Connect(d.ownNATS, nats.Name("spy"), nats.Token(d.ownToken))
	if err != nil {
		t.Fatal(err)
	}
	defer spy.Close()
	var subs []*nats.Subscription
	for _, e := range evil {
		s, err := spy.SubscribeSync(e)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(spy)
	if err != nil {
		t.Fatal(err)
	}
	intakeBefore, err := js.Stream(t.Context(), "BATCHD_INTAKE")
	if err != nil {
		t.Fatalf("the intake stream: %v", err)
	}
	for i, reply := range evil {
		m := nats.NewMsg("classify.requests")
		m.Reply = reply
		m.Data = []byte(fmt.Sprintf(`{"evil":%d}`, i))
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("evil-reply-%d", i))
		if err := d.nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}

	// Message fields written to break out of a JSON string, or to add keys.
	hostile := []string{
		`x","extra":{"admin":true},"y":"`,
		`x"}, "extra": 1, "z": {"`,
		`\",\"extra\":\"`,
		"line\n}\n{\"extra\":1}",
		`\u0022,\u0022extra\u0022:\u0022`,
		`}}}]]]"`,
		`{{ .Message.Body }}`,
	}
	for i, text := range hostile {
		body, _ := json.Marshal(map[string]string{"text": text})
		m := nats.NewMsg("shaped.requests")
		m.Data = body
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("hostile-%d", i))
		rctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		reply, err := d.nc.RequestMsgWithContext(rctx, m)
		cancel()
		if err != nil {
			t.Fatalf("hostile request %d: %v", i, err)
		}
		if reply.Header.Get(orchestrator.HeaderState) != "completed" {
			t.Errorf("hostile request %d: state %q (%s), want completed", i, reply.Header.Get(orchestrator.HeaderState), reply.Data)
		}
	}
	seen := map[string]bool{}
	for _, r := range d.sim.OnlineRequests("ep") {
		var got map[string]any
		if err := json.Unmarshal(r.Body, &got); err != nil {
			t.Errorf("a scoring request is not JSON: %v: %s", err, r.Body)
			continue
		}
		if _, shaped := got["lang"]; !shaped {
			continue // the probe and the classify pipeline's requests
		}
		keys := slices.Sorted(maps.Keys(got))
		if !slices.Equal(keys, []string{"lang", "text"}) {
			t.Errorf("a scoring request has keys %v, want [lang text]: %s", keys, r.Body)
		}
		if s, ok := got["text"].(string); ok {
			seen[s] = true
		}
	}
	for _, text := range hostile {
		if !seen[text] {
			t.Errorf("the field %q did not reach the endpoint as the text value, unchanged", text)
		}
	}

	// The evil-reply requests are recorded rejected with the reason.
	var rejected []orchestrator.RunSummary
	procWaitFor(t, 10*time.Second, "the evil-reply requests to be recorded", func() bool {
		runs, err := procListAll(d.base)
		if err != nil {
			return false
		}
		rejected = rejected[:0]
		for _, r := range runs {
			if r.Pipeline == "classify" && r.State == orchestrator.StateRejected {
				rejected = append(rejected, r)
			}
		}
		return len(rejected) >= len(evil)
	})
	if len(rejected) != len(evil) {
		t.Errorf("%d classify runs rejected, want %d", len(rejected), len(evil))
	}
	for _, r := range rejected {
		if !strings.Contains(r.Reason, `not under "_INBOX."`) {
			t.Errorf("run %s rejected for %q, want the reply prefix named", r.ID, r.Reason)
		}
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		if m, err := s.NextMsg(100 * time.Millisecond); err == nil {
			t.Errorf("batchd published on %s: %q", evil[i], m.Data)
		}
	}
	intakeAfter, err := js.Stream(t.Context(), "BATCHD_INTAKE")
	if err != nil {
		t.Fatalf("the intake stream after the attacks: %v", err)
	}
	// (A purge would have been a publish on its API subject, which the spy
	// watches; the intake deletes acknowledged messages, so its sequences
	// say nothing.)
	if a, b := intakeAfter.CachedInfo(), intakeBefore.CachedInfo(); !a.Created.Equal(b.Created) {
		t.Errorf("the intake stream was recreated: created %s → %s", b.Created, a.Created)
	}
	kv, err := js.KeyValue(t.Context(), "batchd_runs")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Get(t.Context(), "0123456789abcdef0123456789abcdef"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("the ledger key an attacker named: %v, want not found", err)
	}
}
