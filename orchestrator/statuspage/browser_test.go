package statuspage

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
)

// The browser test runs the page against a real orchestrator (embedded
// NATS, the Azure ML simulator behind a real jobs.Client) in headless
// Chromium, Debian's package. Screenshots go to t.ArtifactDir() (kept with
// `go test -artifacts -outputdir DIR`), and are also copied to
// $BATCHD_SCREENSHOTS when that is set.

// chromiumPath finds the browser, or fails the test saying how to get it.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatalf("the browser test needs Chromium and none was found on PATH. Install Debian's package: " +
		"apt-get install -y chromium (make test does this when it is missing)")
	return ""
}

// browserChecker is the preflight: it allows every input except those under
// a "forbidden" folder, and records the access rows a real Checker would.
type browserChecker struct{}

func (browserChecker) Check(_ context.Context, req datastores.Request) datastores.Decision {
	d := datastores.Decision{Verdict: datastores.Allow, At: time.Now().UTC()}
	for _, in := range req.Inputs {
		d.Access = append(d.Access, datastores.Access{Name: in.Name, Role: "input", URI: in.URI, Type: in.Type,
			Kind: datastores.KindBlob, Account: "acct", CredentialInStore: "n/a",
			CredentialsUsed: "the compute cluster's managed identity", AccessGrantedBy: "Storage Blob Data Reader on account acct"})
		if strings.Contains(in.URI, "/forbidden/") {
			d.Verdict = datastores.Reject
			d.Reason = "allow-list inputs." + in.Name + ": container forbidden is not in the pipeline's allow list"
			d.Checks = append(d.Checks, datastores.Check{Name: "allow-list", Subject: "inputs." + in.Name, Result: datastores.Fail,
				Reason: "container forbidden is not in the pipeline's allow list"})
			return d
		}
		d.Checks = append(d.Checks,
			datastores.Check{Name: "allow-list", Subject: "inputs." + in.Name, Result: datastores.Pass, Reason: "account acct is allowed"},
			datastores.Check{Name: "input-exists", Subject: "inputs." + in.Name, Result: datastores.Pass, Reason: "the blob exists (2048 bytes)"})
	}
	return d
}

// daemon is a running orchestrator with the page and the JSON API served
// as batchd serve serves them.
type daemon struct {
	o   *orchestrator.Orchestrator
	sim *jobstest.Sim
}

func startDaemon(t *testing.T) *daemon {
	t.Helper()
	sim := jobstest.New(t, jobstest.Options{Outcome: func(j jobstest.JobView) jobstest.Lifecycle {
		for _, in := range j.Inputs {
			switch {
			case strings.Contains(in.URI, "fail"):
				return jobstest.Fails("CUDA out of memory on node 3")
			case strings.Contains(in.URI, "stuck"):
				return jobstest.Stuck(jobs.StatusRunning)
			}
		}
		return jobstest.Completes(1)
	}})
	b, err := broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("broker.Start: %v", err)
	}
	t.Cleanup(b.Close)
	client, err := jobs.New(sim.Credential("batchd-test"), jobs.Options{
		ARMEndpoint: sim.ARMEndpoint(), Transport: sim.HTTPClient(),
		GetRetry: policy.RetryOptions{MaxRetries: 2, RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 50 * time.Millisecond, TryTimeout: 5 * time.Second},
	})
	if err != nil {
		t.Fatalf("jobs.New: %v", err)
	}
	fieldURI, err := orchestrator.CompileTemplate("{{ .Fields.uri }}")
	if err != nil {
		t.Fatal(err)
	}
	nightlyURI, err := orchestrator.CompileTemplate("https://acct.blob.core.windows.net/in/nightly/")
	if err != nil {
		t.Fatal(err)
	}
	pipeline := func(name, endpoint, trigger string, maxRunning int, in orchestrator.IOTemplate) *orchestrator.Pipeline {
		return &orchestrator.Pipeline{
			Name: name, Trigger: trigger,
			Endpoint: orchestrator.Endpoint{Endpoint: sim.Endpoint(endpoint), MaxRunningJobs: maxRunning},
			Inputs:   map[string]orchestrator.IOTemplate{"data": in},
			Retry:    orchestrator.RetryPolicy{MaxAttempts: 1},
		}
	}
	pipelines := map[string]*orchestrator.Pipeline{
		"score":   pipeline("score", "ep-score", "blob", 0, orchestrator.IOTemplate{Type: jobs.TypeUriFile, URI: fieldURI}),
		"limited": pipeline("limited", "ep-limited", "blob", 1, orchestrator.IOTemplate{Type: jobs.TypeUriFile, URI: fieldURI}),
		"nightly": pipeline("nightly", "ep-score", "cron", 0, orchestrator.IOTemplate{Type: jobs.TypeUriFolder, URI: nightlyURI}),
	}
	o, err := orchestrator.New(t.Context(), orchestrator.Options{
		JS: b.JS, Conn: b.Conn, Pipelines: pipelines, Submitter: client, Checker: browserChecker{},
		Logger:  slog.New(slog.DiscardHandler),
		PollMin: 20 * time.Millisecond, PollMax: 100 * time.Millisecond, PollBudget: 1000,
		ReconcileGrace: 300 * time.Millisecond, SubmitTimeout: 2 * time.Second, ShutdownGrace: 5 * time.Second,
		AdmissionRetryMax: 100 * time.Millisecond, ParkInterval: 100 * time.Millisecond, RepairInterval: time.Hour,
	})
	if err != nil {
		t.Fatalf("orchestrator.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("orchestrator Run: %v", err)
		}
	})
	waitUntilD(t, 10*time.Second, "the orchestrator to be ready", func() bool { return o.Ready() == nil })
	return &daemon{o: o, sim: sim}
}

