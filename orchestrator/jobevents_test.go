package orchestrator

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator/consumer"
)

// testTopic is testWorkspace's ARM id as Event Grid writes it (mixed case).
const testTopic = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"

func (f *fakeSub) setStatus(name string, st jobs.Status) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jobs[name].job.Status = st
}

func (f *fakeSub) getCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gets
}

// eventsHarness runs an orchestrator whose routine polls never come within
// a test (PollMin an hour): whatever a job's status request records is
// the work of an event.
func eventsHarness(t *testing.T, retry RetryPolicy) (*harness, *fakeSub) {
	t.Helper()
	sub := newFakeSub()
	sub.final = jobs.StatusRunning // jobs run until the test says otherwise
	p := testPipeline(t, "score", testWorkspace)
	p.Retry = retry
	h := newHarness(t, []*Pipeline{p}, sub, func(o *Options) {
		o.PollMin, o.PollMax = time.Hour, time.Hour
	})
	return h, sub
}

func (h *harness) jobEvent(typ, job string, st jobs.Status) string {
	h.t.Helper()
	out, err := h.o.JobChanged(h.t.Context(), JobEvent{ID: "ev-" + job + "-" + string(st), Type: typ, Workspace: testTopic,
		Job: job, Status: string(st), Time: time.Now()})
	if err != nil {
		h.t.Fatalf("JobChanged(%s %s): %v", job, st, err)
	}
	return out
}

// A job's events finish its run, each with one status request, and every
// duplicate, late or foreign event after that changes nothing and costs no
// request.
func TestJobEventsFinishTheRunWithOneStatusRequestEach(t *testing.T) {
	t.Parallel()
	h, sub := eventsHarness(t, RetryPolicy{MaxAttempts: 1})
	id := h.emit("score", "k1", "https://acct.blob.core.windows.net/c/k1.csv")
	r := h.waitState(id, StateSubmitted, 10*time.Second)
	job := r.Job.Name
	gets := sub.getCount()

	if out := h.jobEvent(TypeRunStatusChanged, job, "Queued"); out != JobEventProgress {
		t.Errorf("Queued: %s, want %s", out, JobEventProgress)
	}
	if out := h.jobEvent(TypeRunStatusChanged, job, "Running"); out != JobEventChecked {
		t.Fatalf("Running: %s, want %s", out, JobEventChecked)
	}
	h.waitState(id, StateRunning, 5*time.Second)
	if out := h.jobEvent(TypeRunStatusChanged, job, "Running"); out != JobEventProgress {
		t.Errorf("a second Running: %s, want %s (the run is running already)", out, JobEventProgress)
	}
	sub.setStatus(job, jobs.StatusCompleted)
	start := time.Now()
	// Microsoft's sample spells the status in lower case.
	if out := h.jobEvent(TypeRunStatusChanged, job, "completed"); out != JobEventChecked {
		t.Fatalf("completed: %s, want %s", out, JobEventChecked)
	}
	h.waitState(id, StateCompleted, 5*time.Second)
	t.Logf("completion recorded %s after the event", time.Since(start).Round(time.Millisecond))

	for range 3 { // RunCompleted, and Event Grid's redeliveries of it
		if out := h.jobEvent(TypeRunCompleted, job, "Completed"); out != JobEventFinished {
			t.Errorf("RunCompleted after the end: %s, want %s", out, JobEventFinished)
		}
	}
	if out := h.jobEvent(TypeRunStatusChanged, job, "Running"); out != JobEventFinished {
		t.Errorf("a late Running: %s, want %s", out, JobEventFinished)
	}
	if out := h.jobEvent(TypeRunStatusChanged, "someone-elses-job", "Completed"); out != JobEventNotOurs {
		t.Errorf("another client's job: %s, want %s", out, JobEventNotOurs)
	}
	other, err := h.o.JobChanged(t.Context(), JobEvent{Type: TypeRunCompleted, Job: job, Status: "Completed",
		Workspace: strings.Replace(testTopic, "/ws", "/other-ws", 1)})
	if err != nil || other != JobEventNotOurs {
		t.Errorf("the same job name in another workspace: %s, %v; want %s", other, err, JobEventNotOurs)
	}
	if got := sub.getCount() - gets; got != 2 {
		t.Errorf("%d status requests, want 2 (one per event that changed the run)", got)
	}
	if n := testutil.ToFloat64(h.o.met.jobEvents.WithLabelValues("run_completed", JobEventFinished)); n != 3 {
		t.Errorf("batchd_job_events_total{run_completed,finished} = %v, want 3", n)
	}
	r, _ = h.o.Get(t.Context(), id)
	if !strings.Contains(historyString(r), "completed") {
		t.Errorf("history: %s", historyString(r))
	}
}

