package orchestrator

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator/consumer"
)

// The step tests drive one delivery at a time through drive and the step
// functions, on an Orchestrator that is not running (no workers, no
// tracker, no repair loop) and whose clock is a stub: every outcome is
// decided by the test's inputs, with no waiting. The ledger is the real one
// on an embedded JetStream (batchd's tests never fake NATS).

// stepRig is an Orchestrator that is built but not run.
type stepRig struct {
	t   *testing.T
	o   *Orchestrator
	sub *fakeSub
	now time.Time
}

func newStepRig(t *testing.T, pipelines ...*Pipeline) *stepRig {
	t.Helper()
	b := startBroker(t)
	rig := &stepRig{t: t, sub: newFakeSub(), now: time.Date(2026, 12, 5, 12, 0, 0, 0, time.UTC)}
	opts := Options{JS: b.JS, Conn: b.Conn, Submitter: rig.sub, Checker: fakeChecker{}, Registerer: prometheus.NewRegistry(),
		Pipelines: map[string]*Pipeline{}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, p := range pipelines {
		opts.Pipelines[p.Name] = p
	}
	fastOptions(&opts)
	opts.clock = func() time.Time { return rig.now }
	o, err := New(t.Context(), opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	rig.o = o
	return rig
}

// stubMsg is the message a delivery carries. The steps read only its
// delivery count and touch its ack timer; anything else they call panics
// on the nil Msg, which fails the test.
type stubMsg struct {
	jetstream.Msg
	delivered uint64
}

func (m *stubMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{NumDelivered: m.delivered}, nil
}
func (m *stubMsg) InProgress() error    { return nil }
func (m *stubMsg) Headers() nats.Header { return nats.Header{} }

// intake drives the run of ev as its intake message (not a first
// delivery) and returns the settle and the run as recorded.
func (rig *stepRig) intake(ev Event) (settle, *record) {
	rig.t.Helper()
	id := RunID(ev.Pipeline, ev.Key)
	return rig.drive(&delivery{carrier: carrierIntake, msg: &stubMsg{delivered: 1}, ev: &ev, id: id})
}

// track drives run id as its tracker message.
func (rig *stepRig) track(id string) (settle, *record) {
	rig.t.Helper()
	return rig.drive(&delivery{carrier: carrierTracker, msg: &stubMsg{delivered: 1}, id: id})
}

func (rig *stepRig) drive(d *delivery) (settle, *record) {
	rig.t.Helper()
	ctx := rig.t.Context()
	s, err := rig.o.drive(ctx, ctx, d)
	if err != nil {
		rig.t.Fatalf("drive %s: %v", d.id, err)
	}
	r, _, err := rig.o.ledger.get(ctx, d.id)
	if err != nil {
		rig.t.Fatalf("read run %s: %v", d.id, err)
	}
	return s, r
}

func stepEvent(pipeline, key string) Event {
	return Event{Pipeline: pipeline, Key: key, Source: SourceAPI,
		Fields: map[string]string{"uri": "https://acct.blob.core.windows.net/c/" + key + ".csv"}}
}

// An event for a pipeline this replica does not know waits for a replica
// that does, for unknownPipelineGrace after the run was created, then is
// rejected with the reason.
func TestStepUnknownPipelineWaitsThenRejects(t *testing.T) {
	t.Parallel()
	rig := newStepRig(t)
	ev := stepEvent("gone", "k1")

	s, r := rig.intake(ev)
	if s.Kind != consumer.KindNak || s.Delay < 24*time.Second || s.Delay > 36*time.Second || r.State != StateReceived {
		t.Fatalf("at once: settle %+v, state %s; want a nak of 30 s ± 20%% and received", s, r.State)
	}
	rig.now = rig.now.Add(unknownPipelineGrace - time.Second)
	if s, r = rig.intake(ev); s.Kind != consumer.KindNak || r.State != StateReceived {
		t.Fatalf("a second before the grace ends: settle %+v, state %s; want nak and received", s, r.State)
	}
	rig.now = rig.now.Add(time.Second)
	s, r = rig.intake(ev)
	if s.Kind != consumer.KindAck || r.State != StateRejected || !strings.Contains(r.Error, `pipeline "gone" is not configured`) {
		t.Fatalf("when the grace ends: settle %+v, state %s, error %q; want ack, rejected and why", s, r.State, r.Error)
	}
	if last := r.History[len(r.History)-1]; !last.At.Equal(rig.now) || !r.Created.Equal(rig.now.Add(-unknownPipelineGrace)) {
		t.Errorf("created %v, rejected at %v; want the clock's times %v and %v", r.Created, last.At, rig.now.Add(-unknownPipelineGrace), rig.now)
	}
}

// What one POST's answer does to the run, by the outcome class of its
// error (jobs.Classify).
func TestStepSubmitOutcome(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		outcome   submitOutcome
		want      State
		settle    consumer.Kind
		carrier   string
		reason    string
		notBefore time.Duration // > 0: the run waits until now + this ± 20%
	}{
		{name: "accepted", outcome: submitOutcome{create: true}, want: StateSubmitted, settle: consumer.KindAck,
			carrier: carrierTracker, reason: "accepted job job-001"},
		{name: "throttled with Retry-After", outcome: submitOutcome{err: &jobs.APIError{Op: jobs.OpSubmit, Method: "POST",
			StatusCode: http.StatusTooManyRequests, RetryAfter: 7 * time.Second}},
			want: StateWaiting, settle: consumer.KindNak, carrier: carrierIntake, reason: "submissions paused until 2026-12-05T12:00:07Z"},
		{name: "not sent", outcome: submitOutcome{err: &jobs.TransportError{Op: jobs.OpSubmit, Method: "POST", URL: "https://ep",
			Err: errors.New("connection refused")}},
			want: StateWaiting, settle: consumer.KindNak, carrier: carrierIntake, reason: "transient error, retrying in", notBefore: time.Second},
		{name: "refused", outcome: submitOutcome{err: &jobs.APIError{Op: jobs.OpSubmit, Method: "POST", StatusCode: 400,
			Code: "UserError", Message: "bad input type"}},
			want: StateRejected, settle: consumer.KindAck, carrier: carrierIntake, reason: "bad input type"},
		{name: "no answer after sending", outcome: submitOutcome{err: &jobs.TransportError{Op: jobs.OpSubmit, Method: "POST",
			URL: "https://ep", Sent: true, Err: context.DeadlineExceeded}},
			want: StateUnknown, settle: consumer.KindAck, carrier: carrierTracker, reason: "outcome"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rig := newStepRig(t, testPipeline(t, "p", testWorkspace))
			rig.sub.script = []submitOutcome{tc.outcome}
			s, r := rig.intake(stepEvent("p", "k1"))
			if r.State != tc.want || s.Kind != tc.settle {
				t.Fatalf("state %s, settle %+v; want %s and settle kind %v\n%s", r.State, s, tc.want, tc.settle, r.lastReason())
			}
			if r.Sys.Carrier != tc.carrier {
				t.Errorf("carrier %q, want %q", r.Sys.Carrier, tc.carrier)
			}
			if got := r.lastReason() + " " + r.Error; !strings.Contains(got, tc.reason) {
				t.Errorf("reason %q, want it to say %q", got, tc.reason)
			}
			if w := r.Sys.NotBefore.Sub(rig.now); tc.notBefore > 0 && (w < tc.notBefore*8/10 || w > tc.notBefore*12/10) {
				t.Errorf("waits until %v, want the clock + %s ± 20%%", r.Sys.NotBefore, tc.notBefore)
			}
			if submits, _ := rig.sub.counts(); submits != 1 {
				t.Errorf("%d POSTs, want 1", submits)
			}
		})
	}
}

