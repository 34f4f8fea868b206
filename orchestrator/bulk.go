package orchestrator

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/backoff"
)

// bulkStatus answers the tracker's status looks from the ARM job list of
// each workspace, when the workspace sends no job events: one list request
// (a page of jobs, newest first) answers for many tracked jobs, and a job's
// own GET is left for what the list does not cover (a job submitted after
// the list started, a list that failed or is stale). A job the list shows
// ended is nudged, so its run finishes at the next list, not at its next
// poll. Lists read the same job resource as a GET, so their status is as
// good as one.
//
// Every replica lists for the jobs its own tracker steps have seen (held
// in memory: the job name, its run and submission time), back to the
// oldest of them. Memory: about 100 bytes per tracked job.
type bulkStatus struct {
	o        *Orchestrator
	interval time.Duration

	mu sync.Mutex
	ws map[string]*bulkWS // by WorkspaceID
	// kick wakes confirmLoop when a look waits for a confirming list.
	kick chan struct{}
}

// confirmWave is one confirming list of a workspace: the looks that asked
// for it before it started.
type confirmWave struct {
	ep    jobs.Endpoint
	since time.Time              // the oldest submission among the looks
	looks map[string]confirmLook // by job name
}

// confirmLook is a tracker look that an event asked for: the run, its job,
// and how far along the event said the job was (progress).
type confirmLook struct {
	run       string
	job       string
	submitted time.Time
	rank      int
	// seq is the tracker stream sequence of the event's nudge: the answer
	// replaces it only if it is still the run's newest message.
	seq uint64
}

// confirmReach bounds how old a job a confirming list reads back to: a
// list pages back through every job created since, so the end of an
// older job is checked with its own GET.
const confirmReach = 2 * time.Hour

type bulkWS struct {
	ep jobs.Endpoint // one endpoint of the workspace (List reads only its workspace)
	// tracked: jobs this replica's tracker has looked at, by name.
	tracked map[string]bulkJob
	// listed: the tracked jobs the last complete list showed, and when
	// that list started.
	listed map[string]jobs.Job
	at     time.Time
	// pending is the next confirming list, gathering looks until
	// confirmLoop starts it.
	pending *confirmWave
}

type bulkJob struct {
	run       string
	submitted time.Time
}

func newBulkStatus(o *Orchestrator, interval time.Duration) *bulkStatus {
	return &bulkStatus{o: o, interval: interval, ws: map[string]*bulkWS{}, kick: make(chan struct{}, 1)}
}

