package cron

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/internal/trigmetrics"
)

// Options configure New.
type Options struct {
	Pipeline string
	Config   Config
	Intake   orchestrator.Intake
	// Runs is needed for every overlap policy but allow.
	Runs orchestrator.Runs
	// KV is the triggers' state bucket.
	KV jetstream.KeyValue
	// Holder identifies this replica in slot claims (default host + random).
	Holder string
	// ClaimTTL is how long a replica's claim on a slot keeps other replicas
	// off it; after that a replica that died mid-fire is replaced (default 1m).
	ClaimTTL time.Duration
	// LateGrace: a slot fired more than this after its time counts as
	// missed and follows the catch-up policy (default 1m).
	LateGrace time.Duration
	// RetryDelay is the wait before retrying a failed emit or state write
	// (default 5s).
	RetryDelay time.Duration
	// OverlapPoll is how often a buffered slot checks whether the previous
	// run ended (default 15s).
	OverlapPoll time.Duration
	Logger      *slog.Logger
	Registerer  prometheus.Registerer

	store kvstate.Store // tests under synctest
}

// Source fires one pipeline's schedule. Its state (the last slot handled,
// the last slot run, the buffered slot) and its per-slot claim and done
// markers live in KV, so any number of replicas fire each slot once: a
// replica claims a slot (create-if-absent), emits it, and marks it done; the
// others see the claim, wait, and find it done. A replica that dies between
// claim and done is replaced once its claim is older than ClaimTTL.
//
// It uses time.Now and timers only, so testing/synctest drives it.
type Source struct {
	pipeline string
	cfg      Config
	sched    *Schedule
	intake   orchestrator.Intake
	runs     orchestrator.Runs
	store    kvstate.Store
	holder   string
	claimTTL time.Duration
	grace    time.Duration
	retry    time.Duration
	poll     time.Duration
	doneTTL  time.Duration
	log      *slog.Logger
	m        *trigmetrics.Metrics
}

