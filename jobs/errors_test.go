package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// The classifier rules, one row each, on errors wrapped the way callers wrap
// them.
func TestClassifiers(t *testing.T) {
	api := func(op string, status int) error {
		return fmt.Errorf("submit run-1: %w", &jobs.APIError{Op: op, StatusCode: status})
	}
	transport := func(op string, sent bool) error {
		return fmt.Errorf("wrapped: %w", &jobs.TransportError{Op: op, Sent: sent, Err: errors.New("read: connection reset by peer")})
	}
	tests := []struct {
		name string
		err  error
		want class
	}{
		{"nil", nil, class{}},
		{"unclassified error", errors.New("boom"), class{}},
		{"token acquisition failed", &jobs.TokenError{Err: errors.New("x")}, class{Retryable: true, Auth: true}},
		{"submit 400", api(jobs.OpSubmit, 400), class{Permanent: true}},
		{"submit 401", api(jobs.OpSubmit, 401), class{Permanent: true, Auth: true}},
		{"submit 403", api(jobs.OpSubmit, 403), class{Permanent: true, Auth: true}},
		{"submit 404", api(jobs.OpSubmit, 404), class{Permanent: true}},
		{"submit 409", api(jobs.OpSubmit, 409), class{Permanent: true}},
		{"submit 422", api(jobs.OpSubmit, 422), class{Permanent: true}},
		{"submit 429: refused, so safe to retry", api(jobs.OpSubmit, 429), class{Retryable: true}},
		{"submit 408", api(jobs.OpSubmit, 408), class{Ambiguous: true}},
		{"submit 500", api(jobs.OpSubmit, 500), class{Ambiguous: true}},
		{"submit 503", api(jobs.OpSubmit, 503), class{Ambiguous: true}},
		{"submit 504", api(jobs.OpSubmit, 504), class{Ambiguous: true}},
		{"submit 418 (other 4xx)", api(jobs.OpSubmit, 418), class{}},
		{"get 429", api(jobs.OpGet, 429), class{Retryable: true}},
		{"get 503", api(jobs.OpGet, 503), class{Retryable: true}},
		{"get 500", api(jobs.OpGet, 500), class{Retryable: true}},
		{"get 404", api(jobs.OpGet, 404), class{Permanent: true}},
		{"cancel 502", api(jobs.OpCancel, 502), class{Retryable: true}},
		{"list 401", api(jobs.OpList, 401), class{Permanent: true, Auth: true}},
		{"submit sent, no answer", transport(jobs.OpSubmit, true), class{Ambiguous: true}},
		{"submit never sent", transport(jobs.OpSubmit, false), class{Retryable: true}},
		{"get, no answer", transport(jobs.OpGet, true), class{Retryable: true}},
		{"cancel, no answer", transport(jobs.OpCancel, true), class{Retryable: true}},
		{"invalid request", fmt.Errorf("x: %w", jobs.ErrInvalidRequest), class{Permanent: true}},
		{"no workspace", fmt.Errorf("x: %w", jobs.ErrNoWorkspace), class{Permanent: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := classify(tt.err); got != tt.want {
				t.Errorf("classify(%v) = %+v, want %+v", tt.err, got, tt.want)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	if d, ok := jobs.RetryAfter(fmt.Errorf("w: %w", &jobs.APIError{StatusCode: 429, RetryAfter: 7 * time.Second})); !ok || d != 7*time.Second {
		t.Errorf("RetryAfter = %v, %v, want 7s", d, ok)
	}
	if _, ok := jobs.RetryAfter(&jobs.APIError{StatusCode: 500}); ok {
		t.Error("RetryAfter without a header reported one")
	}
	if _, ok := jobs.RetryAfter(errors.New("x")); ok {
		t.Error("RetryAfter of a plain error reported one")
	}
}

// A service (or a proxy) that echoes a token in its error body does not
// get it into batchd's errors: token-shaped text is redacted.
func TestEchoedTokenIsRedacted(t *testing.T) {
	h := newHarness(t, jobstest.Options{})
	echoed := h.sim.Token(jobstest.AudienceML, h.sim.Tenant(), "someone", time.Hour)
	h.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 400, Message: "bad request with Authorization: Bearer " + echoed})
	h.sim.Inject(jobstest.RouteGet, jobstest.Fault{Status: 404, Message: "token " + echoed + " not valid here"})
	_, err := h.c.Submit(context.Background(), h.sim.Endpoint("ep"), oneInput())
	if err == nil || strings.Contains(err.Error(), echoed) || !strings.Contains(err.Error(), "[redacted") {
		t.Errorf("err = %v: want the echoed token redacted", err)
	}
	_, err = h.c.Get(context.Background(), h.sim.Endpoint("ep"), "batchjob-x")
	if err == nil || strings.Contains(err.Error(), echoed) || strings.Contains(err.Error(), echoed[strings.LastIndex(echoed, ".")+1:]) {
		t.Errorf("err = %v: want the echoed token redacted", err)
	}
}

// A service that echoes an input URI carrying a SAS, or a connection string,
// does not get the signature or the key into batchd's errors (the job's
// error, or an error answer's message).
func TestEchoedSecretsAreRedacted(t *testing.T) {
	const (
		sig = "c2VjcmV0LXNpZ25hdHVyZQ%3D%3D"
		key = "QUNDT1VOVC1LRVktTkVWRVItU0hPV04="
	)
	echo := "input https://acct.blob.core.windows.net/c/x.csv?sv=2024-01-01&sp=r&sig=" + sig + "&se=2099-01-01 not found; " +
		"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=" + key + ";EndpointSuffix=core.windows.net"
	h := newHarness(t, jobstest.Options{Outcome: func(jobstest.JobView) jobstest.Lifecycle { return jobstest.Fails(echo) }})
	h.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 400, Message: echo})
	_, err := h.submit(h.sim.Endpoint("ep"), oneInput())
	var ae *jobs.APIError
	if !errors.As(err, &ae) || !strings.Contains(ae.Message, "sig=[redacted]") || !strings.Contains(ae.Message, "AccountKey=[redacted]") {
		t.Fatalf("err = %v, want a 400 whose message shows sig=[redacted] and AccountKey=[redacted]", err)
	}
	j, err := h.submit(h.sim.Endpoint("ep"), oneInput())
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	for range 4 {
		if j, err = h.get(h.sim.Endpoint("ep"), j.Name); err != nil {
			t.Fatalf("Get: %v", err)
		}
	}
	if j.Status != jobs.StatusFailed || !strings.Contains(j.Error, "sig=[redacted]") {
		t.Fatalf("job = %+v, want Failed with the echoed error, redacted", j)
	}
	for _, text := range []string{ae.Error(), j.Error} {
		if strings.Contains(text, sig) || strings.Contains(text, key) {
			t.Errorf("a secret leaked into %q", text)
		}
	}
}

