package jobstest_test

import (
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/jobs/online"
)

// The online endpoints' wire behaviour, with raw HTTP: what each auth mode
// accepts and refuses, the ARM actions' answers, key rotation, and 429s
// over the concurrency cap.
func TestOnlineEndpointWire(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	for name, mode := range map[string]string{"aad": online.AuthAADToken, "aml": online.AuthAMLToken, "key": online.AuthKey} {
		if err := sim.AddOnlineEndpoint(name, jobstest.OnlineOptions{AuthMode: mode}); err != nil {
			t.Fatal(err)
		}
	}
	ws := sim.Workspace()
	arm := sim.ARMEndpoint() + "/subscriptions/" + ws.Subscription + "/resourceGroups/" + ws.ResourceGroup +
		"/providers/Microsoft.MachineLearningServices/workspaces/" + ws.Name + "/onlineEndpoints/"
	mgmt := sim.Token(jobstest.AudienceARM, sim.Tenant(), "c", time.Hour)
	ml := sim.Token(jobstest.AudienceML, sim.Tenant(), "c", time.Hour)

	// aad_token: an ml.azure.com token; a management token is refused for
	// its audience.
	if a := call(t, sim, "POST", sim.OnlineScoringURI("aad"), ml, `{"x":1}`, nil); a.status != 200 || a.raw != `{"deployment":"blue","input":{"x":1}}` || a.header.Get("azureml-model-deployment") != "blue" {
		t.Errorf("aad with an ml token: %d %s", a.status, a.raw)
	}
	if a := call(t, sim, "POST", sim.OnlineScoringURI("aad"), mgmt, `{}`, nil); a.status != 401 || a.errorCode() != "InvalidAuthenticationTokenAudience" {
		t.Errorf("aad with a management token: %d %s", a.status, a.raw)
	}

	// aml_token: the token action answers the documented shape; the token
	// works for its endpoint only, and an Entra token is refused.
	tok := call(t, sim, "POST", arm+"aml/token?api-version=2024-04-01", mgmt, "", nil)
	exp, _ := tok.body["expiryTimeUtc"].(float64)
	ref, _ := tok.body["refreshAfterTimeUtc"].(float64)
	access, _ := tok.body["accessToken"].(string)
	if tok.status != 200 || access == "" || tok.body["tokenType"] != "Bearer" || exp < float64(time.Now().Add(59*time.Minute).Unix()) || ref >= exp {
		t.Fatalf("token action: %d %s", tok.status, tok.raw)
	}
	if a := call(t, sim, "POST", sim.OnlineScoringURI("aml"), access, `{}`, nil); a.status != 200 {
		t.Errorf("aml with its token: %d %s", a.status, a.raw)
	}
	if a := call(t, sim, "POST", sim.OnlineScoringURI("aml"), ml, `{}`, nil); a.status != 401 {
		t.Errorf("aml with an Entra token: %d", a.status)
	}
	if a := call(t, sim, "POST", arm+"aml/token?api-version=2024-04-01", ml, "", nil); a.status != 401 {
		t.Errorf("token action with an ml.azure.com token: %d, want 401", a.status)
	}
	if a := call(t, sim, "POST", arm+"key/token?api-version=2024-04-01", mgmt, "", nil); a.status != 400 {
		t.Errorf("token action on a key endpoint: %d, want 400", a.status)
	}

	// key: listKeys; both keys work; a rotated key stops working.
	keys := call(t, sim, "POST", arm+"key/listKeys?api-version=2024-04-01", mgmt, "", nil)
	primary, _ := keys.body["primaryKey"].(string)
	secondary, _ := keys.body["secondaryKey"].(string)
	if keys.status != 200 || primary == "" || secondary == "" || primary == secondary {
		t.Fatalf("listKeys: %d %s", keys.status, keys.raw)
	}
	for _, k := range []string{primary, secondary} {
		if a := call(t, sim, "POST", sim.OnlineScoringURI("key"), k, `{}`, nil); a.status != 200 {
			t.Errorf("key endpoint with a listed key: %d", a.status)
		}
	}
	sim.RotateKey("key", "primary")
	if a := call(t, sim, "POST", sim.OnlineScoringURI("key"), primary, `{}`, nil); a.status != 401 {
		t.Errorf("the old primary key after rotation: %d, want 401", a.status)
	}
	if sim.OnlineKeys("key").Primary == primary {
		t.Errorf("RotateKey did not change the primary key")
	}

	// A denied action is named in the 403.
	sim.DenyAction("c", jobstest.ActionListKeys)
	if a := call(t, sim, "POST", arm+"key/listKeys?api-version=2024-04-01", mgmt, "", nil); a.status != 403 || !strings.Contains(a.errorMessage(), jobstest.ActionListKeys) {
		t.Errorf("denied listKeys: %d %s", a.status, a.raw)
	}
	if got := sim.Count(jobstest.RouteListKeys); got != 2 {
		t.Errorf("listKeys count %d, want 2", got)
	}
}

// Over MaxConcurrent requests in flight: 429 with Retry-After and
// retry-after-ms; the requests under it are scored after Latency.
func TestOnlineEndpointConcurrency(t *testing.T) {
	sim := jobstest.New(t, jobstest.Options{})
	if err := sim.AddOnlineEndpoint("ep", jobstest.OnlineOptions{MaxConcurrent: 2, Latency: 300 * time.Millisecond, RetryAfter: 1500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	ml := sim.Token(jobstest.AudienceML, sim.Tenant(), "c", time.Hour)
	var wg sync.WaitGroup
	answers := make([]answer, 5)
	start := time.Now()
	for i := range answers {
		wg.Go(func() { answers[i] = call(t, sim, "POST", sim.OnlineScoringURI("ep"), ml, `{}`, nil) })
	}
	wg.Wait()
	ok, throttled := 0, 0
	for _, a := range answers {
		switch a.status {
		case http.StatusOK:
			ok++
		case http.StatusTooManyRequests:
			throttled++
			if a.header.Get("Retry-After") != "2" || a.header.Get("retry-after-ms") != "1500" {
				t.Errorf("429 headers %v", a.header)
			}
		}
	}
	if ok != 2 || throttled != 3 || sim.OnlineThrottled("ep") != 3 || sim.OnlinePeak("ep") < 3 {
		t.Errorf("ok %d, throttled %d (counted %d, peak %d); want 2, 3", ok, throttled, sim.OnlineThrottled("ep"), sim.OnlinePeak("ep"))
	}
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("answered in %s, before the latency of 300ms", d)
	}
}
