package orchestrator

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

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

// index is the run list's view of the ledger, kept current by a KV watch:
// summaries ordered newest first, counts by state, and the feed for Watch.
// Every replica keeps its own.
//
// It lives in a bbolt file (Options.IndexPath), a cache of the ledger that
// can always be rebuilt from it: memory holds only the counts, so its cost
// does not grow with history, and a restart reads only the ledger changes
// since the revision the file last applied (ResumeFromRevision), not every
// run of the retention period. A watch failure resumes the same way. The
// file is rebuilt from the whole ledger when it is missing, unreadable, of
// another format, or from another ledger (the bucket was recreated).
//
// Finished runs leave the ledger by TTL, which leaves a delete marker the
// watch sees; a marker that expired while batchd was down is never seen,
// so the index also drops entries whose TTL has passed (with a minute's
// slack, so that the marker normally comes first).
//
// Writes are batched (whatever the watch has ready, up to indexBatch, in
// one transaction, without fsync: a crash of the process loses nothing the
// kernel has; a crash of the machine can corrupt the file, which is then
// rebuilt). List sees a change once its batch is written, and the Watch
// feed publishes it then.
type index struct {
	kv   jetstream.KeyValue
	log  *slog.Logger
	path string
	// ttl is a pipeline's retention: how long a finished run stays.
	ttl func(pipeline string) time.Duration
	now func() time.Time

	// tempDir holds the file when no path was given; removed at close.
	tempDir string
	// opened is when open began (for the "ready" log line).
	opened time.Time

	mu     sync.RWMutex
	db     *bolt.DB
	count  map[State]int
	loaded bool
	// rev is the highest ledger revision applied (watch goroutine).
	rev uint64

	// replayed counts ledger entries the watch delivered since the process
	// started: what start-up cost (tests).
	replayed atomic.Int64
	// rebuilds counts full rebuilds.
	rebuilds atomic.Int64
	// breakWatch: a test's send on it ends the current watch as a failure
	// would (tests of resuming after one); nothing else sends.
	breakWatch chan struct{}
	// onChange, when set, is told of every ledger write the watch applies
	// (run id and revision), on the watch goroutine: it must be quick.
	onChange func(id string, rev uint64)

	subMu sync.Mutex
	subs  map[chan RunChange]struct{}
	// dropped counts changes not delivered to a slow subscriber.
	dropped int
}

const (
	// indexFormat is the file's layout version; another one is rebuilt.
	indexFormat = "batchd-run-index-1"
	// indexBatch caps the changes written in one transaction.
	indexBatch = 4096
	// indexPruneEvery is how often entries past their TTL are dropped.
	indexPruneEvery = time.Minute
	// indexPruneSlack is how long past its TTL an entry is kept for the
	// ledger's delete marker to arrive.
	indexPruneSlack = time.Minute
)

// Buckets of the index file. Keys of runs are order keys: 8 bytes of
// inverted creation time (big-endian, so newest sorts first) and the run
// id; ties on the time go to the greater id first, as List's order has it
// (the id's bytes are inverted too).
var (
	bktMeta      = []byte("meta")
	bktRuns      = []byte("runs")      // order key → summary (JSON)
	bktIDs       = []byte("ids")       // id → order key time, expiry, state, pipeline
	bktPipe      = []byte("pipeline")  // pipeline 0 order key → ""
	bktState     = []byte("state")     // state 0 order key → ""
	bktPipeState = []byte("pipestate") // pipeline 0 state 0 order key → ""
	bktExpiry    = []byte("expiry")    // expiry (8 bytes) id → ""
	indexBuckets = [][]byte{bktMeta, bktRuns, bktIDs, bktPipe, bktState, bktPipeState, bktExpiry}

	metaFormat = []byte("format")
	metaStream = []byte("stream") // the ledger stream's creation time
	metaRev    = []byte("rev")
	metaCounts = []byte("counts")
)

func newIndex(kv jetstream.KeyValue, log *slog.Logger, path string, ttl func(string) time.Duration) *index {
	return &index{kv: kv, log: log, path: path, ttl: ttl, now: time.Now, count: map[State]int{}, subs: map[chan RunChange]struct{}{},
		breakWatch: make(chan struct{})}
}

