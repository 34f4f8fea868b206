package cron

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/triggertest"
)

// replica runs one Source in the bubble until stop is called.
type replica struct {
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, o Options) *replica {
	t.Helper()
	src, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	r := &replica{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- src.Run(ctx) }()
	return r
}

func (r *replica) stop(t *testing.T) {
	t.Helper()
	r.cancel()
	if err := <-r.done; err != nil {
		t.Errorf("Run after cancel = %v, want nil", err)
	}
}

func sleepUntil(t time.Time) { time.Sleep(time.Until(t)) }

func slotsOf(evs []orchestrator.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, ev.Time.Format("01-02 15:04"))
	}
	return out
}

func recordsOf(rs []triggertest.Recorded) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Event.Time.Format("01-02 15:04"))
	}
	return out
}

func opts(intake orchestrator.Intake, store kvstate.Store, cfg Config) Options {
	return Options{Pipeline: "nightly", Config: cfg, Intake: intake, store: store, Holder: "a"}
}

// day is 2026-06-01 in UTC, reached by sleeping in the bubble.
var day = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

func TestCatchUpAfterThreeHourOutage(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		wantFired  []string
		wantSkip   []string
		wantSumm   int // summary records (slots beyond the window)
		wantKeysOK bool
	}{
		{name: "skip", cfg: Config{Schedule: "0 * * * *", CatchUp: CatchUpSkip},
			wantFired: []string{"06-01 10:00", "06-01 14:00"}, wantSkip: []string{"06-01 11:00", "06-01 12:00", "06-01 13:00"}},
		{name: "latest", cfg: Config{Schedule: "0 * * * *", CatchUp: CatchUpLatest},
			wantFired: []string{"06-01 10:00", "06-01 13:00", "06-01 14:00"}, wantSkip: []string{"06-01 11:00", "06-01 12:00"}},
		{name: "all", cfg: Config{Schedule: "0 * * * *", CatchUp: CatchUpAll},
			wantFired: []string{"06-01 10:00", "06-01 11:00", "06-01 12:00", "06-01 13:00", "06-01 14:00"}},
		{name: "all within a 100 minute window", cfg: Config{Schedule: "0 * * * *", CatchUp: CatchUpAll, CatchUpWindow: 100 * time.Minute},
			wantFired: []string{"06-01 10:00", "06-01 12:00", "06-01 13:00", "06-01 14:00"}, wantSkip: []string{"06-01 11:00"}, wantSumm: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sleepUntil(day.Add(9*time.Hour + 30*time.Minute))
				intake, store := triggertest.NewIntake(), kvstate.NewMemory()
				r := start(t, opts(intake, store, tt.cfg))
				sleepUntil(day.Add(10*time.Hour + time.Second))
				r.stop(t) // the outage: 10:00:01 to 13:30
				sleepUntil(day.Add(13*time.Hour + 30*time.Minute))
				r = start(t, opts(intake, store, tt.cfg))
				sleepUntil(day.Add(14*time.Hour + time.Second))
				r.stop(t)
				s := intake.Snapshot()
				if diff := cmp.Diff(tt.wantFired, slotsOf(s.Accepted)); diff != "" {
					t.Errorf("fired slots (-want +got):\n%s", diff)
				}
				var skipped []string
				summ := 0
				for _, rec := range s.Records {
					if strings.HasPrefix(rec.Event.Key, "skipped:") {
						summ++
						if !strings.Contains(rec.Reason, "catch_up_window") {
							t.Errorf("summary reason %q does not name the window", rec.Reason)
						}
						skipped = append(skipped, rec.Event.Schedule.Previous.Format("01-02 15:04"))
						continue
					}
					if !strings.Contains(rec.Reason, "catch_up is "+tt.cfg.CatchUp) {
						t.Errorf("skip reason %q does not name the policy", rec.Reason)
					}
					skipped = append(skipped, rec.Event.Time.Format("01-02 15:04"))
				}
				if diff := cmp.Diff(tt.wantSkip, skipped); diff != "" {
					t.Errorf("skipped slots (-want +got):\n%s", diff)
				}
				if summ != tt.wantSumm {
					t.Errorf("summary records = %d, want %d", summ, tt.wantSumm)
				}
			})
		})
	}
}

