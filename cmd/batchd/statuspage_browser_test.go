package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
)

// The browser test drives the status page as a user reaches it: a real
// `batchd serve` process built from this package, with the Azure ML
// simulator (in this test process) behind it, in headless Chromium
// (Debian's package). Screenshots go to t.ArtifactDir() (kept with
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

// evilName is a blob name an attacker controls.
const evilName = `<script>alert("x")</script><img src=x onerror=alert(1)>.csv`

const pageWebhookSecret = "page-webhook-secret-5d1e"

// pageDaemon is a batchd serve process with the pipelines the page shows:
// manual runs on an uncapped endpoint without a workspace (so a lost
// answer stays unknown for an operator), a capped endpoint with a
// workspace (so a running job can be canceled), an allow-list that
// rejects data assets, a cron pipeline, and an Event Grid pipeline that
// takes only .parquet files. Inputs are data-asset URIs, which the
// preflight does not probe: nothing leaves the loopback interface.
type pageDaemon struct {
	proc *batchdProc
	sim  *jobstest.Sim
}

func startPageDaemon(t *testing.T, bin string, sim *jobstest.Sim, extra map[string]string) *pageDaemon {
	t.Helper()
	dir := t.TempDir()
	env := procSimEnv(t, sim, dir)
	ws := sim.Workspace()
	pipelines := fmt.Sprintf(`endpoints:
  ep-score:
    uri: %[1]s
  ep-limited:
    uri: %[2]s
    max_running_jobs: 1
    workspace: {subscription: %[3]s, resource_group: %[4]s, name: %[5]s}
pipelines:
  score:
    endpoint: ep-score
    inputs:
      data: {type: UriFile, uri: "{{ .Fields.uri }}"}
    retry: {max_attempts: 1}
  guarded:
    endpoint: ep-score
    inputs:
      data: {type: UriFile, uri: "{{ .Fields.uri }}"}
    allow: {accounts: [acct]}
  limited:
    endpoint: ep-limited
    inputs:
      data: {type: UriFile, uri: "{{ .Fields.uri }}"}
  nightly:
    endpoint: ep-score
    trigger:
      cron: {schedule: "0 2 * * *"}
    inputs:
      data: {type: UriFolder, uri: "azureml://locations/westeurope/workspaces/sim/data/nightly-data/versions/1"}
  uploads:
    endpoint: ep-score
    trigger:
      blob: {account: acct, container: in, suffix: .parquet}
    inputs:
      data: {type: UriFile, uri: "{{ .Blob.URL }}"}
`, sim.ScoringURI("ep-score"), sim.ScoringURI("ep-limited"), ws.Subscription, ws.ResourceGroup, ws.Name)
	pf := filepath.Join(dir, "page-pipelines.yaml")
	if err := os.WriteFile(pf, []byte(pipelines), 0o644); err != nil {
		t.Fatal(err)
	}
	env["BATCHD_PIPELINES"] = pf
	env["BATCHD_WEBHOOK_SECRET"] = pageWebhookSecret
	// Shorter than the stream is kept open below: the stream must outlive
	// the server's timeouts.
	env["BATCHD_HTTP_WRITE_TIMEOUT"] = "2s"
	env["BATCHD_HTTP_READ_TIMEOUT"] = "2s"
	for k, v := range extra {
		env[k] = v
	}
	p := newProc(t, bin, env, "page")
	p.start()
	return &pageDaemon{proc: p, sim: sim}
}

// request sends an API request (with token, when set) and decodes the JSON
// answer into out.
func (d *pageDaemon) request(t *testing.T, method, path, token, body string, out any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, d.proc.url()+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("%s %s: %v in %s", method, path, err, b)
		}
	}
}

// run starts a manual run of pipeline with input uri and waits for state
// ("" does not wait).
func (d *pageDaemon) run(t *testing.T, token, pipeline, key, uri string, state orchestrator.State) string {
	t.Helper()
	var rc orchestrator.Receipt
	d.request(t, "POST", "/api/v1/pipelines/"+pipeline+"/runs", token,
		fmt.Sprintf(`{"key":%q,"fields":{"uri":%q}}`, key, uri), &rc)
	if rc.RunID == "" {
		t.Fatalf("run %s/%s: no run id", pipeline, key)
	}
	if state != "" {
		d.waitState(t, token, rc.RunID, state)
	}
	return rc.RunID
}

