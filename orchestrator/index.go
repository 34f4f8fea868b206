package orchestrator

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs/backoff"
)

// RunSummary is a run as the list shows it: the fields of Run that fit in a
// table, without the event, the request, the decision or the history. Field
// names match Run's.
type RunSummary struct {
	ID       string    `json:"id"`
	Pipeline string    `json:"pipeline"`
	Key      string    `json:"key"`
	Source   string    `json:"source"`
	State    State     `json:"state"`
	Endpoint string    `json:"endpoint,omitempty"`
	Job      *JobRef   `json:"job,omitempty"`
	Attempts int       `json:"attempts"`
	Reason   string    `json:"reason,omitempty"` // the latest history entry's reason
	Error    string    `json:"error,omitempty"`
	Created  time.Time `json:"created"`
	Updated  time.Time `json:"updated"`
}

// Summarize returns r's summary.
func Summarize(r *Run) RunSummary {
	s := RunSummary{
		ID: r.ID, Pipeline: r.Pipeline, Key: r.Key, Source: r.Source, State: r.State,
		Endpoint: r.Endpoint, Attempts: r.Attempts, Error: r.Error, Created: r.Created, Updated: r.Updated,
	}
	if r.Job != nil {
		s.Job = &JobRef{Name: r.Job.Name, Status: r.Job.Status, StudioURL: r.Job.StudioURL}
	}
	if n := len(r.History); n > 0 {
		s.Reason = r.History[n-1].Reason
	}
	return s
}

// ListOptions filter and page List. Zero values mean no filter; Limit
// defaults to 50 and is at most 1000.
type ListOptions struct {
	Pipeline string
	State    State
	Limit    int
	// Cursor is the NextCursor of the previous page.
	Cursor string
}

// RunList is one page of runs, newest first.
type RunList struct {
	Runs []RunSummary `json:"runs"`
	// NextCursor fetches the next page; empty on the last one.
	NextCursor string `json:"next_cursor"`
}

// RunChange is one change to the ledger, as Watch reports it.
type RunChange struct {
	ID string
	// Run is the run as written; nil when it left the ledger (retention).
	// Every subscriber gets the same value: read it, do not modify it.
	Run *Run
}

// ErrIndexLoading is returned by List before the index has read the ledger.
var ErrIndexLoading = errors.New("the run index is still loading")

// ErrBadCursor is returned for a cursor List did not make.
var ErrBadCursor = errors.New("bad cursor")

// index is an in-memory view of the ledger, kept current by a KV watch:
// small summaries ordered newest first, counts by state, and the feed for
// Watch. Every replica keeps its own.
type index struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu     sync.RWMutex
	byID   map[string]*RunSummary
	order  []*RunSummary // newest first (Created desc, ID desc)
	count  map[State]int
	loaded bool

	subMu sync.Mutex
	subs  map[chan RunChange]struct{}
	// dropped counts changes not delivered to a slow subscriber.
	dropped int
}

func newIndex(kv jetstream.KeyValue, log *slog.Logger) *index {
	return &index{kv: kv, log: log, byID: map[string]*RunSummary{}, count: map[State]int{}, subs: map[chan RunChange]struct{}{}}
}

// newer reports whether a sorts before b (newest first).
func newer(a, b *RunSummary) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.After(b.Created)
	}
	return a.ID > b.ID
}

func (x *index) pos(s *RunSummary) int {
	i, _ := slices.BinarySearchFunc(x.order, s, func(e, t *RunSummary) int {
		switch {
		case e.ID == t.ID && e.Created.Equal(t.Created):
			return 0
		case newer(e, t):
			return -1
		default:
			return 1
		}
	})
	return i
}

// put adds or replaces a summary. Callers hold mu.
func (x *index) put(s *RunSummary) {
	if old, ok := x.byID[s.ID]; ok {
		x.count[old.State]--
		if old.Created.Equal(s.Created) {
			*old = *s
			x.count[s.State]++
			return
		}
		x.removeLocked(old)
	}
	i := x.pos(s)
	x.order = slices.Insert(x.order, i, s)
	x.byID[s.ID] = s
	x.count[s.State]++
}

func (x *index) removeLocked(s *RunSummary) {
	i := x.pos(s)
	if i < len(x.order) && x.order[i].ID == s.ID {
		x.order = slices.Delete(x.order, i, i+1)
	}
	delete(x.byID, s.ID)
}

func (x *index) remove(id string) {
	if old, ok := x.byID[id]; ok {
		x.count[old.State]--
		x.removeLocked(old)
	}
}

// run keeps the index current until ctx ends. After a watch failure it
// starts over and swaps the rebuilt index in once the rebuild is complete.
func (x *index) run(ctx context.Context) error {
	for {
		err := x.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		x.log.Warn("run index watch ended; restarting", "err", err)
		if err := backoff.Sleep(ctx, time.Second); err != nil {
			return nil
		}
	}
}

