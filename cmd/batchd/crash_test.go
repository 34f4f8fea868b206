package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
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

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker/brokertest"
)

// The subprocess tests run the real binary against the Azure ML simulator
// (in this test process): managed identity through the App Service protocol,
// the simulator's CA through SSL_CERT_FILE, ARM (list, cancel) on the
// simulator, an endpoint with a workspace so reconciliation can list jobs.
// Inputs are data-asset URIs, which the preflight does not probe (so nothing
// reaches a non-loopback address).

// buildBatchd builds the binary into dir.
func procBuild(t testing.TB, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "batchd")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = os.Environ()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func procFreeAddr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(brokertest.FreePort(t)))
}

// simProcessEnv is the environment that points a batchd process at sim.
func procSimEnv(t testing.TB, sim *jobstest.Sim, dir string) map[string]string {
	t.Helper()
	ca := filepath.Join(dir, "sim-ca.pem")
	if err := sim.WriteCA(ca); err != nil {
		t.Fatal(err)
	}
	ws := sim.Workspace()
	pipelines := fmt.Sprintf(`endpoints:
  sim:
    uri: %s
    workspace:
      subscription: %s
      resource_group: %s
      name: %s
pipelines:
  crash:
    endpoint: sim
    inputs:
      data:
        type: UriFile
        uri: "{{ .Fields.uri }}"
`, sim.ScoringURI("crash"), ws.Subscription, ws.ResourceGroup, ws.Name)
	pf := filepath.Join(dir, "pipelines.yaml")
	if err := os.WriteFile(pf, []byte(pipelines), 0o644); err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"PATH":                  os.Getenv("PATH"),
		"HOME":                  dir,
		"BATCHD_PIPELINES":      pf,
		"BATCHD_CREDENTIAL":     "managed-identity",
		"IDENTITY_ENDPOINT":     sim.IdentityEndpoint(),
		"IDENTITY_HEADER":       sim.IdentityHeader(),
		"SSL_CERT_FILE":         ca,
		"BATCHD_ARM_ENDPOINT":   sim.ARMEndpoint(),
		"BATCHD_SUBMIT_TIMEOUT": "2s",
		"BATCHD_POLL_MIN":       "100ms",
		"BATCHD_POLL_MAX":       "400ms",
		"BATCHD_POLL_BUDGET":    "2000",
		// Job by job: these tests count status requests. Bulk status has
		// its own (TestBulkStatusThroughServe, the soak).
		"BATCHD_JOB_LIST_INTERVAL": "0",
		"BATCHD_RECONCILE_GRACE":   "2s",
		"BATCHD_SHUTDOWN_GRACE":    "3s",
		"BATCHD_WORKERS":           "16",
		"BATCHD_LOG_FORMAT":        "json",
		"BATCHD_LOG_LEVEL":         "info",
	}
}

// procWithSim builds batchd and starts one serve process against a new
// simulator (jobs complete quickly), with procSimEnv's environment plus
// extra.
func procWithSim(t *testing.T, name string, extra map[string]string) (*batchdProc, *jobstest.Sim) {
	t.Helper()
	sim := jobstest.New(t, jobstest.Options{Lifecycle: procQuickLifecycle()})
	dir := t.TempDir()
	bin := procBuild(t, dir)
	env := procSimEnv(t, sim, dir)
	for k, v := range extra {
		env[k] = v
	}
	p := newProc(t, bin, env, name)
	p.start()
	return p, sim
}

// proc is one batchd serve subprocess.
type batchdProc struct {
	t    testing.TB
	bin  string
	env  map[string]string
	addr string
	log  string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan error
}

