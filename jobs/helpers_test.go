package jobs_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// syncBuffer is a concurrency-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness is a client wired to a simulator, with debug logs captured.
// At cleanup it checks that no token the simulator issued appears in the
// logs or in any error the test passed through h.note: every test that uses
// a harness doubles as a token-leak test.
type harness struct {
	t    *testing.T
	sim  *jobstest.Sim
	c    *jobs.Client
	logs *syncBuffer
	mu   sync.Mutex
	errs []string
}

// fastRetry keeps GET retries quick in tests while keeping their shape.
func fastRetry() policy.RetryOptions {
	return policy.RetryOptions{MaxRetries: 3, RetryDelay: time.Millisecond, MaxRetryDelay: 50 * time.Millisecond, TryTimeout: 2 * time.Second}
}

func newHarness(t *testing.T, simOpts jobstest.Options, mutate ...func(*jobs.Options)) *harness {
	t.Helper()
	sim := jobstest.New(t, simOpts)
	return newHarnessFor(t, sim, sim.Credential(uniqueID("client")), mutate...)
}

func newHarnessFor(t *testing.T, sim *jobstest.Sim, cred azcore.TokenCredential, mutate ...func(*jobs.Options)) *harness {
	t.Helper()
	h := &harness{t: t, sim: sim, logs: &syncBuffer{}}
	opts := jobs.Options{
		Transport:   sim.HTTPClient(),
		ARMEndpoint: sim.ARMEndpoint(),
		GetRetry:    fastRetry(),
		Logger:      slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, m := range mutate {
		m(&opts)
	}
	c, err := jobs.New(cred, opts)
	if err != nil {
		t.Fatalf("jobs.New: %v", err)
	}
	h.c = c
	t.Cleanup(h.checkNoTokens)
	return h
}

// note records an error for the token-leak check and returns it.
func (h *harness) note(err error) error {
	if err != nil {
		h.mu.Lock()
		h.errs = append(h.errs, err.Error(), strings.ReplaceAll(err.Error(), "\n", " "))
		h.mu.Unlock()
	}
	return err
}

func (h *harness) checkNoTokens() {
	h.t.Helper()
	tokens := h.sim.IssuedTokens()
	h.mu.Lock()
	texts := append([]string{h.logs.String()}, h.errs...)
	h.mu.Unlock()
	for _, tok := range tokens {
		sig := tok[strings.LastIndex(tok, ".")+1:]
		for _, text := range texts {
			if strings.Contains(text, tok) || (len(sig) > 10 && strings.Contains(text, sig)) {
				h.t.Errorf("a token issued by the simulator appears in a log line or error: %.200q", text)
			}
		}
	}
}

func (h *harness) submit(ep jobs.Endpoint, req jobs.JobRequest) (*jobs.Job, error) {
	h.t.Helper()
	j, err := h.c.Submit(context.Background(), ep, req)
	return j, h.note(err)
}

func (h *harness) get(ep jobs.Endpoint, name string) (*jobs.Job, error) {
	h.t.Helper()
	j, err := h.c.Get(context.Background(), ep, name)
	return j, h.note(err)
}

func oneInput() jobs.JobRequest {
	return jobs.JobRequest{Inputs: map[string]jobs.Input{
		"heart_dataset": {Type: jobs.TypeUriFolder, URI: "https://azuremlexampledata.blob.core.windows.net/data/heart-disease-uci/data"},
	}}
}

func uniqueID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// class is the verdict of the four classifiers on one error.
type class struct {
	Retryable, Permanent, Ambiguous, Auth bool
}

func classify(err error) class {
	return class{jobs.IsRetryable(err), jobs.IsPermanent(err), jobs.IsAmbiguous(err), jobs.IsAuth(err)}
}

// credFunc is a TokenCredential returning the token f makes, valid an hour.
type credFunc func() string

func (f credFunc) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: f(), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// loopbackOnly refuses any request that would leave the machine, so that a
// regression shows up as an error instead of traffic.
type loopbackOnly struct{ next *http.Client }

func (l loopbackOnly) Do(r *http.Request) (*http.Response, error) {
	if h := r.URL.Hostname(); h != "127.0.0.1" && h != "localhost" && h != "::1" {
		return nil, fmt.Errorf("test transport: refusing non-loopback request to %s", r.URL.Host)
	}
	return l.next.Do(r)
}

// warmUp fetches the data-plane token and opens a pooled connection (a GET
// of a job that does not exist), so that a test's timing starts with the
// request itself rather than with a TLS handshake.
func (h *harness) warmUp() {
	h.t.Helper()
	if _, err := h.c.Get(context.Background(), h.sim.Endpoint("ep"), "batchjob-warm-up"); !jobs.IsPermanent(err) {
		h.t.Fatalf("warm-up GET: %v, want a 404", err)
	}
}
