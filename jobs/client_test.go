package jobs_test

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// Every status path, read through the endpoint (data plane) and through ARM.
func TestStatusPaths(t *testing.T) {
	S := func(status jobs.Status, polls int) jobstest.Step { return jobstest.Step{Status: status, Polls: polls} }
	var everyStatus []jobstest.Step
	for _, st := range []jobs.Status{jobs.StatusNotStarted, jobs.StatusStarting, jobs.StatusProvisioning,
		jobs.StatusPreparing, jobs.StatusQueued, jobs.StatusRunning, jobs.StatusNotResponding, jobs.StatusPaused,
		jobs.StatusUnknown, jobs.StatusFinalizing} {
		everyStatus = append(everyStatus, S(st, 1))
	}
	everyStatus = append(everyStatus, S(jobs.StatusCompleted, 0))

	tests := []struct {
		name      string
		lc        jobstest.Lifecycle
		want      []jobs.Status
		wantError string
	}{
		{
			name: "default path completes",
			lc:   jobstest.DefaultLifecycle(),
			want: []jobs.Status{"NotStarted", "Queued", "Running", "Finalizing", "Completed"},
		},
		{
			name:      "failed job carries the service's message",
			lc:        jobstest.Fails("No succeeded mini batch item returned from run()"),
			want:      []jobs.Status{"NotStarted", "Queued", "Running", "Failed"},
			wantError: "No succeeded mini batch item returned from run()",
		},
		{
			name: "stuck job stays running",
			lc:   jobstest.Stuck(jobs.StatusRunning),
			want: []jobs.Status{"Running", "Running", "Running", "Running", "Running", "Running"},
		},
		{
			name: "every documented status in turn",
			lc:   jobstest.Lifecycle{Steps: everyStatus},
			want: []jobs.Status{"NotStarted", "Starting", "Provisioning", "Preparing", "Queued", "Running",
				"NotResponding", "Paused", "Unknown", "Finalizing", "Completed"},
		},
		{
			name: "an undocumented status is kept and is not terminal",
			lc:   jobstest.Lifecycle{Steps: []jobstest.Step{S("Scheduled", 2), S(jobs.StatusCompleted, 0)}},
			want: []jobs.Status{"Scheduled", "Scheduled", "Completed"},
		},
		{
			name: "legacy spellings and casing are normalised",
			lc:   jobstest.Lifecycle{Steps: []jobstest.Step{S("running", 1), S("Succeeded", 0)}},
			want: []jobs.Status{"Running", "Completed"},
		},
	}
	for _, plane := range []string{"data plane", "ARM"} {
		for _, tt := range tests {
			t.Run(plane+"/"+tt.name, func(t *testing.T) {
				h := newHarness(t, jobstest.Options{Outcome: func(jobstest.JobView) jobstest.Lifecycle { return tt.lc }})
				ep, route := h.sim.Endpoint("ep"), jobstest.RouteGet
				if plane == "ARM" {
					ep, route = h.sim.WorkspaceEndpoint("ep"), jobstest.RouteARMGet
				}
				sub, err := h.submit(ep, oneInput())
				if err != nil {
					t.Fatalf("Submit: %v", err)
				}
				var got []jobs.Status
				var last *jobs.Job
				for range tt.want {
					j, err := h.get(ep, sub.Name)
					if err != nil {
						t.Fatalf("Get: %v", err)
					}
					got, last = append(got, j.Status), j
				}
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("statuses (-want +got):\n%s", diff)
				}
				wantTerminal := tt.want[len(tt.want)-1] == jobs.StatusCompleted || tt.want[len(tt.want)-1] == jobs.StatusFailed
				if last.Status.Terminal() != wantTerminal {
					t.Errorf("last status %q Terminal() = %v, want %v", last.Status, last.Status.Terminal(), wantTerminal)
				}
				if last.Error != tt.wantError {
					t.Errorf("Error = %q, want %q", last.Error, tt.wantError)
				}
				if last.Name != sub.Name || !strings.HasPrefix(last.StudioURL, "https://ml.azure.com/runs/"+sub.Name) {
					t.Errorf("job = %+v, want name %s and a studio link", last, sub.Name)
				}
				counts := h.sim.Counts()
				if counts[jobstest.RouteCreate] != 1 || counts[route] != int64(len(tt.want)) {
					t.Errorf("counts = %v, want 1 create and %d %s", counts, len(tt.want), route)
				}
			})
		}
	}
}

func TestSubmitReturnsJob(t *testing.T) {
	h := newHarness(t, jobstest.Options{})
	ep := h.sim.Endpoint("ep")
	ep.Deployment = "blue"
	req := oneInput()
	req.RequestID = "11111111-2222-4333-8444-555555555555"
	j, err := h.submit(ep, req)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if j.Status != jobs.StatusNotStarted || !strings.HasPrefix(j.Name, "batchjob-") || j.StudioURL == "" || j.CreatedAt.IsZero() {
		t.Errorf("job = %+v, want NotStarted with a name, studio link and creation time", j)
	}
	view, ok := h.sim.Job(j.Name)
	if !ok {
		t.Fatalf("simulator has no job %s", j.Name)
	}
	want := jobstest.JobView{Deployment: "blue", RequestID: req.RequestID, Repeatability: req.RequestID,
		Inputs: map[string]jobstest.IO{"heart_dataset": {Type: "UriFolder", URI: req.Inputs["heart_dataset"].URI}}}
	got := jobstest.JobView{Deployment: view.Deployment, RequestID: view.RequestID, Repeatability: view.Repeatability, Inputs: view.Inputs}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("job as the service saw it (-want +got):\n%s", diff)
	}

	// A request's own deployment wins over the endpoint's; each request
	// without a RequestID gets a fresh one.
	req2 := oneInput()
	req2.Deployment = "green"
	j2, err := h.submit(ep, req2)
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	j3, err := h.submit(ep, oneInput())
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	v2, _ := h.sim.Job(j2.Name)
	v3, _ := h.sim.Job(j3.Name)
	if v2.Deployment != "green" || v3.Deployment != "blue" {
		t.Errorf("deployments = %q, %q, want green, blue", v2.Deployment, v3.Deployment)
	}
	if v2.RequestID == "" || v2.RequestID == v3.RequestID || v2.RequestID != v2.Repeatability {
		t.Errorf("request ids %q/%q and %q: want fresh, distinct, and the same in both headers", v2.RequestID, v2.Repeatability, v3.RequestID)
	}
}

