package orchestrator

import (
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// simPipeline is a pipeline on the simulator's endpoint name, with or
// without the simulator's workspace.
func simPipeline(t *testing.T, sim *jobstest.Sim, name string, workspace bool) *Pipeline {
	t.Helper()
	p := testPipeline(t, name, nil)
	ep := sim.Endpoint("ep-" + name)
	if workspace {
		ep = sim.WorkspaceEndpoint("ep-" + name)
	}
	p.Endpoint.Endpoint = ep
	return p
}

func simClient(t *testing.T, sim *jobstest.Sim) *jobs.Client {
	t.Helper()
	c, err := newSimClient(sim)
	if err != nil {
		t.Fatalf("jobs.New: %v", err)
	}
	return c
}

func newSimClient(sim *jobstest.Sim) (*jobs.Client, error) {
	return jobs.New(sim.Credential("batchd-test"), jobs.Options{
		ARMEndpoint: sim.ARMEndpoint(),
		Transport:   sim.HTTPClient(),
		GetRetry:    retryFast,
	})
}

// The integration: the real jobs client against the Azure ML simulator.
func TestWithSimulator(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		workspace bool
		faults    []jobstest.Fault
		lifecycle jobstest.Lifecycle
		timeout   time.Duration
		want      State
		wantJobs  int
		check     func(t *testing.T, sim *jobstest.Sim, r *Run)
	}{
		{name: "a job runs to completion", want: StateCompleted, wantJobs: 1},
		{
			name: "the simulator resets after creating the job: reconciled, not submitted again", workspace: true,
			faults: []jobstest.Fault{{Reset: jobstest.ResetAfter}}, want: StateCompleted, wantJobs: 1,
			check: func(t *testing.T, sim *jobstest.Sim, r *Run) {
				jv := sim.Jobs()[0]
				if r.Job.Name != jv.Name || !contains(states(r), StateUnknown) {
					t.Errorf("job %s (history %s), want the adopted %s after unknown", r.Job.Name, historyString(r), jv.Name)
				}
			},
		},
		{
			name: "reset before the job is created: resubmitted once", workspace: true,
			faults: []jobstest.Fault{{Reset: jobstest.ResetBefore}}, want: StateCompleted, wantJobs: 1,
		},
		{
			name:   "429 with Retry-After: the endpoint pauses, then the job goes",
			faults: []jobstest.Fault{{Status: http.StatusTooManyRequests, RetryAfter: time.Second}}, want: StateCompleted, wantJobs: 1,
		},
		{
			name:   "403: rejected with the reason",
			faults: []jobstest.Fault{{Status: http.StatusForbidden}}, want: StateRejected, wantJobs: 0,
		},
		{
			name: "the pipeline's timeout cancels the job through ARM", workspace: true, lifecycle: jobstest.Stuck(jobs.StatusRunning),
			timeout: 500 * time.Millisecond, want: StateTimedOut, wantJobs: 1,
			check: func(t *testing.T, sim *jobstest.Sim, _ *Run) {
				if n := sim.Count(jobstest.RouteARMCancel); n != 1 {
					t.Errorf("ARM cancel requests = %d, want 1", n)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sim := jobstest.New(t, jobstest.Options{Lifecycle: tt.lifecycle})
			p := simPipeline(t, sim, "score", tt.workspace)
			p.Timeout = tt.timeout
			h := newHarness(t, []*Pipeline{p}, simClient(t, sim))
			sim.Inject(jobstest.RouteCreate, tt.faults...)
			id := h.emit("score", "k", "https://acct.blob.core.windows.net/c/in/file.csv")
			r := h.waitState(id, tt.want, 20*time.Second)
			if got := sim.JobCount(); got != tt.wantJobs {
				t.Errorf("jobs created = %d, want %d (history %s)", got, tt.wantJobs, historyString(r))
			}
			if tt.check != nil {
				tt.check(t, sim, r)
			}
		})
	}
}

// retryFast keeps the client's GET retries short in tests.
var retryFast = policy.RetryOptions{MaxRetries: 2, RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 50 * time.Millisecond, TryTimeout: 5 * time.Second}
