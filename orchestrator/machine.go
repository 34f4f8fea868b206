package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/backoff"
	"github.com/batchd/batchd/orchestrator/consumer"
)

// errRedrive from a step: the record changed under it (or the step moved
// the run on and wants the next step now); read it again and decide again.
var errRedrive = errors.New("redrive")

// maxRedrives bounds the re-reads of one delivery before it is handed back.
const maxRedrives = 20

// unknownPipelineGrace is how long an event for a pipeline this replica
// does not know waits for a replica that does, before it is rejected.
const unknownPipelineGrace = 5 * time.Minute

// handleIntake is the worker's entry point for one intake message.
func (o *Orchestrator) handleIntake(ctx, stop context.Context, m jetstream.Msg) (settle, error) {
	var ev Event
	if err := json.Unmarshal(m.Data(), &ev); err != nil || ev.Key == "" {
		// Not something Emit wrote: nothing can ever make sense of it.
		o.log.Error("intake: dropping undecodable message", "subject", m.Subject(), "err", err)
		return consumer.Term("undecodable intake message"), nil
	}
	d := delivery{carrier: carrierIntake, msg: m, ev: &ev, id: RunID(ev.Pipeline, ev.Key)}
	h := m.Headers()
	if g := h.Get(hdrRetryGen); g != "" {
		d.retryGen, _ = strconv.Atoi(g)
		d.reason = h.Get(hdrReason)
	}
	d.nudge = h.Get(hdrNudge) != ""
	if md, err := m.Metadata(); err == nil && d.retryGen == 0 && !d.nudge {
		d.first = md.NumDelivered == 1
	}
	return o.drive(ctx, stop, &d)
}

// handleTrack is the tracker's entry point for one tracker message.
func (o *Orchestrator) handleTrack(ctx, stop context.Context, m jetstream.Msg) (settle, error) {
	id := strings.TrimPrefix(m.Subject(), SubjectTrack+".")
	if !validRunID(id) {
		o.log.Error("tracker: dropping message with a bad subject", "subject", m.Subject())
		return consumer.Term("bad tracker subject"), nil
	}
	h := m.Headers()
	d := delivery{carrier: carrierTracker, msg: m, id: id, nudge: h.Get(hdrNudge) != ""}
	if d.nudge {
		if n, err := strconv.Atoi(h.Get(hdrEvent)); err == nil && n >= 0 {
			d.event = n + 1
		}
		if v := h.Get(hdrListed); v != "" {
			d.checked = true
			var j jobs.Job
			if err := json.Unmarshal([]byte(v), &j); err == nil && j.Name != "" {
				d.listed = &j
			}
		}
		if md, err := m.Metadata(); err == nil {
			d.redelivered = md.NumDelivered > 1
			d.seq = md.Sequence.Stream
		}
	}
	// A nudge stays the run's tracker message (one per run) and comes back
	// for every later look: its first delivery did what it asked, so its
	// redeliveries are routine looks too.
	o.views.begin(id)
	defer o.views.end(id)
	if !d.nudge || d.redelivered {
		if v := o.views.get(id); v != nil {
			if s, ok := o.lookByView(ctx, stop, v, &d); ok {
				return s, nil
			}
		}
	}
	return o.drive(ctx, stop, &d)
}

// delivery is one message being handled.
type delivery struct {
	carrier string
	msg     jetstream.Msg
	id      string
	ev      *Event // intake only
	// first: the message's first delivery (not a retry or nudge message).
	first bool
	// retryGen > 0: an operator retry creating that generation.
	retryGen int
	reason   string
	// nudge: published only so that an operator request is looked at now.
	nudge bool
	// event > 0: a workspace event's nudge; the event said the job's
	// progress is event-1 (hdrEvent). checked: a confirming list looked
	// (hdrListed), and listed is the job as it showed it (nil: GET).
	// redelivered: not the nudge's first delivery.
	event       int
	checked     bool
	listed      *jobs.Job
	redelivered bool
	seq         uint64 // the nudge's tracker stream sequence
	// look: what lookByView found, for the full step to record.
	look *lookOutcome
}

// step is what a step function decides on: the run as read, the revision
// every write of the step compares against, and the message carrying it.
// The two contexts are the loop's: ctx ends after the shutdown grace (work
// in flight finishes with it), stop when shutdown begins (waits give up at
// once, and no new POST starts).
type step struct {
	ctx, stop context.Context
	r         *record
	rev       uint64
	d         *delivery
}