// An event is a hint: a run ends only when the job's status request says
// so.
func TestJobEventIsConfirmedBeforeTheRunEnds(t *testing.T) {
	t.Parallel()
	h, sub := eventsHarness(t, RetryPolicy{MaxAttempts: 1})
	id := h.emit("score", "k1", "https://acct.blob.core.windows.net/c/k1.csv")
	job := h.waitState(id, StateSubmitted, 10*time.Second).Job.Name
	gets := sub.getCount()

	if out := h.jobEvent(TypeRunCompleted, job, "Completed"); out != JobEventChecked {
		t.Fatalf("RunCompleted: %s, want %s", out, JobEventChecked)
	}
	// The same completion again (RunStatusChanged, a redelivery): one
	// check stands for both.
	if out := h.jobEvent(TypeRunStatusChanged, job, "Completed"); out != JobEventProgress {
		t.Errorf("the repeated completion: %s, want %s", out, JobEventProgress)
	}
	waitFor(t, 5*time.Second, "the status request", func() bool { return sub.getCount() > gets })
	r := h.waitState(id, StateRunning, 5*time.Second) // what the service said
	if r.Job.Status != jobs.StatusRunning {
		t.Errorf("job status %s, want Running", r.Job.Status)
	}
	if n := sub.getCount() - gets; n != 1 {
		t.Errorf("%d status requests, want 1", n)
	}
}

// An event of a job the run has left behind (a retry submitted a new one)
// does not touch the run.
func TestJobEventOfAnEarlierAttemptIsStale(t *testing.T) {
	t.Parallel()
	h, sub := eventsHarness(t, RetryPolicy{MaxAttempts: 2, Backoff: 10 * time.Millisecond})
	id := h.emit("score", "k1", "https://acct.blob.core.windows.net/c/k1.csv")
	first := h.waitState(id, StateSubmitted, 10*time.Second).Job.Name
	sub.setStatus(first, jobs.StatusFailed)
	if out := h.jobEvent(TypeRunStatusChanged, first, "Failed"); out != JobEventChecked {
		t.Fatalf("Failed: %s, want %s", out, JobEventChecked)
	}
	waitFor(t, 10*time.Second, "the second attempt's job", func() bool {
		r, err := h.o.Get(t.Context(), id)
		return err == nil && r.Job != nil && r.Job.Name != first && r.State == StateSubmitted
	})
	gets := sub.getCount()
	if out := h.jobEvent(TypeRunStatusChanged, first, "Failed"); out != JobEventStale {
		t.Errorf("the first job's late event: %s, want %s", out, JobEventStale)
	}
	if got := sub.getCount(); got != gets {
		t.Errorf("%d status requests for a stale event, want 0", got-gets)
	}
}

