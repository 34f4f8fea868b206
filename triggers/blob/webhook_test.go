package blob

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/triggertest"
)

const testSecret = "s3cr3t-Webhook-Value"

// syncBuffer is a log sink safe for the handler's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type hookEnv struct {
	t      *testing.T
	intake *triggertest.Intake
	hook   *Webhook
	srv    *httptest.Server
	logs   *syncBuffer
	reg    *prometheus.Registry
	store  kvstate.Store
}

func inboxRoute() Route {
	return Route{Pipeline: "score", Config: Config{Account: "mystorage", Container: "inbox", Prefix: "in/"}}
}

func newHookEnv(t *testing.T, mutate func(*WebhookOptions)) *hookEnv {
	t.Helper()
	b := triggertest.NATS(t)
	kv := triggertest.KV(t, b, "triggers")
	e := &hookEnv{t: t, intake: triggertest.NewIntake(), logs: &syncBuffer{}, reg: prometheus.NewRegistry()}
	o := WebhookOptions{
		Routes: []Route{inboxRoute()}, Secret: testSecret, Intake: e.intake, KV: kv,
		Logger: slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Registerer: e.reg,
	}
	if mutate != nil {
		mutate(&o)
	}
	h, err := NewWebhook(o)
	if err != nil {
		t.Fatalf("NewWebhook: %v", err)
	}
	e.hook, e.store = h, h.store
	e.srv = httptest.NewServer(h)
	t.Cleanup(e.srv.Close)
	return e
}

// post sends body to /eventgrid with the secret in the query.
func (e *hookEnv) post(body []byte, hdr map[string]string) (int, string) {
	e.t.Helper()
	return e.do(http.MethodPost, "/eventgrid?code="+testSecret, body, hdr)
}

