package main

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// invokeSim is the simulator wired into the CLI: managed identity through
// the App Service protocol (IDENTITY_ENDPOINT, set with t.Setenv, so these
// tests are not parallel), and azureTransport trusting the simulator's CA.
type invokeSim struct {
	sim *jobstest.Sim
	env map[string]string
}

func newInvokeSim(t *testing.T, opts jobstest.Options) *invokeSim {
	t.Helper()
	sim := jobstest.New(t, opts)
	useSimInProcess(t, sim)
	return &invokeSim{sim: sim, env: map[string]string{
		"BATCHD_CREDENTIAL":   "managed-identity",
		"AZURE_CLIENT_ID":     invokeUniqueID("uami"), // azidentity's MI cache is process-wide
		"BATCHD_ARM_ENDPOINT": sim.ARMEndpoint(),
		"BATCHD_LOG_LEVEL":    "debug",
	}}
}

// useSimInProcess points this process's Azure clients at sim: managed
// identity through the App Service protocol (IDENTITY_ENDPOINT, set with
// Setenv, so callers are not parallel; the other managed identity sources
// cleared) and azureTransport trusting the simulator's CA, restored at the
// end of the test.
func useSimInProcess(tb testing.TB, sim *jobstest.Sim) {
	tb.Helper()
	tb.Setenv("IDENTITY_ENDPOINT", sim.IdentityEndpoint())
	tb.Setenv("IDENTITY_HEADER", sim.IdentityHeader())
	for _, v := range []string{"IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET", "IMDS_ENDPOINT"} {
		tb.Setenv(v, "")
	}
	prev := azureTransport
	azureTransport = sim.HTTPClient()
	tb.Cleanup(func() { azureTransport = prev })
}

// run runs the CLI in-process and checks that no token reached its output.
func (s *invokeSim) run(t *testing.T, terminal bool, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	c := &cli{stdout: &out, stderr: &errb, env: config.MapEnv(s.env), isTerminal: terminal}
	code := run(t.Context(), c, args)
	for _, tok := range s.sim.IssuedTokens() {
		sig := tok[strings.LastIndex(tok, ".")+1:]
		if strings.Contains(out.String()+errb.String(), tok) || strings.Contains(out.String()+errb.String(), sig) {
			t.Errorf("a token appears in the output of %v", args)
		}
	}
	return code, out.String(), errb.String()
}

func invokeUniqueID(prefix string) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func TestInvokeUsageErrors(t *testing.T) {
	const ep = "https://ep.westeurope.inference.ml.azure.com/jobs"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no endpoint", []string{"--input", "d=UriFile:https://a/b.csv"}, "--endpoint is required"},
		{"http endpoint", []string{"--endpoint", "http://ep/jobs", "--input", "d=UriFile:https://a/b.csv"}, "not an https:// scoring URI"},
		{"no input", []string{"--endpoint", ep}, "at least one --input is required"},
		{"input without type", []string{"--endpoint", ep, "--input", "d=https://a/b.csv"}, "did you mean d=UriFile:https://a/b.csv"},
		{"input without name", []string{"--endpoint", ep, "--input", "UriFile:https://a/b.csv"}, "want NAME=TYPE:URI"},
		{"MLTable input", []string{"--endpoint", ep, "--input", "d=MLTable:azureml://datastores/x/paths/t/"}, "MLTable inputs are not supported"},
		{"unknown type", []string{"--endpoint", ep, "--input", "d=Parquet:x"}, `unknown type "Parquet"`},
		{"duplicate input", []string{"--endpoint", ep, "--input", "d=UriFile:a", "--input", "d=UriFile:b"}, "given twice"},
		{"literal output", []string{"--endpoint", ep, "--input", "d=UriFile:a", "--output", "o=Literal:x"}, "outputs are UriFile or UriFolder"},
		{"extra argument", []string{"--endpoint", ep, "--input", "d=UriFile:a", "extra"}, `unexpected argument "extra"`},
		{"poll too small", []string{"--endpoint", ep, "--input", "d=UriFile:a", "--poll", "1ms"}, "--poll must be at least 10ms"},
		{"unknown flag", []string{"--endpoint", ep, "--frobnicate"}, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			c := &cli{stdout: &out, stderr: &errb, env: config.MapEnv(nil)}
			code := run(t.Context(), c, append([]string{"invoke"}, tt.args...))
			if code != exitUsage || !strings.Contains(errb.String(), tt.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errb.String(), exitUsage, tt.want)
			}
		})
	}
}

func TestInvokeHelp(t *testing.T) {
	var out, errb bytes.Buffer
	c := &cli{stdout: &out, stderr: &errb, env: config.MapEnv(nil)}
	if code := run(t.Context(), c, []string{"invoke", "-h"}); code != exitOK {
		t.Errorf("invoke -h: exit %d, want 0", code)
	}
	for _, want := range []string{"NAME=TYPE:URI", "Exit codes", "never retried", "--timeout"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("help does not mention %q", want)
		}
	}
}

