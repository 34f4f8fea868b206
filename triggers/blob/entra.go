package blob

import (
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// EntraOptions turn on Microsoft Entra-protected delivery: Event Grid then
// sends "Authorization: Bearer <JWT>" issued for the app registration the
// subscription names, and the webhook checks the token's RS256 signature
// (keys from JWKSURL), expiry, audience and issuer. It is checked in
// addition to the shared secret.
type EntraOptions struct {
	// Audiences accepted in "aud": the app's client id and/or its
	// application id URI (api://...). Required.
	Audiences []string
	// Issuers accepted in "iss", e.g. https://login.microsoftonline.com/<tenant>/v2.0
	// and https://sts.windows.net/<tenant>/. Required.
	Issuers []string
	// JWKSURL serves the signing keys, e.g.
	// https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys. Required.
	JWKSURL string
	// HTTPClient fetches the keys (default: a client with a 10s timeout).
	HTTPClient *http.Client
	// Callers are the applications whose tokens are deliveries: the token's
	// azp (v2) or appid (v1) claim must be one of them. Default
	// EventGridAppID. Any application the tenant lets call the webhook's
	// API can get a token with the right audience and issuer; only Event
	// Grid's is a delivery.
	Callers []string
	// Refresh is how often Run refetches the keys (default 12h). A token
	// signed with an unknown key id also triggers a fetch, at most once a
	// minute.
	Refresh time.Duration
}

func (o *EntraOptions) validate() error {
	var errs []error
	if len(o.Audiences) == 0 {
		errs = append(errs, errors.New("entra: at least one audience is required"))
	}
	if len(o.Issuers) == 0 {
		errs = append(errs, errors.New("entra: at least one issuer is required"))
	}
	if o.JWKSURL == "" {
		errs = append(errs, errors.New("entra: a JWKS URL is required"))
	}
	return errors.Join(errs...)
}

// EventGridAppID is the application id of "Azure Event Grid" (the
// Microsoft.EventGrid service principal) in the Azure public cloud, the
// caller of Entra-protected webhook deliveries. Sovereign clouds have
// their own: set EntraOptions.Callers.
const EventGridAppID = "4962773b-9cdb-44cf-a8bf-237846a00ab7"

// ErrUnknownKey is returned when a token names a key the JWKS does not hold.
var ErrUnknownKey = errors.New("token signed with an unknown key")

// keySet caches the JWKS. It is safe for concurrent use.
type keySet struct {
	url    string
	client *http.Client

	mu        sync.Mutex
	keys      map[string]*rsa.PublicKey
	fetched   time.Time
	lastTry   time.Time
	fetchLock sync.Mutex
}

type jwks struct {
	Keys []struct {
		Kty string `json:"kty"`
		Kid string `json:"kid"`
		Use string `json:"use"`
		N   string `json:"n"`
		E   string `json:"e"`
	} `json:"keys"`
}

// fetch loads the key set. Only one fetch runs at a time.
func (k *keySet) fetch(ctx context.Context) error {
	k.fetchLock.Lock()
	defer k.fetchLock.Unlock()
	k.mu.Lock()
	k.lastTry = time.Now()
	k.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	resp, err := k.client.Do(req)
	if err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("jwks: %s answered %s", k.url, resp.Status)
	}
	var set jwks
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil {
		return fmt.Errorf("jwks: %w", err)
	}
	keys := map[string]*rsa.PublicKey{}
	for _, j := range set.Keys {
		if j.Kty != "RSA" || j.Kid == "" || (j.Use != "" && j.Use != "sig") {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(j.N)
		e, err2 := base64.RawURLEncoding.DecodeString(j.E)
		if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 {
			continue
		}
		keys[j.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	if len(keys) == 0 {
		return fmt.Errorf("jwks: %s holds no RSA signing keys", k.url)
	}
	k.mu.Lock()
	k.keys, k.fetched = keys, time.Now()
	k.mu.Unlock()
	return nil
}

// key returns the key kid, fetching the set when kid is unknown (at most
// once a minute, so a flood of bad tokens cannot hammer the endpoint).
func (k *keySet) key(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	k.mu.Lock()
	pk, ok := k.keys[kid]
	stale := time.Since(k.lastTry) > time.Minute
	k.mu.Unlock()
	if ok {
		return pk, nil
	}
	if !stale {
		return nil, ErrUnknownKey
	}
	if err := k.fetch(ctx); err != nil {
		return nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if pk, ok := k.keys[kid]; ok {
		return pk, nil
	}
	return nil, ErrUnknownKey
}

type entraVerifier struct {
	opts   EntraOptions
	keys   *keySet
	parser *jwt.Parser
}

func newEntraVerifier(o EntraOptions) (*entraVerifier, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if o.Refresh <= 0 {
		o.Refresh = 12 * time.Hour
	}
	if len(o.Callers) == 0 {
		o.Callers = []string{EventGridAppID}
	}
	return &entraVerifier{
		opts: o,
		keys: &keySet{url: o.JWKSURL, client: o.HTTPClient},
		parser: jwt.NewParser(jwt.WithValidMethods([]string{"RS256"}), jwt.WithAudience(o.Audiences...),
			jwt.WithExpirationRequired(), jwt.WithLeeway(2*time.Minute)),
	}, nil
}

// errKeysUnavailable: the keys could not be fetched (answer 503, not 401:
// Event Grid drops events answered 401).
var errKeysUnavailable = errors.New("signing keys unavailable")

// verify checks the request's bearer token. The error never holds the token.
func (v *entraVerifier) verify(ctx context.Context, authz string) error {
	scheme, tok, ok := strings.Cut(authz, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return errors.New("no bearer token")
	}
	var fetchErr error
	claims := deliveryClaims{}
	_, err := v.parser.ParseWithClaims(tok, &claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		pk, err := v.keys.key(ctx, kid)
		if err != nil && !errors.Is(err, ErrUnknownKey) {
			fetchErr = err
		}
		return pk, err
	})
	if fetchErr != nil {
		return fmt.Errorf("%w: %v", errKeysUnavailable, fetchErr) //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
	}
	if err != nil {
		return fmt.Errorf("bearer token: %s", jwtReason(err))
	}
	if !slices.Contains(v.opts.Issuers, claims.Issuer) {
		return fmt.Errorf("bearer token: issuer %q is not accepted", claims.Issuer)
	}
	caller := claims.AZP
	if caller == "" {
		caller = claims.AppID
	}
	if !slices.ContainsFunc(v.opts.Callers, func(c string) bool { return strings.EqualFold(c, caller) }) {
		return fmt.Errorf("bearer token: caller application %q is not Event Grid (BATCHD_WEBHOOK_ENTRA_CALLERS)", caller)
	}
	if t := issuerTenant(claims.Issuer); t != "" && !strings.EqualFold(claims.TID, t) {
		return fmt.Errorf("bearer token: tenant %q is not the issuer's (%s)", claims.TID, t)
	}
	return nil
}

// deliveryClaims are the claims an Event Grid delivery's token is checked
// for, beyond the registered ones.
type deliveryClaims struct {
	jwt.RegisteredClaims
	AZP   string `json:"azp,omitempty"`   // v2 tokens: the calling application
	AppID string `json:"appid,omitempty"` // v1 tokens: the calling application
	TID   string `json:"tid,omitempty"`
}

// issuerTenant is the tenant an Entra issuer names:
// https://login.microsoftonline.com/<tenant>/v2.0 or
// https://sts.windows.net/<tenant>/.
func issuerTenant(iss string) string {
	u, err := url.Parse(iss)
	if err != nil {
		return ""
	}
	seg, _, _ := strings.Cut(strings.Trim(u.Path, "/"), "/")
	return seg
}

// jwtReason names what was wrong without echoing the token.
func jwtReason(err error) string {
	for _, c := range []struct {
		err error
		why string
	}{
		{jwt.ErrTokenMalformed, "malformed"},
		{jwt.ErrTokenSignatureInvalid, "bad signature"},
		{jwt.ErrTokenUnverifiable, "unverifiable (unknown key or algorithm)"},
		{jwt.ErrTokenExpired, "expired"},
		{jwt.ErrTokenNotValidYet, "not valid yet"},
		{jwt.ErrTokenInvalidAudience, "audience not accepted"},
		{jwt.ErrTokenRequiredClaimMissing, "a required claim is missing"},
	} {
		if errors.Is(err, c.err) {
			return c.why
		}
	}
	return "invalid"
}

// run refreshes the keys every opts.Refresh until ctx ends.
func (v *entraVerifier) run(ctx context.Context, onErr func(error)) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := v.opts.Refresh
		if err := v.keys.fetch(ctx); err != nil && ctx.Err() == nil {
			onErr(err)
			next = time.Minute
		}
		t.Reset(next)
	}
}
