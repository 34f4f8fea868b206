package jobstest_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const body = `{"properties":{"InputData":{"d":{"JobInputType":"UriFile","Uri":"https://a.blob.core.windows.net/c/x.csv"}}}}`

type answer struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (a answer) errorCode() string {
	e, _ := a.body["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

func (a answer) errorMessage() string {
	e, _ := a.body["error"].(map[string]any)
	msg, _ := e["message"].(string)
	return msg
}

// call sends one request and decodes the JSON answer.
func call(t *testing.T, sim *jobstest.Sim, method, u, token, reqBody string, header map[string]string) answer {
	t.Helper()
	var rd io.Reader
	if reqBody != "" {
		rd = strings.NewReader(reqBody)
	}
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := sim.HTTPClient().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(raw)}
	_ = json.Unmarshal(raw, &a.body)
	return a
}

func armURL(sim *jobstest.Sim, suffix string) string {
	ws := sim.Workspace()
	return sim.ARMEndpoint() + "/subscriptions/" + ws.Subscription + "/resourceGroups/" + ws.ResourceGroup +
		"/providers/Microsoft.MachineLearningServices/workspaces/" + ws.Name + "/jobs" + suffix
}

func TestBearerTokenRules(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	ml := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	mgmt := sim.Token(jobstest.AudienceARM, sim.Tenant(), "app", time.Hour)
	expired := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", -time.Minute)
	forged := ml[:strings.LastIndex(ml, ".")+1] + "AAAA" + ml[strings.LastIndex(ml, ".")+5:]
	sim.DenyIdentity("denied-app")
	denied := sim.Token(jobstest.AudienceML, sim.Tenant(), "denied-app", time.Hour)
	deniedARM := sim.Token(jobstest.AudienceARM, sim.Tenant(), "denied-app", time.Hour)

	create, list := sim.ScoringURI("ep"), armURL(sim, "?api-version=2024-04-01")
	tests := []struct {
		name       string
		method, u  string
		token      string
		wantStatus int
		wantCode   string
		wantInMsg  string
	}{
		{"ml token creates a job", "POST", create, ml, 200, "", ""},
		{"management token on the endpoint", "POST", create, mgmt, 401, "InvalidAuthenticationTokenAudience", "'https://management.azure.com'"},
		{"ml token on ARM", "GET", list, ml, 401, "InvalidAuthenticationTokenAudience", "'https://ml.azure.com'"},
		{"management token on ARM", "GET", list, mgmt, 200, "", ""},
		{"no token", "POST", create, "", 401, "AuthenticationFailed", "header is missing"},
		{"expired token", "POST", create, expired, 401, "ExpiredAuthenticationToken", "earlier than current"},
		{"forged token", "POST", create, forged, 401, "InvalidAuthenticationToken", "invalid"},
		{"not a JWT", "POST", create, "opaque", 401, "InvalidAuthenticationToken", "invalid"},
		{"denied identity on the endpoint", "POST", create, denied, 403, "AuthorizationFailed", jobstest.ActionCreate},
		{"denied identity on ARM", "GET", list, deniedARM, 403, "AuthorizationFailed", jobstest.ActionARMRead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := call(t, sim, tt.method, tt.u, tt.token, body, nil)
			if a.status != tt.wantStatus || a.errorCode() != tt.wantCode || !strings.Contains(a.errorMessage(), tt.wantInMsg) {
				t.Errorf("answer %d %s, want %d %s mentioning %q", a.status, a.raw, tt.wantStatus, tt.wantCode, tt.wantInMsg)
			}
			if tt.wantStatus == 401 && !strings.HasPrefix(a.header.Get("WWW-Authenticate"), `Bearer authorization_uri=`) {
				t.Errorf("401 without a Bearer WWW-Authenticate challenge: %q", a.header.Get("WWW-Authenticate"))
			}
		})
	}
	if n := sim.JobCount(); n != 1 {
		t.Errorf("jobs = %d, want only the one created with an ml token", n)
	}
}