// drive reads the run and takes the next step, again after every
// concurrent change, until the message can be settled.
//
// Which messages drive a run: the intake message that created it (and its
// redeliveries), an operator's retry message, and the run's tracker
// message. A first delivery that finds the run finished, or with the
// tracker, is a duplicate event: it is counted on the run and acked. A
// nudge on the intake side carries out operator requests and is acked; the
// run's own message stays its carrier.
func (o *Orchestrator) drive(ctx, stop context.Context, d *delivery) (settle, error) {
	for i := 0; i < maxRedrives; i++ {
		r, rev, err := o.ledger.get(ctx, d.id)
		switch {
		case errors.Is(err, ErrRunNotFound):
			if d.carrier == carrierTracker || d.retryGen > 0 || d.nudge {
				return ack(), nil // finished and expired, or never recorded: nothing to do
			}
			if s, done, err := o.forgottenDuplicate(ctx, d); done || err != nil {
				return s, err
			}
			r = newRecord(*d.ev, o.now())
			rev, err = o.ledger.create(ctx, r)
			if errors.Is(err, errExists) {
				continue // a duplicate raced us; read it
			}
			if err != nil {
				return settle{}, err
			}
			d.first = false // this delivery owns the run
			o.logRun(r)
		case err != nil:
			return settle{}, err
		case d.carrier == carrierIntake && d.first && (r.State.Terminal() || r.Sys.Carrier == carrierTracker):
			return o.duplicate(ctx, r, d)
		}
		// A first delivery that finds the run unfinished and carried by the
		// intake side drives it too: it may be the run's own message whose
		// delivery count a crash of the embedded server lost. Two messages
		// driving one run is safe (every transition is compare-and-set).
		d.first = false // decided on the first read

		if d.retryGen > 0 && r.Sys.Gen < d.retryGen {
			s, err := o.retryTransition(&step{ctx: ctx, stop: stop, r: r, rev: rev, d: d})
			if errors.Is(err, errRedrive) {
				continue
			}
			return s, err
		}
		if r.State.Terminal() {
			// The run's own message again (not an operator's retry or
			// nudge): its handler may have died between the terminal write
			// and what follows it, the completion message (same message
			// id: a repeat within the window is dropped) and an online
			// run's delivery.
			again := d.retryGen == 0 && !d.nudge
			if again && r.Sys.Carrier != "" && d.carrier == r.Sys.Carrier {
				if err := publishCompletion(ctx, o.js, r); err != nil {
					return settle{}, err
				}
			}
			o.releaseSlot(ctx, r)
			if again && d.carrier == carrierIntake {
				o.kindOf(r).answer(ctx, r, nil, "", false)
			}
			return ack(), nil
		}
		if r.Sys.Carrier != d.carrier {
			if d.carrier == carrierIntake && r.Sys.Carrier == carrierTracker {
				if err := o.ensureTracker(ctx, r); err != nil {
					return settle{}, err
				}
			}
			return ack(), nil // a stale message: the run's carrier is elsewhere
		}
		var s settle
		st := &step{ctx: ctx, stop: stop, r: r, rev: rev, d: d}
		if d.nudge && d.carrier == carrierIntake {
			s, err = o.requests(st)
			if err == nil && s.Kind == consumer.KindNak {
				s = ack() // the run's own intake message carries on
			}
		} else {
			s, err = o.step(st) //nolint:contextcheck // st carries the loop's two contexts (step.ctx, step.stop)
		}
		if errors.Is(err, errRedrive) || errors.Is(err, errConflict) {
			continue
		}
		return s, err
	}
	return nakAfter(time.Second), nil
}

// duplicate handles a new intake message for a run that already exists.
func (o *Orchestrator) duplicate(ctx context.Context, r *record, d *delivery) (settle, error) {
	_, _, err := o.ledger.update(ctx, r.ID, func(x *record) error {
		x.Duplicates++
		return nil
	})
	if err != nil {
		return settle{}, err
	}
	o.met.events.WithLabelValues(d.ev.Source, "duplicate").Inc()
	if m := d.ev.Message; m != nil && m.ReplyDeferred && m.Reply != "" {
		o.kindOf(r).answer(ctx, r, nil, m.Reply, true)
	}
	if !r.State.Terminal() && r.Sys.Carrier == carrierTracker {
		if err := o.ensureTracker(ctx, r); err != nil {
			return settle{}, err
		}
	}
	return ack(), nil
}