func (e *hookEnv) do(method, path string, body []byte, hdr map[string]string) (int, string) {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("aeg-event-type", "Notification")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// blobEvent builds one Event Grid BlobCreated event.
func blobEvent(id, api, url, etag, seq string, size int64) map[string]any {
	return map[string]any{
		"topic":     "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/mystorage",
		"subject":   "/blobServices/default/containers/inbox/blobs/x",
		"eventType": TypeBlobCreated, "eventTime": "2026-03-01T10:00:00Z", "id": id,
		"data": map[string]any{"api": api, "eTag": etag, "contentLength": size, "blobType": "BlockBlob",
			"url": url, "sequencer": seq},
		"dataVersion": "", "metadataVersion": "1",
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestWebhookRefusesWithoutSecret(t *testing.T) {
	e := newHookEnv(t, func(o *WebhookOptions) { o.Secret = "" })
	code, _ := e.post(fixture(t, "putblocklist.json"), nil)
	if code != http.StatusServiceUnavailable {
		t.Errorf("status = %d, want 503", code)
	}
	if s := e.intake.Snapshot(); s.Emits != 0 || len(s.Records) != 0 {
		t.Errorf("intake touched without a secret: %+v", s)
	}
	if !strings.Contains(e.logs.String(), "BATCHD_WEBHOOK_SECRET is not set") {
		t.Errorf("log does not say why: %s", e.logs.String())
	}
}

func TestWebhookAuthentication(t *testing.T) {
	e := newHookEnv(t, nil)
	body := fixture(t, "putblocklist.json")
	tests := []struct {
		name string
		path string
		hdr  map[string]string
		want int
	}{
		{"no secret", "/eventgrid", nil, 401},
		{"wrong query secret", "/eventgrid?code=nope", nil, 401},
		{"secret prefix only", "/eventgrid?code=" + testSecret[:5], nil, 401},
		{"wrong header secret", "/eventgrid", map[string]string{"X-Webhook-Secret": "nope"}, 401},
		{"query secret", "/eventgrid?code=" + testSecret, nil, 200},
		{"header secret", "/eventgrid", map[string]string{"X-Webhook-Secret": testSecret}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.intake.Snapshot().Emits
			code, resp := e.do(http.MethodPost, tt.path, body, tt.hdr)
			if code != tt.want {
				t.Fatalf("status = %d (%s), want %d", code, resp, tt.want)
			}
			if strings.Contains(resp, testSecret) {
				t.Errorf("answer holds the secret: %s", resp)
			}
			if emitted := e.intake.Snapshot().Emits - before; tt.want == 401 && emitted != 0 {
				t.Errorf("unauthenticated request reached the intake (%d emits)", emitted)
			}
		})
	}
	if strings.Contains(e.logs.String(), testSecret) {
		t.Errorf("logs hold the secret")
	}
	if got := testutil.ToFloat64(e.hook.requests.WithLabelValues("401")); got != 4 {
		t.Errorf("401 count = %v, want 4", got)
	}
}

func TestWebhookValidationHandshake(t *testing.T) {
	e := newHookEnv(t, nil)
	code, body := e.post(fixture(t, "validation.json"), map[string]string{"aeg-event-type": "SubscriptionValidation"})
	if code != http.StatusOK {
		t.Fatalf("status = %d, want 200", code)
	}
	var got map[string]string
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if want := "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"; got["validationResponse"] != want {
		t.Errorf("validationResponse = %q, want %q", got["validationResponse"], want)
	}
	// The validationUrl carries a code that completes the handshake: it is
	// not logged.
	if strings.Contains(e.logs.String(), "eventsubscriptions/estest/validate") {
		t.Errorf("the validation URL was logged: %s", e.logs.String())
	}
	if s := e.intake.Snapshot(); s.Emits != 0 || len(s.Records) != 0 {
		t.Errorf("handshake reached the intake: %+v", s)
	}
	// Unauthenticated handshakes are refused like everything else.
	if code, _ := e.do(http.MethodPost, "/eventgrid", fixture(t, "validation.json"), nil); code != 401 {
		t.Errorf("unauthenticated validation: status %d, want 401", code)
	}
}

func TestWebhookCloudEventsHandshake(t *testing.T) {
	e := newHookEnv(t, nil)
	req, _ := http.NewRequest(http.MethodOptions, e.srv.URL+"/eventgrid?code="+testSecret, nil)
	req.Header.Set("WebHook-Request-Origin", "eventgrid.azure.net")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status = %d, want 200", resp.StatusCode)
	}
	if got := resp.Header.Get("WebHook-Allowed-Origin"); got != "eventgrid.azure.net" {
		t.Errorf("WebHook-Allowed-Origin = %q, want eventgrid.azure.net", got)
	}
	if code, _ := e.do(http.MethodOptions, "/eventgrid", nil, map[string]string{"WebHook-Request-Origin": "x"}); code != 401 {
		t.Errorf("unauthenticated OPTIONS: status %d, want 401", code)
	}
}

func TestWebhookBlobCreated(t *testing.T) {
	tests := []struct {
		fixture string
		want    *orchestrator.Event // nil: not run
		state   orchestrator.State  // the record when not run
		reason  string              // part of the record's reason
	}{
		{fixture: "putblocklist.json", want: &orchestrator.Event{
			Pipeline: "score", Source: "eventgrid", Time: time.Date(2017, 6, 26, 18, 41, 0, 958410300, time.UTC),
			Key: "https://mystorage.blob.core.windows.net/inbox/in/2026/new-file.csv@0x8D4BCC2E4835CD0",
			Blob: &orchestrator.BlobEvent{URL: "https://mystorage.blob.core.windows.net/inbox/in/2026/new-file.csv",
				Account: "mystorage", Container: "inbox", Name: "in/2026/new-file.csv", Folder: "in/2026/",
				ETag: "0x8D4BCC2E4835CD0", Size: 524288, API: "PutBlockList", Sequencer: "00000000000004420000000000028963"}}},
		{fixture: "putblob.json", want: &orchestrator.Event{
			Pipeline: "score", Source: "eventgrid", Time: time.Date(2026, 3, 1, 10, 0, 0, 123456700, time.UTC),
			Key: "https://mystorage.blob.core.windows.net/inbox/in/small%20file.csv@0x8DC0000000000001",
			Blob: &orchestrator.BlobEvent{URL: "https://mystorage.blob.core.windows.net/inbox/in/small%20file.csv",
				Account: "mystorage", Container: "inbox", Name: "in/small file.csv", Folder: "in/",
				ETag: "0x8DC0000000000001", Size: 120, API: "PutBlob", Sequencer: "00000000000000000000000000000a01000000000000ab12"}}},
		{fixture: "copyblob.json", want: &orchestrator.Event{
			Pipeline: "score", Source: "eventgrid", Time: time.Date(2026, 3, 1, 10, 5, 0, 0, time.UTC),
			Key: "https://mystorage.blob.core.windows.net/inbox/in/copied.csv@0x8DC0000000000002",
			Blob: &orchestrator.BlobEvent{URL: "https://mystorage.blob.core.windows.net/inbox/in/copied.csv",
				Account: "mystorage", Container: "inbox", Name: "in/copied.csv", Folder: "in/",
				ETag: "0x8DC0000000000002", Size: 2048, API: "CopyBlob", Sequencer: "00000000000000000000000000000a01000000000000ab13"}}},
		// A dfs URL is keyed by its blob URL, so the poller's key is the same.
		{fixture: "flushwithclose.json", want: &orchestrator.Event{
			Pipeline: "score", Source: "eventgrid", Time: time.Date(2026, 3, 1, 10, 6, 0, 500000000, time.UTC),
			Key: "https://mystorage.blob.core.windows.net/inbox/in/lake/part-0001.parquet@0x8DC0000000000003",
			Blob: &orchestrator.BlobEvent{URL: "https://mystorage.blob.core.windows.net/inbox/in/lake/part-0001.parquet",
				Account: "mystorage", Container: "inbox", Name: "in/lake/part-0001.parquet", Folder: "in/lake/",
				ETag: "0x8DC0000000000003", Size: 4096, API: "FlushWithClose", Sequencer: "00000000000000000000000000000a01000000000000ab14"}}},
		{fixture: "createfile_zero.json", state: orchestrator.StateFiltered, reason: "api CreateFile is not one of"},
		{fixture: "putblob_zero.json", state: orchestrator.StateFiltered, reason: "size 0 is below min_size 1"},
		{fixture: "blobdeleted.json", state: orchestrator.StateFiltered, reason: "event type Microsoft.Storage.BlobDeleted is not handled"},
	}
	for _, tt := range tests {
		t.Run(tt.fixture, func(t *testing.T) {
			e := newHookEnv(t, nil)
			code, body := e.post(fixture(t, tt.fixture), nil)
			if code != 200 {
				t.Fatalf("status = %d (%s), want 200", code, body)
			}
			s := e.intake.Snapshot()
			if tt.want != nil {
				if diff := cmp.Diff([]orchestrator.Event{*tt.want}, s.Accepted); diff != "" {
					t.Errorf("accepted events (-want +got):\n%s", diff)
				}
				return
			}
			if len(s.Accepted) != 0 {
				t.Errorf("accepted %d events, want none", len(s.Accepted))
			}
			if len(s.Records) != 1 {
				t.Fatalf("records = %+v, want one", s.Records)
			}
			r := s.Records[0]
			if r.State != tt.state || !strings.Contains(r.Reason, tt.reason) || r.Event.Pipeline != "" {
				t.Errorf("record = {pipeline %q, %s, %q}, want {\"\", %s, ~%q}", r.Event.Pipeline, r.State, r.Reason, tt.state, tt.reason)
			}
			if got := testutil.ToFloat64(e.hook.m.Events.WithLabelValues("eventgrid", "", "filtered")); got != 1 {
				t.Errorf("filtered metric = %v, want 1", got)
			}
		})
	}
}

func TestWebhookCloudEvents(t *testing.T) {
	e := newHookEnv(t, nil)
	single := fixture(t, "cloudevent.json")
	code, body := e.post(single, map[string]string{"Content-Type": "application/cloudevents+json; charset=utf-8"})
	if code != 200 {
		t.Fatalf("single: status %d (%s)", code, body)
	}
	// Batched mode: an array of two, one of them the same event again.
	var ev map[string]any
	_ = json.Unmarshal(single, &ev)
	ev2 := map[string]any{}
	for k, v := range ev {
		ev2[k] = v
	}
	ev2["id"] = "second"
	ev2["data"] = map[string]any{"api": "PutBlob", "eTag": "0x1", "contentLength": 5,
		"url": "https://mystorage.blob.core.windows.net/inbox/in/ce2.csv", "sequencer": "01"}
	code, body = e.post(mustJSON(t, []any{ev, ev2}), map[string]string{"Content-Type": "application/cloudevents-batch+json"})
	if code != 200 {
		t.Fatalf("batch: status %d (%s)", code, body)
	}
	s := e.intake.Snapshot()
	var keys []string
	for _, a := range s.Accepted {
		keys = append(keys, a.Key)
	}
	want := []string{
		"https://mystorage.blob.core.windows.net/inbox/in/ce.csv@0x8D9595DCA505BDF",
		"https://mystorage.blob.core.windows.net/inbox/in/ce2.csv@0x1",
	}
	if diff := cmp.Diff(want, keys); diff != "" {
		t.Errorf("accepted keys (-want +got):\n%s", diff)
	}
	// The redelivered CloudEvent's version is known: answered as a
	// duplicate without another emit.
	if s.Emits != 2 || s.Duplicates != 0 {
		t.Errorf("emits %d, intake duplicates %d; want 2 and 0 (the redelivery is not emitted)", s.Emits, s.Duplicates)
	}
}

func TestWebhookBatchOf50AndRedelivery(t *testing.T) {
	e := newHookEnv(t, nil)
	var batch []any
	for i := range 50 {
		batch = append(batch, blobEvent(fmt.Sprintf("id-%d", i), "PutBlob",
			fmt.Sprintf("https://mystorage.blob.core.windows.net/inbox/in/f%02d.csv", i), fmt.Sprintf("0x%X", 1000+i), fmt.Sprintf("%032x", i+1), 10))
	}
	body := mustJSON(t, batch)
	if code, resp := e.post(body, nil); code != 200 {
		t.Fatalf("status %d (%s)", code, resp)
	}
	if got := len(e.intake.Snapshot().Accepted); got != 50 {
		t.Fatalf("accepted %d, want 50", got)
	}
	code, resp := e.post(body, nil)
	if code != 200 {
		t.Fatalf("redelivery: status %d (%s)", code, resp)
	}
	var res webhookResult
	_ = json.Unmarshal([]byte(resp), &res)
	s := e.intake.Snapshot()
	// Every version is known from the first delivery: the answer counts
	// 50 duplicates and nothing more reaches the intake.
	if len(s.Accepted) != 50 || s.Emits != 50 || res.Duplicate != 50 {
		t.Errorf("after redelivery: accepted %d, emits %d (answer says %d duplicates); want 50, 50, 50", len(s.Accepted), s.Emits, res.Duplicate)
	}
}

func TestWebhookOutOfOrderSequencers(t *testing.T) {
	e := newHookEnv(t, nil)
	url := "https://mystorage.blob.core.windows.net/inbox/in/data.csv"
	newer := blobEvent("new", "PutBlob", url, "0x2", "00000000000000000000000000000002", 10)
	older := blobEvent("old", "PutBlob", url, "0x1", "00000000000000000000000000000001", 10)
	if code, _ := e.post(mustJSON(t, []any{newer}), nil); code != 200 {
		t.Fatal("newer not taken")
	}
	if code, _ := e.post(mustJSON(t, []any{older}), nil); code != 200 {
		t.Fatal("older not answered 200")
	}
	s := e.intake.Snapshot()
	if len(s.Accepted) != 1 || s.Accepted[0].Blob.ETag != "0x2" {
		t.Fatalf("accepted = %+v, want only eTag 0x2", s.Accepted)
	}
	if len(s.Records) != 1 || !strings.Contains(s.Records[0].Reason, "superseded") || s.Records[0].Event.Pipeline != "score" {
		t.Errorf("records = %+v, want one superseded record for score", s.Records)
	}
	// An update after the newer one is a new run.
	newest := blobEvent("newest", "PutBlob", url, "0x3", "00000000000000000000000000000003", 10)
	e.post(mustJSON(t, []any{newest}), nil)
	if got := len(e.intake.Snapshot().Accepted); got != 2 {
		t.Errorf("accepted %d after a re-upload, want 2", got)
	}
}

func TestWebhookBadRequests(t *testing.T) {
	e := newHookEnv(t, func(o *WebhookOptions) { o.MaxBodyBytes = 4096 })
	tests := []struct {
		name   string
		body   string
		want   int
		reason string
	}{
		{"not json", "hello", 400, "neither a JSON array"},
		{"truncated array", `[{"id":"1",`, 400, "invalid JSON at byte 11"},
		{"empty array", `[]`, 400, "empty event array"},
		{"array of strings", `["a"]`, 200, ""}, // each element rejected, recorded
		{"too large", "[" + strings.Repeat(" ", 5000) + "]", 413, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := e.post([]byte(tt.body), nil)
			if code != tt.want || !strings.Contains(body, tt.reason) {
				t.Errorf("got %d %s, want %d ~%q", code, body, tt.want, tt.reason)
			}
		})
	}
	if got := e.intake.Snapshot().RecordsIn(orchestrator.StateRejected); len(got) != 1 {
		t.Errorf("rejected records = %+v, want one (the string element)", got)
	}
	// A body over the limit without a Content-Length (chunked).
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte("[" + strings.Repeat(" ", 5000) + "]"))
		_ = pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/eventgrid?code="+testSecret, pr)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 413 {
		t.Errorf("chunked oversize: status %d, want 413", resp.StatusCode)
	}
}

