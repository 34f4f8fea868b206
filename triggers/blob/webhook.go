package blob

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/internal/trigmetrics"
)

// DefaultMaxBody is the default body limit: Event Grid batches are at most
// 1 MiB.
const DefaultMaxBody = 1 << 20

// MaxEventsPerDelivery is Event Grid's own maximum batch size: a delivery
// with more events is not from Event Grid and is refused whole (413).
const MaxEventsPerDelivery = 5000

// DefaultMaxDeliveries is the default cap on deliveries handled at once.
const DefaultMaxDeliveries = 64

// JobEvents takes Azure ML workspace job events: a hint that a job's
// status changed (orchestrator.Orchestrator.JobChanged). An error means the
// event was not taken; Event Grid delivers it again.
type JobEvents interface {
	JobChanged(ctx context.Context, ev orchestrator.JobEvent) (string, error)
}

// Route is one pipeline the webhook feeds: a pipeline with a blob trigger
// whose source is eventgrid or both.
type Route struct {
	Pipeline string
	Config   Config
}

// WebhookOptions configure NewWebhook.
type WebhookOptions struct {
	Routes []Route
	// Secret is BATCHD_WEBHOOK_SECRET. A delivery carries it as the query
	// parameter "code" or the header "X-Webhook-Secret". Empty: every
	// request is answered 503 (an open webhook is never the default).
	Secret string
	// Entra, when set, also requires a valid Entra bearer token.
	Entra *EntraOptions
	// MaxBodyBytes bounds a delivery (default DefaultMaxBody); larger ones
	// are answered 413.
	MaxBodyBytes int64
	Intake       orchestrator.Intake
	// Jobs takes Azure ML workspace job events (RunStatusChanged,
	// RunCompleted): the orchestrator. Nil: they are recorded as filtered.
	Jobs JobEvents
	// KV is the triggers' state bucket (per-blob sequencers).
	KV jetstream.KeyValue
	// SeenTTL is how long a blob's newest sequencer is remembered for
	// pipelines no poller sweeps (default 7 days); pipelines with source
	// both keep it until the sweep finds the blob deleted.
	SeenTTL time.Duration
	// Concurrency bounds the events of one delivery handled at once
	// (default 8).
	Concurrency int
	// MaxDeliveries bounds the deliveries handled at once (default
	// DefaultMaxDeliveries); beyond it a delivery is answered 503 with
	// Retry-After, and Event Grid retries it later.
	MaxDeliveries int
	// Timeout bounds the handling of one delivery (default 25s: Event Grid
	// waits 30s for an answer).
	Timeout    time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer

	store kvstate.Store // tests
}

// Webhook is the Event Grid endpoint, mounted by the daemon at /eventgrid.
//
// It answers 200 only after every event of a delivery has a durable outcome:
// emitted to the orchestrator (Emit returned after the PubAck), added to a
// folder batch, or recorded (filtered, rejected) with its reason. When any
// event could not be handled it answers 500 and Event Grid redelivers the
// whole delivery; the events already emitted come back as duplicates of the
// same runs (their keys are stable), which the orchestrator ignores.
// Nothing in the request path calls Azure.
//
// Answers: 200 (done, or the validation handshake), 400 (the body cannot be
// read as events: Event Grid will not retry), 401 (bad secret or token),
// 405, 413 (body over the limit), 500 (retry later), 503 (no secret
// configured, or the Entra signing keys cannot be fetched).
type Webhook struct {
	routes     []*route
	secretHash [32]byte
	hasSecret  bool
	entra      *entraVerifier
	maxBody    int64
	deliveries chan struct{} // one token per delivery being handled
	timeout    time.Duration
	conc       int
	intake     orchestrator.Intake
	jobs       JobEvents
	store      kvstate.Store
	log        *slog.Logger
	m          *trigmetrics.Metrics
	requests   *prometheus.CounterVec

	sampleFiltered, sampleNoSecret, sampleAuth sampler
}

type route struct {
	Route
	seen seenStore
}

