package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/cmd/internal/daemon"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// Files batchd-dev writes in its state directory. Without --keep exactly
// these are removed at start; nothing else in the directory is touched.
const (
	devLockFile     = "dev.lock"
	devStateFile    = "dev.json"
	devPipelines    = "pipelines.yaml"
	devKeyFile      = "azurite.key"
	devSecretFile   = "webhook-secret"
	devLogFile      = "batchd.log"
	devNATSDir      = "nats"
	devAzuriteDir   = "azurite"
	devBlobAccount  = azurite.Account
	devSampleSubj   = "demo.score"
	devUploadsCont  = "incoming"
	devDataCont     = "data"
	devOutputsCont  = "outputs"
	devNightlyDir   = "nightly/"
	devEndpointName = "demo"
)

// devRun is one `batchd-dev`: what it started, in start order.
type devRun struct {
	c   *cli
	o   devOptions
	out *syncWriter

	dir     string // absolute state directory
	lock    *os.File
	logPath string
	logFile *os.File
	tee     *logTee
	log     *slog.Logger
	prev    *devState // the previous run's dev.json (for --keep)

	httpAddr    string
	natsPort    int
	azuritePort int

	az     *azurite.Server
	sim    *jobstest.Sim
	env    *config.Env
	file   *config.File
	state  devState
	secret string

	cancel    context.CancelFunc
	serveDone chan error
	bg        sync.WaitGroup // samples and progress
}

// devState is DIR/dev.json: how `batchd-dev upload|publish` reach the
// running instance. It names the webhook secret's file, never the secret.
type devState struct {
	PID               int               `json:"pid"`
	URL               string            `json:"url"`
	HTTPAddr          string            `json:"http_addr"`
	NATSURL           string            `json:"nats_url"`
	NATSPort          int               `json:"nats_port"`
	NATSTokenFile     string            `json:"nats_token_file"`
	AzuriteURL        string            `json:"azurite_url"`
	AzuritePort       int               `json:"azurite_port"`
	AccountURL        string            `json:"account_url"`
	SimulatorURL      string            `json:"simulator_url"`
	PipelinesFile     string            `json:"pipelines_file"`
	WebhookSecretFile string            `json:"webhook_secret_file"`
	BlobPipelines     []devBlobPipeline `json:"blob_pipelines"`
	Started           time.Time         `json:"started"`
}

// devBlobPipeline is a pipeline with a blob trigger: `dev upload` names its
// run.
type devBlobPipeline struct {
	Pipeline  string `json:"pipeline"`
	Account   string `json:"account"`
	Container string `json:"container"`
}

// devTimings are the demo's pace; --fast shortens everything for tests.
type devTimings struct {
	queued, running  time.Duration // simulated job: Queued until, Running until (since creation)
	pollInterval     string        // the uploads poller
	cron             string        // the nightly schedule
	pollMin, pollMax string        // tracker
	shutdownGrace    string
	progressEvery    time.Duration
}

func (o devOptions) timings() devTimings {
	if o.fast {
		return devTimings{queued: 300 * time.Millisecond, running: time.Second, pollInterval: "2s", cron: "@every 5s",
			pollMin: "100ms", pollMax: "500ms", shutdownGrace: "5s", progressEvery: 250 * time.Millisecond}
	}
	return devTimings{queued: 3 * time.Second, running: 13 * time.Second, pollInterval: "10s", cron: "@every 30s",
		pollMin: "1s", pollMax: "3s", shutdownGrace: "10s", progressEvery: time.Second}
}