// track notes a tracked job of a workspace endpoint.
func (b *bulkStatus) track(ep *jobs.Endpoint, run, job string, submitted time.Time) {
	if b.interval <= 0 || ep == nil || ep.Workspace == nil || job == "" {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.workspace(ep).tracked[job] = bulkJob{run: run, submitted: submitted}
}

// workspace returns ep's workspace state, made on first use. The caller
// holds b.mu; ep has a workspace.
func (b *bulkStatus) workspace(ep *jobs.Endpoint) *bulkWS {
	id := WorkspaceID(*ep.Workspace)
	w := b.ws[id]
	if w == nil {
		w = &bulkWS{ep: *ep, tracked: map[string]bulkJob{}}
		b.ws[id] = w
	}
	return w
}

// covers reports whether jobs of ep are refreshed by job lists.
func (b *bulkStatus) covers(ep *jobs.Endpoint) bool {
	return b.interval > 0 && ep != nil && ep.Workspace != nil
}

// forget drops a job that no longer needs looking at.
func (b *bulkStatus) forget(ep *jobs.Endpoint, name string) {
	if ep == nil || ep.Workspace == nil {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if w := b.ws[WorkspaceID(*ep.Workspace)]; w != nil {
		delete(w.tracked, name)
		delete(w.listed, name)
	}
}

// status is the job as the last list showed it, if that list started
// after the job was submitted (so it covers it) and is at most two
// intervals old.
func (b *bulkStatus) status(ep *jobs.Endpoint, name string, submitted, now time.Time) (*jobs.Job, bool) {
	if b.interval <= 0 || ep == nil || ep.Workspace == nil {
		return nil, false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	w := b.ws[WorkspaceID(*ep.Workspace)]
	if w == nil || w.at.IsZero() || !w.at.After(submitted) || now.Sub(w.at) > 2*b.interval {
		return nil, false
	}
	j, ok := w.listed[name]
	if !ok {
		return nil, false
	}
	return &j, true
}

// run lists every workspace with tracked jobs each interval, while its
// events do not flow.
func (b *bulkStatus) run(ctx context.Context) error {
	if b.interval <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(b.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		b.mu.Lock()
		var ids []string
		for id, w := range b.ws {
			if len(w.tracked) > 0 {
				ids = append(ids, id)
			}
		}
		b.mu.Unlock()
		for _, id := range ids {
			if err := b.list(ctx, id); err != nil && ctx.Err() == nil {
				b.o.log.Debug("job list for bulk status", "workspace", id, "err", err)
			}
		}
	}
}

// list reads one workspace's jobs back to its oldest tracked one and
// nudges the runs whose jobs ended.
func (b *bulkStatus) list(ctx context.Context, id string) error {
	now := b.o.now()
	b.mu.Lock()
	w := b.ws[id]
	ep := w.ep
	var since time.Time
	for _, j := range w.tracked {
		if since.IsZero() || j.submitted.Before(since) {
			since = j.submitted
		}
	}
	b.mu.Unlock()
	if since.IsZero() {
		return nil // its jobs finished since run picked it
	}
	if b.o.wsEvents.flowing(ep.Workspace, now) {
		return nil // the events announce changes; the safety polls do the rest
	}
	// Only this replica's tracked jobs are kept: a workspace's list holds
	// other clients' jobs too, and each decoded job costs far more than
	// its entry in tracked.
	listed, err := b.fetch(ctx, ep, since, func(j jobs.Job) (bool, bool) {
		b.mu.Lock()
		_, ok := w.tracked[j.Name]
		b.mu.Unlock()
		return ok, true
	})
	if errors.Is(err, errOverBudget) {
		return nil // the jobs' own polls carry on
	}
	if err != nil {
		return err
	}
	var ended []bulkJob
	b.mu.Lock()
	w.listed = map[string]jobs.Job{}
	for _, j := range listed {
		t, ok := w.tracked[j.Name]
		if !ok {
			continue
		}
		w.listed[j.Name] = j
		if j.Status.Normal().Terminal() {
			ended = append(ended, t)
			delete(w.tracked, j.Name) // its run re-registers if it still tracks it
		}
	}
	w.at = now
	b.mu.Unlock()
	for _, t := range ended {
		if err := b.nudge(ctx, t.run); err != nil {
			return err
		}
	}
	return nil
}

// errOverBudget: the poll budget had no request for a list now.
var errOverBudget = errors.New("over the poll budget")

// fetch lists ep's workspace jobs created since since (less a minute: the
// service's creation time and batchd's submission time come from
// different clocks), every page within the poll budget, and counts it.
func (b *bulkStatus) fetch(ctx context.Context, ep jobs.Endpoint, since time.Time, keep func(jobs.Job) (bool, bool)) ([]jobs.Job, error) {
	host := endpointHost(&ep)
	if _, ok := b.o.takeBudget(ctx, host); !ok {
		return nil, errOverBudget
	}
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	listed, err := b.o.sub.List(lctx, ep, since.Add(-time.Minute), b.o.pageBudget(host), jobs.Keep(keep))
	b.o.met.bulkLists.WithLabelValues(ep.Name, resultLabel(err)).Inc()
	return listed, err
}

// request queues a look that an event asked for (events say a job
// changed; the service must confirm it) for the workspace's next
// confirming list: every look queued before it starts shares it, and it
// reads back to the oldest of their jobs, so a burst of ends costs a few
// list pages instead of one GET per job. When the list is done, each run
// gets a nudge carrying its job as listed (or saying the list did not
// answer, and the tracker GETs). It reports false when lists are off for
// ep.
func (b *bulkStatus) request(ep *jobs.Endpoint, l confirmLook, now time.Time) bool {
	if !b.covers(ep) || now.Sub(l.submitted) > confirmReach {
		return false
	}
	b.mu.Lock()
	w := b.workspace(ep)
	wave := w.pending
	if wave == nil {
		wave = &confirmWave{ep: *ep, since: l.submitted, looks: map[string]confirmLook{}}
		w.pending = wave
	}
	// Two events of one job (Event Grid does not order them): the look
	// waits for the further-along one, and answers the newest message.
	if prev, ok := wave.looks[l.job]; ok {
		l.rank, l.seq = max(l.rank, prev.rank), max(l.seq, prev.seq)
	}
	wave.looks[l.job] = l
	if l.submitted.Before(wave.since) {
		wave.since = l.submitted
	}
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	return true
}

// confirmExtraJobs bounds how far a confirming list reads past its own
// looks' jobs: a wave reads at most this many more jobs than it has looks
// (ten pages of 100), and a look it did not reach gets a GET. Without the
// bound, one look at a job submitted minutes before, among 100,000 newer
// ones, made its wave read a thousand pages, and every look queued behind
// it waited (issue 16: p99 27 s and 1.8 GiB at 100,000 tracked).
const confirmExtraJobs = 1000

// keeper is the wave's job list filter (jobs.Keep): it keeps the wave's
// jobs, each once (a list shifts as jobs are created while it is read, so
// a job can show on two pages), and stops the list when every look is
// found or the list has read confirmExtraJobs more jobs than the wave has
// looks. The list is newest first, so a wave of recent ends reads a page
// or two and holds only its own jobs. The wave is its list's alone
// (request fills the next one).
func (w *confirmWave) keeper() func(jobs.Job) (keep, more bool) {
	found := map[string]bool{}
	read := 0
	return func(j jobs.Job) (bool, bool) {
		read++
		_, ours := w.looks[j.Name]
		keep := ours && !found[j.Name]
		if keep {
			found[j.Name] = true
		}
		return keep, len(found) < len(w.looks) && read < len(w.looks)+confirmExtraJobs
	}
}

// confirmGather is how long a confirming list waits for more looks.
const confirmGather = 250 * time.Millisecond

// confirmLoop runs the confirming lists: each workspace's pending wave, one
// after another, as soon as looks wait for one. A wave lost to a crash
// costs time only: each look's message comes back after
// Options.confirmFallback and GETs.
func (b *bulkStatus) confirmLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.kick:
		}
		// Let the looks of a burst gather.
		if backoff.Sleep(ctx, confirmGather) != nil {
			return nil
		}
		for ctx.Err() == nil {
			var wave *confirmWave
			b.mu.Lock()
			for _, w := range b.ws {
				if w.pending != nil {
					wave, w.pending = w.pending, nil
					break
				}
			}
			b.mu.Unlock()
			if wave == nil {
				break
			}
			b.runWave(ctx, wave)
		}
	}
}