// Every fault on the POST: the POST is sent exactly once and the error is
// classified so the caller knows whether a job may exist.
func TestSubmitFaults(t *testing.T) {
	permanent := class{Permanent: true}
	permanentAuth := class{Permanent: true, Auth: true}
	ambiguous := class{Ambiguous: true}
	tests := []struct {
		name           string
		fault          jobstest.Fault
		timeout        time.Duration
		want           class
		wantRetryAfter time.Duration
		wantJobs       int
		wantStatus     int
		wantInError    string
	}{
		{name: "401", fault: jobstest.Fault{Status: 401}, want: permanentAuth, wantStatus: 401},
		{name: "403", fault: jobstest.Fault{Status: 403, Code: "AuthorizationFailed",
			Message: "The client 'x' with object id 'y' does not have authorization to perform action 'Microsoft.MachineLearningServices/workspaces/batchEndpoints/deployments/jobs/write' over scope 'z'"},
			want: permanentAuth, wantStatus: 403, wantInError: "batchEndpoints/deployments/jobs/write"},
		{name: "400", fault: jobstest.Fault{Status: 400, Message: "bad input"}, want: permanent, wantStatus: 400, wantInError: "bad input"},
		{name: "404", fault: jobstest.Fault{Status: 404}, want: permanent, wantStatus: 404},
		{name: "409", fault: jobstest.Fault{Status: 409}, want: permanent, wantStatus: 409},
		{name: "422", fault: jobstest.Fault{Status: 422}, want: permanent, wantStatus: 422},
		{name: "429 with Retry-After is retryable, not ambiguous", fault: jobstest.Fault{Status: 429, RetryAfter: 3 * time.Second},
			want: class{Retryable: true}, wantRetryAfter: 3 * time.Second, wantStatus: 429},
		{name: "500 is ambiguous", fault: jobstest.Fault{Status: 500}, want: ambiguous, wantStatus: 500},
		{name: "502 is ambiguous", fault: jobstest.Fault{Status: 502}, want: ambiguous, wantStatus: 502},
		{name: "503 is ambiguous", fault: jobstest.Fault{Status: 503, RetryAfter: time.Second}, want: ambiguous, wantRetryAfter: time.Second, wantStatus: 503},
		{name: "408 is ambiguous", fault: jobstest.Fault{Status: 408}, want: ambiguous, wantStatus: 408},
		{name: "504 after the job was created is ambiguous", fault: jobstest.Fault{Status: 504, AfterHandling: true},
			want: ambiguous, wantStatus: 504, wantJobs: 1},
		{name: "reset before the job is created", fault: jobstest.Fault{Reset: jobstest.ResetBefore}, want: ambiguous, wantJobs: 0},
		{name: "reset after the job is created", fault: jobstest.Fault{Reset: jobstest.ResetAfter}, want: ambiguous, wantJobs: 1},
		{name: "slow answer past the deadline", fault: jobstest.Fault{Delay: 600 * time.Millisecond}, timeout: 200 * time.Millisecond,
			want: ambiguous, wantJobs: 1},
		{name: "2xx that is not JSON", fault: jobstest.Fault{Status: 200, Body: "<html>ok</html>"}, want: ambiguous},
		{name: "2xx without a job name", fault: jobstest.Fault{Status: 202, Body: `{"properties":{"status":"Queued"}}`}, want: ambiguous},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, jobstest.Options{})
			h.warmUp()
			h.sim.Inject(jobstest.RouteCreate, tt.fault)
			ctx := context.Background()
			if tt.timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tt.timeout)
				defer cancel()
			}
			j, err := h.c.Submit(ctx, h.sim.Endpoint("ep"), oneInput())
			_ = h.note(err)
			if err == nil {
				t.Fatalf("Submit = %+v, want an error", j)
			}
			if got := classify(err); got != tt.want {
				t.Errorf("classify(%v) = %+v, want %+v", err, got, tt.want)
			}
			ra, ok := jobs.RetryAfter(err)
			if ra != tt.wantRetryAfter || ok != (tt.wantRetryAfter > 0) {
				t.Errorf("RetryAfter = %v, %v, want %v", ra, ok, tt.wantRetryAfter)
			}
			var ae *jobs.APIError
			if tt.wantStatus != 0 && (!errors.As(err, &ae) || ae.StatusCode != tt.wantStatus || ae.Op != jobs.OpSubmit) {
				t.Errorf("error %v: want an *APIError with status %d", err, tt.wantStatus)
			}
			if tt.wantInError != "" && !strings.Contains(err.Error(), tt.wantInError) {
				t.Errorf("error %q does not mention %q", err, tt.wantInError)
			}
			waitFor(t, "the simulator to finish the request", func() bool { return h.sim.JobCount() == tt.wantJobs || tt.wantJobs == 0 })
			if got := h.sim.Count(jobstest.RouteCreate); got != 1 {
				t.Errorf("POST sent %d times, want exactly 1", got)
			}
			if got := h.sim.JobCount(); got != tt.wantJobs {
				t.Errorf("jobs created = %d, want %d", got, tt.wantJobs)
			}
		})
	}
}