// start brings everything up; a non-zero code means it did not (and what
// it started is stopped by stop).
func (d *devRun) start(ctx context.Context) int {
	dir, err := filepath.Abs(d.o.stateDir)
	if err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: --state: %v\n", err)
		return exitUsage
	}
	d.dir = dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: state directory: %v\n", err)
		return exitUsage
	}
	if d.lock, err = lockDevState(dir); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: %v\n", err)
		return exitUsage
	}
	if prev, err := readDevState(dir); err == nil {
		d.prev = prev
	}
	if !d.o.keep {
		if err := wipeDevState(dir); err != nil {
			fmt.Fprintf(d.c.stderr, "batchd-dev: clearing %s: %v\n", dir, err)
			return exitUsage
		}
		d.prev = nil
	}
	if code := d.checkPrerequisites(); code != exitOK {
		return code
	}
	if code := d.choosePorts(); code != exitOK {
		return code
	}

	d.logPath = filepath.Join(dir, devLogFile)
	if d.logFile, err = os.OpenFile(d.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: log file: %v\n", err)
		return exitUsage
	}
	// With progress lines on, the orchestrator's own line for a failed or
	// rejected run would say the same thing twice.
	d.tee = &logTee{file: d.logFile, terminal: d.c.stderr, skipRunLines: !d.o.quiet}
	d.log = cmdutil.NewLogger(d.tee, "info", "text")

	d.say("dev", "starting Azurite (tools/azurite, data in %s)…", d.rel(filepath.Join(dir, devAzuriteDir)))
	d.az, err = azurite.Start(ctx, azurite.Options{Dir: filepath.Join(dir, devAzuriteDir), Port: d.azuritePort,
		Logger: d.log.With("component", "azurite")})
	if err != nil {
		if ctx.Err() != nil {
			return exitOK // a signal while Azurite started: nothing failed
		}
		fmt.Fprintf(d.c.stderr, "batchd-dev: %v\n", err)
		return exitFailed
	}
	d.sim, err = jobstest.Start(jobstest.Options{
		Lifecycle: d.lifecycle(false),
		Outcome:   d.outcome,
		Logger:    d.log.With("component", "simulator"),
	})
	if err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: Azure ML simulator: %v\n", err)
		return exitFailed
	}

	if code := d.configure(ctx); code != exitOK {
		return code
	}
	if err := d.prepareStorage(ctx); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: Azurite: %v\n", err)
		return exitFailed
	}
	// The simulator's CA is trusted only by the daemon's Azure clients
	// (daemon.Options.Transport), and the managed identity credential finds
	// the simulator through the App Service protocol's variables, which
	// azidentity reads from the process environment: this process's only.
	if err := errors.Join(
		os.Unsetenv("IDENTITY_SERVER_THUMBPRINT"), // would select the Service Fabric protocol
		os.Setenv("IDENTITY_ENDPOINT", d.sim.IdentityEndpoint()),
		os.Setenv("IDENTITY_HEADER", d.sim.IdentityHeader()),
	); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: managed identity variables: %v\n", err)
		return exitFailed
	}

	d.state.Started = time.Now().UTC()
	sctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	d.serveDone = make(chan error, 1)
	dopts := daemon.Options{Logs: d.tee, Transport: d.sim.HTTPClient(), Version: devVersion(), Host: devHost()}
	go func() { d.serveDone <- daemon.Serve(sctx, d.env, d.file, dopts) }()
	if code := d.waitReady(ctx); code != exitOK || ctx.Err() != nil {
		return code // a signal while starting: wait sees it and stops
	}
	// The simulated workspace publishes its job events to the webhook, as
	// an Event Grid subscription on a real workspace does (pushed
	// completion), a little late and out of order.
	d.sim.EmitEvents(sctx, jobstest.EventOptions{URL: "http://" + d.httpAddr + "/eventgrid?code=" + d.secret,
		Delay: 100 * time.Millisecond, Jitter: 300 * time.Millisecond})
	d.state.PID = os.Getpid()
	if err := writeDevState(dir, &d.state); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: %v\n", err)
		return exitFailed
	}
	d.banner()

	d.bg.Add(1)
	go func() {
		defer d.bg.Done()
		if err := d.seed(sctx); err != nil && sctx.Err() == nil {
			fmt.Fprintf(d.c.stderr, "batchd-dev: samples: %v\n", err)
		}
	}()
	if !d.o.quiet {
		d.bg.Add(1)
		go func() {
			defer d.bg.Done()
			d.followRuns(sctx)
		}()
	}
	return exitOK
}

// stop stops what start started, in reverse order. Safe to call after a
// partial start.
func (d *devRun) stop() {
	if d.cancel != nil {
		d.cancel()
	}
	if d.serveDone != nil {
		if err := <-d.serveDone; err != nil {
			fmt.Fprintf(d.c.stderr, "batchd-dev: batchd: %v\n", err)
		}
		d.serveDone = nil
	}
	d.bg.Wait()
	if d.sim != nil {
		_ = d.sim.Close()
	}
	if d.az != nil {
		_ = d.az.Close()
	}
	if d.logFile != nil {
		_ = d.logFile.Close()
	}
	if d.lock != nil {
		_ = d.lock.Close() // releases the flock
	}
}