// A waiting run is not POSTed before its NotBefore, whatever redelivers
// it, and is at NotBefore.
func TestStepBackoffHoldsUntilNotBefore(t *testing.T) {
	t.Parallel()
	rig := newStepRig(t, testPipeline(t, "p", testWorkspace))
	rig.sub.script = []submitOutcome{{err: &jobs.TransportError{Op: jobs.OpSubmit, Method: "POST", URL: "https://ep", Err: errors.New("connection refused")}}}
	ev := stepEvent("p", "k1")
	_, r := rig.intake(ev)
	left := r.Sys.NotBefore.Sub(rig.now)
	if r.State != StateWaiting || left <= 0 {
		t.Fatalf("after a transient error: %s until %v; want waiting, with a NotBefore", r.State, r.Sys.NotBefore)
	}
	rig.now = rig.now.Add(left / 2)
	// The intake message finds the wait and hands the run to the tracker
	// (waiting runs do not hold the intake's capacity).
	s, r := rig.intake(ev)
	if s.Kind != consumer.KindAck || r.State != StateWaiting || r.Sys.Carrier != carrierTracker {
		t.Fatalf("half-way, intake: settle %+v, %s carried by %q; want ack, waiting, carried by the tracker", s, r.State, r.Sys.Carrier)
	}
	id := RunID("p", "k1")
	if s, r = rig.track(id); s.Kind != consumer.KindNak || s.Delay != left-left/2 || r.State != StateWaiting {
		t.Fatalf("half-way, tracker: settle %+v, %s; want a nak of exactly the %s left, waiting", s, r.State, left-left/2)
	}
	if s, _ = rig.intake(ev); s.Kind != consumer.KindAck {
		t.Fatalf("a stale intake message: settle %+v, want ack", s)
	}
	rig.now = r.Sys.NotBefore
	if _, r = rig.track(id); r.State != StateSubmitted {
		t.Fatalf("at NotBefore: %s, want submitted", r.State)
	}
	if submits, _ := rig.sub.counts(); submits != 2 {
		t.Errorf("%d POSTs, want 2 (the failed one and the one at NotBefore)", submits)
	}
}

