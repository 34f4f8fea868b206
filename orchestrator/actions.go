package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/backoff"
)

// Operator actions (cancel, retry, resolve) never change a run's state
// themselves. They record a request on the run (or, for a retry, publish a
// retry message) and nudge the run's carrier; whoever holds the carrier
// carries the request out with the same writes, in the same order, as any
// other transition. So the crash argument of the state machine covers them
// too, and a run never has two writers of its state.

// actionWait is how long an action waits for the carrier to carry out the
// request before it answers with the run as it is.
const actionWait = 5 * time.Second

// ResolveRequest is an operator's verdict on a run (typically unknown):
// either a terminal State, or a Job to adopt and track.
type ResolveRequest struct {
	State  State  `json:"state,omitempty"`
	Job    string `json:"job,omitempty"`
	Reason string `json:"reason,omitempty"`
}

// Cancel asks for the run to end canceled. A run not yet submitted ends
// canceled; a submitted or running run's job is canceled through ARM (which
// needs a workspace) and the run ends canceled when the job reports so. It
// returns ErrNotAllowed (with the reason) when the state does not allow it.
func (o *Orchestrator) Cancel(ctx context.Context, id, reason string) error {
	_, err := o.CancelRun(ctx, id, reason)
	return err
}

// CancelRun is Cancel returning the run afterwards.
func (o *Orchestrator) CancelRun(ctx context.Context, id, reason string) (*Run, error) {
	if reason == "" {
		reason = "requested by an operator"
	}
	r, _, err := o.ledger.get(ctx, id)
	if err != nil {
		return nil, err
	}
	switch r.State {
	case StateSubmitting:
		return nil, fmt.Errorf("%w: run %s is being submitted right now; try again in a few seconds", ErrNotAllowed, id)
	case StateUnknown:
		return nil, fmt.Errorf("%w: run %s has no known job to cancel (its submission is unknown); use resolve or retry", ErrNotAllowed, id)
	case StateSubmitted, StateRunning:
		ep := r.Sys.Endpoint
		if ep == nil || ep.Workspace == nil {
			return nil, fmt.Errorf("%w: canceling job %s needs the ARM jobs API, and endpoint %s has no workspace configured (subscription, resource group, workspace); cancel it in Azure ML studio and then run `batchd runs resolve %s --state canceled`",
				ErrNotAllowed, r.Job.Name, r.Endpoint, id)
		}
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := o.sub.Cancel(cctx, *ep, r.Job.Name)
		cancel()
		if err != nil {
			if errors.Is(err, jobs.ErrNoWorkspace) {
				return nil, fmt.Errorf("%w: %v", ErrNotAllowed, err) //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
			}
			return nil, fmt.Errorf("cancel job %s: %w", r.Job.Name, err)
		}
	default:
		if r.State.Terminal() {
			return nil, fmt.Errorf("%w: run %s is already %s", ErrNotAllowed, id, r.State)
		}
	}
	now := time.Now().UTC()
	r, _, err = o.ledger.update(ctx, id, func(x *record) error {
		if x.State.Terminal() {
			return errNoChange
		}
		if x.Sys.Cancel != nil {
			return errNoChange
		}
		x.Sys.Cancel = &cancelRequest{Reason: reason, At: now}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := o.nudge(ctx, r); err != nil {
		return nil, err
	}
	return o.awaitRun(ctx, id, func(x *record) bool {
		return x.State.Terminal() || (x.State != StateReceived && x.State != StateWaiting)
	})
}

// Retry starts a new attempt of a finished or unknown run (a new job; the
// old one is kept in PreviousJobs). The request is a message to the
// workers, so it survives a crash; Retry waits a moment for it to be taken.
func (o *Orchestrator) Retry(ctx context.Context, id, reason string) (*Run, error) {
	r, _, err := o.ledger.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if !r.State.Terminal() && r.State != StateUnknown {
		return nil, fmt.Errorf("%w: run %s is %s; only finished or unknown runs can be retried", ErrNotAllowed, id, r.State)
	}
	if _, ok := o.pipelines[r.Pipeline]; !ok {
		return nil, fmt.Errorf("%w: run %s belongs to pipeline %q, which is not configured", ErrNotAllowed, id, r.Pipeline)
	}
	gen := r.Sys.Gen + 1
	b, err := json.Marshal(r.Event)
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(intakeSubject(r.Pipeline, id))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, id+".g"+strconv.Itoa(gen))
	m.Header.Set(hdrRetryGen, strconv.Itoa(gen))
	if reason != "" {
		m.Header.Set(hdrReason, reason)
	}
	if _, err := o.js.PublishMsg(ctx, m); err != nil {
		return nil, fmt.Errorf("retry %s: %w", id, err)
	}
	return o.awaitRun(ctx, id, func(x *record) bool { return x.Sys.Gen >= gen && x.State != StateReceived })
}

// Replay emits the event of run id again as a new run (Source replay,
// Event.ReplayOf = id): say, after the model behind the endpoint was fixed.
// Unlike Retry, the original run keeps its outcome. The new run's key is
// the original's plus "#replay:" and req.Key (or a random suffix), so a
// replay request that names a key replays once however often it is sent.
// created is false when that replay already existed.
func (o *Orchestrator) Replay(ctx context.Context, id string, req ReplayRequest) (resp *ReplayResponse, created bool, err error) {
	r, _, err := o.ledger.get(ctx, id)
	if err != nil {
		return nil, false, err
	}
	if _, ok := o.pipelines[r.Pipeline]; !ok {
		if r.Pipeline == "" {
			return nil, false, fmt.Errorf("%w: run %s matched no pipeline; there is nothing to replay", ErrNotAllowed, id)
		}
		return nil, false, fmt.Errorf("%w: run %s belongs to pipeline %q, which is not configured", ErrNotAllowed, id, r.Pipeline)
	}
	suffix := req.Key
	if suffix == "" {
		b := make([]byte, 8)
		_, _ = rand.Read(b)
		suffix = hex.EncodeToString(b)
	}
	ev := r.Event
	ev.Pipeline, ev.Key, ev.Source, ev.ReplayOf = r.Pipeline, r.Key+"#replay:"+suffix, SourceReplay, id
	newID := RunID(ev.Pipeline, ev.Key)
	resp = &ReplayResponse{ManualRunResponse: ManualRunResponse{RunID: newID, State: StateReceived}, ReplayOf: id}
	if existing, err := o.Get(ctx, newID); err == nil {
		resp.State, resp.Duplicate = existing.State, true
		return resp, false, nil
	} else if !errors.Is(err, ErrRunNotFound) {
		return nil, false, err
	}
	rc, err := o.Emit(ctx, ev)
	if err != nil {
		return nil, false, fmt.Errorf("replay %s: %w", id, err)
	}
	resp.Duplicate = rc.Duplicate
	return resp, !rc.Duplicate, nil
}

// Resolve records an operator's verdict on a run that is not finished:
// a terminal state (completed, failed or canceled), or a job to adopt and
// track. Typically for an unknown run that reconciliation could not settle.
func (o *Orchestrator) Resolve(ctx context.Context, id string, req ResolveRequest) (*Run, error) {
	if req.Job == "" {
		switch req.State {
		case StateCompleted, StateFailed, StateCanceled:
		case "":
			return nil, fmt.Errorf("%w: give a state (completed, failed or canceled) or a job to adopt", ErrInvalid)
		default:
			return nil, fmt.Errorf("%w: state %q: resolve to completed, failed or canceled (or give a job to adopt)", ErrInvalid, req.State)
		}
	}
	if req.Reason == "" {
		req.Reason = "no reason given"
	}
	r, _, err := o.ledger.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State.Terminal() {
		return nil, fmt.Errorf("%w: run %s is already %s; use retry for a new attempt", ErrNotAllowed, id, r.State)
	}
	if r.State == StateSubmitting {
		return nil, fmt.Errorf("%w: run %s is being submitted right now; try again in a few seconds", ErrNotAllowed, id)
	}
	if req.Job != "" && !o.kindOf(r).adoptsJobs() {
		return nil, fmt.Errorf("%w: run %s scored an online endpoint and has no job to adopt: resolve it to a state", ErrNotAllowed, id)
	}
	now := time.Now().UTC()
	r, _, err = o.ledger.update(ctx, id, func(x *record) error {
		if x.State.Terminal() {
			return fmt.Errorf("%w: run %s is already %s", ErrNotAllowed, id, x.State)
		}
		x.Sys.Resolve = &resolveRequest{State: req.State, Job: req.Job, Reason: req.Reason, At: now}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := o.nudge(ctx, r); err != nil {
		return nil, err
	}
	return o.awaitRun(ctx, id, func(x *record) bool { return x.Sys.Resolve == nil })
}

// nudge makes the run's carrier look at it now: a tracker message replaces
// the pending one (one per run), an intake message is an extra one that
// only carries out requests.
func (o *Orchestrator) nudge(ctx context.Context, r *record) error {
	if r.Sys.Carrier == carrierTracker {
		return o.publishTracker(ctx, r, true)
	}
	b, err := json.Marshal(r.Event)
	if err != nil {
		return err
	}
	m := nats.NewMsg(intakeSubject(r.Pipeline, r.ID))
	m.Data = b
	m.Header.Set(hdrNudge, "1")
	m.Header.Set(jetstream.MsgIDHeader, r.ID+".n"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if _, err := o.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("nudge %s: %w", r.ID, err)
	}
	return nil
}

// awaitRun polls the run until done says so or actionWait passes, and
// returns it as it is then.
func (o *Orchestrator) awaitRun(ctx context.Context, id string, done func(*record) bool) (*Run, error) {
	deadline := time.Now().Add(actionWait)
	for {
		r, _, err := o.ledger.get(ctx, id)
		if err != nil {
			return nil, err
		}
		if done(r) || time.Now().After(deadline) {
			return &r.Run, nil
		}
		if err := backoff.Sleep(ctx, 50*time.Millisecond); err != nil {
			return &r.Run, nil
		}
	}
}
