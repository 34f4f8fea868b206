package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/triggers/blob"
	"github.com/batchd/batchd/triggers/cron"
	"github.com/batchd/batchd/triggers/natsmsg"
)

// source is one running trigger: a Run(ctx) error component.
type source struct {
	name string
	run  func(context.Context) error
}

// triggerSet is every trigger of the pipelines file, wired to the
// orchestrator: the Event Grid webhook (always mounted: without a secret it
// answers 503 and says why) and the sources to run.
type triggerSet struct {
	webhook http.Handler
	sources []source
	// schedules are the cron pipelines' schedules, for the status page.
	schedules map[string]*cron.Schedule
}

// nextFires returns the next n fire times of a cron pipeline after now (none
// for other pipelines).
func (s *triggerSet) nextFires(pipeline string, n int) []time.Time {
	sched := s.schedules[pipeline]
	if sched == nil {
		return nil
	}
	var out []time.Time
	for t := time.Now(); len(out) < n; {
		if t = sched.Next(t); t.IsZero() {
			break
		}
		out = append(out, t)
	}
	return out
}

// buildTriggers constructs the triggers. It starts nothing.
func buildTriggers(env *config.Env, f *config.File, orch *orchestrator.Orchestrator, kv jetstream.KeyValue, reg prometheus.Registerer,
	st *datastores.Storage, nc *nats.Conn, replies *natsmsg.ReplyConns, log *slog.Logger) (*triggerSet, error) {
	set := &triggerSet{schedules: map[string]*cron.Schedule{}}
	var errs []error

	var routes []blob.Route
	for _, name := range cmdutil.SortedNames(f.Triggers.Blob) {
		cfg := f.Triggers.Blob[name]
		if cfg.Webhooks() {
			routes = append(routes, blob.Route{Pipeline: name, Config: cfg})
		}
		if cfg.Polls() {
			p, err := blob.NewPoller(blob.PollerOptions{Pipeline: name, Config: cfg, Storage: st, Intake: orch, KV: kv,
				Logger: log.With("pipeline", name), Registerer: reg})
			if err != nil {
				errs = append(errs, err)
			} else {
				set.sources = append(set.sources, source{"poller " + name, p.Run})
			}
		}
		if cfg.Batch != nil {
			b, err := blob.NewBatcher(blob.BatcherOptions{Pipeline: name, Config: cfg, Intake: orch, KV: kv,
				Logger: log.With("pipeline", name), Registerer: reg})
			if err != nil {
				errs = append(errs, err)
			} else {
				set.sources = append(set.sources, source{"batcher " + name, b.Run})
			}
		}
	}
	wopts := blob.WebhookOptions{Routes: routes, Secret: env.WebhookSecret, Intake: orch, Jobs: orch, KV: kv,
		Logger: log, Registerer: reg}
	if e := env.WebhookEntra; e != nil {
		wopts.Entra = &blob.EntraOptions{Audiences: e.Audiences, Issuers: e.Issuers, JWKSURL: e.JWKSURL, Callers: e.Callers}
	}
	wh, err := blob.NewWebhook(wopts)
	if err != nil {
		errs = append(errs, err)
	} else {
		set.webhook = wh
		set.sources = append(set.sources, source{"eventgrid webhook", wh.Run})
	}

	for _, name := range cmdutil.SortedNames(f.Triggers.Cron) {
		s, err := cron.New(cron.Options{Pipeline: name, Config: f.Triggers.Cron[name], Intake: orch, Runs: orch, KV: kv,
			Logger: log.With("pipeline", name), Registerer: reg})
		if err != nil {
			errs = append(errs, err)
			continue
		}
		set.sources = append(set.sources, source{"cron " + name, s.Run})
		set.schedules[name] = s.Schedule()
	}

	for _, name := range cmdutil.SortedNames(f.Triggers.NATS) {
		p := f.Pipelines[name]
		nopts := natsmsg.Options{Pipeline: name, Config: f.Triggers.NATS[name], Conn: nc, Intake: orch, ReplyConns: replies,
			// Render the pipeline's templates before accepting a message, so
			// one that lacks a field they read is rejected (and, on
			// JetStream, terminated) at once with the reason.
			Validate: func(ev orchestrator.Event) error {
				_, _, err := p.Render(orchestrator.RunID(ev.Pipeline, ev.Key), ev)
				return err
			},
			Logger: log.With("pipeline", name), Registerer: reg}
		if p.IsOnline() {
			// A core NATS request to an online pipeline is answered with the
			// scoring response by the run (docs/ONLINE.md).
			nopts.DeferReply = true
			nopts.OnDuplicate = func(ctx context.Context, runID, reply string) error {
				return orch.AnswerDuplicate(ctx, name, runID, reply)
			}
			nopts.Concurrency = 32
		}
		s, err := natsmsg.New(nopts)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		set.sources = append(set.sources, source{"nats " + name, s.Run})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("triggers: %w", err)
	}
	return set, nil
}

// runUntilDone runs s and treats a return before ctx ends as a failure: a
// trigger that stops silently would stop work silently.
func (s source) runUntilDone(ctx context.Context) error {
	err := s.run(ctx)
	if err == nil && ctx.Err() == nil {
		err = errors.New("returned before shutdown")
	}
	if err != nil && ctx.Err() == nil {
		return fmt.Errorf("trigger %s: %w", s.name, err)
	}
	return nil
}

// BackfillFunc lists a cron pipeline's slots, or a blob pipeline's blobs,
// for the backfill API, built exactly as the live triggers build them.
func BackfillFunc(f *config.File, st *datastores.Storage) orchestrator.BackfillFunc {
	return func(ctx context.Context, pipeline string, from, to time.Time, limit int) ([]orchestrator.Event, bool, error) {
		if cfg, ok := f.Triggers.Cron[pipeline]; ok {
			return cron.Backfill(pipeline, cfg, from, to, limit)
		}
		if cfg, ok := f.Triggers.Blob[pipeline]; ok && st != nil {
			return blob.Backfill(ctx, st, pipeline, cfg, from, to, limit)
		}
		return nil, false, fmt.Errorf("pipeline %s has no cron or blob trigger", pipeline)
	}
}
