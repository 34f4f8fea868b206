package cron

import (
	"fmt"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// SlotEvent is the event of one slot of pipeline's schedule s. The live
// trigger and backfill build it the same way (same key, same template data),
// so a slot is one run whoever emits it: backfilling a slot that already ran
// is a duplicate, not a second job.
func SlotEvent(pipeline string, s *Schedule, slot time.Time, source string) orchestrator.Event {
	return orchestrator.Event{
		Pipeline: pipeline, Key: SlotKey(slot), Source: source, Time: slot.UTC(),
		Schedule: &orchestrator.ScheduleEvent{Time: slot.UTC(), Previous: s.Prev(slot).UTC()},
	}
}

// MaxBackfill bounds one backfill request.
const MaxBackfill = 1000

// Backfill returns the events of the slots of cfg's schedule in (from, to],
// oldest first, at most limit of them (1 to MaxBackfill), and whether there
// were more. Their source is orchestrator.SourceBackfill.
func Backfill(pipeline string, cfg Config, from, to time.Time, limit int) ([]orchestrator.Event, bool, error) {
	if limit < 1 || limit > MaxBackfill {
		return nil, false, fmt.Errorf("limit %d is not between 1 and %d", limit, MaxBackfill)
	}
	if !to.After(from) {
		return nil, false, fmt.Errorf("to (%s) is not after from (%s)", to.Format(time.RFC3339), from.Format(time.RFC3339))
	}
	if to.After(time.Now().Add(time.Minute)) {
		return nil, false, fmt.Errorf("to (%s) is in the future: backfill fills past slots; the schedule fires the others", to.Format(time.RFC3339))
	}
	s, err := Parse(cfg.Schedule, cfg.TimeZone)
	if err != nil {
		return nil, false, err
	}
	slots, more := s.Slots(from, to, limit)
	evs := make([]orchestrator.Event, 0, len(slots))
	for _, t := range slots {
		evs = append(evs, SlotEvent(pipeline, s, t, orchestrator.SourceBackfill))
	}
	return evs, more, nil
}
