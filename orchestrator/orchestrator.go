package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator/kvstate"
)

// Orchestrator is batchd's durable core: intake, workers, ledger, admission,
// tracker, reconciliation, completion messages, the run index and the HTTP
// API. It implements Intake and Runs.
//
// New creates the JetStream objects; Run starts the workers and the tracker
// and blocks. Emit, Record and the read side work as soon as New returns;
// List needs Run (the index is filled by it).
type Orchestrator struct {
	opts      Options
	js        jetstream.JetStream
	h         *handles
	ledger    *ledger
	adm       *admission
	index     *index
	wsEvents  *wsEvents
	bulk      *bulkStatus
	views     *pollViews
	recon     reconLists // job listings shared by reconciling runs
	met       *metrics
	log       *slog.Logger
	sub       Submitter
	checker   Checker
	scorer    Scorer
	slots     onlineSlots
	pipelines map[string]*Pipeline
	// maxRunning by endpoint name, from the pipelines' endpoints.
	maxRunning map[string]int

	limMu    sync.Mutex
	limiters map[string]*rate.Limiter // by endpoint host
	meters   map[string]*meter        // polls sent, by endpoint host

	running atomic.Bool
	// storeErr is why the last heartbeat could not write to JetStream
	// (nil when it could): a replica still connected to one node of a
	// cluster without quorum is not ready, as nothing it takes is durable.
	storeErr atomic.Pointer[error]

	// clock is Options.clock or time.Now; steps read it through now.
	clock func() time.Time

	// self is this replica's registry entry; view is what the last
	// heartbeat saw of all (nil before the first).
	self ReplicaInfo
	view atomic.Pointer[replicaView]
	// registryIDs are the entries of the last whole registry read (the
	// registry loop's alone).
	registryIDs []string
}

// now is the steps' clock, in UTC.
func (o *Orchestrator) now() time.Time {
	if o.clock != nil {
		return o.clock().UTC()
	}
	return time.Now().UTC()
}

// Interface guards.
var (
	_ Intake = (*Orchestrator)(nil)
	_ Runs   = (*Orchestrator)(nil)
)

// ErrUnknownPipeline is returned (marked by Refuse) by Emit for an event
// whose pipeline is not configured.
var ErrUnknownPipeline = errors.New("pipeline is not configured")

// MaxEventSize bounds an event, JSON encoded: the run record holds it, with
// the request, the decision and the history, in one KV value (NATS
// payloads are limited, 1 MiB by default).
const MaxEventSize = 256 << 10

// ErrNotAllowed is returned by Cancel, Retry and Resolve when the run's
// state does not allow the action; the message says why.
var ErrNotAllowed = errors.New("not allowed")

// ErrUnavailable is returned by Emit when JetStream did not take the
// event: NATS is not connected, or the intake stream has no leader (a
// cluster without quorum). Nothing was acknowledged; the caller keeps the
// event and tries again (the API and the webhook answer 503).
var ErrUnavailable = errors.New("the event store is unavailable (NATS not connected, or its cluster without quorum); retry later")

// ErrInvalid is returned for a malformed request (a bad state, a missing
// field).
var ErrInvalid = errors.New("invalid request")

// New validates opts and creates (or updates) every stream, consumer and
// bucket. It starts no goroutine.
func New(ctx context.Context, opts Options) (*Orchestrator, error) {
	opts.setDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	h, err := setup(ctx, opts.JS, &opts)
	if err != nil {
		return nil, err
	}
	o := &Orchestrator{
		opts:       opts,
		js:         opts.JS,
		h:          h,
		ledger:     &ledger{js: opts.JS, kv: h.ledger, retention: opts.Retention, leaderReads: opts.Replicas > 1},
		clock:      opts.clock,
		adm:        &admission{kv: kvstate.JetStream(h.admission)},
		index:      newIndex(h.ledger, opts.Logger, opts.IndexPath, nil),
		met:        newMetrics(opts.Registerer),
		log:        opts.Logger,
		sub:        opts.Submitter,
		checker:    opts.Checker,
		scorer:     opts.Scorer,
		pipelines:  opts.Pipelines,
		maxRunning: map[string]int{},
		limiters:   map[string]*rate.Limiter{},
		meters:     map[string]*meter{},
	}
	if o.pipelines == nil {
		o.pipelines = map[string]*Pipeline{}
	}
	o.ledger.retentionOf = func(pipeline string) time.Duration {
		if p := o.pipelines[pipeline]; p != nil {
			return p.Retention
		}
		return 0
	}
	o.index.ttl = o.ledger.ttlOf
	o.views = newPollViews()
	o.index.onChange = o.views.changed
	for _, p := range o.pipelines {
		if p.Endpoint.MaxRunningJobs > o.maxRunning[p.Endpoint.Name] {
			o.maxRunning[p.Endpoint.Name] = p.Endpoint.MaxRunningJobs
		}
	}
	o.self = ReplicaInfo{
		ID: newReplicaID(opts.Replica.Host), Host: opts.Replica.Host, Version: opts.Replica.Version,
		ConfigHash: opts.Replica.ConfigHash, Started: time.Now().UTC(), MaxRunningJobs: map[string]int{},
	}
	for name, n := range o.maxRunning {
		if n > 0 {
			o.self.MaxRunningJobs[name] = n
		}
	}
	o.met.registerLive(o)
	o.wsEvents = newWSEvents(h.admission, o.log, opts.EventSilence, o.pipelines, o.index.tracked, o.met.reg)
	o.bulk = newBulkStatus(o, opts.JobListInterval)
	return o, nil
}

