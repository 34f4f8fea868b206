package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batchd/batchd/jobs"
)

// Pushed completion. An Azure ML workspace publishes its jobs' status
// changes through Event Grid (RunStatusChanged, RunCompleted); the webhook
// hands each one to JobChanged. An event is a hint, never the truth: it
// makes the run's tracker look at the job now (a nudge: one status request,
// which records what the service says), and it tells the tracker that the
// workspace delivers events, so that the run's routine polls slow down to
// the safety interval. Duplicated, lost, late and reordered events are
// harmless: a duplicate of a finished run's event finds it finished, a
// lost one is covered by the safety poll, and what a run becomes is
// decided by the status request, under the ledger's compare-and-set.

// JobEvent is one Azure ML workspace event about a job, as the webhook
// decoded it.
type JobEvent struct {
	// ID is the Event Grid event id (for logs).
	ID string
	// Type is the event type (TypeRunStatusChanged, TypeRunCompleted).
	Type string
	// Workspace is the event's topic (Event Grid schema) or source
	// (CloudEvents): the workspace's ARM resource id.
	Workspace string
	// Job is data.runId: the job name batchd got back from the POST.
	Job string
	// Status is data.runStatus (any casing); Completed for RunCompleted.
	Status string
	Time   time.Time
}

// Azure ML workspace event types that JobChanged takes.
const (
	TypeRunStatusChanged = "Microsoft.MachineLearningServices.RunStatusChanged"
	TypeRunCompleted     = "Microsoft.MachineLearningServices.RunCompleted"
)

// What JobChanged did with an event (the outcome label of
// batchd_job_events_total).
const (
	// JobEventChecked: the run's tracker was nudged; one status request
	// follows and records what the job is.
	JobEventChecked = "checked"
	// JobEventProgress: a status on the way (Queued, Finalizing, Running of
	// a run already running): nothing to check.
	JobEventProgress = "progress"
	// JobEventFinished: the run had finished already (a duplicate, or a
	// late event).
	JobEventFinished = "finished"
	// JobEventStale: the run has moved on to another job (a retry).
	JobEventStale = "stale"
	// JobEventNotOurs: no run of this batchd owns the job (another
	// client's job, a job of an endpoint without a workspace, or a run that
	// left the ledger).
	JobEventNotOurs = "not_ours"
)

// WorkspaceID is the ARM resource id of ws, lower case: the topic of its
// events, as compared (ARM ids are case-insensitive).
func WorkspaceID(ws jobs.Workspace) string {
	return strings.ToLower("/subscriptions/" + ws.Subscription + "/resourceGroups/" + ws.ResourceGroup +
		"/providers/Microsoft.MachineLearningServices/workspaces/" + ws.Name)
}

// JobChanged takes one workspace event. It returns the outcome (JobEvent*)
// or an error when the ledger cannot be read or the nudge not published
// (NATS unavailable): the webhook then answers so that Event Grid delivers
// the event again.
func (o *Orchestrator) JobChanged(ctx context.Context, ev JobEvent) (string, error) {
	outcome, err := o.jobChanged(ctx, ev)
	if err != nil {
		return "", err
	}
	o.met.jobEvents.WithLabelValues(jobEventLabel(ev.Type), outcome).Inc()
	o.log.Debug("workspace job event", "event", ev.ID, "job", ev.Job, "status", ev.Status, "outcome", outcome)
	return outcome, nil
}

func jobEventLabel(t string) string {
	switch t {
	case TypeRunCompleted:
		return "run_completed"
	case TypeRunStatusChanged:
		return "run_status_changed"
	}
	return "other"
}

