package orchestrator

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure an Orchestrator. JS, Pipelines, Submitter and Checker
// are required; every duration and count has a default.
type Options struct {
	// JS is the JetStream context every stream, consumer and bucket lives in.
	JS jetstream.JetStream
	// Conn, when set, is checked by Ready (the connection is up).
	Conn *nats.Conn

	// Pipelines by name. The map is read, never written.
	Pipelines map[string]*Pipeline
	Submitter Submitter
	Checker   Checker
	// Scorer sends the requests of pipelines that target online endpoints;
	// required when there is one.
	Scorer Scorer
	Logger *slog.Logger
	// Registerer is where the orchestrator registers its metrics (main
	// passes the registry /metrics serves). Nil: a private registry.
	Registerer prometheus.Registerer

	// Workers is the number of intake events processed at once (per
	// replica). Default 64: a worker mostly waits on a replicated write
	// or an HTTP call.
	Workers int
	// TrackerWorkers is the number of tracker messages processed at once
	// (per replica). Default 16.
	TrackerWorkers int

	// JobListInterval is how often the jobs tracked on a workspace
	// endpoint are refreshed from the workspace's ARM job list while its
	// job events do not flow (see bulkStatus). 0: 30s; negative: never
	// (every look is a status request).
	JobListInterval time.Duration
	// IndexPath is the run index's file (a cache of the ledger, rebuilt
	// when missing; see index). Empty: a file in a temporary directory,
	// removed when Run returns, so every start rebuilds it.
	IndexPath string
	// Retention is how long a finished run stays in the ledger. Runs that are
	// not finished never expire. Default 168h.
	Retention time.Duration
	// ShutdownGrace bounds how long in-flight steps may run after Run's
	// context ends. Default 60s.
	ShutdownGrace time.Duration
	// SubmitTimeout bounds one POST. Default 60s.
	SubmitTimeout time.Duration
	// PollMin and PollMax bound the tracker's interval between two status
	// requests for one job. Defaults 10s and 5m.
	PollMin, PollMax time.Duration
	// PollBudget is the number of status (and list) requests per second one
	// replica sends to one endpoint host. Default 20.
	PollBudget float64
	// EventSafetyPoll is the interval of a job's routine status requests
	// while its workspace delivers Azure ML job events (JobChanged): they
	// only catch what a lost event missed. Default 10m.
	EventSafetyPoll time.Duration
	// EventSilence is how long a workspace may deliver no job event before
	// its jobs are polled at the full rate again (and, while jobs are
	// tracked, batchd_job_events_silent says so). Default 30m.
	EventSilence time.Duration
	// ReconcileGrace is how long after an ambiguous submission reconciliation
	// keeps looking for the job before it submits once more. Default 10m.
	ReconcileGrace time.Duration
	// ReconcileSkew is subtracted from the submission time when matching
	// listed jobs by creation time: the tolerated difference between this
	// host's clock and Azure's. Default 10s (a job someone else created on
	// the same input up to this long before the POST is a candidate).
	ReconcileSkew time.Duration

	// Replicas is the replica count of every stream and bucket (an external
	// cluster). Default 1.
	Replicas int
	// DedupeWindow is the intake stream's Nats-Msg-Id window. Minimum and
	// default 5m.
	DedupeWindow time.Duration
	// CompletionMaxAge is how long completion messages stay in the
	// completion stream. Default: Retention.
	CompletionMaxAge time.Duration
	// MaxIntakePending caps the intake messages handed out and not yet acked
	// (events waiting for admission hold one each). Default 20000.
	MaxIntakePending int
	// RepairInterval is how often admission slots held by finished runs are
	// freed. Default 1m.
	RepairInterval time.Duration
	// OrphanInterval is how often unfinished runs that no message drives
	// are looked for (and once at start). Default 5m.
	OrphanInterval time.Duration
	// OrphanAge is how long a run must have been unchanged before the scan
	// considers it: a younger run's message may be on its way. Default 2m.
	OrphanAge time.Duration
	// Replica identifies this process in the replica registry.
	Replica ReplicaIdentity
	// Heartbeat is how often this replica writes its registry entry and
	// reads everyone's; a replica is live while its last heartbeat is
	// within three intervals. Default 5s.
	Heartbeat time.Duration
	// AdmissionRetryMax is the longest wait between two admission attempts
	// of an event whose endpoint is at max_running_jobs. Default 30s.
	AdmissionRetryMax time.Duration
	// ParkInterval is how often a run that waits for an operator (unknown
	// without a workspace) is looked at again. Default PollMax.
	ParkInterval time.Duration

	// ReplyConns gives the connection a pipeline's NATS trigger receives
	// requests on: an online run's deferred reply (and a duplicate's) goes
	// out there. Nil: the daemon's own connection (JS's).
	ReplyConns ReplyConns

	// clock is the steps' "now" (tests stub it); nil is time.Now.
	clock func() time.Time
	// submitMargin is added to SubmitTimeout to get the moment after which
	// a run found in submitting can no longer have a POST in flight, on any
	// replica (it covers clock differences). Default 5s; tests lower it.
	submitMargin time.Duration
	// confirmFallback is how long an event's look waits for its confirming
	// list's nudge before it GETs.
	confirmFallback time.Duration
}