// New checks the options and returns the source. It starts nothing.
func New(o Options) (*Source, error) {
	var errs []error
	if err := o.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.Intake == nil {
		errs = append(errs, errors.New("cron: no intake"))
	}
	if o.Config.OverlapOrDefault() != OverlapAllow && o.Runs == nil {
		errs = append(errs, fmt.Errorf("cron: overlap %s needs the orchestrator's runs", o.Config.Overlap))
	}
	store := o.store
	if store == nil && o.KV != nil {
		store = kvstate.JetStream(o.KV)
	}
	if store == nil {
		errs = append(errs, errors.New("cron: no KV bucket"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("pipeline %s: %w", o.Pipeline, err)
	}
	sched, _ := Parse(o.Config.Schedule, o.Config.TimeZone)
	s := &Source{
		pipeline: o.Pipeline, cfg: o.Config, sched: sched, intake: o.Intake, runs: o.Runs, store: store,
		holder: o.Holder, claimTTL: o.ClaimTTL, grace: o.LateGrace, retry: o.RetryDelay, poll: o.OverlapPoll,
		log: o.Logger, m: trigmetrics.New(o.Registerer),
	}
	if s.holder == "" {
		s.holder = kvstate.NewHolderID()
	}
	if s.claimTTL <= 0 {
		s.claimTTL = time.Minute
	}
	if s.grace <= 0 {
		s.grace = time.Minute
	}
	if s.retry <= 0 {
		s.retry = 5 * time.Second
	}
	if s.poll <= 0 {
		s.poll = 15 * time.Second
	}
	s.doneTTL = o.Config.CatchUpWindowOrDefault() + 24*time.Hour
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.log = s.log.With("trigger", "cron", "pipeline", o.Pipeline)
	return s, nil
}

// Schedule is the parsed schedule.
func (s *Source) Schedule() *Schedule { return s.sched }

type state struct {
	// Last is the newest slot handled (fired, skipped, or buffered), or the
	// time the schedule was first seen.
	Last time.Time `json:"last"`
	// LastRun is the newest slot emitted: its run is "the previous run"
	// for the overlap policies.
	LastRun time.Time `json:"last_run,omitzero"`
	// Buffered is the slot held by overlap buffer_one.
	Buffered time.Time `json:"buffered,omitzero"`
}

func (s *Source) key(kind string) string { return "cron." + kvstate.Token(s.pipeline) + "." + kind }

func (s *Source) slotKey(kind string, slot time.Time) string {
	return fmt.Sprintf("%s.%d", s.key(kind), slot.UnixNano())
}

func (s *Source) loadState(ctx context.Context) (state, uint64, error) {
	e, err := s.store.Get(ctx, s.key("state"))
	if errors.Is(err, kvstate.ErrNotFound) {
		return state{}, 0, nil
	}
	if err != nil {
		return state{}, 0, err
	}
	var st state
	if err := json.Unmarshal(e.Value, &st); err != nil {
		return state{}, e.Revision, nil
	}
	return st, e.Revision, nil
}

// updateState applies fn to the shared state with a CAS loop.
func (s *Source) updateState(ctx context.Context, fn func(*state)) (state, error) {
	for {
		st, rev, err := s.loadState(ctx)
		if err != nil {
			return st, err
		}
		fn(&st)
		v, _ := json.Marshal(st)
		if rev == 0 {
			_, err = s.store.Create(ctx, s.key("state"), v, 0)
		} else {
			_, err = s.store.Update(ctx, s.key("state"), v, rev)
		}
		if errors.Is(err, kvstate.ErrExists) || errors.Is(err, kvstate.ErrConflict) {
			continue
		}
		return st, err
	}
}

// Run fires the schedule until ctx ends.
func (s *Source) Run(ctx context.Context) error {
	var last time.Time
	for {
		st, err := s.updateState(ctx, func(st *state) {
			if st.Last.IsZero() {
				// A new schedule fires nothing from before it existed.
				st.Last = time.Now().UTC()
			}
		})
		if err == nil {
			last = st.Last
			break
		}
		s.log.Warn("read schedule state", "err", err)
		if !s.sleep(ctx, s.retry) {
			return nil
		}
	}
	// Slots another replica claimed, with this replica's decision for each
	// (a skip reason, or "" to fire): a slot taken over from a replica that
	// died keeps its catch-up decision.
	pending := map[time.Time]string{}
	for {
		for slot, skipWhy := range pending {
			if ok, _ := s.fire(ctx, slot, skipWhy); ok {
				delete(pending, slot)
			}
		}
		buffered := s.checkBuffered(ctx)
		now := time.Now()
		if err := s.handleDue(ctx, last, now, pending); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			s.log.Warn("fire schedule; retrying", "err", err)
			if !s.sleep(ctx, s.retry) {
				return nil
			}
			continue
		}
		if now.After(last) {
			last = now
		}
		wait := time.Until(s.sched.Next(last))
		if len(pending) > 0 {
			wait = min(wait, s.claimTTL/4)
		}
		if buffered {
			wait = min(wait, s.poll)
		}
		if !s.sleep(ctx, wait) {
			return nil
		}
	}
}

func (s *Source) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(max(d, 0))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// maxCatchUp bounds the missed slots handled one by one.
const (
	maxCatchUp     = 1000
	maxSkipRecords = 100
)

// handleDue fires or skips every slot in (last, now].
func (s *Source) handleDue(ctx context.Context, last, now time.Time, pending map[time.Time]string) error {
	window := s.cfg.CatchUpWindowOrDefault()
	onTime := now.Add(-s.grace)
	windowStart := now.Add(-window)
	// Slots older than the window: one summary record.
	if first := s.sched.Next(last); !first.IsZero() && !first.After(windowStart) && !first.After(onTime) {
		end := s.sched.Prev(windowStart.Add(time.Nanosecond))
		if err := s.summary(ctx, first, end, fmt.Sprintf("missed while no replica was running; older than catch_up_window %s", window)); err != nil {
			return err
		}
	}
	from := last
	if windowStart.After(from) {
		from = windowStart
	}
	var missed []time.Time
	more := false
	if onTime.After(from) {
		missed, more = s.sched.Slots(from, onTime, maxCatchUp)
	}
	var fire, skip []time.Time
	var skipWhy string
	switch s.cfg.CatchUpOrDefault() {
	case CatchUpSkip:
		skip, skipWhy = missed, "missed while no replica was running; catch_up is skip"
	case CatchUpLatest:
		if len(missed) > 0 {
			newest := missed[len(missed)-1]
			if more {
				newest = s.sched.Prev(onTime.Add(time.Nanosecond))
			}
			fire = []time.Time{newest}
			skip, skipWhy = missed[:len(missed)-1], "missed while no replica was running; catch_up is latest and fires only "+newest.UTC().Format(time.RFC3339)
			more = more && len(missed) > 0
		}
	case CatchUpAll:
		fire = missed
	}
	for i, slot := range skip {
		if i == maxSkipRecords {
			if err := s.summary(ctx, slot, skip[len(skip)-1], skipWhy); err != nil {
				return err
			}
			break
		}
		if err := s.settle(ctx, slot, skipWhy, pending); err != nil {
			return err
		}
	}
	if more {
		end := s.sched.Prev(onTime.Add(time.Nanosecond))
		if err := s.summary(ctx, missed[len(missed)-1], end, fmt.Sprintf("more than %d slots missed in the catch-up window", maxCatchUp)); err != nil {
			return err
		}
	}
	cur := from
	if onTime.After(cur) {
		cur = onTime
	}
	current, _ := s.sched.Slots(cur, now, maxCatchUp)
	for _, slot := range append(fire, current...) {
		if err := s.settle(ctx, slot, "", pending); err != nil {
			return err
		}
	}
	return nil
}

// settle fires (or, with a reason, skips) one slot; a slot another replica
// is handling goes to pending.
func (s *Source) settle(ctx context.Context, slot time.Time, skipWhy string, pending map[time.Time]string) error {
	ok, err := s.fire(ctx, slot, skipWhy)
	if err != nil {
		return err
	}
	if !ok {
		pending[slot] = skipWhy
	}
	return nil
}

type claim struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

// fire handles one slot exactly once across replicas. It reports false when
// another live replica holds the slot's claim.
func (s *Source) fire(ctx context.Context, slot time.Time, skipWhy string) (bool, error) {
	if _, err := s.store.Get(ctx, s.slotKey("done", slot)); err == nil {
		return true, nil
	} else if !errors.Is(err, kvstate.ErrNotFound) {
		return false, err
	}
	if ok, err := s.claim(ctx, slot); !ok || err != nil {
		return false, err
	}
	// The replica whose claim we saw may have finished (done, then claim
	// deleted) between our two reads: look again now that we hold it.
	if _, err := s.store.Get(ctx, s.slotKey("done", slot)); err == nil {
		_ = s.store.Delete(ctx, s.slotKey("claim", slot), 0)
		return true, nil
	} else if !errors.Is(err, kvstate.ErrNotFound) {
		return false, err
	}
	buffered, err := s.act(ctx, slot, skipWhy)
	if err != nil {
		return false, err // the claim stays ours; the retry re-enters it
	}
	// The slot is handled: marking it so is not cut short by shutdown. A
	// buffered slot is marked done when it fires (checkBuffered).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if !buffered {
		if _, err := s.store.Create(ctx, s.slotKey("done", slot), []byte(s.holder), s.doneTTL); err != nil && !errors.Is(err, kvstate.ErrExists) {
			return false, err
		}
	}
	_ = s.store.Delete(ctx, s.slotKey("claim", slot), 0)
	_, err = s.updateState(ctx, func(st *state) {
		if slot.After(st.Last) {
			st.Last = slot
		}
	})
	return true, err
}

