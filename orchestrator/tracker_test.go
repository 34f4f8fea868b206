package orchestrator

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/backoff"
	"github.com/batchd/batchd/orchestrator/consumer"
)

// ambiguous is the error of a POST that was sent and got no answer.
func ambiguous() error {
	return &jobs.TransportError{Op: jobs.OpSubmit, Method: "POST", URL: "https://ep/jobs", Sent: true, Err: errors.New("connection reset by peer")}
}

func TestAmbiguousSubmitIsReconciledToTheExistingJob(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{{create: true, err: ambiguous()}} // the job exists; the answer was lost
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", testWorkspace)}, sub)
	// Another job with other inputs on the same endpoint must not be taken.
	sub.addJob("https://a.blob.core.windows.net/c/other", time.Now())

	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	r := h.waitState(id, StateCompleted, 15*time.Second)
	if !contains(states(r), StateUnknown) {
		t.Errorf("history has no unknown entry: %s", historyString(r))
	}
	if r.Job == nil || r.Job.Name != "job-002" {
		t.Errorf("job = %+v, want the adopted job-002", r.Job)
	}
	if !strings.Contains(historyString(r), "reconciled: adopted job job-002") {
		t.Errorf("history does not explain the adoption: %s", historyString(r))
	}
	if submits, created := sub.counts(); submits != 1 || created != 2 {
		t.Errorf("submits, jobs = %d, %d; want 1 POST (never a blind second one), 2 jobs", submits, created)
	}
}

func TestAmbiguousWithoutJobIsResubmittedOnce(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{{err: ambiguous()}} // nothing was created
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", testWorkspace)}, sub)

	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	r := h.waitState(id, StateCompleted, 15*time.Second)
	if submits, created := sub.counts(); submits != 2 || created != 1 {
		t.Errorf("submits, jobs = %d, %d; want 2, 1", submits, created)
	}
	if !strings.Contains(historyString(r), "once more after reconciliation found no job") {
		t.Errorf("history does not explain the resubmission: %s", historyString(r))
	}
}

func TestSecondAmbiguityWaitsForAnOperator(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{{err: ambiguous()}, {err: ambiguous()}}
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", testWorkspace)}, sub)
	ctx := t.Context()

	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	waitFor(t, 15*time.Second, "the run parked for an operator", func() bool {
		r, err := h.o.Get(ctx, id)
		return err == nil && r.State == StateUnknown && strings.Contains(r.History[len(r.History)-1].Reason, "an operator must")
	})
	// It stays there: more looks do not submit again.
	lists := func() int { sub.mu.Lock(); defer sub.mu.Unlock(); return sub.lists }
	n := lists()
	waitFor(t, 5*time.Second, "more reconciliation looks", func() bool { return lists() >= n+2 })
	if submits, _ := sub.counts(); submits != 2 {
		t.Fatalf("submits = %d, want 2 (the first and the one resubmission)", submits)
	}

	// The operator resolves it.
	r, err := h.o.Resolve(ctx, id, ResolveRequest{State: StateFailed, Reason: "checked in the studio: no job"})
	if err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	if r.State != StateFailed || !strings.Contains(r.History[len(r.History)-1].Reason, "resolved by an operator: checked in the studio") {
		t.Errorf("after resolve: %s %s, want failed with the operator's reason", r.State, historyString(r))
	}
}

// A run parked for an operator after reconciliation found no job gives
// its admission slot back: a few ambiguous POSTs must not shrink the
// endpoint's max_running_jobs until someone acts. A job adopted later
// takes a slot again, even past the cap.
func TestParkedRunGivesItsSlotBack(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{{err: ambiguous()}, {err: ambiguous()}}
	p := testPipeline(t, "score", testWorkspace)
	p.Endpoint.MaxRunningJobs = 1
	h := newHarness(t, []*Pipeline{p}, sub)
	ctx := t.Context()

	parked := h.emit("score", "parked", "https://a.blob.core.windows.net/c/parked")
	waitFor(t, 15*time.Second, "the run parked for an operator", func() bool {
		r, err := h.o.Get(ctx, parked)
		return err == nil && r.State == StateUnknown && strings.Contains(r.History[len(r.History)-1].Reason, "an operator must")
	})
	next := h.emit("score", "next", "https://a.blob.core.windows.net/c/next")
	h.waitState(next, StateCompleted, 15*time.Second)

	// The operator finds the parked run's job after all and adopts it: it
	// holds a slot again while it runs.
	job := sub.addJob("https://a.blob.core.windows.net/c/parked", time.Now())
	if _, err := h.o.Resolve(ctx, parked, ResolveRequest{Job: job, Reason: "found it in the studio"}); err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	held := func() int {
		s, _, err := h.o.adm.load(ctx, p.Endpoint.Name)
		if err != nil {
			t.Fatal(err)
		}
		return len(s.Slots)
	}
	waitFor(t, 5*time.Second, "the adopted job to hold a slot", func() bool {
		r, _ := h.o.Get(ctx, parked)
		return r.State.Terminal() || held() == 1
	})
	h.waitState(parked, StateCompleted, 15*time.Second)
	// The slot goes back after the terminal write.
	waitFor(t, 5*time.Second, "no slot held once every run ended", func() bool { return held() == 0 })
}