// NewWebhook checks the options and returns the handler. It starts nothing.
func NewWebhook(o WebhookOptions) (*Webhook, error) {
	var errs []error
	if o.Intake == nil {
		errs = append(errs, errors.New("webhook: no intake"))
	}
	store := o.store
	if store == nil && o.KV != nil {
		store = kvstate.JetStream(o.KV)
	}
	if store == nil {
		errs = append(errs, errors.New("webhook: no KV bucket"))
	}
	if o.SeenTTL <= 0 {
		o.SeenTTL = 7 * 24 * time.Hour
	}
	w := &Webhook{
		maxBody: o.MaxBodyBytes, timeout: o.Timeout, conc: o.Concurrency, intake: o.Intake, jobs: o.Jobs, store: store,
		log: o.Logger, m: trigmetrics.New(o.Registerer),
		sampleFiltered: sampler{every: 10 * time.Second}, sampleNoSecret: sampler{every: time.Minute},
		sampleAuth: sampler{every: 10 * time.Second},
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = DefaultMaxDeliveries
	}
	w.deliveries = make(chan struct{}, o.MaxDeliveries)
	if w.maxBody <= 0 {
		w.maxBody = DefaultMaxBody
	}
	if w.timeout <= 0 {
		w.timeout = 25 * time.Second
	}
	if w.conc <= 0 {
		w.conc = 8
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	w.log = w.log.With("trigger", "eventgrid")
	seenPipelines := map[string]bool{}
	for _, r := range o.Routes {
		if err := r.Config.Validate(); err != nil {
			errs = append(errs, fmt.Errorf("webhook: pipeline %s: %w", r.Pipeline, err))
		}
		if seenPipelines[r.Pipeline] {
			errs = append(errs, fmt.Errorf("webhook: pipeline %s routed twice", r.Pipeline))
		}
		seenPipelines[r.Pipeline] = true
		ttl := o.SeenTTL
		if r.Config.Polls() {
			ttl = 0
		}
		w.routes = append(w.routes, &route{Route: r, seen: seenStore{kv: store, ttl: ttl}})
	}
	if o.Secret != "" {
		w.secretHash, w.hasSecret = sha256.Sum256([]byte(o.Secret)), true
	}
	if o.Entra != nil {
		v, err := newEntraVerifier(*o.Entra)
		if err != nil {
			errs = append(errs, fmt.Errorf("webhook: %w", err))
		}
		w.entra = v
	}
	w.requests = trigmetrics.Register(o.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_trigger_webhook_requests_total",
		Help: "Requests to the Event Grid webhook, by HTTP status code.",
	}, []string{"code"}))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return w, nil
}

// Run keeps the Entra signing keys fresh until ctx ends. Without Entra it
// only waits. The handler works without Run (it fetches keys on demand).
func (w *Webhook) Run(ctx context.Context) error {
	if w.entra != nil {
		w.entra.run(ctx, func(err error) { w.log.Warn("refresh Entra signing keys", "err", err) })
		return nil
	}
	<-ctx.Done()
	return nil
}

// webhookResult is the JSON answer to a delivery.
type webhookResult struct {
	Received  int `json:"received"`
	Emitted   int `json:"emitted"`
	Batched   int `json:"batched,omitempty"`
	Duplicate int `json:"duplicate"`
	Filtered  int `json:"filtered"`
	Rejected  int `json:"rejected"`
	// Jobs counts the Azure ML job events taken (each a hint to check the
	// job's status now).
	Jobs  int    `json:"jobs,omitempty"`
	Error string `json:"error,omitempty"`
}

func (w *Webhook) reply(rw http.ResponseWriter, code int, body any) {
	w.requests.WithLabelValues(strconv.Itoa(code)).Inc()
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(code)
	_ = json.NewEncoder(rw).Encode(body)
}

func errBody(msg string) any { return map[string]string{"error": msg} }

// authenticated checks the shared secret in constant time (over hashes, so
// the length does not leak either).
func (w *Webhook) authenticated(r *http.Request) bool {
	got := r.URL.Query().Get("code")
	if got == "" {
		got = r.Header.Get("X-Webhook-Secret")
	}
	h := sha256.Sum256([]byte(got))
	return got != "" && subtle.ConstantTimeCompare(h[:], w.secretHash[:]) == 1
}

