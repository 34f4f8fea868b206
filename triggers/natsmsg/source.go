// Package natsmsg turns NATS messages into runs: a core NATS subject (with
// a queue group, so replicas share it) or a JetStream stream read through a
// durable pull consumer, on the daemon's NATS or another cluster.
//
// The message body is a JSON object; its fields feed the pipeline's
// templates as .Message.Data. A body that is not one, or that the
// pipeline's templates cannot render (Options.Validate), is recorded
// rejected with the reason.
//
// Keys: the Nats-Msg-Id header when there is one; otherwise, for core NATS,
// a hash of subject and body (the same message published twice is one run);
// otherwise, for JetStream, the stream, its creation time and the sequence
// (a stream deleted and created again starts at sequence 1 again, and its
// messages are new ones).
//
// Acknowledgement:
//   - JetStream: a message is acked only after Emit returned nil (the
//     intake's PubAck). A transient Emit error naks it with a growing delay
//     (redelivered by the server); a rejected or permanently failed message
//     is recorded and then terminated (TermWithReason), never redelivered
//     forever. Nothing acknowledged is lost.
//   - Core NATS has no acknowledgement and no redelivery: it is at most
//     once. A message is lost if it is published while no replica is
//     subscribed, if the process dies with it in its buffer, if the client
//     falls behind (slow consumer: the server drops messages), or if Emit
//     keeps failing for the retry budget (Options.CoreRetries, logged and
//     counted as failed). Use a JetStream stream when that is not
//     acceptable. A request (a message with a reply subject) gets an answer
//     either way, so its publisher knows: {"run_id": ..., "duplicate": ...}
//     or {"error": ..., "state": "rejected"|"failed"}.
//
// Deferred replies (Options.DeferReply, for pipelines that target an online
// endpoint): a core NATS request that becomes a run is not answered here.
// Its reply subject travels with the event (Event.Message.Reply,
// ReplyDeferred), and whoever runs the event answers it with the scoring
// response. The source still answers what no run will: a rejected message
// and one the intake did not take; and a duplicate through
// Options.OnDuplicate. Such a request without a Nats-Msg-Id is keyed by its
// subject, body and reply subject: every request is its own occurrence (core
// NATS never redelivers one, and two requesters sending the same body each
// want an answer); set Nats-Msg-Id to make a requester's retries one run.
// JetStream messages have no requester (their reply subject is the ack
// subject), so DeferReply does not apply to them.
package natsmsg

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batchd/batchd/jobs/backoff"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/consumer"
	"github.com/batchd/batchd/triggers/internal/trigmetrics"
)

