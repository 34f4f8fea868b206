package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/backoff"
)

// The tracker is not a goroutine per job: every run being tracked (or
// reconciled, or waiting for an operator) has one message in the tracker
// stream, and each look ends with NakWithDelay(next interval). JetStream
// keeps the schedule, so it survives restarts and spreads over replicas.

// pollInterval is the wait before the next status request for a job of the
// given age: a tenth of its age, within [min, max]. Young jobs are polled
// often (they fail fast when they fail), old ones rarely.
func pollInterval(age, lo, hi time.Duration) time.Duration {
	return min(max(age/10, lo), hi)
}

// budgetHeadroom keeps the stretched intervals' demand (see pollDelay) a
// fifth under the budget, for reconciliation lists and jitter.
const budgetHeadroom = 1.2

// pollDelay is pollInterval for the run now, jittered, and never past the
// run's deadline (so a timeout is noticed on time).
//
// When more jobs are tracked than the poll budget can look at within their
// intervals, every interval is stretched to tracked ÷ budget (with
// headroom), so that the demand fits the budget. Without that floor a
// saturated tracker starves new jobs: JetStream hands out due redeliveries
// before new messages, so with redeliveries always due, a just-submitted
// job's first look is never delivered. The count is of all tracked runs,
// not those of one endpoint host, and the budget is one replica's: with
// several hosts or replicas the floor is conservative.
func (o *Orchestrator) pollDelay(v *pollView, now time.Time) time.Duration {
	age := time.Duration(0)
	if !v.submitted.IsZero() {
		age = now.Sub(v.submitted)
	}
	d := pollInterval(age, o.opts.PollMin, o.opts.PollMax)
	if o.opts.PollBudget > 0 {
		floor := time.Duration(float64(o.index.tracked()) * budgetHeadroom / o.opts.PollBudget * float64(time.Second))
		d = max(d, floor)
	}
	// While the workspace delivers job events, routine polls only catch
	// what a lost event missed.
	if ep := v.ep; ep != nil && o.wsEvents.flowing(ep.Workspace, now) {
		d = max(d, o.opts.EventSafetyPoll)
	}
	d = backoff.Jitter(d, 0.1)
	if !v.deadline.IsZero() {
		if until := v.deadline.Sub(now) + 100*time.Millisecond; until < d {
			d = max(until, 0)
		}
	}
	return d
}

// takeBudget waits for the endpoint host's poll budget. A wait of more
// than a couple of seconds is not slept through: the message is handed
// back for later (the second result is false).
func (o *Orchestrator) takeBudget(stop context.Context, host string) (settle, bool) {
	res := o.limiter(host).Reserve()
	d := res.Delay()
	if d == 0 {
		o.pollsUsed(host).add(time.Now())
		return settle{}, true
	}
	if d > 2*time.Second {
		res.Cancel()
		return nakAfter(d + backoff.Jitter(time.Second, 0.5)), false
	}
	if backoff.Sleep(stop, d) != nil {
		res.Cancel()
		return nakAfter(0), false
	}
	o.pollsUsed(host).add(time.Now())
	return settle{}, true
}

// pageBudget charges a job list's later pages to the poll budget of host
// (the caller took one for the first), waiting for each.
func (o *Orchestrator) pageBudget(host string) jobs.ListOption {
	return jobs.BeforePage(func(ctx context.Context) error {
		if err := o.limiter(host).Wait(ctx); err != nil {
			return err
		}
		o.pollsUsed(host).add(time.Now())
		return nil
	})
}

// lookOutcome is what one look at a job found, before anything is
// recorded: the job (from a job list or a GET), or the GET's error.
type lookOutcome struct {
	job  *jobs.Job
	name string // the job looked at
	err  error
}