func waitUntilD(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// emit sends an API event for pipeline with input uri and waits for state.
func (d *daemon) emit(t *testing.T, pipeline, key, uri string, state orchestrator.State) string {
	t.Helper()
	rc, err := d.o.Emit(t.Context(), orchestrator.Event{Pipeline: pipeline, Key: key, Source: orchestrator.SourceEventGrid,
		Time: time.Now().UTC(), Fields: map[string]string{"uri": uri}})
	if err != nil {
		t.Fatalf("Emit: %v", err)
	}
	if state != "" {
		d.waitState(t, rc.RunID, state)
	}
	return rc.RunID
}

func (d *daemon) waitState(t *testing.T, id string, state orchestrator.State) {
	t.Helper()
	var last orchestrator.State
	waitUntilD(t, 20*time.Second, fmt.Sprintf("run %s to be %s (last %s)", id, state, func() string { return string(last) }()), func() bool {
		r, err := d.o.Get(t.Context(), id)
		if err != nil {
			return false
		}
		last = r.State
		return r.State == state
	})
}

// serve serves the page at / and the orchestrator's API as batchd serve does.
func (d *daemon) serve(t *testing.T, token string) *httptest.Server {
	t.Helper()
	fire := time.Now().UTC().Truncate(24 * time.Hour).Add(26 * time.Hour)
	p, err := New(Options{
		Source: d.o, Token: token, Logger: slog.New(slog.DiscardHandler),
		NextFires: func(pipeline string, n int) []time.Time {
			var out []time.Time
			for i := range n {
				out = append(out, fire.Add(time.Duration(i)*24*time.Hour))
			}
			return out
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	api := d.o.Handler(orchestrator.HandlerOptions{APIToken: token, Logger: slog.New(slog.DiscardHandler)})
	mux := http.NewServeMux()
	mux.Handle("/api/", api)
	mux.Handle("/healthz", api)
	mux.Handle("/", p)
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.RegisterOnShutdown(p.StopStreams)
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Config.Shutdown(ctx); err != nil {
			t.Errorf("http Shutdown: %v (an event stream did not end)", err)
		}
		srv.Close()
	})
	return srv
}

// browser is a headless Chromium tab.
type browser struct {
	t        *testing.T
	ctx      context.Context
	mu       sync.Mutex
	problems []string // console errors, exceptions and dialogs
	shots    []string
}

func startBrowser(t *testing.T) *browser {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("no-proxy-server", true),
		// Nothing but loopback resolves: the browser cannot reach out.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints,InterestFeedContentSuggestions"),
		chromedp.Flag("lang", "en-US"),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	// The first action starts the browser; it must run on ctx itself, not on
	// a child with a timeout, or the browser would end with the child.
	if err := chromedp.Do(ctx); err != nil {
		cancel()
		acancel()
		t.Fatalf("start Chromium: %v", err)
	}
	b := &browser{t: t, ctx: ctx}
	console := chromedp.Console(ctx)
	dialogs := chromedp.Events(ctx, page.JavascriptDialogOpening)
	var wg sync.WaitGroup
	wg.Go(func() {
		for m, err := range console {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.Type == chromedp.ConsoleException {
				b.problem(fmt.Sprintf("console %s at %s:%d: %s", m.Type, m.URL, m.Line+1, m.Text))
			}
		}
	})
	wg.Go(func() {
		for ev, err := range dialogs {
			if err != nil {
				return
			}
			b.problem(fmt.Sprintf("a %s dialog opened: %q", ev.Type, ev.Message))
			_, _ = chromedp.Call(ctx, page.HandleJavaScriptDialog, page.HandleJavaScriptDialogParams{Accept: false})
		}
	})
	t.Cleanup(func() {
		cancel()
		acancel()
		wg.Wait()
	})
	return b
}

func (b *browser) problem(s string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.problems = append(b.problems, s)
}

// selfTest proves that console errors and dialogs reach checkClean, so
// that "no errors" means something.
func (b *browser) selfTest() {
	b.t.Helper()
	eval[chromedp.Void](b, `console.error('batchd-selftest-console'); alert('batchd-selftest-dialog')`)
	waitUntilD(b.t, 5*time.Second, "the self-test messages", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		all := strings.Join(b.problems, "\n")
		return strings.Contains(all, "batchd-selftest-console") && strings.Contains(all, "batchd-selftest-dialog")
	})
	b.mu.Lock()
	b.problems = nil
	b.mu.Unlock()
}

// checkClean fails the test for any console error, exception or dialog.
func (b *browser) checkClean() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range b.problems {
		b.t.Errorf("browser: %s", p)
	}
	b.problems = nil
}

