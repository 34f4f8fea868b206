package blob

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/internal/trigmetrics"
)

// PollerOptions configure NewPoller.
type PollerOptions struct {
	Pipeline string
	Config   Config
	Storage  *datastores.Storage
	Intake   orchestrator.Intake
	KV       jetstream.KeyValue
	// Holder identifies this replica in the sweep lease (default host + random).
	Holder string
	// LeaseTTL bounds how long a dead replica blocks the sweep (default 30s).
	LeaseTTL   time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer

	store kvstate.Store // tests
}

// Poller lists a container (under the pipeline's prefix) every
// poll_interval and emits the blobs it has not handled before: for
// accounts without Event Grid (source: poll), and as the reconciliation
// sweep that catches what Event Grid dropped (source: both).
//
// What it has handled is the per-blob seen record it shares with the
// webhook (blob.<pipeline>.seen.<hash(url)>: the eTag last emitted, batched
// or filtered). A blob whose listed eTag equals its record is skipped
// without an Emit; so a sweep after a restart emits nothing new, and a
// blob the webhook already emitted is not emitted again. A new eTag (a
// re-upload) is a new run. The key is the webhook's (canonical URL + eTag),
// so even when both race, the orchestrator's run-id dedupe keeps one run.
//
// Non-matching blobs under the prefix (wrong suffix, too small) are
// recorded filtered once per eTag, not on every sweep: the seen record
// remembers that decision too. Records of blobs that are gone from the
// listing are deleted at the end of a complete sweep, so the state is
// bounded by the container's size.
//
// The first sweep of a pipeline records its horizon (poll.<pipeline>.horizon):
// the start of that sweep, or, for a pipeline that swept before horizons
// were recorded, the start of its last recorded sweep. A blob last
// modified more than HorizonSlack before the horizon, with no seen record
// for its eTag, is history: it is remembered as such, counted (outcome
// "history") and not run, so that adding a poller to a container with a
// past (a new pipeline, eventgrid switched to both, a lost triggers
// bucket) does not submit that past again. `batchd backfill` runs it.
//
// Only the replica holding the lease poll.<pipeline>.lease sweeps. A
// sweep renews the lease after every page; a replica that dies stops
// renewing, and another takes over after LeaseTTL.
//
// With mark_tag set, an emitted blob gets the blob index tag
// <mark_tag>=<run id> (tags do not change the eTag); failures to tag are
// logged and change nothing else.
type Poller struct {
	pipeline string
	cfg      Config
	storage  *datastores.Storage
	intake   orchestrator.Intake
	store    kvstate.Store
	seen     seenStore
	lease    *kvstate.Lease
	interval time.Duration
	// slack is HorizonSlack (tests lower it).
	slack time.Duration
	log   *slog.Logger
	m     *trigmetrics.Metrics
	// sweeps and lastSweep tell an operator the poller is alive.
	sweeps    *prometheus.CounterVec
	lastSweep *prometheus.GaugeVec
}

// HorizonSlack is how long before the poller's horizon a blob may have been
// last modified and still run. It covers Last-Modified's one-second
// resolution and the clock difference between batchd and the storage service.
const HorizonSlack = time.Minute

// minPollInterval is a floor under poll_interval (Validate asks for 1s;
// tests in this package go below it).
var minPollInterval = time.Second

// SweepStats counts one sweep's outcomes.
type SweepStats struct {
	Listed, Skipped, Emitted, Duplicate, Batched, Filtered, Rejected, Failed, Forgotten int
	// History: blobs older than the horizon, remembered and not run.
	History int
}

// NewPoller checks the options and returns the pipeline's poller. It
// connects to nothing.
func NewPoller(o PollerOptions) (*Poller, error) {
	var errs []error
	if err := o.Config.Validate(); err != nil {
		errs = append(errs, err)
	}
	if o.Storage == nil {
		errs = append(errs, errors.New("no storage"))
	}
	if o.Intake == nil {
		errs = append(errs, errors.New("no intake"))
	}
	store := o.store
	if store == nil && o.KV != nil {
		store = kvstate.JetStream(o.KV)
	}
	if store == nil {
		errs = append(errs, errors.New("no KV bucket"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("poller %s: %w", o.Pipeline, err)
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
	return &Poller{
		pipeline: o.Pipeline, cfg: o.Config, storage: o.Storage, intake: o.Intake, store: store,
		seen:     seenStore{kv: store},
		lease:    kvstate.NewLease(store, "poll."+kvstate.Token(o.Pipeline)+".lease", o.Holder, o.LeaseTTL),
		interval: max(o.Config.PollIntervalOrDefault(), minPollInterval),
		slack:    HorizonSlack,
		log:      log.With("trigger", "poll", "pipeline", o.Pipeline), m: trigmetrics.New(o.Registerer),
		sweeps: trigmetrics.Register(o.Registerer, prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "batchd_trigger_poll_sweeps_total",
			Help: "Storage poller sweeps this replica ran, by pipeline and result (complete, incomplete).",
		}, []string{"pipeline", "result"})),
		lastSweep: trigmetrics.Register(o.Registerer, prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "batchd_trigger_poll_last_sweep_timestamp_seconds",
			Help: "Unix time of this replica's last complete sweep, by pipeline. Alert when it falls behind poll_interval on every replica.",
		}, []string{"pipeline"})),
	}, nil
}

