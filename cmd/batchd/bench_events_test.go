package main

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/cmd/batchd/internal/benchtab"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
)

// benchEventsEach is each status's length of the benchmark's jobs
// (jobstest.Timed): a job ends 4 × this after its creation.
const benchEventsEach = 15 * time.Second

// benchJobEvents: the same jobs tracked by a serve process that gets the
// workspace's job events (late by up to a second, a tenth duplicated) and,
// as the reference, by one that only polls, both with the default poll
// settings (BATCHD_POLL_MIN 10s, BATCHD_POLL_MAX 5m; job lists at their
// default for the first, off for the reference): the delay from a job's
// end to its run's end, and status requests (GETs and list pages) per
// completed job.
func benchJobEvents(b *testing.B, rep *benchtab.Report) {
	n := benchScaled(2000)
	ev := benchEventsRound(b, n, true)
	polled := benchEventsRound(b, n, false)
	name := fmt.Sprintf("(%d jobs of %s)", n, 4*benchEventsEach)
	rep.Add(
		benchtab.Figure{Group: "pushed completion", Name: "completion noticed after the job ends, p50 " + name, Unit: "s",
			Batchd: ev.p50, Reference: benchtab.Ref(polled.p50), RefName: "polling only"},
		benchtab.Figure{Group: "pushed completion", Name: "completion noticed after the job ends, p99 " + name, Unit: "s",
			Batchd: ev.p99, Reference: benchtab.Ref(polled.p99), RefName: "polling only", Target: "p99 ≤ 5 s", Met: benchtab.Met(ev.p99 <= 5)},
		benchtab.Figure{Group: "pushed completion", Name: "status requests per completed job", Unit: "requests",
			Batchd: ev.perJob, Reference: benchtab.Ref(polled.perJob), RefName: "polling only", Target: "≤ 2", Met: benchtab.Met(ev.perJob <= 2)},
	)
	b.ReportMetric(0, "ns/op")
}

type benchEvents struct{ p50, p99, perJob float64 }

func benchEventsRound(b *testing.B, n int, events bool) benchEvents {
	sim := jobstest.New(b, jobstest.Options{Lifecycle: jobstest.Timed(benchEventsEach)})
	dir := b.TempDir()
	env := procSimEnv(b, sim, dir)
	env["BATCHD_WEBHOOK_SECRET"] = eventsSecret
	for _, k := range []string{"BATCHD_POLL_MIN", "BATCHD_POLL_MAX", "BATCHD_POLL_BUDGET"} {
		delete(env, k) // the defaults
	}
	if events {
		// The default: job lists confirm the events' looks. The reference
		// polls job by job only.
		delete(env, "BATCHD_JOB_LIST_INTERVAL")
	}
	p := newProc(b, procBuild(b, dir), env, "events")
	p.start()
	if events {
		sim.EmitEvents(b.Context(), jobstest.EventOptions{URL: p.url() + "/eventgrid?code=" + eventsSecret,
			Jitter: time.Second, DuplicateRate: 0.1})
	}
	benchParallel(b, n, 16, func(i int) error {
		key := fmt.Sprintf("bev-%d", i)
		return procEmit(context.Background(), p.url, key, procInputURI(key))
	})
	var runs []orchestrator.RunSummary
	procWaitFor(b, 10*time.Minute, "every run to finish", func() bool {
		all, err := procListAll(p.url())
		if err != nil || len(all) < n {
			return false
		}
		for _, r := range all {
			if !r.State.Terminal() {
				return false
			}
		}
		runs = all
		return true
	})
	end := map[string]time.Time{}
	for _, j := range sim.Jobs() {
		end[j.Name] = j.CreatedAt.Add(4 * benchEventsEach)
	}
	var delays []time.Duration
	for _, r := range runs {
		if r.Job != nil && r.State == orchestrator.StateCompleted {
			delays = append(delays, r.Updated.Sub(end[r.Job.Name]))
		}
	}
	if len(delays) != n {
		b.Fatalf("%d of %d runs completed", len(delays), n)
	}
	res := benchEvents{p50: benchPct(delays, 0.5) / 1000, p99: benchPct(delays, 0.99) / 1000,
		perJob: float64(sim.Count(jobstest.RouteARMGet)+sim.Count(jobstest.RouteARMList)) / float64(n)}
	b.Logf("events %v: completion delay p50 %.2f s, p99 %.2f s, %.2f status requests per job; events %+v",
		events, res.p50, res.p99, res.perJob, sim.EventStats())
	p.stop(syscall.SIGTERM)
	return res
}
