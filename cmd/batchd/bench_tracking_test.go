package main

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/cmd/batchd/internal/benchtab"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
)

// Tracking configuration of the benchmark's daemon: the bounds the
// completion delay is reported against, and the budget the status requests
// must stay within.
const (
	benchPollMin    = 5 * time.Second
	benchPollMax    = 2 * time.Minute
	benchPollBudget = 1000 // status requests per second per endpoint host
	// benchDoneAfter is when, after its creation, a job of the completion
	// sample completes in the simulator.
	benchDoneAfter = 30 * time.Second
)

// benchTracking runs `batchd serve` as a process (embedded NATS, managed
// identity against the simulator, status through ARM) and:
//
//   - submits jobs that stay Running until 10k, 30k and 100k are tracked at
//     once, and at each size, once tracking is steady, reads the process's
//     RSS and the status requests per second the simulator receives
//     (against BATCHD_POLL_BUDGET);
//   - then submits a sample of jobs that complete in the simulator 30 s
//     after their creation, amid the 100k, and measures the delay between
//     that moment and the run's `completed` (its Updated time), against
//     BATCHD_POLL_MIN/MAX;
//   - counts token requests per 10,000 submissions;
//   - measures cold start (process start to /readyz 200) with an empty state
//     dir and with the state dir of the 100k runs.
func benchTracking(b *testing.B, rep *benchtab.Report) {
	sizes := []int{benchScaled(10000), benchScaled(30000), benchScaled(100000)}
	sample := benchScaled(2000)
	settle := 20 * time.Second
	window := 30 * time.Second
	dir := b.TempDir()
	bin := procBuild(b, dir)
	sim := benchDoneSim(b)
	env := procSimEnv(b, sim, dir)
	benchTrackingEnv(env)
	env["BATCHD_SUBMIT_TIMEOUT"] = "30s"
	env["BATCHD_RECONCILE_GRACE"] = "1m"
	p := newProc(b, bin, env, "tracking")
	p.start()
	started := time.Now()

	ctx, cancel := context.WithTimeout(b.Context(), 20*time.Minute)
	defer cancel()
	submit := func(keys []string) time.Duration { return benchSubmit(ctx, b, p, keys) }
	tracked := func() int { return benchTracked(p) }
	statusRequests := func() int64 { return benchStatusRequests(sim) }

	var xs, rss, peaks, rates []float64
	var parts string // of the last size's RSS
	total := 0
	var submitTime time.Duration
	for _, n := range sizes {
		var keys []string
		for i := total; i < n; i++ {
			keys = append(keys, "run-"+strconv.Itoa(i))
		}
		submitTime += submit(keys)
		total = n
		procWaitFor(b, 10*time.Minute, fmt.Sprintf("%d jobs tracked", n), func() bool {
			return sim.JobCount() >= n && tracked() >= n
		})
		time.Sleep(settle) // steady tracking: the submission burst is over
		// RSS swings with the garbage collector's cycle (the heap grows to
		// twice what is live, then drops): the figure is the mean of a
		// sample every second over the window, beside its range.
		gm := benchMetrics(p.url())
		c0, t0, cpu0 := statusRequests(), time.Now(), gm["process_cpu_seconds_total"]
		var mems []benchtab.Memory
		var heap []float64
		for time.Since(t0) < window {
			mem, err := benchtab.ProcessMemoryParts(p.cmd.Process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			mems = append(mems, mem)
			heap = append(heap, benchMetrics(p.url())["go_memstats_heap_inuse_bytes"]/(1<<20))
			time.Sleep(time.Second)
		}
		rate := float64(statusRequests()-c0) / time.Since(t0).Seconds()
		cpu := (benchMetrics(p.url())["process_cpu_seconds_total"] - cpu0) / time.Since(t0).Seconds()
		mean := func(f func(benchtab.Memory) float64) float64 {
			s := 0.0
			for _, m := range mems {
				s += f(m)
			}
			return s / float64(len(mems))
		}
		r, peak := mean(func(m benchtab.Memory) float64 { return m.RSS }), mems[len(mems)-1].Peak
		lo, hi := r, r
		for _, m := range mems {
			lo, hi = min(lo, m.RSS), max(hi, m.RSS)
		}
		hsum := 0.0
		for _, h := range heap {
			hsum += h
		}
		parts = fmt.Sprintf("mean of %d samples over %s, range %.0f–%.0f MiB: anonymous %.0f MiB + file-backed %.0f MiB (the binary and the run index's mapped pages); Go heap in use %.0f MiB; %.2f CPU cores while tracking",
			len(mems), window, lo, hi, mean(func(m benchtab.Memory) float64 { return m.Anon }), mean(func(m benchtab.Memory) float64 { return m.File }),
			hsum/float64(len(heap)), cpu)
		b.Logf("%d jobs tracked: VmRSS %.1f MiB (peak %.1f; %s), %.0f status requests/s (budget %d)", n, r, peak, parts, rate, benchPollBudget)
		xs, rss, peaks, rates = append(xs, float64(n)), append(rss, r), append(peaks, peak), append(rates, rate)
	}
	submitted := sim.JobCount()
	submitRate := float64(submitted) / submitTime.Seconds()

	// The completion sample, amid the 100k.
	var doneKeys []string
	for i := range sample {
		doneKeys = append(doneKeys, "done-"+strconv.Itoa(i))
	}
	submit(doneKeys)
	sampleWait := benchDoneAfter + 2*benchPollMax + 5*time.Minute
	runs, done := benchSampleDone(b, p, sim, sample, sampleWait)
	delays, late := done.delays, done.late
	lateNote := ""
	if late > 0 {
		lateNote = fmt.Sprintf("; %d of %d sample runs were still not completed %s after their jobs were created (left out of the percentiles)",
			late, sample, sampleWait)
	}

	// Tokens: every Entra token the process asked for, by audience, per
	// 10,000 submissions.
	elapsed := time.Since(started)
	tokens := map[string]int{}
	for _, tr := range sim.TokenRequests() {
		tokens[tr.Audience]++
	}
	allSubmitted := sim.JobCount()
	perLifetime := max(1, int(elapsed/(55*time.Minute))+1) // azcore refreshes 5 min before expiry
	mlPer10k := float64(tokens[jobstest.AudienceML]) * 10000 / float64(allSubmitted)

	// Cold start with the state of the 100k runs (still tracked), then with
	// an empty state dir.
	var warm []time.Duration
	for range 3 {
		if code := p.stop(syscall.SIGTERM); code != 0 {
			b.Fatalf("exit code after SIGTERM = %d, want 0", code)
		}
		warm = append(warm, benchStartTimed(b, p))
	}
	p.stop(syscall.SIGTERM)
	empty := benchEmptyStarts(b, bin, env, "empty")
	med := benchMedianMs

	big := len(xs) - 1
	rep.Add(
		benchtab.Figure{Group: "tracking", Name: fmt.Sprintf("RSS with %d jobs tracked (embedded NATS included)", sizes[big]), Unit: "MiB",
			Batchd: rss[big], Target: "≤ 256 MiB", Met: benchtab.Met(rss[big] <= 256),
			Note: fmt.Sprintf("%s; peak (VmHWM) %.0f MiB during the submissions; %.0f submissions/s through the API", parts, peaks[big], submitRate)},
		benchtab.Figure{Group: "tracking", Name: fmt.Sprintf("status requests/s with %d tracked", sizes[big]), Unit: "req/s",
			Batchd: rates[big], Reference: benchtab.Ref(benchPollBudget), RefName: "BATCHD_POLL_BUDGET",
			Target: "≤ budget", Met: benchtab.Met(rates[big] <= benchPollBudget*(1+1/window.Seconds()))},
		benchtab.Figure{Group: "tracking", Name: fmt.Sprintf("completion delay p50 (%d jobs completing amid %d)", sample, sizes[big]), Unit: "s",
			Batchd: benchPct(delays, 0.5) / 1000, Reference: benchtab.Ref(benchPollMax.Seconds()), RefName: "BATCHD_POLL_MAX",
			Note: fmt.Sprintf("poll bounds %s…%s, budget %d/s: %d jobs take ≥ %.0f s to visit once%s", benchPollMin, benchPollMax,
				benchPollBudget, sizes[big], float64(sizes[big])/benchPollBudget, lateNote)},
		benchtab.Figure{Group: "tracking", Name: "completion delay p99", Unit: "s",
			Batchd: benchPct(delays, 0.99) / 1000, Reference: benchtab.Ref(benchPollMax.Seconds()), RefName: "BATCHD_POLL_MAX",
			Target: "≤ POLL_MAX", Met: benchtab.Met(late == 0 && benchPct(delays, 0.99)/1000 <= benchPollMax.Seconds())},
		benchtab.Figure{Group: "tokens", Name: fmt.Sprintf("ML-scope token requests per 10,000 submissions (%d submissions in %s)", allSubmitted, elapsed.Round(time.Second)),
			Unit: "tokens", Batchd: mlPer10k, Reference: benchtab.Ref(float64(perLifetime) * 10000 / float64(allSubmitted)),
			RefName: "1 per token lifetime (1 h)", Target: "1 per token lifetime", Met: benchtab.Met(tokens[jobstest.AudienceML] <= perLifetime),
			Note: fmt.Sprintf("ML tokens %d, ARM tokens %d (status and reconciliation) in %s", tokens[jobstest.AudienceML], tokens[jobstest.AudienceARM], elapsed.Round(time.Second))},
		benchtab.Figure{Group: "cold start", Name: "serve → /readyz 200, empty state dir (median of 3)", Unit: "ms", Batchd: med(empty)},
		benchtab.Figure{Group: "cold start", Name: fmt.Sprintf("serve → /readyz 200, %d runs in the state dir (median of 3)", len(runs)), Unit: "ms",
			Batchd: med(warm), Reference: benchtab.Ref(med(empty)), RefName: "empty state dir"},
	)
	kib := make([]float64, len(rss))
	for i, v := range rss {
		kib[i] = v * 1024
	}
	rep.AddSlope(benchtab.Slope{Group: "tracking", Name: "RSS (KiB) by jobs tracked", Sizes: xs, Batchd: kib, PerUnitName: "KiB/job"})
	rep.AddSlope(benchtab.Slope{Group: "tracking", Name: "status requests/s by jobs tracked", Sizes: xs, Batchd: rates, PerUnitName: "req/s per job"})
	b.Logf("completion delay: p50 %.1f s, p99 %.1f s; cold start: empty %v, 100k %v; tokens %v", benchPct(delays, 0.5)/1000,
		benchPct(delays, 0.99)/1000, empty, warm, tokens)
	b.ReportMetric(0, "ns/op")
}

// benchDoneSim is the tracking rows' simulator: a job whose input names
// "/done-" (a completion sample's) completes benchDoneAfter after its
// creation; every other job stays running.
func benchDoneSim(b *testing.B) *jobstest.Sim {
	return jobstest.New(b, jobstest.Options{Outcome: func(j jobstest.JobView) jobstest.Lifecycle {
		if strings.Contains(j.Inputs["data"].URI, "/done-") {
			return jobstest.Lifecycle{Steps: []jobstest.Step{{Status: jobs.StatusRunning, After: benchDoneAfter}, {Status: jobs.StatusCompleted}}}
		}
		return jobstest.Stuck(jobs.StatusRunning)
	}})
}

// benchSample is what became of a completion sample (runs keyed "done-…").
type benchSample struct {
	delays []time.Duration // from each completed sample job's end to its run's end
	late   int             // sample runs not finished by the deadline
	gets   int             // GET requests for the sample's jobs
}

// benchSampleDone waits up to wait for sample runs to complete and
// returns every run with what became of the sample. A sample run that is
// not completed by then is counted late (a saturated tracker is a result,
// not a crash); one that ended otherwise, or has no job, is fatal.
func benchSampleDone(b *testing.B, p *batchdProc, sim *jobstest.Sim, sample int, wait time.Duration) ([]orchestrator.RunSummary, benchSample) {
	b.Helper()
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(time.Second) {
		if int(benchMetrics(p.url())[`batchd_runs{state="completed"}`]) >= sample {
			break
		}
	}
	jobsByURI := map[string]jobstest.JobView{}
	for _, j := range sim.Jobs() {
		jobsByURI[j.Inputs["data"].URI] = j
	}
	runs, err := procListAll(p.url())
	if err != nil {
		b.Fatal(err)
	}
	var s benchSample
	for _, r := range runs {
		if !strings.HasPrefix(r.Key, "done-") {
			continue
		}
		j, ok := jobsByURI[procInputURI(r.Key)]
		if !ok {
			b.Fatalf("sample run %s has no job in the simulator", r.Key)
		}
		s.gets += j.Gets
		switch {
		case r.State == orchestrator.StateCompleted:
			s.delays = append(s.delays, r.Updated.Sub(j.CreatedAt.Add(benchDoneAfter)))
		case r.State.Terminal():
			b.Fatalf("sample run %s is %s, want completed", r.Key, r.State)
		default:
			s.late++
		}
	}
	if len(s.delays)+s.late != sample || len(s.delays) == 0 {
		b.Fatalf("%d sample runs completed and %d not yet, want %d in all", len(s.delays), s.late, sample)
	}
	return runs, s
}

// benchEmptyStarts times three starts of serve on fresh, empty state dirs
// (the cold start references).
func benchEmptyStarts(b *testing.B, bin string, env map[string]string, name string) []time.Duration {
	b.Helper()
	var empty []time.Duration
	for i := range 3 {
		q := newProc(b, bin, env, name+"-"+strconv.Itoa(i))
		empty = append(empty, benchStartTimed(b, q))
		q.stop(syscall.SIGTERM)
	}
	return empty
}

// benchMedianMs is the median of ds in milliseconds.
func benchMedianMs(ds []time.Duration) float64 { return benchtab.Ms(benchtab.Percentile(ds, 0.5)) }

// benchStartTimed starts p as p.start does and returns the time from the
// process's start to the first /readyz 200 (polled every 10 ms).
func benchStartTimed(b *testing.B, p *batchdProc) time.Duration {
	b.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(p.bin, "serve")
	for k, v := range p.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = f, f
	start := time.Now()
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		b.Fatalf("start batchd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); _ = f.Close() }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := start.Add(5 * time.Minute)
	for {
		resp, err := client.Get(p.url() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start)
			}
		}
		select {
		case err := <-done:
			done <- err
			b.Fatalf("batchd exited while starting: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			b.Fatalf("batchd not ready after 5m")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// benchMetrics reads every sample of /metrics, keyed by the series as
// printed (name{labels}).
func benchMetrics(base string) map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// benchSubmit submits one event per key through p's API (32 at once) and
// returns how long it took; any submission not accepted is fatal.
func benchSubmit(ctx context.Context, b *testing.B, p *batchdProc, keys []string) time.Duration {
	b.Helper()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, 32)
	for _, key := range keys {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := procEmit(ctx, p.url, key, procInputURI(key)); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d submissions were not accepted", n)
	}
	return time.Since(start)
}

// benchTracked is the number of runs p tracks (submitted or running).
func benchTracked(p *batchdProc) int {
	m := benchMetrics(p.url())
	return int(m[`batchd_runs{state="submitted"}`] + m[`batchd_runs{state="running"}`])
}

// benchStatusRequests counts every request the simulator got for a job's
// status: GETs (scoring and ARM) and ARM job list pages.
func benchStatusRequests(sim *jobstest.Sim) int64 {
	return sim.Count(jobstest.RouteGet) + sim.Count(jobstest.RouteARMGet) + sim.Count(jobstest.RouteARMList)
}

// benchBulkStatus is the bulk status row (issue 16 item 4): jobs that stay
// running, tracked by `batchd serve` with job lists (the default interval)
// and then by a second process job by job (BATCHD_JOB_LIST_INTERVAL=0),
// each with the tracking row's poll bounds and budget; after a settle, the
// status requests (GETs and list pages) over a window, per tracked job and
// hour.
func benchBulkStatus(b *testing.B, rep *benchtab.Report) {
	n := benchScaled(20000)
	settle, window := 30*time.Second, 2*time.Minute
	dir := b.TempDir()
	bin := procBuild(b, dir)
	ctx, cancel := context.WithTimeout(b.Context(), 20*time.Minute)
	defer cancel()
	type result struct {
		perJobHour, gets, pages float64
		age                     time.Duration
	}
	measure := func(name, listInterval string) result {
		sim := jobstest.New(b, jobstest.Options{Outcome: func(jobstest.JobView) jobstest.Lifecycle {
			return jobstest.Stuck(jobs.StatusRunning)
		}})
		sd := filepath.Join(dir, name)
		if err := os.MkdirAll(sd, 0o755); err != nil {
			b.Fatal(err)
		}
		env := procSimEnv(b, sim, sd)
		benchTrackingEnv(env)
		env["BATCHD_JOB_LIST_INTERVAL"] = listInterval
		p := newProc(b, bin, env, name)
		p.start()
		defer p.stop(syscall.SIGTERM)
		keys := make([]string, n)
		for i := range keys {
			keys[i] = name + "-" + strconv.Itoa(i)
		}
		start := time.Now()
		benchSubmit(ctx, b, p, keys)
		procWaitFor(b, 10*time.Minute, fmt.Sprintf("%d jobs tracked", n), func() bool { return benchTracked(p) >= n })
		time.Sleep(settle) // steady: every job has had its first looks
		g0, l0, t0 := sim.Count(jobstest.RouteGet)+sim.Count(jobstest.RouteARMGet), sim.Count(jobstest.RouteARMList), time.Now()
		time.Sleep(window)
		hours := time.Since(t0).Hours()
		gets := float64(sim.Count(jobstest.RouteGet) + sim.Count(jobstest.RouteARMGet) - g0)
		pages := float64(sim.Count(jobstest.RouteARMList) - l0)
		r := result{perJobHour: (gets + pages) / float64(n) / hours, gets: gets / hours, pages: pages / hours,
			age: time.Since(start) - window/2}
		b.Logf("%s: %d tracked, %.0f GETs and %.0f list pages per hour, %.2f requests per tracked job-hour (jobs about %s old)",
			name, n, r.gets, r.pages, r.perJobHour, r.age.Round(time.Second))
		return r
	}
	lists := measure("lists", (30 * time.Second).String())
	byJob := measure("job-by-job", "0")
	rep.Add(benchtab.Figure{Group: "bulk status", Name: fmt.Sprintf("status requests per tracked job-hour, %d running jobs, job lists every 30 s", n),
		Unit: "req", Batchd: lists.perJobHour, Reference: benchtab.Ref(byJob.perJobHour), RefName: "job by job (lists off)",
		Note: fmt.Sprintf("with lists %.0f GETs + %.0f list pages per hour, job by job %.0f GETs; jobs about %s old (poll bounds %s…%s, budget %d/s)",
			lists.gets, lists.pages, byJob.gets, lists.age.Round(time.Minute), benchPollMin, benchPollMax, benchPollBudget)})
	b.ReportMetric(0, "ns/op")
}

// benchStarvation is the no-starvation row (issue 16 item 5): 300,000 jobs
// that stay running, tracked at once by `batchd serve` with the tracking
// row's poll bounds and budget. When more jobs are tracked than the budget
// can look at within BATCHD_POLL_MAX, every interval stretches to
// tracked × 1.2 ÷ budget (360 s here); so every job must be looked at
// within that, ±10 % jitter. After every job has had its first looks (one
// stretched interval), the row counts each job's status reads over a window
// of 1.25 intervals: a job with none was starved.
func benchStarvation(b *testing.B, rep *benchtab.Report) {
	n := benchScaled(300000)
	dir := b.TempDir()
	bin := procBuild(b, dir)
	sim := jobstest.New(b, jobstest.Options{Outcome: func(jobstest.JobView) jobstest.Lifecycle {
		return jobstest.Stuck(jobs.StatusRunning)
	}})
	env := procSimEnv(b, sim, dir)
	benchTrackingEnv(env)
	p := newProc(b, bin, env, "starvation")
	p.start()
	defer p.stop(syscall.SIGTERM)
	ctx, cancel := context.WithTimeout(b.Context(), 60*time.Minute)
	defer cancel()
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "s-" + strconv.Itoa(i)
	}
	benchSubmit(ctx, b, p, keys)
	procWaitFor(b, 20*time.Minute, fmt.Sprintf("%d jobs tracked", n), func() bool { return sim.JobCount() >= n && benchTracked(p) >= n })
	interval := max(benchPollMax, time.Duration(float64(n)*1.2/benchPollBudget*float64(time.Second)))
	time.Sleep(interval) // every job has had its first looks
	polls := func() map[string]int {
		m := make(map[string]int, n)
		for _, j := range sim.Jobs() {
			m[j.Name] = j.Polls
		}
		return m
	}
	before, t0 := polls(), time.Now()
	window := interval + interval/4
	time.Sleep(window)
	after := polls()
	var looks []time.Duration // per job, as a Duration only to reuse benchPct
	starved := 0
	for name, c := range after {
		d := c - before[name]
		if d == 0 {
			starved++
		}
		looks = append(looks, time.Duration(d)*time.Millisecond)
	}
	mem, err := benchtab.ProcessMemoryParts(p.cmd.Process.Pid)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d tracked, interval %s, window %s: %d jobs not looked at; looks per job min %.0f, p50 %.0f; RSS %.0f MiB",
		len(after), interval, time.Since(t0).Round(time.Second), starved, benchPct(looks, 0), benchPct(looks, 0.5), mem.RSS)
	rep.Add(benchtab.Figure{Group: "tracking", Name: fmt.Sprintf("jobs not looked at within 1.25 stretched intervals, %d tracked", len(after)),
		Unit: "jobs", Batchd: float64(starved), Reference: benchtab.Ref(interval.Seconds()), RefName: "stretched interval (s)",
		Target: "0", Met: benchtab.Met(starved == 0 && len(after) >= n),
		Note: fmt.Sprintf("window %s; looks per job: min %.0f, median %.0f; RSS %.0f MiB; poll bounds %s…%s, budget %d/s",
			window, benchPct(looks, 0), benchPct(looks, 0.5), mem.RSS, benchPollMin, benchPollMax, benchPollBudget)})
	b.ReportMetric(0, "ns/op")
}

// benchTrackingEnv sets the tracking rows' poll bounds and budget (the
// figures are reported against them) and a quiet log.
func benchTrackingEnv(env map[string]string) {
	env["BATCHD_POLL_MIN"] = benchPollMin.String()
	env["BATCHD_POLL_MAX"] = benchPollMax.String()
	env["BATCHD_POLL_BUDGET"] = strconv.Itoa(benchPollBudget)
	env["BATCHD_LOG_LEVEL"] = "warn"
}
