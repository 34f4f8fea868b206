package orchestrator

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
)

func TestEventRunsToCompletion(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	ctx := t.Context()

	// Subscribe to completion messages before anything finishes.
	done, err := h.b.Conn.SubscribeSync(SubjectRuns + ".>")
	if err != nil {
		t.Fatalf("SubscribeSync: %v", err)
	}
	defer func() { _ = done.Unsubscribe() }()

	id := h.emit("score", "file-1", "https://acct.blob.core.windows.net/c/in/file-1.csv")
	if want := RunID("score", "file-1"); id != want {
		t.Fatalf("Emit run id = %s, want %s", id, want)
	}
	r := h.waitState(id, StateCompleted, 10*time.Second)

	want := []State{StateReceived, StateSubmitting, StateSubmitted, StateRunning, StateCompleted}
	if diff := cmp.Diff(want, states(r)); diff != "" {
		t.Errorf("history states (-want +got):\n%s%s", diff, historyString(r))
	}
	if r.Job == nil || r.Job.Name != "job-001" || r.Job.Status != jobs.StatusCompleted {
		t.Errorf("job = %+v, want job-001 Completed", r.Job)
	}
	if r.Decision == nil || r.Decision.Verdict != datastores.Allow {
		t.Errorf("decision = %+v, want a recorded allow", r.Decision)
	}
	if r.Request == nil || r.Request.Inputs["data"].URI != "https://acct.blob.core.windows.net/c/in/file-1.csv" {
		t.Errorf("request = %+v, want the rendered input", r.Request)
	}
	if r.Request.RequestID == "" || r.Job.RequestID != r.Request.RequestID {
		t.Errorf("request id: request %q, job %q; want the same, recorded before the POST", r.Request.RequestID, r.Job.RequestID)
	}
	if r.Attempts != 1 {
		t.Errorf("Attempts = %d, want 1", r.Attempts)
	}
	if submits, created := sub.counts(); submits != 1 || created != 1 {
		t.Errorf("submits, jobs = %d, %d; want 1, 1", submits, created)
	}

	msg, err := done.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("completion message: %v", err)
	}
	if want := "batchd.runs.score.completed"; msg.Subject != want {
		t.Errorf("completion subject = %q, want %q", msg.Subject, want)
	}
	var c Completion
	if err := json.Unmarshal(msg.Data, &c); err != nil {
		t.Fatalf("completion body: %v", err)
	}
	if c.RunID != id || c.Job == nil || c.Job.Name != "job-001" || c.Inputs["data"] == "" || c.State != StateCompleted {
		t.Errorf("completion = %+v, want run %s, job job-001, its inputs", c, id)
	}
	if c.Durations.Total <= 0 {
		t.Errorf("completion total duration = %v, want > 0", c.Durations.Total)
	}
	// The completion stream keeps it for downstream consumers.
	st, err := h.b.JS.Stream(ctx, StreamRuns)
	if err != nil {
		t.Fatalf("Stream(%s): %v", StreamRuns, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("Info: %v", err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("completion stream holds %d messages, want 1", info.State.Msgs)
	}
}

func TestDuplicateEventsSubmitOnce(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	ctx := t.Context()

	ev := Event{Pipeline: "score", Key: "k1", Source: SourceEventGrid, Fields: map[string]string{"uri": "https://a.blob.core.windows.net/c/x"}}
	first, err := h.o.Emit(ctx, ev)
	if err != nil {
		t.Fatalf("Emit: %v", err)
	}
	second, err := h.o.Emit(ctx, ev)
	if err != nil {
		t.Fatalf("Emit again: %v", err)
	}
	if first.Duplicate || !second.Duplicate || first.RunID != second.RunID {
		t.Errorf("receipts = %+v, %+v; want the same run, the second a duplicate", first, second)
	}
	h.waitState(first.RunID, StateCompleted, 10*time.Second)

	// A redelivery after the stream's duplicate window: a new message with
	// another id. The worker finds the run and counts it.
	b, _ := json.Marshal(ev)
	m := nats.NewMsg(intakeSubject("score", first.RunID))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, "late-redelivery")
	if _, err := h.b.JS.PublishMsg(ctx, m); err != nil {
		t.Fatalf("publish: %v", err)
	}
	waitFor(t, 5*time.Second, "duplicate counted", func() bool {
		r, err := h.o.Get(ctx, first.RunID)
		return err == nil && r.Duplicates == 1
	})
	if submits, _ := sub.counts(); submits != 1 {
		t.Errorf("submits = %d, want 1", submits)
	}
}

