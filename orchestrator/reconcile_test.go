package orchestrator

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// Reconciliation adopts only the job this run created. Every case loses the
// answer of the run's POST and puts a decoy in the workspace that today's
// input-only match would take: the run must end with its own job, and the
// decoy must stay unclaimed.
func TestReconcileIgnoresDecoys(t *testing.T) {
	const input = "azureml://datastores/ds/paths/in/a.csv"
	tests := []struct {
		name string
		sim  jobstest.Options
		// fault is the run's POST: held (so the decoy can be made while it
		// is in flight), then no answer.
		fault jobstest.Fault
		// decoy makes the decoy job; before says whether before the run's
		// POST, or while it is held.
		before bool
		decoy  func(t *testing.T, sim *jobstest.Sim, c *jobs.Client)
		// wantJobs: the decoy, and the run's own (created by the POST that
		// lost its answer, or by the one resubmission).
		wantJobs int
		// adopted: the run's job is the one its first POST created.
		adopted bool
	}{
		{
			name:  "the same input on another endpoint, created during the POST",
			fault: jobstest.Fault{Reset: jobstest.ResetBefore, Delay: 300 * time.Millisecond},
			decoy: func(t *testing.T, sim *jobstest.Sim, c *jobs.Client) {
				submitDecoy(t, c, sim.WorkspaceEndpoint("ep-other"), input)
			},
			wantJobs: 2,
		},
		{
			name:   "the same input on the same endpoint, created before the POST",
			fault:  jobstest.Fault{Reset: jobstest.ResetBefore},
			before: true,
			decoy: func(t *testing.T, sim *jobstest.Sim, c *jobs.Client) {
				submitDecoy(t, c, sim.WorkspaceEndpoint("ep-score"), input)
			},
			wantJobs: 2,
		},
		{
			name:     "ARM writes the run's short datastore URIs in their long form",
			sim:      jobstest.Options{ARMLongURIs: true},
			fault:    jobstest.Fault{Reset: jobstest.ResetAfter},
			before:   true, // no decoy: the run's own job in another form
			decoy:    func(*testing.T, *jobstest.Sim, *jobs.Client) {},
			wantJobs: 1, adopted: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sim := jobstest.New(t, tt.sim)
			client := simClient(t, sim)
			p := simPipeline(t, sim, "score", true)
			h := newHarness(t, []*Pipeline{p}, client, func(o *Options) { o.ReconcileSkew = 50 * time.Millisecond })
			if tt.before {
				tt.decoy(t, sim, client)
				made := time.Now()
				waitFor(t, 5*time.Second, "the decoy to be older than the clock skew", func() bool { return time.Since(made) > 200*time.Millisecond })
			}
			sim.Inject(jobstest.RouteCreate, tt.fault)
			id := h.emit("score", "k", input)
			if !tt.before {
				// The run's POST has reached the endpoint (and taken its
				// fault) and is held there.
				waitFor(t, 5*time.Second, "the run's POST", func() bool { return sim.Count(jobstest.RouteCreate) == 1 })
				tt.decoy(t, sim, client)
			}
			r := h.waitState(id, StateCompleted, 20*time.Second)
			views := sim.Jobs()
			if len(views) != tt.wantJobs {
				t.Fatalf("jobs = %d, want %d (history %s)", len(views), tt.wantJobs, historyString(r))
			}
			own := views[len(views)-1]
			if tt.adopted {
				own = views[0]
			}
			if r.Job.Name != own.Name || own.Endpoint != "ep-score" {
				t.Errorf("the run has job %s; want its own, %s on ep-score (history %s)", r.Job.Name, own.Name, historyString(r))
			}
			if tt.adopted != strings.Contains(historyString(r), "reconciled: adopted") {
				t.Errorf("adopted = %v, want %v (history %s)", !tt.adopted, tt.adopted, historyString(r))
			}
		})
	}
}

// Two runs on one input, both POSTs without an answer: each adopts the job
// its own POST created, told apart by their outputs, which name the run.
func TestReconcileTwoRunsOnOneInput(t *testing.T) {
	t.Parallel()
	sim := jobstest.New(t, jobstest.Options{})
	p := simPipeline(t, sim, "score", true)
	out, err := CompileTemplate("azureml://datastores/out/paths/{{ .Run.ID }}.csv")
	if err != nil {
		t.Fatal(err)
	}
	p.Outputs = map[string]IOTemplate{"score": {Type: jobs.TypeUriFile, URI: out}}
	h := newHarness(t, []*Pipeline{p}, simClient(t, sim))
	sim.Inject(jobstest.RouteCreate, jobstest.Fault{Reset: jobstest.ResetAfter}, jobstest.Fault{Reset: jobstest.ResetAfter})
	a := h.emit("score", "a", "azureml://datastores/ds/paths/in/same.csv")
	b := h.emit("score", "b", "azureml://datastores/ds/paths/in/same.csv")
	for _, id := range []string{a, b} {
		r := h.waitState(id, StateCompleted, 20*time.Second)
		var own string
		for _, v := range sim.Jobs() {
			if strings.Contains(v.Outputs["score"].URI, id) {
				own = v.Name
			}
		}
		if own == "" || r.Job.Name != own {
			t.Errorf("run %s has job %s, want %q, the job whose output names it (history %s)", id, r.Job.Name, own, historyString(r))
		}
	}
	if n := sim.JobCount(); n != 2 {
		t.Errorf("jobs = %d, want 2", n)
	}
}

func submitDecoy(t *testing.T, c *jobs.Client, ep jobs.Endpoint, uri string) {
	t.Helper()
	if _, err := c.Submit(t.Context(), ep, jobs.JobRequest{Inputs: map[string]jobs.Input{"data": {Type: jobs.TypeUriFile, URI: uri}}}); err != nil {
		t.Fatalf("submit the decoy: %v", err)
	}
}

// Many runs unknown at once (a wave of lost answers) share job listings
// instead of each listing the workspace: the poll budget stays for
// tracking.
func TestReconcileRunsShareJobListings(t *testing.T) {
	t.Parallel()
	sim := jobstest.New(t, jobstest.Options{})
	p := simPipeline(t, sim, "score", true)
	h := newHarness(t, []*Pipeline{p}, simClient(t, sim))
	const n = 16
	faults := make([]jobstest.Fault, n)
	for i := range faults {
		faults[i] = jobstest.Fault{Reset: jobstest.ResetAfter}
	}
	sim.Inject(jobstest.RouteCreate, faults...)
	var ids []string
	for i := range n {
		ids = append(ids, h.emit("score", fmt.Sprintf("k%02d", i), fmt.Sprintf("azureml://datastores/ds/paths/in/%02d.csv", i)))
	}
	for _, id := range ids {
		r := h.waitState(id, StateCompleted, 30*time.Second)
		if !strings.Contains(historyString(r), "reconciled: adopted") {
			t.Errorf("run %s was not adopted: %s", id, historyString(r))
		}
	}
	if got := sim.JobCount(); got != n {
		t.Errorf("jobs = %d, want %d (one per run)", got, n)
	}
	lists := sim.Count(jobstest.RouteARMList)
	t.Logf("%d unknown runs adopted with %d job list requests", n, lists)
	if lists > n/2 {
		t.Errorf("%d job list requests for %d unknown runs; want them shared (at most %d)", lists, n, n/2)
	}
}