// checkPrerequisites finds Azurite and Node.js before anything starts.
func (d *devRun) checkPrerequisites() int {
	if _, err := azurite.FindBin(); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: %v\n", err)
		fmt.Fprintln(d.c.stderr, "batchd-dev: `make demo` installs it (with `make deps`) and then runs batchd-dev.")
		return exitUsage
	}
	if _, err := exec.LookPath("node"); err != nil {
		fmt.Fprintln(d.c.stderr, "batchd-dev: Azurite needs Node.js, and `node` is not on PATH.")
		fmt.Fprintln(d.c.stderr, "batchd-dev: install Node.js 20 or newer (Debian/Ubuntu: `sudo apt-get install -y nodejs npm`, or https://nodejs.org), then run `make demo`.")
		return exitUsage
	}
	return exitOK
}

// choosePorts picks the three ports. A port given as a flag must be free;
// a default (or, with --keep, the previous run's port) falls back to a free
// one, and says so.
func (d *devRun) choosePorts() int {
	host, portText, err := net.SplitHostPort(d.o.httpAddr)
	if err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: --http %q is not host:port\n", d.o.httpAddr)
		return exitUsage
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		fmt.Fprintf(d.c.stderr, "batchd-dev: --http %q: batchd-dev listens on loopback only (its API has no token); use 127.0.0.1:PORT\n", d.o.httpAddr)
		return exitUsage
	}
	httpPort, err := strconv.Atoi(portText)
	if err != nil || httpPort < 0 || httpPort > 65535 {
		fmt.Fprintf(d.c.stderr, "batchd-dev: --http %q has no valid port\n", d.o.httpAddr)
		return exitUsage
	}
	want := struct{ http, nats, azurite int }{httpPort, d.o.natsPort, d.o.azuritePort}
	if p := d.prev; p != nil {
		// --keep: blob URLs (and so run keys) contain Azurite's port, and
		// copy-pasted commands name the others; reuse them.
		if _, pt, err := net.SplitHostPort(p.HTTPAddr); err == nil && !d.o.explicit["http"] {
			want.http, _ = strconv.Atoi(pt)
		}
		if !d.o.explicit["nats-port"] && p.NATSPort > 0 {
			want.nats = p.NATSPort
		}
		if !d.o.explicit["azurite-port"] && p.AzuritePort > 0 {
			want.azurite = p.AzuritePort
		}
	}
	pick := func(flagName string, want int) (int, bool) {
		got, err := freePort(host, want)
		if err == nil {
			return got, true
		}
		if d.o.explicit[flagName] {
			fmt.Fprintf(d.c.stderr, "batchd-dev: --%s: port %d on %s is taken (%v); choose another, or 0 for a free one\n", flagName, want, host, err)
			return 0, false
		}
		got, err = freePort(host, 0)
		if err != nil {
			fmt.Fprintf(d.c.stderr, "batchd-dev: no free port on %s: %v\n", host, err)
			return 0, false
		}
		d.say("dev", "port %d (--%s) is taken; using %d", want, flagName, got)
		return got, true
	}
	var ok bool
	if httpPort, ok = pick("http", want.http); !ok {
		return exitUsage
	}
	if d.natsPort, ok = pick("nats-port", want.nats); !ok {
		return exitUsage
	}
	if d.azuritePort, ok = pick("azurite-port", want.azurite); !ok {
		return exitUsage
	}
	if d.natsPort == httpPort || d.azuritePort == httpPort || d.natsPort == d.azuritePort {
		fmt.Fprintf(d.c.stderr, "batchd-dev: the HTTP (%d), NATS (%d) and Azurite (%d) ports must differ\n", httpPort, d.natsPort, d.azuritePort)
		return exitUsage
	}
	d.httpAddr = net.JoinHostPort(host, strconv.Itoa(httpPort))
	return exitOK
}