func (o *Orchestrator) jobChanged(ctx context.Context, ev JobEvent) (string, error) {
	o.wsEvents.seen(ctx, ev.Workspace, o.now())
	e, err := o.h.jobs.Get(ctx, jobKey(ev.Job))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return JobEventNotOurs, nil
	}
	if err != nil {
		return "", fmt.Errorf("job event %s: %w: %w", ev.ID, ErrUnavailable, err)
	}
	r, _, err := o.ledger.get(ctx, string(e.Value()))
	if errors.Is(err, ErrRunNotFound) {
		return JobEventNotOurs, nil
	}
	if err != nil {
		return "", fmt.Errorf("job event %s: %w: %w", ev.ID, ErrUnavailable, err)
	}
	// Job names are unique within a workspace only.
	if ep := r.Sys.Endpoint; ep == nil || ep.Workspace == nil || WorkspaceID(*ep.Workspace) != strings.ToLower(ev.Workspace) {
		return JobEventNotOurs, nil
	}
	if r.State.Terminal() {
		return JobEventFinished, nil
	}
	if r.Job == nil || r.Job.Name != ev.Job {
		return JobEventStale, nil
	}
	st := jobs.Status(ev.Status).Normal()
	// A terminal status ends the run; the first running status moves it to
	// running. Anything else would cost a status request for no change.
	if !st.Terminal() && (!st.Running() || r.State != StateSubmitted) {
		return JobEventProgress, nil
	}
	if r.Sys.Carrier != carrierTracker {
		return JobEventProgress, nil // its intake message is on it
	}
	// RunStatusChanged and RunCompleted announce one completion twice, and
	// Event Grid may deliver each more than once: one check is enough.
	class := "running"
	if st.Terminal() {
		class = "terminal"
	}
	if !o.wsEvents.firstCheck(r.ID+" "+class, time.Now()) {
		return JobEventProgress, nil
	}
	// The nudge says how far along the event says the job is: with job
	// lists on, the tracker has a shared list confirm it (bulk.request).
	if err := o.publishTrackerWith(ctx, r, true, 0, hdrEvent, strconv.Itoa(progress(st))); err != nil {
		o.wsEvents.forgetCheck(r.ID + " " + class)
		return "", fmt.Errorf("job event %s: %w: %w", ev.ID, ErrUnavailable, err)
	}
	return JobEventChecked, nil
}

// progress orders job statuses: on the way, running, ended.
func progress(s jobs.Status) int {
	switch s = s.Normal(); {
	case s.Terminal():
		return 2
	case s.Running():
		return 1
	}
	return 0
}

// wsEventsEvery is how often a replica shares the newest event time of a
// workspace (one KV write at most per interval) and reads the others'.
const wsEventsEvery = 5 * time.Second

// wsEvents knows, per configured workspace, when its last event arrived
// here or (through the admission bucket, key ws.<hash>) at any replica.
// While events arrive, routine polls of its jobs slow down to the safety
// interval; once none has arrived for the silence window, polls go back
// to the full rate.
type wsEvents struct {
	kv      jetstream.KeyValue
	log     *slog.Logger
	silence time.Duration
	// tracked says whether any job is being tracked (a silence without
	// jobs is no alarm).
	tracked func() int

	mu sync.Mutex
	ws map[string]*wsState // WorkspaceID -> state; configured workspaces only
	// checks are the nudges of the last checkDedupe, by run and status
	// class.
	checks map[string]time.Time

	flowingG, silentG, lastG *prometheus.GaugeVec // workspace
	missed                   *prometheus.CounterVec
}

type wsState struct {
	label   string    // resource group/name, the metric label
	last    time.Time // the newest event seen, here or elsewhere
	written time.Time // this replica's last KV write
	silent  bool      // as last reported
}

func newWSEvents(kv jetstream.KeyValue, log *slog.Logger, silence time.Duration, pipelines map[string]*Pipeline, tracked func() int, reg prometheus.Registerer) *wsEvents {
	w := &wsEvents{kv: kv, log: log, silence: silence, tracked: tracked, ws: map[string]*wsState{}, checks: map[string]time.Time{}}
	for _, p := range pipelines {
		if ws := p.Endpoint.Workspace; ws != nil {
			w.ws[WorkspaceID(*ws)] = &wsState{label: ws.ResourceGroup + "/" + ws.Name}
		}
	}
	w.flowingG = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "batchd_job_events_flowing",
		Help: "1 while Azure ML job events arrive for the workspace (one within BATCHD_JOB_EVENTS_SILENCE): its jobs are polled only at the safety interval; else 0 (polled at the full rate).",
	}, []string{"workspace"})
	w.silentG = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "batchd_job_events_silent",
		Help: "1 when the workspace delivered job events before but none for BATCHD_JOB_EVENTS_SILENCE while jobs are tracked (the Event Grid subscription may be broken; polling is back at the full rate); alert on it.",
	}, []string{"workspace"})
	w.lastG = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "batchd_job_events_last_timestamp_seconds",
		Help: "Unix time of the newest Azure ML job event of the workspace seen by any replica; 0 if none yet.",
	}, []string{"workspace"})
	w.missed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_job_events_missed_total",
		Help: "Jobs that a routine poll found finished while events were flowing for their workspace, with no event announcing it (lost or late events).",
	}, []string{"workspace"})
	reg.MustRegister(w.flowingG, w.silentG, w.lastG, w.missed)
	for _, s := range w.ws {
		w.flowingG.WithLabelValues(s.label).Set(0)
		w.silentG.WithLabelValues(s.label).Set(0)
		w.lastG.WithLabelValues(s.label).Set(0)
	}
	return w
}