// When NATS cannot take events (a cluster without quorum), the delivery
// gets 503 with Retry-After: Event Grid backs off and redelivers.
func TestWebhookAnswers503WhileIntakeUnavailable(t *testing.T) {
	e := newHookEnv(t, nil)
	e.intake.FailNext(fmt.Errorf("emit: %w: nats: no response from stream", orchestrator.ErrUnavailable))
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/eventgrid?code="+testSecret, bytes.NewReader(fixture(t, "putblocklist.json")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("aeg-event-type", "Notification")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if got := len(e.intake.Snapshot().Accepted); got != 0 {
		t.Errorf("accepted %d while the intake was unavailable", got)
	}
}

func TestWebhookEmitFailureIsNotAcked(t *testing.T) {
	e := newHookEnv(t, nil)
	e.intake.FailNext()
	body := fixture(t, "putblocklist.json")
	if code, _ := e.post(body, nil); code != 500 {
		t.Fatalf("status = %d, want 500 so that Event Grid redelivers", code)
	}
	if got := len(e.intake.Snapshot().Accepted); got != 0 {
		t.Fatalf("accepted %d after a failed emit", got)
	}
	if code, _ := e.post(body, nil); code != 200 {
		t.Fatalf("redelivery: status = %d, want 200", code)
	}
	if got := len(e.intake.Snapshot().Accepted); got != 1 {
		t.Errorf("accepted %d after redelivery, want 1", got)
	}
}