func TestNewScheduleFiresNothingFromBefore(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sleepUntil(day.Add(9*time.Hour + 59*time.Minute))
		intake := triggertest.NewIntake()
		r := start(t, opts(intake, kvstate.NewMemory(), Config{Schedule: "*/15 * * * *", CatchUp: CatchUpAll}))
		sleepUntil(day.Add(10*time.Hour + 31*time.Minute))
		r.stop(t)
		if diff := cmp.Diff([]string{"06-01 10:00", "06-01 10:15", "06-01 10:30"}, slotsOf(intake.Snapshot().Accepted)); diff != "" {
			t.Errorf("fired (-want +got):\n%s", diff)
		}
		ev := intake.Snapshot().Accepted[1]
		want := orchestrator.Event{Pipeline: "nightly", Key: "slot:2026-06-01T10:15:00Z", Source: "cron", Time: day.Add(10*time.Hour + 15*time.Minute),
			Schedule: &orchestrator.ScheduleEvent{Time: day.Add(10*time.Hour + 15*time.Minute), Previous: day.Add(10 * time.Hour)}}
		if diff := cmp.Diff(want, ev); diff != "" {
			t.Errorf("event (-want +got):\n%s", diff)
		}
	})
}

func TestEmitFailureIsRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sleepUntil(day.Add(9*time.Hour + 59*time.Minute))
		intake := triggertest.NewIntake()
		intake.FailNext(triggertest.ErrTransient, triggertest.ErrTransient)
		o := opts(intake, kvstate.NewMemory(), Config{Schedule: "0 * * * *"})
		o.RetryDelay = 10 * time.Second
		r := start(t, o)
		sleepUntil(day.Add(10*time.Hour + 25*time.Second))
		r.stop(t)
		s := intake.Snapshot()
		if diff := cmp.Diff([]string{"06-01 10:00"}, slotsOf(s.Accepted)); diff != "" {
			t.Errorf("fired (-want +got):\n%s", diff)
		}
		if s.Failed != 2 {
			t.Errorf("failed emits = %d, want 2", s.Failed)
		}
	})
}

func TestOverlapPolicies(t *testing.T) {
	// */10 schedule; the 10:00 run stays running until 10:25.
	tests := []struct {
		policy     string
		wantFired  []string
		wantRecord []string
		wantCancel int
	}{
		{OverlapAllow, []string{"06-01 10:00", "06-01 10:10", "06-01 10:20", "06-01 10:30"}, nil, 0},
		{OverlapSkip, []string{"06-01 10:00", "06-01 10:30"}, []string{"06-01 10:10", "06-01 10:20"}, 0},
		// 10:10 is buffered, replaced by 10:20, which fires when 10:00 ends (10:25).
		{OverlapBufferOne, []string{"06-01 10:00", "06-01 10:20", "06-01 10:30"}, []string{"06-01 10:10"}, 0},
		{OverlapCancelPrevious, []string{"06-01 10:00", "06-01 10:10", "06-01 10:20", "06-01 10:30"}, nil, 3},
	}
	for _, tt := range tests {
		t.Run(tt.policy, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sleepUntil(day.Add(9*time.Hour + 55*time.Minute))
				intake, runs := triggertest.NewIntake(), triggertest.NewRuns()
				first := orchestrator.RunID("nightly", SlotKey(day.Add(10*time.Hour)))
				var mu sync.Mutex
				// Every run starts running; cancel_previous ends the canceled one.
				intake.FailWhen(func(ev orchestrator.Event) error {
					runs.Set(orchestrator.RunID(ev.Pipeline, ev.Key), orchestrator.StateRunning)
					return nil
				})
				runs.OnCancel = func(id string) {
					mu.Lock()
					defer mu.Unlock()
					runs.Set(id, orchestrator.StateCanceled)
				}
				o := opts(intake, kvstate.NewMemory(), Config{Schedule: "*/10 * * * *", Overlap: tt.policy})
				o.Runs = runs
				o.OverlapPoll = time.Minute
				r := start(t, o)
				sleepUntil(day.Add(10*time.Hour + 25*time.Minute))
				runs.Set(first, orchestrator.StateCompleted)
				if tt.policy != OverlapCancelPrevious {
					// Later runs end quickly from now on.
					for _, m := range []int{10, 20} {
						id := orchestrator.RunID("nightly", SlotKey(day.Add(10*time.Hour+time.Duration(m)*time.Minute)))
						if _, err := runs.Get(context.Background(), id); err == nil && tt.policy != OverlapBufferOne {
							runs.Set(id, orchestrator.StateCompleted)
						}
					}
				}
				if tt.policy == OverlapBufferOne {
					sleepUntil(day.Add(10*time.Hour + 27*time.Minute))
					synctest.Wait()
					runs.Set(orchestrator.RunID("nightly", SlotKey(day.Add(10*time.Hour+20*time.Minute))), orchestrator.StateCompleted)
				}
				sleepUntil(day.Add(10*time.Hour + 30*time.Minute + time.Second))
				r.stop(t)
				s := intake.Snapshot()
				if diff := cmp.Diff(tt.wantFired, slotsOf(s.Accepted)); diff != "" {
					t.Errorf("fired (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tt.wantRecord, recordsOf(s.Records)); diff != "" {
					t.Errorf("recorded skips (-want +got):\n%s", diff)
				}
				for _, rec := range s.Records {
					if !strings.Contains(rec.Reason, "overlap") || !strings.Contains(rec.Reason, "still running") {
						t.Errorf("reason %q does not explain the overlap", rec.Reason)
					}
				}
				if got := len(runs.Canceled()); got != tt.wantCancel {
					t.Errorf("cancels = %d, want %d", got, tt.wantCancel)
				}
			})
		})
	}
}