// Run sweeps every poll_interval while it holds the lease, until ctx ends.
func (p *Poller) Run(ctx context.Context) error {
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = p.lease.Release(rctx)
	}()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		held, err := p.lease.Acquire(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			p.log.Warn("sweep lease", "err", err)
		case held:
			p.log.Debug("sweep started", "holder", p.lease.Holder())
			st, err := p.sweep(ctx, true)
			if err != nil && ctx.Err() == nil {
				p.sweeps.WithLabelValues(p.pipeline, "incomplete").Inc()
				p.log.Warn("sweep incomplete; the next one retries", "err", err, "emitted", st.Emitted, "failed", st.Failed)
			} else if err == nil {
				p.sweeps.WithLabelValues(p.pipeline, "complete").Inc()
				p.lastSweep.WithLabelValues(p.pipeline).SetToCurrentTime()
				p.log.Debug("sweep done", "listed", st.Listed, "emitted", st.Emitted, "filtered", st.Filtered)
			}
		}
		// A non-holder retries at a third of the lease TTL, so it takes
		// over soon after the holder dies.
		next := p.interval
		if !held {
			next = min(p.interval, p.lease.TTL()/3)
		}
		t.Reset(next)
	}
}

// Sweep lists the container once and handles every blob not handled
// before. It does not take the lease (Run does); a reconcile command may
// call it directly.
func (p *Poller) Sweep(ctx context.Context) (SweepStats, error) { return p.sweep(ctx, false) }

func (p *Poller) sweep(ctx context.Context, leased bool) (SweepStats, error) {
	var st SweepStats
	started := time.Now().UTC()
	horizon, err := p.horizon(ctx, started)
	if err != nil {
		return st, err
	}
	cutoff := horizon.Truncate(time.Second).Add(-p.slack)
	// The sweep holds one listing page at a time (at most 5,000 blobs and
	// their seen records) and, for forgetting blobs that are gone, 8 bytes
	// per listed blob: never the whole container's records.
	listed := newListedSet()
	var failed []error
	var page []listedBlob
	process := func() error {
		recs, err := p.lookup(ctx, page)
		if err != nil {
			return err
		}
		for i, b := range page {
			if rec := recs[i]; rec != nil && rec.ETag == b.etag {
				st.Skipped++
				continue
			}
			t := started
			if !b.modified.IsZero() {
				t = b.modified
			}
			if t.Before(cutoff) {
				p.history(ctx, &st, b.ref, b.etag, t)
				continue
			}
			if err := p.handle(ctx, &st, b.ref, b.etag, b.size, t); err != nil {
				st.Failed++
				failed = append(failed, err)
				if ctx.Err() != nil {
					return ctx.Err()
				}
			}
		}
		page = page[:0]
		return nil
	}
	err = listBlobs(ctx, p.storage, p.cfg, p.log, func(ref Ref, etag string, size int64, modified time.Time) error {
		st.Listed++
		listed.add(seenKey(p.pipeline, ref.URL))
		page = append(page, listedBlob{ref: ref, etag: etag, size: size, modified: modified})
		return nil
	}, func() error {
		if err := process(); err != nil {
			return err
		}
		// Keep the lease through long listings.
		if !leased {
			return nil
		}
		held, err := p.lease.Acquire(ctx)
		switch {
		case err == nil && !held:
			return errors.New("lost the sweep lease")
		case err != nil && time.Until(p.lease.HeldUntil()) < p.lease.TTL()/2:
			// The next check comes only after the next page: with less
			// than half the lease left, another replica may hold it by
			// then, and two sweeps at once would each emit what the other
			// is emitting.
			return fmt.Errorf("could not renew the sweep lease before it lapsed: %w", err)
		}
		return nil
	})
	if err == nil {
		err = process() // a listing that ended without a page callback
	}
	if err != nil {
		return st, err
	}
	// Forget blobs that are gone (records written during this sweep stay).
	err = p.store.EachKey(ctx, seenPrefix(p.pipeline), func(key string) error {
		if listed.has(key) {
			return nil
		}
		e, err := p.store.Get(ctx, key)
		if err != nil {
			return nil //nolint:nilerr // gone already, or unreadable: the next sweep tries again
		}
		var rec seenRec
		if json.Unmarshal(e.Value, &rec) == nil && rec.At.After(started) {
			return nil
		}
		if err := p.store.Delete(ctx, key, e.Revision); err == nil {
			st.Forgotten++
		}
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("forget blobs that are gone: %w", err)
	}
	if st.History > 0 {
		p.log.Info("blobs older than the poller's horizon are not run; batchd backfill runs them",
			"history", st.History, "horizon", horizon, "slack", p.slack)
	}
	cursor, _ := json.Marshal(pollCursor{Swept: started, Listed: st.Listed, Emitted: st.Emitted})
	p.putCursor(ctx, cursor)
	if len(failed) > 0 {
		return st, fmt.Errorf("%d blobs not taken: %w", len(failed), errors.Join(failed[:min(len(failed), 3)]...))
	}
	return st, nil
}

// listedBlob is one blob of a listing page.
type listedBlob struct {
	ref      Ref
	etag     string
	size     int64
	modified time.Time
}

// sweepLookups is how many seen records a sweep reads at once.
const sweepLookups = 32

// lookup reads the seen records of a page's blobs (nil where there is
// none), sweepLookups at a time.
func (p *Poller) lookup(ctx context.Context, page []listedBlob) ([]*seenRec, error) {
	recs := make([]*seenRec, len(page))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(sweepLookups)
	for i, b := range page {
		g.Go(func() error {
			e, err := p.store.Get(gctx, seenKey(p.pipeline, b.ref.URL))
			if errors.Is(err, kvstate.ErrNotFound) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read what the poller has seen: %w", err)
			}
			var rec seenRec
			if json.Unmarshal(e.Value, &rec) == nil {
				recs[i] = &rec
			}
			return nil
		})
	}
	return recs, g.Wait()
}