// Faults on the reads: GETs (and the idempotent cancel) retry with backoff,
// honour Retry-After, and give up with a classified error.
func TestReadFaults(t *testing.T) {
	f := func(status int) jobstest.Fault { return jobstest.Fault{Status: status} }
	tests := []struct {
		name      string
		route     jobstest.Route
		faults    []jobstest.Fault
		wantErr   bool
		want      class
		wantCount int64
	}{
		{name: "429 honours Retry-After then succeeds", route: jobstest.RouteGet,
			faults: []jobstest.Fault{{Status: 429, RetryAfter: 20 * time.Millisecond}}, wantCount: 2},
		{name: "503, 500, 502 then succeeds", route: jobstest.RouteGet, faults: []jobstest.Fault{f(503), f(500), f(502)}, wantCount: 4},
		{name: "reset before the answer, then succeeds", route: jobstest.RouteGet,
			faults: []jobstest.Fault{{Reset: jobstest.ResetBefore}}, wantCount: 2},
		{name: "reset after handling, then succeeds", route: jobstest.RouteGet,
			faults: []jobstest.Fault{{Reset: jobstest.ResetAfter}}, wantCount: 2},
		{name: "slow answer is cut by the per-try timeout and retried", route: jobstest.RouteGet,
			faults: []jobstest.Fault{{Delay: 2 * time.Second}}, wantCount: 2},
		{name: "persistent 500 gives up retryable", route: jobstest.RouteGet, faults: []jobstest.Fault{f(500), f(500), f(500), f(500)},
			wantErr: true, want: class{Retryable: true}, wantCount: 4},
		{name: "Retry-After beyond the cap is returned, not waited", route: jobstest.RouteGet,
			faults: []jobstest.Fault{{Status: 429, RetryAfter: 10 * time.Minute}}, wantErr: true, want: class{Retryable: true}, wantCount: 1},
		{name: "404 is permanent, not retried", route: jobstest.RouteGet, faults: []jobstest.Fault{f(404)},
			wantErr: true, want: class{Permanent: true}, wantCount: 1},
		{name: "401 is an auth failure, not retried", route: jobstest.RouteGet, faults: []jobstest.Fault{f(401)},
			wantErr: true, want: class{Permanent: true, Auth: true}, wantCount: 1},
		{name: "403 is an auth failure, not retried", route: jobstest.RouteGet, faults: []jobstest.Fault{f(403)},
			wantErr: true, want: class{Permanent: true, Auth: true}, wantCount: 1},
		{name: "ARM get 429 then succeeds", route: jobstest.RouteARMGet,
			faults: []jobstest.Fault{{Status: 429, RetryAfter: 10 * time.Millisecond}}, wantCount: 2},
		{name: "ARM get reset then succeeds", route: jobstest.RouteARMGet, faults: []jobstest.Fault{{Reset: jobstest.ResetBefore}}, wantCount: 2},
		{name: "ARM get 403", route: jobstest.RouteARMGet, faults: []jobstest.Fault{f(403)},
			wantErr: true, want: class{Permanent: true, Auth: true}, wantCount: 1},
		{name: "ARM cancel 503 then succeeds", route: jobstest.RouteARMCancel, faults: []jobstest.Fault{f(503)}, wantCount: 2},
		{name: "ARM cancel reset after handling, then succeeds", route: jobstest.RouteARMCancel,
			faults: []jobstest.Fault{{Reset: jobstest.ResetAfter}}, wantCount: 2},
		{name: "ARM cancel 404", route: jobstest.RouteARMCancel, faults: []jobstest.Fault{f(404)},
			wantErr: true, want: class{Permanent: true}, wantCount: 1},
		{name: "ARM cancel persistent 500 is retryable (cancel is idempotent)", route: jobstest.RouteARMCancel,
			faults: []jobstest.Fault{f(500), f(500), f(500), f(500)}, wantErr: true, want: class{Retryable: true}, wantCount: 4},
		{name: "ARM list 429 then succeeds", route: jobstest.RouteARMList,
			faults: []jobstest.Fault{{Status: 429, RetryAfter: 10 * time.Millisecond}}, wantCount: 2},
		{name: "ARM list 401", route: jobstest.RouteARMList, faults: []jobstest.Fault{f(401)},
			wantErr: true, want: class{Permanent: true, Auth: true}, wantCount: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, jobstest.Options{Lifecycle: jobstest.Stuck(jobs.StatusRunning)}, func(o *jobs.Options) {
				o.GetRetry.TryTimeout = 500 * time.Millisecond
			})
			ep := h.sim.Endpoint("ep")
			if tt.route != jobstest.RouteGet {
				ep = h.sim.WorkspaceEndpoint("ep")
			}
			sub, err := h.submit(ep, oneInput())
			if err != nil {
				t.Fatalf("Submit: %v", err)
			}
			h.sim.Inject(tt.route, tt.faults...)
			switch tt.route {
			case jobstest.RouteARMCancel:
				err = h.note(h.c.Cancel(context.Background(), ep, sub.Name))
			case jobstest.RouteARMList:
				var list []jobs.Job
				list, err = h.c.List(context.Background(), ep, time.Time{})
				_ = h.note(err)
				if err == nil && (len(list) != 1 || list[0].Name != sub.Name) {
					t.Errorf("List = %+v, want the one job %s", list, sub.Name)
				}
			default:
				var j *jobs.Job
				j, err = h.get(ep, sub.Name)
				if err == nil && j.Status != jobs.StatusRunning {
					t.Errorf("status = %q, want Running", j.Status)
				}
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want error: %v", err, tt.wantErr)
			}
			if err != nil {
				if got := classify(err); got != tt.want {
					t.Errorf("classify(%v) = %+v, want %+v", err, got, tt.want)
				}
			}
			if got := h.sim.Count(tt.route); got != tt.wantCount {
				t.Errorf("%s requests = %d, want %d", tt.route, got, tt.wantCount)
			}
			if got := h.sim.Count(jobstest.RouteCreate); got != 1 {
				t.Errorf("create requests = %d, want 1", got)
			}
		})
	}
}

