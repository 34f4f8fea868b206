package blob

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// jwksServer serves the public half of key under kid.
func jwksServer(t *testing.T, kid string, key *rsa.PrivateKey, down *atomic.Bool) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{{
			"kty": "RSA", "use": "sig", "kid": kid,
			"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()),
			"e": base64.RawURLEncoding.EncodeToString(big.NewInt(int64(key.E)).Bytes()),
		}}})
	}))
	t.Cleanup(srv.Close)
	return srv
}

func token(t *testing.T, key *rsa.PrivateKey, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestWebhookEntraProtectedDelivery(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	var down atomic.Bool
	jwks := jwksServer(t, "k1", key, &down)
	const aud, iss = "api://batchd-webhook", "https://login.microsoftonline.com/tenant-1/v2.0"
	e := newHookEnv(t, func(o *WebhookOptions) {
		o.Entra = &EntraOptions{Audiences: []string{aud}, Issuers: []string{iss}, JWKSURL: jwks.URL}
	})
	now := time.Now()
	// Event Grid's token: its first-party application as the caller, in
	// the issuer's tenant.
	good := jwt.MapClaims{"aud": aud, "iss": iss, "exp": now.Add(time.Hour).Unix(), "nbf": now.Add(-time.Minute).Unix(),
		"azp": EventGridAppID, "tid": "tenant-1"}
	with := func(k string, v any) jwt.MapClaims {
		c := jwt.MapClaims{}
		for kk, vv := range good {
			c[kk] = vv
		}
		c[k] = v
		return c
	}
	body := fixture(t, "putblocklist.json")
	tests := []struct {
		name  string
		authz string
		want  int
	}{
		{"no token", "", 401},
		{"not bearer", "Basic abc", 401},
		{"garbage", "Bearer not.a.jwt", 401},
		{"wrong audience", "Bearer " + token(t, key, "k1", with("aud", "api://other")), 401},
		{"wrong issuer", "Bearer " + token(t, key, "k1", with("iss", "https://evil.example/")), 401},
		{"expired", "Bearer " + token(t, key, "k1", with("exp", now.Add(-time.Hour).Unix())), 401},
		{"signed by another key", "Bearer " + token(t, other, "k1", good), 401},
		{"unknown key id", "Bearer " + token(t, key, "k2", good), 401},
		{"HS256 with the public key", "Bearer " + hs256(t, good), 401},
		// A token the tenant issued to another application for the same
		// audience (any app allowed to call the webhook's API) is not
		// Event Grid's delivery.
		{"another application's token (v2 azp)", "Bearer " + token(t, key, "k1", with("azp", "11111111-2222-3333-4444-555555555555")), 401},
		{"another application's token (v1 appid)", "Bearer " + token(t, key, "k1", func() jwt.MapClaims {
			c := with("appid", "11111111-2222-3333-4444-555555555555")
			delete(c, "azp")
			return c
		}()), 401},
		{"no caller claim", "Bearer " + token(t, key, "k1", func() jwt.MapClaims { c := with("azp", ""); delete(c, "azp"); return c }()), 401},
		{"another tenant", "Bearer " + token(t, key, "k1", with("tid", "tenant-2")), 401},
		{"v1 token from Event Grid", "Bearer " + token(t, key, "k1", func() jwt.MapClaims {
			c := with("appid", EventGridAppID)
			delete(c, "azp")
			return c
		}()), 200},
		{"valid", "Bearer " + token(t, key, "k1", good), 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, resp := e.post(body, map[string]string{"Authorization": tt.authz})
			if code != tt.want {
				t.Errorf("status = %d (%s), want %d", code, resp, tt.want)
			}
		})
	}
	if n := len(e.intake.Snapshot().Accepted); n != 1 {
		t.Errorf("accepted %d, want 1 (only the valid tokens, one blob)", n)
	}
	if strings.Contains(e.logs.String(), token(t, key, "k1", good)[:40]) {
		t.Error("a token reached the log")
	}
	// Keys unavailable (and the cache cold for this kid): 503, so Event
	// Grid retries instead of dropping the event.
	down.Store(true)
	e.hook.entra.keys.mu.Lock()
	e.hook.entra.keys.keys, e.hook.entra.keys.lastTry = nil, time.Time{}
	e.hook.entra.keys.mu.Unlock()
	if code, _ := e.post(body, map[string]string{"Authorization": "Bearer " + token(t, key, "k1", good)}); code != 503 {
		t.Errorf("status with JWKS down = %d, want 503", code)
	}
}

func hs256(t *testing.T, c jwt.MapClaims) string {
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, c)
	tok.Header["kid"] = "k1"
	s, err := tok.SignedString([]byte("public-key-bytes"))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEntraOptionsRequired(t *testing.T) {
	_, err := NewWebhook(WebhookOptions{Secret: "x", Intake: nil, Entra: &EntraOptions{}})
	for _, want := range []string{"no intake", "no KV bucket", "audience is required", "issuer is required", "JWKS URL is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewWebhook error %v, want it to mention %q", err, want)
		}
	}
}