// listedSet is a set of keys by their 64-bit hashes, seeded per sweep: a
// collision (about one in 10⁷ at a million blobs) keeps one gone blob's
// record until a later sweep, which hashes differently.
type listedSet struct {
	seed maphash.Seed
	m    map[uint64]struct{}
}

func newListedSet() *listedSet { return &listedSet{seed: maphash.MakeSeed(), m: map[uint64]struct{}{}} }

func (s *listedSet) add(k string) { s.m[maphash.String(s.seed, k)] = struct{}{} }

func (s *listedSet) has(k string) bool {
	_, ok := s.m[maphash.String(s.seed, k)]
	return ok
}

// pollCursor is poll.<pipeline>.cursor: the last sweep that listed the
// whole container, for operators and for the horizon of a poller that
// swept before horizons were recorded.
type pollCursor struct {
	Swept   time.Time `json:"swept"`
	Listed  int       `json:"listed"`
	Emitted int       `json:"emitted"`
}

// pollHorizon is poll.<pipeline>.horizon.
type pollHorizon struct {
	Since time.Time `json:"since"`
	// From says where Since came from: "first sweep" or "last sweep".
	From string `json:"from"`
}

func (p *Poller) horizonKey() string { return "poll." + kvstate.Token(p.pipeline) + ".horizon" }

func (p *Poller) cursorKey() string { return "poll." + kvstate.Token(p.pipeline) + ".cursor" }

// horizon reads the pipeline's horizon, recording it on the first sweep:
// the last recorded sweep's start if there is one (blobs modified since
// may not have been handled), else this sweep's start. Replicas racing
// to record it agree on the first write.
func (p *Poller) horizon(ctx context.Context, started time.Time) (time.Time, error) {
	key := p.horizonKey()
	for range 3 {
		e, err := p.store.Get(ctx, key)
		if err == nil {
			var h pollHorizon
			if err := json.Unmarshal(e.Value, &h); err != nil || h.Since.IsZero() {
				return time.Time{}, fmt.Errorf("poller horizon %s is unreadable (%q): delete it to record a new one", key, e.Value)
			}
			return h.Since, nil
		}
		if !errors.Is(err, kvstate.ErrNotFound) {
			return time.Time{}, fmt.Errorf("poller horizon: %w", err)
		}
		h := pollHorizon{Since: started, From: "first sweep"}
		if c, err := p.store.Get(ctx, p.cursorKey()); err == nil {
			var cur pollCursor
			if json.Unmarshal(c.Value, &cur) == nil && !cur.Swept.IsZero() && cur.Swept.Before(started) {
				h = pollHorizon{Since: cur.Swept, From: "last sweep"}
			}
		}
		v, _ := json.Marshal(h)
		if _, err := p.store.Create(ctx, key, v, 0); err == nil {
			p.log.Info("poller horizon recorded: blobs last modified before it are history, not run", "horizon", h.Since, "from", h.From)
			return h.Since, nil
		} else if !errors.Is(err, kvstate.ErrExists) {
			return time.Time{}, fmt.Errorf("record poller horizon: %w", err)
		}
	}
	return time.Time{}, errors.New("poller horizon: could not read or record it")
}

