package orchestrator

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
)

const testToken = "s3cret-api-token-value"

type apiClient struct {
	t     *testing.T
	srv   *httptest.Server
	token string
}

func (c *apiClient) do(method, path, body string) (int, []byte) {
	c.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(c.t.Context(), method, c.srv.URL+path, r)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.srv.Client().Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func decodeAs[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return v
}

func newAPI(t *testing.T, h *harness, token string) *apiClient {
	srv := httptest.NewServer(h.o.Handler(HandlerOptions{APIToken: token}))
	t.Cleanup(srv.Close)
	return &apiClient{t: t, srv: srv, token: token}
}

func TestAPI(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	c := newAPI(t, h, testToken)

	// Probes and metrics need no token.
	anon := &apiClient{t: t, srv: c.srv}
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := anon.do("GET", path, ""); code != 200 {
			t.Errorf("GET %s = %d %s, want 200", path, code, body)
		}
	}

	// /api needs the token, and never echoes it.
	code, body := anon.do("GET", "/api/v1/runs", "")
	if code != http.StatusUnauthorized || decodeAs[ErrorBody](t, body).Error.Code != "unauthorized" {
		t.Errorf("GET /api/v1/runs without a token = %d %s, want 401 unauthorized", code, body)
	}
	wrong := &apiClient{t: t, srv: c.srv, token: "wrong"}
	if code, _ := wrong.do("GET", "/api/v1/runs", ""); code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d, want 401", code)
	}

	// A manual run: 202 the first time, 200 with the same run id after.
	code, body = c.do("POST", "/api/v1/pipelines/score/runs", `{"key":"manual-1","fields":{"uri":"https://a.blob.core.windows.net/c/x"}}`)
	if code != http.StatusAccepted {
		t.Fatalf("manual run = %d %s, want 202", code, body)
	}
	first := decodeAs[ManualRunResponse](t, body)
	if first.RunID != RunID("score", "manual-1") {
		t.Errorf("run_id = %s, want RunID(score, manual-1)", first.RunID)
	}
	h.waitState(first.RunID, StateCompleted, 10*time.Second)
	code, body = c.do("POST", "/api/v1/pipelines/score/runs", `{"key":"manual-1","fields":{"uri":"https://a.blob.core.windows.net/c/x"}}`)
	if code != http.StatusOK || decodeAs[ManualRunResponse](t, body).RunID != first.RunID || decodeAs[ManualRunResponse](t, body).State != StateCompleted {
		t.Errorf("same key again = %d %s, want 200 with the same run, completed", code, body)
	}

	// Show.
	code, body = c.do("GET", "/api/v1/runs/"+first.RunID, "")
	if code != 200 {
		t.Fatalf("GET run = %d %s", code, body)
	}
	var shown map[string]any
	if err := json.Unmarshal(body, &shown); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"id", "pipeline", "key", "source", "state", "job", "decision", "history"} {
		if _, ok := shown[k]; !ok {
			t.Errorf("run JSON lacks %q: %s", k, body)
		}
	}
	job := shown["job"].(map[string]any)
	for _, k := range []string{"name", "status", "studio_url"} {
		if _, ok := job[k]; !ok {
			t.Errorf("run JSON job lacks %q: %s", k, body)
		}
	}

	// List.
	code, body = c.do("GET", "/api/v1/runs?pipeline=score&state=completed&limit=10", "")
	list := decodeAs[RunList](t, body)
	if code != 200 || len(list.Runs) != 1 || list.Runs[0].ID != first.RunID || !strings.Contains(string(body), `"next_cursor"`) {
		t.Errorf("list = %d %s, want the one run and a next_cursor field", code, body)
	}

	// Errors: each a JSON body with a fitting status.
	tests := []struct {
		method, path, body string
		wantCode           int
		wantErr            string
	}{
		{"GET", "/api/v1/runs/0123456789abcdef0123456789abcdef", "", 404, "not_found"},
		{"GET", "/api/v1/runs?state=bogus", "", 400, "invalid_request"},
		{"GET", "/api/v1/runs?limit=0", "", 400, "invalid_request"},
		{"POST", "/api/v1/pipelines/nope/runs", `{}`, 404, "not_found"},
		{"POST", "/api/v1/pipelines/score/runs", `{"fields":{}}`, 400, "invalid_request"},
		{"POST", "/api/v1/pipelines/score/runs", `{"bogus":1}`, 400, "invalid_request"},
		{"POST", "/api/v1/runs/" + first.RunID + "/cancel", ``, 409, "conflict"},
		{"POST", "/api/v1/runs/" + first.RunID + "/resolve", `{"state":"completed"}`, 409, "conflict"},
		{"POST", "/api/v1/runs/" + first.RunID + "/resolve", `{"state":"running"}`, 400, "invalid_request"},
		{"GET", "/api/v1/nothing", "", 404, "not_found"},
	}
	for _, tt := range tests {
		code, body := c.do(tt.method, tt.path, tt.body)
		if code != tt.wantCode || decodeAs[ErrorBody](t, body).Error.Code != tt.wantErr {
			t.Errorf("%s %s = %d %s, want %d %s", tt.method, tt.path, code, body, tt.wantCode, tt.wantErr)
		}
	}

	// Retry a finished run through the API.
	code, body = c.do("POST", "/api/v1/runs/"+first.RunID+"/retry", `{"reason":"again"}`)
	if code != 200 && code != 202 {
		t.Fatalf("retry = %d %s", code, body)
	}
	r := h.waitState(first.RunID, StateCompleted, 10*time.Second)
	if len(r.PreviousJobs) != 1 {
		t.Errorf("after retry: previous jobs %+v, want 1", r.PreviousJobs)
	}

	// Pipelines.
	code, body = c.do("GET", "/api/v1/pipelines", "")
	pl := decodeAs[PipelineList](t, body)
	if code != 200 || len(pl.Pipelines) != 1 || pl.Pipelines[0].Inputs["data"].URI != "{{ .Fields.uri }}" {
		t.Errorf("pipelines = %d %s", code, body)
	}

	// Metrics, with batchd's names, on the registry main gave (main
	// serves /metrics from it).
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, f := range families {
		got[f.GetName()] = true
	}
	for _, name := range []string{"batchd_events_total", "batchd_runs", "batchd_submissions_total", "batchd_job_duration_seconds",
		"batchd_poll_requests_total", "batchd_consumer_pending"} {
		if !got[name] {
			t.Errorf("the registry lacks %s", name)
		}
	}
	if code, _ := anon.do("GET", "/metrics", ""); code != http.StatusNotFound {
		t.Errorf("the API serves /metrics (%d): main does, from its registry", code)
	}
	if strings.Contains(h.logs.String(), testToken) {
		t.Errorf("the API token reached the log")
	}
}

