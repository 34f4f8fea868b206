// Package jobs is the Azure Machine Learning batch endpoint client: it gets
// Microsoft Entra tokens through azidentity, invokes (POSTs) batch jobs,
// reads their status and cancels them.
//
// The package is a leaf: it imports no other batchd package. Its contract with
// the rest of batchd is the set of types in this file, the Client methods
// Submit, Get, Cancel and List, and the error classifiers in errors.go.
//
// The one rule that matters most: Submit never retries the POST. A retried
// invoke can create a second job (azure-sdk-for-python#31166), so an invoke
// whose outcome is not known is reported as ambiguous (IsAmbiguous) and left
// to the caller to reconcile.
package jobs

import (
	"strings"
	"time"
)

// Endpoint identifies one Azure ML batch endpoint.
type Endpoint struct {
	// Name is batchd's name for the endpoint (the key in the pipelines file).
	Name string `json:"name"`
	// ScoringURI is the invocation URI,
	// https://<endpoint>.<region>.inference.ml.azure.com/jobs.
	ScoringURI string `json:"scoring_uri"`
	// Deployment, when set, is sent as the azureml-model-deployment header.
	// Empty means the endpoint's default deployment.
	Deployment string `json:"deployment,omitempty"`
	// Workspace, when set, enables the ARM jobs API (status, cancel, list).
	Workspace *Workspace `json:"workspace,omitempty"`
}

// Workspace is an Azure ML workspace addressed through ARM.
type Workspace struct {
	Subscription  string `json:"subscription"`
	ResourceGroup string `json:"resource_group"`
	Name          string `json:"name"`
}

// Input types and output types of a batch job (JobInputType / JobOutputType).
const (
	TypeUriFile   = "UriFile"
	TypeUriFolder = "UriFolder"
	TypeMLTable   = "MLTable"
	TypeLiteral   = "Literal"
)

// Input is one named job input. Literal inputs carry Value; the others URI.
type Input struct {
	Type  string `json:"type"`
	URI   string `json:"uri,omitempty"`
	Value string `json:"value,omitempty"`
	Mode  string `json:"mode,omitempty"`
}

// Output is one named job output.
type Output struct {
	Type string `json:"type"`
	URI  string `json:"uri"`
	Mode string `json:"mode,omitempty"`
}

// Settings are the per-job overrides of the deployment's configuration. Only
// the fields that are set are sent.
type Settings struct {
	MiniBatchSize  *int64         `json:"mini_batch_size,omitempty"`
	InstanceCount  *int           `json:"instance_count,omitempty"`
	ErrorThreshold *int           `json:"error_threshold,omitempty"`
	MaxRetries     *int           `json:"max_retries,omitempty"`
	RetryTimeout   *time.Duration `json:"retry_timeout,omitempty"`
}

// JobRequest is everything one invoke sends.
type JobRequest struct {
	Inputs  map[string]Input  `json:"inputs"`
	Outputs map[string]Output `json:"outputs,omitempty"`
	// Deployment overrides Endpoint.Deployment when set.
	Deployment     string   `json:"deployment,omitempty"`
	ExperimentName string   `json:"experiment_name,omitempty"`
	Settings       Settings `json:"settings,omitzero"`
	// RequestID is sent as the request id headers. Empty means a fresh random
	// id; callers that record it before the POST set it themselves.
	RequestID string `json:"request_id,omitempty"`
}

// Status is an Azure ML job status as the service reports it.
type Status string

// Every documented status. Values the service adds later are kept verbatim
// and treated as non-terminal.
const (
	StatusNotStarted      Status = "NotStarted"
	StatusStarting        Status = "Starting"
	StatusProvisioning    Status = "Provisioning"
	StatusPreparing       Status = "Preparing"
	StatusQueued          Status = "Queued"
	StatusRunning         Status = "Running"
	StatusFinalizing      Status = "Finalizing"
	StatusCancelRequested Status = "CancelRequested"
	StatusCompleted       Status = "Completed"
	StatusFailed          Status = "Failed"
	StatusCanceled        Status = "Canceled"
	StatusNotResponding   Status = "NotResponding"
	StatusPaused          Status = "Paused"
	StatusUnknown         Status = "Unknown"
)

// Terminal reports whether s is final: Completed, Failed or Canceled.
// NotResponding and Paused are not final: a run can leave them.
func (s Status) Terminal() bool {
	switch s.Normal() {
	case StatusCompleted, StatusFailed, StatusCanceled:
		return true
	}
	return false
}

// Running reports whether the job runs (Running, Finalizing, or
// CancelRequested: it runs until the cancel takes), in any casing.
func (s Status) Running() bool {
	switch s.Normal() {
	case StatusRunning, StatusFinalizing, StatusCancelRequested:
		return true
	}
	return false
}

// Normal maps case variants and the legacy "Succeeded"/"Cancelled" spellings
// onto the documented values, so comparisons do not depend on the service's
// casing; a status it does not know is returned as it is.
func (s Status) Normal() Status {
	switch strings.ToLower(string(s)) {
	case "completed", "succeeded":
		return StatusCompleted
	case "failed":
		return StatusFailed
	case "canceled", "cancelled":
		return StatusCanceled
	}
	for _, known := range knownStatuses {
		if strings.EqualFold(string(s), string(known)) {
			return known
		}
	}
	return s
}

var knownStatuses = []Status{
	StatusNotStarted, StatusStarting, StatusProvisioning, StatusPreparing, StatusQueued,
	StatusRunning, StatusFinalizing, StatusCancelRequested, StatusCompleted, StatusFailed,
	StatusCanceled, StatusNotResponding, StatusPaused, StatusUnknown,
}

// ParseStatus turns the service's status string into a Status: documented
// values in any casing (and the legacy Succeeded/Cancelled) become the
// constants above; anything else is kept verbatim (and is not terminal); an
// empty string is StatusUnknown.
func ParseStatus(s string) Status {
	if s == "" {
		return StatusUnknown
	}
	return Status(s).Normal()
}

// Job is what batchd knows about one Azure ML job.
type Job struct {
	// Name is the job name (the service's "name" field).
	Name string `json:"name"`
	// ID is the service's resource id, when it sent one.
	ID     string `json:"id,omitempty"`
	Status Status `json:"status"`
	// StudioURL links to the job in Azure ML studio, when known.
	StudioURL string `json:"studio_url,omitempty"`
	// Error is the service's error message for a Failed job.
	Error string `json:"error,omitempty"`
	// CreatedAt is the service's creation time, when it sent one.
	CreatedAt time.Time `json:"created_at,omitzero"`
	// Inputs are the job's input URIs by name, as the service reports them
	// (used to match jobs during reconciliation). May be empty.
	Inputs map[string]string `json:"inputs,omitempty"`
	// Outputs are the job's output URIs by name, as the service reports
	// them. May be empty.
	Outputs map[string]string `json:"outputs,omitempty"`
	// EndpointName and DeploymentName are the Azure ML endpoint and
	// deployment that ran the job, when the service says (ARM's job
	// properties azureml.endpointname and azureml.deploymentname). Empty
	// when it does not.
	EndpointName   string `json:"endpoint_name,omitempty"`
	DeploymentName string `json:"deployment_name,omitempty"`
}