func (b *bulkStatus) runWave(ctx context.Context, wave *confirmWave) {
	listed, err := b.fetch(ctx, wave.ep, wave.since, wave.keeper())
	got := map[string]jobs.Job{}
	if err == nil {
		for _, j := range listed {
			if _, ok := wave.looks[j.Name]; ok {
				got[j.Name] = j
			}
		}
	}
	for _, l := range wave.looks {
		var answer *jobs.Job
		// The list started after the event came: it answers when it is as
		// far along as the event (an end answers a running event; a list
		// still behind an end event, ARM lagging, does not). A failure's
		// error details come from a GET.
		if j, ok := got[l.job]; ok && j.Status.Normal() != jobs.StatusFailed && progress(j.Status) >= l.rank {
			answer = &j
		}
		if err := b.answer(ctx, l, answer); err != nil && ctx.Err() == nil {
			b.o.log.Debug("confirming list: nudge", "run", l.run, "err", err)
		}
	}
}

// answer nudges the run of a look with what the confirming list showed
// (nil: the list did not answer; the tracker GETs).
func (b *bulkStatus) answer(ctx context.Context, l confirmLook, job *jobs.Job) error {
	r, err := b.trackedRun(ctx, l.run)
	if err != nil || r == nil || r.Job == nil || r.Job.Name != l.job {
		return err
	}
	err = b.o.publishTrackerChecked(ctx, r, job, l.seq)
	if wrongLastSeq(err) {
		return nil // a newer message (another event, an operator) is the run's; it looks itself
	}
	return err
}

// wrongLastSeq reports a publish refused because the subject's last
// message is not the one expected.
func wrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

func (b *bulkStatus) nudge(ctx context.Context, id string) error {
	r, err := b.trackedRun(ctx, id)
	if err != nil || r == nil {
		return err
	}
	// A failed nudge costs only time: the run's own poll still comes.
	return b.o.publishTracker(ctx, r, true)
}

// trackedRun reads run id; nil when it is no longer the tracker's (it
// ended, or went back to its intake message).
func (b *bulkStatus) trackedRun(ctx context.Context, id string) (*record, error) {
	r, _, err := b.o.ledger.get(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State.Terminal() || r.Sys.Carrier != carrierTracker {
		return nil, nil
	}
	return r, nil
}

func resultLabel(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}
