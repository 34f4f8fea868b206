package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/jobs/online"
)

// scoreSim is invokeSim with online endpoints and a pipelines file naming
// them: "aad", "aml", "keys" (listKeys through ARM), "keyfile" (a key file),
// and a batch endpoint "batch".
func newScoreSim(t *testing.T, handler func(jobstest.OnlineRequest) (int, []byte)) *invokeSim {
	t.Helper()
	s := newInvokeSim(t, jobstest.Options{})
	for name, mode := range map[string]string{"aad": online.AuthAADToken, "aml": online.AuthAMLToken, "keys": online.AuthKey, "keyfile": online.AuthKey} {
		if err := s.sim.AddOnlineEndpoint(name, jobstest.OnlineOptions{AuthMode: mode, Deployments: []string{"blue", "green"}, Handler: handler}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "keyfile.keys")
	k := s.sim.OnlineKeys("keyfile")
	if err := os.WriteFile(keyFile, []byte(k.Primary+"\n"+k.Secondary+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ws := s.sim.Workspace()
	wsYAML := fmt.Sprintf("{subscription: %s, resource_group: %s, name: %s}", ws.Subscription, ws.ResourceGroup, ws.Name)
	var b strings.Builder
	b.WriteString("endpoints:\n")
	for _, name := range []string{"aad", "aml", "keys", "keyfile"} {
		fmt.Fprintf(&b, "  %s:\n    kind: online\n    uri: %s\n    timeout: 5s\n", name, s.sim.OnlineScoringURI(name))
		switch name {
		case "aml":
			fmt.Fprintf(&b, "    auth_mode: aml_token\n    workspace: %s\n", wsYAML)
		case "keys":
			fmt.Fprintf(&b, "    auth_mode: key\n    workspace: %s\n", wsYAML)
		case "keyfile":
			fmt.Fprintf(&b, "    auth_mode: key\n    key_file: %s\n", keyFile)
		}
	}
	fmt.Fprintf(&b, "  batch:\n    uri: %s\n", s.sim.ScoringURI("batch"))
	b.WriteString("pipelines:\n  p:\n    endpoint: aad\n    request: '{{ json .Fields }}'\n")
	pf := filepath.Join(dir, "pipelines.yaml")
	if err := os.WriteFile(pf, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	s.env["BATCHD_PIPELINES"] = pf
	return s
}

// Each auth mode through the CLI: the answer on stdout, status, latency
// and deployment on stderr, exit 0.
func TestScoreCLIAuthModes(t *testing.T) {
	s := newScoreSim(t, nil)
	for _, ep := range []string{"aad", "aml", "keys", "keyfile"} {
		t.Run(ep, func(t *testing.T) {
			code, out, errOut := s.run(t, false, "score", "--endpoint", ep, "--data", `{"text":"hi"}`, "--deployment", "green")
			if code != exitOK {
				t.Fatalf("exit %d, want 0\n%s", code, errOut)
			}
			if want := `{"deployment":"green","input":{"text":"hi"}}`; out != want {
				t.Errorf("stdout %q, want %q", out, want)
			}
			if !strings.Contains(errOut, "200 in ") || !strings.Contains(errOut, "from deployment green") {
				t.Errorf("stderr %q lacks the status and deployment", errOut)
			}
		})
	}
	if got := s.sim.Count(jobstest.RouteOnlineToken); got != 1 {
		t.Errorf("token actions = %d, want 1", got)
	}
	if got := s.sim.Count(jobstest.RouteListKeys); got != 1 {
		t.Errorf("listKeys = %d, want 1 (the key file endpoint needs none)", got)
	}
}

func TestScoreCLIData(t *testing.T) {
	s := newScoreSim(t, nil)
	f := filepath.Join(t.TempDir(), "req.json")
	if err := os.WriteFile(f, []byte(`{"from":"file"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := s.run(t, false, "score", "--endpoint", "aad", "--data", "@"+f); code != 0 || !strings.Contains(out, `"from":"file"`) {
		t.Errorf("--data @file: exit %d, stdout %q\n%s", code, out, errOut)
	}
	prev := scoreStdin
	scoreStdin = strings.NewReader(`{"from":"stdin"}`)
	t.Cleanup(func() { scoreStdin = prev })
	if code, out, errOut := s.run(t, false, "score", "--endpoint", "aad", "--data", "-"); code != 0 || !strings.Contains(out, `"from":"stdin"`) {
		t.Errorf("--data -: exit %d, stdout %q\n%s", code, out, errOut)
	}
	code, out, _ := s.run(t, false, "score", "--endpoint", "aml", "--data", `{"a":1}`, "--json")
	var j scoreJSON
	if err := json.Unmarshal([]byte(out), &j); err != nil || code != 0 {
		t.Fatalf("--json: exit %d, stdout %q (%v)", code, out, err)
	}
	var compact bytes.Buffer
	_ = json.Compact(&compact, j.Body)
	if j.Status != 200 || j.Deployment != "blue" || j.Outcome != "completed" || compact.String() != `{"deployment":"blue","input":{"a":1}}` || j.Attempts != 1 {
		t.Errorf("--json printed %+v", j)
	}
}

func TestScoreCLIUsage(t *testing.T) {
	s := newScoreSim(t, nil)
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--data", "{}"}, "--endpoint is required"},
		{[]string{"--endpoint", "aad"}, "--data is required"},
		{[]string{"--endpoint", "aad", "--data", `{"a":`}, "--data is not JSON"},
		{[]string{"--endpoint", "aad", "--data", "@/no/such/file.json"}, "no such file"},
		{[]string{"--endpoint", "nope", "--data", "{}"}, "online endpoints: aad, aml, keyfile, keys"},
		{[]string{"--endpoint", "batch", "--data", "{}"}, "is a batch endpoint: use 'batchd invoke"},
	}
	for _, tt := range tests {
		code, _, errOut := s.run(t, false, append([]string{"score"}, tt.args...)...)
		if code != exitUsage || !strings.Contains(errOut, tt.want) {
			t.Errorf("score %v: exit %d, stderr %q; want 2 saying %q", tt.args, code, errOut, tt.want)
		}
	}
	if got := s.sim.Count(jobstest.RouteScore); got != 0 {
		t.Errorf("scoring POSTs = %d, want 0", got)
	}
	s.env["BATCHD_PIPELINES"] = filepath.Join(t.TempDir(), "missing.yaml")
	if code, _, errOut := s.run(t, false, "score", "--endpoint", "aad", "--data", "{}"); code != exitUsage || !strings.Contains(errOut, "missing.yaml") {
		t.Errorf("missing pipelines file: exit %d\n%s", code, errOut)
	}
}

// Exit codes follow invoke's: 1 failed, 3 auth, 4 rejected, 5 busy or no
// answer. The endpoint's message reaches stderr; no secret does (run checks).
func TestScoreCLIExitCodes(t *testing.T) {
	tests := []struct {
		name    string
		handler func(jobstest.OnlineRequest) (int, []byte)
		setup   func(s *invokeSim)
		ep      string
		want    int
		say     string
	}{
		{name: "400", ep: "keys", want: exitRejected, say: "feature f3 is missing",
			handler: func(jobstest.OnlineRequest) (int, []byte) { return 400, []byte(`{"message":"feature f3 is missing"}`) }},
		{name: "500", ep: "aad", want: exitFailed, say: "division by zero",
			handler: func(jobstest.OnlineRequest) (int, []byte) { return 500, []byte(`{"message":"division by zero"}`) }},
		{name: "missing score role", ep: "aad", want: exitAuth, say: online.ActionScore,
			setup: func(s *invokeSim) { s.sim.DenyAction(s.env["AZURE_CLIENT_ID"], online.ActionScore) }},
		{name: "missing token role", ep: "aml", want: exitAuth, say: online.ActionToken,
			setup: func(s *invokeSim) { s.sim.DenyAction(s.env["AZURE_CLIENT_ID"], online.ActionToken) }},
		{name: "missing listKeys role", ep: "keys", want: exitAuth, say: online.ActionListKeys,
			setup: func(s *invokeSim) { s.sim.DenyAction(s.env["AZURE_CLIENT_ID"], online.ActionListKeys) }},
		{name: "busy until the timeout", ep: "aad", want: exitTransient, say: "429",
			setup: func(s *invokeSim) {
				s.sim.SetFaultRate(jobstest.RouteScore, 1, jobstest.Fault{Status: 429, RetryAfter: 50 * time.Millisecond})
			}},
		{name: "reset after sending", ep: "aad", want: exitTransient, say: "may have been scored",
			setup: func(s *invokeSim) { s.sim.Inject(jobstest.RouteScore, jobstest.Fault{Reset: jobstest.ResetAfter}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScoreSim(t, tt.handler)
			if tt.setup != nil {
				tt.setup(s)
			}
			code, out, errOut := s.run(t, false, "score", "--endpoint", tt.ep, "--data", `{}`, "--timeout", "1s")
			if code != tt.want {
				t.Errorf("exit %d, want %d\n%s", code, tt.want, errOut)
			}
			if !strings.Contains(errOut, tt.say) {
				t.Errorf("stderr does not say %q:\n%s", tt.say, errOut)
			}
			if out != "" {
				t.Errorf("stdout %q on failure, want nothing", out)
			}
		})
	}
}