// Run starts the run index, the workers, the tracker and the repair loop,
// and blocks until ctx ends. Then it stops taking messages, gives the steps
// in flight ShutdownGrace to finish (a POST under way gets to record its
// answer), and returns nil. Whatever is cut off is redelivered to the next
// process, which continues from the ledger.
func (o *Orchestrator) Run(ctx context.Context) error {
	if !o.running.CompareAndSwap(false, true) {
		return errors.New("orchestrator: Run called twice")
	}
	defer o.running.Store(false)
	g, gctx := errgroup.WithContext(ctx)
	component := func(name string, f func(context.Context) error) {
		g.Go(func() error {
			err := f(gctx)
			if err == nil && gctx.Err() == nil {
				err = errors.New("returned before shutdown")
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			return nil
		})
	}
	component("run index", o.index.run)
	component("workers", func(ctx context.Context) error {
		return o.consume(ctx, o.h.workers, o.opts.Workers, carrierIntake)
	})
	component("tracker", func(ctx context.Context) error {
		return o.consume(ctx, o.h.tracker, o.opts.TrackerWorkers, carrierTracker)
	})
	component("admission repair", o.repairLoop)
	component("orphan scan", o.orphanLoop)
	component("replica registry", o.registryLoop)
	component("job events", func(ctx context.Context) error { return o.wsEvents.run(ctx, o.now) })
	component("bulk status", o.bulk.run)
	component("job list confirmations", o.bulk.confirmLoop)
	return g.Wait()
}

// Ready reports whether the orchestrator can serve: NATS connected, Run
// started, the run index loaded, and the last heartbeat written (a cluster
// that lost quorum takes nothing durable, so the replica leaves the load
// balancer until a heartbeat is written again).
func (o *Orchestrator) Ready() error {
	if c := o.opts.Conn; c != nil && !c.IsConnected() {
		return errors.New("nats: not connected")
	}
	if !o.running.Load() {
		return errors.New("orchestrator not running")
	}
	if !o.index.isLoaded() {
		return ErrIndexLoading
	}
	if p := o.storeErr.Load(); p != nil {
		return fmt.Errorf("%w: the last heartbeat could not be written: %w", ErrUnavailable, *p)
	}
	return nil
}

// Pipelines returns the configured pipelines by name (read only).
func (o *Orchestrator) Pipelines() map[string]*Pipeline { return o.pipelines }

// Emit publishes ev to the intake stream and returns after the PubAck. The
// message id is the run id, so the stream drops a redelivery of the same
// event within its duplicate window (Receipt.Duplicate); later duplicates
// are recognised by the worker from the ledger and counted on the run.
func (o *Orchestrator) Emit(ctx context.Context, ev Event) (Receipt, error) {
	if err := o.checkEvent(&ev); err != nil {
		o.met.events.WithLabelValues(ev.Source, "error").Inc()
		return Receipt{}, err
	}
	scrub(&ev)
	id := RunID(ev.Pipeline, ev.Key)
	b, err := json.Marshal(ev)
	if err != nil {
		return Receipt{}, Refuse(fmt.Errorf("emit: encode event: %w", err))
	}
	if len(b) > MaxEventSize {
		o.met.events.WithLabelValues(ev.Source, "error").Inc()
		return Receipt{RunID: id}, Refuse(fmt.Errorf("emit %s: the event is %d bytes encoded, more than the %d batchd keeps per run", id, len(b), MaxEventSize))
	}
	m := nats.NewMsg(intakeSubject(ev.Pipeline, id))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, id)
	ack, err := o.js.PublishMsg(ctx, m)
	if err != nil {
		o.met.events.WithLabelValues(ev.Source, "error").Inc()
		return Receipt{RunID: id}, fmt.Errorf("emit %s: %w: %w", id, ErrUnavailable, err)
	}
	outcome := "accepted"
	if ack.Duplicate {
		outcome = "duplicate"
	}
	o.met.events.WithLabelValues(ev.Source, outcome).Inc()
	return Receipt{RunID: id, Duplicate: ack.Duplicate}, nil
}

