package jobstest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/batchd/batchd/jobs"
)

// Deployment kinds (EndpointOptions.Kind).
const (
	KindModel    = "model"
	KindPipeline = "pipeline"
)

// Actions named in 403 answers.
const (
	ActionCreate    = "Microsoft.MachineLearningServices/workspaces/batchEndpoints/jobs/write"
	ActionRead      = "Microsoft.MachineLearningServices/workspaces/experiments/runs/read"
	ActionARMRead   = "Microsoft.MachineLearningServices/workspaces/jobs/read"
	ActionARMCancel = "Microsoft.MachineLearningServices/workspaces/jobs/cancel/action"
)

// NoDeploymentMessage is the service's answer to an invoke without a
// deployment header on an endpoint without a default deployment.
const NoDeploymentMessage = "No valid deployments to route to. Please check that the endpoint has at least one deployment with positive weight values or use a deployment specific header to route."

// EndpointOptions declare a batch endpoint.
type EndpointOptions struct {
	// Kind is KindModel (default: exactly one UriFile/UriFolder input) or
	// KindPipeline (any inputs, Literal allowed).
	Kind string
	// Deployments are the endpoint's deployments; empty accepts any name.
	Deployments []string
	// DefaultDeployment runs jobs sent without azureml-model-deployment.
	// Empty: such invokes fail with NoDeploymentMessage.
	DefaultDeployment string
	// Lifecycle of the endpoint's jobs (zero: Options.Lifecycle).
	Lifecycle Lifecycle
}

type endpoint struct {
	name string
	opts EndpointOptions
}

// AddEndpoint declares (or redeclares) an endpoint.
func (s *Sim) AddEndpoint(name string, opts EndpointOptions) error {
	if name == "" || strings.ContainsAny(name, "/?#") || strings.EqualFold(name, "subscriptions") {
		return fmt.Errorf("jobstest: bad endpoint name %q", name)
	}
	if opts.Kind == "" {
		opts.Kind = KindModel
	}
	if opts.Kind != KindModel && opts.Kind != KindPipeline {
		return fmt.Errorf("jobstest: endpoint kind %q is not %q or %q", opts.Kind, KindModel, KindPipeline)
	}
	if opts.Lifecycle.IsZero() {
		opts.Lifecycle = s.opts.Lifecycle
	}
	s.mu.Lock()
	s.endpoints[name] = &endpoint{name: name, opts: opts}
	s.mu.Unlock()
	return nil
}

// endpointFor returns the named endpoint, creating a default one (model,
// any deployment, default deployment "default") on first use.
func (s *Sim) endpointFor(name string) *endpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	ep := s.endpoints[name]
	if ep == nil {
		ep = &endpoint{name: name, opts: EndpointOptions{Kind: KindModel, DefaultDeployment: "default", Lifecycle: s.opts.Lifecycle}}
		s.endpoints[name] = ep
	}
	return ep
}

// IO is one job input or output as the simulator received it.
type IO struct {
	Type  string
	URI   string
	Value string
	Mode  string
}

// JobView is a snapshot of one simulated job.
type JobView struct {
	Seq            int64 // creation order, from 1
	Name           string
	Endpoint       string
	Deployment     string
	RequestID      string // x-ms-client-request-id of the POST
	Repeatability  string // repeatability_request-id of the POST
	ExperimentName string
	Inputs         map[string]IO
	Outputs        map[string]IO
	CreatedBy      string // oid of the token that created it
	CreatedAt      time.Time
	Status         jobs.Status
	Polls          int    // status reads so far (GETs and list pages that showed it)
	Gets           int    // GET requests for it (data plane and ARM)
	Body           []byte // the POST body, with Options.RecordBodies
}

// job is the stored form, kept small: the simulator may hold 100,000.
type job struct {
	seq                                                           int64
	name, endpoint, deployment, requestID, repeat, experiment, by string
	inputs, outputs                                               []namedIO
	body                                                          []byte
	created                                                       time.Time
	lc                                                            *Lifecycle
	step, seen, polls, gets                                       int32
	cancel                                                        uint8
	// ended is when a status read first found the job finished (Unix ns;
	// 0: not yet).
	ended int64
}

