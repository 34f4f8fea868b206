// Package triggertest has what trigger tests share: a recording fake of
// orchestrator.Intake that dedupes by run id the way the real intake does, a
// fake of orchestrator.Runs, and the conformance suite every trigger passes
// (Run).
package triggertest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// ErrTransient is the error FailNext scripts by default: "not taken, retry".
var ErrTransient = errors.New("triggertest: intake unavailable")

// Recorded is one Record call.
type Recorded struct {
	Event  orchestrator.Event
	State  orchestrator.State
	Reason string
}

// Snapshot is the intake's state at one moment.
type Snapshot struct {
	// Accepted holds the first successfully emitted event of each run id,
	// in the order they were accepted.
	Accepted []orchestrator.Event
	// Emits counts Emit calls, failed ones included; Duplicates counts the
	// successful ones whose run id was already accepted.
	Emits      int
	Failed     int
	Duplicates int
	Records    []Recorded
}

// RunIDs of the accepted events.
func (s Snapshot) RunIDs() []string {
	ids := make([]string, len(s.Accepted))
	for i, ev := range s.Accepted {
		ids[i] = orchestrator.RunID(ev.Pipeline, ev.Key)
	}
	return ids
}

// RecordsIn returns the records in state st.
func (s Snapshot) RecordsIn(st orchestrator.State) []Recorded {
	var out []Recorded
	for _, r := range s.Records {
		if r.State == st {
			out = append(out, r)
		}
	}
	return out
}

// Intake is a recording fake of orchestrator.Intake. Like the real one it
// treats (pipeline, key) as the run's identity: a second successful Emit of
// the same run returns Duplicate. It is safe for concurrent use.
type Intake struct {
	mu       sync.Mutex
	accepted map[string]int // run id -> index in snap.Accepted
	records  map[string]bool
	snap     Snapshot
	script   []error
	errFor   func(orchestrator.Event) error
	changed  chan struct{}
}

// NewIntake returns an empty Intake.
func NewIntake() *Intake {
	return &Intake{accepted: map[string]int{}, records: map[string]bool{}, changed: make(chan struct{})}
}

// FailNext makes the next len(errs) Emit calls return errs in order (nil
// entries succeed). With no arguments it scripts one ErrTransient.
func (f *Intake) FailNext(errs ...error) {
	if len(errs) == 0 {
		errs = []error{ErrTransient}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = append(f.script, errs...)
}

// FailWhen makes every Emit of an event for which fn returns an error fail
// with that error (after any scripted FailNext errors).
func (f *Intake) FailWhen(fn func(orchestrator.Event) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errFor = fn
}

func (f *Intake) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Emit implements orchestrator.Intake.
func (f *Intake) Emit(ctx context.Context, ev orchestrator.Event) (orchestrator.Receipt, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Receipt{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	defer f.notify()
	f.snap.Emits++
	var err error
	if len(f.script) > 0 {
		err, f.script = f.script[0], f.script[1:]
	} else if f.errFor != nil {
		err = f.errFor(ev)
	}
	if err != nil {
		f.snap.Failed++
		return orchestrator.Receipt{}, err
	}
	if ev.Pipeline == "" || ev.Key == "" {
		f.snap.Failed++
		return orchestrator.Receipt{}, orchestrator.Refuse(fmt.Errorf("event without pipeline or key: %+v", ev))
	}
	id := orchestrator.RunID(ev.Pipeline, ev.Key)
	if _, ok := f.accepted[id]; ok {
		f.snap.Duplicates++
		return orchestrator.Receipt{RunID: id, Duplicate: true}, nil
	}
	f.accepted[id] = len(f.snap.Accepted)
	f.snap.Accepted = append(f.snap.Accepted, ev)
	return orchestrator.Receipt{RunID: id}, nil
}

// Record implements orchestrator.Intake. It is idempotent on (pipeline, key).
func (f *Intake) Record(ctx context.Context, ev orchestrator.Event, st orchestrator.State, reason string) (orchestrator.Receipt, error) {
	if err := ctx.Err(); err != nil {
		return orchestrator.Receipt{}, err
	}
	if ev.Key == "" {
		return orchestrator.Receipt{}, orchestrator.Refuse(errors.New("record without key"))
	}
	if reason == "" {
		return orchestrator.Receipt{}, orchestrator.Refuse(errors.New("record without reason"))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id := orchestrator.RunID(ev.Pipeline, ev.Key)
	if f.records[id] {
		return orchestrator.Receipt{RunID: id, Duplicate: true}, nil
	}
	defer f.notify()
	f.records[id] = true
	f.snap.Records = append(f.snap.Records, Recorded{Event: ev, State: st, Reason: reason})
	return orchestrator.Receipt{RunID: id}, nil
}

// Snapshot copies the current state.
func (f *Intake) Snapshot() Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.snap
	s.Accepted = append([]orchestrator.Event(nil), s.Accepted...)
	s.Records = append([]Recorded(nil), s.Records...)
	return s
}

// Wait blocks until cond holds for a snapshot, ctx ends, or timeout passes
// (on the test's clock: under synctest a timeout means nothing else could
// happen). It fails the test on timeout, naming what.
func (f *Intake) Wait(t testing.TB, timeout time.Duration, what string, cond func(Snapshot) bool) Snapshot {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		f.mu.Lock()
		ch := f.changed
		f.mu.Unlock()
		s := f.Snapshot()
		if cond(s) {
			return s
		}
		select {
		case <-ch:
		case <-timer.C:
			t.Fatalf("intake: waited %s for %s; have %d accepted, %d emits (%d failed, %d duplicate), %d records",
				timeout, what, len(s.Accepted), s.Emits, s.Failed, s.Duplicates, len(s.Records))
			return s
		}
	}
}

var _ orchestrator.Intake = (*Intake)(nil)

// Runs is a fake of orchestrator.Runs: a map of runs whose states the test
// sets, and a log of Cancel calls.
type Runs struct {
	mu       sync.Mutex
	runs     map[string]*orchestrator.Run
	canceled []string
	// OnCancel, when set, is called by Cancel (e.g. to end the run).
	OnCancel func(id string)
	// CancelErr, when set, is what Cancel returns (after logging the call).
	CancelErr error
}

// NewRuns returns an empty Runs.
func NewRuns() *Runs { return &Runs{runs: map[string]*orchestrator.Run{}} }

// Set records run id in state st.
func (r *Runs) Set(id string, st orchestrator.State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.runs[id] = &orchestrator.Run{ID: id, State: st}
}

// Get implements orchestrator.Runs.
func (r *Runs) Get(ctx context.Context, id string) (*orchestrator.Run, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	run, ok := r.runs[id]
	if !ok {
		return nil, fmt.Errorf("run %s: %w", id, orchestrator.ErrRunNotFound)
	}
	c := *run
	return &c, nil
}

// Cancel implements orchestrator.Runs.
func (r *Runs) Cancel(ctx context.Context, id, reason string) error {
	r.mu.Lock()
	r.canceled = append(r.canceled, id)
	fn, err := r.OnCancel, r.CancelErr
	r.mu.Unlock()
	if err != nil {
		return err
	}
	if fn != nil {
		fn(id)
	}
	return nil
}

// Canceled lists the ids Cancel was called with.
func (r *Runs) Canceled() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.canceled...)
}

var _ orchestrator.Runs = (*Runs)(nil)