// Options configure New.
type Options struct {
	Pipeline string
	Config   Config
	// Conn is the daemon's NATS connection, used when Config.URL is empty.
	Conn   *nats.Conn
	Intake orchestrator.Intake
	// Validate, when set, checks a message's event before it is emitted
	// (the daemon renders the pipeline's templates with it); an error
	// rejects the message with that reason.
	Validate func(orchestrator.Event) error
	// MaxBodyBytes bounds a message body (default 1 MiB).
	MaxBodyBytes int
	// Concurrency is the number of messages handled at once (default 4).
	Concurrency int
	// RetryDelay is the first redelivery delay after a transient Emit
	// error; it doubles per delivery up to 10x (default 5s).
	RetryDelay time.Duration
	// AckWait for a consumer this source creates (default 2m).
	AckWait time.Duration
	// CoreRetries is how often a core NATS message's Emit is tried before
	// it is given up (default 5, with backoff from RetryDelay/10).
	CoreRetries int
	// Grace bounds the handling of messages in hand at shutdown (default 10s).
	Grace time.Duration
	// DeferReply leaves the answer to a core NATS request that becomes a
	// run to the run (see the package comment).
	DeferReply bool
	// OnDuplicate, with DeferReply, answers a request whose event the
	// intake already holds (Receipt.Duplicate: a repeated Nats-Msg-Id): the
	// daemon replies with that run's outcome. It may wait for the run to
	// finish. Without it the source answers {"run_id", "duplicate": true}.
	OnDuplicate func(ctx context.Context, runID, reply string) error
	// ReplyConns, when set, learns this trigger's connection while it runs,
	// so that deferred replies go out where the request came in.
	ReplyConns *ReplyConns
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Source is one pipeline's NATS trigger.
type Source struct {
	o   Options
	log *slog.Logger
	m   *trigmetrics.Metrics
}

// New checks the options and returns the source. It connects to nothing.
func New(o Options) (*Source, error) {
	var errs []error
	if err := o.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.Intake == nil {
		errs = append(errs, errors.New("no intake"))
	}
	if o.Conn == nil && o.Config.URL == "" {
		errs = append(errs, errors.New("no NATS connection and no url"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("nats trigger %s: %w", o.Pipeline, err)
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 1 << 20
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 4
	}
	if o.RetryDelay <= 0 {
		o.RetryDelay = 5 * time.Second
	}
	if o.AckWait <= 0 {
		o.AckWait = 2 * time.Minute
	}
	if o.CoreRetries <= 0 {
		o.CoreRetries = 5
	}
	if o.Grace <= 0 {
		o.Grace = 10 * time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	o.ReplyConns.declare(o.Pipeline, o.Config.URL != "")
	return &Source{o: o, log: log.With("trigger", "nats", "pipeline", o.Pipeline), m: trigmetrics.New(o.Registerer)}, nil
}

// Run consumes until ctx ends, finishes the messages in hand (bounded by
// Grace), and returns nil.
func (s *Source) Run(ctx context.Context) error {
	nc := s.o.Conn
	if s.o.Config.URL != "" {
		opts := []nats.Option{nats.Name("batchd-trigger-" + s.o.Pipeline), nats.MaxReconnects(-1), nats.RetryOnFailedConnect(true)}
		if s.o.Config.Creds != "" {
			opts = append(opts, nats.UserCredentials(s.o.Config.Creds))
		}
		c, err := nats.Connect(s.o.Config.URL, opts...)
		if err != nil {
			return fmt.Errorf("nats trigger %s: connect: %w", s.o.Pipeline, err)
		}
		defer c.Close()
		nc = c
	}
	s.o.ReplyConns.set(s.o.Pipeline, nc)
	defer s.o.ReplyConns.set(s.o.Pipeline, nil)
	if s.o.Config.Stream != "" {
		return s.runJetStream(ctx, nc)
	}
	return s.runCore(ctx, nc)
}

// rejection is a message that cannot become a run.
type rejection struct{ reason string }

func (r *rejection) Error() string { return r.reason }

func firstValues(h nats.Header) map[string]string {
	if len(h) == 0 {
		return nil
	}
	out := make(map[string]string, len(h))
	for k, v := range h {
		if len(v) > 0 {
			out[k] = v[0]
		}
	}
	return out
}

// Key is the idempotency key of a message (see the package comment).
// A JetStream message's stream is named with its creation time (created).
func Key(subject string, body []byte, h nats.Header, stream string, created time.Time, seq uint64) string {
	if id := h.Get(jetstream.MsgIDHeader); id != "" {
		return "nats-msg-id:" + id
	}
	if stream == "" {
		sum := sha256.New()
		sum.Write([]byte(subject))
		sum.Write([]byte{0})
		sum.Write(body)
		return "nats-sha256:" + hex.EncodeToString(sum.Sum(nil)[:16])
	}
	return fmt.Sprintf("nats-seq:%s@%s:%d", stream, created.UTC().Format(time.RFC3339Nano), seq)
}

// requestKey is the key of a deferred-reply request without a Nats-Msg-Id:
// the reply subject makes every request its own run.
func requestKey(subject string, body []byte, reply string) string {
	sum := sha256.New()
	sum.Write([]byte(subject))
	sum.Write([]byte{0})
	sum.Write([]byte(reply))
	sum.Write([]byte{0})
	sum.Write(body)
	return "nats-request:" + hex.EncodeToString(sum.Sum(nil)[:16])
}

// event builds the message's event; a non-nil error is a *rejection.
func (s *Source) event(subject string, body []byte, h nats.Header, stream string, created time.Time, seq uint64, reply string, at time.Time) (orchestrator.Event, error) {
	ev := orchestrator.Event{
		Pipeline: s.o.Pipeline, Key: Key(subject, body, h, stream, created, seq), Source: orchestrator.SourceNATS, Time: at.UTC(),
		Message: &orchestrator.MessageEvent{Subject: subject, Headers: firstValues(h), Stream: stream, Sequence: seq, Reply: reply},
	}
	if s.o.DeferReply && stream == "" && reply != "" {
		ev.Message.ReplyDeferred = true
		if h.Get(jetstream.MsgIDHeader) == "" {
			ev.Key = requestKey(subject, body, reply)
		}
	}
	if len(body) > s.o.MaxBodyBytes {
		return ev, &rejection{fmt.Sprintf("body of %d bytes is over the %d byte limit", len(body), s.o.MaxBodyBytes)}
	}
	b := bytes.TrimSpace(body)
	if len(b) == 0 || b[0] != '{' {
		return ev, &rejection{"body is not a JSON object"}
	}
	var fields map[string]any
	if err := json.Unmarshal(b, &fields); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return ev, &rejection{fmt.Sprintf("body is not valid JSON (at byte %d)", se.Offset)}
		}
		return ev, &rejection{"body is not a JSON object"}
	}
	ev.Message.Data = json.RawMessage(b)
	if s.o.Validate != nil {
		if err := s.o.Validate(ev); err != nil {
			return ev, &rejection{"message does not fit the pipeline: " + err.Error()}
		}
	}
	return ev, nil
}

// outcome of one message.
type outcome struct {
	receipt  orchestrator.Receipt
	rejected string // the reason, when recorded rejected
	err      error  // transient: not taken
}

// take builds, emits or records one message.
func (s *Source) take(ctx context.Context, ev orchestrator.Event, buildErr error) outcome {
	s.m.Inc("nats", s.o.Pipeline, trigmetrics.Received)
	var rej *rejection
	if errors.As(buildErr, &rej) {
		return s.reject(ctx, ev, rej.reason)
	}
	rc, err := s.o.Intake.Emit(ctx, ev)
	switch {
	case err == nil:
		if rc.Duplicate {
			s.m.Inc("nats", s.o.Pipeline, trigmetrics.Duplicate)
		} else {
			s.m.Inc("nats", s.o.Pipeline, trigmetrics.Emitted)
		}
		return outcome{receipt: rc}
	case orchestrator.IsRefused(err):
		return s.reject(ctx, ev, err.Error())
	default:
		s.m.Inc("nats", s.o.Pipeline, trigmetrics.Failed)
		return outcome{err: err}
	}
}

func (s *Source) reject(ctx context.Context, ev orchestrator.Event, reason string) outcome {
	rc, err := s.o.Intake.Record(ctx, ev, orchestrator.StateRejected, reason)
	if err != nil {
		s.m.Inc("nats", s.o.Pipeline, trigmetrics.Failed)
		return outcome{err: fmt.Errorf("record rejected message: %w", err)}
	}
	s.m.Inc("nats", s.o.Pipeline, trigmetrics.Rejected)
	s.log.Info("message rejected", "key", ev.Key, "subject", ev.Message.Subject, "reason", reason)
	return outcome{receipt: rc, rejected: reason}
}

// refuseReply records a request whose reply subject is outside prefix as
// rejected, and answers nothing. Its key includes the reply subject, so it
// never takes the run id of the same body sent properly.
func (s *Source) refuseReply(ctx context.Context, m *nats.Msg, prefix string) {
	ev, _ := s.event(m.Subject, m.Data, m.Header, "", time.Time{}, 0, "", time.Now())
	ev.Key = "nats-refused-" + requestKey(m.Subject, m.Data, m.Reply)
	ev.Message.Reply = ""
	reply := m.Reply
	if len(reply) > 120 {
		reply = reply[:120] + "…"
	}
	reason := fmt.Sprintf("the request's reply subject %q is not under %q: batchd answers requests only there (the trigger's reply_prefix), so it is neither run nor answered", reply, prefix)
	if out := s.reject(ctx, ev, reason); out.err != nil {
		s.log.Warn("record a refused request", "subject", m.Subject, "err", out.err)
	}
}

// ---- JetStream ----

func (s *Source) runJetStream(ctx context.Context, nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("nats trigger %s: %w", s.o.Pipeline, err)
	}
	// The orchestrator's worker loop: messages in hand finish on their own
	// context, bounded by Grace after ctx ends (a canceled Emit would only
	// turn into a Nak); a message not taken comes back after RetryDelay
	// doubling per delivery (at most 8 RetryDelay); a panic records the
	// message rejected and terminates it; iterator errors back off from
	// RetryDelay/10 to 5 s and, five in a row, open the consumer again (it
	// may have gone with its stream).
	var created atomic.Value // time.Time: the open stream's creation, for poisoned messages
	created.Store(time.Time{})
	l := consumer.New(ctx, consumer.Options{
		Name: "nats trigger " + s.o.Pipeline, Concurrency: s.o.Concurrency, Pull: 2 * s.o.Concurrency,
		Grace: s.o.Grace, RetryBase: s.o.RetryDelay, RetryMax: 8 * s.o.RetryDelay,
		MaxIterFailures: 5, IterBase: max(s.o.RetryDelay/10, time.Millisecond), Logger: s.log,
		OnPoison: func(ctx context.Context, m jetstream.Msg, _ consumer.Cause, reason string) {
			s.poisoned(ctx, m, created.Load().(time.Time), reason)
		},
	})
	for ctx.Err() == nil {
		cons, c, ok := s.open(ctx, js)
		if !ok {
			break
		}
		created.Store(c)
		h := func(work, _ context.Context, m jetstream.Msg) (consumer.Settle, error) { return s.handleJS(work, m, c) }
		if err := l.Consume(ctx, cons, h); errors.Is(err, consumer.ErrReopen) {
			s.log.Warn("consume; opening the consumer again", "stream", s.o.Config.Stream)
		}
	}
	l.Drain()
	return nil
}

// open opens the durable consumer and reads its stream's creation time,
// retrying every RetryDelay until both work or ctx ends (false).
func (s *Source) open(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, time.Time, bool) {
	for {
		cons, err := s.consumer(ctx, js)
		var st jetstream.Stream
		if err == nil {
			st, err = js.Stream(ctx, s.o.Config.Stream)
		}
		if err == nil {
			return cons, st.CachedInfo().Created, true
		}
		s.log.Warn("open durable consumer; retrying", "stream", s.o.Config.Stream, "consumer", s.o.Config.Consumer, "err", err)
		if backoff.Sleep(ctx, s.o.RetryDelay) != nil {
			return nil, time.Time{}, false
		}
	}
}

func (s *Source) consumer(ctx context.Context, js jetstream.JetStream) (jetstream.Consumer, error) {
	c, err := js.Consumer(ctx, s.o.Config.Stream, s.o.Config.Consumer)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		// Created with safe defaults when the operator has not; an existing
		// consumer's configuration is never changed.
		return js.CreateConsumer(ctx, s.o.Config.Stream, jetstream.ConsumerConfig{
			Durable: s.o.Config.Consumer, AckPolicy: jetstream.AckExplicitPolicy, AckWait: s.o.AckWait,
			DeliverPolicy: jetstream.DeliverAllPolicy, MaxAckPending: 1000,
			Description: "batchd trigger for pipeline " + s.o.Pipeline,
		})
	}
	return c, err
}