// newer reports whether a sorts before b (newest first).
func newer(a, b *RunSummary) bool {
	if !a.Created.Equal(b.Created) {
		return a.Created.After(b.Created)
	}
	return a.ID > b.ID
}

// orderKey is the runs bucket's key for a run: sorting keys ascending
// lists runs newest first (Created desc, ID desc).
func orderKey(created time.Time, id string) []byte {
	k := make([]byte, 8+len(id))
	binary.BigEndian.PutUint64(k, math.MaxUint64-uint64(created.UnixNano())) //nolint:gosec // times before 1970 do not occur
	for i := range len(id) {
		k[8+i] = ^id[i]
	}
	return k
}

// idEntry is the ids bucket's value: enough to find and unindex the run's
// entries without decoding its summary.
type idEntry struct {
	order    []byte
	expiry   int64 // unix ns; 0: none
	state    State
	pipeline string
}

func (e idEntry) encode() []byte {
	b := make([]byte, 0, 8+8+len(e.state)+1+len(e.pipeline))
	b = append(b, e.order[:8]...)
	b = binary.BigEndian.AppendUint64(b, uint64(e.expiry)) //nolint:gosec // non-negative
	b = append(b, e.state...)
	b = append(b, 0)
	return append(b, e.pipeline...)
}

func decodeIDEntry(id string, v []byte) (idEntry, bool) {
	if len(v) < 17 {
		return idEntry{}, false
	}
	state, pipeline, ok := bytes.Cut(v[16:], []byte{0})
	if !ok {
		return idEntry{}, false
	}
	order := make([]byte, 8, 8+len(id))
	copy(order, v[:8])
	for i := range len(id) {
		order = append(order, ^id[i])
	}
	return idEntry{order: order, expiry: int64(binary.BigEndian.Uint64(v[8:16])), state: State(state), pipeline: string(pipeline)}, true //nolint:gosec // written non-negative
}

func expiryKey(expiry int64, id string) []byte {
	k := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(id)), uint64(expiry)) //nolint:gosec // non-negative
	return append(k, id...)
}

func joinKey(parts ...[]byte) []byte { return bytes.Join(parts, []byte{0}) }

// run keeps the index current until ctx ends. After a watch failure it
// resumes from the last revision applied: no rebuild.
func (x *index) run(ctx context.Context) error {
	if err := x.open(ctx); err != nil {
		return err
	}
	defer x.close()
	for {
		err := x.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		x.log.Warn("run index watch ended; resuming", "err", err, "revision", x.rev)
		if err := backoff.Sleep(ctx, time.Second); err != nil {
			return nil
		}
	}
}

// open opens the index file, or makes it anew (see index). It retries the
// stream lookup while NATS is not answering.
func (x *index) open(ctx context.Context) error {
	x.opened = time.Now()
	var stream string
	for attempt := 0; ; attempt++ {
		st, err := x.kv.Status(ctx)
		if err == nil {
			if js, ok := st.(*jetstream.KeyValueBucketStatus); ok && js.StreamInfo() != nil {
				stream = js.StreamInfo().Created.UTC().Format(time.RFC3339Nano)
			}
			break
		}
		x.log.Warn("run index: reading the ledger bucket", "err", err)
		if err := backoff.Sleep(ctx, backoff.Delay(attempt, 100*time.Millisecond, 5*time.Second)); err != nil {
			return nil
		}
	}
	if x.path == "" {
		dir, err := os.MkdirTemp("", "batchd-index-")
		if err != nil {
			return fmt.Errorf("run index: %w", err)
		}
		x.tempDir, x.path = dir, filepath.Join(dir, "runs.db")
	}
	if err := os.MkdirAll(filepath.Dir(x.path), 0o700); err != nil {
		return fmt.Errorf("run index: %w", err)
	}
	db, err := x.openFile()
	if err != nil {
		return err
	}
	var counts map[State]int
	var rev uint64
	valid := false
	_ = db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bktMeta)
		if m == nil || string(m.Get(metaFormat)) != indexFormat || string(m.Get(metaStream)) != stream {
			return nil
		}
		for _, b := range indexBuckets {
			if tx.Bucket(b) == nil {
				return nil
			}
		}
		if v := m.Get(metaRev); len(v) == 8 {
			rev = binary.BigEndian.Uint64(v)
		}
		if json.Unmarshal(m.Get(metaCounts), &counts) != nil {
			return nil
		}
		valid = true
		return nil
	})
	if !valid {
		if err := x.reset(db, stream); err != nil {
			_ = db.Close()
			return err
		}
		counts, rev = map[State]int{}, 0
	}
	if counts == nil {
		counts = map[State]int{}
	}
	x.mu.Lock()
	x.db, x.count, x.rev = db, counts, rev
	x.mu.Unlock()
	x.log.Debug("run index opened", "path", x.path, "revision", rev, "rebuild", !valid)
	return nil
}

