package blob

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

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
	log      *slog.Logger
	m        *trigmetrics.Metrics
	// sweeps and lastSweep tell an operator the poller is alive.
	sweeps    *prometheus.CounterVec
	lastSweep *prometheus.GaugeVec
}

// minPollInterval is a floor under poll_interval (Validate asks for 1s;
// tests in this package go below it).
var minPollInterval = time.Second

// SweepStats counts one sweep's outcomes.
type SweepStats struct {
	Listed, Skipped, Emitted, Duplicate, Batched, Filtered, Rejected, Failed, Forgotten int
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
	records, err := p.store.Values(ctx, seenPrefix(p.pipeline))
	if err != nil {
		return st, err
	}
	client, err := p.storage.Client(p.cfg.Account)
	if err != nil {
		return st, err
	}
	endpoint := p.storage.Endpoint(p.cfg.Account)
	listed := map[string]bool{}
	opts := &azblob.ListBlobsFlatOptions{}
	if p.cfg.Prefix != "" {
		opts.Prefix = &p.cfg.Prefix
	}
	pager := client.NewListBlobsFlatPager(p.cfg.Container, opts)
	var failed []error
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return st, fmt.Errorf("list %s/%s: %w", p.cfg.Account, p.cfg.Container, err)
		}
		for _, item := range page.Segment.BlobItems {
			if item.Name == nil || item.Properties == nil || item.Properties.ETag == nil {
				continue
			}
			st.Listed++
			ref, err := ParseURL(endpoint + strings.TrimPrefix(escapePath("/"+p.cfg.Container+"/"+*item.Name), "/"))
			if err != nil {
				p.log.Warn("unparsable blob name", "name", *item.Name, "err", err)
				continue
			}
			key := seenKey(p.pipeline, ref.URL)
			listed[key] = true
			etag := UnquoteETag(string(*item.Properties.ETag))
			if e, ok := records[key]; ok {
				var rec seenRec
				if json.Unmarshal(e.Value, &rec) == nil && rec.ETag == etag {
					st.Skipped++
					continue
				}
			}
			var size int64
			if item.Properties.ContentLength != nil {
				size = *item.Properties.ContentLength
			}
			t := started
			if item.Properties.LastModified != nil {
				t = item.Properties.LastModified.UTC()
			}
			if err := p.handle(ctx, &st, ref, etag, size, t); err != nil {
				st.Failed++
				failed = append(failed, err)
				if ctx.Err() != nil {
					return st, ctx.Err()
				}
			}
		}
		// Keep the lease through long listings.
		if !leased {
			continue
		}
		if held, err := p.lease.Acquire(ctx); leased && err == nil && !held {
			return st, errors.New("lost the sweep lease")
		}
	}
	// Forget blobs that are gone (records written during this sweep stay).
	for key, e := range records {
		if listed[key] {
			continue
		}
		var rec seenRec
		if json.Unmarshal(e.Value, &rec) == nil && rec.At.After(started) {
			continue
		}
		if err := p.store.Delete(ctx, key, e.Revision); err == nil {
			st.Forgotten++
		}
	}
	cursor, _ := json.Marshal(map[string]any{"swept": started, "listed": st.Listed, "emitted": st.Emitted})
	p.putCursor(ctx, cursor)
	if len(failed) > 0 {
		return st, fmt.Errorf("%d blobs not taken: %w", len(failed), errors.Join(failed[:min(len(failed), 3)]...))
	}
	return st, nil
}

func (p *Poller) putCursor(ctx context.Context, v []byte) {
	key := "poll." + kvstate.Token(p.pipeline) + ".cursor"
	if e, err := p.store.Get(ctx, key); err == nil {
		_, _ = p.store.Update(ctx, key, v, e.Revision)
		return
	}
	_, _ = p.store.Create(ctx, key, v, 0)
}

func (p *Poller) handle(ctx context.Context, st *SweepStats, ref Ref, etag string, size int64, t time.Time) error {
	p.m.Inc("poll", p.pipeline, trigmetrics.Received)
	be := orchestrator.BlobEvent{URL: ref.URL, Account: ref.Account, Container: ref.Container, Name: ref.Name,
		Folder: ref.Folder(), ETag: etag, Size: size}
	ev := orchestrator.Event{Pipeline: p.pipeline, Key: Key(ref, etag), Source: orchestrator.SourcePoll, Time: t, Blob: &be}
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