func (d *pageDaemon) get(t *testing.T, token, id string) *orchestrator.Run {
	t.Helper()
	var r orchestrator.Run
	d.request(t, "GET", "/api/v1/runs/"+id, token, "", &r)
	return &r
}

func (d *pageDaemon) waitState(t *testing.T, token, id string, state orchestrator.State) {
	t.Helper()
	var last orchestrator.State
	procWaitFor(t, 20*time.Second, fmt.Sprintf("run %s to be %s", id, state), func() bool {
		r, err := procGetRunToken(d.proc.url(), token, id) // 404 until the intake has it
		if err == nil {
			last = r.State
		}
		return last == state
	})
}

// procGetRunToken reads one run through the API (with token, when set).
func procGetRunToken(base, token, id string) (*orchestrator.Run, error) {
	req, err := http.NewRequest("GET", base+"/api/v1/runs/"+id, nil)
	if err != nil {
		return nil, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET run %s: %d", id, resp.StatusCode)
	}
	var r orchestrator.Run
	return &r, json.NewDecoder(resp.Body).Decode(&r)
}

// blobEvent delivers one BlobCreated event for container in, blob name,
// as Event Grid does, and returns the webhook's answer.
func (d *pageDaemon) blobEvent(t *testing.T, name string) pageWebhookAnswer {
	t.Helper()
	// The name goes into the URL as it is: a hostile sender need not encode it.
	event, err := json.Marshal([]map[string]any{{
		"topic":     "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
		"subject":   "/blobServices/default/containers/in/blobs/" + name,
		"eventType": "Microsoft.Storage.BlobCreated", "eventTime": time.Now().UTC().Format(time.RFC3339Nano),
		"id": uuid.NewString(), "dataVersion": "", "metadataVersion": "1",
		"data": map[string]any{"api": "PutBlob", "eTag": "0x8DC0000000000001", "contentType": "text/csv",
			"contentLength": 2048, "blobType": "BlockBlob", "url": "https://acct.blob.core.windows.net/in/" + name,
			"sequencer": "0000000000000001000000000000000100000000000000a1"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(d.proc.url()+"/eventgrid?code="+pageWebhookSecret, "application/json", bytes.NewReader(event))
	if err != nil {
		t.Fatalf("deliver the event of %q: %v", name, err)
	}
	defer resp.Body.Close()
	var ans pageWebhookAnswer
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&ans) != nil {
		t.Fatalf("deliver the event of %q: %s", name, resp.Status)
	}
	return ans
}

// pageWebhookAnswer is the part of the webhook's answer the page test reads.
type pageWebhookAnswer struct {
	Filtered int `json:"filtered"`
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
	procWaitFor(b.t, 5*time.Second, "the self-test messages", func() bool {
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

// TestBrowser drives the status page of a running batchd serve in
// Chromium: the rows of every state, a run's detail, a run appearing live
// on a stream older than the server's write timeout, cancel and resolve
// from the page, the pipelines (next cron fires) and endpoints (admission)
// views, a phone, and the API token.
func TestBrowser(t *testing.T) {
	t.Parallel()
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
	bin := procBuild(t, t.TempDir())
	d := startPageDaemon(t, bin, sim, nil)
	base := d.proc.url()

	// Runs in several states.
	want := map[string]string{}
	add := func(id string, st orchestrator.State) string { want[id] = string(st); return id }
	add(d.run(t, "", "score", "sales", procInputURI("sales-2030-01-01"), orchestrator.StateCompleted), orchestrator.StateCompleted)
	failed := add(d.run(t, "", "score", "fail", procInputURI("fail-batch"), orchestrator.StateFailed), orchestrator.StateFailed)
	rejected := add(d.run(t, "", "guarded", "asset", procInputURI("outside"), orchestrator.StateRejected), orchestrator.StateRejected)
	sim.Inject(jobstest.RouteCreate, jobstest.Fault{Reset: jobstest.ResetAfter})
	unknown := add(d.run(t, "", "score", "ambiguous", procInputURI("ambiguous"), orchestrator.StateUnknown), orchestrator.StateUnknown)
	stuck := add(d.run(t, "", "limited", "stuck", procInputURI("stuck-1"), orchestrator.StateRunning), orchestrator.StateRunning)
	waiting := add(d.run(t, "", "limited", "next", procInputURI("stuck-next"), orchestrator.StateWaiting), orchestrator.StateWaiting)
	add(d.run(t, "", "nightly", "by-hand", "", orchestrator.StateCompleted), orchestrator.StateCompleted)
	if ans := d.blobEvent(t, evilName); ans.Filtered != 1 {
		t.Fatalf("the event of a .csv blob on a .parquet pipeline: %+v, want it filtered", ans)
	}
	var evil string
	procWaitFor(t, 10*time.Second, "the filtered event's run", func() bool {
		runs, err := procListAll(base)
		if err != nil {
			return false
		}
		for _, r := range runs {
			// No pipeline matched, so the decision names none.
			if r.State == orchestrator.StateFiltered && strings.Contains(r.Key, "script") {
				evil = r.ID
			}
		}
		return evil != ""
	})
	add(evil, orchestrator.StateFiltered)

	b := startBrowser(t)

	// The runs table: every run, in its state, with the stream connected.
	b.do("load the runs page", chromedp.Navigate(base+"/"), chromedp.WaitVisible(css(`#live[data-state="on"]`)))
	b.selfTest()
	for id := range want {
		b.do("row "+id, chromedp.WaitVisible(css(rowSel(id))))
	}
	got := eval[map[string]string](b, `Object.fromEntries([...document.querySelectorAll('#run-rows tr[data-run-id]')].map(tr => [tr.dataset.runId, tr.dataset.state]))`)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("rows in the browser (-want +got):\n%s", diff)
	}
	// The hostile name is text, on the row (URL-encoded, as the webhook
	// keeps the blob's URL) and on the run's page (as the name it is).
	if got := eval[string](b, fmt.Sprintf(`document.querySelector('%s td.input').textContent`, rowSel(evil))); !strings.Contains(got, `%3Cscript%3E`) {
		t.Errorf("the evil blob's input shows as %q, want its URL", got)
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

	// The stream outlives the server's write and read timeouts (2 s here):
	// it stays connected, without a reconnect, and still delivers a new run.
	eval[bool](b, `window.__sameDocument = true`)
	eval[chromedp.Void](b, `window.__liveStates = []; new MutationObserver(() => window.__liveStates.push(document.getElementById('live').dataset.state)).observe(document.getElementById('live'), {attributes: true})`)
	opened := time.Now()
	procWaitFor(t, 20*time.Second, "the stream to be older than 2× the write timeout", func() bool {
		return time.Since(opened) > 5*time.Second
	})
	live := d.run(t, "", "score", "live", procInputURI("live-arrival"), "")
	b.do("the new run's row appears", chromedp.WaitVisible(css(rowSel(live))))
	b.do("the new run completes", chromedp.WaitVisible(css(rowSel(live)+`[data-state="completed"]`)))
	if !eval[bool](b, `window.__sameDocument === true`) {
		t.Errorf("the page was reloaded to show the new run")
	}
	if states := eval[[]string](b, `window.__liveStates`); len(states) != 0 {
		t.Errorf("the live stream changed state %v while it was open past the write timeout; want it connected throughout", states)
	}
	if first := eval[string](b, `document.querySelector('#run-rows tr[data-run-id]').dataset.runId`); first != live {
		t.Errorf("the first row is %s, want the new run %s (newest first)", first, live)
	}
	b.shot("runs-live-desktop")

	// Follow a run to its detail.
	b.do("open the failed run", chromedp.Click(css(rowSel(failed)+` th a`)),
		chromedp.WaitVisible(css(fmt.Sprintf(`.run-page[data-run-id=%q]`, failed))))
	detail := eval[string](b, `document.querySelector('main').innerText`)
	for _, s := range []string{"Decision record", "CUDA out of memory on node 3", "Timeline", "Request posted", "fail-batch", "Retry run"} {
		if !strings.Contains(detail, s) {
			t.Errorf("the run's detail lacks %q:\n%s", s, detail)
		}
	}
	if n := eval[int](b, `document.querySelectorAll('.timeline li').length`); n < 4 {
		t.Errorf("timeline has %d entries, want the run's whole history (≥ 4)", n)
	}
	b.shot("run-detail-desktop")
	b.do("open the filtered run", chromedp.Navigate(base+"/runs/"+evil), chromedp.WaitVisible(css(".run-page")))
	if txt := eval[string](b, `document.querySelector('main').innerText`); !strings.Contains(txt, `<script>alert("x")</script>`) {
		t.Errorf("the filtered run's page does not show the blob name as text:\n%s", txt)
	}
	if n := eval[int](b, `document.querySelectorAll('main script, main img').length`); n != 0 {
		t.Errorf("the blob name made %d script or img elements", n)
	}
	b.do("open the rejected run", chromedp.Navigate(base+"/runs/"+rejected), chromedp.WaitVisible(css(".run-page")))
	if txt := eval[string](b, `document.querySelector('main').innerText`); !strings.Contains(txt, "allow-list") {
		t.Errorf("the rejected run's page does not name the allow-list:\n%s", txt)
	}

	// Cancel the running run from the page; the waiting run then gets the
	// endpoint's only slot.
	b.do("open the running run", chromedp.Navigate(base+"/runs/"+stuck), chromedp.WaitVisible(css(`#live[data-state="on"]`)))
	// The page asks for confirmation; the user says yes.
	eval[chromedp.Void](b, `window.confirm = (msg) => { window.__confirmed = msg; return true; }`)
	b.do("cancel it", chromedp.SendKeys(css("#act-reason"), "wrong input"), chromedp.Click(css(`#run-action button[value="cancel"]`)),
		chromedp.WaitVisible(css(`.run-page .lead .state-canceled`)))
	if msg := eval[string](b, `window.__confirmed || ''`); !strings.Contains(msg, "Cancel this run?") {
		t.Errorf("the page did not ask before canceling (%q)", msg)
	}
	if r := d.get(t, "", stuck); r.State != orchestrator.StateCanceled {
		t.Errorf("after cancel from the page: %s, want canceled", r.State)
	}
	for _, j := range sim.Jobs() {
		if strings.Contains(fmt.Sprint(j.Inputs), "stuck-1") && j.Status != jobs.StatusCanceled {
			t.Errorf("the stuck run's job %s is %s in Azure ML, want Canceled", j.Name, j.Status)
		}
	}
	d.waitState(t, "", waiting, orchestrator.StateRunning)
	b.shot("run-canceled-desktop")

	// Resolve the unknown run with the page's form; the page follows.
	b.do("open the unknown run", chromedp.Navigate(base+"/runs/"+unknown), chromedp.WaitVisible(css("#run-resolve")),
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
	r := d.get(t, "", unknown)
	if r.State != orchestrator.StateFailed || !strings.Contains(r.History[len(r.History)-1].Reason, "checked in the studio: no job") {
		t.Errorf("after resolve: %s, %q; want failed with the operator's reason", r.State, r.History[len(r.History)-1].Reason)
	}
	b.shot("run-resolved-desktop")

	// The pipelines view: the cron trigger's next fires come from the
	// running schedule (02:00 UTC daily).
	b.do("pipelines", chromedp.Navigate(base+"/pipelines"), chromedp.WaitVisible(css(`tr[data-pipeline="nightly"]`)))
	pl := eval[string](b, `document.querySelector('tr[data-pipeline="nightly"]').innerText`)
	if !strings.Contains(pl, "cron") || !strings.Contains(pl, "02:00:00 UTC (in ") || !strings.Contains(pl, "completed") {
		t.Errorf("nightly row %q, want its cron trigger, next fires at 02:00 UTC and last run", pl)
	}
	b.shot("pipelines-desktop")
	// The endpoints view: admission state from the orchestrator.
	b.do("endpoints", chromedp.Navigate(base+"/endpoints"), chromedp.WaitVisible(css(`tr[data-endpoint="ep-limited"]`)))
	if ep := eval[string](b, `document.querySelector('tr[data-endpoint="ep-limited"] td[data-label="Running jobs"]').innerText`); !strings.HasPrefix(ep, "1 of 1") {
		t.Errorf("ep-limited running jobs %q, want 1 of 1", ep)
	}
	if txt := eval[string](b, `document.querySelector('main').innerText`); strings.Contains(txt, "not available") {
		t.Errorf("the endpoints view says something is not available:\n%s", txt)
	}
	b.shot("endpoints-desktop")

	// A phone.
	b.do("phone", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateScale(2)),
		chromedp.Navigate(base+"/"), chromedp.WaitVisible(css(rowSel(live))))
	if !eval[bool](b, `document.documentElement.scrollWidth <= window.innerWidth`) {
		t.Errorf("the runs page scrolls sideways on a phone: %d > %d", eval[int](b, `document.documentElement.scrollWidth`), eval[int](b, `window.innerWidth`))
	}
	b.screen("runs-phone")
	b.do("phone detail", chromedp.Navigate(base+"/runs/"+failed), chromedp.WaitVisible(css(".run-page")))
	if !eval[bool](b, `document.documentElement.scrollWidth <= window.innerWidth`) {
		t.Errorf("the run page scrolls sideways on a phone")
	}
	b.screen("run-detail-phone")
	b.do("desktop again", chromedp.EmulateViewport(1280, 900))

	// With an API token (a second daemon): the shell asks for it, and shows
	// nothing before.
	const token = "browser-test-token-9f2c"
	td := startPageDaemon(t, bin, sim, map[string]string{"BATCHD_API_TOKEN": token})
	tfailed := td.run(t, token, "score", "fail", procInputURI("fail-batch"), orchestrator.StateFailed)
	for _, path := range []string{"/", "/ui/events", "/runs/" + tfailed} {
		resp, err := http.Get(td.proc.url() + path + "?fragment")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), tfailed) || strings.Contains(string(body), "fail-batch") {
			t.Errorf("GET %s without the token shows run data", path)
		}
	}
	b.do("token page", chromedp.Navigate(td.proc.url()+"/"), chromedp.WaitVisible(css("#token-input")))
	if n := eval[int](b, `document.querySelectorAll('#run-rows tr').length`); n != 0 {
		t.Errorf("%d rows shown before the token was given", n)
	}
	if txt := eval[string](b, `document.body.innerText`); strings.Contains(txt, tfailed) || strings.Contains(txt, "fail-batch") {
		t.Errorf("run data shown before the token was given:\n%s", txt)
	}
	b.shot("token-form")
	b.do("give the token", chromedp.SendKeys(css("#token-input"), token), chromedp.Click(css(`#token-form button`)),
		chromedp.WaitVisible(css(rowSel(tfailed))), chromedp.WaitVisible(css(`#live[data-state="on"]`)))
	if u := eval[string](b, `location.href`); strings.Contains(u, token) {
		t.Errorf("the token is in the URL %s", u)
	}
	if s := eval[string](b, `sessionStorage.getItem('batchd.apiToken')`); s != token {
		t.Errorf("sessionStorage holds %q, want the token", s)
	}
	if h := eval[string](b, `document.documentElement.outerHTML`); strings.Contains(h, token) {
		t.Errorf("the token is in the page's HTML")
	}
	live2 := td.run(t, token, "score", "live-2", procInputURI("live-2"), "")
	// Wait until the live run has ended: each of its updates re-renders
	// the rows, and a click on a row being replaced is lost (seen once in
	// CI, under load).
	b.do("a live run with the token", chromedp.WaitVisible(css(rowSel(live2)+`[data-state="completed"]`)))
	b.do("follow a link with the token", chromedp.Click(css(rowSel(tfailed)+` th a`)),
		chromedp.WaitVisible(css(fmt.Sprintf(`.run-page[data-run-id=%q]`, tfailed))))
	b.shot("run-detail-token")
	b.checkClean()
	t.Logf("screenshots: %s", strings.Join(b.shots, ", "))
}