// The tracker waits PollMin after the submission before the first status
// request, and a run past its pipeline's timeout is canceled and ends
// timed_out, with the reason.
func TestStepTrackerTimeout(t *testing.T) {
	t.Parallel()
	p := testPipeline(t, "p", testWorkspace)
	p.Timeout = time.Hour
	rig := newStepRig(t, p)
	_, r := rig.intake(stepEvent("p", "k1"))
	if r.State != StateSubmitted || !r.Sys.Deadline.Equal(rig.now.Add(time.Hour)) {
		t.Fatalf("after the POST: %s, deadline %v; want submitted, deadline the clock + 1h", r.State, r.Sys.Deadline)
	}
	s, r := rig.track(r.ID)
	if s.Kind != consumer.KindNak || s.Delay != rig.o.opts.PollMin || rig.sub.polls != 2 {
		t.Fatalf("at once: settle %+v; want a nak of PollMin (%s) and no status request", s, rig.o.opts.PollMin)
	}
	rig.now = rig.now.Add(time.Minute)
	if _, r = rig.track(r.ID); r.State != StateSubmitted && r.State != StateRunning {
		t.Fatalf("a minute in: %s, want still in flight", r.State)
	}
	rig.now = rig.now.Add(time.Hour)
	s, r = rig.track(r.ID)
	if s.Kind != consumer.KindAck || r.State != StateTimedOut || !strings.Contains(r.Error, "timeout of 1h0m0s passed; job job-001 canceled") {
		t.Fatalf("past the deadline: settle %+v, %s, %q; want ack, timed_out, canceled", s, r.State, r.Error)
	}
	rig.sub.mu.Lock()
	defer rig.sub.mu.Unlock()
	if len(rig.sub.cancels) != 1 || rig.sub.cancels[0] != "job-001" {
		t.Errorf("cancels %v, want [job-001]", rig.sub.cancels)
	}
}

// A move the graph does not allow is refused in the step, writes nothing,
// and is poison (the loop ends it after a bounded number of tries).
func TestStepRefusesAMoveOffTheGraph(t *testing.T) {
	t.Parallel()
	rig := newStepRig(t, testPipeline(t, "p", testWorkspace))
	_, r := rig.intake(stepEvent("p", "k1"))
	ctx := t.Context()
	cur, rev, err := rig.o.ledger.get(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	cur.Sys.Resolve = &resolveRequest{State: StateReceived, Reason: "x"}
	_, err = rig.o.requests(&step{ctx: ctx, stop: ctx, r: cur, rev: rev,
		d: &delivery{carrier: carrierTracker, msg: &stubMsg{delivered: 1}, id: r.ID}})
	var me *MoveError
	if !errors.As(err, &me) {
		t.Fatalf("resolving a submitted run to received: %v, want a MoveError", err)
	}
	after, rev2, err := rig.o.ledger.get(ctx, r.ID)
	if err != nil || rev2 != rev || after.State != StateSubmitted {
		t.Errorf("after the refused move: %s at revision %d (was %d), %v; want nothing written", after.State, rev2, rev, err)
	}
}