// history remembers a blob older than the horizon without running it.
func (p *Poller) history(ctx context.Context, st *SweepStats, ref Ref, etag string, t time.Time) {
	st.History++
	p.m.Inc("poll", p.pipeline, trigmetrics.History)
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := p.seen.advance(actx, p.pipeline, ref.URL, seenRec{ETag: etag, Modified: t, At: time.Now().UTC(), History: true}); err != nil {
		p.log.Warn("remember blob", "url", ref.URL, "err", err)
	}
}

func (p *Poller) putCursor(ctx context.Context, v []byte) {
	key := p.cursorKey()
	if e, err := p.store.Get(ctx, key); err == nil {
		_, _ = p.store.Update(ctx, key, v, e.Revision)
		return
	}
	_, _ = p.store.Create(ctx, key, v, 0)
}

func (p *Poller) handle(ctx context.Context, st *SweepStats, ref Ref, etag string, size int64, t time.Time) error {
	p.m.Inc("poll", p.pipeline, trigmetrics.Received)
	ev := versionEvent(p.pipeline, orchestrator.SourcePoll, ref, etag, size, t)
	rec := seenRec{ETag: etag, Modified: t, At: time.Now().UTC()}
	ok, why := p.cfg.match(blobFacts{ref: ref, size: size, hasSize: true})
	switch {
	case !ok:
		if _, err := p.intake.Record(ctx, ev, orchestrator.StateFiltered, why); err != nil {
			return fmt.Errorf("record %s: %w", ev.Key, err)
		}
		rec.Filtered = true
		st.Filtered++
		p.m.Inc("poll", p.pipeline, trigmetrics.Filtered)
	case p.cfg.Batch != nil:
		if err := addToBatch(ctx, p.store, p.pipeline, orchestrator.SourcePoll, ref, etag, size, p.cfg.isMarker(ref)); err != nil {
			return err
		}
		st.Batched++
		p.m.Inc("poll", p.pipeline, trigmetrics.Batched)
	default:
		rc, err := p.intake.Emit(ctx, ev)
		switch {
		case err == nil:
			if rc.Duplicate {
				st.Duplicate++
				p.m.Inc("poll", p.pipeline, trigmetrics.Duplicate)
			} else {
				st.Emitted++
				p.m.Inc("poll", p.pipeline, trigmetrics.Emitted)
			}
			defer p.mark(context.WithoutCancel(ctx), ref, rc.RunID)
		case orchestrator.IsRefused(err):
			if _, rerr := p.intake.Record(ctx, ev, orchestrator.StateRejected, err.Error()); rerr != nil {
				return rerr
			}
			st.Rejected++
			p.m.Inc("poll", p.pipeline, trigmetrics.Rejected)
		default:
			p.m.Inc("poll", p.pipeline, trigmetrics.Failed)
			return fmt.Errorf("emit %s: %w", ev.Key, err)
		}
	}
	// The outcome is durable; a failed write here only costs a duplicate
	// emit on the next sweep. It is not cut short by shutdown.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := p.seen.advance(actx, p.pipeline, ref.URL, rec); err != nil {
		p.log.Warn("remember blob", "url", ref.URL, "err", err)
	}
	return nil
}

// mark sets the mark tag, keeping the blob's other tags.
func (p *Poller) mark(ctx context.Context, ref Ref, runID string) {
	if p.cfg.MarkTag == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	client, err := p.storage.Client(p.cfg.Account)
	if err != nil {
		return
	}
	bc := client.ServiceClient().NewContainerClient(ref.Container).NewBlobClient(ref.Name)
	tags := map[string]string{}
	if cur, err := bc.GetTags(ctx, nil); err == nil {
		for _, t := range cur.BlobTagSet {
			if t.Key != nil && t.Value != nil {
				tags[*t.Key] = *t.Value
			}
		}
	}
	tags[p.cfg.MarkTag] = runID
	if _, err := bc.SetTags(ctx, tags, nil); err != nil {
		p.log.Warn("mark blob with tag", "url", ref.URL, "tag", p.cfg.MarkTag, "err", err)
	}
}

