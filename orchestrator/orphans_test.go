package orchestrator

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/batchd/batchd/jobs"
)

// A run whose tracker message is gone (a write lost across a NATS leader
// change, an operator's purge) is driven by nothing: the orphan scan finds
// it at the next start and drives it again, and counts it.
func TestOrphanScanRevivesRunWithoutTrackerMessage(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	sub := newFakeSub()
	sub.final = jobs.StatusRunning // the job keeps running until we say
	p := testPipeline(t, "p", nil)
	h := startOn(t, b, []*Pipeline{p}, sub)
	id := h.emit("p", "k1", "azureml://datastores/ds/paths/a.csv")
	h.waitState(id, StateRunning, 10*time.Second)
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}

	// The tracker message is lost.
	st, err := b.JS.Stream(t.Context(), StreamTrack)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(t.Context(), jetstream.WithPurgeSubject(trackSubject(id))); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetLastMsgForSubject(t.Context(), trackSubject(id)); err == nil {
		t.Fatal("the tracker message is still there")
	}
	sub.mu.Lock()
	sub.final = jobs.StatusCompleted
	for _, j := range sub.jobs {
		j.final = jobs.StatusCompleted
	}
	sub.mu.Unlock()

	h2 := startOn(t, b, []*Pipeline{p}, sub, func(o *Options) { o.OrphanAge = time.Nanosecond })
	defer func() {
		if t.Failed() {
			t.Logf("logs:\n%s", h2.logs.String())
		}
	}()
	h2.waitState(id, StateCompleted, 10*time.Second)
	if n := testutil.ToFloat64(h2.o.met.orphansRevived); n != 1 {
		t.Errorf("batchd_orphans_revived_total = %v, want 1", n)
	}
	// A run driven by its message is not an orphan.
	id2 := h2.emit("p", "k2", "azureml://datastores/ds/paths/b.csv")
	h2.waitState(id2, StateCompleted, 10*time.Second)
	if n, err := h2.o.scanOrphans(t.Context()); err != nil || n != 0 {
		t.Errorf("scan with every run finished = %d, %v; want 0", n, err)
	}
}
