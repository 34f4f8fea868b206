package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
)

func serveTestPipelines(t *testing.T, scoringURI string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "pipelines.yaml")
	body := "endpoints:\n  sim:\n    uri: " + scoringURI + "\npipelines:\n  score:\n    endpoint: sim\n    inputs:\n      data:\n        type: UriFile\n        uri: \"{{ .Fields.uri }}\"\n"
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// Problems only serve has are configuration errors too: exit 2, before
// anything starts, each naming its variable.
func TestServeRefusesBadConfiguration(t *testing.T) {
	t.Parallel()
	pf := serveTestPipelines(t, "https://scorer.westeurope.inference.ml.azure.com/jobs")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = busy.Close() }()
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"a non-loopback address without an API token",
			map[string]string{"BATCHD_HTTP_ADDR": "0.0.0.0:8080"},
			[]string{"BATCHD_API_TOKEN", "0.0.0.0:8080"}},
		{"every problem at once",
			map[string]string{"BATCHD_WORKERS": "zero", "BATCHD_POLL_MIN": "fast", "BATCHD_LOG_LEVEL": "loud"},
			[]string{"BATCHD_WORKERS", "BATCHD_POLL_MIN", "BATCHD_LOG_LEVEL"}},
		{"a port in use",
			map[string]string{"BATCHD_HTTP_ADDR": busy.Addr().String()},
			[]string{"BATCHD_HTTP_ADDR"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"BATCHD_PIPELINES": pf, "BATCHD_STATE_DIR": t.TempDir()}
			for k, v := range tt.env {
				env[k] = v
			}
			var out, errb bytes.Buffer
			code := run(t.Context(), &cli{stdout: &out, stderr: &errb, env: config.MapEnv(env)}, []string{"serve"})
			if code != exitUsage {
				t.Errorf("exit code = %d, want %d\n%s", code, exitUsage, errb.String())
			}
			for _, w := range tt.want {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("stderr does not name %s:\n%s", w, errb.String())
				}
			}
		})
	}
}

// serve in-process, wired to the simulator: a manual run completes, the
// API token guards /api and never reaches the log, and a canceled context
// (the signal) ends it with exit 0.
func TestServeRunsAndStops(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{Lifecycle: procQuickLifecycle()})
	useSimInProcess(t, sim)

	addr := procFreeAddr(t)
	const token = "serve-test-token-abcdef123456"
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	env := map[string]string{
		"BATCHD_PIPELINES":    serveTestPipelines(t, sim.ScoringURI("scorer")),
		"BATCHD_STATE_DIR":    t.TempDir(),
		"BATCHD_HTTP_ADDR":    addr,
		"BATCHD_API_TOKEN":    token,
		"BATCHD_CREDENTIAL":   "managed-identity",
		"AZURE_CLIENT_ID":     "serve-" + hex.EncodeToString(b), // azidentity's MI cache is process-wide
		"BATCHD_ARM_ENDPOINT": sim.ARMEndpoint(),
		"BATCHD_POLL_MIN":     "100ms",
		"BATCHD_POLL_MAX":     "200ms",
		"BATCHD_LOG_LEVEL":    "debug",
	}
	var out bytes.Buffer
	logs := &serveLogBuffer{}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan int, 1)
	go func() { done <- run(ctx, &cli{stdout: &out, stderr: logs, env: config.MapEnv(env)}, []string{"serve"}) }()

	base := "http://" + addr
	procWaitFor(t, 30*time.Second, "serve to be ready", func() bool {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	resp, err := http.Get(base + "/api/v1/pipelines")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/api without the token = %d, want 401", resp.StatusCode)
	}
	var cout, cerr bytes.Buffer
	code := run(t.Context(), &cli{stdout: &cout, stderr: &cerr, env: config.MapEnv(map[string]string{"BATCHD_URL": base, "BATCHD_API_TOKEN": token})},
		[]string{"pipelines", "run", "score", "--key", "one", "--field", "uri=azureml://locations/westeurope/workspaces/sim/data/one/versions/1", "--wait", "--timeout", "60s"})
	if code != exitOK {
		t.Fatalf("pipelines run --wait = %d\n%s%s", code, cout.String(), cerr.String())
	}
	if !strings.Contains(cout.String(), string(orchestrator.StateCompleted)) {
		t.Errorf("run output lacks completed:\n%s", cout.String())
	}
	cancel()
	select {
	case code := <-done:
		if code != exitOK {
			t.Errorf("serve exit code after the signal = %d, want 0\n%s", code, logs.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatal("serve did not stop within 60s of the signal")
	}
	if strings.Contains(logs.String(), token) {
		t.Errorf("the API token reached the log")
	}
	for _, tok := range sim.IssuedTokens() {
		if strings.Contains(logs.String(), tok[strings.LastIndex(tok, ".")+1:]) {
			t.Errorf("an Entra token reached the log")
		}
	}
	if !strings.Contains(logs.String(), "batchd stopped") {
		t.Errorf("the log does not say batchd stopped:\n%s", logs.String())
	}
}

type serveLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *serveLogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *serveLogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
