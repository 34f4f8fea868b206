package orchestrator

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestStateGraph(t *testing.T) {
	t.Parallel()
	for _, s := range States {
		if _, ok := graph[s]; !ok {
			t.Errorf("state %s has no entry in the graph", s)
		}
	}
	// Terminal states leave only for an operator's retry.
	for _, s := range States {
		if s.Terminal() {
			if diff := cmp.Diff([]State{StateReceived}, graph[s]); diff != "" {
				t.Errorf("%s moves to (-want +got):\n%s", s, diff)
			}
		}
	}
	// Every state is reachable from a new record, and every state that is
	// not terminal can reach a terminal one.
	reach := func(from State) map[State]bool {
		seen := map[State]bool{from: true}
		queue := []State{from}
		for len(queue) > 0 {
			s := queue[0]
			queue = queue[1:]
			for _, to := range graph[s] {
				if !seen[to] {
					seen[to] = true
					queue = append(queue, to)
				}
			}
		}
		return seen
	}
	fromNew := reach(stateNew)
	for _, s := range States {
		if !fromNew[s] {
			t.Errorf("state %s cannot be reached from a new record", s)
		}
		if s.Terminal() {
			continue
		}
		ends := false
		for to := range reach(s) {
			ends = ends || to.Terminal()
		}
		if !ends {
			t.Errorf("state %s can never end", s)
		}
	}
	if !canMove(StateReceived, StateSubmitting) || !canMove(StateSubmitted, StateCompleted) {
		t.Error("canMove refuses moves the table lists")
	}
	// Moves that would break a promise.
	for _, m := range []struct{ from, to State }{
		{stateNew, StateSubmitted},        // a job without a submission
		{StateReceived, StateRunning},     // running without a job
		{StateCompleted, StateFailed},     // two final states
		{StateFailed, StateCompleted},     // two final states
		{StateCanceled, StateSubmitted},   // a finished run tracked again
		{StateSubmitted, StateSubmitting}, // a second POST for a run with a job
		{StateRunning, StateUnknown},      // a known job forgotten
		{StateSubmitted, StateReceived},   // a run with a job started again without a retry
		{StateSubmitting, StateCanceled},  // a cancel while the POST is in flight
		{StateUnknown, StateRejected},     // an unknown POST may have made a job
		{StateTimedOut, StateSubmitting},  // a finished run posted again
		{StateDuplicate, StateDuplicate},  // a finished run finished again
		{StateReceived, StateUnknown},     // unknown needs a request sent
		{StateWaiting, StateUnknown},      // same
		{StateRunning, StateRunning},      // nothing new to record
		{StateSubmitting, StateReceived},  // a POST's answer dropped
		{StateFiltered, StateSubmitting},  // a filtered event posted
		{StateRejected, StateSubmitted},   // a refused job adopted
		{StateCompleted, StateCompleted},  // completion announced twice
		{StateSubmitting, StateDuplicate}, // a duplicate decided after a POST
		{StateUnknown, StateTimedOut},     // only an operator decides
		{StateRunning, StateReceived},     // same as submitted
		{StateWaiting, StateReceived},     // same
		{StateReceived, StateReceived},    // nothing new to record
		{StateSubmitted, StateDuplicate},  // same
		{StateRunning, StateFiltered},     // same
		{StateSubmitted, StateRejected},   // the endpoint accepted it
		{StateRunning, StateRejected},     // same
		{StateUnknown, StateFiltered},     // same
		{StateWaiting, StateFiltered},     // filtering happens at creation
		{StateWaiting, StateDuplicate},    // same
		{StateSubmitting, StateFiltered},  // same
		{StateCompleted, StateSubmitting}, // a finished run posted again
		{StateCompleted, StateWaiting},    // same
		{StateFailed, StateUnknown},       // same
		{StateRejected, StateRejected},    // same
		{StateCanceled, StateCanceled},    // same
		{StateTimedOut, StateTimedOut},    // same
		{StateFiltered, StateFiltered},    // same
		{StateDuplicate, StateCompleted},  // same
		{StateSubmitted, StateUnknown},    // a known job forgotten
	} {
		if canMove(m.from, m.to) {
			t.Errorf("the graph allows %q → %q", m.from, m.to)
		}
	}
}

