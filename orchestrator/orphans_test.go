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

// The scan asks the streams whether a message drives a run before it reads
// the run: a read loads the ledger's message block that holds it, and a
// scan over every tracked run every few minutes loaded the whole ledger
// (issue 16).
func TestOrphanScanReadsNoRunThatAMessageDrives(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = jobs.StatusRunning // never ends
	h := newHarness(t, []*Pipeline{testPipeline(t, "p", nil)}, sub, func(o *Options) {
		o.OrphanAge, o.OrphanInterval = time.Nanosecond, time.Hour
	})
	const n = 10
	for i := range n {
		h.emit("p", "k"+itoa(i), "azureml://datastores/ds/paths/"+itoa(i)+".csv")
	}
	waitFor(t, 20*time.Second, "every run running", func() bool {
		c, _ := h.o.index.counts()
		return c[StateRunning] == n && h.o.views.len() == n
	})
	r0 := h.o.ledger.reads.Load()
	revived, err := h.o.scanOrphans(t.Context())
	if err != nil || revived != 0 {
		t.Fatalf("scanOrphans = %d, %v; want 0, nil", revived, err)
	}
	if reads := h.o.ledger.reads.Load() - r0; reads > 0 {
		t.Errorf("the scan read %d runs from the ledger, want none: every run has its tracker message", reads)
	}
}
