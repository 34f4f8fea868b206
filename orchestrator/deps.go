package orchestrator

import (
	"context"
	"time"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/online"
)

// Scorer is the online endpoint client (*online.Client implements it).
// Score sends one scoring request (retrying only what cannot score twice,
// within ctx's deadline) and returns the 2xx answer, or an *online.Error,
// which jobs.Classify places (Refused, Failed, TimedOut, Ambiguous).
type Scorer interface {
	Score(ctx context.Context, ep online.Endpoint, req online.Request) (*online.Response, error)
}

// Submitter is the part of the Azure ML client the orchestrator uses
// (*jobs.Client implements it). Submit must not retry the POST; the
// orchestrator goes on by jobs.Classify's outcome (an error it cannot
// place is Ambiguous: the run becomes unknown and is reconciled).
type Submitter interface {
	Submit(ctx context.Context, ep jobs.Endpoint, req jobs.JobRequest) (*jobs.Job, error)
	Get(ctx context.Context, ep jobs.Endpoint, name string) (*jobs.Job, error)
	Cancel(ctx context.Context, ep jobs.Endpoint, name string) error
	// List returns the endpoint's jobs created at or after since, through the
	// ARM jobs API. It needs ep.Workspace; without one it returns an error
	// matching jobs.ErrNoWorkspace.
	List(ctx context.Context, ep jobs.Endpoint, since time.Time, opts ...jobs.ListOption) ([]jobs.Job, error)
}

// Checker runs the data-access preflight for one job (*datastores.Checker
// implements it). It never fails: what it cannot check is a warning in the
// Decision.
type Checker interface {
	Check(ctx context.Context, req datastores.Request) datastores.Decision
}
