package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// TestInvokeEndToEnd builds the batchd binary and runs `batchd invoke
// --wait` as a subprocess against the simulator, configured only through
// the environment a VM would give it: BATCHD_CREDENTIAL=managed-identity,
// IDENTITY_ENDPOINT/IDENTITY_HEADER, SSL_CERT_FILE trusting the simulator's
// CA. Debug logging is on, and no issued token may appear in the output.
func TestInvokeEndToEnd(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "batchd")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	sim := jobstest.New(t, jobstest.Options{Outcome: func(v jobstest.JobView) jobstest.Lifecycle {
		if strings.Contains(v.Inputs["data"].URI, "corrupt") {
			return jobstest.Fails("No succeeded mini batch item returned from run()")
		}
		return jobstest.Lifecycle{} // default: NotStarted → … → Completed
	}})
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := sim.WriteCA(caFile); err != nil {
		t.Fatal(err)
	}
	baseEnv := []string{
		"BATCHD_CREDENTIAL=managed-identity",
		"IDENTITY_ENDPOINT=" + sim.IdentityEndpoint(),
		"IDENTITY_HEADER=" + sim.IdentityHeader(),
		"SSL_CERT_FILE=" + caFile,
		"BATCHD_ARM_ENDPOINT=" + sim.ARMEndpoint(),
		"BATCHD_LOG_LEVEL=debug",
		"BATCHD_STATE_DIR=" + t.TempDir(),
		"HOME=" + t.TempDir(),
	}
	tests := []struct {
		name     string
		env      []string
		input    string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{name: "completed", input: "data=UriFile:https://acct.blob.core.windows.net/in/good.csv",
			wantCode: exitOK, wantOut: "completed (status Completed)"},
		{name: "failed", input: "data=UriFile:https://acct.blob.core.windows.net/in/corrupt.csv",
			wantCode: exitFailed, wantOut: "error:  No succeeded mini batch item returned from run()"},
		{name: "wrong audience", env: []string{"BATCHD_ML_SCOPE=https://management.azure.com/.default"},
			input: "data=UriFile:https://acct.blob.core.windows.net/in/good.csv", wantCode: exitAuth, wantErr: "wrong audience"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "invoke", "--endpoint", sim.ScoringURI("scorer"), "--input", tt.input, "--wait", "--poll", "20ms")
			cmd.Env = append(append([]string{}, baseEnv...), tt.env...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("run batchd: %v", err)
			}
			if code != tt.wantCode || !strings.Contains(stdout.String(), tt.wantOut) || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, stdout.String(), stderr.String())
			}
			if !strings.Contains(stderr.String(), "level=DEBUG") && tt.wantCode != exitAuth {
				t.Errorf("no debug log lines on stderr; the token check would be vacuous:\n%s", stderr.String())
			}
			for _, tok := range sim.IssuedTokens() {
				if strings.Contains(stdout.String()+stderr.String(), tok) {
					t.Errorf("an issued token appears in batchd's output")
				}
			}
		})
	}
	// Every token came from the simulator's managed identity endpoint, one
	// per scope per process at most.
	reqs := sim.TokenRequests()
	if len(reqs) == 0 || len(reqs) > len(tests) {
		t.Errorf("%d token requests for %d runs, want one per run", len(reqs), len(tests))
	}
	for _, r := range reqs {
		if r.Protocol != "managed-identity" {
			t.Errorf("token request %+v did not use the managed identity endpoint", r)
		}
	}
	if got := sim.JobCount(); got != 2 {
		t.Errorf("%d jobs created, want 2 (the wrong-audience invoke creates none)", got)
	}
	for _, v := range sim.Jobs() {
		if v.Status != jobs.StatusCompleted && v.Status != jobs.StatusFailed {
			t.Errorf("job %s ended %s", v.Name, v.Status)
		}
	}
	_ = os.Remove(bin)
}