// While a workspace delivers events, its jobs' routine polls wait the
// safety interval (the first look too); once the events stop for the
// silence window, polls are back at the full rate and the silence is
// reported; a poll that finds a job ended that no event announced is
// counted.
func TestStepPollsSlowDownWhileEventsFlow(t *testing.T) {
	t.Parallel()
	rig := newStepRig(t, testPipeline(t, "p", testWorkspace))
	o := rig.o
	o.opts.EventSafetyPoll, o.opts.EventSilence = 10*time.Minute, 30*time.Minute
	rig.sub.final = jobs.StatusRunning
	ev := stepEvent("p", "k1")
	id := RunID("p", "k1")
	if _, r := rig.intake(ev); r.State != StateSubmitted {
		t.Fatalf("state %s, want submitted", r.State)
	}
	s, _ := rig.track(id)
	if s.Kind != consumer.KindNak || s.Delay != o.opts.PollMin {
		t.Fatalf("first look without events: %+v, want a nak of PollMin %s", s, o.opts.PollMin)
	}

	o.wsEvents.seen(t.Context(), testTopic, rig.now)
	s, _ = rig.track(id)
	if s.Kind != consumer.KindNak || s.Delay != o.opts.EventSafetyPoll {
		t.Fatalf("first look while events flow: %+v, want a nak of the safety interval", s)
	}
	rig.now = rig.now.Add(o.opts.EventSafetyPoll)
	o.wsEvents.seen(t.Context(), testTopic, rig.now)
	s, r := rig.track(id)
	if r.State != StateRunning || s.Delay < o.opts.EventSafetyPoll*9/10 {
		t.Fatalf("the safety poll: %s, next in %s; want running, next after about %s", r.State, s.Delay, o.opts.EventSafetyPoll)
	}

	// The events stop. Within the silence window the polls stay slow…
	rig.now = rig.now.Add(o.opts.EventSilence - time.Second)
	if s, _ = rig.track(id); s.Delay < o.opts.EventSafetyPoll*9/10 {
		t.Fatalf("a second before the silence ends: next poll in %s, want the safety interval", s.Delay)
	}
	// …and then they are back at the full rate, and the silence is reported.
	rig.now = rig.now.Add(time.Second)
	if s, _ = rig.track(id); s.Delay > o.opts.PollMax*11/10 {
		t.Fatalf("after the silence: next poll in %s, want at most PollMax %s", s.Delay, o.opts.PollMax)
	}
	o.wsEvents.tracked = func() int { return 1 } // the rig runs no index
	o.wsEvents.refresh(t.Context(), rig.now)
	if got := testutil.ToFloat64(o.wsEvents.silentG.WithLabelValues("rg/ws")); got != 1 {
		t.Errorf("batchd_job_events_silent = %v, want 1", got)
	}
	if got := testutil.ToFloat64(o.wsEvents.flowingG.WithLabelValues("rg/ws")); got != 0 {
		t.Errorf("batchd_job_events_flowing = %v, want 0", got)
	}

	// Events again; a routine poll finds the job ended: an event was missed.
	o.wsEvents.seen(t.Context(), testTopic, rig.now)
	o.wsEvents.refresh(t.Context(), rig.now)
	if got := testutil.ToFloat64(o.wsEvents.silentG.WithLabelValues("rg/ws")); got != 0 {
		t.Errorf("batchd_job_events_silent after an event = %v, want 0", got)
	}
	rig.sub.setStatus(r.Job.Name, jobs.StatusCompleted)
	rig.now = rig.now.Add(o.opts.EventSafetyPoll)
	if _, r = rig.track(id); r.State != StateCompleted {
		t.Fatalf("state %s, want completed", r.State)
	}
	if got := testutil.ToFloat64(o.wsEvents.missed.WithLabelValues("rg/ws")); got != 1 {
		t.Errorf("batchd_job_events_missed_total = %v, want 1", got)
	}
}

// The newest event time is shared through the admission bucket: a replica
// that saw no event learns that events flow from one that did.
func TestJobEventTimeIsSharedAcrossReplicas(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	p := testPipeline(t, "score", testWorkspace)
	a := startOn(t, b, []*Pipeline{p}, newFakeSub())
	c := startOn(t, b, []*Pipeline{p}, newFakeSub())
	now := time.Now()
	a.o.wsEvents.seen(t.Context(), testTopic, now)
	if c.o.wsEvents.flowing(testWorkspace, now) {
		t.Fatal("replica c knows of the event before reading the bucket")
	}
	c.o.wsEvents.refresh(t.Context(), now)
	if !c.o.wsEvents.flowing(testWorkspace, now) {
		t.Error("replica c does not know that events flow after reading the bucket")
	}
}