func TestCancel(t *testing.T) {
	h := newHarness(t, jobstest.Options{Lifecycle: jobstest.Stuck(jobs.StatusRunning)})
	ep := h.sim.WorkspaceEndpoint("ep")
	sub, err := h.submit(ep, oneInput())
	if err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if err := h.note(h.c.Cancel(context.Background(), ep, sub.Name)); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	var got []jobs.Status
	for range 3 {
		j, err := h.get(ep, sub.Name)
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		got = append(got, j.Status)
	}
	if diff := cmp.Diff([]jobs.Status{"CancelRequested", "Canceled", "Canceled"}, got); diff != "" {
		t.Errorf("statuses after cancel (-want +got):\n%s", diff)
	}
}

func TestWorkspaceRequired(t *testing.T) {
	h := newHarness(t, jobstest.Options{})
	ep := h.sim.Endpoint("ep") // no workspace
	if err := h.c.Cancel(context.Background(), ep, "job"); !errors.Is(err, jobs.ErrNoWorkspace) || !jobs.IsPermanent(err) {
		t.Errorf("Cancel without workspace = %v, want ErrNoWorkspace (permanent)", err)
	}
	if _, err := h.c.List(context.Background(), ep, time.Time{}); !errors.Is(err, jobs.ErrNoWorkspace) {
		t.Errorf("List without workspace = %v, want ErrNoWorkspace", err)
	}
	if n := h.sim.Count(jobstest.RouteARMCancel) + h.sim.Count(jobstest.RouteARMList); n != 0 {
		t.Errorf("%d ARM requests sent, want none", n)
	}
}

// listHarness submits 25 jobs (a.csv … y.csv) to a simulator that lists
// 10 per page, and returns them in creation order.
func listHarness(t *testing.T) (*harness, jobs.Endpoint, []*jobs.Job) {
	t.Helper()
	h := newHarness(t, jobstest.Options{ListPageSize: 10})
	ep := h.sim.WorkspaceEndpoint("ep")
	var out []*jobs.Job
	for i := range 25 {
		req := jobs.JobRequest{Inputs: map[string]jobs.Input{"d": {Type: jobs.TypeUriFile, URI: "https://a.blob.core.windows.net/c/" + string(rune('a'+i)) + ".csv"}}}
		j, err := h.submit(ep, req)
		if err != nil {
			t.Fatalf("Submit: %v", err)
		}
		out = append(out, j)
	}
	return h, ep, out
}

func TestList(t *testing.T) {
	h, ep, listed := listHarness(t)
	names := make([]string, len(listed))
	for i, j := range listed {
		names[i] = j.Name
	}
	cut := listed[19].CreatedAt

	// A budgeting caller is asked before every page after the first.
	asked := 0
	all, err := h.c.List(context.Background(), ep, time.Time{}, jobs.BeforePage(func(context.Context) error { asked++; return nil }))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(all) != 25 || h.sim.Count(jobstest.RouteARMList) != 3 || asked != 2 {
		t.Errorf("List(zero) = %d jobs in %d pages, budget asked %d times; want 25 in 3, asked 2", len(all), h.sim.Count(jobstest.RouteARMList), asked)
	}
	stop := errors.New("over budget")
	if _, err := h.c.List(context.Background(), ep, time.Time{}, jobs.BeforePage(func(context.Context) error { return stop })); !errors.Is(err, stop) {
		t.Errorf("List with a refusing budget = %v, want its error", err)
	}
	if got := all[len(all)-1]; got.Name != names[0] || got.Inputs["d"] != "https://a.blob.core.windows.net/c/a.csv" || got.CreatedAt.IsZero() {
		t.Errorf("oldest listed job = %+v, want %s with its input URI and creation time", got, names[0])
	}

	// Newest first: the first page holds everything since the cut, and the
	// second page is all older, so paging stops there.
	before := h.sim.Count(jobstest.RouteARMList)
	recent, err := h.c.List(context.Background(), ep, cut)
	if err != nil {
		t.Fatalf("List(since): %v", err)
	}
	var got []string
	for _, j := range recent {
		got = append(got, j.Name)
	}
	want := []string{names[24], names[23], names[22], names[21], names[20], names[19]}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("List(since) (-want +got):\n%s", diff)
	}
	if pages := h.sim.Count(jobstest.RouteARMList) - before; pages != 2 {
		t.Errorf("List(since) read %d pages, want 2 (stop at the first all-older page)", pages)
	}
}

// A Keep option holds only the jobs it keeps and ends the listing once it
// wants no more: two jobs on the second page of three cost two pages.
func TestListKeep(t *testing.T) {
	h, ep, listed := listHarness(t)
	names := make([]string, len(listed))
	for i, j := range listed {
		names[i] = j.Name
	}
	want := map[string]bool{names[12]: true, names[10]: true} // newest first: page 2 of 3
	seen := 0
	got, err := h.c.List(context.Background(), ep, time.Time{}, jobs.Keep(func(j jobs.Job) (bool, bool) {
		seen++
		if !want[j.Name] {
			return false, true
		}
		delete(want, j.Name)
		return true, len(want) > 0
	}))
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var gotNames []string
	for _, j := range got {
		gotNames = append(gotNames, j.Name)
	}
	if diff := cmp.Diff([]string{names[12], names[10]}, gotNames); diff != "" {
		t.Errorf("kept (-want +got):\n%s", diff)
	}
	if pages := h.sim.Count(jobstest.RouteARMList); pages != 2 || seen != 15 {
		t.Errorf("read %d pages and %d jobs, want 2 pages and 15 jobs (stop at the last kept one)", pages, seen)
	}
}