func (w *Webhook) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	if !w.hasSecret {
		if ok, n := w.sampleNoSecret.allow(); ok {
			w.log.Error("Event Grid delivery refused: BATCHD_WEBHOOK_SECRET is not set, and an open webhook is never the default; set it and add ?code=<secret> to the subscription's endpoint URL",
				"suppressed", n)
		}
		w.reply(rw, http.StatusServiceUnavailable, errBody("webhook secret not configured"))
		return
	}
	if r.Method != http.MethodPost && r.Method != http.MethodOptions {
		rw.Header().Set("Allow", "POST, OPTIONS")
		w.reply(rw, http.StatusMethodNotAllowed, errBody("use POST"))
		return
	}
	if !w.authenticated(r) {
		w.unauthorized(rw, r, "missing or wrong webhook secret")
		return
	}
	if r.Method == http.MethodOptions {
		w.cloudEventsHandshake(rw, r)
		return
	}
	select {
	case w.deliveries <- struct{}{}:
		defer func() { <-w.deliveries }()
	default:
		rw.Header().Set("Retry-After", "10")
		w.reply(rw, http.StatusServiceUnavailable, errBody(fmt.Sprintf("%d deliveries are being handled; retry later", cap(w.deliveries))))
		return
	}
	if r.ContentLength > w.maxBody {
		w.reply(rw, http.StatusRequestEntityTooLarge, errBody(fmt.Sprintf("body of %d bytes is over the %d byte limit", r.ContentLength, w.maxBody)))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(rw, r.Body, w.maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			w.reply(rw, http.StatusRequestEntityTooLarge, errBody(fmt.Sprintf("body is over the %d byte limit", w.maxBody)))
			return
		}
		w.reply(rw, http.StatusBadRequest, errBody("read body: "+err.Error()))
		return
	}
	events, err := Decode(body, r.Header)
	if err != nil {
		w.log.Warn("Event Grid delivery rejected", "path", r.URL.Path, "err", err)
		w.reply(rw, http.StatusBadRequest, errBody(err.Error()))
		return
	}
	if len(events) > MaxEventsPerDelivery {
		w.log.Warn("Event Grid delivery refused: more events than Event Grid sends", "events", len(events))
		w.reply(rw, http.StatusRequestEntityTooLarge, errBody(fmt.Sprintf("%d events; Event Grid sends at most %d per delivery", len(events), MaxEventsPerDelivery)))
		return
	}
	if len(events) == 1 && events[0].Type == TypeSubscriptionValidation && events[0].Problem == "" {
		w.validationHandshake(rw, events[0])
		return
	}
	if r.Header.Get("aeg-event-type") == "SubscriptionDeletion" || (len(events) == 1 && events[0].Type == TypeSubscriptionDeletion) {
		w.log.Warn("Event Grid subscription deleted", "subscription", r.Header.Get("aeg-subscription-name"))
		w.reply(rw, http.StatusOK, webhookResult{Received: len(events)})
		return
	}
	// The shared secret was right; a token check failure now is an
	// authentication failure too.
	if w.entra != nil {
		if err := w.entra.verify(r.Context(), r.Header.Get("Authorization")); err != nil {
			if errors.Is(err, errKeysUnavailable) {
				w.log.Warn("Event Grid delivery deferred: Entra signing keys unavailable", "err", err)
				w.reply(rw, http.StatusServiceUnavailable, errBody("signing keys unavailable; retry"))
				return
			}
			w.unauthorized(rw, r, err.Error())
			return
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), w.timeout)
	defer cancel()
	res, err := w.handle(ctx, events)
	if err != nil {
		w.log.Warn("Event Grid delivery not taken; Event Grid will redeliver", "events", len(events), "err", err)
		res.Error = "not all events could be taken; retry"
		if errors.Is(err, orchestrator.ErrUnavailable) {
			// NATS cannot take events now (a cluster without quorum):
			// Event Grid backs off and redelivers.
			rw.Header().Set("Retry-After", "30")
			w.reply(rw, http.StatusServiceUnavailable, res)
			return
		}
		w.reply(rw, http.StatusInternalServerError, res)
		return
	}
	w.reply(rw, http.StatusOK, res)
}