// step takes the next step for a run this delivery carries.
func (o *Orchestrator) step(st *step) (settle, error) {
	r := st.r
	if r.Sys.Resolve != nil || r.Sys.Cancel != nil {
		s, err := o.requests(st)
		if err != nil || s.Kind != consumer.KindNak || s.Delay != 0 {
			return s, err
		}
	}
	switch r.State {
	case StateReceived:
		return o.stepReceived(st)
	case StateWaiting:
		if r.Request == nil {
			return o.stepReceived(st)
		}
		return o.admitAndSubmit(st)
	case StateSubmitting:
		return o.kindOf(r).foundSubmitting(st)
	case StateUnknown:
		return o.stepUnknown(st)
	case StateSubmitted, StateRunning:
		return o.stepPoll(st)
	}
	return settle{}, consumer.Poison(fmt.Errorf("run %s: unexpected state %q", r.ID, r.State))
}

// requests carries out an operator's resolve or cancel request. It returns
// nakAfter(0) with a nil error when there is nothing (more) to do here.
func (o *Orchestrator) requests(st *step) (settle, error) {
	ctx, r, rev, d := st.ctx, st.r, st.rev, st.d
	now := o.now()
	switch {
	case r.Sys.Resolve != nil && r.State != StateSubmitting:
		req := r.Sys.Resolve
		r.Sys.Resolve = nil
		if req.Job == "" {
			return o.finish(ctx, r, rev, req.State, "resolved by an operator: "+req.Reason, r.Error)
		}
		if owner, err := o.claimJob(ctx, req.Job, r.ID); err != nil {
			return settle{}, err
		} else if owner != r.ID {
			r.Error = fmt.Sprintf("resolve: job %s already belongs to run %s", req.Job, owner)
			if _, err := o.ledger.put(ctx, r, rev); err != nil {
				return settle{}, err
			}
			return nakAfter(0), nil
		}
		reason := fmt.Sprintf("resolved by an operator: adopted job %s: %s", req.Job, req.Reason)
		if err := o.holdSlot(ctx, r, now); err != nil {
			return settle{}, err
		}
		if err := r.toSubmitted(JobRef{Name: req.Job, SubmittedAt: now}, o.deadline(r, now), reason, now); err != nil {
			return settle{}, err
		}
		if _, err := o.ledger.put(ctx, r, rev); err != nil {
			return settle{}, err
		}
		o.logRun(r)
		return o.handOver(ctx, r, d)
	case r.Sys.Cancel != nil && (r.State == StateReceived || r.State == StateWaiting):
		return o.finish(ctx, r, rev, StateCanceled, "canceled before submission: "+r.Sys.Cancel.Reason, "")
	}
	return nakAfter(0), nil
}

// stepReceived decides a run with no request yet: its pipeline's kind
// takes it on (or, for a pipeline this replica does not know, another
// replica may, for a while).
func (o *Orchestrator) stepReceived(st *step) (settle, error) {
	ctx, r, rev := st.ctx, st.r, st.rev
	p := o.pipelines[r.Pipeline]
	if p == nil {
		// Some replica knew the pipeline when it accepted the event. During
		// a rolling configuration change another one may still know it:
		// give it the chance before deciding the pipeline is gone.
		if age := o.now().Sub(r.Created); age < unknownPipelineGrace {
			o.log.Warn("event for a pipeline this replica does not know; leaving it to another replica for now",
				"run", r.ID, "pipeline", r.Pipeline)
			return nakAfter(backoff.Jitter(30*time.Second, 0.2)), nil
		}
		reason := fmt.Sprintf("pipeline %q is not configured", r.Pipeline)
		return o.finish(ctx, r, rev, StateRejected, reason, reason)
	}
	return o.kindOf(r).received(st, p)
}

