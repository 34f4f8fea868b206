package orchestrator

import (
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/orchestrator/broker"
)

// A POST in flight when shutdown starts gets the grace period to finish,
// and its answer is recorded: the run ends submitted, not unknown.
func TestShutdownLetsInFlightSubmissionFinish(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.hold = make(chan struct{})
	sub.inSubmit = make(chan struct{}, 1)
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	<-sub.inSubmit

	errc := make(chan error, 1)
	go func() { errc <- h.stop() }()
	<-h.stopping
	close(sub.hold) // the endpoint answers after shutdown began
	if err := <-errc; err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}
	r, err := h.o.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != StateSubmitted || r.Job == nil {
		t.Fatalf("state after shutdown = %s (%s), want submitted with the job", r.State, historyString(r))
	}
	// Tracking resumes on the next start.
	h2 := startOn(t, h.b, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	h2.waitState(id, StateCompleted, 10*time.Second)
}

// A POST that outlives the shutdown grace is not abandoned: it gets its
// submit timeout and its answer is recorded, so the run never becomes
// unknown because batchd was stopped.
func TestShutdownDoesNotAbandonPOST(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.hold = make(chan struct{})
	sub.inSubmit = make(chan struct{}, 1)
	short := func(o *Options) { o.ShutdownGrace = 100 * time.Millisecond }
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", testWorkspace)}, sub, short)
	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	<-sub.inSubmit
	errc := make(chan error, 1)
	go func() { errc <- h.stop() }()
	<-h.stopping
	waitFor(t, 5*time.Second, "the shutdown grace to pass", func() bool {
		return strings.Contains(h.logs.String(), "shutdown grace over")
	})
	close(sub.hold) // the endpoint answers after the grace
	if err := <-errc; err != nil {
		t.Fatalf("Run() = %v, want nil", err)
	}
	r, err := h.o.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != StateSubmitted || r.Job == nil || contains(states(r), StateUnknown) {
		t.Fatalf("state after shutdown = %s (%s), want submitted with the job, never unknown", r.State, historyString(r))
	}
}

// A crash with a POST in flight: the next start finds the run in
// submitting after its deadline and makes it unknown, then reconciles.
func TestCrashMidPOSTAndTheNextStartReconciles(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.hold = make(chan struct{})
	defer close(sub.hold)
	sub.inSubmit = make(chan struct{}, 1)
	dir := t.TempDir()
	b := startBrokerIn(t, dir)
	h := startOn(t, b, []*Pipeline{testPipeline(t, "score", testWorkspace)}, sub)
	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	<-sub.inSubmit
	b = crash(t, h, dir)

	sub2 := newFakeSub()
	h2 := startOn(t, b, []*Pipeline{testPipeline(t, "score", testWorkspace)}, sub2)
	if r, err := h2.o.Get(t.Context(), id); err != nil || r.State != StateSubmitting {
		t.Fatalf("state after the crash = %v (%v), want submitting", r, err)
	}
	r := h2.waitState(id, StateCompleted, 20*time.Second)
	if !contains(states(r), StateUnknown) {
		t.Errorf("history has no unknown entry: %s", historyString(r))
	}
	if submits, _ := sub2.counts(); submits != 1 {
		t.Errorf("submits after restart = %d, want 1 (reconciliation found no job, resubmitted once)", submits)
	}
}

// Two orchestrators share one NATS: work spreads, and each run is
// submitted exactly once.
func TestTwoReplicasSubmitEachRunOnce(t *testing.T) {
	t.Parallel()
	srv, err := broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	other, err := broker.Start(t.Context(), broker.Options{URL: srv.ClientURL()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(other.Close)

	sub := newFakeSub()
	sub.polls = 1
	p := testPipeline(t, "score", nil)
	p.Endpoint.MaxRunningJobs = 50
	a := startOn(t, srv, []*Pipeline{p}, &countingSub{fakeSub: sub})
	b := startOn(t, other, []*Pipeline{p}, &countingSub{fakeSub: sub})
	const n = 200
	ids := make([]string, n)
	for i := range n {
		em := a
		if i%2 == 1 {
			em = b
		}
		ids[i] = em.emit("score", "k"+itoa(i), "https://a.blob.core.windows.net/c/"+itoa(i))
	}
	for _, id := range ids {
		a.waitState(id, StateCompleted, 60*time.Second)
	}
	if submits, created := sub.counts(); submits != n || created != n {
		t.Errorf("submits, jobs = %d, %d; want %d, %d", submits, created, n, n)
	}
	ca, cb := a.o.sub.(*countingSub).n.Load(), b.o.sub.(*countingSub).n.Load()
	if ca == 0 || cb == 0 {
		t.Errorf("submissions per replica = %d, %d; want both to take part", ca, cb)
	}
}