// listBlobs lists the pipeline's container under its prefix and calls fn
// for every blob, and page after every page of the listing; an error of
// either stops the listing and is returned.
func listBlobs(ctx context.Context, storage *datastores.Storage, cfg Config, log *slog.Logger,
	fn func(ref Ref, etag string, size int64, modified time.Time) error, page func() error) error {
	client, err := storage.Client(cfg.Account)
	if err != nil {
		return err
	}
	endpoint := storage.Endpoint(cfg.Account)
	opts := &azblob.ListBlobsFlatOptions{}
	if cfg.Prefix != "" {
		opts.Prefix = &cfg.Prefix
	}
	if cfg.pageSize > 0 {
		opts.MaxResults = &cfg.pageSize
	}
	pager := client.NewListBlobsFlatPager(cfg.Container, opts)
	for pager.More() {
		resp, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list %s/%s: %w", cfg.Account, cfg.Container, err)
		}
		for _, item := range resp.Segment.BlobItems {
			if item.Name == nil || item.Properties == nil || item.Properties.ETag == nil {
				continue
			}
			ref, err := ParseURL(endpoint + strings.TrimPrefix(escapePath("/"+cfg.Container+"/"+*item.Name), "/"))
			if err != nil {
				log.Warn("unparsable blob name", "name", *item.Name, "err", err)
				continue
			}
			var size int64
			if item.Properties.ContentLength != nil {
				size = *item.Properties.ContentLength
			}
			var modified time.Time
			if item.Properties.LastModified != nil {
				modified = item.Properties.LastModified.UTC()
			}
			if err := fn(ref, UnquoteETag(string(*item.Properties.ETag)), size, modified); err != nil {
				return err
			}
		}
		if page != nil {
			if err := page(); err != nil {
				return err
			}
		}
	}
	return nil
}

// versionEvent is the event of one blob version: the same key (canonical URL
// and eTag) whichever trigger or command makes it.
func versionEvent(pipeline, source string, ref Ref, etag string, size int64, t time.Time) orchestrator.Event {
	be := orchestrator.BlobEvent{URL: ref.URL, Account: ref.Account, Container: ref.Container, Name: ref.Name,
		Folder: ref.Folder(), ETag: etag, Size: size}
	return orchestrator.Event{Pipeline: pipeline, Key: Key(ref, etag), Source: source, Time: t, Blob: &be}
}

// ErrBackfillBatch means the pipeline batches folders: backfill runs blobs.
var ErrBackfillBatch = errors.New("the pipeline batches folders; backfill runs single blobs")

// Backfill lists the blobs of a blob pipeline last modified in (from, to]
// that its filters accept, oldest first, as the events the poller would
// emit for them (source backfill). The keys are the triggers' own, so a
// blob version that already ran is the same run. It is how blobs the
// poller left as history (older than its horizon) run. more says the range
// held more than limit.
func Backfill(ctx context.Context, storage *datastores.Storage, pipeline string, cfg Config, from, to time.Time, limit int) ([]orchestrator.Event, bool, error) {
	if cfg.Batch != nil {
		return nil, false, fmt.Errorf("pipeline %s: %w", pipeline, ErrBackfillBatch)
	}
	if !to.After(from) {
		return nil, false, fmt.Errorf("--to %s is not after --from %s", to.Format(time.RFC3339), from.Format(time.RFC3339))
	}
	var evs []orchestrator.Event
	err := listBlobs(ctx, storage, cfg, slog.New(slog.DiscardHandler), func(ref Ref, etag string, size int64, modified time.Time) error {
		if !modified.After(from) || modified.After(to) {
			return nil
		}
		if ok, _ := cfg.match(blobFacts{ref: ref, size: size, hasSize: true}); !ok {
			return nil
		}
		evs = append(evs, versionEvent(pipeline, orchestrator.SourceBackfill, ref, etag, size, modified))
		return nil
	}, func() error { return ctx.Err() })
	if err != nil {
		return nil, false, err
	}
	slices.SortStableFunc(evs, func(a, b orchestrator.Event) int {
		if c := a.Time.Compare(b.Time); c != 0 {
			return c
		}
		return strings.Compare(a.Blob.URL, b.Blob.URL)
	})
	if len(evs) > limit {
		return evs[:limit], true, nil
	}
	return evs, false, nil
}
