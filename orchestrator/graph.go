package orchestrator

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/batchd/batchd/jobs"
)

// The run state graph. Every move a run makes goes through record.move,
// which refuses any move this table does not list: a run can never report
// two final states, never reach submitted without a submission or an
// operator's adoption, and leaves a terminal state only for an operator's
// retry. docs/ARCHITECTURE.md shows this table (a test keeps them equal).
//
// stateNew is the from-state of a record that is being created.
const stateNew State = ""

// graph lists, for each state, the states a run may move to from it. A
// move to the same state records a new reason (a wait for another cause,
// an unknown run parked for an operator).
var graph = map[State][]State{
	// Every run is created received.
	stateNew: {StateReceived},
	// Render, preflight, admission; an online run's request slot can time
	// out before anything is sent; operator cancel or resolve. A trigger's
	// own decision (filtered, rejected) and the identity horizon's
	// duplicate are written with the run's creation.
	StateReceived: {StateWaiting, StateSubmitting, StateRejected, StateTimedOut,
		StateSubmitted, StateCompleted, StateFailed, StateCanceled,
		StateFiltered, StateDuplicate},
	StateWaiting: {StateWaiting, StateSubmitting, StateRejected, StateTimedOut,
		StateSubmitted, StateCompleted, StateFailed, StateCanceled},
	// The POST's answer (a job, a 429 or transient error, a refusal, no
	// known outcome); an online request's outcome; a safe-to-repeat online
	// request sent again.
	StateSubmitting: {StateSubmitting, StateSubmitted, StateWaiting, StateUnknown,
		StateRejected, StateCompleted, StateFailed, StateTimedOut},
	// Tracking: the job's status, the pipeline's timeout, the retry
	// policy (waiting for the next attempt), an operator's resolve.
	StateSubmitted: {StateRunning, StateSubmitted, StateWaiting,
		StateCompleted, StateFailed, StateCanceled, StateTimedOut},
	StateRunning: {StateSubmitted, StateWaiting,
		StateCompleted, StateFailed, StateCanceled, StateTimedOut},
	// Reconciliation adopts a job, submits once more (through admission),
	// or parks for an operator, who resolves or retries.
	StateUnknown: {StateUnknown, StateSubmitted, StateWaiting, StateSubmitting,
		StateCompleted, StateFailed, StateCanceled, StateReceived},
	// Terminal states: only an operator's retry starts a new attempt.
	StateFiltered:  {StateReceived},
	StateDuplicate: {StateReceived},
	StateRejected:  {StateReceived},
	StateCompleted: {StateReceived},
	StateFailed:    {StateReceived},
	StateCanceled:  {StateReceived},
	StateTimedOut:  {StateReceived},
}

// canMove reports whether the graph allows a move from one state to
// another.
func canMove(from, to State) bool {
	return slices.Contains(graph[from], to)
}

// MoveError is a move the state graph does not allow. It is a bug in
// batchd, never the input's fault: nothing is written.
type MoveError struct {
	Run      string
	From, To State
	Reason   string
}

func (e *MoveError) Error() string {
	from := string(e.From)
	if e.From == stateNew {
		from = "(new)"
	}
	return fmt.Sprintf("run %s: the state graph allows no move from %s to %s (%s)", e.Run, from, e.To, e.Reason)
}

// move is the one place a run's state changes: it checks the graph and
// appends the move to the history (the oldest entries after the first few
// are dropped beyond maxHistory). On a refused move the record is left
// as it was.
func (r *record) move(to State, reason string, at time.Time) error {
	from := r.State
	if len(r.History) == 0 {
		from = stateNew
	}
	if !canMove(from, to) {
		return &MoveError{Run: r.ID, From: from, To: to, Reason: reason}
	}
	r.State = to
	r.Updated = at
	r.History = append(r.History, Transition{State: to, At: at, Reason: reason})
	if len(r.History) > maxHistory {
		keep := 10
		r.History = append(r.History[:keep], r.History[len(r.History)-(maxHistory-keep):]...)
	}
	return nil
}

