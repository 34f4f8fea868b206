package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

func TestBackfillCLI(t *testing.T) {
	t.Parallel()
	d := startCLIDaemon(t)
	// Slots at 06:00 UTC on 1, 2, 3 and 4 November.
	args := []string{"backfill", "nightly", "--from", "2026-11-01", "--to", "2026-11-04T12:00:00Z"}
	code, out, errOut := d.cli(t, nil, append(args, "--dry-run")...)
	if code != exitOK || !strings.Contains(out, "4 slot(s): would submit 4, 0 already had a run.") {
		t.Fatalf("dry run: exit %d\n%s%s", code, out, errOut)
	}
	if n := d.sim.JobCount(); n != 0 {
		t.Fatalf("a dry run created %d jobs", n)
	}
	code, out, errOut = d.cli(t, nil, append(args, "--json")...)
	var resp orchestrator.BackfillResponse
	if code != exitOK || json.Unmarshal([]byte(out), &resp) != nil || len(resp.Slots) != 4 {
		t.Fatalf("backfill: exit %d\n%s%s", code, out, errOut)
	}
	if got := resp.Slots[0].Time.UTC().Format(time.RFC3339); got != "2026-11-01T06:00:00Z" {
		t.Errorf("first slot %s, want 2026-11-01T06:00:00Z", got)
	}
	procWaitFor(t, 30*time.Second, "4 backfilled runs to complete", func() bool {
		for _, s := range resp.Slots {
			r, err := d.orch.Get(t.Context(), s.RunID)
			if err != nil || r.State != orchestrator.StateCompleted {
				return false
			}
		}
		return true
	})
	code, out, _ = d.cli(t, nil, args...)
	if code != exitOK || !strings.Contains(out, "4 slot(s): submitted 0, 4 already had a run.") || !strings.Contains(out, "already completed") {
		t.Errorf("second backfill: exit %d\n%s", code, out)
	}
	if n := d.sim.JobCount(); n != 4 {
		t.Errorf("two backfills of 4 slots created %d jobs, want 4", n)
	}
	if code, _, _ := d.cli(t, nil, "backfill", "score", "--from", "2026-11-01", "--to", "2026-11-02"); code != exitUsage {
		t.Errorf("backfill of a pipeline without cron: exit %d, want 2", code)
	}
	if code, _, _ := d.cli(t, nil, "backfill", "nightly", "--from", "yesterday", "--to", "2026-11-02"); code != exitUsage {
		t.Errorf("bad --from: exit %d, want 2", code)
	}
}

func TestReplayCLI(t *testing.T) {
	t.Parallel()
	d := startCLIDaemon(t)
	code, out, errOut := d.cli(t, nil, "pipelines", "run", "score", "--key", "orig", "--field", "uri=azureml://locations/westeurope/workspaces/sim/data/r/versions/1", "--wait", "--json")
	var run orchestrator.Run
	if code != exitOK || json.Unmarshal([]byte(out), &run) != nil || run.ID == "" {
		t.Fatalf("pipelines run: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = d.cli(t, nil, "replay", run.ID, "--key", "v2")
	if code != exitOK || !strings.Contains(out, run.ID+" -> ") || !strings.Contains(out, "new run") {
		t.Fatalf("replay: exit %d\n%s%s", code, out, errOut)
	}
	code, out, _ = d.cli(t, nil, "replay", run.ID, "--key", "v2")
	if code != exitOK || !strings.Contains(out, "existing replay") {
		t.Errorf("the same replay again: exit %d\n%s", code, out)
	}
	newID := orchestrator.RunID("score", "orig#replay:v2")
	procWaitFor(t, 30*time.Second, "the replay to complete", func() bool {
		r, err := d.orch.Get(t.Context(), newID)
		return err == nil && r.State == orchestrator.StateCompleted
	})
	if n := d.sim.JobCount(); n != 2 {
		t.Errorf("a run and one replay (asked twice) created %d jobs, want 2", n)
	}
	if code, _, _ := d.cli(t, nil, "replay"); code != exitUsage {
		t.Errorf("replay without ids: exit %d, want 2", code)
	}
}