// Defaults of the options the daemon's environment sets. config's
// BATCHD_* defaults are these (a test in config keeps them equal); Options
// left zero get them too.
const (
	DefaultWorkers         = 64
	DefaultRetention       = 168 * time.Hour
	DefaultShutdownGrace   = 60 * time.Second
	DefaultSubmitTimeout   = 60 * time.Second
	DefaultPollMin         = 10 * time.Second
	DefaultJobListInterval = 30 * time.Second
	DefaultPollMax         = 5 * time.Minute
	DefaultPollBudget      = 20
	DefaultReconcileGrace  = 10 * time.Minute
	DefaultEventSafetyPoll = 10 * time.Minute
	DefaultEventSilence    = 30 * time.Minute
)

// DefaultRetry is a pipeline's retry policy when it sets none: one
// attempt (a failed job ends the run), and a minute before the second if
// max_attempts is raised without a backoff.
var DefaultRetry = RetryPolicy{MaxAttempts: 1, Backoff: time.Minute}

func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.TrackerWorkers <= 0 {
		o.TrackerWorkers = 16
	}
	def(&o.Retention, DefaultRetention)
	def(&o.ShutdownGrace, DefaultShutdownGrace)
	def(&o.SubmitTimeout, DefaultSubmitTimeout)
	def(&o.PollMin, DefaultPollMin)
	if o.JobListInterval == 0 {
		o.JobListInterval = DefaultJobListInterval
	}
	def(&o.PollMax, DefaultPollMax)
	if o.PollMax < o.PollMin {
		o.PollMax = o.PollMin
	}
	if o.PollBudget <= 0 {
		o.PollBudget = DefaultPollBudget
	}
	def(&o.ReconcileGrace, DefaultReconcileGrace)
	def(&o.EventSafetyPoll, DefaultEventSafetyPoll)
	def(&o.EventSilence, DefaultEventSilence)
	def(&o.ReconcileSkew, 10*time.Second)
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.DedupeWindow < 5*time.Minute {
		o.DedupeWindow = 5 * time.Minute
	}
	def(&o.CompletionMaxAge, o.Retention)
	if o.MaxIntakePending <= 0 {
		o.MaxIntakePending = 20000
	}
	def(&o.RepairInterval, time.Minute)
	def(&o.OrphanInterval, 5*time.Minute)
	def(&o.OrphanAge, 2*time.Minute)
	def(&o.Heartbeat, 5*time.Second)
	def(&o.AdmissionRetryMax, 30*time.Second)
	def(&o.ParkInterval, o.PollMax)
	def(&o.submitMargin, 5*time.Second)
	def(&o.confirmFallback, 30*time.Second)
}

func (o *Options) validate() error {
	var errs []error
	if o.JS == nil {
		errs = append(errs, errors.New("JS is required"))
	}
	if o.Submitter == nil {
		errs = append(errs, errors.New("Submitter is required"))
	}
	if o.Checker == nil {
		errs = append(errs, errors.New("Checker is required"))
	}
	for name, p := range o.Pipelines {
		if p == nil || p.Name != name {
			errs = append(errs, fmt.Errorf("pipeline %q: name does not match its key", name))
			continue
		}
		if p.IsOnline() {
			if o.Scorer == nil {
				errs = append(errs, fmt.Errorf("pipeline %q targets an online endpoint: Scorer is required", name))
			}
			if p.Request == nil || p.Endpoint.Online == nil {
				errs = append(errs, fmt.Errorf("pipeline %q targets an online endpoint: it needs a request template and the endpoint's online settings", name))
			}
		}
	}
	if o.Retention < time.Second {
		errs = append(errs, fmt.Errorf("retention %s is below 1s", o.Retention))
	}
	if len(errs) > 0 {
		return fmt.Errorf("orchestrator options: %w", errors.Join(errs...))
	}
	return nil
}

// ackWait is how long a handed-out message may go without an ack before
// JetStream redelivers it. It must cover the longest step after the last
// InProgress: a POST and the writes after it.
func (o *Options) ackWait() time.Duration {
	return o.SubmitTimeout + o.submitMargin + 10*time.Second
}