func TestWebhookPermanentErrorIsRecorded(t *testing.T) {
	e := newHookEnv(t, nil)
	e.intake.FailNext(orchestrator.Refuse(fmt.Errorf("pipeline score is disabled")))
	if code, _ := e.post(fixture(t, "putblocklist.json"), nil); code != 200 {
		t.Fatalf("status = %d, want 200 (the event has a recorded outcome)", code)
	}
	r := e.intake.Snapshot().RecordsIn(orchestrator.StateRejected)
	if len(r) != 1 || r[0].Reason != "pipeline score is disabled" || r[0].Event.Pipeline != "score" {
		t.Errorf("rejected records = %+v", r)
	}
}

func TestWebhookRoutesToEveryMatchingPipeline(t *testing.T) {
	e := newHookEnv(t, func(o *WebhookOptions) {
		o.Routes = []Route{
			inboxRoute(),
			{Pipeline: "csv", Config: Config{Account: "mystorage", Container: "inbox", Suffix: ".csv"}},
			{Pipeline: "other", Config: Config{Account: "otheraccount", Container: "inbox"}},
		}
	})
	e.post(fixture(t, "putblocklist.json"), nil)
	var got []string
	for _, a := range e.intake.Snapshot().Accepted {
		got = append(got, a.Pipeline)
	}
	if diff := cmp.Diff([]string{"score", "csv"}, got, cmpSortStrings); diff != "" {
		t.Errorf("pipelines (-want +got):\n%s", diff)
	}
	// Nothing matches: one record naming each pipeline's reason.
	ev := blobEvent("x", "PutBlob", "https://mystorage.blob.core.windows.net/elsewhere/a.txt", "0x9", "01", 3)
	e.post(mustJSON(t, []any{ev}), nil)
	r := e.intake.Snapshot().RecordsIn(orchestrator.StateFiltered)
	if len(r) != 1 || !strings.Contains(r[0].Reason, `other: account "mystorage" is not "otheraccount"`) ||
		!strings.Contains(r[0].Reason, `score: container "elsewhere" is not "inbox"`) {
		t.Errorf("filtered records = %+v", r)
	}
}

