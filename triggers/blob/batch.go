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
// pairs, so re-emitting the same batch after a crash between Emit and the
// state update is a duplicate, and a later batch of the same folder (other
// files) is a new run. The marker file is not one of the batch's files.

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
			if err := b.flush(ctx, key, st, why); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// due says why the batch should be emitted now, or "".
func (b *Batcher) due(st folderState) string {
	switch {
	case st.Marker:
		return "marker " + b.cfg.Marker + " arrived"
	case len(st.Files) >= b.cfg.MaxFilesOrDefault():
		return fmt.Sprintf("%d files reached max_files", len(st.Files))
	case len(st.Files) > 0 && time.Since(st.Last) >= b.cfg.QuietOrDefault():
		return fmt.Sprintf("folder quiet for %s", b.cfg.QuietOrDefault())
	}
	return ""
}

// batchEvent is the run of one folder batch.
func (b *Batcher) batchEvent(st folderState) orchestrator.Event {
	names := make([]string, 0, len(st.Files))
	for n := range st.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) > b.cfg.MaxFilesOrDefault() {
		names = names[:b.cfg.MaxFilesOrDefault()]
	}
	h := sha256.New()
	var size int64
	for _, n := range names {
		fmt.Fprintf(h, "%s@%s\n", n, st.Files[n].ETag)
		size += st.Files[n].Size
	}
	source := st.Source
	if source == "" {
		source = orchestrator.SourceEventGrid
	}
	return orchestrator.Event{
		Pipeline: b.pipeline,
		Key:      st.URL + "#" + hex.EncodeToString(h.Sum(nil)[:12]),
		Source:   source,
		Time:     st.Last.UTC(),
		Blob: &orchestrator.BlobEvent{
			URL: st.URL, Account: st.Account, Container: st.Container, Folder: st.Folder,
			Size: size, Files: names,
		},
	}
}

func (b *Batcher) flush(ctx context.Context, key string, st folderState, why string) error {
	if len(st.Files) == 0 {
		// A marker with no files: nothing to run; record it and clear.
		ev := orchestrator.Event{Pipeline: b.pipeline, Key: st.URL + "#marker@" + st.Last.Format(time.RFC3339Nano),
			Source: st.Source, Time: st.Last.UTC(),
			Blob: &orchestrator.BlobEvent{URL: st.URL, Account: st.Account, Container: st.Container, Folder: st.Folder}}
		if _, err := b.intake.Record(ctx, ev, orchestrator.StateFiltered, "marker "+b.cfg.Marker+" arrived in a folder with no new files"); err != nil {
			return err
		}
		b.m.Inc("batch", b.pipeline, trigmetrics.Filtered)
		return b.remove(ctx, key, st, nil)
	}
	ev := b.batchEvent(st)
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
	return b.remove(ctx, key, st, ev.Blob.Files)
}

// remove takes the emitted files (and the marker seen in st) out of the
// folder's state; files added meanwhile stay for the next batch.
func (b *Batcher) remove(ctx context.Context, key string, emitted folderState, names []string) error {
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
		for _, n := range names {
			if f, ok := cur.Files[n]; ok && f.ETag == emitted.Files[n].ETag {
				delete(cur.Files, n)
			}
		}
		if emitted.Marker {
			cur.Marker = false
		}
		if len(cur.Files) == 0 && !cur.Marker {
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