type namedIO struct {
	name string
	IO
}

func (j *job) view(status jobs.Status) JobView {
	v := JobView{
		Seq: j.seq, Name: j.name, Endpoint: j.endpoint, Deployment: j.deployment, RequestID: j.requestID, Repeatability: j.repeat,
		ExperimentName: j.experiment, CreatedBy: j.by, CreatedAt: j.created, Status: status, Polls: int(j.polls), Gets: int(j.gets),
		Inputs: map[string]IO{}, Body: j.body,
	}
	for _, in := range j.inputs {
		v.Inputs[in.name] = in.IO
	}
	if len(j.outputs) > 0 {
		v.Outputs = map[string]IO{}
		for _, out := range j.outputs {
			v.Outputs[out.name] = out.IO
		}
	}
	return v
}

// Jobs returns a snapshot of every job, in creation order. Taking it does
// not advance poll-counted lifecycles.
func (s *Sim) Jobs() []JobView {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]JobView, 0, len(s.order))
	for _, j := range s.order {
		out = append(out, j.view(j.status(now, false)))
	}
	return out
}

// Job returns one job's snapshot.
func (s *Sim) Job(name string) (JobView, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	j := s.jobs[name]
	if j == nil {
		return JobView{}, false
	}
	return j.view(j.status(time.Now(), false)), true
}

// PeakRunning is the most jobs of endpoint that were unfinished at one
// time: created and not yet seen finished by a status read (the service's
// view of how many ran at once).
func (s *Sim) PeakRunning(endpoint string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	type edge struct {
		at    int64
		delta int
	}
	var edges []edge
	for _, j := range s.order {
		if j.endpoint != endpoint {
			continue
		}
		edges = append(edges, edge{j.created.UnixNano(), 1})
		if j.ended != 0 {
			edges = append(edges, edge{j.ended, -1})
		}
	}
	// Ends before starts at the same instant: a slot freed and taken at
	// once is not two at a time.
	sort.Slice(edges, func(a, b int) bool {
		if edges[a].at != edges[b].at {
			return edges[a].at < edges[b].at
		}
		return edges[a].delta < edges[b].delta
	})
	cur, peak := 0, 0
	for _, e := range edges {
		cur += e.delta
		peak = max(peak, cur)
	}
	return peak
}

// JobCount returns the number of jobs created so far.
func (s *Sim) JobCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.order)
}

// createBody is the invoke body the simulator accepts. Unknown fields are
// refused (400), so a client typo does not pass silently. encoding/json
// matches keys case-insensitively, as the service appears to.
type createBody struct {
	Properties struct {
		InputData      map[string]createIO `json:"InputData"`
		OutputData     map[string]createIO `json:"OutputData"`
		Properties     map[string]string   `json:"properties"`
		Name           string              `json:"name"`
		Description    string              `json:"description"`
		Tags           map[string]string   `json:"tags"`
		MiniBatchSize  *int64              `json:"miniBatchSize"`
		ErrorThreshold *int                `json:"errorThreshold"`
		Compute        *struct {
			InstanceCount *int   `json:"instanceCount"`
			InstanceType  string `json:"instanceType"`
		} `json:"compute"`
		RetrySettings *struct {
			MaxRetries *int   `json:"maxRetries"`
			Timeout    string `json:"timeout"`
		} `json:"retrySettings"`
		LoggingLevel              string `json:"loggingLevel"`
		MaxConcurrencyPerInstance *int   `json:"maxConcurrencyPerInstance"`
		OutputFileName            string `json:"outputFileName"`
	} `json:"properties"`
}

type createIO struct {
	JobInputType  string `json:"JobInputType"`
	JobOutputType string `json:"JobOutputType"`
	URI           string `json:"Uri"`
	Value         string `json:"Value"`
	Mode          string `json:"Mode"`
}