var cmpSortStrings = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

func TestWebhookFolderBatchAddsDurably(t *testing.T) {
	e := newHookEnv(t, func(o *WebhookOptions) {
		r := inboxRoute()
		r.Config.Batch = &BatchConfig{By: "folder", Quiet: time.Minute, Marker: "_SUCCESS"}
		o.Routes = []Route{r}
	})
	for i, name := range []string{"in/day1/a.csv", "in/day1/b.csv", "in/day1/a.csv"} {
		ev := blobEvent(fmt.Sprint(i), "PutBlob", "https://mystorage.blob.core.windows.net/inbox/"+name, "0xA", fmt.Sprintf("%032d", i), 5)
		if code, body := e.post(mustJSON(t, []any{ev}), nil); code != 200 {
			t.Fatalf("status %d %s", code, body)
		}
	}
	if s := e.intake.Snapshot(); s.Emits != 0 {
		t.Fatalf("batched files were emitted one by one: %+v", s.Accepted)
	}
	keys, err := e.store.Keys(context.Background(), folderPrefix("score"))
	if err != nil || len(keys) != 1 {
		t.Fatalf("folder keys = %v, %v; want one", keys, err)
	}
	ent, _ := e.store.Get(context.Background(), keys[0])
	var st folderState
	_ = json.Unmarshal(ent.Value, &st)
	if len(st.Files) != 2 || st.URL != "https://mystorage.blob.core.windows.net/inbox/in/day1/" {
		t.Errorf("folder state = %+v, want 2 files of in/day1/", st)
	}
}