func TestManagedIdentityEndpoint(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{TokenLifetime: 10 * time.Minute})
	sim.SetIdentityMissing("gone", true)
	get := func(query, header string) answer {
		req, _ := http.NewRequest("GET", sim.IdentityEndpoint()+"?"+query, nil)
		if header != "" {
			req.Header.Set("X-IDENTITY-HEADER", header)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		a := answer{status: resp.StatusCode, raw: string(raw)}
		_ = json.Unmarshal(raw, &a.body)
		return a
	}
	q := "api-version=2019-08-01&resource=" + url.QueryEscape("https://ml.azure.com")
	tests := []struct {
		name, query, header string
		wantStatus          int
	}{
		{"system-assigned", q, sim.IdentityHeader(), 200},
		{"user-assigned", q + "&client_id=uami-1", sim.IdentityHeader(), 200},
		{"wrong header", q, "wrong", 401},
		{"no header", q, "", 401},
		{"no resource", "api-version=2019-08-01", sim.IdentityHeader(), 400},
		{"identity not attached", q + "&client_id=gone", sim.IdentityHeader(), 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := get(tt.query, tt.header)
			if a.status != tt.wantStatus {
				t.Fatalf("status %d (%s), want %d", a.status, a.raw, tt.wantStatus)
			}
			if a.status != 200 {
				return
			}
			tok, _ := a.body["access_token"].(string)
			if strings.Count(tok, ".") != 2 || a.body["resource"] != "https://ml.azure.com" || a.body["expires_on"] == "" {
				t.Errorf("answer %s: want a JWT-shaped token, the resource and expires_on", a.raw)
			}
			// The token works where its audience says.
			if got := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil); got.status != 200 {
				t.Errorf("POST with the managed identity token: %d %s", got.status, got.raw)
			}
		})
	}
	if got := sim.Count(jobstest.RouteToken); got != int64(len(tests)) {
		t.Errorf("token route count = %d, want %d (every request counted)", got, len(tests))
	}
	if got := len(sim.TokenRequests()); got != 2 {
		t.Errorf("tokens issued = %d, want 2", got)
	}
}

func TestAuthority(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{Tenants: []string{"tenant-a"}, TokenLifetime: 30 * time.Minute})
	disc := call(t, sim, "GET", sim.URL()+"/tenant-a/v2.0/.well-known/openid-configuration", "", "", nil)
	issuer, _ := disc.body["issuer"].(string)
	if disc.status != 200 || !strings.HasPrefix(issuer, sim.URL()+"/") || disc.body["token_endpoint"] != sim.URL()+"/tenant-a/oauth2/v2.0/token" {
		t.Errorf("openid-configuration = %d %s", disc.status, disc.raw)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "client_id": {"app"}, "client_secret": {"s"},
		"scope": {"https://management.azure.com/.default openid offline_access profile"}}
	post := func(tenant string, f url.Values) answer {
		return call(t, sim, "POST", sim.URL()+"/"+tenant+"/oauth2/v2.0/token", "", f.Encode(),
			map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	}
	a := post("tenant-a", form)
	if a.status != 200 || a.body["expires_in"] != float64(1800) {
		t.Fatalf("token answer %d %s", a.status, a.raw)
	}
	tok := a.body["access_token"].(string)
	if got := call(t, sim, "GET", armURL(sim, "?api-version=2024-04-01"), tok, "", nil); got.status != 200 {
		t.Errorf("ARM list with the authority's management token: %d %s", got.status, got.raw)
	}
	bad := url.Values{"grant_type": {"password"}, "client_id": {"app"}, "client_secret": {"s"}, "scope": {"https://ml.azure.com/.default"}}
	for name, tc := range map[string]struct {
		tenant string
		form   url.Values
		want   string
	}{
		"unknown tenant":      {"tenant-b", form, "AADSTS90002"},
		"unsupported grant":   {"tenant-a", bad, "AADSTS70003"},
		"no client secret":    {"tenant-a", url.Values{"grant_type": {"client_credentials"}, "client_id": {"app"}, "scope": {"x/.default"}}, "AADSTS7000216"},
		"malformed assertion": {"tenant-a", url.Values{"grant_type": {"client_credentials"}, "client_id": {"app"}, "client_assertion": {"nope"}, "scope": {"x/.default"}}, "AADSTS700027"},
	} {
		t.Run(name, func(t *testing.T) {
			a := post(tc.tenant, tc.form)
			if a.status < 400 || !strings.Contains(a.raw, tc.want) {
				t.Errorf("answer %d %s, want an error with %s", a.status, a.raw, tc.want)
			}
		})
	}
}