func TestUnknownWithoutWorkspaceIsResolvedByAdoptingAJob(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.script = []submitOutcome{{create: true, err: ambiguous()}}
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	ctx := t.Context()

	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	r := h.waitState(id, StateUnknown, 10*time.Second)
	if !strings.Contains(r.History[len(r.History)-1].Reason, "no workspace") {
		t.Errorf("unknown reason = %q, want it to say there is no workspace to look in", r.History[len(r.History)-1].Reason)
	}
	if _, err := h.o.Retry(ctx, RunID("score", "nope"), ""); !errors.Is(err, ErrRunNotFound) {
		t.Errorf("Retry(unknown id) = %v, want ErrRunNotFound", err)
	}
	if err := h.o.Cancel(ctx, id, ""); !errors.Is(err, ErrNotAllowed) {
		t.Errorf("Cancel(unknown run) = %v, want ErrNotAllowed", err)
	}
	if _, err := h.o.Resolve(ctx, id, ResolveRequest{State: StateRunning}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Resolve(state running) = %v, want ErrInvalid", err)
	}
	if _, err := h.o.Resolve(ctx, id, ResolveRequest{Job: "job-001", Reason: "found it in the studio"}); err != nil {
		t.Fatalf("Resolve: %v", err)
	}
	r = h.waitState(id, StateCompleted, 10*time.Second)
	if r.Job == nil || r.Job.Name != "job-001" {
		t.Errorf("job = %+v, want the adopted job-001", r.Job)
	}
	if submits, _ := sub.counts(); submits != 1 {
		t.Errorf("submits = %d, want 1", submits)
	}
}

// The crash rule: a run found in submitting after its deadline (batchd died
// between the submitting write and the POST's answer) becomes unknown and
// is reconciled; it is never posted again blindly.
func TestRunFoundSubmittingIsNotPostedAgain(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	b := startBroker(t)
	ctx := t.Context()
	p := testPipeline(t, "score", testWorkspace)
	uri := "https://a.blob.core.windows.net/c/x"

	// A previous process wrote submitting, POSTed (the job exists) and died.
	h := startOn(t, b, []*Pipeline{p}, sub)
	ev := Event{Pipeline: "score", Key: "k", Source: SourceAPI, Time: time.Now().UTC(), Fields: map[string]string{"uri": uri}}
	if err := h.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	now := time.Now().UTC()
	r := newRecord(ev, now.Add(-time.Minute))
	req, _, err := p.Render(r.ID, ev)
	if err != nil {
		t.Fatal(err)
	}
	ep := p.Endpoint.Endpoint
	r.Request, r.Endpoint, r.Sys.Endpoint = &req, p.Endpoint.Name, &ep
	r.Sys.SubmittingAt, r.Sys.ReconcileSince, r.Sys.SubmitDeadline = now.Add(-time.Minute), now.Add(-time.Minute), now.Add(-time.Second)
	r.Attempts = 1
	if err := r.move(StateSubmitting, "posting", now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.o.ledger.create(ctx, r); err != nil {
		t.Fatalf("seed ledger: %v", err)
	}
	job := sub.addJob(uri, now.Add(-50*time.Second))
	b2, _ := json.Marshal(ev)
	m := nats.NewMsg(intakeSubject("score", r.ID))
	m.Data = b2
	m.Header.Set(jetstream.MsgIDHeader, r.ID)
	if _, err := b.JS.PublishMsg(ctx, m); err != nil {
		t.Fatalf("publish: %v", err)
	}

	h2 := startOn(t, b, []*Pipeline{p}, sub)
	got := h2.waitState(r.ID, StateCompleted, 15*time.Second)
	if got.Job == nil || got.Job.Name != job {
		t.Errorf("job = %+v, want the adopted %s", got.Job, job)
	}
	if !contains(states(got), StateUnknown) {
		t.Errorf("history has no unknown entry: %s", historyString(got))
	}
	if submits, _ := sub.counts(); submits != 0 {
		t.Errorf("submits = %d, want 0", submits)
	}
}

func TestTimeoutCancelsTheJob(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		ws          *jobs.Workspace
		wantCancels int
		wantReason  string
	}{
		{"with a workspace the job is canceled", testWorkspace, 1, "job job-001 canceled"},
		{"without one the reason says it could not be", nil, 0, "could not be canceled because endpoint ep-score has no workspace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := newFakeSub()
			sub.final = jobs.StatusRunning // never ends on its own
			p := testPipeline(t, "score", tt.ws)
			p.Timeout = 300 * time.Millisecond
			h := newHarness(t, []*Pipeline{p}, sub)
			id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
			r := h.waitState(id, StateTimedOut, 10*time.Second)
			if got := r.History[len(r.History)-1].Reason; !strings.Contains(got, tt.wantReason) {
				t.Errorf("reason = %q, want it to contain %q", got, tt.wantReason)
			}
			sub.mu.Lock()
			defer sub.mu.Unlock()
			if len(sub.cancels) != tt.wantCancels {
				t.Errorf("cancels = %v, want %d", sub.cancels, tt.wantCancels)
			}
		})
	}
}