// Attack: more events in one delivery than Event Grid ever sends (5,000).
// The delivery is refused whole (413) and nothing is emitted or recorded.
func TestWebhookRefusesMoreThan5000Events(t *testing.T) {
	e := newHookEnv(t, nil)
	var batch []any
	for i := range MaxEventsPerDelivery + 1 {
		batch = append(batch, map[string]any{"id": strconv.Itoa(i), "eventType": TypeBlobCreated})
	}
	code, resp := e.post(mustJSON(t, batch), nil)
	if code != http.StatusRequestEntityTooLarge || !strings.Contains(resp, "5000") {
		t.Errorf("5,001 events: status %d (%s), want 413 naming the limit", code, resp)
	}
	if s := e.intake.Snapshot(); len(s.Accepted) != 0 || len(s.Records) != 0 || s.Emits != 0 {
		t.Errorf("a refused delivery changed the intake: %d accepted, %d records, %d emits", len(s.Accepted), len(s.Records), s.Emits)
	}
}

// Attack: many slow deliveries at once. Beyond MaxDeliveries the webhook
// answers 503 with Retry-After (Event Grid retries) instead of queueing
// without bound.
func TestWebhookCapsConcurrentDeliveries(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	e := newHookEnv(t, func(o *WebhookOptions) { o.MaxDeliveries = 1 })
	e.intake.FailWhen(func(orchestrator.Event) error {
		select {
		case entered <- struct{}{}:
		default:
		}
		<-release
		return nil
	})
	body := func(i int) []byte {
		return mustJSON(t, []any{blobEvent(fmt.Sprintf("id-%d", i), "PutBlob",
			fmt.Sprintf("https://mystorage.blob.core.windows.net/inbox/in/c%d.csv", i), "0x1", fmt.Sprintf("%032x", i+1), 10)})
	}
	first := make(chan int, 1)
	go func() {
		code, _ := e.post(body(1), nil)
		first <- code
	}()
	<-entered // the first delivery is being handled
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/eventgrid?code="+testSecret, bytes.NewReader(body(2)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("a delivery over the cap: status %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	close(release)
	if code := <-first; code != http.StatusOK {
		t.Errorf("the first delivery: status %d, want 200", code)
	}
	if code, resp := e.post(body(3), nil); code != http.StatusOK {
		t.Errorf("a delivery after the first finished: status %d (%s), want 200", code, resp)
	}
}