func TestDecisionsThatEndARun(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{
		{err: &jobs.APIError{Op: jobs.OpSubmit, Method: "POST", StatusCode: 400, Code: "UserError", Message: "bad input type"}},
		{err: &jobs.APIError{Op: jobs.OpSubmit, Method: "POST", StatusCode: 415}},
	}
	strict := testPipeline(t, "strict", nil)
	uri, err := CompileTemplate("{{ .Fields.uri }}/{{ .Fields.day }}")
	if err != nil {
		t.Fatal(err)
	}
	strict.Inputs = map[string]IOTemplate{"data": {Type: jobs.TypeUriFolder, URI: uri}}
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil), strict}, sub)

	tests := []struct {
		name       string
		pipeline   string
		uri        string
		wantState  State
		wantReason string
	}{
		{"the endpoint refuses the job (400)", "score", "https://a.blob.core.windows.net/c/ok", StateRejected, "the endpoint refused the job"},
		{"the preflight rejects the input", "score", "https://a.blob.core.windows.net/forbidden/x", StateRejected, "preflight check rejected the job: input data: not in the allow list"},
		{"the event lacks a field a template reads", "strict", "https://a.blob.core.windows.net/c/x", StateRejected, "no value for .Fields.day"},
		// Any 4xx but 408 and 429 is an answer, and a refusal: nothing to reconcile.
		{"the endpoint refuses the job (415)", "score", "https://a.blob.core.windows.net/c/ok2", StateRejected, "the endpoint refused the job"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := h.emit(tt.pipeline, fmt.Sprintf("k%d", i), tt.uri)
			r := h.waitState(id, tt.wantState, 10*time.Second)
			if got := r.History[len(r.History)-1].Reason; !strings.Contains(got, tt.wantReason) {
				t.Errorf("reason = %q, want it to contain %q", got, tt.wantReason)
			}
			if r.Error == "" {
				t.Errorf("Error is empty, want the reason")
			}
		})
	}
	if r, _ := h.o.Get(t.Context(), RunID("score", "k1")); r.Decision == nil || r.Decision.Verdict != datastores.Reject {
		t.Errorf("preflight rejection: decision = %+v, want a recorded reject", r.Decision)
	}
	if submits, _ := sub.counts(); submits != 2 {
		t.Errorf("submits = %d, want 2 (only the endpoint's cases reach it)", submits)
	}
}

func TestRecordIsIdempotent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, newFakeSub())
	ctx := t.Context()
	ev := Event{Key: "https://a.blob.core.windows.net/c/readme.txt@0x1", Source: SourceEventGrid}
	rc, err := h.o.Record(ctx, ev, StateFiltered, "matched no pipeline")
	if err != nil {
		t.Fatalf("Record: %v", err)
	}
	again, err := h.o.Record(ctx, ev, StateFiltered, "matched no pipeline")
	if err != nil {
		t.Fatalf("Record again: %v", err)
	}
	if rc.Duplicate || !again.Duplicate || rc.RunID != again.RunID {
		t.Errorf("receipts = %+v, %+v; want one run, the second a duplicate", rc, again)
	}
	r, err := h.o.Get(ctx, rc.RunID)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if r.State != StateFiltered || r.History[len(r.History)-1].Reason != "matched no pipeline" {
		t.Errorf("run = %s %q, want filtered with the reason", r.State, historyString(r))
	}
	if _, err := h.o.Record(ctx, ev, StateCompleted, "x"); err == nil || !IsRefused(err) {
		t.Errorf("Record(completed) = %v, want a permanent error", err)
	}
}

func TestEmitRefusesWhatCanNeverRun(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, newFakeSub())
	for _, ev := range []Event{
		{Pipeline: "nope", Key: "k"},
		{Pipeline: "score"},
		{Key: "k"},
		{Pipeline: "score", Key: "huge", Fields: map[string]string{"blob": strings.Repeat("x", MaxEventSize)}},
	} {
		if _, err := h.o.Emit(t.Context(), ev); err == nil || !IsRefused(err) {
			t.Errorf("Emit(%+v) = %v, want a permanent error", ev, err)
		}
	}
	if _, err := h.o.Emit(t.Context(), Event{Pipeline: "nope", Key: "k"}); !errors.Is(err, ErrUnknownPipeline) {
		t.Errorf("Emit(unknown pipeline) = %v, want ErrUnknownPipeline", err)
	}
}