func TestRetryPolicySubmitsANewAttempt(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.finals = []jobs.Status{jobs.StatusFailed, jobs.StatusCompleted}
	sub.failMsg = "No succeeded mini batch item returned from run()"
	p := testPipeline(t, "score", nil)
	p.Retry = RetryPolicy{MaxAttempts: 2, Backoff: 50 * time.Millisecond}
	h := newHarness(t, []*Pipeline{p}, sub)

	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	r := h.waitState(id, StateCompleted, 15*time.Second)
	if r.Attempts != 2 || len(r.PreviousJobs) != 1 || r.PreviousJobs[0].Name != "job-001" || r.Job.Name != "job-002" {
		t.Errorf("attempts %d, previous %+v, job %+v; want attempt 2 with job-001 before job-002", r.Attempts, r.PreviousJobs, r.Job)
	}
	if r.PreviousJobs[0].Error != sub.failMsg {
		t.Errorf("previous job error = %q, want %q", r.PreviousJobs[0].Error, sub.failMsg)
	}
	if !strings.Contains(historyString(r), "attempt 2 of 2") {
		t.Errorf("history does not explain the retry: %s", historyString(r))
	}
}

func TestFailedJobWithoutRetryPolicyFails(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = jobs.StatusFailed
	sub.failMsg = "Dataset initialization failed"
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	r := h.waitState(id, StateFailed, 10*time.Second)
	if r.Error != sub.failMsg || r.Job.Error != sub.failMsg {
		t.Errorf("errors = %q / %q, want the job's error %q", r.Error, r.Job.Error, sub.failMsg)
	}
	// An operator retries it: a new attempt, the old job kept.
	sub.mu.Lock()
	sub.final = jobs.StatusCompleted
	sub.mu.Unlock()
	if _, err := h.o.Retry(t.Context(), id, "input fixed"); err != nil {
		t.Fatalf("Retry: %v", err)
	}
	r = h.waitState(id, StateCompleted, 10*time.Second)
	if len(r.PreviousJobs) != 1 || r.Job.Name != "job-002" || !strings.Contains(historyString(r), "retry requested by an operator: input fixed") {
		t.Errorf("after retry: previous %+v, job %+v, history %s", r.PreviousJobs, r.Job, historyString(r))
	}
}