// handleJS takes one message of the stream created at created. An error
// hands the message back for a later delivery (the worker loop's back-off).
func (s *Source) handleJS(ctx context.Context, msg jetstream.Msg, created time.Time) (consumer.Settle, error) {
	md, err := msg.Metadata()
	if err != nil {
		s.log.Warn("message without JetStream metadata", "subject", msg.Subject(), "err", err)
		return consumer.Term("no JetStream metadata"), nil
	}
	ev, buildErr := s.event(msg.Subject(), msg.Data(), msg.Headers(), md.Stream, created, md.Sequence.Stream, "", md.Timestamp)
	out := s.take(ctx, ev, buildErr)
	switch {
	case out.err != nil:
		// The worker loop logs it and hands the message back.
		return consumer.Settle{}, fmt.Errorf("message %s (delivery %d) not taken: %w", ev.Key, md.NumDelivered, out.err)
	case out.rejected != "":
		return consumer.Term(out.rejected), nil
	}
	// An ack that fails: the server redelivers the message and the same
	// key makes it a duplicate.
	return consumer.Ack(), nil
}

// poisoned records a message the worker loop took out of the way (its
// handler panicked) as rejected, with the reason.
func (s *Source) poisoned(ctx context.Context, msg jetstream.Msg, created time.Time, reason string) {
	var ev orchestrator.Event
	if md, err := msg.Metadata(); err == nil {
		ev, _ = s.event(msg.Subject(), msg.Data(), msg.Headers(), md.Stream, created, md.Sequence.Stream, "", md.Timestamp)
	}
	if ev.Key == "" {
		s.log.Error("a poisoned message cannot be recorded: no key", "subject", msg.Subject(), "reason", reason)
		return
	}
	if out := s.reject(ctx, ev, reason); out.err != nil {
		s.log.Error("record a poisoned message", "key", ev.Key, "reason", reason, "err", out.err)
	}
}