// The webhook compares the stored version on every path: an event for the
// version already handled (by the poller, here) is a duplicate without an
// emit, and a late event for an older version than the poller handled is
// superseded, although the poller knows no sequencer.
func TestWebhookOlderThanThePollersVersion(t *testing.T) {
	e := newHookEnv(t, nil)
	url := "https://mystorage.blob.core.windows.net/inbox/in/late.csv"
	polled := time.Date(2026, 3, 1, 10, 5, 0, 0, time.UTC)
	if err := (seenStore{kv: e.store}).advance(t.Context(), "score", url, seenRec{ETag: "0xNEW", Modified: polled, At: polled}); err != nil {
		t.Fatal(err)
	}
	old := blobEvent("old", "PutBlob", url, "0xOLD", fmt.Sprintf("%032x", 1), 10) // eventTime 10:00, before the poller's version
	if code, resp := e.post(mustJSON(t, []any{old}), nil); code != 200 {
		t.Fatalf("status %d (%s)", code, resp)
	}
	same := blobEvent("same", "PutBlob", url, "0xNEW", fmt.Sprintf("%032x", 2), 10)
	same["eventTime"] = "2026-03-01T10:05:01Z"
	if code, resp := e.post(mustJSON(t, []any{same}), nil); code != 200 {
		t.Fatalf("status %d (%s)", code, resp)
	}
	s := e.intake.Snapshot()
	if s.Emits != 0 {
		t.Errorf("emits = %d, want 0: neither event is a new version", s.Emits)
	}
	if len(s.Records) != 1 || s.Records[0].State != orchestrator.StateFiltered || !strings.Contains(s.Records[0].Reason, "superseded") {
		t.Errorf("records %+v, want the old event recorded superseded", s.Records)
	}
}

// jobSink records the job events the webhook hands over.
type jobSink struct {
	mu     sync.Mutex
	events []orchestrator.JobEvent
	err    error
}

func (s *jobSink) JobChanged(_ context.Context, ev orchestrator.JobEvent) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return "", s.err
	}
	s.events = append(s.events, ev)
	return orchestrator.JobEventChecked, nil
}

func (s *jobSink) got() []orchestrator.JobEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]orchestrator.JobEvent(nil), s.events...)
}

const amlTopic = "/subscriptions/00000000-0000-0000-0000-00000000cafe/resourceGroups/batchd-sim/providers/Microsoft.MachineLearningServices/workspaces/sim"

func amlEvent(id, typ, run, status string) map[string]any {
	data := map[string]any{"experimentId": "0fa9dfaa-cba3-4fa7-b590-23e48548f5c1", "experimentName": "score-batch",
		"runId": run, "runType": "azureml.PipelineRun", "runTags": map[string]any{}, "runProperties": map[string]any{"azureml.runsource": "azureml.PipelineRun"}}
	if status != "" {
		data["runStatus"] = status
	}
	return map[string]any{"topic": amlTopic, "subject": "experiments/0fa9dfaa-cba3-4fa7-b590-23e48548f5c1/runs/" + run,
		"eventType": typ, "eventTime": "2026-12-05T10:00:00.123Z", "id": id, "data": data, "dataVersion": "2", "metadataVersion": "1"}
}