// look asks for v's job status: from a job list when one answers, else one
// GET within the poll budget. done: it decided to look later instead (the
// first look's wait, no budget left, a confirming list asked for), with
// that settle. cancel: an operator's cancel is pending.
func (o *Orchestrator) look(ctx, stop context.Context, v *pollView, cancel bool, d *delivery, now time.Time) (out lookOutcome, s settle, done bool) {
	ep := v.ep
	o.bulk.track(ep, v.id, v.job, v.submitted)
	// The first look waits PollMin, or the safety interval while the
	// workspace's events will announce the job's changes. A nudge (an
	// event, an operator) looks now.
	events := o.wsEvents.flowing(ep.Workspace, now)
	if !d.nudge && !cancel {
		first := o.opts.PollMin
		switch {
		case events:
			first = max(first, o.opts.EventSafetyPoll)
		case o.bulk.covers(ep):
			// The next job list answers the first look (and nudges the
			// run if the job ended first).
			first = max(first, o.opts.JobListInterval+o.opts.JobListInterval/5)
		}
		if age := now.Sub(v.submitted); age < first {
			wait := first - age
			if !v.deadline.IsZero() {
				wait = min(wait, v.deadline.Sub(now)+100*time.Millisecond)
			}
			return out, nakAfter(wait), true
		}
	}
	job, listed := o.bulk.status(ep, v.job, v.submitted, now)
	// A nudge asks for news the last list may not have (an event, an
	// operator's cancel): only an end the list shows answers it.
	if listed && d.nudge && !job.Status.Normal().Terminal() {
		listed = false
	}
	// An event's nudge: with job lists on, a shared list that starts after
	// it answers (bulk.request); its own nudge brings the job as listed.
	// If that nudge does not come (a crash, NATS), this message returns
	// after Options.confirmFallback (30 s) and GETs.
	// Only the first delivery: the message comes back (naked) for the
	// run's next look, which must ask the service again.
	if l := d.listed; l != nil && !d.redelivered && l.Name == v.job && !cancel {
		job, listed = l, true
	} else if d.event > 0 && !d.checked && !d.redelivered && !cancel &&
		o.bulk.request(ep, confirmLook{run: v.id, job: v.job, submitted: v.submitted, rank: d.event - 1, seq: d.seq}, now) {
		wait := o.opts.confirmFallback
		if !v.deadline.IsZero() {
			wait = min(wait, v.deadline.Sub(now)+100*time.Millisecond)
		}
		return out, nakAfter(wait), true
	}
	var err error
	if listed {
		o.met.polls.WithLabelValues(v.endpoint, "list").Inc()
	} else {
		if s, ok := o.takeBudget(stop, endpointHost(ep)); !ok {
			return out, s, true
		}
		gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		job, err = o.sub.Get(gctx, *ep, v.job)
		cancel()
	}
	out = lookOutcome{name: v.job}
	if err != nil {
		o.met.polls.WithLabelValues(v.endpoint, "error").Inc()
		out.err = err
		return out, settle{}, false
	}
	if !listed {
		o.met.polls.WithLabelValues(v.endpoint, "ok").Inc()
	}
	if events && !d.nudge && !cancel && job.Status.Terminal() {
		o.wsEvents.missedEvent(ep.Workspace)
	}
	out.job = job
	return out, settle{}, false
}

// statusFailure is what a run records of a failing status request.
func statusFailure(err error) string { return "status request failed: " + err.Error() }

// lookByView is a routine look (not a nudge) at a run the tracker holds a
// view of: when the job is as the view has it, the run is neither read nor
// written, and the message comes back after the next interval (handled).
// Otherwise what the look found goes with the delivery to the full step,
// which reads the run and records it (no second request).
func (o *Orchestrator) lookByView(ctx, stop context.Context, v *pollView, d *delivery) (settle, bool) {
	now := o.now()
	if !v.deadline.IsZero() && !now.Before(v.deadline) {
		return settle{}, false
	}
	out, s, done := o.look(ctx, stop, v, false, d, now)
	switch {
	case done:
		return s, true
	case o.views.get(v.id) != v:
		// The watch dropped the view while the look was out: the run was
		// written since. The full step reads it.
	case out.err != nil && v.failing == statusFailure(out.err), out.err == nil && v.answers(o.views, out.job):
		return nakAfter(o.pollDelay(v, now)), true
	}
	d.look = &out
	return settle{}, false
}