// wsKey is the admission bucket key of a workspace's newest event time.
func wsKey(id string) string {
	h := sha256.Sum256([]byte(id))
	return "ws." + hex.EncodeToString(h[:16])
}

// seen records an event of workspace id at now, and shares it at most once
// per wsEventsEvery. A failed write is logged: the next event writes again.
func (w *wsEvents) seen(ctx context.Context, id string, now time.Time) {
	id = strings.ToLower(id)
	w.mu.Lock()
	s := w.ws[id]
	if s == nil {
		w.mu.Unlock()
		return
	}
	if now.After(s.last) {
		s.last = now
		w.flowingG.WithLabelValues(s.label).Set(1)
		w.lastG.WithLabelValues(s.label).Set(float64(now.UnixMilli()) / 1000)
	}
	write := now.Sub(s.written) >= wsEventsEvery
	if write {
		s.written = now
	}
	w.mu.Unlock()
	if !write {
		return
	}
	if _, err := w.kv.Put(ctx, wsKey(id), []byte(now.UTC().Format(time.RFC3339Nano))); err != nil {
		w.log.Warn("share job event time", "workspace", s.label, "err", err)
	}
}

// flowing reports whether events of workspace ws arrived within the
// silence window.
func (w *wsEvents) flowing(ws *jobs.Workspace, now time.Time) bool {
	if ws == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.ws[WorkspaceID(*ws)]
	return s != nil && w.flowingAt(s, now)
}

// flowingAt reports whether s's newest event is within the silence
// window. Callers hold mu.
func (w *wsEvents) flowingAt(s *wsState, now time.Time) bool {
	return !s.last.IsZero() && now.Sub(s.last) < w.silence
}

// checkDedupe is how long a run's check for one status class stands for
// the events that repeat it.
const checkDedupe = 2 * time.Second

// firstCheck reports whether key (run and status class) has had no check
// within checkDedupe, and records one now. Per replica: an event repeated
// at another replica costs one more status request, no more.
func (w *wsEvents) firstCheck(key string, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.checks[key]; ok && now.Sub(t) < checkDedupe {
		return false
	}
	if len(w.checks) >= 1024 {
		for k, t := range w.checks {
			if now.Sub(t) >= checkDedupe {
				delete(w.checks, k)
			}
		}
	}
	w.checks[key] = now
	return true
}

// forgetCheck drops a check that was not made (its nudge failed).
func (w *wsEvents) forgetCheck(key string) {
	w.mu.Lock()
	delete(w.checks, key)
	w.mu.Unlock()
}

// missedEvent counts a finished job that no event announced.
func (w *wsEvents) missedEvent(ws *jobs.Workspace) {
	w.mu.Lock()
	s := w.ws[WorkspaceID(*ws)]
	w.mu.Unlock()
	if s != nil {
		w.missed.WithLabelValues(s.label).Inc()
	}
}

// run reads the other replicas' event times and updates the gauges every
// wsEventsEvery until ctx ends.
func (w *wsEvents) run(ctx context.Context, now func() time.Time) error {
	if len(w.ws) == 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(wsEventsEvery)
	defer t.Stop()
	for {
		w.refresh(ctx, now())
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// refresh merges the shared event times and reports changes.
func (w *wsEvents) refresh(ctx context.Context, now time.Time) {
	for id := range w.ws {
		e, err := w.kv.Get(ctx, wsKey(id))
		if err != nil {
			if !errors.Is(err, jetstream.ErrKeyNotFound) && ctx.Err() == nil {
				w.log.Debug("read job event time", "err", err)
			}
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, string(e.Value()))
		if err != nil {
			continue
		}
		w.mu.Lock()
		if s := w.ws[id]; t.After(s.last) {
			s.last = t
		}
		w.mu.Unlock()
	}
	tracked := w.tracked() > 0
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.ws {
		flowing := w.flowingAt(s, now)
		silent := !s.last.IsZero() && !flowing && tracked
		w.flowingG.WithLabelValues(s.label).Set(b2f(flowing))
		w.silentG.WithLabelValues(s.label).Set(b2f(silent))
		if !s.last.IsZero() {
			w.lastG.WithLabelValues(s.label).Set(float64(s.last.UnixMilli()) / 1000)
		}
		if silent && !s.silent {
			w.log.Warn("no Azure ML job events from the workspace while jobs are tracked: its jobs are polled at the full rate again; check its Event Grid subscription",
				"workspace", s.label, "last_event", s.last.UTC().Format(time.RFC3339), "silence", w.silence)
		}
		if !silent && s.silent {
			w.log.Info("Azure ML job events arrive again from the workspace", "workspace", s.label)
		}
		s.silent = silent
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
