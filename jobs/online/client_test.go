package online_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/jobs/online"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

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

// harness is a client wired to a simulator, with its debug log kept. At
// cleanup it checks that no secret the simulator made (Entra tokens, Azure
// ML tokens, keys) reached the log or an error the test noted.
type harness struct {
	t       *testing.T
	sim     *jobstest.Sim
	c       *online.Client
	logs    *syncBuffer
	fetches sync.Map // kind -> *atomic.Int64

	mu   sync.Mutex
	errs []string
}

func newHarness(t *testing.T, opts online.Options) *harness {
	t.Helper()
	sim := jobstest.New(t, jobstest.Options{RecordBodies: true})
	return wire(t, sim, opts)
}

func wire(t *testing.T, sim *jobstest.Sim, opts online.Options) *harness {
	t.Helper()
	h := &harness{t: t, sim: sim, logs: &syncBuffer{}}
	if opts.ARMEndpoint == "" {
		opts.ARMEndpoint = sim.ARMEndpoint()
	}
	if opts.Transport == nil {
		opts.Transport = sim.HTTPClient()
	}
	opts.Logger = slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.BackoffBase, opts.BackoffMax = 5*time.Millisecond, 50*time.Millisecond
	opts.OnFetch = func(kind string) {
		n, _ := h.fetches.LoadOrStore(kind, new(atomic.Int64))
		n.(*atomic.Int64).Add(1)
	}
	c, err := online.New(sim.Credential("batchd-online-test"), opts)
	if err != nil {
		t.Fatalf("online.New: %v", err)
	}
	h.c = c
	t.Cleanup(h.checkLeaks)
	return h
}

func (h *harness) fetched(kind string) int64 {
	n, ok := h.fetches.Load(kind)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

func (h *harness) add(name string, opts jobstest.OnlineOptions) online.Endpoint {
	h.t.Helper()
	if err := h.sim.AddOnlineEndpoint(name, opts); err != nil {
		h.t.Fatal(err)
	}
	ep := h.sim.OnlineEndpoint(name)
	ep.Timeout = 5 * time.Second
	return ep
}

// score scores body and notes the error for the leak check.
func (h *harness) score(ctx context.Context, ep online.Endpoint, req online.Request) (*online.Response, error) {
	resp, err := h.c.Score(ctx, ep, req)
	if err != nil {
		h.mu.Lock()
		h.errs = append(h.errs, err.Error(), fmt.Sprintf("%+v", err))
		h.mu.Unlock()
	}
	return resp, err
}

func (h *harness) checkLeaks() {
	h.mu.Lock()
	text := strings.Join(h.errs, "\n") + h.logs.String()
	h.mu.Unlock()
	for _, tok := range h.sim.IssuedTokens() {
		if strings.Contains(text, tok) || strings.Contains(text, tok[strings.LastIndex(tok, ".")+1:]) {
			h.t.Errorf("a token or key the simulator issued appears in a log line or an error")
		}
	}
}

func body(s string) online.Request { return online.Request{Body: []byte(s)} }

// Each auth mode scores against the simulator, and its credential is
// fetched once for many requests.
func TestScoreEachAuthMode(t *testing.T) {
	tests := []struct {
		mode      string
		fetchKind string
		route     jobstest.Route
	}{
		{online.AuthAADToken, "entra", jobstest.RouteToken},
		{online.AuthAMLToken, "aml_token", jobstest.RouteOnlineToken},
		{online.AuthKey, "keys", jobstest.RouteListKeys},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			h := newHarness(t, online.Options{})
			ep := h.add("ep", jobstest.OnlineOptions{AuthMode: tt.mode, Deployments: []string{"blue", "green"}})
			ep.Deployment = "green"
			for i := range 20 {
				resp, err := h.score(t.Context(), ep, body(fmt.Sprintf(`{"n":%d}`, i)))
				if err != nil {
					t.Fatalf("Score %d: %v", i, err)
				}
				want := fmt.Sprintf(`{"deployment":"green","input":{"n":%d}}`, i)
				if string(resp.Body) != want || resp.StatusCode != 200 || resp.Deployment != "green" || resp.Attempts != 1 {
					t.Fatalf("response = %d %q (deployment %q, %d attempts), want 200 %q from green in 1 attempt",
						resp.StatusCode, resp.Body, resp.Deployment, resp.Attempts, want)
				}
			}
			if got := h.fetched(tt.fetchKind); got != 1 {
				t.Errorf("%s fetched %d times for 20 requests, want 1", tt.fetchKind, got)
			}
			if got := h.sim.Count(tt.route); got != 1 {
				t.Errorf("%s requests = %d, want 1", tt.route, got)
			}
			if got := h.sim.OnlineScored("ep"); got != 20 {
				t.Errorf("scored %d, want 20", got)
			}
		})
	}
}