func (b *browser) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		html, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ''`))
		b.t.Fatalf("%s: %v\npage text:\n%s", what, err, html)
	}
}

func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// shot saves a full-page screenshot as name.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	b.save(name, chromedp.FullScreenshot(100))
}

// screen saves what the screen shows (the viewport) as name.png.
func (b *browser) screen(name string) {
	b.t.Helper()
	b.save(name, chromedp.CaptureScreenshot())
}

func (b *browser) save(name string, capture chromedp.Action[[]byte]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, capture)
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(b.t.ArtifactDir(), name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.shots = append(b.shots, path)
	if dir := os.Getenv("BATCHD_SCREENSHOTS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
			b.t.Fatal(err)
		}
	}
}

func css(s string) chromedp.CSS { return chromedp.CSS(s) }

func rowSel(id string) string { return fmt.Sprintf(`#run-rows tr[data-run-id=%q]`, id) }

func TestBrowser(t *testing.T) {
	d := startDaemon(t)
	ctx := t.Context()

	// Runs in several states.
	want := map[string]string{}
	add := func(id string, st orchestrator.State) string { want[id] = string(st); return id }
	add(d.emit(t, "score", "sales", "https://acct.blob.core.windows.net/in/2030-01-01/sales.csv", orchestrator.StateCompleted), orchestrator.StateCompleted)
	failed := add(d.emit(t, "score", "fail", "https://acct.blob.core.windows.net/in/fail-batch.csv", orchestrator.StateFailed), orchestrator.StateFailed)
	add(d.emit(t, "score", "forbidden", "https://acct.blob.core.windows.net/forbidden/x.csv", orchestrator.StateRejected), orchestrator.StateRejected)
	d.sim.Inject(jobstest.RouteCreate, jobstest.Fault{Reset: jobstest.ResetAfter})
	unknown := add(d.emit(t, "score", "ambiguous", "https://acct.blob.core.windows.net/in/ambiguous.csv", orchestrator.StateUnknown), orchestrator.StateUnknown)
	add(d.emit(t, "limited", "stuck", "https://acct.blob.core.windows.net/in/stuck-1.csv", orchestrator.StateRunning), orchestrator.StateRunning)
	add(d.emit(t, "limited", "next", "https://acct.blob.core.windows.net/in/next.csv", orchestrator.StateWaiting), orchestrator.StateWaiting)
	slot := time.Now().UTC().Truncate(time.Hour)
	rc, err := d.o.Emit(ctx, orchestrator.Event{Pipeline: "nightly", Key: slot.Format(time.RFC3339), Source: orchestrator.SourceCron,
		Time: slot, Schedule: &orchestrator.ScheduleEvent{Time: slot}})
	if err != nil {
		t.Fatal(err)
	}
	d.waitState(t, rc.RunID, orchestrator.StateCompleted)
	add(rc.RunID, orchestrator.StateCompleted)
	rc, err = d.o.Record(ctx, orchestrator.Event{Pipeline: "score", Key: "evil", Source: orchestrator.SourceEventGrid, Time: time.Now().UTC(),
		Blob: &orchestrator.BlobEvent{URL: "https://acct.blob.core.windows.net/in/" + evilName, Account: "acct", Container: "in", Name: evilName}},
		orchestrator.StateFiltered, "blob "+evilName+" does not end in .csv")
	if err != nil {
		t.Fatal(err)
	}
	evil := add(rc.RunID, orchestrator.StateFiltered)
	d.waitState(t, evil, orchestrator.StateFiltered)

	srv := d.serve(t, "")
	b := startBrowser(t)

	// The runs table: every run, in its state, with the stream connected.
	b.do("load the runs page", chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(css(`#live[data-state="on"]`)))
	b.selfTest()
	for id := range want {
		b.do("row "+id, chromedp.WaitVisible(css(rowSel(id))))
	}
	got := eval[map[string]string](b, `Object.fromEntries([...document.querySelectorAll('#run-rows tr[data-run-id]')].map(tr => [tr.dataset.runId, tr.dataset.state]))`)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows in the browser (-want +got):\n%s", diff)
	}
	if got := eval[string](b, fmt.Sprintf(`document.querySelector('%s td.input').textContent`, rowSel(evil))); !strings.Contains(got, `<script>alert("x")</script>`) {
		t.Errorf("the evil blob name shows as %q, want the text with <script> in it", got)
	}
	if got := eval[string](b, fmt.Sprintf(`document.querySelector('%s td[data-label=State]').innerText`, rowSel(failed))); got != "failed" {
		t.Errorf("failed run's state cell reads %q, want the text failed", got)
	}

	// Keyboard: the first Tab reaches the skip link, with a visible focus ring.
	b.do("tab", chromedp.KeyEvent("\t"))
	if got := eval[string](b, `document.activeElement.className + ' ' + getComputedStyle(document.activeElement).outlineStyle`); got != "skip solid" {
		t.Errorf("after one Tab the focus is on %q, want the skip link with a solid outline", got)
	}
	eval[chromedp.Void](b, `document.activeElement.blur()`)
	b.shot("runs-desktop")

	// A new run appears live, and follows its states, without a reload.
	eval[bool](b, `window.__sameDocument = true`)
	live := d.emit(t, "score", "live", "https://acct.blob.core.windows.net/in/live-arrival.csv", "")
	b.do("the new run's row appears", chromedp.WaitVisible(css(rowSel(live))))
	b.do("the new run completes", chromedp.WaitVisible(css(rowSel(live)+`[data-state="completed"]`)))
	if !eval[bool](b, `window.__sameDocument === true`) {
		t.Errorf("the page was reloaded to show the new run")
	}
	if first := eval[string](b, `document.querySelector('#run-rows tr[data-run-id]').dataset.runId`); first != live {
		t.Errorf("the first row is %s, want the new run %s (newest first)", first, live)
	}
	b.shot("runs-live-desktop")

	// Follow a run to its detail.
	b.do("open the failed run", chromedp.Click(css(rowSel(failed)+` th a`)),
		chromedp.WaitVisible(css(fmt.Sprintf(`.run-page[data-run-id=%q]`, failed))))
	detail := eval[string](b, `document.querySelector('main').innerText`)
	for _, s := range []string{"Decision record", "the compute cluster's managed identity", "Storage Blob Data Reader on account acct",
		"input-exists", "CUDA out of memory on node 3", "Timeline", "Request posted", "in/fail-batch.csv", "Retry run"} {
		if !strings.Contains(detail, s) {
			t.Errorf("the run's detail lacks %q:\n%s", s, detail)
		}
	}
	if n := eval[int](b, `document.querySelectorAll('.timeline li').length`); n < 4 {
		t.Errorf("timeline has %d entries, want the run's whole history (≥ 4)", n)
	}
	b.shot("run-detail-desktop")

	// Resolve the unknown run with the page's form; the page follows.
	b.do("open the unknown run", chromedp.Navigate(srv.URL+"/runs/"+unknown), chromedp.WaitVisible(css("#run-resolve")),
		chromedp.WaitVisible(css(`#live[data-state="on"]`)))
	b.shot("run-unknown-desktop")
	b.do("resolve the unknown run",
		chromedp.SetValue(css("#res-state"), "failed"),
		chromedp.SendKeys(css("#res-reason"), "checked in the studio: no job"),
		chromedp.Click(css(`#run-resolve button[value="resolve"]`)),
		chromedp.WaitVisible(css(`.run-page .lead .state-failed`)))
	if msg := eval[string](b, `document.getElementById('action-result').textContent`); !strings.Contains(msg, "Resolve") {
		t.Errorf("action result %q, want it to report the resolve", msg)
	}
	r, err := d.o.Get(ctx, unknown)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != orchestrator.StateFailed || !strings.Contains(r.History[len(r.History)-1].Reason, "checked in the studio: no job") {
		t.Errorf("after resolve: %s, %q; want failed with the operator's reason", r.State, r.History[len(r.History)-1].Reason)
	}
	b.shot("run-resolved-desktop")

	b.do("pipelines", chromedp.Navigate(srv.URL+"/pipelines"), chromedp.WaitVisible(css(`tr[data-pipeline="nightly"]`)))
	pl := eval[string](b, `document.querySelector('tr[data-pipeline="nightly"]').innerText`)
	if !strings.Contains(pl, "cron") || !strings.Contains(pl, "UTC (in ") || !strings.Contains(pl, "completed") {
		t.Errorf("nightly row %q, want its cron trigger, next fires and last run", pl)
	}
	b.shot("pipelines-desktop")
	b.do("endpoints", chromedp.Navigate(srv.URL+"/endpoints"), chromedp.WaitVisible(css(`tr[data-endpoint="ep-limited"]`)))
	if ep := eval[string](b, `document.querySelector('tr[data-endpoint="ep-limited"] td[data-label="Running jobs"]').innerText`); !strings.HasPrefix(ep, "1 of 1") {
		t.Errorf("ep-limited running jobs %q, want 1 of 1", ep)
	}
	b.shot("endpoints-desktop")

	// A phone.
	b.do("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2)),
		chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible(css(rowSel(live))))
	if !eval[bool](b, `document.documentElement.scrollWidth <= window.innerWidth`) {
		t.Errorf("the runs page scrolls sideways on a phone: %d > %d", eval[int](b, `document.documentElement.scrollWidth`), eval[int](b, `window.innerWidth`))
	}
	b.screen("runs-phone")
	b.do("phone detail", chromedp.Navigate(srv.URL+"/runs/"+failed), chromedp.WaitVisible(css(".run-page")))
	if !eval[bool](b, `document.documentElement.scrollWidth <= window.innerWidth`) {
		t.Errorf("the run page scrolls sideways on a phone")
	}
	b.screen("run-detail-phone")
	b.do("desktop again", chromedp.EmulateViewport(1280, 900))

	// With an API token: the shell asks for it, and shows nothing before.
	const token = "browser-test-token-9f2c"
	tsrv := d.serve(t, token)
	b.do("token page", chromedp.Navigate(tsrv.URL+"/"), chromedp.WaitVisible(css("#token-input")))
	if n := eval[int](b, `document.querySelectorAll('#run-rows tr').length`); n != 0 {
		t.Errorf("%d rows shown before the token was given", n)
	}
	if txt := eval[string](b, `document.body.innerText`); strings.Contains(txt, failed) || strings.Contains(txt, "fail-batch") {
		t.Errorf("run data shown before the token was given:\n%s", txt)
	}
	b.shot("token-form")
	b.do("give the token", chromedp.SendKeys(css("#token-input"), token), chromedp.Click(css(`#token-form button`)),
		chromedp.WaitVisible(css(rowSel(failed))), chromedp.WaitVisible(css(`#live[data-state="on"]`)))
	if u := eval[string](b, `location.href`); strings.Contains(u, token) {
		t.Errorf("the token is in the URL %s", u)
	}
	if s := eval[string](b, `sessionStorage.getItem('batchd.apiToken')`); s != token {
		t.Errorf("sessionStorage holds %q, want the token", s)
	}
	if h := eval[string](b, `document.documentElement.outerHTML`); strings.Contains(h, token) {
		t.Errorf("the token is in the page's HTML")
	}
	live2 := d.emit(t, "score", "live-2", "https://acct.blob.core.windows.net/in/live-2.csv", "")
	b.do("a live run with the token", chromedp.WaitVisible(css(rowSel(live2))))
	b.do("follow a link with the token", chromedp.Click(css(rowSel(failed)+` th a`)),
		chromedp.WaitVisible(css(fmt.Sprintf(`.run-page[data-run-id=%q]`, failed))))
	b.shot("run-detail-token")
	b.checkClean()
	t.Logf("screenshots: %s", strings.Join(b.shots, ", "))
}
