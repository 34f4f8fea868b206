package orchestrator

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The same key is the same run for as long as a source can redeliver it
// (Event Grid: 24 h), whatever the pipeline's retention. A run whose record
// left the ledger after a short retention is remembered by its identity
// record: its event delivered again, after the intake's duplicate window, is
// recorded as a duplicate with the reason, and nothing is submitted.
func TestSameKeyAfterRetentionIsStillTheSameRun(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	p := testPipeline(t, "p", nil)
	p.Retention = time.Second
	h := newHarness(t, []*Pipeline{p}, sub)
	ev := Event{Pipeline: "p", Key: "blob@etag1", Source: SourceEventGrid, Fields: map[string]string{"uri": "azureml://datastores/ds/paths/a.csv"}}
	rc, err := h.o.Emit(t.Context(), ev)
	if err != nil {
		t.Fatal(err)
	}
	h.waitState(rc.RunID, StateCompleted, 10*time.Second)
	waitFor(t, 20*time.Second, "the finished run to leave the ledger", func() bool {
		_, err := h.o.Get(t.Context(), rc.RunID)
		return errors.Is(err, ErrRunNotFound)
	})

	// Event Grid delivers the event again, past the intake stream's
	// duplicate window (a fresh message id stands for that).
	ev.Time = time.Now().UTC()
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(intakeSubject("p", rc.RunID))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, rc.RunID+".later")
	if _, err := h.b.JS.PublishMsg(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	r := h.waitState(rc.RunID, StateDuplicate, 10*time.Second)
	if reason := r.History[len(r.History)-1].Reason; !strings.Contains(reason, "already ran as this run") || !strings.Contains(reason, "completed") {
		t.Errorf("reason %q, want it to name the earlier outcome", reason)
	}
	if submits, _ := sub.counts(); submits != 1 {
		t.Errorf("submits = %d, want 1: the redelivered event must not run again", submits)
	}
}

// A run reports one final state: when two writers race to finish it, only
// the one whose ledger write won publishes a completion message.
func TestCompletionOnlyForTheWinningWrite(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = "Running"
	h := newHarness(t, []*Pipeline{testPipeline(t, "p", nil)}, sub)
	id := h.emit("p", "k", "azureml://datastores/ds/paths/a.csv")
	h.waitState(id, StateRunning, 10*time.Second)
	r, rev, err := h.o.ledger.get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	r2 := *r
	if _, err := h.o.finish(t.Context(), r, rev, StateCompleted, "job completed", ""); err != nil {
		t.Fatalf("first finish: %v", err)
	}
	if _, err := h.o.finish(t.Context(), &r2, rev, StateCanceled, "canceled by an operator", ""); !errors.Is(err, errConflict) {
		t.Fatalf("second finish on the same revision = %v, want a conflict", err)
	}
	st, err := h.b.JS.Stream(t.Context(), StreamRuns)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetLastMsgForSubject(t.Context(), CompletionSubject("p", StateCanceled)); !errors.Is(err, jetstream.ErrMsgNotFound) {
		t.Errorf("a completion message for the losing write (canceled) was published (err %v)", err)
	}
	if _, err := st.GetLastMsgForSubject(t.Context(), CompletionSubject("p", StateCompleted)); err != nil {
		t.Errorf("no completion message for the winning write: %v", err)
	}
}
