package orchestrator

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// A replay is a new run of the same event: the original keeps its outcome,
// the new one submits its own job, and a replay request with a key replays
// once however often it is sent.
func TestReplay(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub)
	c := newAPI(t, h, testToken)

	orig := h.emit("score", "file-1", "https://a.blob.core.windows.net/c/x.csv")
	h.waitState(orig, StateCompleted, 10*time.Second)

	code, body := c.do("POST", "/api/v1/runs/"+orig+"/replay", `{"key":"fixed-model"}`)
	if code != http.StatusAccepted {
		t.Fatalf("replay = %d %s, want 202", code, body)
	}
	rep := decodeAs[ReplayResponse](t, body)
	if rep.RunID == orig || rep.ReplayOf != orig || rep.RunID != RunID("score", "file-1#replay:fixed-model") {
		t.Fatalf("replay response %+v: want a new run id derived from the key, replay_of %s", rep, orig)
	}
	r := h.waitState(rep.RunID, StateCompleted, 10*time.Second)
	if r.Source != SourceReplay || r.Event.ReplayOf != orig || r.Event.Fields["uri"] != "https://a.blob.core.windows.net/c/x.csv" {
		t.Errorf("replayed run: source %s, replay_of %s, fields %v", r.Source, r.Event.ReplayOf, r.Event.Fields)
	}
	if submits, created := sub.counts(); submits != 2 || created != 2 {
		t.Errorf("submits %d, jobs %d after one replay; want 2 and 2", submits, created)
	}

	code, body = c.do("POST", "/api/v1/runs/"+orig+"/replay", `{"key":"fixed-model"}`)
	again := decodeAs[ReplayResponse](t, body)
	if code != http.StatusOK || again.RunID != rep.RunID || !again.Duplicate || again.State != StateCompleted {
		t.Errorf("the same replay again = %d %+v, want 200, the same run, duplicate, completed", code, again)
	}
	if submits, _ := sub.counts(); submits != 2 {
		t.Errorf("a repeated replay request submitted again (%d submits)", submits)
	}
	if code, _ := c.do("POST", "/api/v1/runs/00000000000000000000000000000000/replay", `{}`); code != http.StatusNotFound {
		t.Errorf("replay of an unknown run = %d, want 404", code)
	}
}

// Backfill emits the slots the daemon's backfill function lists; a slot that
// already has a run is reported as such and not emitted again.
func TestBackfillAPI(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	uri, err := CompileTemplate(`https://a.blob.core.windows.net/c/{{ date "2006-01-02" .Schedule.Time }}/`)
	if err != nil {
		t.Fatal(err)
	}
	nightly := testPipeline(t, "nightly", nil)
	nightly.Trigger = "cron"
	nightly.Inputs = map[string]IOTemplate{"data": {Type: "UriFolder", URI: uri}}
	manual := testPipeline(t, "manual", nil)
	h := newHarness(t, []*Pipeline{nightly, manual}, sub)

	day := func(d int) time.Time { return time.Date(2026, 11, d, 6, 0, 0, 0, time.UTC) }
	var asked []string
	backfill := func(_ context.Context, pipeline string, from, to time.Time, limit int) ([]Event, bool, error) {
		asked = append(asked, fmt.Sprintf("%s %s %s %d", pipeline, from.Format("01-02"), to.Format("01-02"), limit))
		var evs []Event
		for d := from.Day() + 1; d <= to.Day() && len(evs) < limit; d++ {
			slot := day(d)
			evs = append(evs, Event{Pipeline: pipeline, Key: "slot:" + slot.Format(time.RFC3339), Source: SourceBackfill, Time: slot,
				Schedule: &ScheduleEvent{Time: slot, Previous: slot.Add(-24 * time.Hour)}})
		}
		return evs, false, nil
	}
	srv := newAPIWith(t, h, HandlerOptions{APIToken: testToken, Backfill: backfill})

	body := `{"from":"2026-11-01T00:00:00Z","to":"2026-11-04T00:00:00Z"}`
	code, out := srv.do("POST", "/api/v1/pipelines/nightly/backfill", `{"from":"2026-11-01T00:00:00Z","to":"2026-11-04T00:00:00Z","dry_run":true}`)
	dry := decodeAs[BackfillResponse](t, out)
	if code != 200 || len(dry.Slots) != 3 || !dry.DryRun {
		t.Fatalf("dry run = %d %s, want 3 slots", code, out)
	}
	if submits, _ := sub.counts(); submits != 0 {
		t.Errorf("a dry run submitted %d jobs", submits)
	}

	code, out = srv.do("POST", "/api/v1/pipelines/nightly/backfill", body)
	res := decodeAs[BackfillResponse](t, out)
	if code != 200 || len(res.Slots) != 3 {
		t.Fatalf("backfill = %d %s, want 3 slots", code, out)
	}
	for _, s := range res.Slots {
		if s.Duplicate {
			t.Errorf("slot %s reported duplicate on the first backfill", s.Time)
		}
		h.waitState(s.RunID, StateCompleted, 10*time.Second)
	}
	code, out = srv.do("POST", "/api/v1/pipelines/nightly/backfill", body)
	if code != 200 {
		t.Fatalf("second backfill = %d %s", code, out)
	}
	for _, s := range decodeAs[BackfillResponse](t, out).Slots {
		if !s.Duplicate || s.State != StateCompleted {
			t.Errorf("slot %s on the second backfill: duplicate %t, state %s; want duplicate, completed", s.Time, s.Duplicate, s.State)
		}
	}
	if submits, _ := sub.counts(); submits != 3 {
		t.Errorf("two backfills of 3 slots submitted %d jobs, want 3", submits)
	}
	if len(asked) != 3 || asked[0] != "nightly 11-01 11-04 100" {
		t.Errorf("backfill function calls %q, want 3 with the default limit 100", asked)
	}
	if code, _ := srv.do("POST", "/api/v1/pipelines/manual/backfill", body); code != http.StatusBadRequest {
		t.Errorf("backfill of a pipeline without a cron trigger = %d, want 400", code)
	}
}

func newAPIWith(t *testing.T, h *harness, opts HandlerOptions) *apiClient {
	c := newAPI(t, h, opts.APIToken)
	c.srv.Config.Handler = h.o.Handler(opts)
	return c
}
