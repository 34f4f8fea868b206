package online

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/batchd/batchd/jobs"
)

// authorization returns the Authorization value of the next attempt, from
// the cache (see cache.go). After a 401 (refreshNext) it fetches the AML
// token or the keys again, once, and in key mode takes the next key not
// refused yet.
// cached returns the credential under key from the cache, fetching it when
// missing or due; after a 401 (refreshNext) it fetches it again, once, in
// place of the one that was refused.
func (s *scoring) cached(ctx context.Context, key string, fetch func(context.Context) (*secret, error)) (*secret, error) {
	if s.refreshNext && s.cred != nil {
		s.refreshNext = false
		return s.c.creds.refresh(ctx, key, s.cred, fetch)
	}
	return s.c.creds.get(ctx, key, fetch)
}

func (s *scoring) authorization(ctx context.Context) (string, error) {
	c, ep := s.c, s.ep
	switch ep.mode() {
	case AuthAMLToken:
		key := "aml_token|" + cacheKey(ep)
		fetch := func(ctx context.Context) (*secret, error) { return c.fetchAMLToken(ctx, ep) }
		sec, err := s.cached(ctx, key, fetch)
		if err != nil {
			return "", s.credError(OpToken, err)
		}
		s.cred = sec
		return "Bearer " + sec.value, nil
	case AuthKey:
		key := "keys|" + cacheKey(ep)
		fetch := func(ctx context.Context) (*secret, error) { return c.fetchKeys(ctx, ep) }
		op := OpListKeys
		if ep.Keys != nil {
			op = OpKeyFile
		}
		sec, err := s.cached(ctx, key, fetch)
		if err != nil {
			return "", s.credError(op, err)
		}
		s.cred = sec
		k := s.nextKey(sec)
		if k == "" {
			if s.last != nil {
				return "", s.last
			}
			return "", &Error{Kind: KindRejected, Op: op, Endpoint: ep.Name, Err: errors.New("the endpoint has no key")}
		}
		s.key = k
		return "Bearer " + k, nil
	default:
		sec, err := c.creds.get(ctx, "entra|"+c.mlScope, c.fetchEntra)
		if err != nil {
			return "", s.credError(OpEntra, err)
		}
		s.cred = sec
		return "Bearer " + sec.value, nil
	}
}

// credError makes a credential failure an *Error of the endpoint. A
// credential that cannot be had is a rejection: the credential's own
// retries (azidentity's, the ARM pipeline's) already ran.
func (s *scoring) credError(op string, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var e *Error
	if errors.As(err, &e) {
		c := *e
		c.Endpoint, c.Attempts = s.ep.Name, s.attempts
		return &c
	}
	return &Error{Kind: KindRejected, Op: op, Endpoint: s.ep.Name, Attempts: s.attempts, Err: err}
}

// cacheKey tells endpoints apart in the credential cache.
func cacheKey(ep *Endpoint) string {
	ws := ""
	if ep.Workspace != nil {
		ws = ep.Workspace.Subscription + "/" + ep.Workspace.ResourceGroup + "/" + ep.Workspace.Name
	}
	return ep.Name + "|" + ep.ScoringURI + "|" + ws + "|" + ep.armName()
}

func (c *Client) fetched(kind string) {
	if c.onFetch != nil {
		c.onFetch(kind)
	}
}

// fetchEntra gets a data-plane Entra token from the process credential.
func (c *Client) fetchEntra(ctx context.Context) (*secret, error) {
	tk, err := c.cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{c.mlScope}})
	if err != nil {
		var te *jobs.TokenError
		if !errors.As(err, &te) && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
			err = &jobs.TokenError{Scope: c.mlScope, Hint: "the identity service did not issue a token", Detail: jobs.OneLine(err.Error(), 300), Err: err}
		}
		return nil, err
	}
	c.fetched("entra")
	now := time.Now()
	exp := tk.ExpiresOn
	if exp.IsZero() {
		exp = now.Add(time.Hour)
	}
	return &secret{value: tk.Token, expires: exp, refreshAt: refreshTime(now, exp, tk.RefreshOn)}, nil
}

// armToken is the answer of the token action (EndpointAuthToken). The
// times are Unix seconds; a string (RFC 3339 or digits) is read too.
type armToken struct {
	AccessToken         string          `json:"accessToken"`
	ExpiryTimeUTC       json.RawMessage `json:"expiryTimeUtc"`
	RefreshAfterTimeUTC json.RawMessage `json:"refreshAfterTimeUtc"`
	TokenType           string          `json:"tokenType"`
}

func unixTime(raw json.RawMessage) time.Time {
	if len(raw) == 0 || string(raw) == "null" {
		return time.Time{}
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		if f, err := n.Float64(); err == nil && f > 0 {
			return time.Unix(int64(f), 0)
		}
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		if f, err := strconv.ParseFloat(s, 64); err == nil && f > 0 {
			return time.Unix(int64(f), 0)
		}
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			return t
		}
	}
	return time.Time{}
}

