// Package daemon wires batchd serve: NATS, the orchestrator, the triggers,
// the HTTP server and the metrics registry, from a loaded configuration.
// cmd/batchd runs it for `batchd serve`; cmd/batchd-dev runs the same wiring
// against its local stack, so the production binary links no simulator.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/online"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
	"github.com/batchd/batchd/orchestrator/statuspage"
	"github.com/batchd/batchd/triggers"
	"github.com/batchd/batchd/triggers/natsmsg"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
)

// Check reports the problems only a daemon has (batchd check loads the
// rest): an API reachable from
// other machines must require a token.
func Check(env *config.Env) error {
	if !env.HTTPLoopback() && env.APIToken == "" {
		return &config.Error{Problems: []error{&config.FieldError{Path: "BATCHD_API_TOKEN",
			Msg: fmt.Sprintf("is required when BATCHD_HTTP_ADDR (%s) is not a loopback address: the API can cancel and submit jobs", env.HTTPAddr)}}}
	}
	return nil
}

// ListenTokenFile is where the embedded NATS server's listener token is
// (BATCHD_NATS_LISTEN): clients of the listener present it.
func ListenTokenFile(stateDir string) string { return filepath.Join(stateDir, "nats-listen.token") }

// Options are what the caller of Serve provides besides the configuration.
type Options struct {
	// Logs receives the daemon's log (slog, in env's level and format).
	Logs io.Writer
	// Transport, when set, carries every Azure request (credential, batch
	// and online clients). Nil is the default transport; batchd-dev and
	// tests set one that trusts the simulator's CA.
	Transport policy.Transporter
	// Version and Host name this replica in the replica registry.
	Version, Host string
}

