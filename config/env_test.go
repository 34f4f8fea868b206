package config

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/orchestrator"
)

func TestLoadEnvDefaults(t *testing.T) {
	e, err := LoadEnv(t.Context(), MapEnv(nil))
	if err != nil {
		t.Fatalf("LoadEnv: %v", err)
	}
	want := struct {
		Pipelines, State, HTTP, Cred, ML, ARM string
		Workers                               int
		Retention, Grace                      time.Duration
	}{"/etc/batchd/pipelines.yaml", "/var/lib/batchd", "127.0.0.1:8080", "managed-identity",
		"https://ml.azure.com/.default", "https://management.azure.com/.default", 64, 168 * time.Hour, 60 * time.Second}
	got := want
	got.Pipelines, got.State, got.HTTP, got.Cred = e.PipelinesFile, e.StateDir, e.HTTPAddr, e.Credential.Kind
	got.ML, got.ARM, got.Workers, got.Retention, got.Grace = e.MLScope, e.ARMScope, e.Workers, e.Retention, e.ShutdownGrace
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	if !e.HTTPLoopback() {
		t.Errorf("default HTTP address is not loopback")
	}
}

// One bad variable must not hide the next: every problem is reported.
func TestLoadEnvListsEveryProblem(t *testing.T) {
	_, err := LoadEnv(t.Context(), MapEnv(map[string]string{
		"BATCHD_WORKERS":     "zero",
		"BATCHD_RETENTION":   "1m",
		"BATCHD_POLL_MIN":    "10m",
		"BATCHD_POLL_MAX":    "1m",
		"BATCHD_HTTP_ADDR":   "8080",
		"BATCHD_CREDENTIAL":  "workload-identity",
		"BATCHD_ML_SCOPE":    "ml.azure.com",
		"BATCHD_NATS_URL":    "nats://a:4222",
		"BATCHD_NATS_LISTEN": "127.0.0.1:4222",
	}))
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("LoadEnv error = %v, want *config.Error", err)
	}
	var paths []string
	for _, p := range ce.Problems {
		var fe *FieldError
		if errors.As(p, &fe) {
			paths = append(paths, fe.Path)
		}
	}
	want := []string{"BATCHD_HTTP_ADDR", "BATCHD_NATS_LISTEN", "AZURE_TENANT_ID", "AZURE_CLIENT_ID",
		"AZURE_FEDERATED_TOKEN_FILE", "BATCHD_ML_SCOPE", "BATCHD_WORKERS", "BATCHD_RETENTION", "BATCHD_POLL_MAX"}
	if diff := cmp.Diff(want, paths); diff != "" {
		t.Errorf("problem paths (-want +got):\n%s\nfull error:\n%v", diff, err)
	}
}

func TestSecretFromFile(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte("s3cr3t-api-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := LoadEnv(t.Context(), MapEnv(map[string]string{"BATCHD_API_TOKEN_FILE": tok}))
	if err != nil {
		t.Fatalf("LoadEnv: %v", err)
	}
	if e.APIToken != "s3cr3t-api-token" {
		t.Errorf("APIToken = %q, want the file's trimmed content", e.APIToken)
	}
	_, err = LoadEnv(t.Context(), MapEnv(map[string]string{"BATCHD_API_TOKEN_FILE": tok, "BATCHD_API_TOKEN": "x"}))
	if err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("both token and file: err = %v, want 'not both'", err)
	}
	if err != nil && strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("error leaks the secret: %v", err)
	}
}

func TestLoadClient(t *testing.T) {
	tests := []struct {
		env     map[string]string
		wantURL string
	}{
		{nil, "http://127.0.0.1:8080"},
		{map[string]string{"BATCHD_HTTP_ADDR": "0.0.0.0:9000"}, "http://127.0.0.1:9000"},
		{map[string]string{"BATCHD_URL": "https://batchd.example.com/"}, "https://batchd.example.com"},
		// The daemon's credential settings do not concern a client.
		{map[string]string{"BATCHD_CREDENTIAL": "client-secret"}, "http://127.0.0.1:8080"},
	}
	for _, tt := range tests {
		c, err := LoadClient(t.Context(), MapEnv(tt.env))
		if err != nil {
			t.Errorf("LoadClient(%v): %v", tt.env, err)
			continue
		}
		if c.URL != tt.wantURL {
			t.Errorf("LoadClient(%v).URL = %q, want %q", tt.env, c.URL, tt.wantURL)
		}
	}
}