func newProc(t testing.TB, bin string, env map[string]string, name string) *batchdProc {
	t.Helper()
	dir := t.TempDir()
	e := map[string]string{}
	for k, v := range env {
		e[k] = v
	}
	addr := procFreeAddr(t)
	e["BATCHD_HTTP_ADDR"] = addr
	if e["BATCHD_NATS_URL"] == "" {
		e["BATCHD_STATE_DIR"] = filepath.Join(dir, "state")
	} else {
		e["BATCHD_STATE_DIR"] = filepath.Join(dir, "state-unused")
	}
	p := &batchdProc{t: t, bin: bin, env: e, addr: addr, log: filepath.Join(dir, name+".log")}
	t.Cleanup(func() {
		p.stop(syscall.SIGKILL)
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			lines := strings.Split(string(b), "\n")
			var errs []string
			for _, l := range lines {
				if strings.Contains(l, `"level":"ERROR"`) || strings.Contains(l, "level=ERROR") {
					errs = append(errs, l)
				}
			}
			t.Logf("error lines of %s (the last 30):\n%s", name, strings.Join(errs[max(0, len(errs)-30):], "\n"))
			t.Logf("last lines of %s:\n%s", name, strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return p
}

func (p *batchdProc) url() string { return "http://" + p.addr }

// start starts the process and waits until /readyz answers 200.
func (p *batchdProc) start() {
	p.t.Helper()
	p.launch()
	if err := p.waitReady(30 * time.Second); err != nil {
		p.t.Fatal(err)
	}
}

// launch starts the process without waiting for it.
func (p *batchdProc) launch() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	p.logMark("test harness: process starting")
	cmd := exec.Command(p.bin, "serve")
	for k, v := range p.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		_ = f.Close()
		p.t.Fatalf("start batchd: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); _ = f.Close() }()
	p.mu.Lock()
	p.cmd, p.done = cmd, done
	p.mu.Unlock()
}

// logMark appends a JSON record to the process's log, so that a reader
// of the log sees where one process ended and the next began (a process
// killed with SIGKILL writes nothing at its end).
func (p *batchdProc) logMark(msg string) {
	b, _ := json.Marshal(map[string]string{"time": time.Now().Format(time.RFC3339Nano), "level": "INFO", "msg": msg})
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err == nil {
		_, err = f.Write(append(b, '\n'))
		err = errors.Join(err, f.Close())
	}
	if err != nil {
		p.t.Errorf("mark the log: %v", err) // Errorf: stop may run off the test goroutine
	}
}

// waitReady waits until /readyz answers 200; it fails if the process
// exits first or d passes.
func (p *batchdProc) waitReady(d time.Duration) error {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(p.url() + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
		}
		select {
		case err := <-done:
			done <- err
			return fmt.Errorf("batchd exited while starting: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("batchd not ready after %s", d)
		}
		time.Sleep(20 * time.Millisecond) // polling another process to a deadline
	}
}

// stop sends sig and waits for the exit; it returns the exit code (-1 for a
// kill).
func (p *batchdProc) stop(sig syscall.Signal) int {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return 0
	}
	_ = cmd.Process.Signal(sig)
	defer p.logMark("test harness: process exited")
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			return -2
		}
		return 0
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done //nolint:errcheck // the exit status of a process we killed
		return -3
	}
}

