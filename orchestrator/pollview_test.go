package orchestrator

import (
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
)

func TestPollViews(t *testing.T) {
	t.Parallel()
	ep := func() *jobs.Endpoint {
		return &jobs.Endpoint{Name: "ep", ScoringURI: "https://ep.example/jobs", Workspace: &jobs.Workspace{Subscription: "s", ResourceGroup: "g", Name: "w"}}
	}
	run := func(id string, state State) *record {
		return &record{Run: Run{ID: id, State: state, Endpoint: "ep",
			Job: &JobRef{Name: "job-" + id, Status: jobs.StatusRunning, StudioURL: "https://ml.azure.com/runs/job-" + id, SubmittedAt: time.Unix(100, 0)}},
			Sys: sysState{Carrier: carrierTracker, Endpoint: ep()}}
	}
	p := newPollViews()
	p.put(run("a", StateRunning), 7)
	p.put(run("b", StateRunning), 8)
	if a, b := p.get("a"), p.get("b"); a == nil || b == nil || a.ep != b.ep {
		t.Fatalf("views a %v, b %v: want both, sharing one endpoint", a, b)
	}
	p.changed("a", 7) // its own write, seen by the watch
	if p.get("a") == nil {
		t.Error("a write at the view's own revision dropped it")
	}
	p.changed("a", 9)
	if p.get("a") != nil {
		t.Error("a write at another revision kept the view")
	}
	for name, r := range map[string]*record{
		"unknown":         run("c", StateUnknown),
		"cancel pending":  func() *record { r := run("c", StateRunning); r.Sys.Cancel = &cancelRequest{Reason: "x"}; return r }(),
		"intake carrier":  func() *record { r := run("c", StateSubmitted); r.Sys.Carrier = carrierIntake; return r }(),
		"resolve pending": func() *record { r := run("c", StateRunning); r.Sys.Resolve = &resolveRequest{Reason: "x"}; return r }(),
	} {
		p.put(run("c", StateRunning), 1)
		p.put(r, 2)
		if p.get("c") != nil {
			t.Errorf("%s: a run that is not simply polled keeps a view", name)
		}
	}
	p.changed("b", 3) // a late report of an older write
	if p.get("b") == nil {
		t.Error("a report of a write older than the view dropped it")
	}

	// A step that read the run at 4 while the watch reported a write at 5
	// keeps no view of what it read; one that read the newest does.
	p.begin("e")
	p.changed("e", 5)
	p.put(run("e", StateRunning), 4)
	if p.get("e") != nil {
		t.Error("a view of a read older than a reported write was kept")
	}
	p.put(run("e", StateRunning), 5)
	if p.get("e") == nil {
		t.Error("a view of the newest write was refused")
	}
	p.end("e")
	if len(p.busy) != 0 {
		t.Errorf("busy runs left after end: %v", p.busy)
	}

	// answers: what a look may find without a write.
	v := p.view(run("d", StateSubmitted), 1)
	same := &jobs.Job{Name: "job-d", Status: jobs.StatusRunning, StudioURL: "https://ml.azure.com/runs/job-d"}
	v.status = jobs.StatusQueued
	queued := *same
	queued.Status = jobs.StatusQueued
	for _, tt := range []struct {
		name string
		job  jobs.Job
		v    func(*pollView)
		want bool
	}{
		{"as the view has it", queued, nil, true},
		{"no studio URL in the answer", jobs.Job{Name: "job-d", Status: jobs.StatusQueued}, nil, true},
		{"now running", *same, nil, false},
		{"another studio URL", jobs.Job{Name: "job-d", Status: jobs.StatusQueued, StudioURL: "https://x"}, nil, false},
		{"ended", jobs.Job{Name: "job-d", Status: jobs.StatusCompleted}, func(v *pollView) { v.status = jobs.StatusCompleted }, false},
		{"after a failing look", queued, func(v *pollView) { v.failing = "status request failed: x" }, false},
	} {
		w := *v
		if tt.v != nil {
			tt.v(&w)
		}
		if got := w.answers(p, &tt.job); got != tt.want {
			t.Errorf("%s: answers = %v, want %v", tt.name, got, tt.want)
		}
	}
}