// stepPoll looks at the job's status (or takes the look lookByView made)
// and records what changed.
func (o *Orchestrator) stepPoll(st *step) (settle, error) {
	ctx, stop, r, rev, d := st.ctx, st.stop, st.r, st.rev, st.d
	now := o.now()
	if r.Job == nil || r.Sys.Endpoint == nil {
		o.log.Error("run has no job to track; an operator must resolve it", "run", r.ID, "state", r.State)
		return nakAfter(backoff.Jitter(o.opts.ParkInterval, 0.1)), nil
	}
	if !r.Sys.Deadline.IsZero() && !now.Before(r.Sys.Deadline) {
		return o.timeout(ctx, r, rev)
	}
	v := o.views.view(r, rev)
	out := d.look
	d.look = nil // a redrive looks again
	if out == nil || out.name != r.Job.Name || r.Sys.Cancel != nil {
		o2, s, done := o.look(ctx, stop, v, r.Sys.Cancel != nil, d, now)
		if done {
			o.views.put(r, rev)
			return s, nil
		}
		out = &o2
	}
	if out.err != nil {
		// A failing GET is not a state change: note it and look again.
		msg := statusFailure(out.err)
		if r.Error != msg {
			x, xrev, uerr := o.ledger.update(ctx, r.ID, func(x *record) error {
				if x.Job == nil || x.Job.Name != r.Job.Name || x.Error == msg {
					return errNoChange
				}
				x.Error = msg
				return nil
			})
			if uerr != nil {
				return settle{}, uerr
			}
			r, rev = x, xrev
		}
		return nakAfter(o.pollDelay(o.views.put(r, rev), now)), nil
	}
	job := out.job
	if v.answers(o.views, job) {
		// As read: nothing to write.
		o.views.put(r, rev)
		return nakAfter(o.pollDelay(v, now)), nil
	}
	r.Job.Status = job.Status
	if job.StudioURL != "" {
		r.Job.StudioURL = job.StudioURL
	}
	switch job.Status.Normal() {
	case jobs.StatusCompleted:
		return o.finish(ctx, r, rev, StateCompleted, fmt.Sprintf("job %s completed", r.Job.Name), "")
	case jobs.StatusCanceled:
		reason := fmt.Sprintf("job %s was canceled", r.Job.Name)
		if r.Sys.Cancel != nil {
			reason += " on request: " + r.Sys.Cancel.Reason
		}
		return o.finish(ctx, r, rev, StateCanceled, reason, "")
	case jobs.StatusFailed:
		r.Job.Error = job.Error
		return o.jobFailed(ctx, r, rev, job)
	}
	name := r.Job.Name
	x, xrev, err := o.ledger.update(ctx, r.ID, func(x *record) error {
		if x.Job == nil || x.Job.Name != name || (x.State != StateSubmitted && x.State != StateRunning) {
			return errStale
		}
		changed := false
		if x.Job.Status != job.Status {
			x.Job.Status, changed = job.Status, true
		}
		if job.StudioURL != "" && x.Job.StudioURL != job.StudioURL {
			x.Job.StudioURL, changed = job.StudioURL, true
		}
		if x.Error != "" {
			x.Error, changed = "", true
		}
		if x.State == StateSubmitted && job.Status.Running() {
			if err := x.toRunning(fmt.Sprintf("job %s is %s", name, job.Status), now); err != nil {
				return err
			}
			changed = true
		}
		if !changed {
			return errNoChange
		}
		return nil
	})
	if errors.Is(err, errStale) {
		return settle{}, errRedrive
	}
	if err != nil {
		return settle{}, err
	}
	if x.State != r.State {
		o.logRun(x)
	}
	return nakAfter(o.pollDelay(o.views.put(x, xrev), now)), nil
}

// jobFailed retries a failed job if the pipeline's retry policy allows
// another attempt, and ends the run failed otherwise.
func (o *Orchestrator) jobFailed(ctx context.Context, r *record, rev uint64, job *jobs.Job) (settle, error) {
	o.views.drop(r.ID) // the run ends, or its next attempt has another job
	now := o.now()
	what := fmt.Sprintf("job %s failed", r.Job.Name)
	if job.Error != "" {
		what += ": " + job.Error
	}
	maxAttempts, base := DefaultRetry.MaxAttempts, DefaultRetry.Backoff
	if p := o.pipelines[r.Pipeline]; p != nil {
		maxAttempts = max(p.Retry.MaxAttempts, 1)
		if p.Retry.Backoff > 0 {
			base = p.Retry.Backoff
		}
	}
	if r.Attempts >= maxAttempts || r.Sys.Cancel != nil {
		return o.finish(ctx, r, rev, StateFailed, what, job.Error)
	}
	wait := backoff.Exp(r.Attempts, base, 6*time.Hour)
	prev := *r.Job
	prev.FinishedAt = now
	r.PreviousJobs = append(r.PreviousJobs, prev)
	r.Job = nil
	r.Error = what
	r.Sys.NotBefore = now.Add(wait)
	r.Sys.Resubmits, r.Sys.Transient, r.Sys.Deadline = 0, 0, time.Time{}
	if err := r.toWaiting(fmt.Sprintf("%s; the retry policy allows attempt %d of %d, after %s", what, r.Attempts+1, maxAttempts, wait), now); err != nil {
		return settle{}, err
	}
	if _, err := o.ledger.put(ctx, r, rev); err != nil {
		return settle{}, err
	}
	o.logRun(r)
	o.releaseSlot(ctx, r)
	return nakAfter(wait), nil
}