// cancel_previous that cannot cancel (the previous run is being
// submitted, or its endpoint has no workspace) records the slot as skipped
// with the reason and goes on: later slots are not held up behind it.
func TestCancelPreviousThatCannotCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sleepUntil(day.Add(9*time.Hour + 55*time.Minute))
		intake, runs := triggertest.NewIntake(), triggertest.NewRuns()
		first := orchestrator.RunID("nightly", SlotKey(day.Add(10*time.Hour)))
		intake.FailWhen(func(ev orchestrator.Event) error {
			runs.Set(orchestrator.RunID(ev.Pipeline, ev.Key), orchestrator.StateRunning)
			return nil
		})
		runs.CancelErr = fmt.Errorf("%w: run %s is being submitted right now", orchestrator.ErrNotAllowed, first)
		o := opts(intake, kvstate.NewMemory(), Config{Schedule: "*/10 * * * *", Overlap: OverlapCancelPrevious})
		o.Runs = runs
		o.OverlapPoll = time.Minute
		r := start(t, o)
		sleepUntil(day.Add(10*time.Hour + 25*time.Minute))
		runs.Set(first, orchestrator.StateCompleted)
		sleepUntil(day.Add(10*time.Hour + 30*time.Minute + time.Second))
		r.stop(t)
		s := intake.Snapshot()
		if diff := cmp.Diff([]string{"06-01 10:00", "06-01 10:30"}, slotsOf(s.Accepted)); diff != "" {
			t.Errorf("fired (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"06-01 10:10", "06-01 10:20"}, recordsOf(s.Records)); diff != "" {
			t.Errorf("recorded skips (-want +got):\n%s", diff)
		}
		for _, rec := range s.Records {
			if !strings.Contains(rec.Reason, "could not be canceled") || !strings.Contains(rec.Reason, "being submitted") {
				t.Errorf("reason %q does not say why the previous run was not canceled", rec.Reason)
			}
		}
	})
}

func TestTwoReplicasFireEachSlotOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sleepUntil(day.Add(9*time.Hour + 59*time.Minute))
		intake, store := triggertest.NewIntake(), kvstate.NewMemory()
		cfg := Config{Schedule: "*/5 * * * *"}
		oa, ob := opts(intake, store, cfg), opts(intake, store, cfg)
		ob.Holder = "b"
		a, b := start(t, oa), start(t, ob)
		sleepUntil(day.Add(10*time.Hour + 20*time.Minute + time.Second))
		a.stop(t) // b carries on alone
		sleepUntil(day.Add(10*time.Hour + 30*time.Minute + time.Second))
		b.stop(t)
		s := intake.Snapshot()
		want := []string{"06-01 10:00", "06-01 10:05", "06-01 10:10", "06-01 10:15", "06-01 10:20", "06-01 10:25", "06-01 10:30"}
		if diff := cmp.Diff(want, slotsOf(s.Accepted)); diff != "" {
			t.Errorf("fired (-want +got):\n%s", diff)
		}
		if s.Emits != len(want) {
			t.Errorf("emits = %d, want %d: a slot was emitted by both replicas", s.Emits, len(want))
		}
	})
}

func TestReplicaDiesMidFire(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sleepUntil(day.Add(9*time.Hour + 59*time.Minute))
		intake, store := triggertest.NewIntake(), kvstate.NewMemory()
		slot := day.Add(10 * time.Hour)
		ob := opts(intake, store, Config{Schedule: "0 * * * *"})
		ob.Holder = "b"
		b := start(t, ob)
		// Replica "a" claims 10:00 a second early and dies before emitting.
		sleepUntil(slot.Add(-time.Second))
		src, _ := New(opts(intake, store, Config{Schedule: "0 * * * *"}))
		if ok, err := src.claim(context.Background(), slot); !ok || err != nil {
			t.Fatalf("claim: %v %v", ok, err)
		}
		sleepUntil(slot.Add(30 * time.Second))
		synctest.Wait()
		if n := len(intake.Snapshot().Accepted); n != 0 {
			t.Fatalf("b fired a slot a still held: %d", n)
		}
		sleepUntil(slot.Add(2 * time.Minute))
		b.stop(t)
		if diff := cmp.Diff([]string{"06-01 10:00"}, slotsOf(intake.Snapshot().Accepted)); diff != "" {
			t.Errorf("fired (-want +got):\n%s", diff)
		}
	})
}