// When the service lists oldest first, no page can prove the rest older:
// every page is read and filtered.
func TestListUnsorted(t *testing.T) {
	h := newHarness(t, jobstest.Options{ListPageSize: 4, ListOldestFirst: true})
	ep := h.sim.WorkspaceEndpoint("ep")
	var cut time.Time
	var want []string
	for i := range 10 {
		j, err := h.submit(ep, oneInput())
		if err != nil {
			t.Fatalf("Submit: %v", err)
		}
		if i == 6 {
			cut = j.CreatedAt
		}
		if i >= 6 {
			want = append(want, j.Name)
		}
	}
	got, err := h.c.List(context.Background(), ep, cut)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var names []string
	for _, j := range got {
		names = append(names, j.Name)
	}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("List(since) (-want +got):\n%s", diff)
	}
	if pages := h.sim.Count(jobstest.RouteARMList); pages != 3 {
		t.Errorf("read %d pages, want all 3", pages)
	}
}

// A page that proves no order does not stop the paging: here the service
// lists oldest first, one job per page, so the first page holds one job older
// than since and nothing shows the list is not newest first. Stopping there
// would hide the jobs a reconciliation is looking for (and let the caller
// submit a second one).
func TestListNeedsEvidenceOfOrder(t *testing.T) {
	h := newHarness(t, jobstest.Options{ListPageSize: 1, ListOldestFirst: true})
	ep := h.sim.WorkspaceEndpoint("ep")
	var names []string
	var cut time.Time
	for i := range 3 {
		j, err := h.submit(ep, oneInput())
		if err != nil {
			t.Fatalf("Submit: %v", err)
		}
		names = append(names, j.Name)
		if i == 1 {
			cut = j.CreatedAt
		}
	}
	got, err := h.c.List(context.Background(), ep, cut)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var gotNames []string
	for _, j := range got {
		gotNames = append(gotNames, j.Name)
	}
	if diff := cmp.Diff(names[1:], gotNames); diff != "" {
		t.Errorf("List(since) (-want +got):\n%s", diff)
	}
	if pages := h.sim.Count(jobstest.RouteARMList); pages != 3 {
		t.Errorf("read %d pages, want all 3", pages)
	}
}

// A POST the service never answers does not hang a caller without a
// deadline: SubmitTimeout cuts it, and the outcome is ambiguous.
func TestSubmitTimeoutWithoutDeadline(t *testing.T) {
	h := newHarness(t, jobstest.Options{}, func(o *jobs.Options) { o.SubmitTimeout = 200 * time.Millisecond })
	h.warmUp()
	h.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Delay: 600 * time.Millisecond})
	_, err := h.submit(h.sim.Endpoint("ep"), oneInput())
	if !jobs.IsAmbiguous(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want an ambiguous deadline error", err)
	}
	waitFor(t, "the delayed create", func() bool { return h.sim.JobCount() == 1 })
}

func TestWrongAudience(t *testing.T) {
	tests := []struct {
		name             string
		mutate           func(*jobs.Options)
		arm              bool
		wantAPI, wantVar string
	}{
		{name: "management token on the endpoint", mutate: func(o *jobs.Options) { o.MLScope = jobs.DefaultARMScope },
			wantAPI: "the batch endpoint", wantVar: "BATCHD_ML_SCOPE"},
		{name: "ml token on ARM", mutate: func(o *jobs.Options) { o.ARMScope = jobs.DefaultMLScope }, arm: true,
			wantAPI: "ARM", wantVar: "BATCHD_ARM_SCOPE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, jobstest.Options{}, tt.mutate)
			var err error
			if tt.arm {
				_, err = h.get(h.sim.WorkspaceEndpoint("ep"), "batchjob-x")
			} else {
				_, err = h.submit(h.sim.Endpoint("ep"), oneInput())
			}
			var ae *jobs.APIError
			if !errors.As(err, &ae) || ae.StatusCode != http.StatusUnauthorized || ae.Code != "InvalidAuthenticationTokenAudience" {
				t.Fatalf("err = %v, want 401 InvalidAuthenticationTokenAudience", err)
			}
			if !jobs.IsAuth(err) || !strings.Contains(ae.Hint, "wrong audience for "+tt.wantAPI) || !strings.Contains(ae.Hint, tt.wantVar) {
				t.Errorf("IsAuth = %v, hint %q: want an auth error whose hint names the API (%s) and %s", jobs.IsAuth(err), ae.Hint, tt.wantAPI, tt.wantVar)
			}
		})
	}
}

func TestDeniedIdentity(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	clientID := uniqueID("denied")
	sim.DenyIdentity(clientID)
	h := newHarnessFor(t, sim, sim.Credential(clientID))
	_, err := h.submit(sim.Endpoint("ep"), oneInput())
	var ae *jobs.APIError
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusForbidden || !jobs.IsAuth(err) {
		t.Fatalf("err = %v, want 403 (auth)", err)
	}
	if !strings.Contains(ae.Hint, jobstest.ActionCreate) || !strings.Contains(ae.Hint, "AzureML Data Scientist") {
		t.Errorf("hint %q: want the missing action and the role that grants it", ae.Hint)
	}
	sim.AllowIdentity(clientID)
	if _, err := h.submit(sim.Endpoint("ep"), oneInput()); err != nil {
		t.Errorf("Submit after AllowIdentity: %v", err)
	}
}