// freePort reports port (or, for 0, a port the kernel picks) after binding
// it once. Between this check and the real bind another process could take
// it; for a development tool that window is acceptable, and the bind's error
// then names the port.
func freePort(host string, port int) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// configure writes the key, the webhook secret and the pipelines file, and
// loads them the way `batchd serve` does (config.Load and serveChecks).
func (d *devRun) configure(ctx context.Context) int {
	keyFile := filepath.Join(d.dir, devKeyFile)
	secretFile := filepath.Join(d.dir, devSecretFile)
	pipelinesFile := filepath.Join(d.dir, devPipelines)
	if err := os.WriteFile(keyFile, []byte(azurite.Key+"\n"), 0o600); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: %v\n", err)
		return exitFailed
	}
	secret := make([]byte, 24)
	_, _ = rand.Read(secret)
	if err := os.WriteFile(secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: %v\n", err)
		return exitFailed
	}
	d.secret = hex.EncodeToString(secret)
	t := d.o.timings()
	ws := d.sim.Workspace()
	text := devPipelinesYAML(devPipelineParams{
		ScoringURI: d.sim.ScoringURI(devEndpointName), Workspace: ws,
		AccountURL: d.az.AccountURL(), KeyFile: keyFile,
		PollInterval: t.pollInterval, Schedule: t.cron,
	})
	if err := os.WriteFile(pipelinesFile, []byte(text), 0o600); err != nil {
		fmt.Fprintf(d.c.stderr, "batchd-dev: %v\n", err)
		return exitFailed
	}
	env, f, err := config.Load(ctx, config.MapEnv(devEnv(d.dir, d.httpAddr, d.natsPort, d.sim.ARMEndpoint(), t, d.c.env)), "")
	if err == nil {
		err = daemon.Check(env)
	}
	if err != nil {
		fmt.Fprintln(d.c.stderr, "batchd-dev: the generated configuration does not load (a bug in batchd-dev):")
		return cmdutil.ConfigExit(d.c.stderr, err)
	}
	d.env, d.file = env, f
	d.state = devState{
		URL: "http://" + d.httpAddr, HTTPAddr: d.httpAddr,
		NATSURL: "nats://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(d.natsPort)), NATSPort: d.natsPort,
		NATSTokenFile: daemon.ListenTokenFile(d.dir),
		AzuriteURL:    d.az.URL, AzuritePort: d.azuritePort, AccountURL: d.az.AccountURL(),
		SimulatorURL: d.sim.URL(), PipelinesFile: pipelinesFile, WebhookSecretFile: secretFile,
	}
	for _, name := range cmdutil.SortedNames(f.Triggers.Blob) {
		b := f.Triggers.Blob[name]
		d.state.BlobPipelines = append(d.state.BlobPipelines, devBlobPipeline{Pipeline: name, Account: b.Account, Container: b.Container})
	}
	return exitOK
}

// devEnv is the environment batchd serve gets in dev. BATCHD_LOG_LEVEL is
// taken from the caller's environment, so `BATCHD_LOG_LEVEL=debug make
// demo` works; nothing else is.
func devEnv(dir, httpAddr string, natsPort int, armEndpoint string, t devTimings, outer config.Lookuper) map[string]string {
	level := "info"
	if outer != nil {
		if v, ok := outer.Lookup("BATCHD_LOG_LEVEL"); ok && v != "" {
			level = v
		}
	}
	return map[string]string{
		"BATCHD_PIPELINES":           filepath.Join(dir, devPipelines),
		"BATCHD_STATE_DIR":           dir,
		"BATCHD_NATS_LISTEN":         net.JoinHostPort("127.0.0.1", strconv.Itoa(natsPort)),
		"BATCHD_HTTP_ADDR":           httpAddr,
		"BATCHD_WEBHOOK_SECRET_FILE": filepath.Join(dir, devSecretFile),
		"BATCHD_CREDENTIAL":          jobs.CredManagedIdentity,
		"BATCHD_ARM_ENDPOINT":        armEndpoint,
		"BATCHD_POLL_MIN":            t.pollMin,
		"BATCHD_POLL_MAX":            t.pollMax,
		"BATCHD_JOB_LIST_INTERVAL":   t.pollMax, // bulk status at the simulator's pace
		"BATCHD_SHUTDOWN_GRACE":      t.shutdownGrace,
		"BATCHD_SUBMIT_TIMEOUT":      t.shutdownGrace, // the simulator answers at once; check wants grace ≥ submit timeout
		"BATCHD_RETENTION":           "24h",
		"BATCHD_LOG_LEVEL":           level,
		"BATCHD_LOG_FORMAT":          "text",
	}
}

// lifecycle is the simulated job's path on the wall clock: Queued, then
// Running, then Completed (or Failed).
func (d *devRun) lifecycle(fail bool) jobstest.Lifecycle {
	t := d.o.timings()
	end := jobs.StatusCompleted
	if fail {
		end = jobs.StatusFailed
	}
	lc := jobstest.Lifecycle{Steps: []jobstest.Step{
		{Status: jobs.StatusQueued, After: t.queued},
		{Status: jobs.StatusRunning, After: t.running},
		{Status: end},
	}}
	if fail {
		lc.ErrorCode = "UserError"
		lc.ErrorMessage = "simulated failure: the scoring script raised ValueError while reading the input (batchd-dev fails every file whose name contains \"fail\")"
	}
	return lc
}

