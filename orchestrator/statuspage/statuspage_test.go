package statuspage

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/html"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator"
)

func newPage(t *testing.T, src Source, mutate ...func(*Options)) *Page {
	t.Helper()
	opts := Options{Source: src, Logger: slog.New(slog.DiscardHandler)}
	for _, m := range mutate {
		m(&opts)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

type response struct {
	status int
	header http.Header
	body   string
}

func get(t *testing.T, h http.Handler, path string, hdr ...string) response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return response{status: rec.Code, header: rec.Header(), body: rec.Body.String()}
}

var rowIDRe = regexp.MustCompile(`<tr data-run-id="([^"]+)"`)

// rowIDs lists the run ids of the table rows in page order.
func rowIDs(body string) []string {
	var ids []string
	for _, m := range rowIDRe.FindAllStringSubmatch(body, -1) {
		ids = append(ids, m[1])
	}
	return ids
}

// parse parses an HTML page, failing the test on error.
func parse(t *testing.T, body string) *html.Node {
	t.Helper()
	doc, err := html.Parse(strings.NewReader(body))
	if err != nil {
		t.Fatalf("html.Parse: %v", err)
	}
	return doc
}

func attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

func findAll(n *html.Node, match func(*html.Node) bool) []*html.Node {
	var out []*html.Node
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.ElementNode && match(n) {
			out = append(out, n)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(n)
	return out
}

func tag(name string) func(*html.Node) bool {
	return func(n *html.Node) bool { return n.Data == name }
}

// blockish elements are rendered apart from their neighbours.
var blockish = map[string]bool{"th": true, "td": true, "tr": true, "br": true, "li": true, "caption": true,
	"dt": true, "dd": true, "p": true, "div": true, "ul": true, "ol": true, "thead": true, "tbody": true}

// text is the text of n as a person reads it, whitespace collapsed.
func text(n *html.Node) string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		if n.Type == html.ElementNode && blockish[n.Data] {
			b.WriteString(" ")
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
		if n.Type == html.ElementNode && blockish[n.Data] {
			b.WriteString(" ")
		}
	}
	walk(n)
	return strings.Join(strings.Fields(b.String()), " ")
}

// checkAccessible checks the markup rules the page promises on every view:
// each visible form control has a label, each table a caption and scoped
// header cells, each link text, and ids are unique.
func checkAccessible(t *testing.T, body string) {
	t.Helper()
	doc := parse(t, body)
	labels := map[string]bool{}
	for _, l := range findAll(doc, tag("label")) {
		if f, ok := attr(l, "for"); ok {
			labels[f] = true
		}
	}
	for _, c := range findAll(doc, func(n *html.Node) bool { return n.Data == "input" || n.Data == "select" || n.Data == "textarea" }) {
		if typ, _ := attr(c, "type"); typ == "hidden" {
			continue
		}
		id, _ := attr(c, "id")
		if id == "" || !labels[id] {
			t.Errorf("<%s id=%q> has no <label for>", c.Data, id)
		}
	}
	for _, tb := range findAll(doc, tag("table")) {
		if len(findAll(tb, tag("caption"))) != 1 {
			t.Errorf("table %v has no caption", tb.Attr)
		}
		for _, th := range findAll(tb, tag("th")) {
			if s, _ := attr(th, "scope"); s != "col" && s != "row" {
				t.Errorf("<th> %q has scope %q, want col or row", text(th), s)
			}
		}
	}
	for _, a := range findAll(doc, tag("a")) {
		if text(a) == "" {
			t.Errorf("link %v has no text", a.Attr)
		}
	}
	ids := map[string]bool{}
	for _, n := range findAll(doc, func(n *html.Node) bool { _, ok := attr(n, "id"); return ok }) {
		id, _ := attr(n, "id")
		if ids[id] {
			t.Errorf("id %q is not unique", id)
		}
		ids[id] = true
	}
	if html := findAll(doc, tag("html")); len(html) == 1 {
		if lang, _ := attr(html[0], "lang"); lang == "" {
			t.Errorf("<html> has no lang")
		}
	}
}

func TestRunsList(t *testing.T) {
	src := newFakeSource("score", "train")
	src.add(
		mkRun("r1", "score", orchestrator.StateCompleted, 5*time.Hour),
		mkRun("r2", "train", orchestrator.StateFailed, 4*time.Hour),
		mkRun("r3", "score", orchestrator.StateRunning, 3*time.Hour),
		mkRun("r4", "score", orchestrator.StateRejected, 2*time.Hour),
		mkRun("r5", "train", orchestrator.StateWaiting, time.Hour),
	)
	p := newPage(t, src)
	tests := []struct {
		name       string
		path       string
		wantStatus int
		wantIDs    []string
		wantNext   bool
		wantText   string
	}{
		{name: "all, newest first", path: "/", wantStatus: 200, wantIDs: []string{"r5", "r4", "r3", "r2", "r1"}},
		{name: "by pipeline", path: "/?pipeline=score", wantStatus: 200, wantIDs: []string{"r4", "r3", "r1"}},
		{name: "by state", path: "/?state=failed", wantStatus: 200, wantIDs: []string{"r2"}},
		{name: "by both", path: "/?pipeline=train&state=waiting", wantStatus: 200, wantIDs: []string{"r5"}},
		{name: "nothing matches", path: "/?pipeline=score&state=waiting", wantStatus: 200, wantText: "No runs match these filters"},
		{name: "first page of two", path: "/?limit=2", wantStatus: 200, wantIDs: []string{"r5", "r4"}, wantNext: true},
		{name: "a later page", path: "/?limit=2&cursor=2", wantStatus: 200, wantIDs: []string{"r3", "r2"}, wantNext: true, wantText: "Newest runs"},
		{name: "unknown state", path: "/?state=bogus", wantStatus: 400, wantText: `&#34;bogus&#34; is not a run state.`},
		{name: "bad limit", path: "/?limit=5000", wantStatus: 400, wantText: "must be a number from 1 to 200"},
		{name: "bad cursor", path: "/?cursor=zzz", wantStatus: 400, wantText: "bad cursor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := get(t, p, tt.path)
			if res.status != tt.wantStatus {
				t.Fatalf("GET %s: status %d, want %d; body:\n%s", tt.path, res.status, tt.wantStatus, res.body)
			}
			if diff := cmp.Diff(tt.wantIDs, rowIDs(res.body)); diff != "" {
				t.Errorf("GET %s: rows (-want +got):\n%s", tt.path, diff)
			}
			if got := strings.Contains(res.body, `rel="next"`); got != tt.wantNext {
				t.Errorf("GET %s: next link present = %v, want %v", tt.path, got, tt.wantNext)
			}
			if tt.wantText != "" && !strings.Contains(res.body, tt.wantText) {
				t.Errorf("GET %s: body lacks %q:\n%s", tt.path, tt.wantText, res.body)
			}
			checkAccessible(t, res.body)
		})
	}

	t.Run("the next link carries the filters and the cursor", func(t *testing.T) {
		res := get(t, p, "/?pipeline=score&limit=1")
		m := regexp.MustCompile(`href="([^"]+)" rel="next"`).FindStringSubmatch(res.body)
		if m == nil {
			t.Fatalf("no next link in:\n%s", res.body)
		}
		u, err := url.Parse(html.UnescapeString(m[1]))
		if err != nil {
			t.Fatal(err)
		}
		want := url.Values{"pipeline": {"score"}, "limit": {"1"}, "cursor": {"2"}} // the fake's cursor: an index
		if diff := cmp.Diff(want, u.Query()); diff != "" {
			t.Errorf("next link query (-want +got):\n%s", diff)
		}
		next := get(t, p, u.String())
		if diff := cmp.Diff([]string{"r3"}, rowIDs(next.body)); diff != "" {
			t.Errorf("page 2 rows (-want +got):\n%s", diff)
		}
	})

	t.Run("the filters are labelled selects with the current values selected", func(t *testing.T) {
		doc := parse(t, get(t, p, "/?pipeline=train&state=failed").body)
		sel := map[string]string{}
		for _, o := range findAll(doc, tag("option")) {
			if _, ok := attr(o, "selected"); ok {
				v, _ := attr(o, "value")
				sel[v] = text(o)
			}
		}
		if diff := cmp.Diff(map[string]string{"train": "train", "failed": "failed"}, sel); diff != "" {
			t.Errorf("selected options (-want +got):\n%s", diff)
		}
	})

	t.Run("the index is loading", func(t *testing.T) {
		src := newFakeSource("score")
		src.listErr = orchestrator.ErrIndexLoading
		res := get(t, newPage(t, src), "/")
		if res.status != http.StatusServiceUnavailable || !strings.Contains(res.body, "still loading") {
			t.Errorf("status %d, body %q; want 503 saying the index is loading", res.status, res.body)
		}
	})
}