func TestLifecycleByWallClock(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{Lifecycle: jobstest.Timed(40 * time.Millisecond)})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil)
	name, _ := a.body["name"].(string)
	var seen []jobs.Status
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) == 0 || seen[len(seen)-1] != jobs.StatusCompleted {
		if time.Now().After(deadline) {
			t.Fatalf("job never completed; saw %v", seen)
		}
		g := call(t, sim, "GET", sim.ScoringURI("ep")+"/"+name, tok, "", nil)
		st := jobs.Status(g.body["properties"].(map[string]any)["status"].(string))
		if len(seen) == 0 || seen[len(seen)-1] != st {
			seen = append(seen, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	order := map[jobs.Status]int{"NotStarted": 0, "Queued": 1, "Running": 2, "Finalizing": 3, "Completed": 4}
	for i := 1; i < len(seen); i++ {
		if order[seen[i]] <= order[seen[i-1]] {
			t.Errorf("statuses went backwards: %v", seen)
		}
	}
	if view, _ := sim.Job(name); time.Since(view.CreatedAt) < 160*time.Millisecond {
		t.Errorf("completed %v after creation, before the 4×40ms the lifecycle takes", time.Since(view.CreatedAt))
	}
}

func TestOutcomeHook(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{Outcome: func(v jobstest.JobView) jobstest.Lifecycle {
		if strings.Contains(v.Inputs["d"].URI, "bad") {
			return jobstest.Lifecycle{Steps: []jobstest.Step{{Status: jobs.StatusFailed}}, ErrorCode: "DataError", ErrorMessage: "input is corrupt"}
		}
		return jobstest.Lifecycle{}
	}})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	good := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil)
	bad := call(t, sim, "POST", sim.ScoringURI("ep"), tok, strings.Replace(body, "x.csv", "bad.csv", 1), nil)
	status := func(a answer) string { return a.body["properties"].(map[string]any)["status"].(string) }
	if status(good) != "NotStarted" || status(bad) != "Failed" {
		t.Errorf("statuses %s, %s: want NotStarted (default lifecycle) and Failed", status(good), status(bad))
	}
	if e, _ := bad.body["error"].(map[string]any); e["code"] != "DataError" || e["message"] != "input is corrupt" {
		t.Errorf("failed job error = %v, want DataError: input is corrupt", bad.body["error"])
	}
}