func (s *Sim) handleCreate(w http.ResponseWriter, r *http.Request) {
	epName := r.PathValue("endpoint")
	c, ok := s.authorize(w, r, AudienceML, ActionCreate)
	if !ok {
		return
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeError(w, http.StatusBadRequest, "UserError", "The request body could not be read.")
		return
	}
	var body createBody
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeError(w, http.StatusBadRequest, "UserError", "The request body is not a valid batch job: "+err.Error())
		return
	}
	ep := s.endpointFor(epName)
	deployment := r.Header.Get("azureml-model-deployment")
	switch {
	case deployment == "" && ep.opts.DefaultDeployment == "":
		writeError(w, http.StatusBadRequest, "UserError", NoDeploymentMessage)
		return
	case deployment == "":
		deployment = ep.opts.DefaultDeployment
	case len(ep.opts.Deployments) > 0 && !slices.Contains(ep.opts.Deployments, deployment):
		writeError(w, http.StatusNotFound, "UserError", fmt.Sprintf("Deployment '%s' not found in endpoint '%s'.", deployment, epName))
		return
	}
	j := &job{
		name: "batchjob-" + newGUID(), endpoint: ep.name, deployment: deployment,
		requestID: r.Header.Get("x-ms-client-request-id"), repeat: r.Header.Get("repeatability_request-id"),
		by: c.OID, created: time.Now(),
	}
	if msg := validateCreate(&body, ep.opts.Kind, j); msg != "" {
		writeError(w, http.StatusBadRequest, "UserError", msg)
		return
	}
	if s.opts.RecordBodies {
		j.body = raw
	}
	j.seq = s.seq.Add(1)
	lc := ep.opts.Lifecycle
	if s.opts.Outcome != nil {
		if o := s.opts.Outcome(j.view(jobs.StatusNotStarted)); !o.IsZero() {
			lc = o
		}
	}
	j.lc = &lc

	s.mu.Lock()
	s.jobs[j.name] = j
	s.order = append(s.order, j)
	status := j.status(j.created, false)
	resp := s.dataPlaneJob(j, status)
	s.mu.Unlock()
	s.log.Debug("jobstest job created", "endpoint", ep.name, "deployment", deployment, "job", j.name)
	writeJSON(w, http.StatusOK, resp)
}

// validateCreate applies the batch endpoint's input rules and fills j.
func validateCreate(b *createBody, kind string, j *job) string {
	p := &b.Properties
	if kind == KindModel && len(p.InputData) != 1 {
		return fmt.Sprintf("Model deployments accept exactly one data input; the job has %d.", len(p.InputData))
	}
	for _, name := range sortedKeys(p.InputData) {
		in := p.InputData[name]
		switch strings.ToLower(in.JobInputType) {
		case "urifile", "urifolder":
			if in.URI == "" {
				return fmt.Sprintf("Input '%s' has no Uri.", name)
			}
		case "literal":
			if kind == KindModel {
				return fmt.Sprintf("Input '%s': Literal inputs are supported only by pipeline component deployments.", name)
			}
		case "mltable":
			return fmt.Sprintf("Input '%s': MLTable inputs are not supported by batch endpoints; use UriFile or UriFolder.", name)
		case "":
			return fmt.Sprintf("Input '%s' has no JobInputType.", name)
		default:
			return fmt.Sprintf("Input '%s': JobInputType '%s' is not supported by batch endpoints.", name, in.JobInputType)
		}
		j.inputs = append(j.inputs, namedIO{name: name, IO: IO{Type: in.JobInputType, URI: in.URI, Value: in.Value, Mode: in.Mode}})
	}
	for _, name := range sortedKeys(p.OutputData) {
		out := p.OutputData[name]
		switch strings.ToLower(out.JobOutputType) {
		case "urifile", "urifolder":
		default:
			return fmt.Sprintf("Output '%s': JobOutputType '%s' is not supported; use UriFile or UriFolder.", name, out.JobOutputType)
		}
		if out.URI == "" {
			return fmt.Sprintf("Output '%s' has no Uri.", name)
		}
		j.outputs = append(j.outputs, namedIO{name: name, IO: IO{Type: out.JobOutputType, URI: out.URI, Mode: out.Mode}})
	}
	if rs := p.RetrySettings; rs != nil && rs.Timeout != "" {
		if _, err := jobs.ParseISODuration(rs.Timeout); err != nil {
			return fmt.Sprintf("retrySettings.timeout '%s' is not an ISO-8601 duration.", rs.Timeout)
		}
	}
	if p.MiniBatchSize != nil && *p.MiniBatchSize <= 0 {
		return "miniBatchSize must be positive."
	}
	if p.Compute != nil && p.Compute.InstanceCount != nil && *p.Compute.InstanceCount <= 0 {
		return "compute.instanceCount must be positive."
	}
	j.experiment = p.Properties["experimentName"]
	return ""
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func (s *Sim) handleGet(w http.ResponseWriter, r *http.Request) {
	if _, ok := s.authorize(w, r, AudienceML, ActionRead); !ok {
		return
	}
	name, epName := r.PathValue("name"), r.PathValue("endpoint")
	s.mu.Lock()
	j := s.jobs[name]
	if j == nil || j.endpoint != epName {
		s.mu.Unlock()
		writeError(w, http.StatusNotFound, "UserError", fmt.Sprintf("Job '%s' not found in endpoint '%s'.", name, epName))
		return
	}
	j.gets++
	resp := s.dataPlaneJob(j, j.status(time.Now(), true))
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, resp)
}

