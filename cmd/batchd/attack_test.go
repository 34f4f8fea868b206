package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// TestAttacks runs each attack against a real batchd serve on loopback
// without an API token (the install script's default before it makes one):
// every attack is refused with its status, and afterwards the ledger holds
// only the one legitimate run.
func TestAttacks(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon as a process")
	}
	t.Parallel()
	p, _ := procWithSim(t, "attack", map[string]string{"BATCHD_WEBHOOK_SECRET": "attack-test-webhook-secret"})
	_, port, _ := strings.Cut(p.addr, ":")
	run := `{"key":"evil","fields":{"uri":"` + procInputURI("evil") + `"}}`
	var events []string
	for i := range 5001 {
		events = append(events, fmt.Sprintf(`{"id":"%d","eventType":"Microsoft.Storage.BlobCreated"}`, i))
	}
	tooMany := "[" + strings.Join(events, ",") + "]"

	attacks := []struct {
		name         string
		method, path string
		host         string
		hdr          map[string]string
		body         string
		want         int
	}{
		{name: "a page's form post (text/plain, no preflight) starts a run", method: "POST", path: "/api/v1/pipelines/crash/runs",
			hdr: map[string]string{"Content-Type": "text/plain"}, body: run, want: http.StatusUnsupportedMediaType},
		{name: "a form-encoded post starts a run", method: "POST", path: "/api/v1/pipelines/crash/runs",
			hdr: map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, body: run, want: http.StatusUnsupportedMediaType},
		{name: "a JSON post from another origin", method: "POST", path: "/api/v1/pipelines/crash/runs",
			hdr: map[string]string{"Content-Type": "application/json", "Origin": "https://evil.example"}, body: run, want: http.StatusForbidden},
		{name: "a JSON post from another port on localhost", method: "POST", path: "/api/v1/pipelines/crash/runs",
			hdr: map[string]string{"Content-Type": "application/json", "Origin": "http://127.0.0.1:1"}, body: run, want: http.StatusForbidden},
		{name: "a sandboxed page (Origin null) cancels", method: "POST", path: "/api/v1/runs/00000000000000000000000000000000/cancel",
			hdr: map[string]string{"Content-Type": "application/json", "Origin": "null"}, body: `{}`, want: http.StatusForbidden},
		{name: "a cross-site fetch reads the runs", method: "GET", path: "/api/v1/runs",
			hdr: map[string]string{"Sec-Fetch-Site": "cross-site"}, want: http.StatusForbidden},
		{name: "DNS rebinding reads the runs", method: "GET", path: "/api/v1/runs", host: "evil.example:" + port, want: http.StatusMisdirectedRequest},
		{name: "DNS rebinding reads the status page", method: "GET", path: "/", host: "evil.example:" + port, want: http.StatusMisdirectedRequest},
		{name: "DNS rebinding starts a run", method: "POST", path: "/api/v1/pipelines/crash/runs", host: "rebind.evil.example",
			hdr: map[string]string{"Content-Type": "application/json"}, body: run, want: http.StatusMisdirectedRequest},
		{name: "more events in one delivery than Event Grid sends", method: "POST", path: "/eventgrid?code=attack-test-webhook-secret",
			hdr: map[string]string{"Content-Type": "application/json"}, body: tooMany, want: http.StatusRequestEntityTooLarge},
		{name: "a delivery without the webhook secret", method: "POST", path: "/eventgrid",
			hdr: map[string]string{"Content-Type": "application/json"}, body: `[]`, want: http.StatusUnauthorized},
	}
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			req, err := http.NewRequest(a.method, p.url()+a.path, strings.NewReader(a.body))
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range a.hdr {
				req.Header.Set(k, v)
			}
			if a.host != "" {
				req.Host = a.host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != a.want {
				t.Errorf("status %d, want %d: %s", resp.StatusCode, a.want, b)
			}
		})
	}

	// What keeps working: a link to the status page from another site (a
	// top-level navigation shows the page to the user, never to the
	// linking site), the CLI, the page on loopback.
	nav, _ := http.NewRequest("GET", p.url()+"/", nil)
	nav.Header.Set("Sec-Fetch-Site", "cross-site")
	nav.Header.Set("Sec-Fetch-Mode", "navigate")
	resp, err := http.DefaultClient.Do(nav)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("a cross-site navigation to the status page: status %d, want 200", resp.StatusCode)
	}
	if code, out, errOut := runCLI(t, map[string]string{"BATCHD_URL": p.url()}, "pipelines", "run", "crash", "--field", "uri="+procInputURI("legit")); code != exitOK {
		t.Errorf("batchd pipelines run: exit %d\n%s%s", code, out, errOut)
	}
	for _, host := range []string{"", "localhost:" + port} {
		req, _ := http.NewRequest("GET", p.url()+"/", nil)
		if host != "" {
			req.Host = host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("the status page with Host %q: status %d, want 200", req.Host, resp.StatusCode)
		}
	}
	var runs []orchestrator.RunSummary
	procWaitFor(t, 10*time.Second, "the legitimate run in the ledger", func() bool {
		var err error
		runs, err = procListAll(p.url())
		return err == nil && len(runs) > 0
	})
	if len(runs) != 1 || runs[0].Key == "evil" {
		b, _ := json.Marshal(runs)
		t.Errorf("the ledger holds %d runs, want only the legitimate one: %s", len(runs), b)
	}
}