func TestFaultQueueAndRates(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{Seed: 42})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 503, RetryAfter: 1500 * time.Millisecond}, jobstest.Fault{Status: 429, Body: `{"custom":true}`})
	first := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil)
	if first.status != 503 || first.header.Get("Retry-After") != "2" || first.header.Get("retry-after-ms") != "1500" {
		t.Errorf("first answer %d %v, want 503 with Retry-After 2 and retry-after-ms 1500", first.status, first.header)
	}
	if sim.PendingFaults(jobstest.RouteCreate) != 1 {
		t.Errorf("pending faults = %d, want 1", sim.PendingFaults(jobstest.RouteCreate))
	}
	if second := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil); second.status != 429 || second.raw != `{"custom":true}` {
		t.Errorf("second answer %d %s, want 429 with the custom body", second.status, second.raw)
	}
	if third := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil); third.status != 200 {
		t.Errorf("third answer %d, want 200 once the queue is empty", third.status)
	}

	pattern := func(seed uint64) []int {
		s := jobstest.New(t, jobstest.Options{Seed: seed})
		tk := s.Token(jobstest.AudienceML, s.Tenant(), "app", time.Hour)
		s.SetFaultRate(jobstest.RouteCreate, 0.5, jobstest.Fault{Status: 500}, jobstest.Fault{Status: 503})
		var out []int
		for range 40 {
			out = append(out, call(t, s, "POST", s.ScoringURI("ep"), tk, body, nil).status)
		}
		return out
	}
	p1, p2 := pattern(7), pattern(7)
	if diff := cmp.Diff(p1, p2); diff != "" {
		t.Errorf("same seed, different fault patterns:\n%s", diff)
	}
	faulted := 0
	for _, s := range p1 {
		if s != 200 {
			faulted++
		}
	}
	if faulted < 8 || faulted > 32 {
		t.Errorf("%d of 40 requests faulted at rate 0.5", faulted)
	}
	sim.SetFaultRate(jobstest.RouteCreate, 1, jobstest.Fault{Status: 500})
	if a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil); a.status != 500 {
		t.Errorf("rate 1: %d, want 500", a.status)
	}
	sim.ClearFaults()
	if a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil); a.status != 200 {
		t.Errorf("after ClearFaults: %d, want 200", a.status)
	}
}

func TestResets(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	post := func() error {
		req, _ := http.NewRequest("POST", sim.ScoringURI("ep"), strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := sim.HTTPClient().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	sim.Inject(jobstest.RouteCreate, jobstest.Fault{Reset: jobstest.ResetBefore})
	if err := post(); err == nil || sim.JobCount() != 0 {
		t.Errorf("ResetBefore: err %v, %d jobs; want an error and no job", err, sim.JobCount())
	}
	sim.Inject(jobstest.RouteCreate, jobstest.Fault{Reset: jobstest.ResetAfter})
	if err := post(); err == nil || sim.JobCount() != 1 {
		t.Errorf("ResetAfter: err %v, %d jobs; want an error and one job", err, sim.JobCount())
	}
	if n := sim.Count(jobstest.RouteCreate); n != 2 {
		t.Errorf("create count = %d, want 2", n)
	}
}

// A status fault answers instead of the handler; with AfterHandling the
// handler runs first, so a create makes its job and the client still sees
// the gateway's error.
func TestStatusAfterHandling(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 504})
	if a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil); a.status != 504 || sim.JobCount() != 0 {
		t.Errorf("504 before handling: answer %d, %d jobs; want 504 and no job", a.status, sim.JobCount())
	}
	sim.Inject(jobstest.RouteCreate, jobstest.Fault{Status: 504, AfterHandling: true})
	a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil)
	if a.status != 504 || a.errorCode() != "InternalServerError" || sim.JobCount() != 1 {
		t.Errorf("504 after handling: answer %d %q, %d jobs; want 504 InternalServerError and one job", a.status, a.errorCode(), sim.JobCount())
	}
}