// A short API token is refused, naming the rule but never the token.
func TestAPITokenMinimumLength(t *testing.T) {
	_, err := LoadEnv(t.Context(), MapEnv(map[string]string{"BATCHD_API_TOKEN": "short-tok"}))
	if err == nil || !strings.Contains(err.Error(), "BATCHD_API_TOKEN: is 9 characters; use at least 16") || strings.Contains(err.Error(), "short-tok") {
		t.Errorf("a 9-character token: err = %v, want the rule without the token", err)
	}
	if _, err := LoadEnv(t.Context(), MapEnv(map[string]string{"BATCHD_API_TOKEN": "sixteen-chars-ok"})); err != nil {
		t.Errorf("a 16-character token: %v", err)
	}
}

// TestEnvDefaultsAreTheOrchestrators: the BATCHD_* defaults a user reads in
// the README and gets from config are the orchestrator's own (one value,
// not two that drift).
func TestEnvDefaultsAreTheOrchestrators(t *testing.T) {
	t.Parallel()
	defs := map[string]string{}
	for _, v := range envVars(t, rawEnv{}, rawClient{}) {
		defs[v.name] = v.def
	}
	dur := func(name string, want time.Duration) {
		t.Helper()
		got, err := time.ParseDuration(defs[name])
		if err != nil || got != want {
			t.Errorf("%s defaults to %q, the orchestrator's default is %s", name, defs[name], want)
		}
	}
	num := func(name string, want int) {
		t.Helper()
		if defs[name] != strconv.Itoa(want) {
			t.Errorf("%s defaults to %q, the orchestrator's default is %d", name, defs[name], want)
		}
	}
	num("BATCHD_WORKERS", orchestrator.DefaultWorkers)
	num("BATCHD_POLL_BUDGET", orchestrator.DefaultPollBudget)
	dur("BATCHD_RETENTION", orchestrator.DefaultRetention)
	dur("BATCHD_SHUTDOWN_GRACE", orchestrator.DefaultShutdownGrace)
	dur("BATCHD_SUBMIT_TIMEOUT", orchestrator.DefaultSubmitTimeout)
	dur("BATCHD_POLL_MIN", orchestrator.DefaultPollMin)
	dur("BATCHD_POLL_MAX", orchestrator.DefaultPollMax)
	dur("BATCHD_RECONCILE_GRACE", orchestrator.DefaultReconcileGrace)
	dur("BATCHD_JOB_EVENTS_SAFETY_POLL", orchestrator.DefaultEventSafetyPoll)
	dur("BATCHD_JOB_EVENTS_SILENCE", orchestrator.DefaultEventSilence)
	dur("BATCHD_JOB_LIST_INTERVAL", orchestrator.DefaultJobListInterval)
}

// BATCHD_JOB_LIST_INTERVAL=0 turns bulk status off; below 100ms is a
// problem with its name.
func TestJobListInterval(t *testing.T) {
	t.Parallel()
	for v, want := range map[string]time.Duration{"": 30 * time.Second, "0": -1, "2m": 2 * time.Minute} {
		e, err := LoadEnv(t.Context(), MapEnv(map[string]string{"BATCHD_JOB_LIST_INTERVAL": v}))
		if v == "" {
			e, err = LoadEnv(t.Context(), MapEnv(nil))
		}
		if err != nil {
			t.Errorf("BATCHD_JOB_LIST_INTERVAL=%q: %v", v, err)
		} else if e.JobListInterval != want {
			t.Errorf("BATCHD_JOB_LIST_INTERVAL=%q: %s, want %s", v, e.JobListInterval, want)
		}
	}
	if _, err := LoadEnv(t.Context(), MapEnv(map[string]string{"BATCHD_JOB_LIST_INTERVAL": "10ms"})); err == nil || !strings.Contains(err.Error(), "BATCHD_JOB_LIST_INTERVAL") {
		t.Errorf("BATCHD_JOB_LIST_INTERVAL=10ms: %v, want a problem naming it", err)
	}
}