// timeout cancels the job (through ARM, when the endpoint has a workspace)
// and ends the run timed_out.
func (o *Orchestrator) timeout(ctx context.Context, r *record, rev uint64) (settle, error) {
	reason := "the pipeline's timeout passed"
	if !r.Job.SubmittedAt.IsZero() {
		reason = fmt.Sprintf("the pipeline's timeout of %s passed", r.Sys.Deadline.Sub(r.Job.SubmittedAt).Round(time.Second))
	}
	ep := r.Sys.Endpoint
	if ep.Workspace == nil {
		reason += fmt.Sprintf("; job %s could not be canceled because endpoint %s has no workspace configured: it may still be running", r.Job.Name, r.Endpoint)
	} else {
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		err := o.sub.Cancel(cctx, *ep, r.Job.Name)
		cancel()
		switch jobs.Classify(err) {
		case jobs.Done:
			reason += fmt.Sprintf("; job %s canceled", r.Job.Name)
		case jobs.Refused:
			reason += fmt.Sprintf("; canceling job %s failed: %v", r.Job.Name, err)
		default: // a cancel is safe to repeat
			o.log.Warn("cancel after timeout failed; will retry", "run", r.ID, "job", r.Job.Name, "err", err)
			return nakAfter(backoff.Delay(2, o.opts.PollMin, o.opts.PollMax)), nil
		}
	}
	return o.finish(ctx, r, rev, StateTimedOut, reason, reason)
}

// reconcileEvery is how often an unknown run looks for its job.
func reconcileEvery(grace time.Duration) time.Duration { return max(grace/5, time.Second) }