// With job lists on, an event's check is a list that starts after the
// event: an end it shows finishes the run with no status request; a
// failure, and a list behind the event, still get the job's GET.
func TestJobEventChecksAreAnsweredByAJobList(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = jobs.StatusRunning
	p := testPipeline(t, "score", testWorkspace)
	p.Retry = RetryPolicy{MaxAttempts: 1}
	h := newHarness(t, []*Pipeline{p}, sub, func(o *Options) {
		o.PollMin, o.PollMax = time.Hour, time.Hour
		o.JobListInterval = time.Hour // lists on; the periodic one never comes
	})
	ids := map[string]string{}
	names := map[string]string{}
	for _, k := range []string{"done", "failed", "lagging"} {
		ids[k] = h.emit("score", k, "https://acct.blob.core.windows.net/c/"+k+".csv")
		names[k] = h.waitState(ids[k], StateSubmitted, 10*time.Second).Job.Name
	}
	step := func(k string, st jobs.Status, event jobs.Status, want State) (gets, lists int) {
		t.Helper()
		sub.setStatus(names[k], st)
		g0, l0 := sub.getCount(), sub.listCount()
		if out := h.jobEvent(TypeRunCompleted, names[k], event); out != JobEventChecked {
			t.Fatalf("%s: %s, want %s", k, out, JobEventChecked)
		}
		h.waitState(ids[k], want, 5*time.Second)
		return sub.getCount() - g0, sub.listCount() - l0
	}
	if gets, lists := step("done", jobs.StatusCompleted, jobs.StatusCompleted, StateCompleted); gets != 0 || lists != 1 {
		t.Errorf("an end the list shows: %d GETs, %d lists; want 0 and 1", gets, lists)
	}
	if gets, lists := step("failed", jobs.StatusFailed, jobs.StatusFailed, StateFailed); gets != 1 || lists != 1 {
		t.Errorf("a failure: %d GETs, %d lists; want 1 (its error details) and 1", gets, lists)
	}
	// The list still shows the job running although the event says it
	// ended (ARM behind): the GET decides, here running too, so the run
	// stays submitted until the job's status says more.
	sub.setStatus(names["lagging"], jobs.StatusRunning)
	g0 := sub.getCount()
	if out := h.jobEvent(TypeRunCompleted, names["lagging"], jobs.StatusCompleted); out != JobEventChecked {
		t.Fatalf("lagging: %s", out)
	}
	waitFor(t, 5*time.Second, "the lagging event's GET", func() bool { return sub.getCount() > g0 })
	if r, _ := h.o.Get(t.Context(), ids["lagging"]); r.State.Terminal() {
		t.Errorf("lagging: the run ended (%s) on an event the service did not confirm", r.State)
	}
}

// A confirming list that never answers costs time only: the event's look
// comes back after the fallback and GETs.
func TestJobEventLookGETsWhenItsListNeverAnswers(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = jobs.StatusRunning
	sub.listHold = make(chan struct{})
	t.Cleanup(func() { close(sub.listHold) })
	p := testPipeline(t, "score", testWorkspace)
	h := newHarness(t, []*Pipeline{p}, sub, func(o *Options) {
		o.PollMin, o.PollMax = time.Hour, time.Hour
		o.JobListInterval = time.Hour
		o.confirmFallback = 300 * time.Millisecond
	})
	id := h.emit("score", "k", "https://acct.blob.core.windows.net/c/k.csv")
	job := h.waitState(id, StateSubmitted, 10*time.Second).Job.Name
	sub.setStatus(job, jobs.StatusCompleted)
	if out := h.jobEvent(TypeRunCompleted, job, jobs.StatusCompleted); out != JobEventChecked {
		t.Fatalf("event: %s", out)
	}
	h.waitState(id, StateCompleted, 10*time.Second)
	if got := sub.getCount(); got != 1 {
		t.Errorf("%d GETs, want 1 (the fallback)", got)
	}
}