// Serve wires the daemon and runs it until ctx ends: a taken
// BATCHD_HTTP_ADDR, and every configuration problem found while wiring,
// is a *config.Error.
func Serve(ctx context.Context, env *config.Env, f *config.File, o Options) error {
	log := cmdutil.NewLogger(o.Logs, env.LogLevel, env.LogFormat)
	if !env.GoMemLimitSet {
		if limit, ok, err := config.DefaultMemoryLimit(config.CgroupMemoryMax); err != nil {
			log.Warn("no default memory limit", "err", err)
		} else if ok {
			debug.SetMemoryLimit(limit)
			log.Info("Go memory limit set to 90% of the cgroup's (GOMEMLIMIT overrides it)", "bytes", limit)
		}
	}
	azureTransport := o.Transport

	// Bind first: a taken port is reported before NATS starts.
	ln, err := net.Listen("tcp", env.HTTPAddr)
	if err != nil {
		return &config.Error{Problems: []error{&config.FieldError{Path: "BATCHD_HTTP_ADDR", Msg: err.Error()}}}
	}
	defer func() { _ = ln.Close() }()

	bopts := broker.Options{
		URL: env.NATS.URL, Listen: env.NATS.Listen,
		CredsFile: env.NATS.Creds, NKeyFile: env.NATS.NKey,
		TLSCAFile: env.NATS.TLSCA, TLSCert: env.NATS.TLSCert, TLSKey: env.NATS.TLSKey,
		ClientName: "batchd", Logger: log.With("component", "nats"),
	}
	if env.NATS.URL == "" {
		bopts.StoreDir = filepath.Join(env.StateDir, "nats")
		if env.NATS.Listen != "" {
			bopts.ListenTokenFile = ListenTokenFile(env.StateDir)
		}
		if err := os.MkdirAll(bopts.StoreDir, 0o750); err != nil {
			return &config.Error{Problems: []error{&config.FieldError{Path: "BATCHD_STATE_DIR", Msg: err.Error()}}}
		}
	}
	b, err := broker.Start(ctx, bopts)
	if err != nil {
		return fmt.Errorf("nats: %w", err)
	}
	defer b.Close() // last: after every component has stopped

	credOpts := env.Credential
	if azureTransport != nil {
		credOpts.Transport = azureTransport
	}
	reg, countToken := newRegistry()
	cred := jobs.CountTokens(NewLazyCredential(credOpts), countToken)
	client, err := jobs.New(cred, jobs.Options{
		MLScope: env.MLScope, ARMScope: env.ARMScope, ARMEndpoint: env.ARMEndpoint,
		Transport: azureTransport, Logger: log.With("component", "jobs"),
	})
	if err != nil {
		return &config.Error{Problems: []error{&config.FieldError{Path: "BATCHD_CREDENTIAL", Msg: err.Error()}}}
	}
	storage, checker := NewStorageChecker(env, f, cred, log)
	scorer, err := NewScorer(env, cred, azureTransport, log, countToken)
	if err != nil {
		return err
	}

	// Deferred online replies go out on the connection their request came
	// in on: the triggers register theirs here as they run.
	replies := natsmsg.NewReplyConns(b.Conn)
	orch, err := orchestrator.New(ctx, orchestrator.Options{
		ReplyConns: replies,
		JS:         b.JS, Conn: b.Conn, Pipelines: f.Pipelines, Submitter: client, Checker: checker, Scorer: scorer,
		Logger: log.With("component", "orchestrator"), Registerer: reg,
		Workers: env.Workers, Retention: env.Retention, ShutdownGrace: env.ShutdownGrace,
		SubmitTimeout: env.SubmitTimeout, PollMin: env.PollMin, PollMax: env.PollMax,
		PollBudget: env.PollBudget, ReconcileGrace: env.ReconcileGrace,
		IndexPath:       filepath.Join(env.StateDir, "index", "runs.db"),
		EventSafetyPoll: env.JobEventsSafetyPoll, EventSilence: env.JobEventsSilence,
		JobListInterval: env.JobListInterval,
		Replicas:        env.NATS.Replicas,
		Replica:         orchestrator.ReplicaIdentity{Host: o.Host, Version: o.Version, ConfigHash: f.Hash},
	})
	if err != nil {
		return err
	}
	// The triggers' own state bucket; the orchestrator knows nothing of it.
	triggersKV, err := broker.KeyValue(ctx, b.JS, log.With("component", "nats"),
		triggers.StateBucketConfig(orchestrator.BucketTriggers, env.NATS.Replicas))
	if err != nil {
		return err
	}
	trig, err := buildTriggers(env, f, orch, triggersKV, reg, storage, b.Conn, replies, log.With("component", "triggers"))
	if err != nil {
		return err
	}

	page, err := statuspage.New(statuspage.Options{
		Source: orch, Token: env.APIToken, NextFires: trig.nextFires, Endpoints: orch.Endpoints,
		Replicas: orch.Replicas,
		Logger:   log.With("component", "statuspage"),
	})
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           serveMux(orch, f, storage, trig, page, promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}), env, log),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       env.HTTPReadTimeout,
		WriteTimeout:      env.HTTPWriteTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          nil,
	}
	// Shutdown waits for active requests, and a live stream never ends by
	// itself.
	srv.RegisterOnShutdown(page.StopStreams)

	for _, w := range env.Warnings() {
		log.Warn("configuration: " + w)
	}
	if err := env.DeployProblems(); err != nil {
		log.Warn("configuration: batchd check refuses this: " + err.Error())
	}
	log.Info("batchd starting", "http", ln.Addr().String(), "nats", natsDescription(env, b),
		"pipelines", len(f.Pipelines), "triggers", len(trig.sources), "workers", env.Workers)
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range trig.sources {
		g.Go(func() error { return s.runUntilDone(gctx) })
	}
	g.Go(func() error {
		if err := orch.Run(gctx); err != nil {
			return err
		}
		if ctx.Err() == nil && gctx.Err() == nil {
			return errors.New("orchestrator returned before shutdown")
		}
		return nil
	})
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		log.Info("batchd stopping: no new work; steps in flight get the shutdown grace", "grace", env.ShutdownGrace)
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), env.ShutdownGrace)
		defer cancel()
		err := srv.Shutdown(sctx)
		if errors.Is(err, context.DeadlineExceeded) {
			// A request still in flight (a slow client, a delivery waiting
			// on NATS) had nothing acknowledged: its sender retries. The
			// stop itself is clean.
			log.Warn("shutdown grace over: requests still in flight are cut off; their senders retry (nothing they sent was acknowledged)",
				"grace", env.ShutdownGrace)
			return srv.Close()
		}
		return err
	})
	err = g.Wait()
	if err == nil {
		log.Info("batchd stopped")
	}
	return err
}

