package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/backoff"
	"github.com/batchd/batchd/jobs/online"
)

// Online runs: a pipeline whose endpoint is an online endpoint scores each
// event with one request (Scorer) instead of submitting a job. The run goes
// through the same intake, ledger, completion messages and API as a batch
// run, with the same carrier rule and compare-and-set writes; what differs:
//
//   - received → (render the request; the data-access decision is "not
//     applicable": online requests name no input URIs) → a request slot of
//     the endpoint (max_concurrent_requests, per replica, in process) →
//     submitting (written before the POST, with SubmitDeadline = the
//     request's deadline + the submit margin) → Score → one write of the
//     outcome: completed, rejected, failed, timed_out, or unknown.
//   - There is no job and no tracker: a terminal outcome is written and
//     the intake message acked; only an unknown run goes to the tracker
//     (parked: an operator resolves or retries it).
//   - After the outcome is written, batchd delivers it: to the requester
//     (a core NATS request whose trigger deferred its reply) or on
//     batchd.results.<pipeline>. A delivery never precedes the write, so a
//     requester never hears of an outcome the ledger does not hold.
//
// Crash rules. The one ambiguous moment is a crash between the submitting
// write and the outcome's write: the redelivered intake message finds the
// run in submitting; once SubmitDeadline has passed (no request started
// then can still be in flight, on any replica) it scores again when the
// pipeline is safe_to_repeat, and otherwise makes the run unknown ("scoring
// outcome unknown: batchd stopped while the request was in flight") and
// tells the requester so. A crash after the outcome's write and before the
// delivery: the redelivered intake message finds the run finished and
// delivers again from the stored response (at least once; results carry a
// Nats-Msg-Id, so a stream capturing them drops the repeat).

// Headers of replies and results messages.
const (
	HeaderRunID      = "Batchd-Run-Id"
	HeaderState      = "Batchd-State"
	HeaderStatus     = "Batchd-Status" // the endpoint's HTTP status
	HeaderDeployment = "Batchd-Deployment"
	HeaderPipeline   = "Batchd-Pipeline"
	// HeaderDuplicate marks the answer to a duplicate request: the outcome
	// of the run its key already had.
	HeaderDuplicate = "Batchd-Duplicate"
)

// SubjectResults is where online runs' outcomes are published when no
// requester waits for them: batchd.results.<pipeline>.
const SubjectResults = "batchd.results"

// ResultsSubject is the results subject of pipeline.
func ResultsSubject(pipeline string) string { return SubjectResults + "." + subjectToken(pipeline) }

