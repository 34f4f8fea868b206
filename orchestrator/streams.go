package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/orchestrator/broker"
)

// JetStream names. Everything batchd creates starts with BATCHD_ (streams)
// or batchd_ (consumers, buckets), so it can share a cluster.
const (
	// StreamIntake is the work queue of accepted events, one subject per
	// pipeline and run: batchd.intake.<pipeline>.<run id>.
	StreamIntake  = "BATCHD_INTAKE"
	SubjectIntake = "batchd.intake"
	// StreamTrack is the tracker's work queue: one message per run being
	// tracked or reconciled (batchd.track.<run id>), redelivered with a delay
	// for each poll.
	StreamTrack  = "BATCHD_TRACK"
	SubjectTrack = "batchd.track"
	// StreamRuns keeps the completion messages,
	// batchd.runs.<pipeline>.<state>, for downstream consumers.
	StreamRuns  = "BATCHD_RUNS"
	SubjectRuns = "batchd.runs"

	ConsumerWorkers = "batchd_workers"
	ConsumerTracker = "batchd_tracker"

	// BucketRuns is the ledger: one key per run id.
	BucketRuns = "batchd_runs"
	// BucketAdmission holds one key per endpoint: the runs holding its slots
	// and the time a 429 paused it until.
	BucketAdmission = "batchd_admission"
	// BucketJobs maps adopted job names to run ids, so that reconciliation
	// never gives one job to two runs.
	BucketJobs = "batchd_jobs"
	// BucketTriggers is the triggers' own state (cron slots, poller leases).
	// The daemon creates it (triggers.StateBucketConfig), not New.
	BucketTriggers = "batchd_triggers"
	// BucketIdentity remembers finished runs whose full record leaves the
	// ledger before IdentityHorizon: run id → a compact identity record.
	BucketIdentity = "batchd_identity"
)

// IdentityHorizon is how long the same key stays the same run, at least,
// whatever a pipeline's retention: Event Grid retries a delivery for up
// to 24 hours; an hour more covers the time between the event and the
// run's end.
const IdentityHorizon = 25 * time.Hour

// Message headers batchd sets on its own intake and tracker messages.
const (
	// hdrRetryGen on an intake message asks for a new attempt of a finished
	// (or unknown) run; its value is the run generation the retry creates.
	hdrRetryGen = "Batchd-Retry-Gen"
	// hdrNudge marks a message published only to make the run's carrier look
	// at an operator request now.
	hdrNudge = "Batchd-Nudge"
	// hdrListed on a nudge carries the job (JSON: name, status, studio
	// URL) as a job list that started after a workspace event showed it,
	// or "-" when the list did not answer (the tracker GETs).
	hdrListed = "Batchd-Listed"
	// hdrEvent on a nudge says a workspace event asked for it, and how far
	// along it said the job was (progress: 0 on the way, 1 running, 2 ended).
	hdrEvent = "Batchd-Event"
	// hdrReason carries an operator's reason on a retry message.
	hdrReason = "Batchd-Reason"
)

var subjectSafe = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// subjectToken turns a pipeline name into one NATS subject token. Names made
// of letters, digits, '-' and '_' are used as they are; anything else (and
// the empty name of an event that matched no pipeline) gets a stable
// stand-in, so downstream subscribers should use names of the first kind.
func subjectToken(name string) string {
	if name == "" {
		return "_"
	}
	if subjectSafe.MatchString(name) {
		return name
	}
	h := sha256.Sum256([]byte(name))
	return "p" + hex.EncodeToString(h[:8])
}

// CompletionSubject is the subject of the completion message of a run of
// pipeline that ended in state.
func CompletionSubject(pipeline string, state State) string {
	return SubjectRuns + "." + subjectToken(pipeline) + "." + string(state)
}

func intakeSubject(pipeline, runID string) string {
	return SubjectIntake + "." + subjectToken(pipeline) + "." + runID
}

func trackSubject(runID string) string { return SubjectTrack + "." + runID }