// jobError is the error a Failed job carries.
func (j *job) jobError(status jobs.Status) map[string]any {
	if status != jobs.StatusFailed {
		return nil
	}
	code, msg := j.lc.ErrorCode, j.lc.ErrorMessage
	if code == "" {
		code = "UserError"
	}
	if msg == "" {
		msg = "The job failed."
	}
	return map[string]any{"code": code, "message": msg}
}

func (s *Sim) studioURL(name string) string {
	ws := s.opts.Workspace
	return fmt.Sprintf("https://ml.azure.com/runs/%s?wsid=/subscriptions/%s/resourcegroups/%s/workspaces/%s&tid=%s",
		name, ws.Subscription, ws.ResourceGroup, ws.Name, s.opts.Tenant)
}

// dataPlaneJob is the BatchJobResource the endpoint answers with. Caller
// holds s.mu.
func (s *Sim) dataPlaneJob(j *job, status jobs.Status) map[string]any {
	ws := s.opts.Workspace
	inputs := map[string]any{}
	for _, in := range j.inputs {
		m := map[string]any{"jobInputType": in.Type}
		if in.URI != "" {
			m["uri"] = in.URI
		}
		if in.Value != "" {
			m["value"] = in.Value
		}
		inputs[in.name] = m
	}
	outputs := map[string]any{}
	for _, out := range j.outputs {
		outputs[out.name] = map[string]any{"jobOutputType": out.Type, "uri": out.URI}
	}
	props := map[string]any{
		"status":               string(status),
		"interactionEndpoints": map[string]any{"Studio": map[string]any{"endpoint": s.studioURL(j.name), "jobEndpointType": "Studio"}},
		"inputData":            inputs,
		"outputData":           outputs,
	}
	if j.experiment != "" {
		props["properties"] = map[string]string{"experimentName": j.experiment}
	}
	out := map[string]any{
		"id": fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.MachineLearningServices/workspaces/%s/batchEndpoints/%s/deployments/%s/jobs/%s",
			ws.Subscription, ws.ResourceGroup, ws.Name, j.endpoint, j.deployment, j.name),
		"name":       j.name,
		"type":       "Microsoft.MachineLearningServices/workspaces/batchEndpoints/jobs",
		"properties": props,
		"systemData": map[string]any{"createdAt": j.created.UTC().Format(time.RFC3339Nano), "createdBy": j.by, "createdByType": "Application"},
	}
	if e := j.jobError(status); e != nil {
		// The REST sample reads a failed job's error from the top-level
		// "error" field; the real location is unconfirmed.
		out["error"] = e
	}
	return out
}