// outcome fails the jobs whose input's file name contains "fail".
func (d *devRun) outcome(j jobstest.JobView) jobstest.Lifecycle {
	for _, in := range j.Inputs {
		u := in.URI
		if i := strings.LastIndex(u, "/"); i >= 0 {
			u = u[i+1:]
		}
		if strings.Contains(strings.ToLower(u), "fail") {
			return d.lifecycle(true)
		}
	}
	return jobstest.Lifecycle{}
}

// waitReady waits for /readyz, or for serve to fail.
func (d *devRun) waitReady(ctx context.Context) int {
	deadline := time.Now().Add(60 * time.Second)
	hc := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := hc.Get("http://" + d.httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return exitOK
			}
		}
		select {
		case err := <-d.serveDone:
			d.serveDone = nil
			if err == nil {
				err = errors.New("returned before it was ready")
			}
			if config.IsConfigError(err) {
				return cmdutil.ConfigExit(d.c.stderr, err)
			}
			fmt.Fprintf(d.c.stderr, "batchd-dev: batchd did not start: %v (log: %s)\n", err, d.logPath)
			return exitFailed
		case <-ctx.Done():
			return exitOK // stop follows; a signal while starting is not a failure
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(d.c.stderr, "batchd-dev: batchd not ready after 60s (log: %s)\n", d.logPath)
			return exitFailed
		}
	}
}

// lockDevState takes an exclusive lock on DIR/dev.lock for the process's
// life: two instances on one state directory would share a JetStream store.
func lockDevState(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, devLockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		msg := "another batchd-dev is running on " + dir
		if st, rerr := readDevState(dir); rerr == nil && st.PID > 0 {
			msg += fmt.Sprintf(" (pid %d, %s)", st.PID, st.URL)
		}
		return nil, fmt.Errorf("%s: stop it, or pass --state DIR", msg)
	}
	return f, nil
}

// devRunning reports whether a batchd-dev holds the lock of dir.
func devRunning(dir string) bool {
	f, err := os.Open(filepath.Join(dir, devLockFile))
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		return true
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// wipeDevState removes what a previous batchd-dev wrote in dir, and only
// that: --state may point at a directory that holds other things.
func wipeDevState(dir string) error {
	for _, name := range []string{devStateFile, devPipelines, devKeyFile, devSecretFile, devLogFile, devNATSDir, devAzuriteDir, filepath.Base(daemon.ListenTokenFile(dir))} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

func readDevState(dir string) (*devState, error) {
	b, err := os.ReadFile(filepath.Join(dir, devStateFile))
	if err != nil {
		return nil, err
	}
	var st devState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, devStateFile), err)
	}
	return &st, nil
}

func writeDevState(dir string, st *devState) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, devStateFile+".tmp")
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", devStateFile, err)
	}
	return os.Rename(tmp, filepath.Join(dir, devStateFile))
}

// rel shortens p to a path relative to the working directory when it is
// inside it.
func (d *devRun) rel(p string) string {
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}

// syncWriter serialises whole lines from the goroutines that print.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) line(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = io.WriteString(s.w, text+"\n")
}

func (s *syncWriter) write(text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, _ = io.WriteString(s.w, text)
}

// logTee writes batchd's log to the log file and copies to the terminal
// the lines an operator must see: warnings, errors, and anything that is
// not a log record (a configuration report).
type logTee struct {
	mu       sync.Mutex
	file     io.Writer
	terminal io.Writer
	// skipRunLines keeps the orchestrator's per-run lines (msg=run) off the
	// terminal: the progress lines show the same.
	skipRunLines bool
	partial      []byte
}

func (t *logTee) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.file.Write(p); err != nil {
		return 0, err
	}
	t.partial = append(t.partial, p...)
	for {
		i := bytes.IndexByte(t.partial, '\n')
		if i < 0 {
			break
		}
		line := string(t.partial[:i+1])
		t.partial = t.partial[i+1:]
		if forwardLogLine(line, t.skipRunLines) {
			_, _ = io.WriteString(t.terminal, line)
		}
	}
	return len(p), nil
}

func forwardLogLine(line string, skipRunLines bool) bool {
	if !strings.HasPrefix(line, "time=") {
		return true
	}
	if skipRunLines && strings.Contains(line, " msg=run ") {
		return false
	}
	return strings.Contains(line, " level=WARN ") || strings.Contains(line, " level=ERROR ")
}