func TestInvokeConfigError(t *testing.T) {
	var out, errb bytes.Buffer
	c := &cli{stdout: &out, stderr: &errb, env: config.MapEnv(map[string]string{"BATCHD_CREDENTIAL": "password"})}
	code := run(t.Context(), c, []string{"invoke", "--endpoint", "https://ep/jobs", "--input", "d=UriFile:https://a/b.csv"})
	if code != exitUsage || !strings.Contains(errb.String(), "BATCHD_CREDENTIAL") {
		t.Errorf("exit %d, stderr %q; want 2 naming BATCHD_CREDENTIAL", code, errb.String())
	}
}

func TestInvokeSubmitOnly(t *testing.T) {
	s := newInvokeSim(t, jobstest.Options{})
	code, out, errb := s.run(t, false, "invoke", "--endpoint", s.sim.ScoringURI("scorer"), "--deployment", "blue",
		"--input", "data=UriFolder:azureml://datastores/raw/paths/in/", "--output", "score=UriFile:azureml://datastores/workspaceblobstore/paths/o.csv",
		"--experiment", "manual")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, errb)
	}
	views := s.sim.Jobs()
	if len(views) != 1 {
		t.Fatalf("%d jobs, want 1", len(views))
	}
	v := views[0]
	if v.Deployment != "blue" || v.Inputs["data"].Type != "UriFolder" || v.Outputs["score"].URI != "azureml://datastores/workspaceblobstore/paths/o.csv" || v.ExperimentName != "manual" {
		t.Errorf("job as submitted: %+v", v)
	}
	if !strings.Contains(out, "job "+v.Name+" submitted") || !strings.Contains(out, "studio: https://ml.azure.com/runs/"+v.Name) {
		t.Errorf("stdout %q: want the job name and studio link", out)
	}
	if n := s.sim.Count(jobstest.RouteGet); n != 0 {
		t.Errorf("%d status reads without --wait, want 0", n)
	}
}

func TestInvokeWait(t *testing.T) {
	canceled := jobstest.Lifecycle{Steps: []jobstest.Step{{Status: jobs.StatusRunning, Polls: 1}, {Status: jobs.StatusCanceled}}}
	tests := []struct {
		name     string
		lc       jobstest.Lifecycle
		wantCode int
		wantOut  []string
	}{
		{"completed", jobstest.DefaultLifecycle(), exitOK, []string{"Queued", "Running", "Finalizing", "completed (status Completed)"}},
		{"failed", jobstest.Fails("Dataset initialization failed"), exitFailed, []string{"failed (status Failed)", "error:  Dataset initialization failed"}},
		{"canceled", canceled, exitFailed, []string{"canceled (status Canceled)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newInvokeSim(t, jobstest.Options{Outcome: func(jobstest.JobView) jobstest.Lifecycle { return tt.lc }})
			code, out, errb := s.run(t, false, "invoke", "--endpoint", s.sim.ScoringURI("ep"), "--input", "d=UriFile:https://a.blob.core.windows.net/c/x.csv",
				"--wait", "--poll", "10ms")
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stdout %s stderr %s", code, tt.wantCode, out, errb)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout does not contain %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "\r") {
				t.Errorf("non-terminal output rewrites lines: %q", out)
			}
		})
	}
}

func TestInvokeWaitJSON(t *testing.T) {
	s := newInvokeSim(t, jobstest.Options{Lifecycle: jobstest.Fails("No succeeded mini batch item returned from run()")})
	code, out, errb := s.run(t, false, "invoke", "--endpoint", s.sim.ScoringURI("ep"), "--input", "d=UriFile:https://a/x.csv", "--wait", "--poll", "10ms", "--json")
	if code != exitFailed {
		t.Fatalf("exit %d, want 1; stderr %s", code, errb)
	}
	var got invokeJobJSON
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("stdout is not one JSON job: %v\n%s", err, out)
	}
	view := s.sim.Jobs()[0]
	if got.Name != view.Name || got.Status != jobs.StatusFailed || got.Error != "No succeeded mini batch item returned from run()" || !strings.Contains(got.StudioURL, view.Name) {
		t.Errorf("JSON job = %+v", got)
	}
	if !strings.Contains(errb, "job "+view.Name+": Running") {
		t.Errorf("invokeProgress should go to stderr with --json; stderr: %s", errb)
	}
}

