package cron

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/orchestrator"
)

func TestBackfill(t *testing.T) {
	cfg := Config{Schedule: "0 6 * * *", TimeZone: "Europe/Amsterdam"}
	from := time.Date(2026, 3, 27, 0, 0, 0, 0, time.UTC)
	to := time.Date(2026, 3, 31, 0, 0, 0, 0, time.UTC)
	evs, more, err := Backfill("nightly", cfg, from, to, 10)
	if err != nil {
		t.Fatalf("Backfill: %v", err)
	}
	if more {
		t.Errorf("more = true, want false")
	}
	var got []string
	for _, ev := range evs {
		got = append(got, ev.Time.Format(time.RFC3339))
		if ev.Source != orchestrator.SourceBackfill || ev.Schedule == nil || ev.Key != SlotKey(ev.Time) {
			t.Errorf("event %+v: want source backfill, a schedule and the slot key", ev)
		}
	}
	// 06:00 Amsterdam is 05:00 UTC before the spring-forward night (29 March)
	// and 04:00 UTC after it.
	want := []string{"2026-03-27T05:00:00Z", "2026-03-28T05:00:00Z", "2026-03-29T04:00:00Z", "2026-03-30T04:00:00Z"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("slots (-want +got):\n%s", diff)
	}
	// The live trigger builds the very same event (apart from the source),
	// so a backfilled slot that already ran is the same run.
	s, _ := Parse(cfg.Schedule, cfg.TimeZone)
	live := SlotEvent("nightly", s, evs[1].Time, orchestrator.SourceCron)
	if orchestrator.RunID(live.Pipeline, live.Key) != orchestrator.RunID(evs[1].Pipeline, evs[1].Key) || !live.Schedule.Previous.Equal(evs[1].Schedule.Previous) {
		t.Errorf("live %+v and backfilled %+v events differ", live, evs[1])
	}

	if _, more, _ := Backfill("nightly", cfg, from, to, 2); !more {
		t.Errorf("limit 2 of 4 slots: more = false, want true")
	}
	for _, bad := range []struct {
		from, to time.Time
		limit    int
	}{{to, from, 10}, {from, to, 0}, {from, to, MaxBackfill + 1}, {from, time.Now().Add(time.Hour), 10}} {
		if _, _, err := Backfill("nightly", cfg, bad.from, bad.to, bad.limit); err == nil {
			t.Errorf("Backfill(%s, %s, %d) = nil error", bad.from, bad.to, bad.limit)
		}
	}
}
