package statuspage

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/batchd/batchd/orchestrator"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeSource is a hand-written Source: runs in memory, newest first, with
// an opaque cursor of its own (the page never looks inside cursors).
type fakeSource struct {
	mu        sync.Mutex
	runs      map[string]*orchestrator.Run
	pipelines map[string]*orchestrator.Pipeline
	listErr   error
	getErr    error
	subs      map[chan orchestrator.RunChange]struct{}
	// prefill is put into each new subscription's channel before Watch
	// returns (to exercise a full buffer).
	prefill []orchestrator.RunChange

	gets     atomic.Int64
	lists    atomic.Int64
	watchers atomic.Int64 // open subscriptions
}

func newFakeSource(pipelines ...string) *fakeSource {
	f := &fakeSource{runs: map[string]*orchestrator.Run{}, pipelines: map[string]*orchestrator.Pipeline{},
		subs: map[chan orchestrator.RunChange]struct{}{}}
	for _, p := range pipelines {
		f.pipelines[p] = &orchestrator.Pipeline{Name: p, Endpoint: orchestrator.Endpoint{}}
	}
	return f
}

func (f *fakeSource) add(runs ...*orchestrator.Run) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range runs {
		f.runs[r.ID] = r
	}
}

func (f *fakeSource) sorted() []*orchestrator.Run {
	out := make([]*orchestrator.Run, 0, len(f.runs))
	for _, r := range f.runs {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *orchestrator.Run) int {
		if c := b.Created.Compare(a.Created); c != 0 {
			return c
		}
		return cmp.Compare(b.ID, a.ID)
	})
	return out
}

func (f *fakeSource) List(opts orchestrator.ListOptions) (*orchestrator.RunList, error) {
	f.lists.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	limit := opts.Limit
	if limit <= 0 {
		limit = 50
	}
	start := 0
	if opts.Cursor != "" {
		n, err := strconv.Atoi(opts.Cursor)
		if err != nil {
			return nil, orchestrator.ErrBadCursor
		}
		start = n
	}
	out := &orchestrator.RunList{Runs: []orchestrator.RunSummary{}}
	all := f.sorted()
	for i := start; i < len(all); i++ {
		r := all[i]
		if opts.Pipeline != "" && r.Pipeline != opts.Pipeline {
			continue
		}
		if opts.State != "" && r.State != opts.State {
			continue
		}
		if len(out.Runs) == limit {
			out.NextCursor = strconv.Itoa(i)
			break
		}
		out.Runs = append(out.Runs, orchestrator.Summarize(r))
	}
	return out, nil
}

func (f *fakeSource) Get(_ context.Context, id string) (*orchestrator.Run, error) {
	f.gets.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.getErr != nil {
		return nil, f.getErr
	}
	r, ok := f.runs[id]
	if !ok {
		return nil, orchestrator.ErrRunNotFound
	}
	return r, nil
}

func (f *fakeSource) Watch(ctx context.Context, buffer int) <-chan orchestrator.RunChange {
	ch := make(chan orchestrator.RunChange, buffer)
	f.mu.Lock()
	for _, c := range f.prefill {
		select {
		case ch <- c:
		default:
		}
	}
	f.subs[ch] = struct{}{}
	f.mu.Unlock()
	f.watchers.Add(1)
	context.AfterFunc(ctx, func() {
		f.mu.Lock()
		delete(f.subs, ch)
		close(ch)
		f.mu.Unlock()
		f.watchers.Add(-1)
	})
	return ch
}

func (f *fakeSource) Pipelines() map[string]*orchestrator.Pipeline { return f.pipelines }

// publish records r and reports the change to every subscriber (dropping
// it for a full one, as the orchestrator's index does).
func (f *fakeSource) publish(id string, r *orchestrator.Run) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r != nil {
		f.runs[id] = r
	} else {
		delete(f.runs, id)
	}
	for ch := range f.subs {
		select {
		case ch <- orchestrator.RunChange{ID: id, Run: r}:
		default:
		}
	}
}

var errBoom = errors.New("boom")

// mkRun builds a run created `ago` before now, with a history that ends in
// state.
func mkRun(id, pipeline string, state orchestrator.State, ago time.Duration) *orchestrator.Run {
	created := time.Now().Add(-ago).UTC()
	r := &orchestrator.Run{
		ID: id, Pipeline: pipeline, Key: "key-" + id, Source: orchestrator.SourceEventGrid, State: state,
		Event: orchestrator.Event{Pipeline: pipeline, Key: "key-" + id, Source: orchestrator.SourceEventGrid, Time: created,
			Blob: &orchestrator.BlobEvent{URL: "https://acct.blob.core.windows.net/in/" + id + ".csv", Account: "acct",
				Container: "in", Name: id + ".csv", Folder: ""}},
		History: []orchestrator.Transition{{State: orchestrator.StateReceived, At: created, Reason: "claimed"}},
		Created: created, Updated: created,
	}
	if state != orchestrator.StateReceived {
		at := created.Add(90 * time.Second)
		r.History = append(r.History, orchestrator.Transition{State: state, At: at, Reason: "now " + string(state)})
		r.Updated = at
	}
	return r
}