func TestEndpointRules(t *testing.T) {
	lit := jobs.Input{Type: jobs.TypeLiteral, Value: "append"}
	file := jobs.Input{Type: jobs.TypeUriFile, URI: "https://a.blob.core.windows.net/c/x.csv"}
	tests := []struct {
		name       string
		ep         jobstest.EndpointOptions
		deployment string
		inputs     map[string]jobs.Input
		wantStatus int // 0: accepted
		wantMsg    string
	}{
		{name: "no default deployment", ep: jobstest.EndpointOptions{Deployments: []string{"blue"}},
			inputs: map[string]jobs.Input{"d": file}, wantStatus: 400, wantMsg: jobstest.NoDeploymentMessage},
		{name: "explicit deployment without a default", ep: jobstest.EndpointOptions{Deployments: []string{"blue"}},
			deployment: "blue", inputs: map[string]jobs.Input{"d": file}},
		{name: "unknown deployment", ep: jobstest.EndpointOptions{Deployments: []string{"blue"}, DefaultDeployment: "blue"},
			deployment: "red", inputs: map[string]jobs.Input{"d": file}, wantStatus: 404},
		{name: "model deployment takes exactly one input", ep: jobstest.EndpointOptions{DefaultDeployment: "blue"},
			inputs: map[string]jobs.Input{"a": file, "b": file}, wantStatus: 400, wantMsg: "exactly one data input"},
		{name: "MLTable is refused", ep: jobstest.EndpointOptions{DefaultDeployment: "blue"},
			inputs: map[string]jobs.Input{"d": {Type: jobs.TypeMLTable, URI: "azureml://datastores/x/paths/t/"}}, wantStatus: 400, wantMsg: "MLTable"},
		{name: "Literal on a model deployment", ep: jobstest.EndpointOptions{DefaultDeployment: "blue"},
			inputs: map[string]jobs.Input{"mode": lit}, wantStatus: 400, wantMsg: "Literal"},
		{name: "pipeline deployment takes several inputs and literals", ep: jobstest.EndpointOptions{Kind: jobstest.KindPipeline, DefaultDeployment: "p"},
			inputs: map[string]jobs.Input{"d": file, "mode": lit}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, jobstest.Options{})
			if err := h.sim.AddEndpoint("ep", tt.ep); err != nil {
				t.Fatal(err)
			}
			ep := h.sim.Endpoint("ep")
			ep.Deployment = tt.deployment
			_, err := h.submit(ep, jobs.JobRequest{Inputs: tt.inputs})
			if tt.wantStatus == 0 {
				if err != nil {
					t.Fatalf("Submit: %v", err)
				}
				return
			}
			var ae *jobs.APIError
			if !errors.As(err, &ae) || ae.StatusCode != tt.wantStatus || !jobs.IsPermanent(err) {
				t.Fatalf("err = %v, want a permanent %d", err, tt.wantStatus)
			}
			if !strings.Contains(ae.Message, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", ae.Message, tt.wantMsg)
			}
		})
	}
}

// A request the client can tell is wrong is refused before sending.
func TestInvalidRequests(t *testing.T) {
	h := newHarness(t, jobstest.Options{})
	good := h.sim.Endpoint("ep")
	tests := []struct {
		name string
		ep   jobs.Endpoint
		req  jobs.JobRequest
	}{
		{"input without uri", good, jobs.JobRequest{Inputs: map[string]jobs.Input{"d": {Type: jobs.TypeUriFile}}}},
		{"input without type", good, jobs.JobRequest{Inputs: map[string]jobs.Input{"d": {URI: "https://x"}}}},
		{"output without uri", good, jobs.JobRequest{Inputs: oneInput().Inputs, Outputs: map[string]jobs.Output{"o": {Type: jobs.TypeUriFile}}}},
		{"plain http scoring uri", jobs.Endpoint{ScoringURI: "http://127.0.0.1:1/jobs"}, oneInput()},
		{"deployment with a line break", jobs.Endpoint{ScoringURI: good.ScoringURI, Deployment: "blue\r\nX-Injected: 1"}, oneInput()},
		{"request id with a control character", good, jobs.JobRequest{Inputs: oneInput().Inputs, RequestID: "id\x00"}},
		{"no scoring uri", jobs.Endpoint{}, oneInput()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.submit(tt.ep, tt.req)
			if !errors.Is(err, jobs.ErrInvalidRequest) || !jobs.IsPermanent(err) || jobs.IsAmbiguous(err) {
				t.Errorf("err = %v, want a permanent ErrInvalidRequest", err)
			}
		})
	}
	if n := h.sim.Count(jobstest.RouteCreate); n != 0 {
		t.Errorf("%d POSTs sent, want none", n)
	}
}

// Failures that prove the POST never left: safe to retry, not ambiguous.
func TestSubmitNeverSent(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := ln.Addr().String()
	_ = ln.Close()

	untrusting := &http.Transport{}
	t.Cleanup(untrusting.CloseIdleConnections)
	tests := []struct {
		name      string
		transport *http.Client
		ep        jobs.Endpoint
		ctx       func() context.Context
	}{
		{name: "connection refused", transport: sim.HTTPClient(), ep: jobs.Endpoint{ScoringURI: "https://" + closedAddr + "/ep/jobs"}},
		{name: "unknown host", transport: sim.HTTPClient(), ep: jobs.Endpoint{ScoringURI: "https://batchd-no-such-host.invalid/jobs"}},
		{name: "certificate not trusted", transport: &http.Client{Transport: untrusting}, ep: sim.Endpoint("ep")},
		{name: "context already canceled", transport: sim.HTTPClient(), ep: sim.Endpoint("ep"), ctx: func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarnessFor(t, sim, sim.Credential(uniqueID("c")), func(o *jobs.Options) { o.Transport = tt.transport })
			ctx := context.Background()
			if tt.ctx != nil {
				ctx = tt.ctx()
			}
			before := sim.Count(jobstest.RouteCreate)
			_, err := h.c.Submit(ctx, tt.ep, oneInput())
			_ = h.note(err)
			var te *jobs.TransportError
			if !errors.As(err, &te) || te.Sent {
				t.Fatalf("err = %v, want a *TransportError with Sent=false", err)
			}
			if got := classify(err); got != (class{Retryable: true}) {
				t.Errorf("classify = %+v, want retryable only", got)
			}
			if sim.Count(jobstest.RouteCreate) != before {
				t.Errorf("the simulator received a POST")
			}
		})
	}
}