func (s *Source) claim(ctx context.Context, slot time.Time) (bool, error) {
	key := s.slotKey("claim", slot)
	v, _ := json.Marshal(claim{Holder: s.holder, Until: time.Now().Add(s.claimTTL)})
	_, err := s.store.Create(ctx, key, v, 2*s.claimTTL)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, kvstate.ErrExists) {
		return false, err
	}
	e, err := s.store.Get(ctx, key)
	if errors.Is(err, kvstate.ErrNotFound) {
		return s.claim(ctx, slot)
	}
	if err != nil {
		return false, err
	}
	var c claim
	_ = json.Unmarshal(e.Value, &c)
	if c.Holder != s.holder && time.Now().Before(c.Until) {
		return false, nil
	}
	if _, err := s.store.Update(ctx, key, v, e.Revision); err != nil {
		if errors.Is(err, kvstate.ErrConflict) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

func (s *Source) event(slot time.Time) orchestrator.Event {
	return SlotEvent(s.pipeline, s.sched, slot, orchestrator.SourceCron)
}

// act applies the catch-up decision (skipWhy) or the overlap policy to a
// claimed slot.
func (s *Source) act(ctx context.Context, slot time.Time, skipWhy string) (buffered bool, err error) {
	ev := s.event(slot)
	if skipWhy != "" {
		return false, s.skip(ctx, ev, skipWhy)
	}
	policy := s.cfg.OverlapOrDefault()
	if policy == OverlapAllow {
		return false, s.emit(ctx, ev)
	}
	st, _, err := s.loadState(ctx)
	if err != nil {
		return false, err
	}
	prevID, running, prevState, err := s.previousRunning(ctx, st)
	if err != nil {
		return false, err
	}
	if !running {
		return false, s.emit(ctx, ev)
	}
	why := fmt.Sprintf("the previous run %s (slot %s) is still %s", prevID, st.LastRun.UTC().Format(time.RFC3339), prevState)
	switch policy {
	case OverlapSkip:
		return false, s.skip(ctx, ev, "overlap skip: "+why)
	case OverlapCancelPrevious:
		if err := s.runs.Cancel(ctx, prevID, fmt.Sprintf("overlap cancel_previous: slot %s starts", slot.UTC().Format(time.RFC3339))); err != nil {
			if errors.Is(err, orchestrator.ErrNotAllowed) {
				// The run cannot be canceled (being submitted, no job
				// known, no workspace): this slot does not run beside it,
				// and it is done, so later slots are not held up.
				return false, s.skip(ctx, ev, fmt.Sprintf("overlap cancel_previous: %s and could not be canceled (%v); this slot does not run", why, err))
			}
			return false, fmt.Errorf("cancel previous run %s: %w", prevID, err)
		}
		s.log.Info("previous run canceled by overlap policy", "run", prevID, "slot", slot)
		return false, s.emit(ctx, ev)
	case OverlapBufferOne:
		var replaced time.Time
		if _, err := s.updateState(ctx, func(st *state) {
			replaced = st.Buffered
			if slot.After(st.Buffered) {
				st.Buffered = slot
			}
		}); err != nil {
			return false, err
		}
		s.m.Inc("cron", s.pipeline, trigmetrics.Skipped)
		s.log.Info("slot buffered until the previous run ends", "slot", slot, "previous", prevID)
		if !replaced.IsZero() && replaced.Before(slot) {
			old := s.event(replaced)
			if _, err := s.intake.Record(ctx, old, orchestrator.StateFiltered,
				fmt.Sprintf("overlap buffer_one: replaced in the buffer by slot %s; %s", slot.UTC().Format(time.RFC3339), why)); err != nil {
				return false, err
			}
			// The replaced slot will never fire: it is done.
			_, _ = s.store.Create(ctx, s.slotKey("done", replaced), []byte(s.holder), s.doneTTL)
		}
		return true, nil
	}
	return false, fmt.Errorf("unknown overlap policy %q", policy)
}

// previousRunning reports whether the run of the last emitted slot is
// still going. A run the ledger does not know counts as not running.
func (s *Source) previousRunning(ctx context.Context, st state) (string, bool, orchestrator.State, error) {
	if st.LastRun.IsZero() {
		return "", false, "", nil
	}
	id := orchestrator.RunID(s.pipeline, SlotKey(st.LastRun))
	run, err := s.runs.Get(ctx, id)
	if errors.Is(err, orchestrator.ErrRunNotFound) {
		return id, false, "", nil
	}
	if err != nil {
		return id, false, "", fmt.Errorf("previous run %s: %w", id, err)
	}
	return id, !run.State.Terminal(), run.State, nil
}

// checkBuffered fires the buffered slot once the previous run ended. It
// reports whether a slot is still buffered.
func (s *Source) checkBuffered(ctx context.Context) bool {
	st, _, err := s.loadState(ctx)
	if err != nil || st.Buffered.IsZero() {
		return err == nil && !st.Buffered.IsZero()
	}
	_, running, _, err := s.previousRunning(ctx, st)
	if err != nil || running {
		return true
	}
	slot := st.Buffered
	if ok, err := s.claim(ctx, slot); !ok || err != nil {
		return true
	}
	if _, err := s.store.Get(ctx, s.slotKey("done", slot)); errors.Is(err, kvstate.ErrNotFound) {
		if err := s.emit(ctx, s.event(slot)); err != nil {
			s.log.Warn("fire buffered slot; retrying", "slot", slot, "err", err)
			return true
		}
	} else if err != nil {
		return true
	}
	_, _ = s.store.Create(ctx, s.slotKey("done", slot), []byte(s.holder), s.doneTTL)
	_ = s.store.Delete(ctx, s.slotKey("claim", slot), 0)
	_, _ = s.updateState(ctx, func(st *state) {
		if st.Buffered.Equal(slot) {
			st.Buffered = time.Time{}
		}
	})
	return false
}

func (s *Source) emit(ctx context.Context, ev orchestrator.Event) error {
	rc, err := s.intake.Emit(ctx, ev)
	switch {
	case err == nil:
		outcome := trigmetrics.Emitted
		if rc.Duplicate {
			outcome = trigmetrics.Duplicate
		}
		s.m.Inc("cron", s.pipeline, outcome)
		s.log.Info("slot fired", "slot", ev.Time, "run", rc.RunID, "duplicate", rc.Duplicate)
	case orchestrator.IsRefused(err):
		if _, rerr := s.intake.Record(ctx, ev, orchestrator.StateRejected, err.Error()); rerr != nil {
			return rerr
		}
		s.m.Inc("cron", s.pipeline, trigmetrics.Rejected)
		return nil
	default:
		s.m.Inc("cron", s.pipeline, trigmetrics.Failed)
		return fmt.Errorf("emit slot %s: %w", ev.Time.Format(time.RFC3339), err)
	}
	slot := ev.Time
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, err = s.updateState(ctx, func(st *state) {
		if slot.After(st.LastRun) {
			st.LastRun = slot
		}
	})
	return err
}

func (s *Source) skip(ctx context.Context, ev orchestrator.Event, why string) error {
	if _, err := s.intake.Record(ctx, ev, orchestrator.StateFiltered, why); err != nil {
		return fmt.Errorf("record skipped slot: %w", err)
	}
	s.m.Inc("cron", s.pipeline, trigmetrics.Skipped)
	s.log.Info("slot skipped", "slot", ev.Time, "why", why)
	return nil
}

// summary records a range of skipped slots as one decision.
func (s *Source) summary(ctx context.Context, from, to time.Time, why string) error {
	if to.Before(from) {
		to = from
	}
	ev := orchestrator.Event{Pipeline: s.pipeline, Source: orchestrator.SourceCron, Time: to.UTC(),
		Key:      "skipped:" + from.UTC().Format(time.RFC3339Nano) + "/" + to.UTC().Format(time.RFC3339Nano),
		Schedule: &orchestrator.ScheduleEvent{Time: to.UTC(), Previous: from.UTC()}}
	return s.skip(ctx, ev, fmt.Sprintf("slots %s to %s: %s", from.UTC().Format(time.RFC3339), to.UTC().Format(time.RFC3339), why))
}