func TestMaxRunningJobsIsRespected(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.polls = 3
	p := testPipeline(t, "score", nil)
	p.Endpoint.MaxRunningJobs = 1
	h := newHarness(t, []*Pipeline{p}, sub)
	var ids []string
	for _, k := range []string{"a", "b", "c"} {
		ids = append(ids, h.emit("score", k, "https://a.blob.core.windows.net/c/"+k))
	}
	for _, id := range ids {
		h.waitState(id, StateCompleted, 20*time.Second)
	}
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.maxLive != 1 {
		t.Errorf("most jobs running at once = %d, want 1", sub.maxLive)
	}
	waited := 0
	for _, id := range ids {
		r, _ := h.o.Get(t.Context(), id)
		if contains(states(r), StateWaiting) {
			waited++
		}
	}
	if waited == 0 {
		t.Errorf("no run recorded a wait for admission")
	}
	// A slot is given back just after the run's terminal write.
	waitFor(t, 5*time.Second, "every slot to be given back", func() bool {
		s, _, err := h.o.adm.load(t.Context(), "ep-score")
		return err == nil && len(s.Slots) == 0
	})
}

func TestPollInterval(t *testing.T) {
	t.Parallel()
	tests := []struct {
		age, want time.Duration
	}{
		{0, 10 * time.Second},
		{30 * time.Second, 10 * time.Second},
		{5 * time.Minute, 30 * time.Second},
		{30 * time.Minute, 3 * time.Minute},
		{10 * time.Hour, 5 * time.Minute},
	}
	for _, tt := range tests {
		if got := pollInterval(tt.age, 10*time.Second, 5*time.Minute); got != tt.want {
			t.Errorf("pollInterval(%s) = %s, want %s", tt.age, got, tt.want)
		}
	}
}

// The poll budget: within it a poll goes ahead at once; over it by more
// than a moment the message is handed back for later instead of blocking a
// tracker slot.
func TestPollBudget(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		o := &Orchestrator{opts: Options{PollBudget: 2}, limiters: map[string]*rate.Limiter{}, meters: map[string]*meter{}}
		ctx := t.Context()
		for i := range 2 {
			if _, ok := o.takeBudget(ctx, "h"); !ok {
				t.Fatalf("poll %d within the burst was refused", i)
			}
		}
		start := time.Now()
		if _, ok := o.takeBudget(ctx, "h"); !ok {
			t.Fatalf("third poll refused, want a short wait")
		}
		if waited := time.Since(start); waited != 500*time.Millisecond {
			t.Errorf("third poll waited %s, want 500ms (2/s)", waited)
		}
		for range 10 { // other pollers have reserved the next 5s
			o.limiter("busy").Reserve()
		}
		s, ok := o.takeBudget(ctx, "busy")
		if ok || s.Kind != consumer.KindNak || s.Delay < 2*time.Second {
			t.Errorf("over budget: %+v %v, want a nak with a delay over 2s", s, ok)
		}
		if _, ok := o.takeBudget(ctx, "other"); !ok {
			t.Errorf("another host's budget was used up too")
		}
	})
}

// The next poll never comes after the run's deadline, so a timeout is
// noticed on time; and backoffs stay within their cap.
func TestPollDelayAndBackoffBounds(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		o := &Orchestrator{opts: Options{PollMin: 10 * time.Second, PollMax: 5 * time.Minute}, views: newPollViews()}
		now := time.Now()
		r := &record{Run: Run{Job: &JobRef{SubmittedAt: now.Add(-2 * time.Hour)}}}
		if d := o.pollDelay(o.views.view(r, 0), now); d < 270*time.Second || d > 330*time.Second {
			t.Errorf("pollDelay for a 2h-old job = %s, want 5m ±10%%", d)
		}
		r.Sys.Deadline = now.Add(7 * time.Second)
		if d := o.pollDelay(o.views.view(r, 0), now); d > 7200*time.Millisecond {
			t.Errorf("pollDelay 7s before the deadline = %s, want at most 7.1s", d)
		}

		// 100,000 jobs tracked on a budget of 1,000/s: even a young job
		// waits tracked × 1.2 ÷ budget = 120s, so the demand fits the
		// budget; the deadline still wins.
		o.opts.PollBudget = 1000
		o.index = newIndex(nil, nil, "", nil)
		o.index.count[StateRunning], o.index.count[StateSubmitted] = 90000, 10000
		young := &record{Run: Run{Job: &JobRef{SubmittedAt: now.Add(-time.Minute)}}}
		if d := o.pollDelay(o.views.view(young, 0), now); d < 108*time.Second || d > 132*time.Second {
			t.Errorf("pollDelay with 100k tracked on 1000/s = %s, want 120s ±10%%", d)
		}
		o.index.count[StateRunning], o.index.count[StateSubmitted] = 10, 0
		if d := o.pollDelay(o.views.view(young, 0), now); d < 9*time.Second || d > 11*time.Second {
			t.Errorf("pollDelay for a 1-minute-old job with 10 tracked = %s, want PollMin (10s) ±10%%", d)
		}
		young.Sys.Deadline = now.Add(7 * time.Second)
		o.index.count[StateRunning] = 100000
		if d := o.pollDelay(o.views.view(young, 0), now); d > 7200*time.Millisecond {
			t.Errorf("stretched pollDelay 7s before the deadline = %s, want at most 7.1s", d)
		}
	})
	for n := 1; n < 40; n++ {
		if d := backoff.Delay(n, time.Second, 30*time.Second); d < 800*time.Millisecond || d > 36*time.Second {
			t.Errorf("backoff.Delay(%d) = %s, want within [0.8s, 36s]", n, d)
		}
	}
}

