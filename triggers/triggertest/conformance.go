package triggertest

import (
	"testing"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// Harness adapts one trigger to the conformance suite (Run). Occurrences
// are numbered by the suite; the harness turns number n into something its
// source delivers (a blob, an Event Grid post, a message, a cron slot).
type Harness struct {
	// NoRedelivery: the source cannot redeliver (core NATS). The suite then
	// skips the "not acked when Emit fails" case.
	NoRedelivery bool
	// NoFiltered: the trigger has no filter rules to break.
	NoFiltered bool
	// Timeout bounds every wait (default 30s; under synctest it is fake time).
	Timeout time.Duration
	// Bubble runs f: synctest.Test for triggers driven by time, nil for a
	// direct call.
	Bubble func(t *testing.T, f func(t *testing.T))

	// Start builds a fresh trigger on fresh state, delivering to intake, and
	// runs it. stop cancels it and must fail the test unless Run returned nil.
	Start func(t *testing.T, intake orchestrator.Intake) (stop func())
	// Occur makes occurrence n happen at the source.
	Occur func(t *testing.T, n int)
	// Redeliver makes the source deliver occurrence n again (Event Grid's
	// at-least-once retry, a second publish, a second replica, a restart).
	Redeliver func(t *testing.T, n int)
	// Retry is what the source does after it was not acked: nothing for
	// sources that retry on their own, a repost for Event Grid, a sweep.
	Retry func(t *testing.T, n int)
	// Acked reports whether the source considers occurrence n handled.
	Acked func(t *testing.T, n int) bool
	// OccurFiltered makes an occurrence the trigger must record, not run.
	OccurFiltered func(t *testing.T)
}

func (h *Harness) bubble(t *testing.T, f func(t *testing.T)) {
	if h.Bubble != nil {
		h.Bubble(t, f)
		return
	}
	f(t)
}

// Run is the conformance suite every trigger passes.
func Run(t *testing.T, h Harness) {
	if h.Timeout <= 0 {
		h.Timeout = 30 * time.Second
	}
	t.Run("stable keys across redelivery", func(t *testing.T) {
		h.bubble(t, func(t *testing.T) {
			intake := NewIntake()
			stop := h.Start(t, intake)
			h.Occur(t, 1)
			intake.Wait(t, h.Timeout, "occurrence 1", func(s Snapshot) bool { return len(s.Accepted) == 1 })
			h.Redeliver(t, 1)
			h.Occur(t, 2)
			intake.Wait(t, h.Timeout, "occurrence 2", func(s Snapshot) bool { return len(s.Accepted) == 2 })
			stop()
			s := intake.Snapshot()
			if len(s.Accepted) != 2 {
				t.Fatalf("runs = %d, want 2: a redelivery became a new run", len(s.Accepted))
			}
			if s.Accepted[0].Key == s.Accepted[1].Key {
				t.Errorf("two occurrences share key %q", s.Accepted[0].Key)
			}
			for _, ev := range s.Accepted {
				if ev.Pipeline == "" || ev.Source == "" || ev.Time.IsZero() || ev.Time.Location() != time.UTC {
					t.Errorf("event %+v lacks pipeline, source or a UTC time", ev)
				}
			}
			if !h.Acked(t, 1) || !h.Acked(t, 2) {
				t.Errorf("emitted occurrences are not acked at the source")
			}
		})
	})
	t.Run("not acked when Emit fails", func(t *testing.T) {
		if h.NoRedelivery {
			t.Skip("the source cannot redeliver (documented at-most-once)")
		}
		h.bubble(t, func(t *testing.T) {
			intake := NewIntake()
			intake.FailNext()
			stop := h.Start(t, intake)
			h.Occur(t, 1)
			intake.Wait(t, h.Timeout, "the failed emit", func(s Snapshot) bool { return s.Failed == 1 })
			if h.Acked(t, 1) {
				t.Fatal("the source was acked although Emit failed")
			}
			h.Retry(t, 1)
			intake.Wait(t, h.Timeout, "the retried emit", func(s Snapshot) bool { return len(s.Accepted) == 1 })
			stop()
			if !h.Acked(t, 1) {
				t.Error("not acked after the retried Emit succeeded")
			}
		})
	})
	t.Run("filtered events are recorded with a reason", func(t *testing.T) {
		if h.NoFiltered {
			t.Skip("the trigger has no filter rules")
		}
		h.bubble(t, func(t *testing.T) {
			intake := NewIntake()
			stop := h.Start(t, intake)
			h.OccurFiltered(t)
			s := intake.Wait(t, h.Timeout, "a record", func(s Snapshot) bool { return len(s.Records) == 1 })
			stop()
			if len(s.Accepted) != 0 || s.Emits != 0 {
				t.Errorf("a filtered occurrence reached Emit: %+v", s.Accepted)
			}
			r := s.Records[0]
			if r.Reason == "" || r.Event.Key == "" || r.State != orchestrator.StateFiltered && r.State != orchestrator.StateRejected {
				t.Errorf("record = %+v, want filtered or rejected with a key and a reason", r)
			}
		})
	})
	t.Run("Run returns nil on cancel", func(t *testing.T) {
		h.bubble(t, func(t *testing.T) {
			stop := h.Start(t, NewIntake())
			stop() // fails the test unless Run returned nil; goleak in TestMain checks leaks
		})
	})
}