// newRegistry is the registry /metrics serves, which main owns: every
// component registers its metrics on it. It holds main's own metrics: the
// Go and process collectors and the token counter, whose Inc countToken is.
func newRegistry() (reg *prometheus.Registry, countToken func(scope string)) {
	reg = prometheus.NewRegistry()
	tokens := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_token_fetches_total",
		Help: "Microsoft Entra tokens the credential fetched (cache misses and refreshes), by scope; online:<kind> counts the online client's Azure ML tokens and key lists.",
	}, []string{"scope"})
	reg.MustRegister(tokens, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg, func(scope string) { tokens.WithLabelValues(scope).Inc() }
}

// serveMux routes batchd's HTTP paths: the orchestrator's API and probes,
// the Event Grid webhook, and the status page for everything else.
func serveMux(orch *orchestrator.Orchestrator, f *config.File, storage *datastores.Storage, trig *triggerSet, page, metrics http.Handler, env *config.Env, log *slog.Logger) *http.ServeMux {
	api := orch.Handler(orchestrator.HandlerOptions{APIToken: env.APIToken, Logger: log.With("component", "api"),
		Backfill: BackfillFunc(f, storage)})
	// The API and the page are what a web page could abuse; the probes,
	// metrics and the webhook carry no operator's authority.
	guard := orchestrator.BrowserGuard{Hosts: env.HTTPHosts, CheckHost: env.APIToken == "" || len(env.HTTPHosts) > 0}
	mux := http.NewServeMux()
	for _, p := range []string{"/healthz", "/readyz"} {
		mux.Handle(p, api)
	}
	mux.Handle("GET /metrics", metrics)
	mux.Handle("/api/", guard.Wrap(api))
	mux.Handle("/eventgrid", trig.webhook)
	mux.Handle("/", guard.Wrap(page))
	return mux
}

// NewScorer builds the online endpoint client on the process credential.
// onFetch counts the Azure ML tokens and key lists it fetches (Entra
// tokens are counted by the credential).
func NewScorer(env *config.Env, cred azcore.TokenCredential, azureTransport policy.Transporter, log *slog.Logger, onFetch func(kind string)) (*online.Client, error) {
	c, err := online.New(cred, online.Options{
		MLScope: env.MLScope, ARMScope: env.ARMScope, ARMEndpoint: env.ARMEndpoint,
		Transport: azureTransport, Logger: log.With("component", "online"),
		OnFetch: func(kind string) {
			if kind != "entra" && onFetch != nil {
				onFetch("online:" + kind)
			}
		},
	})
	if err != nil {
		return nil, &config.Error{Problems: []error{&config.FieldError{Path: "BATCHD_ARM_ENDPOINT", Msg: err.Error()}}}
	}
	return c, nil
}

func natsDescription(env *config.Env, b *broker.Broker) string {
	if b.Embedded() {
		d := "embedded in " + filepath.Join(env.StateDir, "nats")
		if b.SyncsBeforeAck() {
			d += " (every write synced before its ack)"
		}
		if u := b.ClientURL(); u != "" {
			d += ", listening on " + u + " (clients present the token in " + ListenTokenFile(env.StateDir) + ")"
		}
		return d
	}
	return b.ClientURL()
}