// No token reaches a log line or an error: every operation, every fault,
// debug logging on. The harness greps the logs and every error for every
// token the simulator issued (it does so after every test; here the check is
// explicit and the material is known not to be empty).
func TestNoTokenInLogsOrErrors(t *testing.T) {
	h := newHarness(t, jobstest.Options{Lifecycle: jobstest.Fails("job failed")})
	ep := h.sim.WorkspaceEndpoint("ep")
	faults := []jobstest.Fault{{Status: 401}, {Status: 403}, {Status: 404}, {Status: 429, RetryAfter: time.Millisecond},
		{Status: 500}, {Status: 503}, {Reset: jobstest.ResetBefore}, {Reset: jobstest.ResetAfter}}
	ops := map[jobstest.Route]func() error{
		jobstest.RouteCreate: func() error { _, err := h.submit(ep, oneInput()); return err },
		jobstest.RouteGet: func() error {
			_, err := h.get(h.sim.Endpoint("ep"), h.sim.Jobs()[0].Name)
			return err
		},
		jobstest.RouteARMGet:    func() error { _, err := h.get(ep, h.sim.Jobs()[0].Name); return err },
		jobstest.RouteARMCancel: func() error { return h.note(h.c.Cancel(context.Background(), ep, h.sim.Jobs()[0].Name)) },
		jobstest.RouteARMList: func() error {
			_, err := h.c.List(context.Background(), ep, time.Time{})
			return h.note(err)
		},
	}
	if _, err := h.submit(ep, oneInput()); err != nil {
		t.Fatal(err)
	}
	failures := 0
	for route, op := range ops {
		for _, f := range faults {
			// Enough copies to outlast the GET retries.
			for range 5 {
				h.sim.Inject(route, f)
			}
			if op() != nil {
				failures++
			}
			h.sim.ClearFaults()
		}
	}
	// Wrong audiences, and a token-shaped string echoed by the service.
	h.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 400, Message: "echo " + h.sim.IssuedTokens()[0]})
	if ops[jobstest.RouteCreate]() != nil {
		failures++
	}
	wrong := newHarnessFor(t, h.sim, h.sim.Credential("wrong"), func(o *jobs.Options) {
		o.MLScope, o.ARMScope = jobs.DefaultARMScope, jobs.DefaultMLScope
	})
	if _, err := wrong.submit(ep, oneInput()); err != nil {
		failures++
	}
	if _, err := wrong.get(ep, "batchjob-x"); err != nil {
		failures++
	}
	if failures < 30 || len(h.sim.IssuedTokens()) < 3 || !strings.Contains(h.logs.String(), "level=DEBUG") {
		t.Fatalf("%d failures, %d tokens, logs %d bytes: the check below would prove little", failures, len(h.sim.IssuedTokens()), len(h.logs.String()))
	}
	h.checkNoTokens()
	wrong.checkNoTokens()
}