func (w *Webhook) unauthorized(rw http.ResponseWriter, r *http.Request, why string) {
	if ok, n := w.sampleAuth.allow(); ok {
		// Never the query string: it holds the secret.
		w.log.Warn("Event Grid request unauthorized", "path", r.URL.Path, "remote", r.RemoteAddr, "why", why, "suppressed", n)
	}
	rw.Header().Set("WWW-Authenticate", `Bearer realm="batchd"`)
	w.reply(rw, http.StatusUnauthorized, errBody("unauthorized"))
}

// cloudEventsHandshake answers the CloudEvents abuse-protection OPTIONS
// request (Event Grid with the CloudEvents schema).
func (w *Webhook) cloudEventsHandshake(rw http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("WebHook-Request-Origin")
	if origin == "" {
		w.reply(rw, http.StatusBadRequest, errBody("OPTIONS without WebHook-Request-Origin"))
		return
	}
	if cb := r.Header.Get("WebHook-Request-Callback"); cb != "" {
		w.log.Info("CloudEvents validation request; it is answered synchronously, or validate by hand with a GET", "origin", origin, "callback", cb)
	} else {
		w.log.Info("CloudEvents validation handshake answered", "origin", origin)
	}
	rw.Header().Set("WebHook-Allowed-Origin", origin)
	rw.Header().Set("WebHook-Allowed-Rate", "*")
	rw.Header().Set("Allow", "POST, OPTIONS")
	w.requests.WithLabelValues("200").Inc()
	rw.WriteHeader(http.StatusOK)
}

// validationHandshake answers Event Grid's SubscriptionValidationEvent with
// the code (synchronous validation) and logs the validation URL, which an
// operator can open instead (manual validation, within 5 minutes).
func (w *Webhook) validationHandshake(rw http.ResponseWriter, ev Event) {
	var d ValidationData
	if err := json.Unmarshal(ev.Data, &d); err != nil || d.ValidationCode == "" {
		w.reply(rw, http.StatusBadRequest, errBody("SubscriptionValidationEvent without data.validationCode"))
		return
	}
	// Not the validationUrl: it carries a code that completes the handshake.
	w.log.Info("Event Grid subscription validation answered", "topic", ev.Topic, "validation_url_sent", d.ValidationURL != "")
	w.reply(rw, http.StatusOK, map[string]string{"validationResponse": d.ValidationCode})
}

type counts struct {
	mu sync.Mutex
	r  webhookResult
}

func (c *counts) add(outcome string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch outcome {
	case trigmetrics.Emitted:
		c.r.Emitted++
	case trigmetrics.Batched:
		c.r.Batched++
	case trigmetrics.Duplicate:
		c.r.Duplicate++
	case trigmetrics.Filtered:
		c.r.Filtered++
	case trigmetrics.Rejected:
		c.r.Rejected++
	case outcomeJob:
		c.r.Jobs++
	}
}

// handle gives every event a durable outcome, or returns an error.
func (w *Webhook) handle(ctx context.Context, events []Event) (webhookResult, error) {
	c := &counts{r: webhookResult{Received: len(events)}}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(w.conc)
	for _, ev := range events {
		w.m.Inc("eventgrid", "", trigmetrics.Received)
		g.Go(func() error { return w.handleEvent(gctx, ev, c) })
	}
	err := g.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.r, err
}

func (w *Webhook) record(ctx context.Context, pipeline string, ev orchestrator.Event, st orchestrator.State, reason string, c *counts) error {
	if _, err := w.intake.Record(ctx, ev, st, reason); err != nil {
		return fmt.Errorf("record %s %s: %w", st, ev.Key, err)
	}
	outcome := trigmetrics.Filtered
	if st == orchestrator.StateRejected {
		outcome = trigmetrics.Rejected
	}
	w.m.Inc("eventgrid", pipeline, outcome)
	c.add(outcome)
	if ok, n := w.sampleFiltered.allow(); ok {
		w.log.Info("Event Grid event not run", "pipeline", pipeline, "key", ev.Key, "state", st, "reason", reason, "suppressed", n)
	}
	return nil
}

