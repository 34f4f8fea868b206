package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator/broker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startBroker starts an embedded nats-server with JetStream in a temp dir.
func startBroker(t testing.TB) *broker.Broker {
	t.Helper()
	return startBrokerIn(t, t.TempDir())
}

// startBrokerIn starts an embedded nats-server with JetStream in dir.
func startBrokerIn(t testing.TB, dir string) *broker.Broker {
	t.Helper()
	b, err := broker.Start(t.Context(), broker.Options{StoreDir: dir})
	if err != nil {
		t.Fatalf("broker.Start: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// crash simulates the process dying with work in flight: NATS goes away at
// once (nothing more is written or acked), then the orchestrator's Run
// returns. It returns a new embedded server on the same store, as the next
// start would find it. (A SIGTERM never abandons a POST: see
// TestShutdownDoesNotAbandonPOST.)
func crash(t testing.TB, h *harness, dir string) *broker.Broker {
	t.Helper()
	h.b.Close()
	_ = h.stop() // steps in flight fail to record: NATS is gone
	return startBrokerIn(t, dir)
}

// fakeSub is a hand-written Submitter: an Azure ML batch endpoint in
// memory. Jobs run for `polls` status requests and then end in `final`.
type fakeSub struct {
	mu       sync.Mutex
	jobs     map[string]*fakeJob
	order    []string
	submits  int
	gets     int
	lists    int
	cancels  []string
	polls    int
	final    jobs.Status
	failMsg  string
	maxLive  int // most jobs not finished at once
	script   []submitOutcome
	finals   []jobs.Status // per job, in creation order; then final
	listErr  error
	listHold chan struct{} // when set, List blocks until it is closed or ctx ends
	hold     chan struct{} // when set, Submit blocks until it is closed
	inSubmit chan struct{} // when set, Submit signals here on entry
}

// submitOutcome scripts one Submit call: create the job or not, and the
// error to return.
type submitOutcome struct {
	create bool
	err    error
	panic  string // Submit panics with it (a bug in a step)
}

type fakeJob struct {
	job   jobs.Job
	polls int
	final jobs.Status
}

func newFakeSub() *fakeSub {
	return &fakeSub{jobs: map[string]*fakeJob{}, polls: 2, final: jobs.StatusCompleted}
}

func (f *fakeSub) Submit(ctx context.Context, ep jobs.Endpoint, req jobs.JobRequest) (*jobs.Job, error) {
	if f.inSubmit != nil {
		select {
		case f.inSubmit <- struct{}{}:
		default:
		}
	}
	if f.hold != nil {
		select {
		case <-f.hold:
		case <-ctx.Done():
			return nil, &jobs.TransportError{Op: jobs.OpSubmit, Method: "POST", URL: ep.ScoringURI, Sent: true, Err: ctx.Err()}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.submits++
	out := submitOutcome{create: true}
	if len(f.script) > 0 {
		out, f.script = f.script[0], f.script[1:]
	}
	if out.panic != "" {
		panic(out.panic)
	}
	if !out.create {
		return nil, out.err
	}
	name := fmt.Sprintf("job-%03d", len(f.order)+1)
	final := f.final
	if i := len(f.order); i < len(f.finals) {
		final = f.finals[i]
	}
	inputs := map[string]string{}
	for n, in := range req.Inputs {
		inputs[n] = in.URI
	}
	j := &fakeJob{job: jobs.Job{Name: name, Status: jobs.StatusNotStarted, CreatedAt: time.Now().UTC(), Inputs: inputs,
		StudioURL: "https://ml.azure.com/runs/" + name}, final: final}
	f.jobs[name] = j
	f.order = append(f.order, name)
	live := 0
	for _, x := range f.jobs {
		if !x.job.Status.Terminal() {
			live++
		}
	}
	f.maxLive = max(f.maxLive, live)
	if out.err != nil {
		return nil, out.err
	}
	c := j.job
	return &c, nil
}

func (f *fakeSub) Get(_ context.Context, _ jobs.Endpoint, name string) (*jobs.Job, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gets++
	j, ok := f.jobs[name]
	if !ok {
		return nil, &jobs.APIError{Op: jobs.OpGet, Method: "GET", StatusCode: 404, Message: "no such job"}
	}
	if !j.job.Status.Terminal() {
		j.polls++
		switch {
		case j.polls >= f.polls && j.final != jobs.StatusRunning:
			j.job.Status = j.final
			if j.final == jobs.StatusFailed {
				j.job.Error = f.failMsg
			}
		default:
			j.job.Status = jobs.StatusRunning
		}
	}
	c := j.job
	return &c, nil
}

func (f *fakeSub) Cancel(_ context.Context, ep jobs.Endpoint, name string) error {
	if ep.Workspace == nil {
		return jobs.ErrNoWorkspace
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cancels = append(f.cancels, name)
	if j, ok := f.jobs[name]; ok && !j.job.Status.Terminal() {
		j.job.Status = jobs.StatusCanceled
	}
	return nil
}

func (f *fakeSub) List(ctx context.Context, ep jobs.Endpoint, since time.Time, _ ...jobs.ListOption) ([]jobs.Job, error) {
	if ep.Workspace == nil {
		return nil, jobs.ErrNoWorkspace
	}
	f.mu.Lock()
	hold := f.listHold
	f.mu.Unlock()
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	if f.listErr != nil {
		return nil, f.listErr
	}
	var out []jobs.Job
	for _, name := range f.order {
		if j := f.jobs[name]; !j.job.CreatedAt.Before(since) {
			out = append(out, j.job)
		}
	}
	return out, nil
}

func (f *fakeSub) counts() (submits, jobsCreated int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.submits, len(f.order)
}

// addJob puts a job on the endpoint as if some earlier POST had created it.
func (f *fakeSub) addJob(inputURI string, created time.Time) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := fmt.Sprintf("job-%03d", len(f.order)+1)
	f.jobs[name] = &fakeJob{job: jobs.Job{Name: name, Status: jobs.StatusRunning, CreatedAt: created,
		Inputs: map[string]string{"data": inputURI}}, final: f.final}
	f.order = append(f.order, name)
	return name
}

// fakeChecker allows everything except URIs containing "forbidden".
type fakeChecker struct{}

func (fakeChecker) Check(_ context.Context, req datastores.Request) datastores.Decision {
	d := datastores.Decision{Verdict: datastores.Allow, At: time.Now().UTC()}
	for _, in := range req.Inputs {
		if strings.Contains(in.URI, "forbidden") {
			d.Verdict = datastores.Reject
			d.Reason = "input " + in.Name + ": not in the allow list"
			d.Checks = append(d.Checks, datastores.Check{Name: "allow-list", Subject: in.Name, Result: datastores.Fail, Reason: d.Reason})
			return d
		}
		d.Checks = append(d.Checks, datastores.Check{Name: "allow-list", Subject: in.Name, Result: datastores.Pass, Reason: "allowed"})
	}
	return d
}

var testWorkspace = &jobs.Workspace{Subscription: "sub", ResourceGroup: "rg", Name: "ws"}

// testPipeline is a pipeline whose one input comes from the field "uri".
func testPipeline(t testing.TB, name string, ws *jobs.Workspace) *Pipeline {
	t.Helper()
	uri, err := CompileTemplate("{{ .Fields.uri }}")
	if err != nil {
		t.Fatalf("CompileTemplate: %v", err)
	}
	return &Pipeline{
		Name: name,
		Endpoint: Endpoint{Endpoint: jobs.Endpoint{Name: "ep-" + name, ScoringURI: "https://ep-" + name + ".westeurope.inference.ml.azure.com/jobs",
			Workspace: ws}},
		Inputs: map[string]IOTemplate{"data": {Type: jobs.TypeUriFile, URI: uri}},
		Retry:  RetryPolicy{MaxAttempts: 1},
	}
}

// harness is an Orchestrator running on its own embedded NATS.
type harness struct {
	t    testing.TB
	b    *broker.Broker
	o    *Orchestrator
	sub  Submitter
	logs *syncBuffer
	// reg is the registry the orchestrator's metrics are on.
	reg  *prometheus.Registry
	stop func() error
	// stopping is closed once Run's context has been canceled.
	stopping chan struct{}
}

type harnessOpt func(*Options)

func fastOptions(o *Options) {
	o.PollMin = 20 * time.Millisecond
	o.PollMax = 100 * time.Millisecond
	o.PollBudget = 1000
	o.ReconcileGrace = 300 * time.Millisecond
	o.SubmitTimeout = 2 * time.Second
	o.ShutdownGrace = 5 * time.Second
	o.AdmissionRetryMax = 100 * time.Millisecond
	o.ParkInterval = 100 * time.Millisecond
	o.RepairInterval = time.Hour
	o.submitMargin = 100 * time.Millisecond
	o.JobListInterval = -1 // job by job; bulk status has its own tests
}

func newHarness(t testing.TB, pipelines []*Pipeline, sub Submitter, opts ...harnessOpt) *harness {
	t.Helper()
	b := startBroker(t)
	return startOn(t, b, pipelines, sub, opts...)
}

func startOn(t testing.TB, b *broker.Broker, pipelines []*Pipeline, sub Submitter, opts ...harnessOpt) *harness {
	t.Helper()
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	o := Options{
		JS: b.JS, Conn: b.Conn, Submitter: sub, Checker: fakeChecker{}, Registerer: reg,
		Pipelines: map[string]*Pipeline{},
		Logger:    slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, p := range pipelines {
		o.Pipelines[p.Name] = p
	}
	fastOptions(&o)
	for _, f := range opts {
		f(&o)
	}
	orch, err := New(t.Context(), o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- orch.Run(ctx) }()
	h := &harness{t: t, b: b, o: orch, sub: sub, logs: logs, reg: reg, stopping: make(chan struct{})}
	var once sync.Once
	var runErr error
	h.stop = func() error {
		once.Do(func() {
			cancel()
			close(h.stopping)
			runErr = <-done
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := h.stop(); err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	})
	waitFor(t, 10*time.Second, "orchestrator ready", func() bool { return orch.Ready() == nil })
	return h
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) emit(pipeline, key, uri string) string {
	h.t.Helper()
	rc, err := h.o.Emit(h.t.Context(), Event{Pipeline: pipeline, Key: key, Source: SourceAPI, Fields: map[string]string{"uri": uri}})
	if err != nil {
		h.t.Fatalf("Emit: %v", err)
	}
	return rc.RunID
}

// waitState waits for the run to reach state and returns it.
func (h *harness) waitState(id string, state State, d time.Duration) *Run {
	h.t.Helper()
	var last *Run
	deadline := time.Now().Add(d)
	for {
		r, err := h.o.Get(h.t.Context(), id)
		if err == nil {
			last = r
			if r.State == state {
				return r
			}
		} else if !errors.Is(err, ErrRunNotFound) {
			h.t.Fatalf("Get(%s): %v", id, err)
		}
		if time.Now().After(deadline) {
			if last != nil {
				h.t.Fatalf("run %s: state %s after %s, want %s; history: %s", id, last.State, d, state, historyString(last))
			}
			h.t.Fatalf("run %s not recorded after %s, want state %s", id, d, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func historyString(r *Run) string {
	var b strings.Builder
	for _, tr := range r.History {
		fmt.Fprintf(&b, "\n  %s: %s", tr.State, tr.Reason)
	}
	return b.String()
}

func states(r *Run) []State {
	var s []State
	for _, tr := range r.History {
		s = append(s, tr.State)
	}
	return s
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// countingSub counts one replica's submissions to a shared fake endpoint.
type countingSub struct {
	*fakeSub
	n atomic.Int64
}

func (c *countingSub) Submit(ctx context.Context, ep jobs.Endpoint, req jobs.JobRequest) (*jobs.Job, error) {
	c.n.Add(1)
	return c.fakeSub.Submit(ctx, ep, req)
}

func itoa(i int) string { return strconv.Itoa(i) }

func (f *fakeSub) listCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists
}