// openFile opens the file, removing and recreating one bbolt cannot open.
func (x *index) openFile() (*bolt.DB, error) {
	// The freelist is written with each commit (NoFreelistSync would make
	// every open scan the whole file to rebuild it: start-up and resident
	// memory in proportion to history).
	opts := &bolt.Options{Timeout: 5 * time.Second, NoSync: true, FreelistType: bolt.FreelistMapType}
	db, err := bolt.Open(x.path, 0o600, opts)
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("run index %s is in use by another batchd (the state directory is shared?): %w", x.path, err)
	}
	if err != nil {
		x.log.Warn("run index: file unreadable; rebuilding it from the ledger", "path", x.path, "err", err)
		if rerr := os.Remove(x.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return nil, fmt.Errorf("run index: %w", rerr)
		}
		if db, err = bolt.Open(x.path, 0o600, opts); err != nil {
			return nil, fmt.Errorf("run index: %w", err)
		}
	}
	return db, nil
}

// reset empties the file for a rebuild from the whole ledger.
func (x *index) reset(db *bolt.DB, stream string) error {
	x.rebuilds.Add(1)
	return db.Update(func(tx *bolt.Tx) error {
		for _, b := range indexBuckets {
			if tx.Bucket(b) != nil {
				if err := tx.DeleteBucket(b); err != nil {
					return err
				}
			}
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		m := tx.Bucket(bktMeta)
		if err := m.Put(metaFormat, []byte(indexFormat)); err != nil {
			return err
		}
		return m.Put(metaStream, []byte(stream))
	})
}

func (x *index) close() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.db != nil {
		if err := x.db.Close(); err != nil {
			x.log.Warn("run index close", "err", err)
		}
		x.db = nil
	}
	x.loaded = false
	if x.tempDir != "" {
		_ = os.RemoveAll(x.tempDir)
		x.tempDir, x.path = "", ""
	}
}

// change is one ledger entry to apply.
type change struct {
	id      string
	rev     uint64
	run     *Run // nil: deleted
	written time.Time
}

func (x *index) watch(ctx context.Context) error {
	var opts []jetstream.WatchOpt
	if x.rev > 0 {
		opts = append(opts, jetstream.IncludeHistory(), jetstream.ResumeFromRevision(x.rev+1))
	}
	w, err := x.kv.WatchAll(ctx, opts...)
	if err != nil {
		return fmt.Errorf("watch %s: %w", BucketRuns, err)
	}
	defer func() { _ = w.Stop() }()
	prune := time.NewTicker(indexPruneEvery)
	defer prune.Stop()
	batch := make([]change, 0, indexBatch)
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case <-prune.C:
			if err := x.prune(); err != nil {
				return err
			}
			continue
		case <-x.breakWatch:
			return errors.New("watch broken by a test")
		case e, ok = <-w.Updates():
		}
		// Take whatever else is ready, up to a batch.
		caughtUp := false
		for {
			if !ok {
				if err := x.apply(batch); err != nil {
					return err
				}
				return errors.New("watch closed")
			}
			if e == nil {
				caughtUp = true
				break
			}
			x.replayed.Add(1)
			batch = append(batch, x.decode(e))
			if len(batch) == indexBatch {
				break
			}
			select {
			case e, ok = <-w.Updates():
				continue
			default:
			}
			break
		}
		if err := x.apply(batch); err != nil {
			return err
		}
		batch = batch[:0]
		if caughtUp {
			x.mu.Lock()
			first := !x.loaded
			x.loaded = true
			x.mu.Unlock()
			if first {
				if err := x.prune(); err != nil {
					return err
				}
				x.log.Info("run index ready", "path", x.path, "replayed", x.replayed.Load(), "rebuilt", x.rebuilds.Load() > 0,
					"took", time.Since(x.opened).Round(time.Millisecond))
			}
		}
	}
}