// A slot another replica claimed and then died on keeps the catch-up
// decision of the replica that takes it over: a slot to be skipped is
// recorded skipped, not fired.
func TestTakenOverSlotKeepsItsCatchUpDecision(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sleepUntil(day.Add(7*time.Hour + 59*time.Minute))
		intake, store := triggertest.NewIntake(), kvstate.NewMemory()
		cfg := Config{Schedule: "0 * * * *", CatchUp: CatchUpSkip}
		x := start(t, opts(intake, store, cfg))
		sleepUntil(day.Add(8*time.Hour + 30*time.Second))
		x.stop(t) // fired 08:00; then every replica is down
		// Replica "a" comes back at 10:00:15, claims the missed 09:00 (to
		// record its skip) and dies.
		sleepUntil(day.Add(10*time.Hour + 15*time.Second))
		a, _ := New(opts(intake, store, cfg))
		if ok, err := a.claim(context.Background(), day.Add(9*time.Hour)); !ok || err != nil {
			t.Fatalf("claim: %v %v", ok, err)
		}
		// Replica "b" starts at 10:00:30: 09:00 was missed (catch_up skip),
		// 10:00 is on time, and a's claim holds 09:00 for a minute.
		sleepUntil(day.Add(10*time.Hour + 30*time.Second))
		ob := opts(intake, store, cfg)
		ob.Holder = "b"
		b := start(t, ob)
		sleepUntil(day.Add(10*time.Hour + 5*time.Minute))
		b.stop(t)
		s := intake.Snapshot()
		if diff := cmp.Diff([]string{"06-01 08:00", "06-01 10:00"}, slotsOf(s.Accepted)); diff != "" {
			t.Errorf("fired (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]string{"06-01 09:00"}, recordsOf(s.Records)); diff != "" {
			t.Errorf("recorded skips (-want +got):\n%s", diff)
		}
	})
}

func TestDSTDaysFireAsDocumented(t *testing.T) {
	loc, _ := time.LoadLocation("Europe/Amsterdam")
	tests := []struct {
		name     string
		from, to time.Time
		want     []string
	}{
		{"spring forward", time.Date(2026, 3, 28, 12, 0, 0, 0, loc), time.Date(2026, 3, 30, 12, 0, 0, 0, loc),
			[]string{"03-29 01:00", "03-30 00:30"}}, // 03:00 CEST, 02:30 CEST (UTC shown)
		{"fall back", time.Date(2026, 10, 24, 12, 0, 0, 0, loc), time.Date(2026, 10, 26, 12, 0, 0, 0, loc),
			[]string{"10-25 00:30", "10-26 01:30"}}, // 02:30 CEST once, then 02:30 CET
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sleepUntil(tt.from)
				intake := triggertest.NewIntake()
				r := start(t, opts(intake, kvstate.NewMemory(), Config{Schedule: "30 2 * * *", TimeZone: "Europe/Amsterdam"}))
				sleepUntil(tt.to)
				r.stop(t)
				if diff := cmp.Diff(tt.want, slotsOf(intake.Snapshot().Accepted)); diff != "" {
					t.Errorf("fired (UTC) (-want +got):\n%s", diff)
				}
			})
		})
	}
}

// TestTwoReplicasOnRealKV runs two replicas on a real JetStream KV bucket,
// in real time, with a 1s schedule: every slot is emitted by one replica.
func TestTwoReplicasOnRealKV(t *testing.T) {
	kv := triggertest.KV(t, triggertest.NATS(t), "triggers")
	intake := triggertest.NewIntake()
	var stops []func()
	for _, h := range []string{"a", "b"} {
		src, err := New(Options{Pipeline: "fast", Config: Config{Schedule: "@every 1s"}, Intake: intake, KV: kv, Holder: h})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- src.Run(ctx) }()
		stops = append(stops, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v", err)
			}
		})
	}
	intake.Wait(t, 15*time.Second, "3 slots", func(s triggertest.Snapshot) bool { return len(s.Accepted) >= 3 })
	for _, stop := range stops {
		stop()
	}
	s := intake.Snapshot()
	if s.Emits != len(s.Accepted) || s.Duplicates != 0 {
		t.Errorf("emits %d for %d slots (%d duplicates): a slot was emitted by both replicas", s.Emits, len(s.Accepted), s.Duplicates)
	}
	for i := 1; i < len(s.Accepted); i++ {
		if d := s.Accepted[i].Time.Sub(s.Accepted[i-1].Time); d != time.Second {
			t.Errorf("slots %v and %v are %v apart, want 1s", s.Accepted[i-1].Time, s.Accepted[i].Time, d)
		}
	}
}