// Keys rotate: a 401 makes the client list the keys again (once) and use
// the new primary; with the primary refused after that, the secondary.
func TestKeyRotation(t *testing.T) {
	h := newHarness(t, online.Options{})
	ep := h.add("ep", jobstest.OnlineOptions{AuthMode: online.AuthKey})
	if _, err := h.score(t.Context(), ep, body(`{}`)); err != nil {
		t.Fatal(err)
	}
	h.sim.RotateKey("ep", "primary")
	resp, err := h.score(t.Context(), ep, body(`{"after":"rotation"}`))
	if err != nil {
		t.Fatalf("Score after the primary key was regenerated: %v", err)
	}
	if resp.Attempts != 2 {
		t.Errorf("attempts = %d, want 2 (401 with the old key, then the new primary)", resp.Attempts)
	}
	if got := h.sim.Count(jobstest.RouteListKeys); got != 2 {
		t.Errorf("listKeys calls = %d, want 2 (the second after the 401)", got)
	}
	// The next request uses the fetched keys right away.
	if resp, err := h.score(t.Context(), ep, body(`{}`)); err != nil || resp.Attempts != 1 {
		t.Fatalf("Score = %v, %+v; want one attempt with the new key", err, resp)
	}
	if got := h.sim.Count(jobstest.RouteListKeys); got != 2 {
		t.Errorf("listKeys calls = %d, want still 2", got)
	}
}

// A key file whose primary key is stale: after the 401 the file is read
// again (it may have been updated), then the secondary key is tried, and
// preferred from then on.
func TestKeyFileFallsBackToSecondary(t *testing.T) {
	h := newHarness(t, online.Options{})
	ep := h.add("ep", jobstest.OnlineOptions{AuthMode: online.AuthKey})
	ep.Workspace = nil
	var reads atomic.Int64
	good := h.sim.OnlineKeys("ep").Secondary
	ep.Keys = func(context.Context) (online.Keys, error) {
		reads.Add(1)
		return online.Keys{Primary: "stale-primary-key-0123456789", Secondary: good}, nil
	}
	resp, err := h.score(t.Context(), ep, body(`{}`))
	if err != nil {
		t.Fatalf("Score: %v", err)
	}
	if resp.Attempts != 2 || reads.Load() != 2 {
		t.Errorf("attempts %d, file reads %d; want 2 and 2 (stale primary, read again, secondary)", resp.Attempts, reads.Load())
	}
	if got := h.sim.Count(jobstest.RouteListKeys); got != 0 {
		t.Errorf("listKeys calls = %d with a key file, want 0", got)
	}
	resp, err = h.score(t.Context(), ep, body(`{}`))
	if err != nil || resp.Attempts != 1 {
		t.Fatalf("second Score = %v, %+v; want one attempt with the secondary key", err, resp)
	}
	// Both keys refused: a clear auth error, after the one re-read.
	h.sim.RotateKey("ep", "secondary")
	_, err = h.score(t.Context(), ep, body(`{}`))
	var oe *online.Error
	if !errors.As(err, &oe) || oe.Kind != online.KindRejected || !online.IsAuth(err) || !strings.Contains(err.Error(), "update the key file") {
		t.Fatalf("Score with both keys refused = %v, want a rejected auth error naming the key file", err)
	}
}

