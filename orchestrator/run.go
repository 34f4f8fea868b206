package orchestrator

import (
	"time"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
)

// State is where a run is in its life. Every event ends in exactly one
// terminal state, including the events that never submit a job.
type State string

// The states (README: "Run states"; graph.go: the moves between them).
const (
	StateReceived   State = "received"   // claimed by a worker; nothing else done yet
	StateFiltered   State = "filtered"   // matched no trigger rule; terminal
	StateDuplicate  State = "duplicate"  // the same work is already recorded under another run; terminal
	StateRejected   State = "rejected"   // refused by a preflight check or by the endpoint (4xx); terminal
	StateWaiting    State = "waiting"    // waiting for endpoint admission (max_running_jobs, 429 pause)
	StateSubmitting State = "submitting" // written before the POST is sent
	StateSubmitted  State = "submitted"  // the endpoint accepted the job
	StateRunning    State = "running"    // the job reported a running status
	StateCompleted  State = "completed"  // terminal
	StateFailed     State = "failed"     // terminal
	StateCanceled   State = "canceled"   // terminal
	StateTimedOut   State = "timed_out"  // the pipeline's timeout passed; the job was canceled; terminal
	StateUnknown    State = "unknown"    // the POST's outcome is not known; reconciliation or an operator decides
)

// States lists every state, in life order.
var States = []State{
	StateReceived, StateFiltered, StateDuplicate, StateRejected, StateWaiting,
	StateSubmitting, StateSubmitted, StateRunning, StateCompleted, StateFailed,
	StateCanceled, StateTimedOut, StateUnknown,
}

// Terminal reports whether no further transition happens on its own.
// (An operator can still retry a terminal run.)
func (s State) Terminal() bool {
	switch s {
	case StateFiltered, StateDuplicate, StateRejected, StateCompleted, StateFailed, StateCanceled, StateTimedOut:
		return true
	}
	return false
}

// Valid reports whether s is one of States.
func (s State) Valid() bool {
	for _, v := range States {
		if s == v {
			return true
		}
	}
	return false
}

// Run is the ledger's record of one run. It is stored as JSON; the API
// returns it as is. It never holds a secret.
type Run struct {
	ID       string `json:"id"`
	Pipeline string `json:"pipeline"`
	Key      string `json:"key"`
	Source   string `json:"source"`
	State    State  `json:"state"`

	Event    Event                `json:"event"`
	Decision *datastores.Decision `json:"decision,omitempty"`
	// Request is the job request that was (or will be) posted.
	Request  *jobs.JobRequest `json:"request,omitempty"`
	Endpoint string           `json:"endpoint,omitempty"`
	Job      *JobRef          `json:"job,omitempty"`
	// PreviousJobs are the jobs of earlier attempts (retry policy, manual retry).
	PreviousJobs []JobRef `json:"previous_jobs,omitempty"`
	Attempts     int      `json:"attempts"`

	History []Transition `json:"history"`
	Error   string       `json:"error,omitempty"`
	// Duplicates counts redeliveries of the same event that were ignored.
	Duplicates int `json:"duplicates,omitempty"`
	// Online is the scoring request and the endpoint's answer, for a run of
	// a pipeline that targets an online endpoint (there is no Job).
	Online *OnlineCall `json:"online,omitempty"`

	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
}

// JobRef is the Azure ML job a run submitted.
type JobRef struct {
	Name        string      `json:"name"`
	Status      jobs.Status `json:"status"`
	StudioURL   string      `json:"studio_url,omitempty"`
	Error       string      `json:"error,omitempty"`
	RequestID   string      `json:"request_id,omitempty"`
	SubmittedAt time.Time   `json:"submitted_at,omitzero"`
	FinishedAt  time.Time   `json:"finished_at,omitzero"`
}

// Transition is one entry of a run's history.
type Transition struct {
	State  State     `json:"state"`
	At     time.Time `json:"at"`
	Reason string    `json:"reason,omitempty"`
}

// OnlineCall is one online run's scoring request and the endpoint's
// answer. Bodies are kept as the pipeline's response policy says (cut to
// max_bytes, or not at all); sizes, status, latency and deployment always.
type OnlineCall struct {
	// Request is the rendered body.
	Request          string `json:"request,omitempty"`
	RequestBytes     int    `json:"request_bytes"`
	RequestTruncated bool   `json:"request_truncated,omitempty"`
	// RequestID is sent as x-ms-client-request-id (the endpoint's logs
	// carry it).
	RequestID string `json:"request_id,omitempty"`
	// Deployment is the deployment asked for (azureml-model-deployment);
	// empty lets the endpoint's traffic rules choose.
	Deployment string          `json:"deployment,omitempty"`
	Response   *OnlineResponse `json:"response,omitempty"`
}

// OnlineResponse is the endpoint's answer to an online run's request.
type OnlineResponse struct {
	Status      int    `json:"status"`
	ContentType string `json:"content_type,omitempty"`
	Body        string `json:"body,omitempty"`
	BodyBytes   int    `json:"body_bytes"`
	// Truncated: Body holds only the first max_bytes of the answer.
	Truncated bool `json:"truncated,omitempty"`
	// NotStored: the pipeline keeps no bodies (response.store: false).
	NotStored bool `json:"not_stored,omitempty"`
	// Deployment is the deployment that served it (the answer's
	// azureml-model-deployment header).
	Deployment string `json:"deployment,omitempty"`
	// LatencyMS is the time of the answered attempt, in milliseconds.
	LatencyMS float64   `json:"latency_ms"`
	Attempts  int       `json:"attempts"`
	At        time.Time `json:"at"`
}
