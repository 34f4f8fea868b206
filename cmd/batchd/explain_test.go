package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/datastores/azurite/azuritetest"
)

// explain against real Azurite: the storage checks run through the account
// configured in the pipelines file, and the exit code follows the verdicts.
func TestExplainAgainstAzurite(t *testing.T) {
	t.Parallel()
	az := azuritetest.Start(t)
	client := azuritetest.Client(t, az)
	ctx := t.Context()
	if _, err := client.CreateContainer(ctx, "raw", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.UploadBuffer(ctx, "raw", "in/a.csv", []byte("x,y\n1,2\n"), nil); err != nil {
		t.Fatal(err)
	}
	keyFile := writeFile(t, "key", azurite.Key)
	cfg := writeFile(t, "p.yaml", `
endpoints:
  ep: {uri: https://ep.westeurope.inference.ml.azure.com/jobs}
datastores:
  raw: {kind: blob, account: devstoreaccount1, container: raw, credentials: none}
storage:
  accounts:
    devstoreaccount1: {blob_endpoint: "`+az.AccountURL()+`", auth: shared_key, key_file: "`+keyFile+`"}
pipelines:
  p:
    endpoint: ep
    inputs:
      d: {type: UriFile, uri: "azureml://datastores/raw/paths/in/{{ .Fields.name }}"}
    allow: {datastores: [raw], prefixes: [in/]}
`)
	env := map[string]string{"BATCHD_STATE_DIR": t.TempDir()}

	code, out, errOut := runCLI(t, env, "explain", "--config", cfg, "--pipeline", "p", "azureml://datastores/raw/paths/in/a.csv")
	if code != exitOK {
		t.Fatalf("existing input: exit %d, want 0\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"PASS  input-exists", "Identity of the job + Managed identity of the compute cluster", "verdict: ALLOW"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}

	code, out, _ = runCLI(t, env, "explain", "--config", cfg, "--pipeline", "p", "--json",
		"azureml://datastores/raw/paths/in/missing.csv", "azureml://datastores/raw/paths/other/a.csv")
	if code != exitFailed {
		t.Fatalf("missing input: exit %d, want 1\n%s", code, out)
	}
	var got []struct {
		URI      string              `json:"uri"`
		Decision datastores.Decision `json:"decision"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil || len(got) != 2 {
		t.Fatalf("--json output %q: %v", out, err)
	}
	if got[0].Decision.Verdict != datastores.Reject || !strings.Contains(got[0].Decision.Reason, "input-exists") {
		t.Errorf("missing.csv decision = %+v, want reject on input-exists", got[0].Decision)
	}
	if got[1].Decision.Verdict != datastores.Reject || !strings.Contains(got[1].Decision.Reason, "allow-list") {
		t.Errorf("other/a.csv decision = %+v, want reject on allow-list", got[1].Decision)
	}
	if strings.Contains(out, azurite.Key) {
		t.Errorf("explain output contains the account key")
	}
}

func TestExplainUsage(t *testing.T) {
	t.Parallel()
	env := map[string]string{"BATCHD_PIPELINES": filepath.Join(t.TempDir(), "absent.yaml")}
	if code, _, _ := runCLI(t, env, "explain"); code != exitUsage {
		t.Errorf("no URI: exit %d, want 2", code)
	}
	if code, _, _ := runCLI(t, env, "explain", "--type", "MLTable", "https://a.blob.core.windows.net/c/x"); code != exitUsage {
		t.Errorf("bad --type: exit %d, want 2", code)
	}
	// Without a pipelines file, plain storage URLs can still be explained.
	code, out, errOut := runCLI(t, map[string]string{"BATCHD_PIPELINES": env["BATCHD_PIPELINES"], "BATCHD_CREDENTIAL": "azure-cli"},
		"explain", "adl://old.azuredatalakestore.net/x/")
	if !strings.Contains(errOut, "does not exist; checking without") || !strings.Contains(out, "POSIX") {
		t.Errorf("explain without a file: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
}