// A wrong audience: an Entra token for ARM presented to an aad_token
// endpoint is refused; the error says which scope batchd asked for, and
// the request is not sent again.
func TestWrongAudience(t *testing.T) {
	h := newHarness(t, online.Options{MLScope: "https://management.azure.com/.default"})
	ep := h.add("ep", jobstest.OnlineOptions{AuthMode: online.AuthAADToken})
	_, err := h.score(t.Context(), ep, body(`{}`))
	var oe *online.Error
	if !errors.As(err, &oe) {
		t.Fatalf("Score = %v, want *online.Error", err)
	}
	if oe.Kind != online.KindRejected || oe.StatusCode != 401 || !online.IsAuth(err) {
		t.Errorf("error kind %s status %d auth %v, want rejected 401 auth", oe.Kind, oe.StatusCode, online.IsAuth(err))
	}
	for _, want := range []string{"wrong audience", "BATCHD_ML_SCOPE", "https://ml.azure.com/.default"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if got := h.sim.Count(jobstest.RouteScore); got != 1 {
		t.Errorf("scoring POSTs = %d, want 1", got)
	}
	// The same for the management token of the ARM token action.
	h2 := newHarness(t, online.Options{ARMScope: "https://ml.azure.com/.default"})
	ep2 := h2.add("aml", jobstest.OnlineOptions{AuthMode: online.AuthAMLToken})
	_, err = h2.score(t.Context(), ep2, body(`{}`))
	if !errors.As(err, &oe) || oe.Op != online.OpToken || oe.StatusCode != 401 || !strings.Contains(err.Error(), "BATCHD_ARM_SCOPE") {
		t.Errorf("Score with an ml.azure.com token for ARM = %v, want a 401 from the token action naming BATCHD_ARM_SCOPE", err)
	}
}

// A missing role: the error names the role action, per mode.
func TestMissingRoleNamesAction(t *testing.T) {
	tests := []struct {
		mode, action string
	}{
		{online.AuthAADToken, online.ActionScore},
		{online.AuthAMLToken, online.ActionToken},
		{online.AuthKey, online.ActionListKeys},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			h := newHarness(t, online.Options{})
			ep := h.add("ep", jobstest.OnlineOptions{AuthMode: tt.mode})
			h.sim.DenyAction("batchd-online-test", tt.action)
			_, err := h.score(t.Context(), ep, body(`{}`))
			var oe *online.Error
			if !errors.As(err, &oe) || oe.Kind != online.KindRejected || oe.StatusCode != 403 || !online.IsAuth(err) {
				t.Fatalf("Score = %v, want a rejected 403", err)
			}
			if !strings.Contains(err.Error(), tt.action) {
				t.Errorf("error %q does not name %s", err, tt.action)
			}
			if got := h.sim.OnlineScored("ep"); got != 0 {
				t.Errorf("scored %d, want 0", got)
			}
		})
	}
}

// 429 and 503 are refused before the model runs: sent again after
// Retry-After (or a backoff) within the deadline; past it, timed out with
// the endpoint's answer.
func TestBusyEndpointIsRetried(t *testing.T) {
	h := newHarness(t, online.Options{})
	ep := h.add("ep", jobstest.OnlineOptions{})
	h.sim.Inject(jobstest.RouteScore,
		jobstest.Fault{Status: 429, RetryAfter: 30 * time.Millisecond},
		jobstest.Fault{Status: 503},
	)
	start := time.Now()
	resp, err := h.score(t.Context(), ep, body(`{}`))
	if err != nil {
		t.Fatalf("Score: %v", err)
	}
	if resp.Attempts != 3 || h.sim.OnlineScored("ep") != 1 {
		t.Errorf("attempts %d, scored %d; want 3 and 1", resp.Attempts, h.sim.OnlineScored("ep"))
	}
	if d := time.Since(start); d < 30*time.Millisecond {
		t.Errorf("took %s, less than the Retry-After of 30ms", d)
	}

	// Always busy: the deadline ends it, and the error says so.
	h.sim.SetFaultRate(jobstest.RouteScore, 1, jobstest.Fault{Status: 429, RetryAfter: 20 * time.Millisecond})
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = h.score(ctx, ep, body(`{}`))
	var oe *online.Error
	if !errors.As(err, &oe) || oe.Kind != online.KindTimedOut || oe.StatusCode != 429 || oe.Attempts < 3 {
		t.Fatalf("Score against a busy endpoint = %v, want timed_out after several 429s", err)
	}
	if !strings.Contains(err.Error(), "over capacity") {
		t.Errorf("error %q does not explain the 429s", err)
	}
}

