package blob

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/internal/trigmetrics"
)

// Per-folder micro-batching.
//
// A pipeline with `batch: {by: folder}` does not emit one run per blob. The
// webhook and the poller add each accepted blob to its folder's open batch,
// a KV value (batch.<pipeline>.folder.<hash(folder URL)>), and only then
// acknowledge their source: an added file is durable. The Batcher (one
// per pipeline; replicas share the work through a lease) emits a folder's
// batch as one UriFolder run when the folder has been quiet for
// batch.quiet, holds batch.max_files files, or received batch.marker,
// whichever comes first, and then removes the emitted files from the
// folder's state with a CAS update, so files that arrived meanwhile start
// the next batch of that folder. A restart loses nothing: the open batches
// are in KV and the next Batcher to hold the lease picks them up.
//
// The run's key is the folder URL plus a hash of its files' (name, eTag)
// pairs, and a later batch of the same folder (other files) is a new run.
// A flush first records the batch it is about to emit in the folder's
// state (pending, with a CAS update), then emits it, then removes its
// files. Whoever finds a pending batch (this replica after a crash between
// the emit and the removal, or another one after the lease lapsed
// mid-flush) emits exactly that batch again, a duplicate of the same run,
// before anything else: files that arrived meanwhile are the next batch,
// and the files of an emitted batch never run again. The marker file is
// not one of the batch's files.

type batchFile struct {
	ETag string `json:"etag"`
	Size int64  `json:"size"`
}

type folderState struct {
	Source    string               `json:"source"`
	Account   string               `json:"account"`
	Container string               `json:"container"`
	Folder    string               `json:"folder"`
	URL       string               `json:"url"`
	Files     map[string]batchFile `json:"files"`
	Marker    bool                 `json:"marker,omitempty"`
	First     time.Time            `json:"first"`
	Last      time.Time            `json:"last"`
	// Pending is the batch a flush is emitting (see the package comment):
	// its files and marker leave the state once it is emitted.
	Pending *pendingBatch `json:"pending,omitempty"`
}

// pendingBatch is one batch between its recording and its removal.
type pendingBatch struct {
	Files  map[string]batchFile `json:"files"`
	Marker bool                 `json:"marker,omitempty"`
	Last   time.Time            `json:"last"`
	Why    string               `json:"why"`
	// Key is the batch's run key: a removal clears only its own batch.
	Key string `json:"key"`
}

func folderPrefix(pipeline string) string { return "batch." + kvstate.Token(pipeline) + ".folder." }

// addToBatch adds one blob (or the marker) to its folder's open batch.
// Adding the same (name, eTag) twice changes nothing.
func addToBatch(ctx context.Context, kv kvstate.Store, pipeline, source string, ref Ref, etag string, size int64, marker bool) error {
	key := folderPrefix(pipeline) + kvstate.Hash(ref.FolderURL())
	etag = UnquoteETag(etag)
	for range 8 {
		var st folderState
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, kvstate.ErrNotFound):
			e = kvstate.Entry{}
		case err != nil:
			return fmt.Errorf("batch %s: %w", ref.FolderURL(), err)
		default:
			if err := json.Unmarshal(e.Value, &st); err != nil {
				return fmt.Errorf("batch %s: stored state unreadable: %w", ref.FolderURL(), err)
			}
		}
		now := time.Now().UTC()
		if e.Revision == 0 {
			st = folderState{Source: source, Account: ref.Account, Container: ref.Container, Folder: ref.Folder(),
				URL: ref.FolderURL(), Files: map[string]batchFile{}, First: now}
		}
		if st.Files == nil {
			st.Files = map[string]batchFile{}
		}
		if marker {
			if st.Marker {
				return nil
			}
			st.Marker = true
		} else {
			if f, ok := st.Files[ref.Name]; ok && f.ETag == etag {
				return nil
			}
			st.Files[ref.Name] = batchFile{ETag: etag, Size: size}
		}
		st.Last = now
		v, _ := json.Marshal(st)
		if e.Revision == 0 {
			_, err = kv.Create(ctx, key, v, 0)
		} else {
			_, err = kv.Update(ctx, key, v, e.Revision)
		}
		if errors.Is(err, kvstate.ErrExists) || errors.Is(err, kvstate.ErrConflict) {
			continue
		}
		if err != nil {
			return fmt.Errorf("batch %s: %w", ref.FolderURL(), err)
		}
		return nil
	}
	return fmt.Errorf("batch %s: too much contention", ref.FolderURL())
}