// stepPreflight renders a batch run's job, runs the preflight and records
// the decision, then goes on to admission.
func (o *Orchestrator) stepPreflight(st *step, p *Pipeline) (settle, error) {
	ctx, r, rev, d := st.ctx, st.r, st.rev, st.d
	req, chk, err := p.Render(r.ID, r.Event)
	if err != nil {
		reason := "the event does not fit the pipeline's templates: " + err.Error()
		return o.finish(ctx, r, rev, StateRejected, reason, reason)
	}
	_ = d.msg.InProgress()
	dec := o.checker.Check(ctx, chk)
	if ctx.Err() != nil {
		// A check cut short by shutdown is full of "interrupted" warnings
		// and may read as allow: never record or act on it. The message is
		// redelivered and the check runs again.
		return settle{}, fmt.Errorf("preflight of run %s interrupted: %w", r.ID, ctx.Err())
	}
	if dec.At.IsZero() {
		dec.At = o.now()
	}
	ep := p.Endpoint.Endpoint
	r.Decision, r.Request, r.Endpoint, r.Sys.Endpoint = &dec, &req, p.Endpoint.Name, &ep
	if dec.Verdict == datastores.Reject {
		reason := "preflight check rejected the job: " + dec.Reason
		return o.finish(ctx, r, rev, StateRejected, reason, reason)
	}
	return o.admitAndSubmit(st)
}

// admitAndSubmit takes an admission slot (or waits for one) and submits.
func (o *Orchestrator) admitAndSubmit(st *step) (settle, error) {
	ctx, r, d := st.ctx, st.r, st.d
	now := o.now()
	if now.Before(r.Sys.NotBefore) {
		return o.wait(st, "backoff", r.lastReasonFor(StateWaiting), r.Sys.NotBefore.Sub(now))
	}
	res, err := o.adm.acquire(ctx, r.Endpoint, r.ID, o.capFor(r.Endpoint), now)
	if err != nil {
		return settle{}, err
	}
	switch {
	case !res.PausedUntil.IsZero():
		reason := fmt.Sprintf("endpoint %s is paused until %s (%s)", r.Endpoint, res.PausedUntil.Format(time.RFC3339), res.PauseReason)
		return o.wait(st, "paused", reason, backoff.Jitter(res.PausedUntil.Sub(now), 0.1)+100*time.Millisecond)
	case res.Full:
		reason := fmt.Sprintf("endpoint %s is at max_running_jobs (%d running)", r.Endpoint, res.Running)
		n := 1
		if md, err := d.msg.Metadata(); err == nil {
			n = int(md.NumDelivered)
		}
		return o.wait(st, "max_running_jobs", reason, backoff.Delay(n, time.Second, o.opts.AdmissionRetryMax))
	}
	return o.submit(st)
}

// lastReasonFor is the reason of the latest history entry if it is for
// state, else a generic one.
func (r *record) lastReasonFor(s State) string {
	if r.State == s && r.Sys.WaitReason != "" {
		return r.Sys.WaitReason
	}
	return "waiting before the next attempt"
}

// wait records that the run waits (one history entry per reason, not one
// per look) and hands the message back for later.
//
// A run that must wait moves to the tracker stream first (the carrier
// changes in the same write, then the tracker message is published and the
// intake message acked): a message handed back with a delay still counts
// against the intake's MaxIntakePending, so runs waiting on one saturated
// endpoint would otherwise stop every other pipeline's events, online ones
// included. The tracker's first look comes at once and finds the same
// wait (no write), then looks again after delay.
func (o *Orchestrator) wait(st *step, kind, reason string, delay time.Duration) (settle, error) {
	ctx, r, rev, d := st.ctx, st.r, st.rev, st.d
	moves := d.carrier == carrierIntake
	if r.State != StateWaiting || r.Sys.WaitReason != reason || moves {
		logged := r.State != StateWaiting || r.Sys.WaitReason != reason
		if logged {
			o.met.admissionWaits.WithLabelValues(r.Endpoint, kind).Inc()
			if err := r.toWaiting(reason, o.now()); err != nil {
				return settle{}, err
			}
		}
		if moves {
			r.Sys.Carrier = carrierTracker
		}
		if _, err := o.ledger.put(ctx, r, rev); err != nil {
			return settle{}, err
		}
		if logged {
			o.logRun(r)
		}
	}
	if moves {
		if err := o.publishTracker(ctx, r, false); err != nil {
			return settle{}, err
		}
		return ack(), nil
	}
	return nakAfter(delay), nil
}

// requestID is the client request id of one submission: stable for the
// submission (recorded before the POST), different for the next one.
func requestID(runID string, gen, attempt, resubmits int) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s/%d/%d/%d", runID, gen, attempt, resubmits)))
	u := uuid.UUID(h[:16])
	u[6] = (u[6] & 0x0f) | 0x40 // version 4 layout
	u[8] = (u[8] & 0x3f) | 0x80
	return u.String()
}

