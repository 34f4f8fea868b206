package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batchd/batchd/config"
)

func runCLI(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	c := &cli{stdout: &out, stderr: &errb, env: config.MapEnv(env)}
	code = run(t.Context(), c, args)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const checkGood = `
endpoints:
  scorer:
    uri: https://scorer.westeurope.inference.ml.azure.com/jobs
    max_running_jobs: 4
pipelines:
  score:
    endpoint: scorer
    trigger:
      blob: {account: acct, container: in}
    inputs:
      data: {type: UriFile, uri: "{{ .Blob.URL }}"}
`

func TestCheckValidPrintsSummary(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "p.yaml", checkGood)
	code, out, errOut := runCLI(t, nil, "check", "--config", path)
	if code != exitOK {
		t.Fatalf("exit %d, want 0; stderr:\n%s", code, errOut)
	}
	for _, want := range []string{"is valid: 1 endpoint(s), 0 datastore(s), 1 pipeline(s)", "score", "blob", "data=UriFile", "Credential: managed-identity"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = runCLI(t, nil, "check", "--config", path, "--json")
	var sum checkSummary
	if code != exitOK || json.Unmarshal([]byte(out), &sum) != nil || len(sum.Pipelines) != 1 || sum.Endpoints[0].MaxRunningJobs != 4 {
		t.Errorf("--json: exit %d, summary %+v from %q", code, sum, out)
	}
}

// Every problem, from the environment and from the file, is listed with its
// path, and the exit code is 2.
func TestCheckListsEveryProblem(t *testing.T) {
	t.Parallel()
	bad := strings.Replace(checkGood, "{{ .Blob.URL }}", "{{ .Blob.Nmae }}", 1)
	bad = strings.Replace(bad, "max_running_jobs: 4", "max_running_jobs: 4\n    colour: red", 1)
	path := writeFile(t, "p.yaml", bad)
	code, _, errOut := runCLI(t, map[string]string{"BATCHD_LOG_LEVEL": "loud", "BATCHD_CREDENTIAL": "client-secret"}, "check", "--config", path)
	if code != exitUsage {
		t.Fatalf("exit %d, want 2", code)
	}
	for _, want := range []string{
		"BATCHD_LOG_LEVEL: \"loud\" is not one of",
		"AZURE_CLIENT_SECRET: required with BATCHD_CREDENTIAL=client-secret",
		"endpoints.scorer.colour: unknown key",
		"pipelines.score.inputs.data.uri: unknown field .Blob.Nmae",
	} {
		if !strings.Contains(errOut, want) {
			t.Errorf("stderr lacks %q:\n%s", want, errOut)
		}
	}
}

func TestCheckMissingFile(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCLI(t, nil, "check", "--config", filepath.Join(t.TempDir(), "nope.yaml"))
	if code != exitUsage || !strings.Contains(errOut, "no such file") {
		t.Errorf("exit %d, stderr %q; want 2 and the missing file named", code, errOut)
	}
}

// Settings that are valid alone but break a promise once deployed: a
// shutdown grace shorter than the submit timeout is a problem (exit 2,
// named); too few NATS replicas on a cluster is a warning.
func TestCheckDeployment(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "p.yaml", checkGood)
	code, _, errOut := runCLI(t, map[string]string{"BATCHD_SHUTDOWN_GRACE": "30s", "BATCHD_SUBMIT_TIMEOUT": "60s"}, "check", "--config", path)
	if code != exitUsage || !strings.Contains(errOut, "BATCHD_SHUTDOWN_GRACE: 30s is shorter than BATCHD_SUBMIT_TIMEOUT (1m0s)") {
		t.Errorf("grace < submit timeout: exit %d, stderr %q; want 2 and the problem named", code, errOut)
	}
	code, out, errOut := runCLI(t, map[string]string{"BATCHD_NATS_URL": "nats://10.0.0.4:4222", "BATCHD_NATS_REPLICAS": "1"}, "check", "--config", path)
	if code != exitOK || !strings.Contains(out, "Warnings:\n  BATCHD_NATS_REPLICAS is 1 on an external NATS cluster") {
		t.Errorf("R1 on a cluster: exit %d, stdout:\n%s\nstderr: %s\nwant 0 and the warning", code, out, errOut)
	}
	code, out, _ = runCLI(t, map[string]string{"BATCHD_NATS_URL": "nats://10.0.0.4:4222", "BATCHD_NATS_REPLICAS": "3"}, "check", "--config", path)
	if code != exitOK || strings.Contains(out, "Warnings") {
		t.Errorf("R3 on a cluster: exit %d, stdout:\n%s\nwant 0 and no warning", code, out)
	}
}