func TestMoveRefusedLeavesTheRecord(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	r := newRecord(Event{Pipeline: "p", Key: "k", Source: SourceAPI}, at)
	if err := r.toFinished(StateCompleted, "done", "", at); err != nil {
		t.Fatal(err)
	}
	before := *r
	before.History = append([]Transition(nil), r.History...)
	err := r.toFinished(StateFailed, "again", "boom", at.Add(time.Second))
	var me *MoveError
	if !errors.As(err, &me) || me.From != StateCompleted || me.To != StateFailed {
		t.Fatalf("second final state: err = %v, want a MoveError from completed to failed", err)
	}
	if diff := cmp.Diff(&before, r, cmp.AllowUnexported(record{})); diff != "" {
		t.Errorf("a refused move changed the record (-before +after):\n%s", diff)
	}
	if err := r.toFinished(StateWaiting, "not terminal", "", at); err == nil {
		t.Error("toFinished(waiting) = nil, want an error")
	}
}

// TestNamedMoves: each named move sets what its state means beside the
// state itself.
func TestNamedMoves(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	later := at.Add(time.Minute)
	deadline := later.Add(time.Hour)
	base := func() *record {
		r := newRecord(Event{Pipeline: "p", Key: "k", Source: SourceAPI}, at)
		r.Endpoint = "ep"
		return r
	}
	type view struct {
		State    State
		Job      *JobRef
		Previous []JobRef
		Attempts int
		Error    string
		Sys      sysState
		Last     Transition
	}
	see := func(r *record) view {
		return view{State: r.State, Job: r.Job, Previous: r.PreviousJobs, Attempts: r.Attempts, Error: r.Error, Sys: r.Sys, Last: r.History[len(r.History)-1]}
	}
	tests := []struct {
		name  string
		setup func(r *record)
		move  func(r *record) error
		want  view
	}{{
		name: "waiting",
		move: func(r *record) error { return r.toWaiting("full", later) },
		want: view{State: StateWaiting, Sys: sysState{Carrier: carrierIntake, WaitReason: "full"}, Last: Transition{StateWaiting, later, "full"}},
	}, {
		name:  "submitting clears the wait",
		setup: func(r *record) { _ = r.toWaiting("full", at) },
		move:  func(r *record) error { return r.toSubmitting("posting", later) },
		want:  view{State: StateSubmitting, Sys: sysState{Carrier: carrierIntake, SubmittingAt: later}, Last: Transition{StateSubmitting, later, "posting"}},
	}, {
		name: "submitted hands over to the tracker",
		setup: func(r *record) {
			_ = r.toSubmitting("posting", at)
			r.Attempts, r.Error, r.Sys.Transient = 1, "earlier 503", 2
		},
		move: func(r *record) error {
			return r.toSubmitted(JobRef{Name: "j1", SubmittedAt: later}, deadline, "accepted", later)
		},
		want: view{State: StateSubmitted, Job: &JobRef{Name: "j1", SubmittedAt: later}, Attempts: 1,
			Sys:  sysState{Carrier: carrierTracker, SubmittingAt: at, Deadline: deadline},
			Last: Transition{StateSubmitted, later, "accepted"}},
	}, {
		name: "an operator's adoption keeps the earlier job",
		setup: func(r *record) {
			_ = r.toSubmitting("posting", at)
			_ = r.toUnknown("timeout", "unknown", at)
			r.Job = &JobRef{Name: "j0"}
		},
		move: func(r *record) error { return r.toSubmitted(JobRef{Name: "j1"}, time.Time{}, "adopted", later) },
		want: view{State: StateSubmitted, Job: &JobRef{Name: "j1"}, Previous: []JobRef{{Name: "j0"}}, Attempts: 1,
			Sys: sysState{Carrier: carrierTracker, SubmittingAt: at}, Last: Transition{StateSubmitted, later, "adopted"}},
	}, {
		name:  "unknown goes to the tracker with the error",
		setup: func(r *record) { _ = r.toSubmitting("posting", at) },
		move:  func(r *record) error { return r.toUnknown("EOF", "outcome unknown", later) },
		want: view{State: StateUnknown, Error: "EOF", Sys: sysState{Carrier: carrierTracker, SubmittingAt: at},
			Last: Transition{StateUnknown, later, "outcome unknown"}},
	}, {
		name: "parked stays unknown",
		setup: func(r *record) {
			_ = r.toSubmitting("posting", at)
			_ = r.toUnknown("EOF", "outcome unknown", at)
		},
		move: func(r *record) error { return r.toParked("an operator must decide", later) },
		want: view{State: StateUnknown, Error: "EOF", Sys: sysState{Carrier: carrierTracker, SubmittingAt: at, WaitReason: "an operator must decide"},
			Last: Transition{StateUnknown, later, "an operator must decide"}},
	}, {
		name: "finished closes the job and drops requests",
		setup: func(r *record) {
			_ = r.toSubmitting("posting", at)
			_ = r.toSubmitted(JobRef{Name: "j1", SubmittedAt: at}, time.Time{}, "accepted", at)
			r.Sys.Resolve = &resolveRequest{State: StateFailed, Reason: "x"}
		},
		move: func(r *record) error { return r.toFinished(StateFailed, "resolved", "bad data", later) },
		want: view{State: StateFailed, Job: &JobRef{Name: "j1", SubmittedAt: at, FinishedAt: later}, Attempts: 1, Error: "bad data",
			Sys: sysState{Carrier: carrierTracker, SubmittingAt: at}, Last: Transition{StateFailed, later, "resolved"}},
	}, {
		name:  "rejected has no finished job",
		setup: func(r *record) { r.Job = &JobRef{Name: "j0"} },
		move:  func(r *record) error { return r.toFinished(StateRejected, "refused", "400", later) },
		want: view{State: StateRejected, Job: &JobRef{Name: "j0"}, Error: "400", Sys: sysState{Carrier: carrierIntake},
			Last: Transition{StateRejected, later, "refused"}},
	}, {
		name:  "running",
		setup: func(r *record) { _ = r.toSubmitted(JobRef{Name: "j1"}, time.Time{}, "adopted", at) },
		move:  func(r *record) error { return r.toRunning("job j1 is Running", later) },
		want: view{State: StateRunning, Job: &JobRef{Name: "j1"}, Attempts: 1, Sys: sysState{Carrier: carrierTracker},
			Last: Transition{StateRunning, later, "job j1 is Running"}},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := base()
			if tt.setup != nil {
				tt.setup(r)
			}
			if err := tt.move(r); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, see(r), cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestHistoryIsBounded: a run that waits for a long time keeps the first
// entries and the latest ones.
func TestHistoryIsBounded(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 5, 8, 0, 0, 0, time.UTC)
	r := newRecord(Event{Pipeline: "p", Key: "k", Source: SourceAPI}, at)
	for i := range 3 * maxHistory {
		if err := r.toWaiting(strings.Repeat("w", i%7+1), at.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if len(r.History) != maxHistory {
		t.Fatalf("history has %d entries, want %d", len(r.History), maxHistory)
	}
	if r.History[0].State != StateReceived {
		t.Errorf("first entry = %s, want received", r.History[0].State)
	}
	if last := r.History[maxHistory-1].At; !last.Equal(at.Add(time.Duration(3*maxHistory-1) * time.Second)) {
		t.Errorf("last entry at %s, want the latest move", last)
	}
}

// TestArchitectureDocShowsTheGraph: docs/ARCHITECTURE.md shows the state
// graph exactly as the table allows it.
func TestArchitectureDocShowsTheGraph(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("../docs/ARCHITECTURE.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	const begin, end = "```mermaid\nstateDiagram-v2\n", "```"
	i := strings.Index(doc, begin)
	if i < 0 {
		t.Fatal("docs/ARCHITECTURE.md has no mermaid state diagram")
	}
	body, _, found := strings.Cut(doc[i+len("```mermaid\n"):], end)
	if !found {
		t.Fatal("docs/ARCHITECTURE.md's state diagram is not closed")
	}
	if diff := cmp.Diff(graphMermaid(), body); diff != "" {
		t.Errorf("docs/ARCHITECTURE.md's state diagram differs from the graph table (-table +doc):\n%s\nthe table's diagram:\n%s", diff, graphMermaid())
	}
}