// submit writes submitting, POSTs, and records the answer.
//
// The submitting write comes first: whoever finds the run in submitting
// later (after SubmitDeadline, when no POST started then can still be in
// flight) knows the POST may have happened and makes the run unknown. It
// never POSTs again blindly.
func (o *Orchestrator) submit(st *step) (settle, error) {
	ctx, r, rev, d := st.ctx, st.r, st.rev, st.d
	now := o.now()
	attempt := len(r.PreviousJobs) + 1
	req := *r.Request
	req.RequestID = requestID(r.ID, r.Sys.Gen, attempt, r.Sys.Resubmits)
	r.Request.RequestID = req.RequestID
	what := fmt.Sprintf("posting the job to endpoint %s (attempt %d)", r.Endpoint, attempt)
	if r.Sys.Resubmits > 0 {
		what += ", once more after reconciliation found no job"
	}
	if err := r.toSubmitting(what, now); err != nil {
		return settle{}, err
	}
	r.Attempts = attempt
	if r.Sys.Resubmits == 0 {
		r.Sys.ReconcileSince = now
	}
	r.Sys.SubmitDeadline = now.Add(o.opts.SubmitTimeout + o.opts.submitMargin)
	if _, err := o.ledger.put(ctx, r, rev); err != nil {
		return settle{}, err
	}
	_ = d.msg.InProgress()
	// From the POST to its recorded answer, shutdown does not interrupt:
	// the POST gets its submit timeout whatever the shutdown grace, and its
	// answer is written. Canceling it would leave the run unknown although
	// the endpoint may have answered (and created the job).
	sctx := context.WithoutCancel(ctx)
	pctx, cancel := context.WithTimeout(sctx, o.opts.SubmitTimeout)
	job, err := o.sub.Submit(pctx, *r.Sys.Endpoint, req)
	cancel()
	rctx, cancel := context.WithTimeout(sctx, recordTimeout)
	defer cancel()
	return o.afterSubmit(rctx, r, req.RequestID, job, err, d)
}

// recordTimeout bounds writing a POST's answer after shutdown began.
const recordTimeout = 30 * time.Second

// ours reports whether x is still in the submission with request id rid
// (submitting, or made unknown by someone who gave up waiting for it).
func ours(x *record, rid string) bool {
	return x.Request != nil && x.Request.RequestID == rid && (x.State == StateSubmitting || x.State == StateUnknown)
}

var errStale = errors.New("the run moved on")

