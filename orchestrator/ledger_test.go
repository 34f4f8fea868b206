package orchestrator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/jobs"
)

// Finished runs expire after the retention; runs that are not finished
// never do, however long they wait.
func TestRetentionExpiresOnlyFinishedRuns(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.hold = make(chan struct{}) // every POST hangs: the live run stays in submitting
	defer close(sub.hold)
	sub.inSubmit = make(chan struct{}, 1)
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, sub, func(o *Options) {
		o.Retention = time.Second
		o.SubmitTimeout = time.Minute
	})
	ctx := t.Context()
	live := h.emit("score", "live", "https://a.blob.core.windows.net/c/live")
	<-sub.inSubmit
	h.waitState(live, StateSubmitting, 5*time.Second)

	done, err := h.o.Record(ctx, Event{Pipeline: "score", Key: "filtered", Source: SourcePoll}, StateFiltered, "not a csv")
	if err != nil {
		t.Fatalf("Record: %v", err)
	}
	waitFor(t, 10*time.Second, "the finished run to expire", func() bool {
		_, err := h.o.Get(ctx, done.RunID)
		return errors.Is(err, ErrRunNotFound)
	})
	// The live run was written before the finished one and is still there.
	if r, err := h.o.Get(ctx, live); err != nil || r.State != StateSubmitting {
		t.Fatalf("live run after the finished one expired: %v, %v; want it kept", r, err)
	}
	// The index saw the expiry.
	waitFor(t, 5*time.Second, "the index to drop the expired run", func() bool {
		l, err := h.o.List(ListOptions{})
		return err == nil && len(l.Runs) == 1 && l.Runs[0].ID == live
	})
}

func TestLedgerCompareAndSet(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, newFakeSub())
	ctx := t.Context()
	l := h.o.ledger
	r := newRecord(Event{Pipeline: "p", Key: "k", Source: SourceAPI}, time.Now().UTC())
	rev, err := l.create(ctx, r)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if _, err := l.create(ctx, r); !errors.Is(err, errExists) {
		t.Errorf("second create = %v, want errExists", err)
	}
	if err := r.move(StateWaiting, "a", time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	if _, err := l.put(ctx, r, rev); err != nil {
		t.Fatalf("put: %v", err)
	}
	if err := r.move(StateSubmitting, "b", time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	if _, err := l.put(ctx, r, rev); !errors.Is(err, errConflict) {
		t.Errorf("put with a stale revision = %v, want errConflict", err)
	}

	// Many writers incrementing one counter with update: none is lost.
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if _, _, err := l.update(ctx, r.ID, func(x *record) error { x.Duplicates++; return nil }); err != nil {
				t.Errorf("update: %v", err)
			}
		})
	}
	wg.Wait()
	got, _, err := l.get(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Duplicates != 20 {
		t.Errorf("Duplicates = %d, want 20", got.Duplicates)
	}
	if _, _, err := l.get(ctx, "../etc"); !errors.Is(err, ErrRunNotFound) {
		t.Errorf("get(bad id) = %v, want ErrRunNotFound", err)
	}
}

func TestListNewestFirstWithFiltersAndCursor(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []*Pipeline{testPipeline(t, "a", nil), testPipeline(t, "b", nil)}, newFakeSub())
	ctx := t.Context()
	var want []string // newest first
	for i := range 25 {
		p, st := "a", StateFiltered
		if i%2 == 1 {
			p, st = "b", StateRejected
		}
		rc, err := h.o.Record(ctx, Event{Pipeline: p, Key: fmt.Sprint(i), Source: SourcePoll}, st, "test")
		if err != nil {
			t.Fatalf("Record: %v", err)
		}
		want = append([]string{rc.RunID}, want...)
	}
	waitFor(t, 5*time.Second, "the index to hold 25 runs", func() bool {
		c, err := h.o.Counts()
		return err == nil && c[StateFiltered] == 13 && c[StateRejected] == 12
	})

	var got []string
	cursor := ""
	for pages := 0; ; pages++ {
		l, err := h.o.List(ListOptions{Limit: 10, Cursor: cursor})
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		for _, r := range l.Runs {
			got = append(got, r.ID)
		}
		if l.NextCursor == "" {
			if pages != 2 {
				t.Errorf("pages = %d, want 3", pages+1)
			}
			break
		}
		cursor = l.NextCursor
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("paged ids, newest first (-want +got):\n%s", diff)
	}

	l, err := h.o.List(ListOptions{Pipeline: "b", State: StateRejected, Limit: 100})
	if err != nil {
		t.Fatalf("List(filtered): %v", err)
	}
	if len(l.Runs) != 12 {
		t.Errorf("pipeline b, rejected: %d runs, want 12", len(l.Runs))
	}
	for _, r := range l.Runs {
		if r.Pipeline != "b" || r.State != StateRejected || r.Reason != "test" {
			t.Errorf("filtered list holds %+v", r)
		}
	}
	if _, err := h.o.List(ListOptions{Cursor: "garbage!"}); !errors.Is(err, ErrBadCursor) {
		t.Errorf("List(bad cursor) = %v, want ErrBadCursor", err)
	}
}