func (x *index) decode(e jetstream.KeyValueEntry) change {
	c := change{id: e.Key(), rev: e.Revision(), written: e.Created()}
	if e.Operation() == jetstream.KeyValuePut {
		var r Run
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			x.log.Warn("run index: undecodable ledger entry", "key", e.Key(), "err", err)
			return c // as if deleted: it cannot be listed
		}
		c.run = &r
	}
	return c
}

// apply writes a batch in one transaction and then publishes it.
func (x *index) apply(batch []change) error {
	if len(batch) == 0 {
		return nil
	}
	x.mu.RLock()
	db := x.db
	counts := make(map[State]int, len(x.count))
	for k, v := range x.count {
		counts[k] = v
	}
	loaded := x.loaded
	x.mu.RUnlock()
	rev := x.rev
	err := db.Update(func(tx *bolt.Tx) error {
		for _, c := range batch {
			rev = max(rev, c.rev)
			if err := x.removeTx(tx, c.id, counts); err != nil {
				return err
			}
			if c.run == nil {
				continue
			}
			if err := x.putTx(tx, c.run, c.written, counts); err != nil {
				return err
			}
		}
		return x.saveMeta(tx, rev, counts)
	})
	if err != nil {
		return fmt.Errorf("run index write: %w", err)
	}
	x.mu.Lock()
	x.count, x.rev = counts, rev
	x.mu.Unlock()
	if x.onChange != nil {
		for _, c := range batch {
			x.onChange(c.id, c.rev)
		}
	}
	if loaded {
		for _, c := range batch {
			x.publish(RunChange{ID: c.id, Run: c.run})
		}
	}
	return nil
}

func (x *index) saveMeta(tx *bolt.Tx, rev uint64, counts map[State]int) error {
	for k, v := range counts {
		if v == 0 {
			delete(counts, k)
		}
	}
	cb, err := json.Marshal(counts)
	if err != nil {
		return err
	}
	m := tx.Bucket(bktMeta)
	if err := m.Put(metaCounts, cb); err != nil {
		return err
	}
	return m.Put(metaRev, binary.BigEndian.AppendUint64(nil, rev))
}

// putTx indexes r (not indexed: removeTx first).
func (x *index) putTx(tx *bolt.Tx, r *Run, written time.Time, counts map[State]int) error {
	s := Summarize(r)
	order := orderKey(s.Created, s.ID)
	var expiry int64
	if s.State.Terminal() && x.ttl != nil {
		expiry = written.Add(x.ttl(s.Pipeline)).UnixNano()
	}
	v, err := json.Marshal(&s)
	if err != nil {
		return err
	}
	st, pipe := []byte(s.State), []byte(s.Pipeline)
	puts := []struct {
		bkt  []byte
		k, v []byte
	}{
		{bktRuns, order, v},
		{bktIDs, []byte(s.ID), idEntry{order: order, expiry: expiry, state: s.State, pipeline: s.Pipeline}.encode()},
		{bktPipe, joinKey(pipe, order), nil},
		{bktState, joinKey(st, order), nil},
		{bktPipeState, joinKey(pipe, st, order), nil},
	}
	if expiry != 0 {
		puts = append(puts, struct {
			bkt  []byte
			k, v []byte
		}{bktExpiry, expiryKey(expiry, s.ID), nil})
	}
	for _, p := range puts {
		if err := tx.Bucket(p.bkt).Put(p.k, p.v); err != nil {
			return err
		}
	}
	counts[s.State]++
	return nil
}

