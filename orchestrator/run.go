package orchestrator

import (
	"time"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
)

// State is where a run is in its life. Every event ends in exactly one
// terminal state, including the events that never submit a job.
type State string

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
