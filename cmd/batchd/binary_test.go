package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestProductionBinaryLinksNoSimulator builds batchd as a user does and
// reads its symbol table: the Azure ML and Entra simulator (with its CA
// and token issuer) and the Azurite launcher live in batchd-dev only.
func TestProductionBinaryLinksNoSimulator(t *testing.T) {
	if testing.Short() {
		t.Skip("builds batchd")
	}
	t.Parallel()
	bin := procBuild(t, t.TempDir())
	out, err := exec.Command("go", "tool", "nm", bin).Output()
	if err != nil {
		t.Fatalf("go tool nm: %v", err)
	}
	syms := string(out)
	if !strings.Contains(syms, "github.com/batchd/batchd/orchestrator.") {
		t.Fatalf("go tool nm shows no orchestrator symbol: is %s batchd?", bin)
	}
	for _, pkg := range []string{"batchd/jobs/jobstest.", "batchd/datastores/azurite.", "batchd/orchestrator/brokertest."} {
		if strings.Contains(syms, pkg) {
			t.Errorf("batchd links %s (go tool nm %s | grep %s)", strings.TrimSuffix(pkg, "."), bin, pkg)
		}
	}
}

// TestDevMovedToItsOwnCommand: `batchd dev` says where it went.
func TestDevMovedToItsOwnCommand(t *testing.T) {
	t.Parallel()
	code, _, errOut := runCLI(t, nil, "dev")
	if code != exitUsage || !strings.Contains(errOut, "batchd-dev") || !strings.Contains(errOut, "make demo") {
		t.Errorf("batchd dev: exit %d, stderr %q; want 2 and where the dev stack went", code, errOut)
	}
}
