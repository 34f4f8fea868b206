package orchestrator

import (
	"fmt"
	"slices"
	"time"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
)

// Endpoint is one configured batch endpoint with batchd's admission limits.
type Endpoint struct {
	jobs.Endpoint
	// MaxRunningJobs caps the jobs batchd keeps running on this endpoint at
	// once, across replicas. 0 means no cap.
	MaxRunningJobs int
	// DeploymentKind is datastores.DeploymentModel (the default) or
	// datastores.DeploymentPipeline; it decides which inputs are valid.
	DeploymentKind string
}

// Pipeline is one pipeline's runtime spec, compiled from the pipelines file.
type Pipeline struct {
	Name string
	// Endpoint is the resolved endpoint; Endpoint.Deployment already holds the
	// pipeline's override, if any.
	Endpoint Endpoint
	// Trigger is "blob", "cron", "nats", or "" for pipelines run only by hand.
	Trigger string

	Inputs         map[string]IOTemplate
	Outputs        map[string]IOTemplate
	ExperimentName *Template
	Settings       jobs.Settings
	Allow          datastores.AllowList
	// Timeout bounds a run from submission to a terminal status; when it
	// passes, the job is canceled and the run ends timed_out. 0: no timeout.
	Timeout time.Duration
	Retry   RetryPolicy
}

// IOTemplate is one input or output of a pipeline.
type IOTemplate struct {
	Type  string    // UriFile | UriFolder | MLTable | Literal
	URI   *Template // nil for Literal
	Value *Template // Literal only
	Mode  string
}

// RetryPolicy says whether and how a Failed job is submitted again.
type RetryPolicy struct {
	// MaxAttempts is the total number of jobs a run may submit (1 = no retry).
	MaxAttempts int
	// Backoff is the wait before the next attempt; it doubles each time.
	Backoff time.Duration
}

// Render turns the pipeline's templates into the job request and the
// preflight request for one run. A template error is the event's fault (a
// message without the field a template reads): callers record the run as
// rejected with the error.
func (p *Pipeline) Render(runID string, ev Event) (jobs.JobRequest, datastores.Request, error) {
	data, err := NewTemplateData(runID, ev)
	if err != nil {
		return jobs.JobRequest{}, datastores.Request{}, err
	}
	req := jobs.JobRequest{
		Inputs:   map[string]jobs.Input{},
		Settings: p.Settings,
	}
	check := datastores.Request{Deployment: p.Endpoint.DeploymentKind, Allow: p.Allow}
	for _, name := range sortedKeys(p.Inputs) {
		io := p.Inputs[name]
		in := jobs.Input{Type: io.Type, Mode: io.Mode}
		if io.Value != nil {
			if in.Value, err = io.Value.Execute(data); err != nil {
				return jobs.JobRequest{}, datastores.Request{}, fmt.Errorf("inputs.%s.value: %w", name, err)
			}
		}
		if io.URI != nil {
			if in.URI, err = io.URI.Execute(data); err != nil {
				return jobs.JobRequest{}, datastores.Request{}, fmt.Errorf("inputs.%s.uri: %w", name, err)
			}
		}
		req.Inputs[name] = in
		check.Inputs = append(check.Inputs, datastores.IO{Name: name, Type: in.Type, URI: in.URI, Value: in.Value})
	}
	if len(p.Outputs) > 0 {
		req.Outputs = map[string]jobs.Output{}
	}
	for _, name := range sortedKeys(p.Outputs) {
		io := p.Outputs[name]
		uri, err := io.URI.Execute(data)
		if err != nil {
			return jobs.JobRequest{}, datastores.Request{}, fmt.Errorf("outputs.%s.uri: %w", name, err)
		}
		req.Outputs[name] = jobs.Output{Type: io.Type, URI: uri, Mode: io.Mode}
		check.Outputs = append(check.Outputs, datastores.IO{Name: name, Type: io.Type, URI: uri})
	}
	if p.ExperimentName != nil {
		if req.ExperimentName, err = p.ExperimentName.Execute(data); err != nil {
			return jobs.JobRequest{}, datastores.Request{}, fmt.Errorf("experiment_name: %w", err)
		}
	}
	return req, check, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