// BatcherOptions configure NewBatcher.
type BatcherOptions struct {
	Pipeline string
	Config   Config // Config.Batch must be set
	Intake   orchestrator.Intake
	KV       jetstream.KeyValue
	// Holder identifies this replica in the lease (default: host + random).
	Holder string
	// LeaseTTL bounds how long a dead replica keeps the batches of the
	// pipeline waiting (default 30s).
	LeaseTTL   time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer

	store kvstate.Store // tests under synctest
}

// Batcher emits the folder batches of one pipeline. See the package comment
// on micro-batching above.
type Batcher struct {
	pipeline string
	cfg      BatchConfig
	intake   orchestrator.Intake
	store    kvstate.Store
	lease    *kvstate.Lease
	tick     time.Duration
	log      *slog.Logger
	m        *trigmetrics.Metrics
}

// NewBatcher returns the pipeline's batcher. It starts nothing.
func NewBatcher(o BatcherOptions) (*Batcher, error) {
	if o.Config.Batch == nil {
		return nil, errors.New("batcher: pipeline has no batch section")
	}
	if o.Intake == nil {
		return nil, errors.New("batcher: no intake")
	}
	store := o.store
	if store == nil {
		if o.KV == nil {
			return nil, errors.New("batcher: no KV bucket")
		}
		store = kvstate.JetStream(o.KV)
	}
	if o.Holder == "" {
		o.Holder = kvstate.NewHolderID()
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 30 * time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := *o.Config.Batch
	// The state is polled: a quarter of the quiet period keeps a batch at
	// most 25% late, and 5s bounds the wait for a marker or max_files.
	tick := min(cfg.QuietOrDefault()/4, 5*time.Second)
	tick = max(tick, 10*time.Millisecond)
	return &Batcher{
		pipeline: o.Pipeline, cfg: cfg, intake: o.Intake, store: store,
		lease: kvstate.NewLease(store, "batch."+kvstate.Token(o.Pipeline)+".lease", o.Holder, o.LeaseTTL),
		tick:  tick, log: log.With("trigger", "batch", "pipeline", o.Pipeline),
		m: trigmetrics.New(o.Registerer),
	}, nil
}

// Run flushes due batches until ctx ends, then releases its lease.
func (b *Batcher) Run(ctx context.Context) error {
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = b.lease.Release(rctx)
	}()
	t := time.NewTicker(b.tick)
	defer t.Stop()
	for {
		held, err := b.lease.Acquire(ctx)
		if err != nil && ctx.Err() == nil {
			b.log.Warn("batch lease", "err", err)
		}
		if held {
			if err := b.flushDue(ctx); err != nil && ctx.Err() == nil {
				b.log.Warn("flush folder batches", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (b *Batcher) flushDue(ctx context.Context) error {
	keys, err := b.store.Keys(ctx, folderPrefix(b.pipeline))
	if err != nil {
		return err
	}
	var errs []error
	for _, key := range keys {
		e, err := b.store.Get(ctx, key)
		if errors.Is(err, kvstate.ErrNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var st folderState
		if err := json.Unmarshal(e.Value, &st); err != nil {
			b.log.Error("unreadable folder batch dropped", "key", key, "err", err)
			_ = b.store.Delete(ctx, key, e.Revision)
			continue
		}
		if why := b.due(st); why != "" {
			if err := b.flush(ctx, key, st, e.Revision, why); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// due says why the batch should be emitted now, or "".
func (b *Batcher) due(st folderState) string {
	switch {
	case st.Pending != nil:
		return "a batch recorded for emission was not cleared (" + st.Pending.Why + ")"
	case st.Marker:
		return "marker " + b.cfg.Marker + " arrived"
	case len(st.Files) >= b.cfg.MaxFilesOrDefault():
		return fmt.Sprintf("%d files reached max_files", len(st.Files))
	case len(st.Files) > 0 && time.Since(st.Last) >= b.cfg.QuietOrDefault():
		return fmt.Sprintf("folder quiet for %s", b.cfg.QuietOrDefault())
	}
	return ""
}

// batchNames are the files of the folder's next batch: at most
// max_files, in name order.
func (b *Batcher) batchNames(files map[string]batchFile) []string {
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) > b.cfg.MaxFilesOrDefault() {
		names = names[:b.cfg.MaxFilesOrDefault()]
	}
	return names
}

// batchKey is the run key of a batch: the folder URL and a hash of its
// files' (name, eTag) pairs, or, for a marker alone, the marker's time.
func (b *Batcher) batchKey(st folderState, pb *pendingBatch) string {
	if len(pb.Files) == 0 {
		return st.URL + "#marker@" + pb.Last.Format(time.RFC3339Nano)
	}
	return b.batchEvent(st, pb).Key
}

// batchEvent is the run of one folder batch.
func (b *Batcher) batchEvent(st folderState, pb *pendingBatch) orchestrator.Event {
	names := make([]string, 0, len(pb.Files))
	for n := range pb.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	h := sha256.New()
	var size int64
	for _, n := range names {
		fmt.Fprintf(h, "%s@%s\n", n, pb.Files[n].ETag)
		size += pb.Files[n].Size
	}
	source := st.Source
	if source == "" {
		source = orchestrator.SourceEventGrid
	}
	return orchestrator.Event{
		Pipeline: b.pipeline,
		Key:      st.URL + "#" + hex.EncodeToString(h.Sum(nil)[:12]),
		Source:   source,
		Time:     pb.Last.UTC(),
		Blob: &orchestrator.BlobEvent{
			URL: st.URL, Account: st.Account, Container: st.Container, Folder: st.Folder,
			Size: size, Files: names,
		},
	}
}

func (b *Batcher) flush(ctx context.Context, key string, st folderState, rev uint64, why string) error {
	if st.Pending == nil {
		// Record the batch first: whoever finds it pending emits exactly it.
		files := map[string]batchFile{}
		for _, n := range b.batchNames(st.Files) {
			files[n] = st.Files[n]
		}
		st.Pending = &pendingBatch{Files: files, Marker: st.Marker, Last: st.Last, Why: why}
		st.Pending.Key = b.batchKey(st, st.Pending)
		v, _ := json.Marshal(st)
		if _, err := b.store.Update(ctx, key, v, rev); errors.Is(err, kvstate.ErrConflict) {
			return nil // the folder changed: the next tick decides again
		} else if err != nil {
			return fmt.Errorf("record batch %s: %w", st.URL, err)
		}
	}
	pb := st.Pending
	if len(pb.Files) == 0 {
		// A marker with no files: nothing to run; record it and clear.
		ev := orchestrator.Event{Pipeline: b.pipeline, Key: b.batchKey(st, pb),
			Source: st.Source, Time: pb.Last.UTC(),
			Blob: &orchestrator.BlobEvent{URL: st.URL, Account: st.Account, Container: st.Container, Folder: st.Folder}}
		if _, err := b.intake.Record(ctx, ev, orchestrator.StateFiltered, "marker "+b.cfg.Marker+" arrived in a folder with no new files"); err != nil {
			return err
		}
		b.m.Inc("batch", b.pipeline, trigmetrics.Filtered)
		return b.remove(ctx, key, pb)
	}
	ev := b.batchEvent(st, pb)
	rc, err := b.intake.Emit(ctx, ev)
	switch {
	case err == nil:
		outcome := trigmetrics.Emitted
		if rc.Duplicate {
			outcome = trigmetrics.Duplicate
		}
		b.m.Inc("batch", b.pipeline, outcome)
		b.log.Info("folder batch emitted", "folder", st.URL, "files", len(ev.Blob.Files), "why", why, "run", rc.RunID, "duplicate", rc.Duplicate)
	case orchestrator.IsRefused(err):
		if _, rerr := b.intake.Record(ctx, ev, orchestrator.StateRejected, err.Error()); rerr != nil {
			return rerr
		}
		b.m.Inc("batch", b.pipeline, trigmetrics.Rejected)
	default:
		b.m.Inc("batch", b.pipeline, trigmetrics.Failed)
		return fmt.Errorf("emit batch %s: %w", st.URL, err)
	}
	return b.remove(ctx, key, pb)
}

// remove takes the emitted batch (its files, and the marker if it had
// it) out of the folder's state; files added meanwhile, and new versions of
// the batch's files, stay for the next batch.
func (b *Batcher) remove(ctx context.Context, key string, pb *pendingBatch) error {
	for range 8 {
		e, err := b.store.Get(ctx, key)
		if errors.Is(err, kvstate.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		var cur folderState
		if err := json.Unmarshal(e.Value, &cur); err != nil {
			return err
		}
		for n, f := range pb.Files {
			if c, ok := cur.Files[n]; ok && c.ETag == f.ETag {
				delete(cur.Files, n)
			}
		}
		if pb.Marker {
			cur.Marker = false
		}
		if cur.Pending != nil && cur.Pending.Key == pb.Key {
			cur.Pending = nil
		}
		if len(cur.Files) == 0 && cur.Pending == nil && !cur.Marker {
			err = b.store.Delete(ctx, key, e.Revision)
		} else {
			v, _ := json.Marshal(cur)
			_, err = b.store.Update(ctx, key, v, e.Revision)
		}
		if errors.Is(err, kvstate.ErrConflict) {
			continue
		}
		return err
	}
	return errors.New("folder batch: too much contention")
}