func (x *index) watch(ctx context.Context) error {
	w, err := x.kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", BucketRuns, err)
	}
	defer func() { _ = w.Stop() }()
	// Until the initial values are in, build a fresh index aside.
	fresh := newIndex(nil, nil)
	building := true
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case e, ok = <-w.Updates():
		}
		if !ok {
			return errors.New("watch closed")
		}
		if e == nil {
			if building {
				fresh.sortAll()
				x.mu.Lock()
				x.byID, x.order, x.count, x.loaded = fresh.byID, fresh.order, fresh.count, true
				x.mu.Unlock()
				building = false
			}
			continue
		}
		var run *Run
		if e.Operation() == jetstream.KeyValuePut {
			var r Run
			if err := json.Unmarshal(e.Value(), &r); err != nil {
				x.log.Warn("run index: undecodable ledger entry", "key", e.Key(), "err", err)
				continue
			}
			run = &r
		}
		if building {
			// The initial values: one per key. Kept unordered and sorted
			// once at the end (inserting each into the sorted order cost
			// O(n²) at start-up).
			if run != nil {
				s := Summarize(run)
				fresh.add(&s)
			} else {
				fresh.drop(e.Key())
			}
			continue
		}
		x.mu.Lock()
		if run != nil {
			s := Summarize(run)
			x.put(&s)
		} else {
			x.remove(e.Key())
		}
		x.mu.Unlock()
		x.publish(RunChange{ID: e.Key(), Run: run})
	}
}

// add records s while the index is built (order is not kept; sortAll
// sorts it once).
func (x *index) add(s *RunSummary) {
	if old, ok := x.byID[s.ID]; ok {
		x.count[old.State]--
	}
	x.byID[s.ID] = s
	x.count[s.State]++
}

// drop forgets id while the index is built.
func (x *index) drop(id string) {
	if old, ok := x.byID[id]; ok {
		x.count[old.State]--
		delete(x.byID, id)
	}
}

// sortAll builds the order from byID.
func (x *index) sortAll() {
	x.order = make([]*RunSummary, 0, len(x.byID))
	for _, s := range x.byID {
		x.order = append(x.order, s)
	}
	slices.SortFunc(x.order, func(a, b *RunSummary) int {
		switch {
		case newer(a, b):
			return -1
		case newer(b, a):
			return 1
		}
		return 0
	})
}

func (x *index) publish(c RunChange) {
	x.subMu.Lock()
	defer x.subMu.Unlock()
	for ch := range x.subs {
		select {
		case ch <- c:
		default:
			x.dropped++
		}
	}
}

// subscribe returns a channel of changes that is closed when ctx ends.
func (x *index) subscribe(ctx context.Context, buffer int) <-chan RunChange {
	if buffer <= 0 {
		buffer = 256
	}
	ch := make(chan RunChange, buffer)
	x.subMu.Lock()
	x.subs[ch] = struct{}{}
	x.subMu.Unlock()
	context.AfterFunc(ctx, func() {
		x.subMu.Lock()
		delete(x.subs, ch)
		close(ch)
		x.subMu.Unlock()
	})
	return ch
}

func (x *index) isLoaded() bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.loaded
}

// tracked is the number of runs whose jobs are being polled (submitted or
// running), as far as the index has read the ledger; 0 without an index.
func (x *index) tracked() int {
	if x == nil {
		return 0
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.count[StateSubmitted] + x.count[StateRunning]
}

func (x *index) counts() (map[State]int, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.loaded {
		return nil, false
	}
	c := make(map[State]int, len(x.count))
	for k, v := range x.count {
		c[k] = v
	}
	return c, true
}

func (x *index) list(opts ListOptions) (*RunList, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 1000)
	var after *RunSummary
	if opts.Cursor != "" {
		c, err := decodeCursor(opts.Cursor)
		if err != nil {
			return nil, err
		}
		after = c
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.loaded {
		return nil, ErrIndexLoading
	}
	i := 0
	if after != nil {
		i, _ = slices.BinarySearchFunc(x.order, after, func(e, t *RunSummary) int {
			if newer(e, t) || (e.ID == t.ID && e.Created.Equal(t.Created)) {
				return -1
			}
			return 1
		})
	}
	out := &RunList{Runs: []RunSummary{}}
	for ; i < len(x.order); i++ {
		s := x.order[i]
		if opts.Pipeline != "" && s.Pipeline != opts.Pipeline {
			continue
		}
		if opts.State != "" && s.State != opts.State {
			continue
		}
		if len(out.Runs) == limit {
			last := out.Runs[len(out.Runs)-1]
			out.NextCursor = encodeCursor(&last)
			break
		}
		out.Runs = append(out.Runs, *s)
	}
	return out, nil
}

func encodeCursor(s *RunSummary) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(s.Created.UnixNano(), 10) + "." + s.ID))
}

func decodeCursor(c string) (*RunSummary, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return nil, ErrBadCursor
	}
	ns, id, ok := strings.Cut(string(b), ".")
	if !ok || !validRunID(id) {
		return nil, ErrBadCursor
	}
	n, err := strconv.ParseInt(ns, 10, 64)
	if err != nil {
		return nil, ErrBadCursor
	}
	return &RunSummary{ID: id, Created: time.Unix(0, n)}, nil
}
