package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/online"
)

// TestClassify: one outcome per error, on errors wrapped the way callers
// wrap them; the order of Classify's rules decides the rows where two
// predicates hold (a 401 is permanent and auth; a 429 is retryable).
func TestClassify(t *testing.T) {
	t.Parallel()
	api := func(op string, status int) error {
		return fmt.Errorf("submit run-1: %w", &jobs.APIError{Op: op, StatusCode: status})
	}
	transport := func(op string, sent bool) error {
		return fmt.Errorf("wrapped: %w", &jobs.TransportError{Op: op, Sent: sent, Err: errors.New("read: connection reset by peer")})
	}
	scored := func(k online.Kind) error {
		return fmt.Errorf("run r: %w", &online.Error{Kind: k, Op: online.OpScore, Endpoint: "e"})
	}
	tests := []struct {
		name string
		err  error
		want jobs.Outcome
	}{
		{"nil", nil, jobs.Done},
		{"unclassified error: a second job is worse", errors.New("boom"), jobs.Ambiguous},
		{"a bare context deadline", context.DeadlineExceeded, jobs.Ambiguous},
		{"token acquisition failed: nothing sent", &jobs.TokenError{Err: errors.New("x")}, jobs.Transient},
		{"submit 400", api(jobs.OpSubmit, 400), jobs.Refused},
		{"submit 401", api(jobs.OpSubmit, 401), jobs.Refused},
		{"submit 403", api(jobs.OpSubmit, 403), jobs.Refused},
		{"submit 404", api(jobs.OpSubmit, 404), jobs.Refused},
		{"submit 409", api(jobs.OpSubmit, 409), jobs.Refused},
		{"submit 422", api(jobs.OpSubmit, 422), jobs.Refused},
		{"submit 418 (other 4xx): an answer, and a refusal", api(jobs.OpSubmit, 418), jobs.Refused},
		{"submit 429", api(jobs.OpSubmit, 429), jobs.Throttled},
		{"submit 408", api(jobs.OpSubmit, 408), jobs.Ambiguous},
		{"submit 500", api(jobs.OpSubmit, 500), jobs.Ambiguous},
		{"submit 503", api(jobs.OpSubmit, 503), jobs.Ambiguous},
		{"submit 302 (no definite answer)", api(jobs.OpSubmit, 302), jobs.Ambiguous},
		{"get 429", api(jobs.OpGet, 429), jobs.Throttled},
		{"get 503", api(jobs.OpGet, 503), jobs.Transient},
		{"get 404", api(jobs.OpGet, 404), jobs.Refused},
		{"cancel 502", api(jobs.OpCancel, 502), jobs.Transient},
		{"list 401", api(jobs.OpList, 401), jobs.Refused},
		{"submit sent, no answer", transport(jobs.OpSubmit, true), jobs.Ambiguous},
		{"submit never sent", transport(jobs.OpSubmit, false), jobs.Transient},
		{"get, no answer", transport(jobs.OpGet, true), jobs.Transient},
		{"invalid request", fmt.Errorf("x: %w", jobs.ErrInvalidRequest), jobs.Refused},
		{"no workspace", fmt.Errorf("x: %w", jobs.ErrNoWorkspace), jobs.Refused},
		{"online: refused", scored(online.KindRejected), jobs.Refused},
		{"online: failed", scored(online.KindFailed), jobs.Failed},
		{"online: timed out", scored(online.KindTimedOut), jobs.TimedOut},
		{"online: sent, no answer", scored(online.KindUnknown), jobs.Ambiguous},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := jobs.Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
	for o := jobs.Done; o <= jobs.Ambiguous; o++ {
		if s := o.String(); s == "outcome(?)" {
			t.Errorf("outcome %d has no name", int(o))
		}
	}
}
