package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

func TestTokenShowsClaims(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantAud string
	}{
		{"ml scope by default", nil, jobstest.AudienceML},
		{"management scope", []string{"--scope", "management"}, jobstest.AudienceARM},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newInvokeSim(t, jobstest.Options{})
			code, out, errb := s.run(t, false, append([]string{"token"}, tt.args...)...)
			if code != exitOK {
				t.Fatalf("exit %d, stderr %s", code, errb)
			}
			clientID := s.env["AZURE_CLIENT_ID"]
			for _, want := range []string{"audience (aud)   " + tt.wantAud, jobstest.ObjectID(clientID), clientID, s.sim.Tenant(), "credential       managed-identity"} {
				if !strings.Contains(out, want) {
					t.Errorf("stdout does not show %q:\n%s", want, out)
				}
			}
			if len(s.sim.IssuedTokens()) != 1 {
				t.Errorf("%d tokens issued, want 1", len(s.sim.IssuedTokens()))
			}
		})
	}
}

func TestTokenJSON(t *testing.T) {
	s := newInvokeSim(t, jobstest.Options{})
	code, out, errb := s.run(t, false, "token", "--json")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %s", code, errb)
	}
	var c jobs.Claims
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("stdout is not JSON claims: %v\n%s", err, out)
	}
	if c.Audience != jobstest.AudienceML || c.AppID != s.env["AZURE_CLIENT_ID"] || c.ExpiresAt.IsZero() || c.Scope != jobs.DefaultMLScope {
		t.Errorf("claims = %+v", c)
	}
	var raw map[string]any
	_ = json.Unmarshal([]byte(out), &raw)
	for k := range raw {
		switch k {
		case "scope", "aud", "oid", "appid", "tid", "exp":
		default:
			t.Errorf("unexpected field %q in token --json", k)
		}
	}
}

func TestTokenFailures(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		setup    func(s *invokeSim)
		wantCode int
		wantErr  string
	}{
		{"bad scope", []string{"--scope", "storage"}, func(*invokeSim) {}, exitUsage, `--scope "storage" is not ml or management`},
		{"identity not found", nil, func(s *invokeSim) { s.sim.SetIdentityMissing(s.env["AZURE_CLIENT_ID"], true) }, exitAuth, "managed identity not found"},
		{"client secret without its settings", nil, func(s *invokeSim) { s.env["BATCHD_CREDENTIAL"] = "client-secret" }, exitUsage, "AZURE_TENANT_ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newInvokeSim(t, jobstest.Options{})
			tt.setup(s)
			code, _, errb := s.run(t, false, append([]string{"token"}, tt.args...)...)
			if code != tt.wantCode || !strings.Contains(errb, tt.wantErr) {
				t.Errorf("exit %d, stderr %q; want %d mentioning %q", code, errb, tt.wantCode, tt.wantErr)
			}
		})
	}
}

// A service principal against the simulator's authority, configured only
// through the environment: AZURE_AUTHORITY_HOST on loopback needs no
// instance-discovery switch.
func TestTokenClientSecret(t *testing.T) {
	s := newInvokeSim(t, jobstest.Options{ClientSecrets: map[string]string{"app-cli": "cli-secret-value"}})
	s.env["BATCHD_CREDENTIAL"] = "client-secret"
	s.env["AZURE_TENANT_ID"] = "tenant-cli"
	s.env["AZURE_CLIENT_ID"] = "app-cli"
	s.env["AZURE_CLIENT_SECRET"] = "cli-secret-value"
	s.env["AZURE_AUTHORITY_HOST"] = s.sim.AuthorityHost()
	code, out, errb := s.run(t, false, "token")
	if code != exitOK || !strings.Contains(out, "tenant (tid)     tenant-cli") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errb)
	}
	if strings.Contains(out+errb, "cli-secret-value") {
		t.Error("the client secret appears in the output")
	}
	s.env["AZURE_CLIENT_SECRET"] = "wrong-secret-value"
	code, out, errb = s.run(t, false, "token")
	if code != exitAuth || !strings.Contains(errb, "client secret is wrong") || strings.Contains(out+errb, "secret-value") {
		t.Errorf("wrong secret: exit %d, stderr %q; want 3 naming the secret as the cause, without it", code, errb)
	}
}