func TestARM(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{ListPageSize: 2, Lifecycle: jobstest.Stuck(jobs.StatusRunning)})
	ml := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	arm := sim.Token(jobstest.AudienceARM, sim.Tenant(), "app", time.Hour)
	var names []string
	for range 5 {
		a := call(t, sim, "POST", sim.ScoringURI("ep"), ml, body, map[string]string{"azureml-model-deployment": "blue"})
		names = append(names, a.body["name"].(string))
	}
	// Newest first, two per page, nextLink until the end.
	var listed []string
	next := armURL(sim, "?api-version=2024-04-01")
	for pages := 0; next != ""; pages++ {
		if pages > 5 {
			t.Fatal("nextLink never ends")
		}
		a := call(t, sim, "GET", next, arm, "", nil)
		for _, v := range a.body["value"].([]any) {
			listed = append(listed, v.(map[string]any)["name"].(string))
		}
		next, _ = a.body["nextLink"].(string)
	}
	want := []string{names[4], names[3], names[2], names[1], names[0]}
	if diff := cmp.Diff(want, listed); diff != "" {
		t.Errorf("listed (-want +got):\n%s", diff)
	}

	g := call(t, sim, "GET", armURL(sim, "/"+names[0]+"?api-version=2024-04-01"), arm, "", nil)
	props := g.body["properties"].(map[string]any)
	studio := props["services"].(map[string]any)["Studio"].(map[string]any)["endpoint"].(string)
	input := props["inputs"].(map[string]any)["d"].(map[string]any)
	if props["status"] != "Running" || !strings.Contains(studio, names[0]) || input["jobInputType"] != "uri_file" ||
		g.body["systemData"].(map[string]any)["createdAt"] == "" {
		t.Errorf("ARM job = %s", g.raw)
	}
	if c := call(t, sim, "POST", armURL(sim, "/"+names[0]+"/cancel?api-version=2024-04-01"), arm, "", nil); c.status != 202 {
		t.Errorf("cancel = %d %s, want 202", c.status, c.raw)
	}
	if v, _ := sim.Job(names[0]); v.Status != jobs.StatusCancelRequested {
		t.Errorf("after cancel, status %s, want CancelRequested", v.Status)
	}

	for name, u := range map[string]string{
		"no api-version":  armURL(sim, ""),
		"other workspace": strings.Replace(armURL(sim, "?api-version=2024-04-01"), "/workspaces/"+sim.Workspace().Name, "/workspaces/other", 1),
		"unknown job":     armURL(sim, "/batchjob-nope?api-version=2024-04-01"),
	} {
		if a := call(t, sim, "GET", u, arm, "", nil); a.status < 400 || a.errorCode() == "" {
			t.Errorf("%s: %d %s, want an ARM error", name, a.status, a.raw)
		}
	}
}

func TestCreateValidation(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	for name, b := range map[string]string{
		"not JSON":       `{`,
		"unknown field":  `{"properties":{"InputData":{"d":{"JobInputType":"UriFile","Uri":"x"}},"dataset":{}}}`,
		"no input":       `{"properties":{}}`,
		"no uri":         `{"properties":{"InputData":{"d":{"JobInputType":"UriFile"}}}}`,
		"bad output":     `{"properties":{"InputData":{"d":{"JobInputType":"UriFile","Uri":"x"}},"OutputData":{"o":{"JobOutputType":"MLTable","Uri":"y"}}}}`,
		"bad timeout":    `{"properties":{"InputData":{"d":{"JobInputType":"UriFile","Uri":"x"}},"retrySettings":{"timeout":"30s"}}}`,
		"zero instances": `{"properties":{"InputData":{"d":{"JobInputType":"UriFile","Uri":"x"}},"compute":{"instanceCount":0}}}`,
	} {
		if a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, b, nil); a.status != 400 || a.errorCode() != "UserError" {
			t.Errorf("%s: %d %s, want 400 UserError", name, a.status, a.raw)
		}
	}
	camel := `{"properties":{"inputData":{"d":{"jobInputType":"UriFile","uri":"x"}}}}`
	if a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, camel, nil); a.status != 200 {
		t.Errorf("camelCase body: %d %s, want 200 (keys are case-insensitive)", a.status, a.raw)
	}
	if err := sim.AddEndpoint("a/b", jobstest.EndpointOptions{}); err == nil {
		t.Error("AddEndpoint accepted a name with a slash")
	}
	if err := sim.AddEndpoint("x", jobstest.EndpointOptions{Kind: "online"}); err == nil {
		t.Error("AddEndpoint accepted an unknown kind")
	}
}

func TestCAForSubprocesses(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := sim.WriteCA(path); err != nil {
		t.Fatal(err)
	}
	pemData, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatal("WriteCA wrote no certificate")
	}
	conn, err := tls.Dial("tcp", strings.TrimPrefix(sim.URL(), "https://"), &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("TLS with the written CA: %v", err)
	}
	_ = conn.Close()
}

