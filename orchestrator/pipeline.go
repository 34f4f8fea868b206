package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/online"
)

// Endpoint kinds (the endpoint's `kind` in the pipelines file).
const (
	EndpointBatch  = "batch"
	EndpointOnline = "online"
)

// Endpoint is one configured endpoint with batchd's admission limits: a
// batch endpoint (jobs), or an online endpoint (Kind EndpointOnline) that
// answers each request itself.
type Endpoint struct {
	jobs.Endpoint
	// MaxRunningJobs caps the jobs batchd keeps running on this endpoint at
	// once, across replicas. 0 means no cap.
	MaxRunningJobs int
	// DeploymentKind is datastores.DeploymentModel (the default) or
	// datastores.DeploymentPipeline; it decides which inputs are valid.
	DeploymentKind string

	// Kind is EndpointBatch ("" means batch) or EndpointOnline.
	Kind string
	// Online is an online endpoint's client settings (auth mode,
	// workspace, per-attempt timeout); its Name, ScoringURI and Deployment
	// equal the embedded jobs.Endpoint's.
	Online *online.Endpoint
	// MaxConcurrentRequests caps the scoring requests in flight to an
	// online endpoint, per replica (an in-process limit: N replicas send up
	// to N times as many). 0 means no cap.
	MaxConcurrentRequests int
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

	// Retention, when set, is how long this pipeline's finished runs stay
	// in the ledger (instead of Options.Retention): busy online pipelines
	// keep fewer.
	Retention time.Duration

	// Request is the body template of a pipeline that targets an online
	// endpoint (Endpoint.Kind EndpointOnline); it must render to JSON.
	// Inputs, Outputs, ExperimentName, Settings, Allow and Retry do not
	// apply to such a pipeline; Timeout bounds one request's scoring,
	// retries included (0: the endpoint's timeout).
	Request *Template
	// SafeToRepeat says scoring a request twice does no harm: a request
	// whose outcome is unknown (batchd stopped mid-request, a reset) is
	// sent again instead of ending unknown.
	SafeToRepeat bool
	// Response says what an online run keeps of the endpoint's answer.
	Response ResponsePolicy
}

// ResponsePolicy says what a run of an online pipeline records of the
// request and response bodies. Status, latency and deployment are always
// recorded.
type ResponsePolicy struct {
	// Store keeps the bodies on the run (the API shows them).
	Store bool
	// MaxBytes cuts each stored body to at most this many bytes (the run
	// records that it was cut). 0: DefaultResponseMaxBytes.
	MaxBytes int
}

// DefaultResponseMaxBytes is ResponsePolicy.MaxBytes when unset;
// MaxResponseMaxBytes is the most a run may keep of one body (a run is one
// KV value, and NATS limits those).
const (
	DefaultResponseMaxBytes = 64 << 10
	MaxResponseMaxBytes     = 256 << 10
)

// IsOnline reports whether the pipeline targets an online endpoint.
func (p *Pipeline) IsOnline() bool { return p.Endpoint.Kind == EndpointOnline }

// budget is how long one online request may take, retries included.
func (p *Pipeline) budget() time.Duration {
	if p.Timeout > 0 {
		return p.Timeout
	}
	if p.Endpoint.Online != nil && p.Endpoint.Online.Timeout > 0 {
		return p.Endpoint.Online.Timeout
	}
	return online.DefaultTimeout
}

// RenderRequest renders an online pipeline's request body for one run. The
// result must be JSON; an error names what is wrong, and is the event's
// fault (callers record the run rejected).
func (p *Pipeline) RenderRequest(runID string, ev Event) ([]byte, error) {
	if p.Request == nil {
		return nil, errors.New("the pipeline has no request template")
	}
	data, err := NewTemplateData(runID, ev)
	if err != nil {
		return nil, err
	}
	out, err := p.Request.Execute(data)
	if err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	if err := CheckJSON([]byte(out)); err != nil {
		return nil, fmt.Errorf("request: %w", err)
	}
	return []byte(out), nil
}

// CheckJSON returns nil when b is JSON, else an error that says where it
// stops being JSON (for request templates).
func CheckJSON(b []byte) error {
	var v any
	err := json.Unmarshal(b, &v)
	if err == nil {
		return nil
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		at := int(se.Offset)
		lo := max(0, at-20)
		hi := min(len(b), at+20)
		return fmt.Errorf("renders to text that is not JSON (%s at byte %d, near %q); use {{ json .Field }} to quote values", se.Error(), se.Offset, string(b[lo:hi]))
	}
	return fmt.Errorf("renders to text that is not JSON: %w", err)
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
//
// For an online pipeline it renders the request body instead (see
// RenderRequest) and returns empty requests: callers that only check an
// event with Render check it against the request template.
func (p *Pipeline) Render(runID string, ev Event) (jobs.JobRequest, datastores.Request, error) {
	if p.IsOnline() {
		_, err := p.RenderRequest(runID, ev)
		return jobs.JobRequest{}, datastores.Request{}, err
	}
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