// stepUnknown reconciles a run whose POST had no known outcome: with a
// workspace, it lists the endpoint's jobs created since the submission and
// adopts the one whose inputs match; with none found after ReconcileGrace it
// submits once more; after that (or without a workspace) it waits for an
// operator.
func (o *Orchestrator) stepUnknown(st *step) (settle, error) {
	ctx, stop, r, rev := st.ctx, st.stop, st.r, st.rev
	now := o.now()
	ep := r.Sys.Endpoint
	if ep == nil || ep.Workspace == nil || r.Request == nil {
		return nakAfter(backoff.Jitter(o.opts.ParkInterval, 0.1)), nil // the carrier stays alive for operator requests
	}
	uris := inputURIs(r.Request)
	if len(uris) == 0 {
		return o.park(ctx, r, rev, "reconciliation cannot tell this run's job from others: the request has no input URIs; an operator must run `batchd runs retry` or `batchd runs resolve`")
	}
	since := r.Sys.ReconcileSince
	if since.IsZero() {
		since = r.Sys.SubmittingAt
	}
	since = since.Add(-o.opts.ReconcileSkew)
	graceEnd := r.Sys.SubmittingAt.Add(o.opts.ReconcileGrace)
	// A listing answers for this run if it started after the run's last
	// change (its POST's outcome had become unknown by then) and within
	// the interval the run checks at and, for the decision to submit
	// again, after the grace: a job the service was still creating must
	// be in it.
	after := r.Updated
	if a := now.Add(-reconcileEvery(o.opts.ReconcileGrace)); a.After(after) {
		after = a
	}
	if !now.Before(graceEnd) && graceEnd.After(after) {
		after = graceEnd
	}
	wsKey := WorkspaceID(*ep.Workspace)
	list, cached := o.recon.cached(wsKey, after, since)
	var err error
	if !cached {
		// A run that joins a listing in flight spends no budget on it.
		if !o.recon.busy(wsKey) {
			if s, ok := o.takeBudget(stop, endpointHost(ep)); !ok {
				return s, nil
			}
		}
		lctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		list, cached, err = o.recon.list(lctx, wsKey, after, since, o.now, func(ctx context.Context, since time.Time) ([]jobs.Job, error) {
			return o.sub.List(ctx, *ep, since, o.pageBudget(endpointHost(ep)))
		})
		cancel()
	}
	if err != nil {
		o.met.polls.WithLabelValues(r.Endpoint, "error").Inc()
		if errors.Is(err, jobs.ErrNoWorkspace) {
			return nakAfter(backoff.Jitter(o.opts.ParkInterval, 0.1)), nil
		}
		o.log.Warn("reconcile: listing jobs failed; will retry", "run", r.ID, "err", err)
		return nakAfter(backoff.Delay(2, o.opts.PollMin, o.opts.PollMax)), nil
	}
	if !cached {
		o.met.polls.WithLabelValues(r.Endpoint, "ok").Inc()
	}
	list = slices.Clone(list) // shared with other runs
	slices.SortStableFunc(list, func(a, b jobs.Job) int { return a.CreatedAt.Compare(b.CreatedAt) })
	for _, j := range list {
		if !j.CreatedAt.IsZero() && j.CreatedAt.Before(since) {
			continue
		}
		if !jobMatches(j, ep, r.Request) {
			continue
		}
		owner, err := o.claimJob(ctx, j.Name, r.ID)
		if err != nil {
			return settle{}, err
		}
		if owner != r.ID {
			continue // another run's job
		}
		o.met.reconciles.WithLabelValues(r.Endpoint, "adopted").Inc()
		at := j.CreatedAt
		if at.IsZero() {
			at = r.Sys.SubmittingAt
		}
		reason := fmt.Sprintf("reconciled: adopted job %s (created %s), whose endpoint, inputs and outputs match this run's", j.Name, at.UTC().Format(time.RFC3339))
		if err := o.holdSlot(ctx, r, now); err != nil {
			return settle{}, err
		}
		if err := r.toSubmitted(jobRef(&j, r.Request.RequestID, at.UTC()), o.deadline(r, at), reason, now); err != nil {
			return settle{}, err
		}
		if _, err := o.ledger.put(ctx, r, rev); err != nil {
			return settle{}, err
		}
		o.logRun(r)
		return nakAfter(0), nil
	}
	if now.Before(graceEnd) {
		next := min(reconcileEvery(o.opts.ReconcileGrace), graceEnd.Sub(now)+100*time.Millisecond)
		return nakAfter(backoff.Jitter(next, 0.1)), nil
	}
	if r.Sys.Resubmits == 0 {
		o.met.reconciles.WithLabelValues(r.Endpoint, "resubmitted").Inc()
		r.Sys.Resubmits = 1
		r.Sys.NotBefore, r.Sys.Transient = time.Time{}, 0
		return o.admitAndSubmit(st)
	}
	o.met.reconciles.WithLabelValues(r.Endpoint, "operator").Inc()
	// A list that started after the grace shows no job of this run: it
	// most likely has none, and holding its slot until an operator acts
	// would shrink the endpoint's capacity (to nothing, after as many
	// such runs as max_running_jobs). Adopting a job later takes one again.
	o.releaseSlot(ctx, r)
	return o.park(ctx, r, rev, fmt.Sprintf("no job matching this run was found %s after it was submitted again; an operator must check the endpoint and run `batchd runs retry` or `batchd runs resolve`", o.opts.ReconcileGrace))
}

// park records (once) why the run waits for an operator, and keeps its
// carrier alive so that operator requests reach it.
func (o *Orchestrator) park(ctx context.Context, r *record, rev uint64, reason string) (settle, error) {
	if r.Sys.WaitReason != reason {
		if err := r.toParked(reason, o.now()); err != nil {
			return settle{}, err
		}
		if _, err := o.ledger.put(ctx, r, rev); err != nil {
			return settle{}, err
		}
		o.logRun(r)
	}
	return nakAfter(backoff.Jitter(o.opts.ParkInterval, 0.1)), nil
}

func inputURIs(req *jobs.JobRequest) []string {
	var uris []string
	for _, in := range req.Inputs {
		if in.URI != "" {
			uris = append(uris, in.URI)
		}
	}
	return uris
}