func TestWatchReportsChanges(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []*Pipeline{testPipeline(t, "score", nil)}, newFakeSub())
	ctx, cancel := context.WithCancel(t.Context())
	ch := h.o.Watch(ctx, 64)
	id := h.emit("score", "k", "https://a.blob.core.windows.net/c/x")
	seen := map[State]bool{}
	timeout := time.After(10 * time.Second)
	for !seen[StateCompleted] {
		select {
		case c := <-ch:
			if c.ID == id && c.Run != nil {
				seen[c.Run.State] = true
			}
		case <-timeout:
			t.Fatalf("watch saw %v, want completed", seen)
		}
	}
	if !seen[StateSubmitted] {
		t.Errorf("watch saw %v, want submitted on the way", seen)
	}
	cancel()
	for range ch { // closed after cancel
	}
}

// Admission slots left behind by a crash (between the terminal write and the
// release) are freed by repair; live runs keep theirs.
func TestRepairFreesSlotsOfFinishedRuns(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	p := testPipeline(t, "score", nil)
	p.Endpoint.MaxRunningJobs = 5
	h := newHarness(t, []*Pipeline{p}, sub)
	ctx := t.Context()
	done, err := h.o.Record(ctx, Event{Pipeline: "score", Key: "done", Source: SourceAPI}, StateRejected, "x")
	if err != nil {
		t.Fatal(err)
	}
	live := newRecord(Event{Pipeline: "score", Key: "live", Source: SourceAPI}, time.Now().UTC())
	if err := live.move(StateSubmitted, "x", time.Now().UTC()); err != nil {
		t.Fatal(err)
	}
	live.Job = &JobRef{Name: "j", Status: jobs.StatusRunning}
	if _, err := h.o.ledger.create(ctx, live); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	for _, id := range []string{done.RunID, live.ID, RunID("score", "expired")} {
		if _, err := h.o.adm.acquire(ctx, "ep-score", id, 5, old); err != nil {
			t.Fatal(err)
		}
	}
	n, err := h.o.repair(ctx)
	if err != nil {
		t.Fatalf("repair: %v", err)
	}
	s, _, err := h.o.adm.load(ctx, "ep-score")
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 || len(s.Slots) != 1 || s.Slots[live.ID].IsZero() {
		t.Errorf("repair freed %d, left %v; want 2 freed and the live run's slot kept", n, s.Slots)
	}
}

func TestAdmissionAcrossWritersNeverExceedsTheCap(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, newFakeSub())
	ctx := t.Context()
	var mu sync.Mutex
	admitted := 0
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			res, err := h.o.adm.acquire(ctx, "ep", RunID("p", fmt.Sprint(i)), 4, time.Now())
			if err != nil {
				t.Errorf("acquire: %v", err)
				return
			}
			if res.OK {
				mu.Lock()
				admitted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if admitted != 4 {
		t.Errorf("admitted %d of 30, want 4", admitted)
	}
	// Idempotent for a holder; paused endpoints admit nobody.
	id := RunID("p", "0")
	s, _, _ := h.o.adm.load(ctx, "ep")
	for holder := range s.Slots {
		id = holder
	}
	if res, err := h.o.adm.acquire(ctx, "ep", id, 4, time.Now()); err != nil || !res.OK {
		t.Errorf("acquire by a holder = %+v, %v; want ok", res, err)
	}
	if err := h.o.adm.pause(ctx, "ep", time.Now().Add(time.Hour), "429"); err != nil {
		t.Fatal(err)
	}
	if res, err := h.o.adm.acquire(ctx, "other-ep", "x", 0, time.Now()); err != nil || !res.OK {
		t.Errorf("another endpoint: %+v, %v; want ok", res, err)
	}
	if res, _ := h.o.adm.acquire(ctx, "ep", id, 4, time.Now()); res.OK || res.PausedUntil.IsZero() {
		t.Errorf("acquire on a paused endpoint = %+v, want paused", res)
	}
}