// Close returns promptly even with a request held by a long delay, and
// leaves no goroutine behind (goleak checks at exit).
func TestCloseCutsDelayedRequests(t *testing.T) {
	sim, err := jobstest.Start(jobstest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sim.Inject(jobstest.RouteCreate, jobstest.Fault{Delay: time.Hour})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequest("POST", sim.ScoringURI("ep"), strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := sim.HTTPClient().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	deadline := time.Now().Add(5 * time.Second)
	for sim.Count(jobstest.RouteCreate) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the request never arrived")
		}
		time.Sleep(time.Millisecond)
	}
	start := time.Now()
	_ = sim.Close()
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Close took %v with a delayed request in flight", took)
	}
	if err := <-done; err == nil {
		t.Error("the delayed request got an answer after Close")
	}
	if sim.JobCount() != 0 {
		t.Error("a job was created after Close")
	}
}

func TestConcurrentUse(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil)
				if a.status != 200 {
					t.Errorf("POST: %d", a.status)
					return
				}
				call(t, sim, "GET", sim.ScoringURI("ep")+"/"+a.body["name"].(string), tok, "", nil)
				_ = sim.Jobs()
			}
		})
	}
	wg.Wait()
	seen := map[string]bool{}
	for i, v := range sim.Jobs() {
		if seen[v.Name] || v.Seq == 0 {
			t.Errorf("job %d: duplicate name or no sequence: %+v", i, v)
		}
		seen[v.Name] = true
	}
	if len(seen) != 200 || sim.Count(jobstest.RouteCreate) != 200 || sim.Count(jobstest.RouteGet) != 200 {
		t.Errorf("%d jobs, counts %v; want 200 jobs, 200 creates and 200 gets", len(seen), sim.Counts())
	}
}

// PeakRunning counts jobs created and not yet seen finished: two created,
// one polled to its end, a third created: the peak is 2, not 3.
func TestPeakRunning(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{Lifecycle: jobstest.Lifecycle{Steps: []jobstest.Step{{Status: jobs.StatusRunning, Polls: 1}, {Status: jobs.StatusCompleted}}}})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	post := func() string {
		a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil)
		name, _ := a.body["name"].(string)
		return name
	}
	first := post()
	post()
	for range 2 { // Running, then Completed
		call(t, sim, "GET", sim.ScoringURI("ep")+"/"+first, tok, "", nil)
	}
	if v, _ := sim.Job(first); v.Status != jobs.StatusCompleted {
		t.Fatalf("first job %s, want Completed", v.Status)
	}
	post()
	if got := sim.PeakRunning("ep"); got != 2 {
		t.Errorf("PeakRunning = %d, want 2", got)
	}
	if got := sim.PeakRunning("other"); got != 0 {
		t.Errorf("PeakRunning(other) = %d, want 0", got)
	}
}

// Gets counts GET requests for a job (data plane and ARM); Polls also
// counts the list pages that showed it.
func TestJobGetsAndPolls(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{Lifecycle: jobstest.Stuck(jobs.StatusRunning)})
	tok := sim.Token(jobstest.AudienceML, sim.Tenant(), "app", time.Hour)
	mgmt := sim.Token(jobstest.AudienceARM, sim.Tenant(), "app", time.Hour)
	a := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil)
	name, _ := a.body["name"].(string)
	call(t, sim, "GET", sim.ScoringURI("ep")+"/"+name, tok, "", nil)
	call(t, sim, "GET", armURL(sim, "/"+name+"?api-version=2024-04-01"), mgmt, "", nil)
	call(t, sim, "GET", armURL(sim, "?api-version=2024-04-01"), mgmt, "", nil)
	v, _ := sim.Job(name)
	if v.Gets != 2 || v.Polls != 3 {
		t.Errorf("Gets %d, Polls %d; want 2 GETs and 3 reads (the list's too)", v.Gets, v.Polls)
	}
}