func TestTokenFailureIsNotSent(t *testing.T) {
	h := newHarness(t, jobstest.Options{})
	h.sim.Inject(jobstest.RouteToken, jobstest.Fault{Status: 500, Message: "identity endpoint down"})
	_, err := h.submit(h.sim.Endpoint("ep"), oneInput())
	var te *jobs.TokenError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want a *TokenError", err)
	}
	if got := classify(err); got != (class{Retryable: true, Auth: true}) {
		t.Errorf("classify = %+v, want retryable and auth", got)
	}
	if n := h.sim.Count(jobstest.RouteCreate); n != 0 {
		t.Errorf("%d POSTs sent without a token, want 0", n)
	}
	// The failure is not cached: the next submit gets a token and succeeds.
	if _, err := h.submit(h.sim.Endpoint("ep"), oneInput()); err != nil {
		t.Errorf("Submit after the token endpoint recovered: %v", err)
	}
}

// A Submit whose context ends while the bearer policy waits for a token sent
// nothing: it is retryable, not ambiguous. (azcore's retry policy replaces
// the error with the bare context error, so the *TokenError is gone; the
// request never reached the transport, and that is what proves it unsent.)
func TestSubmitCanceledWhileGettingToken(t *testing.T) {
	h := newHarness(t, jobstest.Options{})
	h.sim.Inject(jobstest.RouteToken, jobstest.Fault{Delay: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	waitDone := make(chan struct{})
	go func() { // cancel once the token request is held by the simulator
		defer close(waitDone)
		defer cancel()
		for deadline := time.Now().Add(10 * time.Second); h.sim.Count(jobstest.RouteToken) == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Error("the token request never arrived")
				return
			}
		}
	}()
	_, err := h.c.Submit(ctx, h.sim.Endpoint("ep"), oneInput())
	<-waitDone
	_ = h.note(err)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if got := classify(err); got.Ambiguous || !got.Retryable || got.Permanent {
		t.Errorf("classify(%v) = %+v, want retryable and not ambiguous", err, got)
	}
	if n := h.sim.Count(jobstest.RouteCreate); n != 0 {
		t.Errorf("%d POSTs sent without a token, want 0", n)
	}
}

// One token per scope per lifetime, however many calls: the bearer policy
// caches. CountTokens sees exactly the fetches the simulator counts.
func TestTokensAreCached(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	var fetches []string
	var mu sync.Mutex
	cred := jobs.CountTokens(sim.Credential(uniqueID("cache")), func(scope string) {
		mu.Lock()
		fetches = append(fetches, scope)
		mu.Unlock()
	})
	h := newHarnessFor(t, sim, cred)
	ep := sim.WorkspaceEndpoint("ep")
	for range 50 {
		j, err := h.submit(ep, oneInput())
		if err != nil {
			t.Fatalf("Submit: %v", err)
		}
		if _, err := h.get(ep, j.Name); err != nil {
			t.Fatalf("Get: %v", err)
		}
	}
	if got := sim.Count(jobstest.RouteToken); got != 2 {
		t.Errorf("token requests = %d for 50 submits and 50 ARM gets, want 2 (one per scope)", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]string{jobs.DefaultMLScope, jobs.DefaultARMScope}, fetches); diff != "" {
		t.Errorf("CountTokens saw (-want +got):\n%s", diff)
	}
}

// A token is refreshed before it expires: azcore's bearer policy refreshes
// once less than five minutes remain, so a busy client never presents an
// expired token. Fake time (synctest) and an in-memory transporter make an
// hour pass instantly.
func TestTokenRefreshedBeforeExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cred := &clockCredential{lifetime: time.Hour}
		var seen []string
		tr := transporterFunc(func(req *http.Request) (*http.Response, error) {
			seen = append(seen, strings.TrimPrefix(req.Header.Get("Authorization"), "Bearer "))
			return &http.Response{StatusCode: 200, Header: http.Header{}, Request: req,
				Body: io.NopCloser(strings.NewReader(`{"name":"batchjob-1","properties":{"status":"NotStarted"}}`))}, nil
		})
		c, err := jobs.New(cred, jobs.Options{Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		ep := jobs.Endpoint{ScoringURI: "https://ep.westeurope.inference.ml.azure.com/jobs"}
		submit := func() {
			t.Helper()
			if _, err := c.Submit(context.Background(), ep, oneInput()); err != nil {
				t.Fatalf("Submit: %v", err)
			}
		}
		for range 100 { // within the first 54 minutes: one token
			submit()
			time.Sleep(30 * time.Second)
		}
		if cred.fetches != 1 {
			t.Fatalf("token fetches after 50 minutes = %d, want 1", cred.fetches)
		}
		time.Sleep(6 * time.Minute) // 56 minutes in: 4 minutes of validity left
		submit()
		if cred.fetches != 2 {
			t.Fatalf("token fetches with 4 minutes left = %d, want 2 (refreshed before expiry)", cred.fetches)
		}
		if last := seen[len(seen)-1]; last != "token-2" {
			t.Errorf("request sent with %q, want the refreshed token-2", last)
		}
	})
}