func (o *Orchestrator) afterSubmit(ctx context.Context, r *record, rid string, job *jobs.Job, subErr error, d *delivery) (settle, error) {
	now := o.now()
	ep := r.Sys.Endpoint
	var upd func(x *record) error
	var after func(x *record) (settle, error)
	outcome := jobs.Classify(subErr)
	if outcome == jobs.Done && job == nil {
		outcome, subErr = jobs.Ambiguous, errors.New("the endpoint returned no job")
	}
	switch outcome {
	case jobs.Done:
		o.met.submissions.WithLabelValues(r.Endpoint, "accepted").Inc()
		if ep.Workspace != nil {
			if owner, err := o.claimJob(ctx, job.Name, r.ID); err != nil {
				return settle{}, err
			} else if owner != r.ID {
				o.log.Error("submitted job is claimed by another run", "run", r.ID, "job", job.Name, "owner", owner)
			}
		}
		upd = func(x *record) error {
			if !ours(x, rid) {
				return errStale
			}
			return x.toSubmitted(jobRef(job, rid, now), o.deadline(x, now),
				fmt.Sprintf("endpoint %s accepted job %s", x.Endpoint, job.Name), now)
		}
		after = func(x *record) (settle, error) { return o.handOver(ctx, x, d) }
	case jobs.Throttled:
		o.met.submissions.WithLabelValues(r.Endpoint, "throttled").Inc()
		wait, ok := jobs.RetryAfter(subErr)
		if !ok {
			wait = 30 * time.Second
		}
		wait = min(max(wait, time.Second), time.Hour)
		until := now.Add(wait)
		if err := o.adm.pause(ctx, r.Endpoint, until, "429 Too Many Requests"); err != nil {
			return settle{}, err
		}
		reason := fmt.Sprintf("endpoint %s answered 429 Too Many Requests; submissions paused until %s", r.Endpoint, until.Format(time.RFC3339))
		upd = func(x *record) error {
			if !ours(x, rid) || x.State != StateSubmitting {
				return errStale
			}
			x.Error = subErr.Error()
			return x.toWaiting(reason, now)
		}
		after = func(x *record) (settle, error) {
			o.releaseSlot(ctx, x)
			return nakAfter(backoff.Jitter(wait, 0.1) + 100*time.Millisecond), nil
		}
	case jobs.Ambiguous, jobs.Failed, jobs.TimedOut:
		// Failed and TimedOut come from online scoring only; on a POST they
		// are no definite answer either.
		o.met.submissions.WithLabelValues(r.Endpoint, "ambiguous").Inc()
		upd = func(x *record) error {
			if !ours(x, rid) {
				return errStale
			}
			if x.State == StateUnknown {
				return errNoChange
			}
			return x.toUnknown(subErr.Error(), "the POST's outcome is unknown ("+subErr.Error()+"); "+o.unknownPlan(x), now)
		}
		after = func(x *record) (settle, error) { return o.handOver(ctx, x, d) }
	case jobs.Refused:
		o.met.submissions.WithLabelValues(r.Endpoint, "rejected").Inc()
		x, rev, err := o.ledger.get(ctx, r.ID)
		if err != nil {
			return settle{}, err
		}
		if !ours(x, rid) || x.State != StateSubmitting {
			return settle{}, errRedrive
		}
		reason := "the endpoint refused the job: " + subErr.Error()
		return o.finish(ctx, x, rev, StateRejected, reason, subErr.Error())
	case jobs.Transient: // nothing was created
		o.met.submissions.WithLabelValues(r.Endpoint, "transient").Inc()
		var wait time.Duration
		upd = func(x *record) error {
			if !ours(x, rid) || x.State != StateSubmitting {
				return errStale
			}
			x.Sys.Transient++
			wait = backoff.Delay(x.Sys.Transient, time.Second, 5*time.Minute)
			x.Sys.NotBefore = now.Add(wait)
			x.Error = subErr.Error()
			return x.toWaiting(fmt.Sprintf("transient error, retrying in %s: %v", wait.Round(time.Millisecond), subErr), now)
		}
		after = func(x *record) (settle, error) {
			o.releaseSlot(ctx, x)
			return nakAfter(wait), nil
		}
	default:
		return settle{}, consumer.Poison(fmt.Errorf("run %s: submission outcome %v has no step (a bug in batchd)", r.ID, outcome))
	}
	x, _, err := o.ledger.update(ctx, r.ID, upd)
	if errors.Is(err, errStale) {
		o.log.Warn("submission answer arrived after the run moved on", "run", r.ID, "state", x.State, "err", subErr)
		return settle{}, errRedrive
	}
	if err != nil {
		return settle{}, err
	}
	o.logRun(x)
	return after(x)
}

// unknownPlan says what happens to an unknown run next.
func (o *Orchestrator) unknownPlan(r *record) string {
	if r.Sys.Endpoint == nil || r.Sys.Endpoint.Workspace == nil {
		return "endpoint " + r.Endpoint + " has no workspace, so batchd cannot look for the job: an operator must check and run `batchd runs retry` or `batchd runs resolve`"
	}
	return fmt.Sprintf("reconciling: looking for the job among the endpoint's jobs for %s", o.opts.ReconcileGrace)
}

// deadline is when the pipeline's timeout ends a job submitted at t.
func (o *Orchestrator) deadline(r *record, t time.Time) time.Time {
	if p := o.pipelines[r.Pipeline]; p != nil && p.Timeout > 0 {
		return t.Add(p.Timeout)
	}
	return time.Time{}
}

// handOver moves the run on after a step left it with the tracker: an
// intake message publishes the tracker message and is acked (in that
// order: a crash in between redelivers the intake message, which publishes
// again); a tracker message is the carrier already and comes back for the
// next look.
func (o *Orchestrator) handOver(ctx context.Context, r *record, d *delivery) (settle, error) {
	if d.carrier == carrierIntake {
		if err := o.publishTracker(ctx, r, false); err != nil {
			return settle{}, err
		}
		return ack(), nil
	}
	o.views.drop(r.ID) // the job may be another one (an adopted job)
	if r.State == StateSubmitted || r.State == StateRunning {
		return nakAfter(o.pollDelay(o.views.view(r, 0), o.now())), nil
	}
	return settle{}, errRedrive // unknown: start reconciling now
}

// publishTracker publishes the run's tracker message. Its id names the
// submission, so a replay within the duplicate window is dropped; later
// ones replace the pending message (one per subject).
func (o *Orchestrator) publishTracker(ctx context.Context, r *record, nudge bool) error {
	return o.publishTrackerWith(ctx, r, nudge, 0)
}

