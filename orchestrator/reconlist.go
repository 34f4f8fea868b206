package orchestrator

import (
	"context"
	"sync"
	"time"

	"github.com/batchd/batchd/jobs"
)

// reconLists shares ARM job listings among the runs that reconcile in one
// workspace. After a crash or an outage many runs are unknown at once;
// each listing the workspace for itself would spend one list (several
// pages) per run every ReconcileGrace/5 out of the poll budget that
// tracking needs. A run instead takes a listing that started after it
// needed one (after its POST's outcome became unknown, or after its grace
// ended) and reaches back to its own submission; if none is cached it
// joins the one in flight when that one qualifies, else it lists, and
// others join it. Keys are WorkspaceIDs of the runs' own records (a config
// change may have moved an endpoint name to another workspace).
type reconLists struct {
	mu sync.Mutex
	ws map[string]*reconWS
}

type reconWS struct {
	inflight *listCall
	last     *listCall // the last listing that succeeded
}

// listCall is one listing: jobs created since since, as they were at some
// moment after started.
type listCall struct {
	started time.Time
	since   time.Time
	done    chan struct{}
	jobs    []jobs.Job
	err     error
}

// reconListMargin widens a listing's reach back in time, so that runs
// submitted around the same moment can share it. A page or so more of
// list per listing, against one listing per run.
const reconListMargin = time.Minute

func (c *listCall) covers(after, since time.Time) bool {
	return c.err == nil && !c.started.Before(after) && !c.since.After(since)
}

// cached returns the last listing of workspace key that started at or after
// after and reaches back to since, without listing.
func (l *reconLists) cached(key string, after, since time.Time) ([]jobs.Job, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if e := l.ws[key]; e != nil && e.last != nil && e.last.covers(after, since) {
		return e.last.jobs, true
	}
	return nil, false
}

// busy reports whether a listing of key is in flight (a caller joining it
// spends no request).
func (l *reconLists) busy(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.ws[key]
	return e != nil && e.inflight != nil
}

// list returns a listing of workspace key that started at or after after and
// reaches back to since: the cached one, one in flight, or a new one made
// by fetch (at most one in flight per key). now is the orchestrator's
// clock. shared is false when this call fetched.
func (l *reconLists) list(ctx context.Context, key string, after, since time.Time, now func() time.Time,
	fetch func(ctx context.Context, since time.Time) ([]jobs.Job, error),
) (_ []jobs.Job, shared bool, _ error) {
	for {
		l.mu.Lock()
		if l.ws == nil {
			l.ws = map[string]*reconWS{}
		}
		e := l.ws[key]
		if e == nil {
			e = &reconWS{}
			l.ws[key] = e
		}
		if e.last != nil && e.last.covers(after, since) {
			l.mu.Unlock()
			return e.last.jobs, true, nil
		}
		if c := e.inflight; c != nil {
			l.mu.Unlock()
			select {
			case <-ctx.Done():
				return nil, true, ctx.Err()
			case <-c.done:
			}
			if c.covers(after, since) {
				return c.jobs, true, nil
			}
			continue // too early, too short, or failed: the next one
		}
		c := &listCall{started: now(), since: since.Add(-reconListMargin), done: make(chan struct{})}
		e.inflight = c
		l.mu.Unlock()

		c.jobs, c.err = fetch(ctx, c.since)

		l.mu.Lock()
		e.inflight = nil
		if c.err == nil {
			e.last = c
		}
		close(c.done)
		l.mu.Unlock()
		return c.jobs, false, c.err
	}
}