// OnlineErrorBody is the body of a reply or results message for an online
// run that did not complete (and of a completed one whose response cannot
// be delivered). A completed run's message body is the endpoint's response
// itself; Batchd-State tells the two apart.
type OnlineErrorBody struct {
	RunID string `json:"run_id"`
	State State  `json:"state"`
	Error string `json:"error"`
	// Status is the endpoint's HTTP status, when it answered.
	Status int `json:"status,omitempty"`
	// Body is the endpoint's answer, when it sent one.
	Body      string `json:"body,omitempty"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// onlineDecision is the decision every online run records: the
// data-access preflight checks input and output URIs of batch jobs, and an
// online request has none.
func onlineDecision(at time.Time) *datastores.Decision {
	const why = "online request: the data-access preflight does not apply (the request names no input or output URIs; the endpoint reads only the request body)"
	return &datastores.Decision{
		Access:  []datastores.Access{},
		Checks:  []datastores.Check{{Name: "not-applicable", Result: datastores.Pass, Reason: why}},
		Verdict: datastores.Allow,
		At:      at,
	}
}

// onlineSlots are the per-replica request slots of online endpoints
// (max_concurrent_requests), one buffered channel per endpoint.
type onlineSlots struct {
	mu sync.Mutex
	m  map[string]chan struct{}
}

func (s *onlineSlots) sem(endpoint string, n int) chan struct{} {
	if n <= 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]chan struct{}{}
	}
	c := s.m[endpoint]
	if c == nil || cap(c) != n {
		c = make(chan struct{}, n)
		s.m[endpoint] = c
	}
	return c
}

// onlineOutcome is what a step decided for an online run, to be written
// onto the current record (again, after a concurrent change).
type onlineOutcome struct {
	state   State
	reason  string
	errText string
	call    *OnlineCall
	// full is the endpoint's whole answer body (the stored one may be cut).
	full []byte
	// rid, when set: the record must still be in this submission.
	rid string
}

// stepOnline takes a received (or safe-to-repeat) online run through one
// request: render, decision, slot, submitting, Score, outcome.
func (o *Orchestrator) stepOnline(st *step, p *Pipeline, note string) (settle, error) {
	ctx, stop, r, rev, d := st.ctx, st.stop, st.r, st.rev, st.d
	start := o.now()
	// A request (with its wait for a slot) may outlast the consumer's
	// AckWait: keep the message ours meanwhile, so that it is not handed
	// to another worker mid-request.
	defer keepInProgress(d.msg, o.opts.ackWait()/3)()
	r.Endpoint = p.Endpoint.Name
	r.Decision = onlineDecision(start)
	body, err := p.RenderRequest(r.ID, r.Event)
	if err != nil {
		reason := "the event does not fit the pipeline's request template: " + err.Error()
		o.met.online.WithLabelValues(p.Endpoint.Name, string(StateRejected)).Inc()
		return o.finishOnline(ctx, r, rev, onlineOutcome{state: StateRejected, reason: reason, errText: reason})
	}
	deadline := start.Add(p.budget())

	limit := p.Endpoint.MaxConcurrentRequests
	if limit > 0 {
		limit = o.concurrencyShare(limit)
	}
	sem := o.slots.sem(p.Endpoint.Name, limit)
	if sem != nil {
		select {
		case sem <- struct{}{}:
		default:
			o.met.admissionWaits.WithLabelValues(p.Endpoint.Name, "max_concurrent_requests").Inc()
			t := time.NewTimer(deadline.Sub(o.now()))
			select {
			case sem <- struct{}{}:
				t.Stop()
			case <-t.C:
				reason := fmt.Sprintf("no request slot of endpoint %s came free within the timeout of %s (max_concurrent_requests %d across replicas; %d on this one)",
					p.Endpoint.Name, p.budget(), p.Endpoint.MaxConcurrentRequests, limit)
				o.met.online.WithLabelValues(p.Endpoint.Name, string(StateTimedOut)).Inc()
				return o.finishOnline(ctx, r, rev, onlineOutcome{state: StateTimedOut, reason: reason, errText: reason})
			case <-stop.Done():
				t.Stop()
				return nakAfter(0), nil // nothing written: another replica, or the next start, takes it
			}
		}
		defer func() { <-sem }()
	}

	now := o.now()
	attempt := r.Attempts + 1
	rid := requestID(r.ID, r.Sys.Gen, attempt, 0)
	call := &OnlineCall{RequestBytes: len(body), RequestID: rid, Deployment: p.Endpoint.Online.Deployment}
	if p.Response.Store {
		call.Request, call.RequestTruncated = cut(body, p.maxBytes())
	}
	what := fmt.Sprintf("sending the request to online endpoint %s", p.Endpoint.Name)
	if note != "" {
		what += " (" + note + ")"
	}
	if err := r.toSubmitting(what, now); err != nil {
		return settle{}, err
	}
	r.Online = call
	r.Attempts = attempt
	r.Error = ""
	r.Sys.SubmitDeadline = deadline.Add(o.opts.submitMargin)
	if _, err := o.ledger.put(ctx, r, rev); err != nil {
		return settle{}, err
	}
	o.logRun(r)
	_ = d.msg.InProgress()
	// As for a batch POST: shutdown does not interrupt the request or the
	// recording of its answer; the request's own deadline bounds it.
	wctx := context.WithoutCancel(ctx)
	sctx, cancel := context.WithDeadline(wctx, deadline)
	resp, serr := o.scorer.Score(sctx, *p.Endpoint.Online, online.Request{Body: body, RequestID: rid, SafeToRepeat: p.SafeToRepeat})
	cancel()
	rctx, cancel := context.WithTimeout(wctx, recordTimeout)
	defer cancel()
	return o.afterScore(rctx, r, p, call, resp, serr)
}

// keepInProgress tells JetStream every interval that m is still being
// worked on, until the returned stop is called.
func keepInProgress(m jetstream.Msg, every time.Duration) (stop func()) {
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock()
	defer mu.Unlock()
	t = time.AfterFunc(every, func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		_ = m.InProgress()
		t.Reset(every)
	})
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}

// afterScore records the answer (or its absence) and finishes the run.
func (o *Orchestrator) afterScore(ctx context.Context, r *record, p *Pipeline, call *OnlineCall, resp *online.Response, serr error) (settle, error) {
	now := o.now()
	ep := p.Endpoint.Name
	out := onlineOutcome{call: call, rid: call.RequestID}
	answer := resp
	if serr == nil {
		out.state = StateCompleted
		out.reason = fmt.Sprintf("online endpoint %s answered %d in %s", ep, resp.StatusCode, resp.Latency.Round(time.Microsecond))
		if resp.Deployment != "" {
			out.reason += " (deployment " + resp.Deployment + ")"
		}
	} else {
		var oe *online.Error
		if errors.As(serr, &oe) {
			answer = oe.Response
		}
		out.errText = serr.Error()
		switch jobs.Classify(serr) {
		case jobs.Refused:
			out.state, out.reason = StateRejected, "the request was refused: "+out.errText
		case jobs.Failed:
			out.state, out.reason = StateFailed, "the endpoint failed the request: "+out.errText
		case jobs.TimedOut:
			out.state, out.reason = StateTimedOut, fmt.Sprintf("no answer within the timeout of %s: %s", p.budget(), out.errText)
		default: // jobs.Ambiguous (Score's errors classify themselves: no other outcome comes)
			out.state = StateUnknown
			out.reason = "scoring outcome unknown: the request was sent and no answer came (" + out.errText + "); it was not sent again because the pipeline is not safe_to_repeat: an operator may `batchd runs retry` or `batchd runs resolve` it"
		}
	}
	if answer != nil {
		call.Response = p.responseRecord(answer, now)
		out.full = answer.Body
		o.met.onlineLatency.WithLabelValues(ep).Observe(answer.Latency.Seconds())
	}
	o.met.online.WithLabelValues(ep, string(out.state)).Inc()
	return o.finishOnline(ctx, r, 0, out)
}

// responseRecord is what a run keeps of an answer.
func (p *Pipeline) responseRecord(a *online.Response, at time.Time) *OnlineResponse {
	rr := &OnlineResponse{Status: a.StatusCode, ContentType: a.ContentType, BodyBytes: len(a.Body), Deployment: a.Deployment,
		LatencyMS: float64(a.Latency.Microseconds()) / 1000, Attempts: a.Attempts, At: at}
	if p.Response.Store {
		rr.Body, rr.Truncated = cut(a.Body, p.maxBytes())
	} else {
		rr.NotStored = len(a.Body) > 0
	}
	return rr
}

func (p *Pipeline) maxBytes() int {
	if p.Response.MaxBytes <= 0 {
		return DefaultResponseMaxBytes
	}
	return min(p.Response.MaxBytes, MaxResponseMaxBytes)
}

// cut returns at most n bytes of b as text, never splitting a UTF-8
// sequence, and whether it cut.
func cut(b []byte, n int) (string, bool) {
	if len(b) <= n {
		return string(b), false
	}
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return string(b[:n]), true
}

// finishOnline writes the outcome onto the run (reading it again after a
// concurrent change, such as a duplicate counted on it) and delivers it.
// rev 0 means "read the record first". A record that left the submission
// (out.rid) is not ours to write: the step is driven again.
func (o *Orchestrator) finishOnline(ctx context.Context, r *record, rev uint64, out onlineOutcome) (settle, error) {
	for i := 0; ; i++ {
		if rev == 0 {
			x, xrev, err := o.ledger.get(ctx, r.ID)
			if err != nil {
				return settle{}, err
			}
			if out.rid != "" && !(x.State == StateSubmitting && x.Online != nil && x.Online.RequestID == out.rid) {
				o.log.Warn("online answer arrived after the run moved on", "run", r.ID, "state", x.State)
				return settle{}, errRedrive
			}
			if out.call != nil {
				x.Online = out.call
			}
			if x.Decision == nil {
				x.Decision = r.Decision
			}
			x.Endpoint = r.Endpoint
			r, rev = x, xrev
		}
		r.full = out.full
		var s settle
		var err error
		if out.state == StateUnknown {
			s, err = o.onlineUnknown(ctx, r, rev, out.reason, out.errText)
		} else {
			s, err = o.finish(ctx, r, rev, out.state, out.reason, out.errText)
		}
		if err == nil || i >= 5 || ctx.Err() != nil {
			return s, err
		}
		if out.rid == "" {
			// Decided from the record alone (a rejection before the
			// request): decide again from the fresh one.
			return settle{}, errRedrive
		}
		// The answer is in hand, and losing it would turn a scored request
		// into an unknown one: read the record again and write the outcome
		// onto it, after a short wait if the write failed outright.
		if !errors.Is(err, errConflict) {
			o.log.Warn("recording an online outcome failed; trying again", "run", r.ID, "err", err)
			if backoff.Sleep(ctx, time.Duration(50<<i)*time.Millisecond) != nil {
				return settle{}, err
			}
		}
		rev = 0
	}
}

// onlineUnknown parks an online run whose outcome is not known: an
// operator decides (there is no job to reconcile). The tracker carries it.
func (o *Orchestrator) onlineUnknown(ctx context.Context, r *record, rev uint64, reason, errText string) (settle, error) {
	if err := r.toUnknown(errText, reason, o.now()); err != nil {
		return settle{}, err
	}
	if _, err := o.ledger.put(ctx, r, rev); err != nil {
		return settle{}, err
	}
	o.logRun(r)
	o.deliverOnline(ctx, r, r.full, "", false)
	if err := o.publishTracker(ctx, r, false); err != nil {
		return settle{}, err
	}
	return ack(), nil
}

// stepOnlineFoundSubmitting is the crash rule for online runs: a run found
// in submitting after its SubmitDeadline had its request cut off. It is
// scored again when the pipeline is safe_to_repeat; otherwise it becomes
// unknown and the requester is told.
func (o *Orchestrator) stepOnlineFoundSubmitting(st *step) (settle, error) {
	ctx, r, rev := st.ctx, st.r, st.rev
	now := o.now()
	if now.Before(r.Sys.SubmitDeadline) {
		return nakAfter(r.Sys.SubmitDeadline.Sub(now) + 100*time.Millisecond), nil
	}
	o.met.online.WithLabelValues(r.Endpoint, "interrupted").Inc()
	if p := o.pipelines[r.Pipeline]; p != nil && p.IsOnline() && p.SafeToRepeat {
		return o.stepOnline(st, p, fmt.Sprintf("attempt %d: batchd stopped while the previous request was in flight, and the pipeline is safe_to_repeat", r.Attempts+1))
	}
	const why = "scoring outcome unknown: batchd stopped while the request was in flight"
	reason := why + "; it was not sent again because the pipeline is not safe_to_repeat: an operator may `batchd runs retry` or `batchd runs resolve` it"
	return o.onlineUnknown(ctx, r, rev, reason, why)
}

// replyTo is the requester's reply subject, when the run's first
// generation came from a request whose trigger deferred the reply. Later
// generations (operator retries) and replays publish results instead:
// their requester is long gone.
func replyTo(r *record) string {
	if m := r.Event.Message; m != nil && m.ReplyDeferred && r.Sys.Gen == 0 && r.Source == SourceNATS {
		return m.Reply
	}
	return ""
}

// deliverOnline sends an online run's outcome to its requester (reply),
// or to batchd.results.<pipeline>. full is the endpoint's whole answer
// (nil: use the stored one). Delivery is core NATS: best effort, logged
// when it fails. to overrides the destination (a duplicate's requester).
func (o *Orchestrator) deliverOnline(ctx context.Context, r *record, full []byte, to string, duplicate bool) {
	nc := o.js.Conn()
	m := nats.NewMsg("")
	via := "reply"
	switch {
	case to != "":
		m.Subject = to
		via = "duplicate"
	case replyTo(r) != "":
		m.Subject = replyTo(r)
	default:
		m.Subject = ResultsSubject(r.Pipeline)
		via = "results"
		m.Header.Set(jetstream.MsgIDHeader, r.ID+"."+strconv.Itoa(r.Sys.Gen)+".result")
	}
	if via != "results" {
		c, err := o.replyConn(r.Pipeline)
		if err != nil {
			o.log.Warn("online outcome not delivered", "run", r.ID, "via", via, "subject", m.Subject, "err", err)
			o.met.onlineDeliveries.WithLabelValues(r.Pipeline, via, "error").Inc()
			return
		}
		nc = c
	}
	m.Header.Set(HeaderRunID, r.ID)
	m.Header.Set(HeaderPipeline, r.Pipeline)
	m.Header.Set(HeaderState, string(r.State))
	if duplicate {
		m.Header.Set(HeaderDuplicate, "true")
	}
	var resp *OnlineResponse
	if r.Online != nil {
		resp = r.Online.Response
	}
	if resp != nil {
		m.Header.Set(HeaderStatus, strconv.Itoa(resp.Status))
		if resp.Deployment != "" {
			m.Header.Set(HeaderDeployment, resp.Deployment)
		}
	}
	m.Data = onlineBody(r, resp, full, duplicate)
	if max := nc.MaxPayload(); int64(len(m.Data))+4096 > max {
		m.Data = errorJSON(r, resp, fmt.Sprintf("the response is %d bytes, more than NATS carries in one message (max_payload %d); it is recorded on the run as the pipeline's response policy allows", len(m.Data), max), duplicate, false)
	}
	result := "ok"
	if err := nc.PublishMsg(m); err != nil {
		result = "error"
		o.log.Warn("online outcome not delivered", "run", r.ID, "via", via, "subject", m.Subject, "err", err)
	}
	o.met.onlineDeliveries.WithLabelValues(r.Pipeline, via, result).Inc()
}

// ReplyConns gives the connection a pipeline's NATS trigger receives
// requests on (natsmsg.ReplyConns implements it).
type ReplyConns interface {
	ReplyConn(pipeline string) (*nats.Conn, bool)
}

// errNoReplyConn: this replica does not run the pipeline's NATS trigger,
// so it has no connection to the server the requester is on.
var errNoReplyConn = errors.New("no connection of the pipeline's NATS trigger on this replica (a reply goes out where its request came in)")

// replyConn is where a reply to a request of pipeline goes out: the
// connection its trigger received the request on, or, without
// Options.ReplyConns, the daemon's own.
func (o *Orchestrator) replyConn(pipeline string) (*nats.Conn, error) {
	if o.opts.ReplyConns == nil {
		return o.js.Conn(), nil
	}
	if nc, ok := o.opts.ReplyConns.ReplyConn(pipeline); ok {
		return nc, nil
	}
	return nil, fmt.Errorf("pipeline %s: %w", pipeline, errNoReplyConn)
}

// onlineBody is the body of a reply or results message: the endpoint's
// response for a completed run, an OnlineErrorBody otherwise.
func onlineBody(r *record, resp *OnlineResponse, full []byte, duplicate bool) []byte {
	if r.State == StateCompleted {
		switch {
		case full != nil:
			return full
		case resp != nil && !resp.Truncated && !resp.NotStored:
			return []byte(resp.Body)
		}
		return errorJSON(r, resp, "the run completed, but its response was not kept in full (the pipeline's response policy), so it cannot be sent again; see the run", duplicate, false)
	}
	msg := r.Error
	if msg == "" {
		msg = r.lastReason()
	}
	if r.State == StateReceived || r.State == StateSubmitting || r.State == StateWaiting {
		msg = "a request with the same key is still being scored (run " + r.ID + "); ask again later"
	}
	b := errorJSON(r, resp, msg, duplicate, true)
	if full != nil && resp != nil {
		var e OnlineErrorBody
		_ = json.Unmarshal(b, &e)
		e.Body, _ = cut(full, 8<<10)
		b, _ = json.Marshal(e)
	}
	return b
}

func errorJSON(r *record, resp *OnlineResponse, msg string, duplicate, withBody bool) []byte {
	e := OnlineErrorBody{RunID: r.ID, State: r.State, Error: msg, Duplicate: duplicate}
	if resp != nil {
		e.Status = resp.Status
		if withBody && !resp.NotStored {
			e.Body = resp.Body
		}
	}
	b, _ := json.Marshal(e)
	return b
}

// settled reports whether an online run has an outcome to tell a
// requester: finished, or unknown.
func settled(r *record) bool { return r.State.Terminal() || r.State == StateUnknown }

// AnswerDuplicate answers a deferred request (reply) whose event was a
// duplicate of run runID (a repeated Nats-Msg-Id): with the run's outcome,
// marked Batchd-Duplicate, and never by scoring again. A run still in
// flight is waited for, up to its deadline; the answer then says it is
// still in flight. A completed run whose response was not kept in full is
// answered with an error saying so.
func (o *Orchestrator) AnswerDuplicate(ctx context.Context, pipeline, runID, reply string) error {
	if reply == "" {
		return nil
	}
	wait := 5 * time.Millisecond
	giveUp := time.Now().Add(online.DefaultTimeout + o.opts.submitMargin)
	for {
		r, _, err := o.ledger.get(ctx, runID)
		if err != nil && !errors.Is(err, ErrRunNotFound) {
			return err
		}
		if err == nil {
			if !r.Sys.SubmitDeadline.IsZero() {
				giveUp = r.Sys.SubmitDeadline
			} else if p := o.pipelines[r.Pipeline]; p != nil {
				giveUp = r.Created.Add(p.budget() + o.opts.submitMargin + 5*time.Second)
			}
			if settled(r) || time.Now().After(giveUp) {
				o.deliverOnline(ctx, r, nil, reply, true)
				return nil
			}
		} else if time.Now().After(giveUp) {
			// The intake holds the event but no worker took it in time.
			b, _ := json.Marshal(OnlineErrorBody{RunID: runID, State: StateReceived, Duplicate: true,
				Error: "a request with the same key was accepted and is waiting to be scored (run " + runID + "); ask again later"})
			m := nats.NewMsg(reply)
			m.Header.Set(HeaderRunID, runID)
			m.Header.Set(HeaderState, string(StateReceived))
			m.Header.Set(HeaderDuplicate, "true")
			m.Data = b
			nc, err := o.replyConn(pipeline)
			if err != nil {
				return err
			}
			return nc.PublishMsg(m)
		}
		if err := backoff.Sleep(ctx, wait); err != nil {
			return err
		}
		wait = min(2*wait, 100*time.Millisecond)
	}
}