// publishTrackerChecked nudges the run's tracker with its job as a
// confirming list showed it (nil: the list did not answer; GET), if the
// run's newest tracker message is still the one at sequence last.
func (o *Orchestrator) publishTrackerChecked(ctx context.Context, r *record, job *jobs.Job, last uint64) error {
	v := "-"
	if job != nil {
		b, err := json.Marshal(jobs.Job{Name: job.Name, Status: job.Status, StudioURL: job.StudioURL})
		if err != nil {
			return fmt.Errorf("tracker message %s: %w", r.ID, err)
		}
		v = string(b)
	}
	return o.publishTrackerWith(ctx, r, true, last, hdrListed, v)
}

// publishTrackerWith publishes the run's tracker message with the given
// header key and value pairs (on a nudge); last > 0: only if the run's
// newest tracker message has that stream sequence.
func (o *Orchestrator) publishTrackerWith(ctx context.Context, r *record, nudge bool, last uint64, hdr ...string) error {
	m := nats.NewMsg(trackSubject(r.ID))
	// No body: the subject names the run, and every byte of a tracker
	// message is kept in memory while its block is read for the looks.
	id := fmt.Sprintf("%s.%d.%d.%d.%s", r.ID, r.Sys.Gen, r.Attempts, r.Sys.Resubmits, r.State)
	if nudge {
		m.Header.Set(hdrNudge, "1")
		id += ".n" + strconv.FormatInt(time.Now().UnixNano(), 36)
		for i := 0; i+1 < len(hdr); i += 2 {
			m.Header.Set(hdr[i], hdr[i+1])
		}
	}
	m.Header.Set(jetstream.MsgIDHeader, id)
	var opts []jetstream.PublishOpt
	if last > 0 {
		opts = append(opts, jetstream.WithExpectLastSequencePerSubject(last))
	}
	if _, err := o.js.PublishMsg(ctx, m, opts...); err != nil {
		return fmt.Errorf("tracker message %s: %w", r.ID, err)
	}
	return nil
}

// ensureTracker publishes the run's tracker message unless one is pending.
func (o *Orchestrator) ensureTracker(ctx context.Context, r *record) error {
	_, err := o.h.track.GetLastMsgForSubject(ctx, trackSubject(r.ID))
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("tracker message %s: %w", r.ID, err)
	}
	return o.publishTracker(ctx, r, false)
}

// stepFoundSubmitting applies the crash rule: a run found in submitting
// after its submit deadline may or may not have a job, so it becomes
// unknown, never submitted again blindly. Before the deadline a POST may
// still be in flight elsewhere: look again after it.
func (o *Orchestrator) stepFoundSubmitting(st *step) (settle, error) {
	ctx, r, rev, d := st.ctx, st.r, st.rev, st.d
	now := o.now()
	if now.Before(r.Sys.SubmitDeadline) {
		return nakAfter(r.Sys.SubmitDeadline.Sub(now) + 500*time.Millisecond), nil
	}
	o.met.submissions.WithLabelValues(r.Endpoint, "interrupted").Inc()
	if err := r.toUnknown("the POST was interrupted (batchd stopped, or its answer was never recorded)",
		"found in submitting after the submit deadline: the POST may or may not have created a job; "+o.unknownPlan(r), now); err != nil {
		return settle{}, err
	}
	if _, err := o.ledger.put(ctx, r, rev); err != nil {
		return settle{}, err
	}
	o.logRun(r)
	return o.handOver(ctx, r, d)
}

