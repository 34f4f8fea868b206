package orchestrator

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// Jobs on a workspace endpoint, with no job events, are refreshed from the
// workspace's ARM job list: their status looks cost list pages, not a GET
// each, and every run still finishes, failures with the job's error. Off
// (JobListInterval < 0), every look is a GET: the same runs cost several
// GETs per job.
func TestBulkStatusFromTheJobList(t *testing.T) {
	t.Parallel()
	const n = 24
	run := func(t *testing.T, interval time.Duration) (gets, lists int64) {
		sim := jobstest.New(t, jobstest.Options{ListPageSize: 10, Outcome: func(j jobstest.JobView) jobstest.Lifecycle {
			final := jobs.StatusCompleted
			if j.Inputs["data"].URI[len(j.Inputs["data"].URI)-1] == '7' {
				final = jobs.StatusFailed
			}
			return jobstest.Lifecycle{Steps: []jobstest.Step{{Status: jobs.StatusRunning, After: 1500 * time.Millisecond}, {Status: final}},
				ErrorCode: "UserError", ErrorMessage: "the scoring script raised ValueError"}
		}})
		p := simPipeline(t, sim, "score", true)
		h := newHarness(t, []*Pipeline{p}, simClient(t, sim), func(o *Options) {
			o.PollMin, o.PollMax = 100*time.Millisecond, 200*time.Millisecond
			o.JobListInterval = interval
		})
		var ids []string
		for i := range n {
			ids = append(ids, h.emit("score", fmt.Sprint(i), fmt.Sprintf("https://a.blob.core.windows.net/c/x-%02d", i)))
		}
		for i, id := range ids {
			want := StateCompleted
			if i%10 == 7 {
				want = StateFailed
			}
			r := h.waitState(id, want, 20*time.Second)
			if want == StateFailed && r.Error != "the scoring script raised ValueError" {
				t.Errorf("run %s failed with %q, want the job's error", id, r.Error)
			}
		}
		return sim.Count(jobstest.RouteARMGet), sim.Count(jobstest.RouteARMList)
	}
	var offGets int64
	t.Run("off", func(t *testing.T) {
		offGets, _ = run(t, -1)
		if offGets < 3*n {
			t.Errorf("%d status requests for %d jobs without lists; the test expects several per job", offGets, n)
		}
	})
	t.Run("on", func(t *testing.T) {
		gets, lists := run(t, 300*time.Millisecond)
		t.Logf("%d jobs: %d GETs and %d list pages with lists; %d GETs without", n, gets, lists, offGets)
		if lists == 0 {
			t.Fatal("no job list was read")
		}
		if gets+lists > offGets/2 {
			t.Errorf("%d GETs + %d list pages with lists, want at most half the %d GETs without", gets, lists, offGets)
		}
	})
}

// A nudge (a job event, an operator) asks for news the last list may not
// have: unless that list shows the job ended, the look is a GET. Here the
// list, fresh, still shows the job running when an event says it ended.
func TestBulkStatusDoesNotAnswerANudgeWithOlderNews(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.polls, sub.final = 0, jobs.StatusCompleted // the first GET sees the end
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", testWorkspace)}, sub, func(o *Options) {
		o.JobListInterval = time.Hour // lists cover the endpoint; none is read in this test
	})
	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	r := h.waitState(id, StateSubmitted, 10*time.Second)
	// The first look registered the job; a list taken now shows it running.
	waitFor(t, 5*time.Second, "the tracker's first look", func() bool {
		h.o.bulk.mu.Lock()
		defer h.o.bulk.mu.Unlock()
		w := h.o.bulk.ws[WorkspaceID(*testWorkspace)]
		return w != nil && len(w.tracked) == 1
	})
	h.o.bulk.mu.Lock()
	w := h.o.bulk.ws[WorkspaceID(*testWorkspace)]
	w.listed = map[string]jobs.Job{r.Job.Name: {Name: r.Job.Name, Status: jobs.StatusRunning}}
	w.at = time.Now()
	h.o.bulk.mu.Unlock()

	rec, _, err := h.o.ledger.get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.o.nudge(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	h.waitState(id, StateCompleted, 10*time.Second)
}

// A confirming list keeps only its wave's jobs, each once, and stops when
// every look is found, or when it has read confirmExtraJobs more jobs than
// the wave has looks (the rest of its looks get GETs).
func TestConfirmWaveKeeper(t *testing.T) {
	t.Parallel()
	wave := &confirmWave{looks: map[string]confirmLook{"a": {}, "b": {}}}
	keep := wave.keeper()
	type answer struct{ keep, more bool }
	var got []answer
	for _, name := range []string{"x", "a", "y", "a", "b"} { // "a" twice: the list shifted
		k, m := keep(jobs.Job{Name: name})
		got = append(got, answer{k, m})
	}
	want := []answer{{false, true}, {true, true}, {false, true}, {false, true}, {true, false}}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(answer{})); diff != "" {
		t.Errorf("keeper (-want +got):\n%s", diff)
	}

	// "b" is never listed: the list stops after len(looks)+confirmExtraJobs jobs.
	keep = wave.keeper()
	read := 0
	for more := true; more; read++ {
		name := "other-" + itoa(read)
		if read == 3 {
			name = "a"
		}
		_, more = keep(jobs.Job{Name: name})
		if read > 10*confirmExtraJobs {
			t.Fatal("the list never stops")
		}
	}
	if read != len(wave.looks)+confirmExtraJobs {
		t.Errorf("read %d jobs, want %d", read, len(wave.looks)+confirmExtraJobs)
	}
}
