package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/batchd/batchd/jobs/backoff"
	"github.com/batchd/batchd/orchestrator/kvstate"
)

// admission keeps, per endpoint, the runs holding one of its
// max_running_jobs slots and the time a 429 paused it until, in one KV key
// per endpoint. Every change is a compare-and-set, so replicas share the
// limit exactly.
//
// Slot life: a run takes a slot before it writes submitting and gives it
// back after it is written finished (or goes back to waiting). A crash
// between the two leaves a slot held by a run that no longer needs it;
// repair frees those.
type admission struct {
	kv kvstate.Store
}

// endpointState is the value of one endpoint's key.
type endpointState struct {
	// Slots maps run ids to the time they took the slot.
	Slots       map[string]time.Time `json:"slots,omitempty"`
	PausedUntil time.Time            `json:"paused_until,omitzero"`
	PauseReason string               `json:"pause_reason,omitempty"`
}

// MaxRunningJobsCap is the largest max_running_jobs: an endpoint's slots
// are one KV value (one compare-and-set shares the cap exactly across
// replicas), about 70 bytes per slot, and NATS refuses a message over its
// max_payload (1 MiB by default). 10,000 slots take about 700 KB.
const MaxRunningJobsCap = 10000

func admissionKey(endpoint string) string { return "ep." + subjectToken(endpoint) }

// admitResult is the answer to acquire.
type admitResult struct {
	OK          bool
	PausedUntil time.Time // set when the endpoint is paused
	PauseReason string
	Full        bool // every slot is taken
	Running     int  // slots held (when Full)
}

func (a *admission) load(ctx context.Context, endpoint string) (*endpointState, uint64, error) {
	s, rev, err := a.loadKey(ctx, admissionKey(endpoint))
	if err != nil {
		return nil, 0, fmt.Errorf("admission %s: %w", endpoint, err)
	}
	return s, rev, nil
}

func (a *admission) store(ctx context.Context, endpoint string, s *endpointState, rev uint64) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if rev == 0 {
		_, err = a.kv.Create(ctx, admissionKey(endpoint), b, 0)
	} else {
		_, err = a.kv.Update(ctx, admissionKey(endpoint), b, rev)
	}
	if errors.Is(err, kvstate.ErrExists) || errors.Is(err, kvstate.ErrConflict) {
		return errConflict
	}
	if err != nil {
		return fmt.Errorf("admission %s: %w", endpoint, err)
	}
	return nil
}

// change applies fn to the endpoint's state with compare-and-set retries.
func (a *admission) change(ctx context.Context, endpoint string, fn func(s *endpointState) bool) (*endpointState, error) {
	for i := 0; ; i++ {
		s, rev, err := a.load(ctx, endpoint)
		if err != nil {
			return nil, err
		}
		if !fn(s) {
			return s, nil
		}
		err = a.store(ctx, endpoint, s, rev)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errConflict) || i >= 100 {
			return nil, err
		}
		if err := backoff.Sleep(ctx, time.Duration(i%10)*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// acquire gives runID a slot of endpoint (max 0: no cap, no slot is
// recorded). Holding one already is success: acquire is idempotent.
func (a *admission) acquire(ctx context.Context, endpoint, runID string, max int, now time.Time) (admitResult, error) {
	var res admitResult
	_, err := a.change(ctx, endpoint, func(s *endpointState) bool {
		res = admitResult{}
		if now.Before(s.PausedUntil) {
			res.PausedUntil, res.PauseReason = s.PausedUntil, s.PauseReason
			return false
		}
		if _, ok := s.Slots[runID]; ok || max <= 0 {
			res.OK = true
			return false
		}
		if len(s.Slots) >= max {
			res.Full, res.Running = true, len(s.Slots)
			return false
		}
		if s.Slots == nil {
			s.Slots = map[string]time.Time{}
		}
		s.Slots[runID] = now
		res.OK = true
		return true
	})
	return res, err
}

// hold records a slot for runID whatever the cap: a job that exists
// (adopted after its slot was given back) counts, even past the cap, so
// that no new submission is admitted until the endpoint is under it again.
func (a *admission) hold(ctx context.Context, endpoint, runID string, now time.Time) error {
	_, err := a.change(ctx, endpoint, func(s *endpointState) bool {
		if _, ok := s.Slots[runID]; ok {
			return false
		}
		if s.Slots == nil {
			s.Slots = map[string]time.Time{}
		}
		s.Slots[runID] = now
		return true
	})
	return err
}

// release gives runID's slot back, if it holds one.
func (a *admission) release(ctx context.Context, endpoint, runID string) error {
	_, err := a.change(ctx, endpoint, func(s *endpointState) bool {
		if _, ok := s.Slots[runID]; !ok {
			return false
		}
		delete(s.Slots, runID)
		return true
	})
	return err
}

// pause stops submissions to endpoint until until (a 429's Retry-After).
func (a *admission) pause(ctx context.Context, endpoint string, until time.Time, reason string) error {
	_, err := a.change(ctx, endpoint, func(s *endpointState) bool {
		if !until.After(s.PausedUntil) {
			return false
		}
		s.PausedUntil, s.PauseReason = until, reason
		return true
	})
	return err
}

// endpoints lists the endpoints that have state.
func (a *admission) endpoints(ctx context.Context) ([]string, error) {
	keys, err := a.kv.Keys(ctx, "ep.")
	if err != nil {
		return nil, fmt.Errorf("admission keys: %w", err)
	}
	return keys, nil
}

// loadKey reads one endpoint's state by its key (as endpoints returns it).
func (a *admission) loadKey(ctx context.Context, key string) (*endpointState, uint64, error) {
	e, err := a.kv.Get(ctx, key)
	if errors.Is(err, kvstate.ErrNotFound) {
		return &endpointState{}, 0, nil
	}
	if err != nil {
		return nil, 0, err
	}
	var s endpointState
	if err := json.Unmarshal(e.Value, &s); err != nil {
		return nil, 0, fmt.Errorf("decode: %w", err)
	}
	return &s, e.Revision, nil
}

// dropSlots removes the given runs' slots from the endpoint key, if they
// are still held since the time repair saw them.
func (a *admission) dropSlots(ctx context.Context, key string, stale map[string]time.Time) (int, error) {
	for i := 0; ; i++ {
		s, rev, err := a.loadKey(ctx, key)
		if err != nil {
			return 0, err
		}
		n := 0
		for id, at := range stale {
			if got, ok := s.Slots[id]; ok && got.Equal(at) {
				delete(s.Slots, id)
				n++
			}
		}
		if n == 0 {
			return 0, nil
		}
		b, err := json.Marshal(s)
		if err != nil {
			return 0, err
		}
		_, err = a.kv.Update(ctx, key, b, rev)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, kvstate.ErrConflict) || i >= 20 {
			return 0, err
		}
	}
}