// finish ends the run in a terminal state.
//
// Order: completion message, then the terminal ledger write, then the
// admission slot, then the ack. A crash after the message replays it under
// the same Nats-Msg-Id (dropped as a duplicate); a crash after the write
// leaves a slot that the next delivery (or repair) frees.
func (o *Orchestrator) finish(ctx context.Context, r *record, rev uint64, state State, reason, errText string) (settle, error) {
	now := o.now()
	if err := r.toFinished(state, reason, errText, now); err != nil {
		return settle{}, err
	}
	// Before the terminal write, which may start a short retention: a
	// crash after the write must not leave a key without its identity. A
	// write that then loses leaves an identity the next finish overwrites;
	// it is read only when the ledger has no record.
	if err := o.remember(ctx, r); err != nil {
		return settle{}, err
	}
	if _, err := o.ledger.put(ctx, r, rev); err != nil {
		return settle{}, err
	}
	// Only the write that won announces the outcome, so a run never
	// reports two final states. A crash before this publish is made good
	// by the run's message, redelivered, finding the run finished.
	if err := publishCompletion(ctx, o.js, r); err != nil {
		return settle{}, err
	}
	o.met.finished.WithLabelValues(r.Pipeline, string(state)).Inc()
	if r.Job != nil && !r.Job.SubmittedAt.IsZero() {
		o.met.jobDuration.WithLabelValues(r.Pipeline, string(state)).Observe(now.Sub(r.Job.SubmittedAt).Seconds())
	}
	o.logRun(r)
	if r.Job != nil {
		o.bulk.forget(r.Sys.Endpoint, r.Job.Name)
	}
	o.views.drop(r.ID)
	o.releaseSlot(ctx, r)
	o.kindOf(r).answer(ctx, r, r.full, "", false)
	return ack(), nil
}

// releaseSlot gives the run's admission slot back (if it holds one).
// Failures are left to repair.
func (o *Orchestrator) releaseSlot(ctx context.Context, r *record) {
	if r.Endpoint == "" || o.maxRunning[r.Endpoint] <= 0 && !o.mayHoldSlot(r) {
		return
	}
	if err := o.adm.release(ctx, r.Endpoint, r.ID); err != nil {
		o.log.Warn("release admission slot (repair will)", "run", r.ID, "endpoint", r.Endpoint, "err", err)
	}
}

// holdSlot counts an adopted job against its endpoint's cap (a parked
// run gave its slot back; see stepUnknown).
func (o *Orchestrator) holdSlot(ctx context.Context, r *record, now time.Time) error {
	if r.Endpoint == "" || o.capFor(r.Endpoint) <= 0 {
		return nil
	}
	return o.adm.hold(ctx, r.Endpoint, r.ID, now)
}

// mayHoldSlot: endpoints without a cap take no slots, but one configured
// with a cap before a restart may have.
func (o *Orchestrator) mayHoldSlot(r *record) bool {
	_, known := o.maxRunning[r.Endpoint]
	return !known
}

// retryTransition starts a new attempt of a finished or unknown run, on an
// operator's retry message.
func (o *Orchestrator) retryTransition(st *step) (settle, error) {
	ctx, r, rev, d := st.ctx, st.r, st.rev, st.d
	if !(r.State.Terminal() || r.State == StateUnknown) {
		o.log.Info("retry ignored: the run is not finished or unknown", "run", r.ID, "state", r.State)
		return ack(), nil
	}
	now := o.now()
	if r.Job != nil {
		r.PreviousJobs = append(r.PreviousJobs, *r.Job)
		r.Job = nil
	}
	r.Sys = sysState{Carrier: carrierIntake, Gen: d.retryGen}
	r.Error = ""
	reason := "retry requested by an operator"
	if d.reason != "" {
		reason += ": " + d.reason
	}
	if err := r.toReceived(reason, now); err != nil {
		return settle{}, err
	}
	if _, err := o.ledger.put(ctx, r, rev); err != nil {
		if errors.Is(err, errConflict) {
			return settle{}, errRedrive
		}
		return settle{}, err
	}
	o.logRun(r)
	d.retryGen = 0 // from here on this message drives the run
	return settle{}, errRedrive
}

// logRun logs a transition once, with its reason: the decision log.
func (o *Orchestrator) logRun(r *record) {
	attrs := []any{"run", r.ID, "pipeline", r.Pipeline, "state", r.State, "reason", r.lastReason()}
	if r.Job != nil {
		attrs = append(attrs, "job", r.Job.Name)
	}
	if r.State == StateUnknown || r.State == StateRejected || r.State == StateFailed || r.State == StateTimedOut {
		o.log.Warn("run", attrs...)
		return
	}
	if (r.State == StateReceived || r.State == StateSubmitting) && o.kindOf(r).quietSteps() {
		// An online run takes milliseconds: its outcome is the decision
		// worth a line at info; the steps before it are debug.
		o.log.Debug("run", attrs...)
		return
	}
	o.log.Info("run", attrs...)
}

// endpointHost is the host the endpoint's scoring URI names (the poll
// budget's key).
func endpointHost(ep *jobs.Endpoint) string {
	if ep == nil {
		return ""
	}
	if u, err := url.Parse(ep.ScoringURI); err == nil && u.Host != "" {
		return u.Host
	}
	return ep.Name
}