func TestAPICancel(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = jobs.StatusRunning
	ws := testPipeline(t, "ws", testWorkspace)
	nows := testPipeline(t, "nows", nil)
	h := newHarness(t, []*Pipeline{ws, nows}, sub)
	c := newAPI(t, h, "")

	id := h.emit("ws", "k", "https://a.blob.core.windows.net/c/x")
	h.waitState(id, StateRunning, 10*time.Second)
	code, body := c.do("POST", "/api/v1/runs/"+id+"/cancel", `{"reason":"wrong input"}`)
	if code != 200 && code != 202 {
		t.Fatalf("cancel = %d %s", code, body)
	}
	r := h.waitState(id, StateCanceled, 10*time.Second)
	if !strings.Contains(r.History[len(r.History)-1].Reason, "on request: wrong input") {
		t.Errorf("reason = %q, want the operator's", r.History[len(r.History)-1].Reason)
	}

	id2 := h.emit("nows", "k", "https://a.blob.core.windows.net/c/y")
	h.waitState(id2, StateRunning, 10*time.Second)
	code, body = c.do("POST", "/api/v1/runs/"+id2+"/cancel", ``)
	if code != http.StatusConflict || !strings.Contains(decodeAs[ErrorBody](t, body).Error.Message, "no workspace configured") {
		t.Errorf("cancel without a workspace = %d %s, want 409 naming the missing workspace", code, body)
	}
}

// A run waiting for admission is canceled without a job.
func TestCancelWaitingRun(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = jobs.StatusRunning
	p := testPipeline(t, "score", nil)
	p.Endpoint.MaxRunningJobs = 1
	h := newHarness(t, []*Pipeline{p}, sub)
	first := h.emit("score", "a", "https://a.blob.core.windows.net/c/a")
	h.waitState(first, StateRunning, 10*time.Second)
	second := h.emit("score", "b", "https://a.blob.core.windows.net/c/b")
	h.waitState(second, StateWaiting, 10*time.Second)
	r, err := h.o.CancelRun(t.Context(), second, "not needed")
	if err != nil {
		t.Fatalf("CancelRun: %v", err)
	}
	if r.State != StateCanceled {
		r = h.waitState(second, StateCanceled, 10*time.Second)
	}
	if r.Job != nil {
		t.Errorf("canceled waiting run has a job: %+v", r.Job)
	}
	if submits, _ := sub.counts(); submits != 1 {
		t.Errorf("submits = %d, want 1", submits)
	}
}