// ---- core NATS ----

func (s *Source) runCore(ctx context.Context, nc *nats.Conn) error {
	ch := make(chan *nats.Msg, 256)
	var sub *nats.Subscription
	var err error
	if s.o.Config.Queue != "" {
		sub, err = nc.ChanQueueSubscribe(s.o.Config.Subject, s.o.Config.Queue, ch)
	} else {
		sub, err = nc.ChanSubscribe(s.o.Config.Subject, ch)
	}
	if err != nil {
		return fmt.Errorf("nats trigger %s: subscribe %s: %w", s.o.Pipeline, s.o.Config.Subject, err)
	}
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg sync.WaitGroup
	for range s.o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case m := <-ch:
					s.handleCore(work, m)
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
	wg.Wait()
	// What was delivered but not started is handled now, within Grace.
	t := time.AfterFunc(s.o.Grace, cancelWork)
	defer t.Stop()
	for {
		select {
		case m := <-ch:
			s.handleCore(work, m)
		default:
			return nil
		}
	}
}

type replyBody struct {
	RunID     string `json:"run_id,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
	Error     string `json:"error,omitempty"`
	State     string `json:"state,omitempty"`
}

func (s *Source) handleCore(ctx context.Context, m *nats.Msg) {
	if prefix := s.o.Config.ReplyPrefixOrDefault(); m.Reply != "" && !strings.HasPrefix(m.Reply, prefix) {
		s.refuseReply(ctx, m, prefix)
		return
	}
	ev, buildErr := s.event(m.Subject, m.Data, m.Header, "", time.Time{}, 0, m.Reply, time.Now())
	var out outcome
	base := max(s.o.RetryDelay/10, 10*time.Millisecond)
	for i := range s.o.CoreRetries {
		out = s.take(ctx, ev, buildErr)
		if out.err == nil || i == s.o.CoreRetries-1 || ctx.Err() != nil {
			break
		}
		// A shutdown ends the wait; the loop then stops.
		_ = backoff.Sleep(ctx, backoff.Exp(i+1, base, s.o.RetryDelay))
	}
	var r replyBody
	switch {
	case out.err == nil && out.rejected == "" && ev.Message.ReplyDeferred && out.receipt.Duplicate && s.o.OnDuplicate != nil:
		err := s.o.OnDuplicate(ctx, out.receipt.RunID, m.Reply)
		if err == nil {
			return
		}
		s.log.Warn("answer a duplicate request", "key", ev.Key, "run", out.receipt.RunID, "err", err)
		r = replyBody{RunID: out.receipt.RunID, Duplicate: true}
	case out.err == nil && out.rejected == "" && ev.Message.ReplyDeferred && !out.receipt.Duplicate:
		return // the run answers
	case out.err != nil:
		s.log.Error("core NATS message lost: the intake did not take it and core NATS cannot redeliver", "key", ev.Key, "subject", m.Subject, "err", out.err)
		r = replyBody{Error: "not taken: " + out.err.Error(), State: "failed"}
	case out.rejected != "":
		r = replyBody{RunID: out.receipt.RunID, Error: out.rejected, State: string(orchestrator.StateRejected)}
	default:
		r = replyBody{RunID: out.receipt.RunID, Duplicate: out.receipt.Duplicate}
	}
	if m.Reply != "" {
		b, _ := json.Marshal(r)
		if err := m.Respond(b); err != nil {
			s.log.Warn("reply", "subject", m.Reply, "err", err)
		}
	}
}