// setup creates or updates every stream, consumer and bucket. It is
// idempotent and safe to run from several replicas at once.
func setup(ctx context.Context, js jetstream.JetStream, o *Options) (*handles, error) {
	h := &handles{}
	var err error
	// No MaxAge, MaxMsgs or MaxBytes: an accepted event leaves the intake
	// stream only when a worker acks it.
	h.intake, err = broker.Setup(ctx, o.Logger, "stream "+StreamIntake, func(ctx context.Context) (jetstream.Stream, error) {
		return js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        StreamIntake,
			Description: "batchd: accepted events, one message per event until a worker has settled it",
			Subjects:    []string{SubjectIntake + ".>"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Discard:     jetstream.DiscardNew,
			Duplicates:  o.DedupeWindow,
			Replicas:    o.Replicas,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamIntake, err)
	}
	h.workers, err = broker.Setup(ctx, o.Logger, "consumer "+ConsumerWorkers, func(ctx context.Context) (jetstream.Consumer, error) {
		return h.intake.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable:       ConsumerWorkers,
			Description:   "batchd workers: claim, check, admit, submit",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       o.ackWait(),
			MaxDeliver:    -1,
			MaxAckPending: o.MaxIntakePending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			Replicas:      o.Replicas,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", ConsumerWorkers, err)
	}
	// One message per run (MaxMsgsPerSubject 1, the newest wins): a
	// re-published tracker message replaces the pending one instead of
	// doubling the polls.
	h.track, err = broker.Setup(ctx, o.Logger, "stream "+StreamTrack, func(ctx context.Context) (jetstream.Stream, error) {
		return js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:              StreamTrack,
			Description:       "batchd tracker: one message per run being tracked or reconciled",
			Subjects:          []string{SubjectTrack + ".>"},
			Retention:         jetstream.WorkQueuePolicy,
			Storage:           jetstream.FileStorage,
			MaxMsgsPerSubject: 1,
			Discard:           jetstream.DiscardOld,
			Duplicates:        2 * time.Minute,
			Replicas:          o.Replicas,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamTrack, err)
	}
	h.tracker, err = broker.Setup(ctx, o.Logger, "consumer "+ConsumerTracker, func(ctx context.Context) (jetstream.Consumer, error) {
		return h.track.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
			Durable:     ConsumerTracker,
			Description: "batchd tracker: poll, reconcile, time out",
			AckPolicy:   jetstream.AckExplicitPolicy,
			AckWait:     o.ackWait(),
			MaxDeliver:  -1,
			// No cap: every run being tracked, reconciled or waiting for
			// admission has its message out at once, waiting on its nak
			// delay. A cap would leave the runs above it with no poll, no
			// timeout and no cancel until others finish. What it costs is
			// the server's pending entry per message (memory).
			MaxAckPending: -1,
			DeliverPolicy: jetstream.DeliverAllPolicy,
			Replicas:      o.Replicas,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", ConsumerTracker, err)
	}
	h.runs, err = broker.Setup(ctx, o.Logger, "stream "+StreamRuns, func(ctx context.Context) (jetstream.Stream, error) {
		return js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        StreamRuns,
			Description: "batchd completion messages: batchd.runs.<pipeline>.<state>",
			Subjects:    []string{SubjectRuns + ".>"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      o.CompletionMaxAge,
			Duplicates:  min(o.DedupeWindow, o.CompletionMaxAge),
			Replicas:    o.Replicas,
		})
	})
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", StreamRuns, err)
	}
	// The ledger keeps one revision per run. Finished runs carry a per-key
	// TTL (Nats-TTL) of Retention; live runs carry none and never expire.
	// LimitMarkerTTL enables per-message TTLs and makes an expiry visible to
	// watchers as a delete marker.
	if h.ledger, err = bucket(ctx, js, o, jetstream.KeyValueConfig{
		Bucket:         BucketRuns,
		Description:    "batchd ledger: one record per run",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       o.Replicas,
		LimitMarkerTTL: 10 * time.Minute,
	}); err != nil {
		return nil, err
	}
	if h.admission, err = bucket(ctx, js, o, jetstream.KeyValueConfig{
		Bucket:      BucketAdmission,
		Description: "batchd admission: slots and pauses per endpoint",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
	}); err != nil {
		return nil, err
	}
	// A claim only matters while reconciliation could still adopt the job,
	// which is minutes after its creation; Retention is ample.
	if h.jobs, err = bucket(ctx, js, o, jetstream.KeyValueConfig{
		Bucket:      BucketJobs,
		Description: "batchd job claims: job name -> run id",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		TTL:         o.Retention,
	}); err != nil {
		return nil, err
	}
	if h.identity, err = bucket(ctx, js, o, jetstream.KeyValueConfig{
		Bucket:      BucketIdentity,
		Description: "batchd identities: finished runs remembered for the dedupe horizon after their records expire",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		TTL:         IdentityHorizon,
	}); err != nil {
		return nil, err
	}
	// Entries are rewritten every heartbeat; a stopped replica's entry
	// goes a minute after its last (liveness is judged by the heartbeat
	// time, sooner).
	if h.replicas, err = bucket(ctx, js, o, jetstream.KeyValueConfig{
		Bucket:      BucketReplicas,
		Description: "batchd replicas: one entry per live replica (version, config hash, limits)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    o.Replicas,
		TTL:         time.Minute,
	}); err != nil {
		return nil, err
	}
	return h, nil
}

// bucket creates or updates a KV bucket (retried as broker.Setup does).
func bucket(ctx context.Context, js jetstream.JetStream, o *Options, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	return broker.KeyValue(ctx, js, o.Logger, cfg)
}

// handles are the JetStream objects setup made.
type handles struct {
	intake, track, runs jetstream.Stream
	workers, tracker    jetstream.Consumer
	ledger, admission   jetstream.KeyValue
	jobs                jetstream.KeyValue
	identity, replicas  jetstream.KeyValue
}