func TestInvokeLiveProgress(t *testing.T) {
	s := newInvokeSim(t, jobstest.Options{})
	code, out, _ := s.run(t, true, "invoke", "--endpoint", s.sim.ScoringURI("ep"), "--input", "d=UriFile:https://a/x.csv", "--wait", "--poll", "10ms")
	if code != exitOK {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(out, "\r\033[Kjob ") || !strings.Contains(out, ": Completed  ") {
		t.Errorf("terminal output %q: want a status line rewritten in place", out)
	}
}

func TestInvokeWaitTimeout(t *testing.T) {
	s := newInvokeSim(t, jobstest.Options{Lifecycle: jobstest.Stuck(jobs.StatusRunning)})
	start := time.Now()
	code, _, errb := s.run(t, false, "invoke", "--endpoint", s.sim.ScoringURI("ep"), "--input", "d=UriFile:https://a/x.csv",
		"--wait", "--poll", "10ms", "--timeout", "300ms")
	if code != exitTransient || !strings.Contains(errb, "--timeout 300ms reached") || !strings.Contains(errb, "is still Running and keeps running (it was not canceled)") {
		t.Errorf("exit %d, stderr %q; want 5 saying the job keeps running", code, errb)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v with --timeout 300ms", took)
	}
	if n := s.sim.Count(jobstest.RouteARMCancel); n != 0 {
		t.Errorf("%d cancel requests, want none", n)
	}
}

// Every failure maps to its documented exit code, and the POST is sent once.
func TestInvokeExitCodes(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(s *invokeSim)
		wantCode int
		wantErr  string
		wantPOST int64
	}{
		{"401", func(s *invokeSim) { s.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 401}) }, exitAuth, "batchd token", 1},
		{"403 names the missing action", func(s *invokeSim) { s.sim.DenyIdentity(s.env["AZURE_CLIENT_ID"]) }, exitAuth, jobstest.ActionCreate, 1},
		{"wrong audience", func(s *invokeSim) { s.env["BATCHD_ML_SCOPE"] = "https://management.azure.com/.default" }, exitAuth, "wrong audience", 1},
		{"managed identity not found", func(s *invokeSim) { s.sim.SetIdentityMissing(s.env["AZURE_CLIENT_ID"], true) }, exitAuth, "managed identity not found", 0},
		{"400", func(s *invokeSim) {
			s.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 400, Message: "bad body"})
		}, exitRejected, "bad body", 1},
		{"404", func(s *invokeSim) { s.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 404}) }, exitRejected, "404", 1},
		{"no default deployment", func(s *invokeSim) {
			_ = s.sim.AddEndpoint("ep", jobstest.EndpointOptions{Deployments: []string{"blue"}})
		}, exitRejected, "No valid deployments to route to", 1},
		{"429", func(s *invokeSim) {
			s.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 429, RetryAfter: 30 * time.Second})
		}, exitTransient, "retry after 30s", 1},
		{"503 is ambiguous", func(s *invokeSim) { s.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 503}) }, exitTransient, "a job may have been created", 1},
		{"reset after create is ambiguous", func(s *invokeSim) {
			s.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Reset: jobstest.ResetAfter})
		}, exitTransient, "batchd did not retry", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newInvokeSim(t, jobstest.Options{})
			tt.setup(s)
			code, _, errb := s.run(t, false, "invoke", "--endpoint", s.sim.ScoringURI("ep"), "--input", "d=UriFile:https://a/x.csv")
			if code != tt.wantCode || !strings.Contains(errb, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d mentioning %q", code, errb, tt.wantCode, tt.wantErr)
			}
			if n := s.sim.Count(jobstest.RouteCreate); n != tt.wantPOST {
				t.Errorf("POST sent %d times, want %d", n, tt.wantPOST)
			}
		})
	}
}

func TestInvokeWaitStatusFailures(t *testing.T) {
	tests := []struct {
		name     string
		fault    jobstest.Fault
		wantCode int
	}{
		{"job vanished (404)", jobstest.Fault{Status: 404}, exitRejected},
		{"status read forbidden (403)", jobstest.Fault{Status: 403}, exitAuth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newInvokeSim(t, jobstest.Options{})
			s.sim.Inject(jobstest.RouteGet, tt.fault)
			code, _, errb := s.run(t, false, "invoke", "--endpoint", s.sim.ScoringURI("ep"), "--input", "d=UriFile:https://a/x.csv", "--wait", "--poll", "10ms")
			if code != tt.wantCode || !strings.Contains(errb, "following job batchjob-") {
				t.Errorf("exit %d, stderr %q; want %d", code, errb, tt.wantCode)
			}
		})
	}
}

// A transient status failure does not end the wait: the next poll goes on.
func TestInvokeWaitRidesOutTransientFailures(t *testing.T) {
	s := newInvokeSim(t, jobstest.Options{})
	// Five 503s: more than the client's own retries of one status read
	// (Retry-After keeps the client's backoff short).
	for range 5 {
		s.sim.Inject(jobstest.RouteGet, jobstest.Fault{Status: 503, RetryAfter: 10 * time.Millisecond})
	}
	code, out, errb := s.run(t, false, "invoke", "--endpoint", s.sim.ScoringURI("ep"), "--input", "d=UriFile:https://a/x.csv", "--wait", "--poll", "10ms")
	if code != exitOK || !strings.Contains(out, "status unavailable (1 in a row)") {
		t.Errorf("exit %d; stdout %q stderr %q; want 0 after a reported transient failure", code, out, errb)
	}
}