// Over the endpoint's concurrency the simulator answers 429 with
// Retry-After: concurrent requests all end scored.
func TestConcurrencyLimit(t *testing.T) {
	h := newHarness(t, online.Options{})
	ep := h.add("ep", jobstest.OnlineOptions{MaxConcurrent: 2, RetryAfter: 10 * time.Millisecond, Latency: 20 * time.Millisecond})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Go(func() {
			if _, err := h.score(t.Context(), ep, body(fmt.Sprintf(`{"i":%d}`, i))); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Score: %v", err)
	}
	if h.sim.OnlineScored("ep") != 8 || h.sim.OnlineThrottled("ep") == 0 {
		t.Errorf("scored %d, throttled %d; want 8 scored after some 429s", h.sim.OnlineScored("ep"), h.sim.OnlineThrottled("ep"))
	}
}

// Other answers are final: 4xx rejected with the service's message, 5xx
// failed; neither is sent again.
func TestErrorAnswers(t *testing.T) {
	tests := []struct {
		status int
		kind   online.Kind
	}{
		{400, online.KindRejected},
		{404, online.KindRejected},
		{422, online.KindRejected},
		{500, online.KindFailed},
		{502, online.KindFailed},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.status), func(t *testing.T) {
			h := newHarness(t, online.Options{})
			ep := h.add("ep", jobstest.OnlineOptions{Handler: func(jobstest.OnlineRequest) (int, []byte) {
				return tt.status, []byte(`{"message":"the model says no"}`)
			}})
			_, err := h.score(t.Context(), ep, body(`{}`))
			var oe *online.Error
			if !errors.As(err, &oe) || oe.Kind != tt.kind || oe.StatusCode != tt.status {
				t.Fatalf("Score = %v, want %s with %d", err, tt.kind, tt.status)
			}
			if !strings.Contains(err.Error(), "the model says no") || oe.Response == nil || string(oe.Response.Body) != `{"message":"the model says no"}` {
				t.Errorf("error %q / response %+v lacks the service's message", err, oe.Response)
			}
			if got := h.sim.Count(jobstest.RouteScore); got != 1 {
				t.Errorf("POSTs = %d, want 1", got)
			}
		})
	}
}

// A request sent without an answer (the connection reset after the model
// ran) is unknown and not sent again; with SafeToRepeat it is.
func TestNoAnswer(t *testing.T) {
	h := newHarness(t, online.Options{})
	ep := h.add("ep", jobstest.OnlineOptions{})
	h.sim.Inject(jobstest.RouteScore, jobstest.Fault{Reset: jobstest.ResetAfter})
	_, err := h.score(t.Context(), ep, body(`{}`))
	if k := online.KindOf(err); k != online.KindUnknown {
		t.Fatalf("Score after a reset = %v (kind %s), want unknown", err, k)
	}
	if got := h.sim.OnlineScored("ep"); got != 1 {
		t.Errorf("scored %d, want 1 (no second POST)", got)
	}
	h.sim.Inject(jobstest.RouteScore, jobstest.Fault{Reset: jobstest.ResetAfter})
	req := body(`{}`)
	req.SafeToRepeat = true
	resp, err := h.score(t.Context(), ep, req)
	if err != nil || resp.Attempts != 2 {
		t.Fatalf("Score with SafeToRepeat = %v, %+v; want success in 2 attempts", err, resp)
	}
	if got := h.sim.OnlineScored("ep"); got != 3 {
		t.Errorf("scored %d, want 3", got)
	}
	// No answer within the endpoint's timeout: timed out, sent once.
	slow := h.add("slow", jobstest.OnlineOptions{Latency: time.Second})
	slow.Timeout = 50 * time.Millisecond
	_, err = h.score(t.Context(), slow, body(`{}`))
	var oe *online.Error
	if !errors.As(err, &oe) || oe.Kind != online.KindTimedOut || !oe.Sent || h.sim.Count(jobstest.RouteScore) != 4 {
		t.Errorf("Score against a slow endpoint = %v, want timed_out after one POST", err)
	}
}

// Secrets never reach an error or a response, even when the endpoint
// echoes the Authorization header back.
func TestEchoedCredentialIsScrubbed(t *testing.T) {
	status := http.StatusBadRequest
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"message":"request with header %s"}`, r.Header.Get("Authorization"))
	}))
	defer srv.Close()
	sim := jobstest.New(t, jobstest.Options{})
	h := wire(t, sim, online.Options{AllowHTTP: true, Transport: srv.Client()})
	const key = "my-very-secret-online-endpoint-key-value"
	ep := online.Endpoint{Name: "echo", ScoringURI: srv.URL + "/score", AuthMode: online.AuthKey,
		Keys: func(context.Context) (online.Keys, error) { return online.Keys{Primary: key}, nil }}
	_, err := h.score(t.Context(), ep, body(`{}`))
	if err == nil {
		t.Fatal("Score succeeded against a 400")
	}
	if strings.Contains(err.Error(), key) || strings.Contains(fmt.Sprintf("%+v", err), key) || strings.Contains(h.logs.String(), key) {
		t.Errorf("the key reached the error or the log: %v", err)
	}
	if !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("error %q does not show the redaction", err)
	}
	if s := fmt.Sprint(online.Keys{Primary: key}); strings.Contains(s, key) {
		t.Errorf("Keys prints its value: %s", s)
	}
	status = http.StatusOK
	resp, err := h.score(t.Context(), ep, body(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"message":"request with header Bearer [redacted]"}`; string(resp.Body) != want {
		t.Errorf("echoing 200 answer = %q, want %q", resp.Body, want)
	}
}