func (w *Webhook) handleEvent(ctx context.Context, ev Event, c *counts) error {
	t := ev.Time
	if t.IsZero() {
		t = time.Now().UTC()
	}
	idKey := "eventgrid:" + ev.ID
	if ev.ID == "" {
		idKey = "eventgrid:" + kvstate.Hash(ev.Problem+ev.Topic+ev.Subject+string(ev.Data))
	}
	bare := orchestrator.Event{Key: idKey, Source: orchestrator.SourceEventGrid, Time: t}
	if ev.Problem != "" {
		return w.record(ctx, "", bare, orchestrator.StateRejected, ev.Problem, c)
	}
	if ev.Type == orchestrator.TypeRunStatusChanged || ev.Type == orchestrator.TypeRunCompleted {
		return w.handleJobEvent(ctx, ev, bare, c)
	}
	if ev.Type != TypeBlobCreated {
		return w.record(ctx, "", bare, orchestrator.StateFiltered, fmt.Sprintf("event type %s is not handled (only %s, %s and %s)", ev.Type, TypeBlobCreated, orchestrator.TypeRunStatusChanged, orchestrator.TypeRunCompleted), c)
	}
	d, err := ev.BlobData()
	if err != nil {
		return w.record(ctx, "", bare, orchestrator.StateRejected, fmt.Sprintf("event %s: %v", ev.ID, err), c)
	}
	ref, err := ParseURL(d.URL)
	if err != nil {
		return w.record(ctx, "", bare, orchestrator.StateRejected, fmt.Sprintf("event %s: %v", ev.ID, err), c)
	}
	if d.ETag == "" {
		return w.record(ctx, "", bare, orchestrator.StateRejected, fmt.Sprintf("event %s: data.eTag is missing", ev.ID), c)
	}
	if acct, err := topicAccount(ev.Topic); err == nil && !strings.EqualFold(acct, ref.Account) {
		return w.record(ctx, "", bare, orchestrator.StateRejected,
			fmt.Sprintf("event %s: topic account %q does not match url account %q", ev.ID, acct, ref.Account), c)
	}
	etag := UnquoteETag(d.ETag)
	facts := blobFacts{ref: ref, api: d.API}
	if d.ContentLength != nil {
		facts.size, facts.hasSize = *d.ContentLength, true
	}
	base := versionEvent("", orchestrator.SourceEventGrid, ref, etag, facts.size, t)
	base.Blob.API, base.Blob.Sequencer = d.API, d.Sequencer
	var why []string
	matched := 0
	for _, rt := range w.routes {
		ok, reason := rt.Config.match(facts)
		if !ok {
			why = append(why, rt.Pipeline+": "+reason)
			continue
		}
		matched++
		oev, blob := base, *base.Blob
		oev.Pipeline, oev.Blob = rt.Pipeline, &blob
		if err := w.handleBlob(ctx, rt, oev, facts, c); err != nil {
			return err
		}
	}
	if matched == 0 {
		reason := "no pipeline has a blob trigger for this event"
		if len(why) > 0 {
			reason = "no pipeline matches: " + strings.Join(why, "; ")
		}
		if len(reason) > 2000 {
			reason = reason[:2000] + "…"
		}
		return w.record(ctx, "", base, orchestrator.StateFiltered, reason, c)
	}
	return nil
}

// outcomeJob counts a job event taken (webhookResult.Jobs).
const outcomeJob = "job"

// handleJobEvent hands an Azure ML job event to the orchestrator. A
// malformed one is recorded rejected with the reason, like any bad event;
// one about a job no run owns is counted (batchd_job_events_total) and
// answered 200: a workspace reports every job, not only batchd's.
func (w *Webhook) handleJobEvent(ctx context.Context, ev Event, bare orchestrator.Event, c *counts) error {
	if w.jobs == nil {
		return w.record(ctx, "", bare, orchestrator.StateFiltered, fmt.Sprintf("event type %s is not taken here", ev.Type), c)
	}
	je, err := ev.JobEvent()
	if err != nil {
		return w.record(ctx, "", bare, orchestrator.StateRejected, fmt.Sprintf("event %s: %v", ev.ID, err), c)
	}
	if _, err := w.jobs.JobChanged(ctx, je); err != nil {
		return fmt.Errorf("job event %s: %w", ev.ID, err)
	}
	c.add(outcomeJob)
	return nil
}