// TestAPanickingStepEndsItsRunNotTheProcess: a step that panics (here in
// the POST) is recovered by the worker loop; its run ends failed with the
// reason and what to do, its message is not delivered again, and the next
// event runs as usual.
func TestAPanickingStepEndsItsRunNotTheProcess(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{{panic: "submit exploded"}}
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	bad := h.emit("score", "k1", "https://a.blob.core.windows.net/c/x")
	r := h.waitState(bad, StateFailed, 10*time.Second)
	last := r.History[len(r.History)-1].Reason
	for _, want := range []string{"batchd panicked handling this message: submit exploded", "batchd runs retry"} {
		if !strings.Contains(last, want) {
			t.Errorf("reason %q does not say %q", last, want)
		}
	}
	good := h.emit("score", "k2", "https://a.blob.core.windows.net/c/y")
	h.waitState(good, StateCompleted, 15*time.Second)
	if submits, _ := sub.counts(); submits != 2 {
		t.Errorf("submits = %d, want 2 (the panicking message is not delivered again)", submits)
	}
	if n := testutil.ToFloat64(h.o.met.poisoned.WithLabelValues(carrierIntake, "panic")); n != 1 {
		t.Errorf("batchd_messages_poisoned_total{consumer=intake,cause=panic} = %v, want 1", n)
	}
}

func TestTransientSubmitErrorIsRetried(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{
		{err: &jobs.TransportError{Op: jobs.OpSubmit, Method: "POST", Sent: false, Err: errors.New("dial tcp: connection refused")}},
	}
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	r := h.waitState(id, StateCompleted, 15*time.Second)
	if !contains(states(r), StateWaiting) {
		t.Errorf("history has no waiting entry for the retry: %s", historyString(r))
	}
	if submits, created := sub.counts(); submits != 2 || created != 1 {
		t.Errorf("submits, jobs = %d, %d; want 2, 1", submits, created)
	}
}

func TestThrottledEndpointPausesAndWaits(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{
		{err: &jobs.APIError{Op: jobs.OpSubmit, Method: "POST", StatusCode: http.StatusTooManyRequests, RetryAfter: 1 * time.Second}},
	}
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	start := time.Now()
	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	waitFor(t, 5*time.Second, "endpoint paused", func() bool {
		s, _, err := h.o.adm.load(t.Context(), "ep-score")
		return err == nil && s.PausedUntil.After(start)
	})
	r := h.waitState(id, StateCompleted, 15*time.Second)
	if !contains(states(r), StateWaiting) || !strings.Contains(historyString(r), "429") {
		t.Errorf("history does not show the 429 pause: %s", historyString(r))
	}
	var submittedAt time.Time
	for _, tr := range r.History {
		if tr.State == StateSubmitted {
			submittedAt = tr.At
		}
	}
	if submittedAt.Sub(start) < time.Second {
		t.Errorf("resubmitted %s after the 429, want after Retry-After (1s)", submittedAt.Sub(start))
	}
	if submits, created := sub.counts(); submits != 2 || created != 1 {
		t.Errorf("submits, jobs = %d, %d; want 2, 1", submits, created)
	}
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// An event for a pipeline this replica does not know waits for a replica
// that does (a rolling configuration change); after the grace it is
// rejected with the reason.
func TestEventForARemovedPipelineIsRejected(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	ctx := t.Context()
	ev := Event{Pipeline: "gone", Key: "k", Source: SourceCron, Time: time.Now().UTC()}
	old := newRecord(ev, time.Now().UTC().Add(-unknownPipelineGrace-time.Minute))
	if _, err := h.o.ledger.create(ctx, old); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(ev)
	m := nats.NewMsg(intakeSubject("gone", old.ID))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, old.ID)
	if _, err := h.b.JS.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	r := h.waitState(old.ID, StateRejected, 10*time.Second)
	if !strings.Contains(r.Error, `pipeline "gone" is not configured`) {
		t.Errorf("error = %q, want it to name the missing pipeline", r.Error)
	}
	if submits, _ := sub.counts(); submits != 0 {
		t.Errorf("submits = %d, want 0", submits)
	}
}