// Bad input is refused before anything is sent.
func TestScoreRefusesBadRequests(t *testing.T) {
	h := newHarness(t, online.Options{})
	good := h.add("ep", jobstest.OnlineOptions{})
	tests := []struct {
		name string
		ep   func(online.Endpoint) online.Endpoint
		body string
		want string
	}{
		{"body not JSON", func(e online.Endpoint) online.Endpoint { return e }, `{"a":`, "not JSON"},
		{"http scoring URI", func(e online.Endpoint) online.Endpoint {
			e.ScoringURI = strings.Replace(e.ScoringURI, "https://", "http://", 1)
			return e
		}, `{}`, "must be https"},
		{"aml_token without workspace", func(e online.Endpoint) online.Endpoint {
			e.AuthMode, e.Workspace = online.AuthAMLToken, nil
			return e
		}, `{}`, "needs the endpoint's workspace"},
		{"unknown auth mode", func(e online.Endpoint) online.Endpoint { e.AuthMode = "password"; return e }, `{}`, `"password" is not one of`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.score(t.Context(), tt.ep(good), body(tt.body))
			if !errors.Is(err, online.ErrInvalidRequest) || online.KindOf(err) != online.KindRejected || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Score = %v, want a rejected ErrInvalidRequest saying %q", err, tt.want)
			}
		})
	}
	if got := h.sim.Count(jobstest.RouteScore); got != 0 {
		t.Errorf("POSTs = %d, want 0", got)
	}
}

// Many goroutines, one credential fetch: the cache lets one fetch run and
// the others wait for it.
func TestConcurrentFirstUseFetchesOnce(t *testing.T) {
	h := newHarness(t, online.Options{})
	ep := h.add("ep", jobstest.OnlineOptions{AuthMode: online.AuthAMLToken})
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			if _, err := h.score(t.Context(), ep, body(`{}`)); err != nil {
				t.Errorf("Score: %v", err)
			}
		})
	}
	wg.Wait()
	if diff := cmp.Diff(int64(1), h.sim.Count(jobstest.RouteOnlineToken)); diff != "" {
		t.Errorf("token actions (-want +got):\n%s", diff)
	}
}

// A 408 comes from the scoring server after the request reached it: the
// model may have run. It is sent again only when the pipeline says that is
// safe; otherwise the outcome is unknown, with one request sent.
func TestRequestTimeoutIsNotResent(t *testing.T) {
	h := newHarness(t, online.Options{})
	ep := h.add("ep", jobstest.OnlineOptions{})
	h.sim.Inject(jobstest.RouteScore, jobstest.Fault{Status: http.StatusRequestTimeout, AfterHandling: true})
	_, err := h.score(t.Context(), ep, body(`{}`))
	var oe *online.Error
	if !errors.As(err, &oe) || oe.Kind != online.KindUnknown || !oe.Sent || oe.Attempts != 1 {
		t.Fatalf("Score answered 408 = %v, want unknown after one sent request", err)
	}
	if got := h.sim.OnlineScored("ep"); got != 1 {
		t.Errorf("scored %d, want 1 (no second POST)", got)
	}
	if !strings.Contains(err.Error(), "safe_to_repeat") {
		t.Errorf("error %q does not say how to allow a second request", err)
	}
	h.sim.Inject(jobstest.RouteScore, jobstest.Fault{Status: http.StatusRequestTimeout, AfterHandling: true})
	req := body(`{}`)
	req.SafeToRepeat = true
	resp, err := h.score(t.Context(), ep, req)
	if err != nil || resp.Attempts != 2 {
		t.Fatalf("Score with SafeToRepeat after a 408 = %v, %+v; want success in 2 attempts", err, resp)
	}
}