func (o *Orchestrator) checkEvent(ev *Event) error {
	if ev.Pipeline == "" {
		return Refuse(errors.New("event has no pipeline"))
	}
	if _, ok := o.pipelines[ev.Pipeline]; !ok {
		return Refuse(fmt.Errorf("%w: %q", ErrUnknownPipeline, ev.Pipeline))
	}
	if ev.Key == "" {
		return Refuse(errors.New("event has no idempotency key"))
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	return nil
}

// Record writes a decision that needs no work (filtered, rejected,
// duplicate) as a finished run, and publishes its completion message. A run
// that already exists is left as it is (Receipt.Duplicate).
func (o *Orchestrator) Record(ctx context.Context, ev Event, state State, reason string) (Receipt, error) {
	switch state {
	case StateFiltered, StateRejected, StateDuplicate:
	default:
		return Receipt{}, Refuse(fmt.Errorf("record: state %q is not one of filtered, rejected, duplicate", state))
	}
	if ev.Key == "" {
		return Receipt{}, Refuse(errors.New("record: event has no idempotency key"))
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now()
	}
	ev.Time = ev.Time.UTC()
	scrub(&ev)
	reason = jobs.Redact(reason)
	id := RunID(ev.Pipeline, ev.Key)
	if _, _, err := o.ledger.get(ctx, id); err == nil {
		o.met.events.WithLabelValues(ev.Source, "duplicate").Inc()
		return Receipt{RunID: id, Duplicate: true}, nil
	} else if !errors.Is(err, ErrRunNotFound) {
		return Receipt{RunID: id}, err
	}
	now := time.Now().UTC()
	r := newRecord(ev, now)
	r.Sys.Carrier = ""
	errText := ""
	if state == StateRejected {
		errText = reason
	}
	if err := r.toFinished(state, reason, errText, now); err != nil {
		return Receipt{RunID: id}, err
	}
	if err := publishCompletion(ctx, o.js, r); err != nil {
		return Receipt{RunID: id}, err
	}
	if _, err := o.ledger.create(ctx, r); err != nil {
		if errors.Is(err, errExists) {
			o.met.events.WithLabelValues(ev.Source, "duplicate").Inc()
			return Receipt{RunID: id, Duplicate: true}, nil
		}
		return Receipt{RunID: id}, err
	}
	o.met.events.WithLabelValues(ev.Source, string(state)).Inc()
	o.met.finished.WithLabelValues(ev.Pipeline, string(state)).Inc()
	o.log.Info("run recorded", "run", id, "pipeline", ev.Pipeline, "state", state, "reason", reason)
	return Receipt{RunID: id}, nil
}

// Get returns the run, or an error matching ErrRunNotFound.
func (o *Orchestrator) Get(ctx context.Context, id string) (*Run, error) {
	r, _, err := o.ledger.get(ctx, id)
	if err != nil {
		return nil, err
	}
	return &r.Run, nil
}

// List returns one page of runs, newest first.
func (o *Orchestrator) List(opts ListOptions) (*RunList, error) { return o.index.list(opts) }

// Counts returns the number of runs in the ledger by state, from the run
// index (ErrIndexLoading until Run has loaded it).
func (o *Orchestrator) Counts() (map[State]int, error) {
	c, ok := o.index.counts()
	if !ok {
		return nil, ErrIndexLoading
	}
	return c, nil
}

// Watch reports every change to the ledger (from this moment on) until ctx
// ends, then closes the channel. A subscriber that falls more than buffer
// changes behind misses changes; it should re-read with List.
func (o *Orchestrator) Watch(ctx context.Context, buffer int) <-chan RunChange {
	return o.index.subscribe(ctx, buffer)
}

func newRecord(ev Event, now time.Time) *record {
	r := &record{Run: Run{
		ID: RunID(ev.Pipeline, ev.Key), Pipeline: ev.Pipeline, Key: ev.Key, Source: ev.Source,
		Event: ev, Created: now,
	}}
	r.Sys.Carrier = carrierIntake
	// A new record's first move, which the graph always allows.
	_ = r.toReceived("event accepted from "+orUnknown(ev.Source), now)
	return r
}

func orUnknown(s string) string {
	if s == "" {
		return "an unnamed source"
	}
	return s
}

// limiter is the poll budget of one endpoint host.
func (o *Orchestrator) limiter(host string) *rate.Limiter {
	o.limMu.Lock()
	defer o.limMu.Unlock()
	l, ok := o.limiters[host]
	if !ok {
		share := o.pollShare()
		l = rate.NewLimiter(rate.Limit(share), max(1, int(share)))
		o.limiters[host] = l
	}
	return l
}