// emitEvent posts a manual run until the daemon acknowledges it (202 or
// 200), as a trigger would keep its event until Emit succeeds.
func procEmit(ctx context.Context, base func() string, key, uri string) error {
	body := fmt.Sprintf(`{"key":%q,"fields":{"uri":%q}}`, key, uri)
	for {
		req, err := http.NewRequestWithContext(ctx, "POST", base()+"/api/v1/pipelines/crash/runs", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 || resp.StatusCode == 202 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// listAll reads every run through the API.
func procListAll(base string) ([]orchestrator.RunSummary, error) {
	var all []orchestrator.RunSummary
	cursor := ""
	for {
		resp, err := http.Get(base + "/api/v1/runs?limit=1000&cursor=" + cursor)
		if err != nil {
			return nil, err
		}
		var l orchestrator.RunList
		err = json.NewDecoder(resp.Body).Decode(&l)
		resp.Body.Close()
		if err != nil {
			return nil, err
		}
		all = append(all, l.Runs...)
		if l.NextCursor == "" {
			return all, nil
		}
		cursor = l.NextCursor
	}
}

func procGetRun(base, id string) (*orchestrator.Run, error) { return procGetRunToken(base, "", id) }

// waitAllFinished polls until n runs exist and all are finished.
func procWaitFinished(t *testing.T, base func() string, n int, d time.Duration) []orchestrator.RunSummary {
	t.Helper()
	deadline := time.Now().Add(d)
	var last []orchestrator.RunSummary
	for {
		runs, err := procListAll(base())
		if err == nil {
			last = runs
			done := 0
			for _, r := range runs {
				if r.State.Terminal() {
					done++
				}
			}
			if len(runs) == n && done == n {
				return runs
			}
		}
		if time.Now().After(deadline) {
			counts := map[orchestrator.State]int{}
			for _, r := range last {
				counts[r.State]++
			}
			t.Fatalf("after %s: %d runs, by state %v; want %d, all finished", d, len(last), counts, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkOneJobPerRun checks the simulator's side: every input got exactly one
// job, and every run's job is that one.
func procCheckOneJobPerRun(t *testing.T, sim *jobstest.Sim, runs []orchestrator.RunSummary, uriOf func(key string) string) {
	t.Helper()
	byURI := map[string][]string{}
	for _, j := range sim.Jobs() {
		byURI[j.Inputs["data"].URI] = append(byURI[j.Inputs["data"].URI], j.Name)
	}
	for _, r := range runs {
		if r.State != orchestrator.StateCompleted {
			t.Errorf("run %s (%s) ended %s: %s", r.ID, r.Key, r.State, r.Reason)
			continue
		}
		got := byURI[uriOf(r.Key)]
		if len(got) != 1 {
			t.Errorf("run %s (%s): the simulator created %d jobs %v, want exactly 1", r.ID, r.Key, len(got), got)
			continue
		}
		if r.Job == nil || r.Job.Name != got[0] {
			t.Errorf("run %s tracks job %v, want %s", r.ID, r.Job, got[0])
		}
	}
	if n := sim.JobCount(); n != len(runs) {
		t.Errorf("the simulator created %d jobs for %d runs", n, len(runs))
	}
}

func procInputURI(key string) string {
	return "azureml://locations/westeurope/workspaces/sim/data/" + key + "/versions/1"
}

// TestCrashRecovery kills batchd with SIGKILL at random moments (and while
// POSTs are in flight) and restarts it each time. Every acknowledged event
// must end in exactly one finished run, the simulator must have created
// exactly one job per run, and nothing may be lost.
//
// BATCHD_CRASH_EVENTS and BATCHD_CRASH_KILLS make it bigger (make soak).
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("subprocess crash test: skipped with -short")
	}
	events := procEnvInt("BATCHD_CRASH_EVENTS", 500)
	kills := procEnvInt("BATCHD_CRASH_KILLS", 6)
	dir := t.TempDir()
	bin := procBuild(t, dir)
	sim := jobstest.New(t, jobstest.Options{Lifecycle: procQuickLifecycle()})
	// Slow POSTs widen the window between submitting and the answer; the
	// simulator still creates the job when the client is gone. Some POSTs
	// are answered by a reset after the job was created (ambiguous).
	sim.SetFaultRate(jobstest.RouteCreate, 0.3,
		jobstest.Fault{Delay: 300 * time.Millisecond},
		jobstest.Fault{Delay: 600 * time.Millisecond},
		jobstest.Fault{Reset: jobstest.ResetAfter})
	p := newProc(t, bin, procSimEnv(t, sim, dir), "batchd")
	p.start()

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	var acked atomic.Int64
	emitDone := make(chan error, 1)
	go func() {
		// A steady stream (about 100 events/s) over the whole kill period.
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		sem := make(chan struct{}, 8)
		var wg sync.WaitGroup
		var firstErr atomic.Value
		for i := range events {
			<-tick.C
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				key := "ev-" + strconv.Itoa(i)
				if err := procEmit(ctx, p.url, key, procInputURI(key)); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				acked.Add(1)
			}()
		}
		wg.Wait()
		if err, _ := firstErr.Load().(error); err != nil {
			emitDone <- err
			return
		}
		emitDone <- nil
	}()

	submittingNow := func() bool {
		resp, err := http.Get(p.url() + "/api/v1/runs?state=submitting&limit=1")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var l orchestrator.RunList
		return json.NewDecoder(resp.Body).Decode(&l) == nil && len(l.Runs) > 0
	}
	for k := range kills {
		time.Sleep(time.Duration(300+rand.IntN(1200)) * time.Millisecond)
		// Every other kill waits (a while) for a run in submitting: a POST
		// in flight, or one a previous kill cut off.
		for deadline := time.Now().Add(5 * time.Second); k%2 == 0 && !submittingNow() && time.Now().Before(deadline); {
			time.Sleep(5 * time.Millisecond)
		}
		p.stop(syscall.SIGKILL)
		p.start()
	}
	if err := <-emitDone; err != nil {
		t.Fatalf("emitting: %v", err)
	}
	if got := acked.Load(); got != int64(events) {
		t.Fatalf("acknowledged %d events, want %d", got, events)
	}
	runs := procWaitFinished(t, p.url, events, 3*time.Minute)
	procCheckOneJobPerRun(t, sim, runs, procInputURI)

	// Runs caught between their submitting write and the POST's recorded
	// answer were found in submitting after the restart, made unknown and
	// reconciled, never posted again blindly.
	crashRule, unknown := 0, 0
	for _, r := range runs {
		full, err := procGetRun(p.url(), r.ID)
		if err != nil {
			t.Fatal(err)
		}
		seen := false
		for _, h := range full.History {
			if h.State != orchestrator.StateUnknown {
				continue
			}
			if !seen {
				unknown++
				seen = true
			}
			if strings.Contains(h.Reason, "found in submitting after the submit deadline") {
				crashRule++
				break
			}
		}
	}
	t.Logf("%d events, %d kills: %d runs caught mid-submission by a kill, %d runs reconciled after an unknown outcome in all, %d jobs",
		events, kills, crashRule, unknown, sim.JobCount())
	if crashRule == 0 {
		t.Errorf("no kill landed between a submitting write and its answer")
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code after SIGTERM = %d, want 0", code)
	}
}

// quickLifecycle: Running for one status read, then Completed.
func procQuickLifecycle() jobstest.Lifecycle {
	return jobstest.Lifecycle{Steps: []jobstest.Step{{Status: jobs.StatusRunning, Polls: 1}, {Status: jobs.StatusCompleted}}}
}

func procEnvInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func procWaitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