// The named moves. Each sets what its state means beside the state itself,
// so that no caller can forget a part of it.

// toReceived starts an attempt: the intake carries the run.
func (r *record) toReceived(reason string, at time.Time) error {
	return r.move(StateReceived, reason, at)
}

// toWaiting records why the run waits (one history entry per reason, not
// one per look).
func (r *record) toWaiting(reason string, at time.Time) error {
	if err := r.move(StateWaiting, reason, at); err != nil {
		return err
	}
	r.Sys.WaitReason = reason
	return nil
}

// toSubmitting is written before a request is sent.
func (r *record) toSubmitting(what string, at time.Time) error {
	if err := r.move(StateSubmitting, what, at); err != nil {
		return err
	}
	r.Sys.SubmittingAt = at
	r.Sys.WaitReason = ""
	return nil
}

// toSubmitted records the run's job (accepted, adopted by reconciliation
// or by an operator) and hands the run to the tracker, with the pipeline's
// timeout counted from deadline's base (zero: none).
func (r *record) toSubmitted(job JobRef, deadline time.Time, reason string, at time.Time) error {
	if err := r.move(StateSubmitted, reason, at); err != nil {
		return err
	}
	if r.Job != nil && r.Job.Name != job.Name {
		r.PreviousJobs = append(r.PreviousJobs, *r.Job)
	}
	r.Job = &job
	if r.Attempts == 0 {
		r.Attempts = 1
	}
	r.Error = ""
	r.Sys.Carrier = carrierTracker
	r.Sys.Deadline = deadline
	r.Sys.Transient = 0
	r.Sys.WaitReason = ""
	return nil
}

// toRunning: the job reported a running status.
func (r *record) toRunning(reason string, at time.Time) error {
	return r.move(StateRunning, reason, at)
}

// toUnknown: the request's outcome is not known. The tracker carries the
// run (reconciliation, or an operator's requests).
func (r *record) toUnknown(errText, reason string, at time.Time) error {
	if err := r.move(StateUnknown, reason, at); err != nil {
		return err
	}
	r.Error = errText
	r.Sys.Carrier = carrierTracker
	r.Sys.WaitReason = ""
	return nil
}

// toParked notes (once per reason) why an unknown run waits for an
// operator; the state stays.
func (r *record) toParked(reason string, at time.Time) error {
	if err := r.move(r.State, reason, at); err != nil {
		return err
	}
	r.Sys.WaitReason = reason
	return nil
}

// toFinished ends the run in a terminal state.
func (r *record) toFinished(state State, reason, errText string, at time.Time) error {
	if !state.Terminal() {
		return &MoveError{Run: r.ID, From: r.State, To: state, Reason: "not a terminal state: " + reason}
	}
	if err := r.move(state, reason, at); err != nil {
		return err
	}
	r.Error = errText
	r.Sys.Resolve, r.Sys.WaitReason = nil, ""
	switch state {
	case StateCompleted, StateFailed, StateCanceled, StateTimedOut: // the job's own end
		if r.Job != nil && r.Job.FinishedAt.IsZero() {
			r.Job.FinishedAt = at
		}
	}
	return nil
}

// jobRef is the reference to a job the endpoint answered with.
func jobRef(j *jobs.Job, requestID string, at time.Time) JobRef {
	return JobRef{Name: j.Name, Status: j.Status, StudioURL: j.StudioURL, RequestID: requestID, SubmittedAt: at}
}

// graphMermaid is the state graph as a Mermaid state diagram, in the
// order of States (docs/ARCHITECTURE.md holds this text).
func graphMermaid() string {
	var b strings.Builder
	b.WriteString("stateDiagram-v2\n")
	name := func(s State) string {
		if s == stateNew {
			return "[*]"
		}
		return string(s)
	}
	for _, from := range append([]State{stateNew}, States...) {
		for _, to := range States {
			if canMove(from, to) {
				fmt.Fprintf(&b, "    %s --> %s\n", name(from), name(to))
			}
		}
	}
	return b.String()
}