// clockCredential issues numbered tokens valid for lifetime (fake time).
type clockCredential struct {
	lifetime time.Duration
	fetches  int
}

func (c *clockCredential) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	c.fetches++
	return azcore.AccessToken{Token: "token-" + strconv.Itoa(c.fetches), ExpiresOn: time.Now().Add(c.lifetime)}, nil
}

type transporterFunc func(*http.Request) (*http.Response, error)

func (f transporterFunc) Do(r *http.Request) (*http.Response, error) { return f(r) }

// The one resend azcore's bearer policy makes: a 401 carrying a Continuous
// Access Evaluation claims challenge. The service refused the first POST, so
// the resend (with a token for the claims) is still the only POST that can
// create a job; Submit's documentation promises exactly this and no more. A
// challenge azcore cannot parse leaves the 401 as the answer: refused (an
// auth failure), not ambiguous.
func TestSubmitClaimsChallenge(t *testing.T) {
	const claims = `{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}`
	tests := []struct {
		name      string
		challenge string
		second    int // status of the resend, 0 when none is expected
		wantPOSTs int
		wantErr   class
		wantClaim string // claims the credential was asked for on the resend
		// failClaims: the credential fails when asked for claims.
		failClaims bool
	}{
		{name: "CAE challenge: one resend, which succeeds",
			challenge: `Bearer realm="", error="insufficient_claims", claims="` + base64.StdEncoding.EncodeToString([]byte(claims)) + `"`,
			second:    200, wantPOSTs: 2, wantClaim: claims},
		{name: "CAE challenge, resend refused again: no third POST",
			challenge: `Bearer realm="", error="insufficient_claims", claims="` + base64.StdEncoding.EncodeToString([]byte(claims)) + `"`,
			second:    401, wantPOSTs: 2, wantErr: class{Permanent: true, Auth: true}, wantClaim: claims},
		{name: "unparsable claims: the 401 is the answer",
			challenge: `Bearer error="insufficient_claims", claims="%%% not base64"`,
			wantPOSTs: 1, wantErr: class{Permanent: true, Auth: true}},
		{name: "CAE challenge, the claims token cannot be had: retryable, no resend",
			challenge:  `Bearer realm="", error="insufficient_claims", claims="` + base64.StdEncoding.EncodeToString([]byte(claims)) + `"`,
			failClaims: true, wantPOSTs: 1, wantErr: class{Retryable: true, Auth: true}, wantClaim: claims},
		{name: "plain invalid_token challenge: no resend",
			challenge: `Bearer error="invalid_token", error_description="expired"`,
			wantPOSTs: 1, wantErr: class{Permanent: true, Auth: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var posts int
			var mu sync.Mutex
			var asked []string
			cred := claimsCredential(func(tro policy.TokenRequestOptions) error {
				mu.Lock()
				asked = append(asked, tro.Claims)
				mu.Unlock()
				if tt.failClaims && tro.Claims != "" {
					return errors.New("conditional access: sign-in blocked")
				}
				return nil
			})
			tr := transporterFunc(func(req *http.Request) (*http.Response, error) {
				posts++
				status, hdr, body := http.StatusUnauthorized, http.Header{"Www-Authenticate": {tt.challenge}}, `{"error":{"code":"InvalidAuthenticationToken","message":"token refused"}}`
				if posts == 2 && tt.second != 0 {
					status, hdr = tt.second, http.Header{}
					if tt.second == 200 {
						body = `{"name":"batchjob-1","properties":{"status":"NotStarted"}}`
					}
				}
				return &http.Response{StatusCode: status, Header: hdr, Request: req, Body: io.NopCloser(strings.NewReader(body))}, nil
			})
			c, err := jobs.New(cred, jobs.Options{Transport: tr})
			if err != nil {
				t.Fatal(err)
			}
			j, err := c.Submit(context.Background(), jobs.Endpoint{ScoringURI: "https://ep.westeurope.inference.ml.azure.com/jobs"}, oneInput())
			if posts != tt.wantPOSTs {
				t.Errorf("POSTs sent = %d, want %d", posts, tt.wantPOSTs)
			}
			if tt.wantErr == (class{}) {
				if err != nil || j.Name != "batchjob-1" {
					t.Fatalf("Submit = %+v, %v; want job batchjob-1", j, err)
				}
			} else {
				var ae *jobs.APIError
				var te *jobs.TokenError
				switch {
				case tt.failClaims && !errors.As(err, &te):
					t.Fatalf("err = %v, want a *TokenError", err)
				case !tt.failClaims && (!errors.As(err, &ae) || ae.StatusCode != http.StatusUnauthorized):
					t.Fatalf("err = %v, want the service's 401 as an *APIError", err)
				}
				if got := classify(err); got != tt.wantErr {
					t.Errorf("classify(%v) = %+v, want %+v", err, got, tt.wantErr)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if tt.wantClaim != "" && (len(asked) != 2 || asked[1] != tt.wantClaim) {
				t.Errorf("token requests asked for claims %q, want a second request for %q", asked, tt.wantClaim)
			}
		})
	}
}

// claimsCredential issues a fresh token per call, unless f, told what was
// asked for, returns an error.
type claimsCredential func(policy.TokenRequestOptions) error

func (f claimsCredential) GetToken(_ context.Context, tro policy.TokenRequestOptions) (azcore.AccessToken, error) {
	if err := f(tro); err != nil {
		return azcore.AccessToken{}, err
	}
	return azcore.AccessToken{Token: "token-" + jobs.NewRequestID(), ExpiresOn: time.Now().Add(time.Hour)}, nil
}