// Azure ML job events in both schemas reach the orchestrator as hints; no
// run is created or recorded for them.
func TestWebhookHandsJobEventsToTheOrchestrator(t *testing.T) {
	sink := &jobSink{}
	e := newHookEnv(t, func(o *WebhookOptions) { o.Jobs = sink })
	grid := []any{
		amlEvent("e1", orchestrator.TypeRunStatusChanged, "batchjob-7f3a", "Running"),
		amlEvent("e2", orchestrator.TypeRunCompleted, "batchjob-7f3a", ""),
	}
	code, body := e.post(mustJSON(t, grid), nil)
	if code != 200 || !strings.Contains(body, `"jobs":2`) {
		t.Fatalf("Event Grid schema: %d %s; want 200 with jobs 2", code, body)
	}
	ce := map[string]any{"specversion": "1.0", "id": "e3", "type": orchestrator.TypeRunStatusChanged, "source": amlTopic,
		"subject": "experiments/x/runs/batchjob-7f3a", "time": "2026-12-05T10:00:01Z",
		"data": map[string]any{"runId": "batchjob-7f3a", "runStatus": "failed", "experimentId": "x", "experimentName": "y"}}
	if code, body := e.post(mustJSON(t, ce), map[string]string{"Content-Type": "application/cloudevents+json"}); code != 200 {
		t.Fatalf("CloudEvents schema: %d %s", code, body)
	}
	want := []orchestrator.JobEvent{
		{ID: "e1", Type: orchestrator.TypeRunStatusChanged, Workspace: amlTopic, Job: "batchjob-7f3a", Status: "Running"},
		{ID: "e2", Type: orchestrator.TypeRunCompleted, Workspace: amlTopic, Job: "batchjob-7f3a", Status: "Completed"},
		{ID: "e3", Type: orchestrator.TypeRunStatusChanged, Workspace: amlTopic, Job: "batchjob-7f3a", Status: "failed"},
	}
	got := sink.got()
	slices.SortFunc(got, func(a, b orchestrator.JobEvent) int { return strings.Compare(a.ID, b.ID) })
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(orchestrator.JobEvent{}, "Time")); diff != "" {
		t.Errorf("job events (-want +got):\n%s", diff)
	}
	if s := e.intake.Snapshot(); len(s.Accepted) != 0 || len(s.Records) != 0 {
		t.Errorf("the intake got %d runs and %d records for job events, want none", len(s.Accepted), len(s.Records))
	}
}

// A malformed job event is recorded rejected with the reason and never
// reaches the orchestrator.
func TestWebhookRejectsMalformedJobEvents(t *testing.T) {
	sink := &jobSink{}
	e := newHookEnv(t, func(o *WebhookOptions) { o.Jobs = sink })
	storageTopic := amlEvent("bad-topic", orchestrator.TypeRunCompleted, "j1", "")
	storageTopic["topic"] = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/mystorage"
	mismatch := amlEvent("bad-subject", orchestrator.TypeRunCompleted, "j1", "")
	mismatch["subject"] = "experiments/x/runs/j2"
	noStatus := amlEvent("no-status", orchestrator.TypeRunStatusChanged, "j1", "")
	control := amlEvent("control", orchestrator.TypeRunCompleted, "j1\nforged log line", "")
	control["subject"] = ""
	noRun := amlEvent("no-run", orchestrator.TypeRunCompleted, "", "")
	noRun["subject"] = ""
	code, body := e.post(mustJSON(t, []any{storageTopic, mismatch, noStatus, control, noRun}), nil)
	if code != 200 {
		t.Fatalf("status %d (%s), want 200: every event has a recorded outcome", code, body)
	}
	if got := sink.got(); len(got) != 0 {
		t.Errorf("the orchestrator got %+v", got)
	}
	want := map[string]string{
		"eventgrid:bad-topic":   "is not an Azure ML workspace",
		"eventgrid:bad-subject": `subject names run "j2", data.runId "j1"`,
		"eventgrid:no-status":   "data.runStatus is missing",
		"eventgrid:control":     "is not a job name",
		"eventgrid:no-run":      "data.runId is missing",
	}
	recs := e.intake.Snapshot().RecordsIn(orchestrator.StateRejected)
	if len(recs) != len(want) {
		t.Fatalf("%d rejected records, want %d: %+v", len(recs), len(want), recs)
	}
	for _, r := range recs {
		if !strings.Contains(r.Reason, want[r.Event.Key]) || want[r.Event.Key] == "" {
			t.Errorf("%s: reason %q, want it to say %q", r.Event.Key, r.Reason, want[r.Event.Key])
		}
	}
}

// When the orchestrator cannot take a job event (NATS without quorum),
// Event Grid is told to deliver it again.
func TestWebhookJobEventNotTakenIsRedelivered(t *testing.T) {
	sink := &jobSink{err: fmt.Errorf("job event: %w", orchestrator.ErrUnavailable)}
	e := newHookEnv(t, func(o *WebhookOptions) { o.Jobs = sink })
	code, _ := e.post(mustJSON(t, []any{amlEvent("e1", orchestrator.TypeRunCompleted, "j1", "")}), nil)
	if code != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", code)
	}
}