func TestRunsRows(t *testing.T) {
	src := newFakeSource("score")
	done := mkRun("done", "score", orchestrator.StateCompleted, time.Hour)
	done.Request = &jobs.JobRequest{Inputs: map[string]jobs.Input{
		"b": {Type: jobs.TypeUriFile, URI: "https://acct.blob.core.windows.net/in/b.csv"},
		"a": {Type: jobs.TypeUriFile, URI: "https://acct.blob.core.windows.net/in/a.csv?sv=2024&sig=SECRETSIG"},
	}}
	done.Job = &orchestrator.JobRef{Name: "job-good", StudioURL: "https://ml.azure.com/runs/job-good"}
	evil := mkRun("evil", "score", orchestrator.StateRunning, 2*time.Hour)
	evil.Job = &orchestrator.JobRef{Name: "job-evil", StudioURL: "javascript:alert(1)"}
	src.add(done, evil)
	p := newPage(t, src)
	res := get(t, p, "/")
	doc := parse(t, res.body)
	rows := map[string]map[string]string{}
	links := map[string]string{}
	for _, tr := range findAll(doc, tag("tr")) {
		id, ok := attr(tr, "data-run-id")
		if !ok {
			continue
		}
		cells := map[string]string{}
		for _, c := range findAll(tr, func(n *html.Node) bool { _, ok := attr(n, "data-label"); return ok }) {
			l, _ := attr(c, "data-label")
			cells[l] = text(c)
			if l == "Job" {
				for _, a := range findAll(c, tag("a")) {
					links[id], _ = attr(a, "href")
				}
			}
		}
		rows[id] = cells
	}
	want := map[string]map[string]string{
		"done": {"Run": "done", "Pipeline": "score", "Trigger": "eventgrid",
			"Input": "https://acct.blob.core.windows.net/in/a.csv?sv=2024&sig=[redacted] +1 more", "State": "completed",
			"Job": "job-good (Azure ML studio, new tab)", "Age": "1h ago", "Duration": "1m 30s"},
		"evil": {"Run": "evil", "Pipeline": "score", "Trigger": "eventgrid",
			"Input": "https://acct.blob.core.windows.net/in/evil.csv", "State": "running",
			"Job": "job-evil", "Age": "2h ago", "Duration": "not finished"},
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("rows (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"done": "https://ml.azure.com/runs/job-good"}, links); diff != "" {
		t.Errorf("studio links (-want +got); a javascript: URL must not be a link:\n%s", diff)
	}
	if strings.Contains(res.body, "SECRETSIG") {
		t.Errorf("a SAS signature reached the page")
	}

	t.Run("row details are cached until the run changes", func(t *testing.T) {
		before := src.gets.Load()
		get(t, p, "/")
		if n := src.gets.Load() - before; n != 0 {
			t.Errorf("second page load read %d runs, want 0 (cached)", n)
		}
		changed := *evil
		changed.State, changed.Updated = orchestrator.StateFailed, evil.Updated.Add(time.Minute)
		changed.History = append(cloneSlice(evil.History), orchestrator.Transition{State: orchestrator.StateFailed, At: changed.Updated})
		src.add(&changed)
		before = src.gets.Load()
		get(t, p, "/")
		if n := src.gets.Load() - before; n != 1 {
			t.Errorf("page load after one run changed read %d runs, want 1", n)
		}
	})

	t.Run("a run that cannot be read still has its row", func(t *testing.T) {
		src := newFakeSource("score")
		src.add(mkRun("x", "score", orchestrator.StateCompleted, time.Minute))
		src.getErr = errBoom
		res := get(t, newPage(t, src), "/")
		if diff := cmp.Diff([]string{"x"}, rowIDs(res.body)); diff != "" {
			t.Errorf("rows (-want +got):\n%s", diff)
		}
		if !strings.Contains(res.body, "not available") {
			t.Errorf("row of an unreadable run does not say its details are not available")
		}
	})
}

func cloneSlice[T any](s []T) []T { return append([]T(nil), s...) }

// evilName is a blob name an attacker controls.
const evilName = `<script>alert("x")</script><img src=x onerror=alert(1)>.csv`

func TestEscaping(t *testing.T) {
	src := newFakeSource("score")
	r := mkRun("evil", "score", orchestrator.StateRejected, time.Minute)
	r.Event.Blob.Name = evilName
	r.Event.Blob.URL = "https://acct.blob.core.windows.net/in/" + evilName
	r.Event.Fields = map[string]string{"note": evilName}
	r.History[1].Reason = "rejected " + evilName
	r.Error = evilName
	r.Job = &orchestrator.JobRef{Name: evilName, StudioURL: `javascript:alert(1)//"><script>alert(2)</script>`}
	r.Decision = &datastores.Decision{Verdict: datastores.Reject, Reason: evilName,
		Checks: []datastores.Check{{Name: "input-exists", Subject: "inputs.data", Result: datastores.Fail, Reason: evilName}}}
	src.add(r)
	p := newPage(t, src)
	for _, path := range []string{"/", "/runs/evil", "/pipelines"} {
		t.Run(path, func(t *testing.T) {
			res := get(t, p, path)
			if res.status != 200 {
				t.Fatalf("status %d", res.status)
			}
			if strings.Contains(res.body, "<script>alert") || strings.Contains(res.body, "<img src=x") {
				t.Errorf("unescaped markup from a blob name in %s:\n%s", path, res.body)
			}
			if path != "/pipelines" && !strings.Contains(res.body, "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;") {
				t.Errorf("the blob name is not shown as text in %s", path)
			}
			doc := parse(t, res.body)
			if n := len(findAll(doc, func(n *html.Node) bool { _, ok := attr(n, "onerror"); return ok })); n != 0 {
				t.Errorf("%d elements with an onerror attribute", n)
			}
			for _, a := range findAll(doc, tag("a")) {
				if href, _ := attr(a, "href"); strings.Contains(strings.ToLower(href), "javascript") {
					t.Errorf("link to %q", href)
				}
			}
			// Only the page's own script is loaded.
			for _, s := range findAll(doc, tag("script")) {
				if src, _ := attr(s, "src"); !strings.HasPrefix(src, "/ui/static/app.js") {
					t.Errorf("script element %v", s.Attr)
				}
			}
		})
	}
	t.Run("the live row", func(t *testing.T) {
		var buf bytes.Buffer
		if err := p.writeRunEvent(&buf, orchestrator.RunChange{ID: r.ID, Run: r}, "", "", time.Now()); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(buf.String(), "<script>") || strings.Contains(buf.String(), `\u003cscript\u003ealert`) {
			t.Errorf("unescaped markup in the event: %s", buf.String())
		}
		if !strings.Contains(buf.String(), `\u0026lt;script\u0026gt;alert`) {
			t.Errorf("the blob name is not escaped text in the event's row: %s", buf.String())
		}
	})
}

func detailRun() *orchestrator.Run {
	r := mkRun("d1", "score", orchestrator.StateFailed, 30*time.Minute)
	at := r.Created
	r.Endpoint = "ep-score"
	r.Attempts = 2
	r.History = []orchestrator.Transition{
		{State: orchestrator.StateReceived, At: at, Reason: "claimed by worker"},
		{State: orchestrator.StateSubmitting, At: at.Add(time.Second), Reason: "admitted"},
		{State: orchestrator.StateSubmitted, At: at.Add(2 * time.Second), Reason: "job job-2"},
		{State: orchestrator.StateFailed, At: at.Add(5 * time.Minute), Reason: "job failed: out of memory"},
	}
	r.Error = "job job-2 failed: out of memory"
	r.Job = &orchestrator.JobRef{Name: "job-2", Status: jobs.StatusFailed, StudioURL: "https://ml.azure.com/runs/job-2", Error: "CUDA out of memory"}
	r.PreviousJobs = []orchestrator.JobRef{{Name: "job-1", Status: jobs.StatusFailed, Error: "node lost"}}
	r.Request = &jobs.JobRequest{
		Inputs:         map[string]jobs.Input{"data": {Type: jobs.TypeUriFile, URI: "https://acct.blob.core.windows.net/in/d1.csv"}},
		Outputs:        map[string]jobs.Output{"scores": {Type: jobs.TypeUriFolder, URI: "azureml://datastores/out/paths/d1/"}},
		ExperimentName: "nightly", RequestID: "req-123",
	}
	r.Decision = &datastores.Decision{
		Verdict: datastores.Allow, At: at,
		Access: []datastores.Access{{Name: "data", Role: "input", Type: jobs.TypeUriFile, Kind: datastores.KindBlob,
			Account: "acct", URI: "https://acct.blob.core.windows.net/in/d1.csv",
			CredentialInStore: "n/a", CredentialsUsed: "the job's compute identity", AccessGrantedBy: "Storage Blob Data Reader on acct"}},
		Checks: []datastores.Check{
			{Name: "input-exists", Subject: "inputs.data", Result: datastores.Pass, Reason: "12 bytes"},
			{Name: "output-absent", Subject: "outputs.scores", Result: datastores.Warn, Reason: "could not list"},
		},
	}
	return r
}

func TestRunDetail(t *testing.T) {
	src := newFakeSource("score")
	r := detailRun()
	src.add(r)
	p := newPage(t, src)
	res := get(t, p, "/runs/d1")
	if res.status != 200 {
		t.Fatalf("status %d:\n%s", res.status, res.body)
	}
	checkAccessible(t, res.body)
	doc := parse(t, res.body)

	// Decision record: access rows and checks with results.
	var tables []string
	for _, tb := range findAll(doc, tag("table")) {
		tables = append(tables, text(tb))
	}
	wantTables := []string{
		"Data access: which credentials read or write each input and output Input or output Input type Storage Credentials used Access granted by " +
			"input data UriFile azure_blob, account acct https://acct.blob.core.windows.net/in/d1.csv the job's compute identity (credential in the datastore: n/a) Storage Blob Data Reader on acct",
		"Preflight checks Check Subject Result Reason input-exists inputs.data pass 12 bytes output-absent outputs.scores warn could not list",
		"Inputs Name Type URI or value Mode data UriFile https://acct.blob.core.windows.net/in/d1.csv default",
		"Outputs Name Type URI Mode scores UriFolder azureml://datastores/out/paths/d1/ default",
		"Jobs of earlier attempts, oldest first Job Status Submitted Finished Error job-1 Failed — — node lost",
	}
	if diff := cmp.Diff(wantTables, tables); diff != "" {
		t.Errorf("tables (-want +got):\n%s", diff)
	}
	// Timeline, in order, with reasons.
	var timeline []string
	for _, ol := range findAll(doc, tag("ol")) {
		for li := ol.FirstChild; li != nil; li = li.NextSibling {
			if li.Type == html.ElementNode {
				timeline = append(timeline, text(li))
			}
		}
	}
	wantTimeline := []struct{ state, offset, reason string }{
		{"received", "", "claimed by worker"}, {"submitting", "(+1s)", "admitted"},
		{"submitted", "(+2s)", "job job-2"}, {"failed", "(+5m 00s)", "job failed: out of memory"},
	}
	if len(timeline) != len(wantTimeline) {
		t.Fatalf("timeline %q, want %d entries", timeline, len(wantTimeline))
	}
	for i, w := range wantTimeline {
		if got := timeline[i]; !strings.HasPrefix(got, w.state+" ") || !strings.Contains(got, w.offset) || !strings.HasSuffix(got, w.reason) {
			t.Errorf("timeline[%d] = %q, want %s … %s … %s", i, got, w.state, w.offset, w.reason)
		}
	}
	for _, want := range []string{
		"Errors", "job job-2 failed: out of memory", "CUDA out of memory",
		"Verdict: <strong class=\"verdict verdict-allow\">allow</strong>",
		`href="https://ml.azure.com/runs/job-2"`, "(Azure ML status Failed)", "<dd>5m 00s</dd>",
		"&#34;experiment_name&#34;: &#34;nightly&#34;", "req-123",
	} {
		if !strings.Contains(res.body, want) {
			t.Errorf("detail page lacks %q", want)
		}
	}
	if got, _ := attr(findAll(doc, func(n *html.Node) bool { _, ok := attr(n, "data-actions"); return ok })[0], "data-actions"); got != "/api/v1/runs/d1" {
		t.Errorf("actions URL %q, want /api/v1/runs/d1", got)
	}

	t.Run("buttons follow the state", func(t *testing.T) {
		tests := []struct {
			state orchestrator.State
			want  []string
		}{
			{orchestrator.StateRunning, []string{"cancel", "resolve"}},
			{orchestrator.StateWaiting, []string{"cancel", "resolve"}},
			{orchestrator.StateUnknown, []string{"retry", "resolve"}},
			{orchestrator.StateCompleted, []string{"retry"}},
			{orchestrator.StateRejected, []string{"retry"}},
			{orchestrator.StateSubmitting, nil},
		}
		for _, tt := range tests {
			x := *r
			x.ID, x.State = "b-"+string(tt.state), tt.state
			src.add(&x)
			doc := parse(t, get(t, p, "/runs/"+x.ID).body)
			var got []string
			for _, b := range findAll(doc, tag("button")) {
				if v, _ := attr(b, "value"); v != "" {
					got = append(got, v)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("state %s: buttons (-want +got):\n%s", tt.state, diff)
			}
		}
	})

	t.Run("not found", func(t *testing.T) {
		res := get(t, p, "/runs/nope")
		if res.status != http.StatusNotFound || !strings.Contains(res.body, "Run not found") {
			t.Errorf("status %d; want 404 saying the run is not found", res.status)
		}
	})

	t.Run("an online run", func(t *testing.T) {
		x := mkRun("online", "score", orchestrator.StateCompleted, time.Minute)
		x.Online = &orchestrator.OnlineCall{Request: `{"data": [1, 2]}`, RequestBytes: 16, RequestID: "rq-9",
			Response: &orchestrator.OnlineResponse{Status: 200, ContentType: "application/json", Body: `{"score": "<b>0.9</b>"}`,
				BodyBytes: 22, Deployment: "blue", LatencyMS: 42.5, Attempts: 2, At: x.Updated}}
		src.add(x)
		res := get(t, p, "/runs/online")
		checkAccessible(t, res.body)
		for _, want := range []string{"Online call", "HTTP 200, application/json, 22 bytes", "<dd>blue</dd>", "42ms", "(2 attempts)",
			"{&#34;score&#34;: &#34;&lt;b&gt;0.9&lt;/b&gt;&#34;}", "rq-9"} {
			if !strings.Contains(res.body, want) {
				t.Errorf("online run page lacks %q", want)
			}
		}
		if strings.Contains(res.body, "Request posted") {
			t.Errorf("an online run shows a batch request section")
		}
	})

	t.Run("a run without request or decision", func(t *testing.T) {
		x := mkRun("bare", "score", orchestrator.StateFiltered, time.Minute)
		x.Event.Blob = nil
		x.Event.Schedule = &orchestrator.ScheduleEvent{Time: x.Created}
		src.add(x)
		res := get(t, p, "/runs/bare")
		for _, want := range []string{"No decision recorded", "No request was rendered", "Slot"} {
			if !strings.Contains(res.body, want) {
				t.Errorf("page lacks %q", want)
			}
		}
	})
}

func TestPipelinesView(t *testing.T) {
	src := newFakeSource("score", "nightly", "manual")
	src.pipelines["nightly"].Trigger = "cron"
	src.pipelines["score"].Trigger = "blob"
	src.pipelines["score"].Endpoint.Name = "ep-score"
	src.add(
		mkRun("s1", "score", orchestrator.StateCompleted, 3*time.Hour),
		mkRun("s2", "score", orchestrator.StateCompleted, 2*time.Hour),
		mkRun("s3", "score", orchestrator.StateFailed, time.Hour),
		mkRun("s-old", "score", orchestrator.StateFailed, 30*time.Hour), // outside the window
		mkRun("n-old", "nightly", orchestrator.StateCompleted, 50*time.Hour),
	)
	fire := time.Date(2031, 5, 1, 2, 0, 0, 0, time.UTC)
	cells := func(body string) map[string]map[string]string {
		out := map[string]map[string]string{}
		for _, tr := range findAll(parse(t, body), tag("tr")) {
			name, ok := attr(tr, "data-pipeline")
			if !ok {
				continue
			}
			out[name] = map[string]string{}
			for _, c := range findAll(tr, func(n *html.Node) bool { _, ok := attr(n, "data-label"); return ok }) {
				l, _ := attr(c, "data-label")
				out[name][l] = text(c)
			}
		}
		return out
	}

	t.Run("with next fires", func(t *testing.T) {
		var asked []string
		p := newPage(t, src, func(o *Options) {
			o.NextFires = func(pipeline string, n int) []time.Time {
				asked = append(asked, fmt.Sprintf("%s/%d", pipeline, n))
				return []time.Time{fire, fire.Add(24 * time.Hour)}
			}
		})
		res := get(t, p, "/pipelines")
		if res.status != 200 {
			t.Fatalf("status %d", res.status)
		}
		checkAccessible(t, res.body)
		got := cells(res.body)
		want := map[string]map[string]string{
			"manual": {"Pipeline": "manual endpoint", "Trigger": "manual only", "Next cron fires": "not a cron pipeline",
				"Last run": "no runs", "Last 24 h": "no runs"},
			"nightly": {"Pipeline": "nightly endpoint", "Trigger": "cron",
				"Next cron fires": got["nightly"]["Next cron fires"], // checked below
				"Last run":        "n-old completed 2d ago, took 1m 30s", "Last 24 h": "no runs"},
			"score": {"Pipeline": "score endpoint ep-score", "Trigger": "blob", "Next cron fires": "not a cron pipeline",
				"Last run": "s3 failed 1h ago, took 1m 30s", "Last 24 h": "completed 2 failed 1"},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("pipelines (-want +got):\n%s", diff)
		}
		if f := got["nightly"]["Next cron fires"]; !strings.HasPrefix(f, "2031-05-01 02:00:00 UTC (in ") || !strings.Contains(f, "2031-05-02 02:00:00 UTC") {
			t.Errorf("nightly next fires %q, want 2031-05-01 02:00 and 2031-05-02 02:00", f)
		}
		if diff := cmp.Diff([]string{"nightly/3"}, asked); diff != "" {
			t.Errorf("NextFires calls (-want +got):\n%s", diff)
		}
		if !strings.Contains(res.body, `href="/?pipeline=score&amp;state=failed"`) {
			t.Errorf("the count links to the filtered runs")
		}
	})

	t.Run("without next fires", func(t *testing.T) {
		got := cells(get(t, newPage(t, src), "/pipelines").body)
		if f := got["nightly"]["Next cron fires"]; f != "not available" {
			t.Errorf("next fires %q, want not available", f)
		}
	})

	t.Run("the scan stops at 24 hours", func(t *testing.T) {
		src := newFakeSource("score")
		for i := range 3000 {
			src.add(mkRun(fmt.Sprintf("old-%04d", i), "score", orchestrator.StateCompleted, 25*time.Hour+time.Duration(i)*time.Second))
		}
		src.add(mkRun("new", "score", orchestrator.StateRunning, time.Hour))
		before := src.lists.Load()
		res := get(t, newPage(t, src), "/pipelines")
		if n := src.lists.Load() - before; n != 1 {
			t.Errorf("List called %d times for one page of pipelines, want 1 (the first page reaches past 24 h)", n)
		}
		if got := cells(res.body)["score"]["Last 24 h"]; got != "running 1" {
			t.Errorf("counts %q, want running 1", got)
		}
	})
}

func TestEndpointsView(t *testing.T) {
	src := newFakeSource("score", "train", "chat")
	src.pipelines["chat"].Endpoint = orchestrator.Endpoint{Endpoint: jobs.Endpoint{Name: "ep-chat", ScoringURI: "https://ep-chat.westeurope.inference.ml.azure.com/score"},
		Kind: orchestrator.EndpointOnline, MaxConcurrentRequests: 8}
	src.pipelines["score"].Endpoint = orchestrator.Endpoint{Endpoint: jobs.Endpoint{Name: "ep-a", ScoringURI: "https://ep-a.westeurope.inference.ml.azure.com/jobs"}, MaxRunningJobs: 2}
	src.pipelines["train"].Endpoint = orchestrator.Endpoint{Endpoint: jobs.Endpoint{Name: "ep-b", ScoringURI: "https://ep-b.westeurope.inference.ml.azure.com/jobs"}}
	for i, st := range []orchestrator.State{orchestrator.StateRunning, orchestrator.StateSubmitted, orchestrator.StateCompleted} {
		r := mkRun(fmt.Sprintf("a%d", i), "score", st, time.Duration(i+1)*time.Minute)
		r.Endpoint = "ep-a"
		src.add(r)
	}
	cells := func(body string) map[string]map[string]string {
		out := map[string]map[string]string{}
		for _, tr := range findAll(parse(t, body), tag("tr")) {
			name, ok := attr(tr, "data-endpoint")
			if !ok {
				continue
			}
			out[name] = map[string]string{}
			for _, c := range findAll(tr, func(n *html.Node) bool { _, ok := attr(n, "data-label"); return ok }) {
				l, _ := attr(c, "data-label")
				out[name][l] = text(c)
			}
		}
		return out
	}

	t.Run("from the orchestrator", func(t *testing.T) {
		until := time.Now().Add(42 * time.Second)
		p := newPage(t, src, func(o *Options) {
			o.Endpoints = func(context.Context) ([]EndpointStatus, error) {
				return []EndpointStatus{
					{Name: "ep-a", RunningJobs: 2, MaxRunningJobs: 2, PollBudget: 20, PollBudgetInUse: 5},
					{Name: "ep-b", RunningJobs: 1, PausedUntil: until, PauseReason: "429 Too Many Requests, Retry-After 42s", PollBudget: 20, PollBudgetInUse: -1},
				}, nil
			}
		})
		res := get(t, p, "/endpoints")
		checkAccessible(t, res.body)
		got := cells(res.body)
		want := map[string]map[string]string{
			"ep-a": {"Endpoint": "ep-a ep-a.westeurope.inference.ml.azure.com pipelines: score", "Running jobs": "2 of 2 at the limit",
				"Paused": "not paused", "Poll budget in use": "5 of 20 requests/s (25%)"},
			"ep-b": {"Endpoint": "ep-b ep-b.westeurope.inference.ml.azure.com pipelines: train", "Running jobs": "1 (no limit)",
				"Paused": got["ep-b"]["Paused"], "Poll budget in use": "not known (budget 20/s)"},
			"ep-chat": {"Endpoint": "ep-chat online ep-chat.westeurope.inference.ml.azure.com pipelines: chat",
				"Running jobs": "no jobs (answers each request); at most 8 requests at once across replicas",
				"Paused":       "not reported", "Poll budget in use": "not reported"},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("endpoints (-want +got):\n%s", diff)
		}
		if p := got["ep-b"]["Paused"]; !strings.HasPrefix(p, "paused until ") || !strings.Contains(p, "(in 4") || !strings.HasSuffix(p, "429 Too Many Requests, Retry-After 42s") {
			t.Errorf("ep-b paused %q, want paused until … (in 4…s) with the reason", p)
		}
	})

	t.Run("the orchestrator's answer fails", func(t *testing.T) {
		p := newPage(t, src, func(o *Options) {
			o.Endpoints = func(context.Context) ([]EndpointStatus, error) { return nil, errBoom }
		})
		res := get(t, p, "/endpoints")
		if res.status != http.StatusServiceUnavailable || !strings.Contains(res.body, "could not be read: boom") {
			t.Errorf("status %d; want 503 with the error", res.status)
		}
	})

	t.Run("replicas and config drift", func(t *testing.T) {
		at := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
		p := newPage(t, src, func(o *Options) {
			o.Replicas = func() orchestrator.ReplicaList {
				return orchestrator.ReplicaList{ConfigDrift: true, Drift: "live replicas run different pipelines files: config aaaa on r1; config bbbb on r2",
					Replicas: []orchestrator.ReplicaInfo{
						{ID: "r1", Host: "vm1", Version: "1.2.0", ConfigHash: "aaaa", Started: at, Heartbeat: at, Self: true},
						{ID: "r2", Host: "<script>alert(1)</script>", Version: "1.3.0", ConfigHash: "bbbb", Started: at, Heartbeat: at},
					}}
			}
		})
		res := get(t, p, "/endpoints")
		checkAccessible(t, res.body)
		doc := parse(t, res.body)
		var ids []string
		for _, tr := range findAll(doc, tag("tr")) {
			if id, ok := attr(tr, "data-replica"); ok {
				ids = append(ids, id+": "+text(tr))
			}
		}
		want := []string{"r1: r1 this one vm1 1.2.0 aaaa 2026-12-04 10:00:00 UTC 2026-12-04 10:00:00 UTC",
			"r2: r2 <script>alert(1)</script> 1.3.0 bbbb 2026-12-04 10:00:00 UTC 2026-12-04 10:00:00 UTC"}
		if diff := cmp.Diff(want, ids); diff != "" {
			t.Errorf("replica rows (-want +got):\n%s", diff)
		}
		if len(findAll(doc, tag("script"))) != len(findAll(parse(t, get(t, newPage(t, src), "/endpoints").body), tag("script"))) {
			t.Errorf("a replica's host name became a script element")
		}
		if !strings.Contains(res.body, "Config drift: live replicas run different pipelines files") {
			t.Errorf("no drift warning on the endpoints page")
		}
	})

	t.Run("not wired: counted from the index", func(t *testing.T) {
		res := get(t, newPage(t, src), "/endpoints")
		got := cells(res.body)
		want := map[string]map[string]string{
			"ep-a": {"Endpoint": "ep-a ep-a.westeurope.inference.ml.azure.com pipelines: score", "Running jobs": "2 of 2 at the limit",
				"Paused": "not available", "Poll budget in use": "not available"},
			"ep-b": {"Endpoint": "ep-b ep-b.westeurope.inference.ml.azure.com pipelines: train", "Running jobs": "0 (no limit)",
				"Paused": "not available", "Poll budget in use": "not available"},
			"ep-chat": {"Endpoint": "ep-chat online ep-chat.westeurope.inference.ml.azure.com pipelines: chat",
				"Running jobs": "no jobs (answers each request); at most 8 requests at once across replicas",
				"Paused":       "not available", "Poll budget in use": "not available"},
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("endpoints (-want +got):\n%s", diff)
		}
	})
}

// lockedBuffer collects log output from handlers running concurrently.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestTokenRequired(t *testing.T) {
	const token = "s3cret-api-token-value"
	src := newFakeSource("score")
	r := detailRun()
	src.add(r)
	src.getErr = nil
	logs := &lockedBuffer{}
	p := newPage(t, src, func(o *Options) {
		o.Token = token
		o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
		o.Endpoints = func(context.Context) ([]EndpointStatus, error) { return nil, errBoom } // logs an error
	})
	// Run data that must not appear without the token.
	secrets := []string{r.ID, "d1.csv", "job-2", "out of memory", "score"}
	var bodies []string

	for _, path := range []string{"/", "/runs/d1", "/pipelines", "/endpoints", "/?pipeline=score"} {
		t.Run("shell "+path, func(t *testing.T) {
			res := get(t, p, path)
			bodies = append(bodies, res.body)
			if res.status != 200 {
				t.Fatalf("status %d, want 200 (the shell)", res.status)
			}
			if !strings.Contains(res.body, `id="token-form"`) || !strings.Contains(res.body, `data-token-required="true"`) {
				t.Errorf("the shell has no token form")
			}
			main := text(findAll(parse(t, res.body), tag("main"))[0])
			for _, s := range secrets {
				if strings.Contains(main, s) || strings.Contains(res.body, "data-run-id") {
					t.Errorf("the shell of %s shows %q without the token", path, s)
				}
			}
			checkAccessible(t, res.body)
		})
		t.Run("fragment without token "+path, func(t *testing.T) {
			res := get(t, p, path, "X-Batchd-Fragment", "1")
			bodies = append(bodies, res.body)
			if res.status != http.StatusUnauthorized {
				t.Errorf("status %d, want 401", res.status)
			}
			for _, s := range secrets[:4] {
				if strings.Contains(res.body, s) {
					t.Errorf("401 answer shows %q", s)
				}
			}
		})
		t.Run("wrong token "+path, func(t *testing.T) {
			for _, auth := range []string{"Bearer nope", "Basic " + token, "Bearer " + token + "x", token} {
				res := get(t, p, path, "Authorization", auth, "X-Batchd-Fragment", "1")
				bodies = append(bodies, res.body)
				if res.status != http.StatusUnauthorized {
					t.Errorf("Authorization %q: status %d, want 401", auth, res.status)
				}
			}
		})
		t.Run("right token "+path, func(t *testing.T) {
			res := get(t, p, path, "Authorization", "Bearer "+token, "X-Batchd-Fragment", "1")
			bodies = append(bodies, res.body)
			if res.status != 200 && !(path == "/endpoints" && res.status == http.StatusServiceUnavailable) {
				t.Errorf("status %d, want 200", res.status)
			}
			if strings.Contains(res.body, "<html") {
				t.Errorf("a fragment request got the whole page")
			}
			if path == "/" && !strings.Contains(res.body, `data-run-id="d1"`) {
				t.Errorf("the runs fragment lacks the run")
			}
			if path == "/runs/d1" && !strings.Contains(res.body, "out of memory") {
				t.Errorf("the run fragment lacks the run's error")
			}
			full := get(t, p, path, "Authorization", "Bearer "+token)
			bodies = append(bodies, full.body)
			if !strings.Contains(full.body, "<html") || strings.Contains(full.body, `id="token-form"`) {
				t.Errorf("a page request with the token did not get the whole page")
			}
		})
	}

	t.Run("events", func(t *testing.T) {
		for _, auth := range []string{"", "Bearer nope"} {
			res := get(t, p, "/ui/events", "Authorization", auth)
			if res.status != http.StatusUnauthorized {
				t.Errorf("events with Authorization %q: status %d, want 401", auth, res.status)
			}
		}
	})

	t.Run("static assets need no token", func(t *testing.T) {
		for _, f := range []string{"/ui/static/app.js", "/ui/static/app.css"} {
			if res := get(t, p, f); res.status != 200 {
				t.Errorf("GET %s: status %d, want 200", f, res.status)
			}
		}
	})

	t.Run("the token appears nowhere", func(t *testing.T) {
		for _, b := range bodies {
			if strings.Contains(b, token) {
				t.Fatalf("a response holds the token:\n%s", b)
			}
		}
		if logs.String() == "" {
			t.Fatalf("nothing was logged; the check below would prove nothing")
		}
		if strings.Contains(logs.String(), token) {
			t.Errorf("the logs hold the token:\n%s", logs.String())
		}
	})
}

func TestStaticAndHeaders(t *testing.T) {
	p := newPage(t, newFakeSource("score"))
	page := get(t, p, "/")
	for h, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"X-Content-Type-Options": "nosniff",
		"Cache-Control":          "no-store",
	} {
		if got := page.header.Get(h); got != want {
			t.Errorf("%s: %q, want %q", h, got, want)
		}
	}
	if csp := page.header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q, want script-src 'self' and nothing inline", csp)
	}
	m := regexp.MustCompile(`src="(/ui/static/app\.js\?v=[0-9a-f]+)"`).FindStringSubmatch(page.body)
	if m == nil {
		t.Fatalf("the page does not load a versioned app.js:\n%s", page.body)
	}
	js := get(t, p, m[1])
	if js.status != 200 || !strings.Contains(js.header.Get("Content-Type"), "javascript") ||
		!strings.Contains(js.header.Get("Cache-Control"), "immutable") || !strings.Contains(js.body, "TOKEN_KEY") {
		t.Errorf("GET %s: status %d, type %q, cache %q", m[1], js.status, js.header.Get("Content-Type"), js.header.Get("Cache-Control"))
	}
	css := get(t, p, "/ui/static/app.css")
	if css.status != 200 || !strings.HasPrefix(css.header.Get("Content-Type"), "text/css") || css.header.Get("Cache-Control") != "no-cache" {
		t.Errorf("GET app.css: status %d, type %q, cache %q", css.status, css.header.Get("Content-Type"), css.header.Get("Cache-Control"))
	}
	for _, path := range []string{"/nope", "/runs", "/ui/static/", "/ui/static/nope.js"} {
		if res := get(t, p, path); res.status != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", path, res.status)
		}
	}
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("x"))
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, req)
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /: status %d, want 405", rec.Code)
	}
	// No external resource anywhere.
	for _, path := range []string{"/", "/pipelines", "/endpoints"} {
		body := get(t, p, path).body
		if regexp.MustCompile(`(src|href)="(https?:)?//`).MatchString(body) {
			t.Errorf("%s refers to an external resource", path)
		}
	}
	if _, err := io.ReadAll(strings.NewReader(js.body)); err != nil {
		t.Fatal(err)
	}
}

func TestNewNeedsSource(t *testing.T) {
	if _, err := New(Options{}); err == nil {
		t.Errorf("New without a Source: nil error, want one")
	}
}
