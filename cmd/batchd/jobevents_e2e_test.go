package main

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs/jobstest"
)

const eventsSecret = "events-webhook-secret-0123456789"

// startEventsDaemon starts batchd serve against a simulator whose jobs
// run for about 0.8 s and whose workspace publishes their status changes to
// the daemon's /eventgrid with ev's faults.
func startEventsDaemon(t *testing.T, name string, ev jobstest.EventOptions, extra map[string]string) (*batchdProc, *jobstest.Sim) {
	t.Helper()
	sim := jobstest.New(t, jobstest.Options{Lifecycle: jobstest.Timed(200 * time.Millisecond), Seed: 7})
	dir := t.TempDir()
	env := procSimEnv(t, sim, dir)
	env["BATCHD_WEBHOOK_SECRET"] = eventsSecret
	for k, v := range extra {
		env[k] = v
	}
	p := newProc(t, procBuild(t, dir), env, name)
	p.start()
	ev.URL = p.url() + "/eventgrid?code=" + eventsSecret
	sim.EmitEvents(t.Context(), ev)
	return p, sim
}

func emitEventRuns(t *testing.T, p *batchdProc, n int) {
	t.Helper()
	for i := range n {
		if err := procEmit(t.Context(), p.url, fmt.Sprintf("ev-%02d", i), procInputURI(fmt.Sprintf("ev-%02d", i))); err != nil {
			t.Fatal(err)
		}
	}
}

// Pushed completion through a real batchd serve: the workspace's events
// arrive late, duplicated and out of order, and batchd finishes every run
// from them, with at most two status requests per job (the first running
// status, the end), long before its first routine poll (BATCHD_POLL_MIN is
// a minute; the wait below is half that).
func TestJobEventsFinishRunsThroughServe(t *testing.T) {
	t.Parallel()
	const n = 20
	p, sim := startEventsDaemon(t, "events", jobstest.EventOptions{Delay: 20 * time.Millisecond, Jitter: 200 * time.Millisecond,
		DuplicateRate: 0.5}, map[string]string{"BATCHD_POLL_MIN": "1m", "BATCHD_POLL_MAX": "5m"})
	start := time.Now()
	emitEventRuns(t, p, n)
	runs := procWaitFinished(t, p.url, n, 30*time.Second)
	t.Logf("%d runs finished %s after the first was emitted; events %+v", n, time.Since(start).Round(time.Millisecond), sim.EventStats())
	procCheckOneJobPerRun(t, sim, runs, procInputURI)
	if gets := sim.Count(jobstest.RouteARMGet); gets > 2*n {
		t.Errorf("%d status requests for %d jobs, want at most 2 per job", gets, n)
	}
	m := benchMetrics(p.url())
	if got := m[`batchd_job_events_total{outcome="checked",type="run_status_changed"}`]; got < n {
		t.Errorf("batchd_job_events_total{checked,run_status_changed} = %v, want at least %d", got, n)
	}
	if got := m[`batchd_job_events_flowing{workspace="batchd-sim/sim"}`]; got != 1 {
		t.Errorf("batchd_job_events_flowing = %v, want 1", got)
	}
}

// With job lists on (the default), the looks that events ask for are
// answered together by the workspace's job list, which starts after they
// were asked: a burst of ends costs a few list pages, not a GET per job.
func TestJobEventsAreConfirmedByJobListsThroughServe(t *testing.T) {
	t.Parallel()
	const n = 40
	p, sim := startEventsDaemon(t, "events-lists", jobstest.EventOptions{Jitter: 200 * time.Millisecond, DuplicateRate: 0.3},
		map[string]string{"BATCHD_POLL_MIN": "1m", "BATCHD_POLL_MAX": "5m", "BATCHD_JOB_LIST_INTERVAL": "30s"})
	start := time.Now()
	emitEventRuns(t, p, n)
	runs := procWaitFinished(t, p.url, n, 30*time.Second)
	procCheckOneJobPerRun(t, sim, runs, procInputURI)
	gets, lists := sim.Count(jobstest.RouteARMGet), sim.Count(jobstest.RouteARMList)
	t.Logf("%d runs finished %s after the first was emitted: %d status requests, %d list pages; events %+v",
		n, time.Since(start).Round(time.Millisecond), gets, lists, sim.EventStats())
	if lists == 0 || gets+lists > n/2 {
		t.Errorf("%d status requests and %d list pages for %d jobs' events; want them answered by lists (at most %d requests)", gets, lists, n, n/2)
	}
	m := benchMetrics(p.url())
	if m[`batchd_poll_requests_total{endpoint="sim",result="list"}`] < n {
		t.Errorf("batchd_poll_requests_total{result=list} = %v, want at least %d looks answered by lists",
			m[`batchd_poll_requests_total{endpoint="sim",result="list"}`], n)
	}
}

// Lost events are covered by the safety poll: every run still finishes,
// and the polls that found a job ended that no event announced are counted.
func TestLostJobEventsAreCoveredBySafetyPolls(t *testing.T) {
	t.Parallel()
	const n = 20
	p, sim := startEventsDaemon(t, "lossy", jobstest.EventOptions{LossRate: 0.6},
		map[string]string{"BATCHD_POLL_MIN": "500ms", "BATCHD_POLL_MAX": "1s", "BATCHD_JOB_EVENTS_SAFETY_POLL": "2s"})
	emitEventRuns(t, p, n)
	runs := procWaitFinished(t, p.url, n, 60*time.Second)
	procCheckOneJobPerRun(t, sim, runs, procInputURI)
	st := sim.EventStats()
	if st.Lost == 0 {
		t.Fatalf("no event was lost (%+v): the test proves nothing", st)
	}
	if got := benchMetrics(p.url())[`batchd_job_events_missed_total{workspace="batchd-sim/sim"}`]; got == 0 {
		t.Errorf("batchd_job_events_missed_total = 0 with %d of %d events lost", st.Lost, st.Events)
	}
}

// Without job events, serve refreshes the workspace's tracked jobs from its
// ARM job list: every run finishes and its jobs cost fewer status requests
// than there are jobs (job by job, each costs several).
func TestBulkStatusThroughServe(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon as a process")
	}
	t.Parallel()
	const n = 30
	p, sim := procWithSim(t, "bulk", map[string]string{"BATCHD_JOB_LIST_INTERVAL": "1s"})
	for i := range n {
		key := "bulk-" + strconv.Itoa(i)
		if err := procEmit(t.Context(), p.url, key, procInputURI(key)); err != nil {
			t.Fatal(err)
		}
	}
	runs := procWaitFinished(t, p.url, n, time.Minute)
	procCheckOneJobPerRun(t, sim, runs, procInputURI)
	gets, lists := sim.Count(jobstest.RouteARMGet), sim.Count(jobstest.RouteARMList)
	t.Logf("%d jobs: %d status requests, %d list pages", n, gets, lists)
	if lists == 0 || gets >= n {
		t.Errorf("%d status requests and %d list pages for %d jobs; want lists, and fewer status requests than jobs", gets, lists, n)
	}
	m := benchMetrics(p.url())
	if m[`batchd_poll_requests_total{endpoint="sim",result="list"}`] == 0 || m[`batchd_job_list_refreshes_total{endpoint="sim",result="ok"}`] == 0 {
		t.Errorf("metrics do not show list-answered looks and lists: %v / %v", m[`batchd_poll_requests_total{endpoint="sim",result="list"}`],
			m[`batchd_job_list_refreshes_total{endpoint="sim",result="ok"}`])
	}
}