// removeTx unindexes id, if it is indexed.
func (x *index) removeTx(tx *bolt.Tx, id string, counts map[State]int) error {
	v := tx.Bucket(bktIDs).Get([]byte(id))
	if v == nil {
		return nil
	}
	e, ok := decodeIDEntry(id, v)
	if !ok {
		return tx.Bucket(bktIDs).Delete([]byte(id))
	}
	st, pipe := []byte(e.state), []byte(e.pipeline)
	dels := []struct{ bkt, k []byte }{
		{bktRuns, e.order}, {bktIDs, []byte(id)}, {bktPipe, joinKey(pipe, e.order)},
		{bktState, joinKey(st, e.order)}, {bktPipeState, joinKey(pipe, st, e.order)},
	}
	if e.expiry != 0 {
		dels = append(dels, struct{ bkt, k []byte }{bktExpiry, expiryKey(e.expiry, id)})
	}
	for _, d := range dels {
		if err := tx.Bucket(d.bkt).Delete(d.k); err != nil {
			return err
		}
	}
	counts[e.state]--
	return nil
}

// prune drops entries whose TTL passed more than indexPruneSlack ago
// (their delete markers were missed), indexBatch per transaction.
func (x *index) prune() error {
	cutoff := x.now().Add(-indexPruneSlack).UnixNano()
	for {
		var gone []string
		x.mu.RLock()
		db := x.db
		counts := make(map[State]int, len(x.count))
		for k, v := range x.count {
			counts[k] = v
		}
		x.mu.RUnlock()
		err := db.Update(func(tx *bolt.Tx) error {
			c := tx.Bucket(bktExpiry).Cursor()
			for k, _ := c.First(); k != nil && len(gone) < indexBatch; k, _ = c.Next() {
				if len(k) < 8 || int64(binary.BigEndian.Uint64(k[:8])) > cutoff { //nolint:gosec // written non-negative
					break
				}
				gone = append(gone, string(k[8:]))
			}
			for _, id := range gone {
				if err := x.removeTx(tx, id, counts); err != nil {
					return err
				}
			}
			if len(gone) == 0 {
				return nil
			}
			return x.saveMeta(tx, x.rev, counts)
		})
		if err != nil {
			return fmt.Errorf("run index prune: %w", err)
		}
		if len(gone) == 0 {
			return nil
		}
		x.mu.Lock()
		x.count = counts
		x.mu.Unlock()
		x.log.Debug("run index: dropped runs past their retention", "runs", len(gone))
		for _, id := range gone {
			x.publish(RunChange{ID: id})
		}
		if len(gone) < indexBatch {
			return nil
		}
	}
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
		if v != 0 {
			c[k] = v
		}
	}
	return c, true
}

func (x *index) list(opts ListOptions) (*RunList, error) {
	limit := opts.Limit
	if limit <= 0 {
		limit = 50
	}
	limit = min(limit, 1000)
	var seek []byte
	if opts.Cursor != "" {
		c, err := decodeCursor(opts.Cursor)
		if err != nil {
			return nil, err
		}
		seek = orderKey(c.Created, c.ID)
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	if !x.loaded || x.db == nil {
		return nil, ErrIndexLoading
	}
	// The bucket that holds exactly the filter's runs, and the prefix of
	// its keys (the order key follows it).
	bkt, prefix := bktRuns, []byte(nil)
	pipe, st := []byte(opts.Pipeline), []byte(opts.State)
	switch {
	case opts.Pipeline != "" && opts.State != "":
		bkt, prefix = bktPipeState, joinKey(pipe, st, nil)
	case opts.Pipeline != "":
		bkt, prefix = bktPipe, joinKey(pipe, nil)
	case opts.State != "":
		bkt, prefix = bktState, joinKey(st, nil)
	}
	out := &RunList{Runs: []RunSummary{}}
	err := x.db.View(func(tx *bolt.Tx) error {
		runs := tx.Bucket(bktRuns)
		c := tx.Bucket(bkt).Cursor()
		var k []byte
		if seek != nil {
			from := append(slicesClone(prefix), seek...)
			k, _ = c.Seek(from)
			if bytes.Equal(k, from) {
				k, _ = c.Next() // the cursor's run was on the previous page
			}
		} else {
			k, _ = c.Seek(prefix)
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(out.Runs) == limit {
				last := out.Runs[len(out.Runs)-1]
				out.NextCursor = encodeCursor(&last)
				return nil
			}
			v := runs.Get(k[len(prefix):])
			if v == nil {
				continue
			}
			var s RunSummary
			if err := json.Unmarshal(v, &s); err != nil {
				return err
			}
			out.Runs = append(out.Runs, s)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("run index read: %w", err)
	}
	return out, nil
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }

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
