package jobstest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// Audiences the simulator issues tokens for and accepts.
const (
	AudienceML  = "https://ml.azure.com"
	AudienceARM = "https://management.azure.com"
)

// SystemClientID is the client id of the simulated system-assigned managed
// identity.
const SystemClientID = "00000000-0000-4000-8000-00000000a11d"

// signingKey is shared by every Sim in the process: azidentity's managed
// identity token cache is process-wide, so a token one Sim issued may be
// presented to another, and it should verify there.
var signingKey = sync.OnceValue(func() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
})

// claims of a simulated token.
type claims struct {
	Aud   string `json:"aud"`
	Iss   string `json:"iss"`
	Iat   int64  `json:"iat"`
	Nbf   int64  `json:"nbf"`
	Exp   int64  `json:"exp"`
	OID   string `json:"oid"`
	TID   string `json:"tid"`
	AppID string `json:"appid"`
	Sub   string `json:"sub"`
	IDTyp string `json:"idtyp"`
	UTI   string `json:"uti"`
}

// TokenRequest records one token request the simulator answered with a
// token.
type TokenRequest struct {
	Protocol string // "managed-identity", "client-credentials" or "in-process"
	Tenant   string
	ClientID string // "" for the system-assigned managed identity
	Audience string
	At       time.Time
}

// TokenRequests returns every successful token request so far.
func (s *Sim) TokenRequests() []TokenRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]TokenRequest(nil), s.tokenReqs...)
}

// IssuedTokens returns every token the simulator issued (Entra tokens and
// online endpoints' Azure ML tokens) and every online endpoint key it made,
// for tests that check that no secret leaks into logs, errors or output.
func (s *Sim) IssuedTokens() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.issued...)
}

// ObjectID is the object id (oid claim) the simulator gives an identity's
// client id.
func ObjectID(clientID string) string {
	sum := sha256.Sum256([]byte("oid:" + clientID))
	h := hex.EncodeToString(sum[:16])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Token mints a token as the simulator's token endpoints would, without a
// request and without counting it. Tests use it to present a given audience
// or an expired token (lifetime < 0).
func (s *Sim) Token(audience, tenant, clientID string, lifetime time.Duration) string {
	tok, _ := s.mint(audience, tenant, clientID, lifetime)
	return tok
}

func (s *Sim) mint(audience, tenant, clientID string, lifetime time.Duration) (string, *claims) {
	now := time.Now()
	c := &claims{
		Aud:   audience,
		Iss:   "https://sts.windows.net/" + tenant + "/",
		Iat:   now.Unix(),
		Nbf:   now.Add(-5 * time.Minute).Unix(),
		Exp:   now.Add(lifetime).Unix(),
		OID:   ObjectID(clientID),
		TID:   tenant,
		AppID: clientID,
		Sub:   ObjectID(clientID),
		IDTyp: "app",
		UTI:   randomHex(8),
	}
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	body, _ := json.Marshal(c)
	signed := header + "." + base64.RawURLEncoding.EncodeToString(body)
	mac := hmac.New(sha256.New, signingKey())
	mac.Write([]byte(signed))
	return signed + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil)), c
}

// issue mints a token for a request and records it.
func (s *Sim) issue(protocol, audience, tenant, clientID string) (string, *claims) {
	recorded := clientID
	if clientID == "" {
		clientID = SystemClientID
	}
	tok, c := s.mint(audience, tenant, clientID, s.opts.TokenLifetime)
	s.mu.Lock()
	s.tokenReqs = append(s.tokenReqs, TokenRequest{Protocol: protocol, Tenant: tenant, ClientID: recorded, Audience: audience, At: time.Now()})
	s.issued = append(s.issued, tok)
	s.mu.Unlock()
	return tok, c
}

var errBadToken = errors.New("invalid token")

// verify checks a token's signature and returns its claims. Verified
// tokens are cached, so a busy client costs one map lookup per request.
func (s *Sim) verify(tok string) (*claims, error) {
	if c, ok := s.verified.Load(tok); ok {
		return c.(*claims), nil
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return nil, errBadToken
	}
	mac := hmac.New(sha256.New, signingKey())
	mac.Write([]byte(parts[0] + "." + parts[1]))
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil || !hmac.Equal(sig, mac.Sum(nil)) {
		return nil, errBadToken
	}
	body, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, errBadToken
	}
	var c claims
	if err := json.Unmarshal(body, &c); err != nil {
		return nil, errBadToken
	}
	s.verified.Store(tok, &c)
	return &c, nil
}