// The tracker's consumer has no MaxAckPending: every tracked run's message
// is out (waiting on its nak delay) at once, so a cap would leave the runs
// above it with no poll, no timeout and no cancel until others finish (at
// the old cap of 200,000, runs 200,001 and up). A consumer made by an
// earlier version with the cap is updated at start.
func TestTrackerConsumerHasNoAckPendingCeiling(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := t.Context()
	st, err := b.JS.CreateStream(ctx, jetstream.StreamConfig{Name: StreamTrack, Subjects: []string{SubjectTrack + ".>"},
		Retention: jetstream.WorkQueuePolicy, MaxMsgsPerSubject: 1, Duplicates: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: ConsumerTracker, AckPolicy: jetstream.AckExplicitPolicy,
		MaxDeliver: -1, MaxAckPending: 200000}); err != nil {
		t.Fatal(err)
	}
	startOn(t, b, []*Pipeline{testPipeline(t, "score", nil)}, newFakeSub())
	c, err := st.Consumer(ctx, ConsumerTracker)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.CachedInfo().Config.MaxAckPending; got != -1 {
		t.Errorf("tracker consumer MaxAckPending = %d, want -1 (no cap)", got)
	}
}

// A look that finds the job as it was, the usual case, reads nothing from
// the ledger: every read loads the ledger's message block that holds the
// run, and with every tracked run looked at in turn that kept the live
// part of the whole ledger in memory (issue 16: about 5 KiB per tracked
// job of the 12 measured).
func TestRoutineLooksDoNotReadTheLedger(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = jobs.StatusRunning // never ends
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	const n = 10
	for i := range n {
		h.emit("score", "k"+itoa(i), "https://a.blob.core.windows.net/c/x"+itoa(i))
	}
	waitFor(t, 20*time.Second, "every run running, with its view", func() bool {
		c, _ := h.o.index.counts()
		return c[StateRunning] == n && h.o.views.len() == n
	})
	gets := func() int {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		return sub.gets
	}
	g0, r0 := gets(), h.o.ledger.reads.Load()
	waitFor(t, 30*time.Second, "ten more looks per run", func() bool { return gets()-g0 >= 10*n })
	looks, reads := gets()-g0, h.o.ledger.reads.Load()-r0
	if reads > 0 {
		t.Errorf("%d ledger reads for %d looks at %d unchanged jobs, want none", reads, looks, n)
	}

	// A nudge (a workspace event, an operator) replaces the run's tracker
	// message and comes back for every later look: its first delivery
	// reads the run, the later ones are routine looks again.
	ctx := t.Context()
	for _, id := range h.o.views.ids() {
		r, _, err := h.o.ledger.get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.o.publishTracker(ctx, r, true); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 20*time.Second, "the nudges' first looks", func() bool { return gets()-g0 >= looks+2*n })
	g1, r1 := gets(), h.o.ledger.reads.Load()
	waitFor(t, 30*time.Second, "ten more looks per run", func() bool { return gets()-g1 >= 10*n })
	// Nudges still in their first delivery when counting began may each
	// read once.
	if looks, reads := gets()-g1, h.o.ledger.reads.Load()-r1; reads > n {
		t.Errorf("after a nudge: %d ledger reads for %d looks at %d unchanged jobs, want at most one per run", reads, looks, n)
	}
}