// fetchAMLToken calls the endpoint's ARM token action.
func (c *Client) fetchAMLToken(ctx context.Context, ep *Endpoint) (*secret, error) {
	body, err := c.armPost(ctx, ep, OpToken, "token")
	if err != nil {
		return nil, err
	}
	var t armToken
	if err := json.Unmarshal(body, &t); err != nil || t.AccessToken == "" {
		return nil, &Error{Kind: KindFailed, Op: OpToken, Endpoint: ep.Name, Err: errors.New("the token action's answer has no accessToken")}
	}
	c.fetched("aml_token")
	now := time.Now()
	exp := unixTime(t.ExpiryTimeUTC)
	if exp.IsZero() || !exp.After(now) {
		// No usable expiry: assume a short life rather than keep it forever.
		exp = now.Add(30 * time.Minute)
	}
	return &secret{value: t.AccessToken, expires: exp, refreshAt: refreshTime(now, exp, unixTime(t.RefreshAfterTimeUTC))}, nil
}

// fetchKeys reads the key file (Endpoint.Keys) or calls ARM listKeys.
func (c *Client) fetchKeys(ctx context.Context, ep *Endpoint) (*secret, error) {
	var k Keys
	if ep.Keys != nil {
		var err error
		if k, err = ep.Keys(ctx); err != nil {
			return nil, &Error{Kind: KindRejected, Op: OpKeyFile, Endpoint: ep.Name, Err: err}
		}
	} else {
		body, err := c.armPost(ctx, ep, OpListKeys, "listKeys")
		if err != nil {
			return nil, err
		}
		var w struct {
			PrimaryKey   string `json:"primaryKey"`
			SecondaryKey string `json:"secondaryKey"`
		}
		if err := json.Unmarshal(body, &w); err != nil {
			return nil, &Error{Kind: KindFailed, Op: OpListKeys, Endpoint: ep.Name, Err: errors.New("the listKeys answer is not JSON")}
		}
		k = Keys{Primary: w.PrimaryKey, Secondary: w.SecondaryKey}
	}
	if k.Primary == "" && k.Secondary == "" {
		return nil, &Error{Kind: KindRejected, Op: OpListKeys, Endpoint: ep.Name, Err: errors.New("no key was returned")}
	}
	c.fetched("keys")
	return &secret{keys: k}, nil
}

// armPost calls one of the endpoint's ARM actions (POST, no body) with a
// management token and returns the 2xx body.
func (c *Client) armPost(ctx context.Context, ep *Endpoint, op, action string) ([]byte, error) {
	ws := ep.Workspace
	if ws == nil || ws.Subscription == "" || ws.ResourceGroup == "" || ws.Name == "" {
		return nil, &Error{Kind: KindRejected, Op: op, Endpoint: ep.Name,
			Err: fmt.Errorf("%w: the endpoint's workspace needs subscription, resource_group and name", ErrInvalidRequest)}
	}
	u := c.armBase.String() + "/subscriptions/" + url.PathEscape(ws.Subscription) +
		"/resourceGroups/" + url.PathEscape(ws.ResourceGroup) +
		"/providers/Microsoft.MachineLearningServices/workspaces/" + url.PathEscape(ws.Name) +
		"/onlineEndpoints/" + url.PathEscape(ep.armName()) + "/" + action + "?api-version=" + url.QueryEscape(c.apiVer)
	req, err := runtime.NewRequest(ctx, http.MethodPost, u)
	if err != nil {
		return nil, &Error{Kind: KindRejected, Op: op, Endpoint: ep.Name, Err: fmt.Errorf("%w: %v", ErrInvalidRequest, err)} //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
	}
	req.Raw().Header.Set("Accept", "application/json")
	req.Raw().Header.Set(headerClientReqID, newRequestID())
	resp, err := c.arm.Do(req) //nolint:bodyclose // runtime.Payload reads and closes it
	if resp != nil && resp.StatusCode >= 300 {
		body, _ := runtime.Payload(resp)
		code, msg := parseErrorBody(body)
		if msg == "" {
			msg = wwwAuthDesc(resp.Header.Get("WWW-Authenticate"))
		}
		kind := KindRejected
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusRequestTimeout {
			kind = KindFailed
		}
		return nil, &Error{Kind: kind, Op: op, Endpoint: ep.Name, StatusCode: resp.StatusCode, Code: code, Message: msg,
			Hint: armHint(op, resp.StatusCode, code+" "+msg, c.armScope)}
	}
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		var te *jobs.TokenError
		if errors.As(err, &te) {
			return nil, &Error{Kind: KindRejected, Op: op, Endpoint: ep.Name, Err: te}
		}
		return nil, &Error{Kind: KindFailed, Op: op, Endpoint: ep.Name, Err: errors.New(jobs.OneLine(err.Error(), 300))}
	}
	body, err := runtime.Payload(resp)
	if err != nil {
		return nil, &Error{Kind: KindFailed, Op: op, Endpoint: ep.Name, Err: err}
	}
	c.log.Debug("online endpoint ARM action", "endpoint", ep.Name, "action", action, "status", resp.StatusCode)
	return body, nil
}