// authorize checks the bearer token of a data-plane or ARM request: present,
// signed by the simulator, in date, for audience, and its identity not
// denied. On failure it writes the 401/403 answer and returns false.
func (s *Sim) authorize(w http.ResponseWriter, r *http.Request, audience, action string) (*claims, bool) {
	challenge := func(desc string) {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization_uri="https://login.microsoftonline.com/%s", error="invalid_token", error_description=%q`, s.opts.Tenant, desc))
	}
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok || tok == "" {
		challenge("The authorization header is missing")
		writeError(w, http.StatusUnauthorized, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.")
		return nil, false
	}
	c, err := s.verify(tok)
	if err != nil {
		challenge("The access token is invalid")
		writeError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "The access token is invalid.")
		return nil, false
	}
	now := time.Now()
	if now.Unix() >= c.Exp {
		challenge("The access token has expired")
		writeError(w, http.StatusUnauthorized, "ExpiredAuthenticationToken",
			fmt.Sprintf("The access token expiry UTC time '%s' is earlier than current UTC time '%s'.",
				time.Unix(c.Exp, 0).UTC().Format(time.RFC1123), now.UTC().Format(time.RFC1123)))
		return nil, false
	}
	if now.Add(5*time.Minute).Unix() < c.Nbf {
		challenge("The access token is not yet valid")
		writeError(w, http.StatusUnauthorized, "InvalidAuthenticationToken", "The access token is not yet valid.")
		return nil, false
	}
	if strings.TrimRight(c.Aud, "/") != audience {
		challenge("The audience '" + c.Aud + "' is invalid")
		writeError(w, http.StatusUnauthorized, "InvalidAuthenticationTokenAudience",
			fmt.Sprintf("The access token has been obtained for wrong audience or resource '%s'. It should exactly match with one of the allowed audiences '%s','%s/'.", c.Aud, audience, audience))
		return nil, false
	}
	s.mu.Lock()
	denied := s.denied[c.OID] || s.denied[c.AppID] || s.deniedActions[c.OID+" "+action] || s.deniedActions[c.AppID+" "+action]
	s.mu.Unlock()
	if denied {
		ws := s.opts.Workspace
		writeError(w, http.StatusForbidden, "AuthorizationFailed",
			fmt.Sprintf("The client '%s' with object id '%s' does not have authorization to perform action '%s' over scope '/subscriptions/%s/resourceGroups/%s/providers/Microsoft.MachineLearningServices/workspaces/%s' or the scope is invalid. If access was recently granted, please refresh your credentials.",
				c.AppID, c.OID, action, ws.Subscription, ws.ResourceGroup, ws.Name))
		return nil, false
	}
	return c, true
}

// handleMIToken speaks the App Service managed identity protocol:
// GET ?api-version=2019-08-01&resource=R[&client_id=C] with X-IDENTITY-HEADER.
func (s *Sim) handleMIToken(w http.ResponseWriter, r *http.Request) {
	miError := func(status int, msg string) {
		writeJSON(w, status, map[string]any{"statusCode": status, "message": msg})
	}
	if r.Header.Get("X-IDENTITY-HEADER") != s.identityHeader {
		miError(http.StatusUnauthorized, "The X-IDENTITY-HEADER header is missing or wrong.")
		return
	}
	q := r.URL.Query()
	if q.Get("api-version") == "" {
		miError(http.StatusBadRequest, "The api-version parameter is required.")
		return
	}
	resource := strings.TrimSuffix(q.Get("resource"), "/.default")
	if resource == "" {
		miError(http.StatusBadRequest, "The resource parameter is required.")
		return
	}
	clientID := q.Get("client_id")
	if clientID == "" && (q.Get("object_id") != "" || q.Get("principal_id") != "" || q.Get("mi_res_id") != "") {
		clientID = firstNonEmpty(q.Get("object_id"), q.Get("principal_id"), q.Get("mi_res_id"))
	}
	s.mu.Lock()
	missing := s.missing[clientID]
	s.mu.Unlock()
	if missing {
		miError(http.StatusBadRequest, "No Managed Identity found for specified ClientId/ResourceId/PrincipalId.")
		return
	}
	tok, c := s.issue("managed-identity", resource, s.opts.Tenant, clientID)
	s.log.Debug("jobstest token", "protocol", "managed-identity", "client_id", clientID, "aud", resource)
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": tok,
		"expires_on":   strconv.FormatInt(c.Exp, 10),
		"resource":     resource,
		"token_type":   "Bearer",
		"client_id":    c.AppID,
	})
}

// handleDiscovery serves the tenant's OpenID configuration; MSAL reads it
// before its first token request.
func (s *Sim) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if len(s.opts.Tenants) > 0 && !hasFold(s.opts.Tenants, tenant) {
		tenantNotFound(w, tenant)
		return
	}
	base := s.url + "/" + tenant
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"issuer":                                base + "/v2.0",
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"response_types_supported":              []string{"code", "id_token", "token"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
	})
}

func tenantNotFound(w http.ResponseWriter, tenant string) {
	writeJSON(w, http.StatusBadRequest, map[string]any{
		"error":             "invalid_request",
		"error_description": fmt.Sprintf("AADSTS90002: Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.", tenant),
		"error_codes":       []int{90002},
	})
}

// handleAuthorityToken serves the v2.0 client credentials grant, with a
// secret or a client assertion (certificate, workload identity).
func (s *Sim) handleAuthorityToken(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("tenant")
	if len(s.opts.Tenants) > 0 && !hasFold(s.opts.Tenants, tenant) {
		tenantNotFound(w, tenant)
		return
	}
	if err := r.ParseForm(); err != nil {
		aadError(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must contain a form.")
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		aadError(w, http.StatusBadRequest, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '"+gt+"'.")
		return
	}
	clientID := r.PostForm.Get("client_id")
	if clientID == "" {
		aadError(w, http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.")
		return
	}
	secret, assertion := r.PostForm.Get("client_secret"), r.PostForm.Get("client_assertion")
	switch {
	case secret == "" && assertion == "":
		aadError(w, http.StatusUnauthorized, "invalid_client", 7000216, "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.")
		return
	case assertion != "" && strings.Count(assertion, ".") != 2:
		aadError(w, http.StatusUnauthorized, "invalid_client", 700027, "Client assertion failed signature validation.")
		return
	}
	if s.opts.ClientSecrets != nil {
		want, known := s.opts.ClientSecrets[clientID]
		switch {
		case !known:
			aadError(w, http.StatusBadRequest, "unauthorized_client", 700016,
				fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'.", clientID, tenant))
			return
		case secret != "" && !hmac.Equal([]byte(secret), []byte(want)):
			aadError(w, http.StatusUnauthorized, "invalid_client", 7000215,
				fmt.Sprintf("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '%s'.", clientID))
			return
		}
	}
	audience := ""
	for _, sc := range strings.Fields(r.PostForm.Get("scope")) {
		switch sc {
		case "openid", "offline_access", "profile":
			continue
		}
		audience = strings.TrimSuffix(sc, "/.default")
		break
	}
	if audience == "" {
		aadError(w, http.StatusBadRequest, "invalid_scope", 1002012, "The provided value for scope is not valid.")
		return
	}
	tok, _ := s.issue("client-credentials", audience, tenant, clientID)
	s.log.Debug("jobstest token", "protocol", "client-credentials", "client_id", clientID, "aud", audience)
	lifetime := int64(s.opts.TokenLifetime / time.Second)
	writeJSON(w, http.StatusOK, map[string]any{
		"token_type":     "Bearer",
		"expires_in":     lifetime,
		"ext_expires_in": lifetime,
		"access_token":   tok,
	})
}

func aadError(w http.ResponseWriter, status int, code string, aadsts int, desc string) {
	writeJSON(w, status, map[string]any{
		"error":             code,
		"error_description": fmt.Sprintf("AADSTS%d: %s", aadsts, desc),
		"error_codes":       []int{aadsts},
	})
}

// Credential returns an azcore.TokenCredential that takes tokens straight
// from the simulator, without HTTP and without azidentity: for tests and
// benchmarks that are not about credential wiring. Its requests count on
// RouteToken; a queued RouteToken fault with a Status makes GetToken fail.
func (s *Sim) Credential(clientID string) azcore.TokenCredential {
	return &simCredential{s: s, clientID: clientID}
}

type simCredential struct {
	s        *Sim
	clientID string
}

func (c *simCredential) GetToken(ctx context.Context, tro policy.TokenRequestOptions) (azcore.AccessToken, error) {
	s := c.s
	s.counts[routeIndex(RouteToken)].Add(1)
	if f, ok := s.nextFault(routeIndex(RouteToken)); ok {
		if f.Delay > 0 {
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return azcore.AccessToken{}, ctx.Err()
			case <-s.done:
				t.Stop()
				return azcore.AccessToken{}, errClosed
			}
		}
		if f.Status != 0 || f.Reset != NoReset {
			msg := f.Message
			if msg == "" {
				msg = fmt.Sprintf("simulated token failure (%d)", f.Status)
			}
			return azcore.AccessToken{}, errors.New("jobstest credential: " + msg)
		}
	}
	if len(tro.Scopes) != 1 {
		return azcore.AccessToken{}, errors.New("jobstest credential: exactly one scope is required")
	}
	audience := strings.TrimSuffix(tro.Scopes[0], "/.default")
	tok, cl := s.issue("in-process", audience, s.opts.Tenant, c.clientID)
	return azcore.AccessToken{Token: tok, ExpiresOn: time.Unix(cl.Exp, 0)}, nil
}

func firstNonEmpty(vs ...string) string {
	for _, v := range vs {
		if v != "" {
			return v
		}
	}
	return ""
}