// jobMatches reports whether a job the workspace lists is this run's
// submission, by everything ARM reports about a job that identifies what
// was POSTed (its creation after the POST and its not being another run's
// are checked by the caller):
//   - the Azure ML endpoint (ARM's azureml.endpointname), when reported:
//     the same input sent to another endpoint is another submission;
//   - the deployment (azureml.deploymentname), when the run named one and
//     the service reports it (without a name the endpoint's default ran
//     it, whatever its name);
//   - every input URI of the request, in canonical form
//     (jobs.CanonicalURI: short and long datastore forms, encoding, case of
//     the host, a trailing slash), by name when the service keeps names;
//   - every output URI, the same way, when the service reports outputs:
//     outputs usually name the run, so they tell two runs on one input
//     apart.
//
// The experiment name is not used: the service may replace it (it defaults
// to the endpoint's name).
func jobMatches(j jobs.Job, ep *jobs.Endpoint, req *jobs.JobRequest) bool {
	if j.EndpointName != "" && ep != nil {
		if name := ep.AzureName(); name != "" && !strings.EqualFold(j.EndpointName, name) {
			return false
		}
	}
	dep := req.Deployment
	if dep == "" && ep != nil {
		dep = ep.Deployment
	}
	if dep != "" && j.DeploymentName != "" && !strings.EqualFold(dep, j.DeploymentName) {
		return false
	}
	ins := map[string]string{}
	for name, in := range req.Inputs {
		if in.URI != "" {
			ins[name] = in.URI
		}
	}
	if len(ins) == 0 || !urisMatch(j.Inputs, ins) {
		return false
	}
	outs := map[string]string{}
	for name, out := range req.Outputs {
		if out.URI != "" {
			outs[name] = out.URI
		}
	}
	return len(outs) == 0 || len(j.Outputs) == 0 || urisMatch(j.Outputs, outs)
}

// urisMatch reports whether got holds every URI of want, compared in
// canonical form: under the same name when got has it, else anywhere.
func urisMatch(got, want map[string]string) bool {
	for name, w := range want {
		cw := jobs.CanonicalURI(w)
		if v, ok := got[name]; ok {
			if jobs.CanonicalURI(v) != cw {
				return false
			}
			continue
		}
		found := false
		for _, v := range got {
			if jobs.CanonicalURI(v) == cw {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

var jobKeySafe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,200}$`)

func jobKey(name string) string {
	if jobKeySafe.MatchString(name) {
		return "j." + name
	}
	h := sha256.Sum256([]byte(name))
	return "h." + hex.EncodeToString(h[:16])
}

// claimJob records that job belongs to runID, unless it already belongs to
// a run; it returns the owner. A job is never adopted by two runs.
func (o *Orchestrator) claimJob(ctx context.Context, job, runID string) (string, error) {
	_, err := o.h.jobs.Create(ctx, jobKey(job), []byte(runID))
	if err == nil {
		return runID, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return "", fmt.Errorf("claim job %s: %w", job, err)
	}
	e, err := o.h.jobs.Get(ctx, jobKey(job))
	if err != nil {
		return "", fmt.Errorf("claim job %s: %w", job, err)
	}
	return string(e.Value()), nil
}

// slotGrace is how long a slot may be held by a run that has not reached
// submitting (it took the slot and is about to write) before repair frees
// it.
const slotGrace = 2 * time.Minute

func (o *Orchestrator) repairLoop(ctx context.Context) error {
	t := time.NewTimer(backoff.Jitter(o.opts.RepairInterval, 0.2))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if n, err := o.repair(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			o.log.Warn("admission repair", "err", err)
		} else if n > 0 {
			o.log.Info("admission repair freed slots", "slots", n)
		}
		t.Reset(backoff.Jitter(o.opts.RepairInterval, 0.2))
	}
}

// repair frees admission slots whose run no longer needs one: finished (a
// crash between the terminal write and the release), expired, or not yet
// submitting long after it took the slot.
func (o *Orchestrator) repair(ctx context.Context) (int, error) {
	keys, err := o.adm.endpoints(ctx)
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return 0, nil
		}
		return 0, err
	}
	now := time.Now()
	freed := 0
	for _, key := range keys {
		s, _, err := o.adm.loadKey(ctx, key)
		if err != nil {
			return freed, err
		}
		stale := map[string]time.Time{}
		for id, at := range s.Slots {
			r, _, err := o.ledger.get(ctx, id)
			switch {
			case errors.Is(err, ErrRunNotFound):
				stale[id] = at
			case err != nil:
				return freed, err
			case r.State.Terminal():
				stale[id] = at
			case (r.State == StateReceived || r.State == StateWaiting) && now.Sub(at) > slotGrace:
				stale[id] = at
			}
		}
		if len(stale) == 0 {
			continue
		}
		n, err := o.adm.dropSlots(ctx, key, stale)
		if err != nil {
			return freed, err
		}
		freed += n
	}
	return freed, nil
}