// handleBlob takes one matched blob event for one pipeline.
func (w *Webhook) handleBlob(ctx context.Context, rt *route, ev orchestrator.Event, f blobFacts, c *counts) error {
	cur, _, err := rt.seen.get(ctx, rt.Pipeline, ev.Blob.URL)
	if err != nil {
		return fmt.Errorf("pipeline %s: %w", rt.Pipeline, err)
	}
	seq := ev.Blob.Sequencer
	if seq != "" && cur.Seq != "" && seqNewer(cur.Seq, seq) {
		return w.record(ctx, rt.Pipeline, ev, orchestrator.StateFiltered,
			fmt.Sprintf("superseded: a newer event for this blob (sequencer %s, eTag %s) was already handled; this one has sequencer %s", cur.Seq, cur.ETag, seq), c)
	}
	// A version the poller handled has no sequencer: order by time. Blob
	// times have whole seconds, so only an event a second or more older
	// than the handled version is superseded.
	if (seq == "" || cur.Seq == "") && cur.ETag != "" && cur.ETag != ev.Blob.ETag && !cur.Modified.IsZero() &&
		ev.Time.Before(cur.Modified.Add(-time.Second)) {
		return w.record(ctx, rt.Pipeline, ev, orchestrator.StateFiltered,
			fmt.Sprintf("superseded: a newer version of this blob (eTag %s, written %s) was already handled; this event (eTag %s) is from %s",
				cur.ETag, cur.Modified.UTC().Format(time.RFC3339), ev.Blob.ETag, ev.Time.UTC().Format(time.RFC3339)), c)
	}
	var outcome string
	switch {
	case cur.ETag == ev.Blob.ETag && !cur.Filtered:
		// This version was handled already (by an earlier delivery or the
		// poller): the run exists; nothing to emit.
		outcome = trigmetrics.Duplicate
	case rt.Config.Batch != nil:
		marker := rt.Config.isMarker(f.ref)
		if err := addToBatch(ctx, w.store, rt.Pipeline, orchestrator.SourceEventGrid, f.ref, ev.Blob.ETag, f.size, marker); err != nil {
			return fmt.Errorf("pipeline %s: %w", rt.Pipeline, err)
		}
		outcome = trigmetrics.Batched
	default:
		rc, err := w.intake.Emit(ctx, ev)
		switch {
		case err == nil && rc.Duplicate:
			outcome = trigmetrics.Duplicate
		case err == nil:
			outcome = trigmetrics.Emitted
		case orchestrator.IsRefused(err):
			return w.record(ctx, rt.Pipeline, ev, orchestrator.StateRejected, err.Error(), c)
		default:
			w.m.Inc("eventgrid", rt.Pipeline, trigmetrics.Failed)
			return fmt.Errorf("pipeline %s: emit %s: %w", rt.Pipeline, ev.Key, err)
		}
	}
	w.m.Inc("eventgrid", rt.Pipeline, outcome)
	c.add(outcome)
	// The outcome is durable already; the record only orders later events.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := rt.seen.advance(actx, rt.Pipeline, ev.Blob.URL, seenRec{ETag: ev.Blob.ETag, Seq: seq, Modified: ev.Time, At: time.Now().UTC()}); err != nil {
		w.log.Warn("remember blob sequencer", "pipeline", rt.Pipeline, "url", ev.Blob.URL, "err", err)
	}
	return nil
}

// sampler lets one log line through per period and counts the rest.
type sampler struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (s *sampler) allow() (bool, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if !s.last.IsZero() && now.Sub(s.last) < s.every {
		s.suppressed++
		return false, 0
	}
	n := s.suppressed
	s.last, s.suppressed = now, 0
	return true, n
}
