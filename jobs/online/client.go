package online

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/google/uuid"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/backoff"
)

// Defaults for Options and Endpoint.
const (
	DefaultTimeout          = 60 * time.Second
	DefaultMaxResponseBytes = 16 << 20
	// DefaultARMAPIVersion is the api-version of the token and listKeys
	// actions (Microsoft.MachineLearningServices, stable).
	DefaultARMAPIVersion = "2024-04-01"
)

// Headers.
const (
	HeaderDeployment  = "azureml-model-deployment"
	headerClientReqID = "x-ms-client-request-id"
)

// Options configure a Client. The zero value is valid: public-cloud scopes
// and ARM endpoint, a pooled HTTP transport, no logging.
type Options struct {
	// MLScope is the Entra scope of aad_token endpoints (data plane).
	MLScope string
	// ARMScope is the Entra scope of the ARM token and listKeys actions.
	ARMScope string
	// ARMEndpoint is the ARM base URL, without a trailing slash.
	ARMEndpoint   string
	ARMAPIVersion string
	// Transport carries every request (nil: an HTTP client with a
	// connection pool sized for many requests to one host).
	Transport policy.Transporter
	// Logger gets Debug lines per request and Warn lines for refresh
	// failures. It never sees a key or a token.
	Logger *slog.Logger
	// AllowHTTP lets credentials travel over plain http. Tests only.
	AllowHTTP bool
	// MaxResponseBytes bounds a response body (default 16 MiB): a larger
	// one is a failed request.
	MaxResponseBytes int64
	// BackoffBase and BackoffMax shape the wait between attempts after a
	// 429/503 without Retry-After (default 100ms doubling to 5s, ±20%).
	BackoffBase, BackoffMax time.Duration
	// OnFetch, when set, hears about every credential fetched from a
	// service: "entra", "aml_token" or "keys" (for metrics).
	OnFetch func(kind string)
}

// Client scores requests against online endpoints. It is safe for
// concurrent use and meant to be shared: it holds the credential caches.
type Client struct {
	cred      azcore.TokenCredential
	arm       runtime.Pipeline
	armBase   *url.URL
	apiVer    string
	transport policy.Transporter
	log       *slog.Logger
	allowHTTP bool
	maxBody   int64
	backBase  time.Duration
	backMax   time.Duration
	mlScope   string
	armScope  string
	onFetch   func(string)
	creds     *cache
}

// New returns a Client that takes Entra tokens (aad_token endpoints, and
// the management token of the ARM actions) from cred.
func New(cred azcore.TokenCredential, opts Options) (*Client, error) {
	if cred == nil {
		return nil, errors.New("online: nil credential")
	}
	if opts.MLScope == "" {
		opts.MLScope = jobs.DefaultMLScope
	}
	if opts.ARMScope == "" {
		opts.ARMScope = jobs.DefaultARMScope
	}
	if opts.ARMEndpoint == "" {
		opts.ARMEndpoint = jobs.DefaultARMEndpoint
	}
	if opts.ARMAPIVersion == "" {
		opts.ARMAPIVersion = DefaultARMAPIVersion
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.MaxResponseBytes <= 0 {
		opts.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = 100 * time.Millisecond
	}
	if opts.BackoffMax <= 0 {
		opts.BackoffMax = 5 * time.Second
	}
	armBase, err := url.Parse(strings.TrimRight(opts.ARMEndpoint, "/"))
	if err != nil || armBase.Host == "" || !(armBase.Scheme == "https" || opts.AllowHTTP && armBase.Scheme == "http") {
		return nil, fmt.Errorf("online: ARM endpoint %q must be an https:// URL", opts.ARMEndpoint)
	}
	if opts.Transport == nil {
		opts.Transport = defaultHTTPClient()
	}
	c := &Client{
		cred: cred, armBase: armBase, apiVer: opts.ARMAPIVersion, transport: opts.Transport,
		log: opts.Logger, allowHTTP: opts.AllowHTTP, maxBody: opts.MaxResponseBytes,
		backBase: opts.BackoffBase, backMax: opts.BackoffMax,
		mlScope: opts.MLScope, armScope: opts.ARMScope, onFetch: opts.OnFetch, creds: newCache(),
	}
	c.creds.onRefreshError = func(key string, err error) {
		c.log.Warn("online endpoint credential refresh failed; using the cached one while it is valid", "credential", key, "err", err)
	}
	// The ARM actions are retried like any idempotent call (429, 5xx,
	// resets), within the caller's deadline.
	c.arm = runtime.NewPipeline("batchd/online", "v1", runtime.PipelineOptions{
		PerRetry: []policy.Policy{runtime.NewBearerTokenPolicy(cred, []string{opts.ARMScope},
			&policy.BearerTokenOptions{InsecureAllowCredentialWithHTTP: opts.AllowHTTP})},
	}, &policy.ClientOptions{
		Transport: opts.Transport,
		Retry:     policy.RetryOptions{MaxRetries: 3, RetryDelay: 300 * time.Millisecond, MaxRetryDelay: 5 * time.Second, TryTimeout: 30 * time.Second},
		Telemetry: policy.TelemetryOptions{ApplicationID: "batchd"},
	})
	return c, nil
}

// defaultHTTPClient pools connections to one host generously: an online
// endpoint is one host that may get hundreds of requests at once.
func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	return &http.Client{Transport: t}
}

// Score sends req to ep and returns the endpoint's 2xx answer. Any other
// outcome is an *Error whose Kind says what it means (see Kind). The
// context's deadline bounds every attempt, wait and credential fetch; with
// none, ep.Timeout does.
func (c *Client) Score(ctx context.Context, ep Endpoint, req Request) (*Response, error) {
	if err := c.check(&ep, &req); err != nil {
		return nil, err
	}
	if ep.Timeout <= 0 {
		ep.Timeout = DefaultTimeout
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, ep.Timeout)
		defer cancel()
	}
	if req.RequestID == "" {
		req.RequestID = newRequestID()
	}
	s := &scoring{c: c, ep: &ep, req: &req, tried: map[string]bool{}}
	return s.run(ctx)
}

func (c *Client) check(ep *Endpoint, req *Request) error {
	u, err := url.Parse(ep.ScoringURI)
	switch {
	case err != nil || u.Host == "":
		return &Error{Kind: KindRejected, Op: OpScore, Endpoint: ep.Name,
			Err: fmt.Errorf("%w: scoring uri %q is not a URL like https://<endpoint>.<region>.inference.ml.azure.com/score", ErrInvalidRequest, ep.ScoringURI)}
	case u.Scheme != "https" && !(c.allowHTTP && u.Scheme == "http"):
		return &Error{Kind: KindRejected, Op: OpScore, Endpoint: ep.Name,
			Err: fmt.Errorf("%w: scoring uri %q must be https (it carries a credential)", ErrInvalidRequest, ep.ScoringURI)}
	}
	switch ep.mode() {
	case AuthAADToken:
	case AuthAMLToken:
		if ep.Workspace == nil {
			return &Error{Kind: KindRejected, Op: OpToken, Endpoint: ep.Name,
				Err: fmt.Errorf("%w: auth_mode aml_token needs the endpoint's workspace (subscription, resource_group, name) to fetch a token through ARM", ErrInvalidRequest)}
		}
	case AuthKey:
		if ep.Workspace == nil && ep.Keys == nil {
			return &Error{Kind: KindRejected, Op: OpListKeys, Endpoint: ep.Name,
				Err: fmt.Errorf("%w: auth_mode key needs the endpoint's workspace (to list the keys through ARM) or a key_file", ErrInvalidRequest)}
		}
	default:
		return &Error{Kind: KindRejected, Op: OpScore, Endpoint: ep.Name,
			Err: fmt.Errorf("%w: auth_mode %q is not one of %s", ErrInvalidRequest, ep.AuthMode, strings.Join(AuthModes, ", "))}
	}
	if !json.Valid(req.Body) {
		return &Error{Kind: KindRejected, Op: OpScore, Endpoint: ep.Name, Err: fmt.Errorf("%w: the request body is not JSON", ErrInvalidRequest)}
	}
	deployment := req.Deployment
	if deployment == "" {
		deployment = ep.Deployment
	}
	for _, v := range []string{deployment, req.RequestID} {
		for i := 0; i < len(v); i++ {
			if b := v[i]; b < ' ' && b != '\t' || b == 0x7f {
				return &Error{Kind: KindRejected, Op: OpScore, Endpoint: ep.Name,
					Err: fmt.Errorf("%w: %q holds a control character", ErrInvalidRequest, v)}
			}
		}
	}
	return nil
}

// scoring is one Score call: its attempts and what they learned.
type scoring struct {
	c   *Client
	ep  *Endpoint
	req *Request

	attempts int
	// cred is the credential of the current attempt; tried holds the keys
	// refused so far (key mode); refreshed: a 401 already made us fetch
	// the credential again.
	cred        *secret
	key         string
	tried       map[string]bool
	refreshed   bool
	refreshNext bool
	last        *Error
}

func (s *scoring) run(ctx context.Context) (*Response, error) {
	c, ep := s.c, s.ep
	for {
		if ctx.Err() != nil {
			return nil, s.timedOut(ctx, nil)
		}
		auth, err := s.authorization(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, s.timedOut(ctx, err)
			}
			return nil, err
		}
		s.attempts++
		resp, sent, err := s.send(ctx, auth)
		if err != nil {
			redactErr := errors.New(s.scrub(err.Error()))
			switch {
			case !sent:
				// Never left this process: sending it again cannot
				// score it twice.
				s.last = &Error{Kind: KindFailed, Op: OpScore, Endpoint: ep.Name, Attempts: s.attempts, Err: redactErr}
				if werr := s.wait(ctx, 0); werr != nil {
					return nil, werr
				}
				continue
			case ctx.Err() != nil:
				return nil, s.timedOutInFlight(ctx, redactErr)
			case errors.Is(err, context.DeadlineExceeded):
				// The attempt's own timeout (ep.Timeout).
				if s.req.SafeToRepeat {
					s.last = &Error{Kind: KindTimedOut, Op: OpScore, Endpoint: ep.Name, Attempts: s.attempts, Sent: true, Err: redactErr}
					if werr := s.wait(ctx, 0); werr != nil {
						return nil, werr
					}
					continue
				}
				return nil, &Error{Kind: KindTimedOut, Op: OpScore, Endpoint: ep.Name, Attempts: s.attempts, Sent: true,
					Err:  fmt.Errorf("no answer within the endpoint's timeout of %s; the request may have been scored", ep.Timeout),
					Hint: "raise the endpoint's timeout, or set safe_to_repeat on the pipeline if scoring twice does no harm"}
			case s.req.SafeToRepeat:
				s.last = &Error{Kind: KindUnknown, Op: OpScore, Endpoint: ep.Name, Attempts: s.attempts, Sent: true, Err: redactErr}
				if werr := s.wait(ctx, 0); werr != nil {
					return nil, werr
				}
				continue
			default:
				return nil, &Error{Kind: KindUnknown, Op: OpScore, Endpoint: ep.Name, Attempts: s.attempts, Sent: true, Err: redactErr}
			}
		}
		resp.Attempts = s.attempts
		resp.RequestID = s.req.RequestID
		resp.Body = s.scrubBody(resp.Body)
		switch code := resp.StatusCode; {
		case code >= 200 && code < 300:
			if s.cred != nil && s.key != "" && s.key == s.cred.keys.Secondary && s.cred.keys.Secondary != s.cred.keys.Primary {
				s.cred.preferSecondary.Store(true)
			}
			c.log.Debug("online endpoint scored", "endpoint", ep.Name, "deployment", resp.Deployment, "status", code,
				"attempts", s.attempts, "latency", resp.Latency.Round(time.Microsecond), "request_id", s.req.RequestID)
			return resp, nil
		case code == http.StatusUnauthorized:
			if s.onUnauthorized(resp) {
				continue
			}
			return nil, s.answerError(KindRejected, resp)
		case code == http.StatusRequestTimeout && !s.req.SafeToRepeat:
			// The scoring server gave up waiting for the model
			// (request_timeout_ms): the request reached it and the model
			// may have run, so a second request could score twice.
			e := s.answerError(KindUnknown, resp)
			e.Hint = "the endpoint timed out after the request reached it (its request_timeout_ms); the model may have run, so batchd does not send it again: raise the deployment's request timeout, or set safe_to_repeat on the pipeline if scoring twice does no harm"
			return nil, e
		case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable || code == http.StatusRequestTimeout:
			// Refused before the model ran (429, 503), or a 408 that the
			// pipeline allows to be sent again: wait and send again.
			s.last = s.answerError(KindTimedOut, resp)
			if err := s.wait(ctx, jobs.HeaderRetryAfter(resp.header)); err != nil {
				return nil, err
			}
		case code >= 400 && code < 500:
			return nil, s.answerError(KindRejected, resp)
		default:
			return nil, s.answerError(KindFailed, resp)
		}
	}
}

// wait sleeps before the next attempt: d (the service's Retry-After) or
// the backoff for the attempts so far. When the deadline would pass first
// it returns the last error as KindTimedOut without sleeping.
func (s *scoring) wait(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		d = backoff.Delay(s.attempts, s.c.backBase, s.c.backMax)
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return s.timedOut(ctx, nil)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return s.timedOut(ctx, nil)
	case <-t.C:
		return nil
	}
}

// timedOut is the error for a deadline that passed with no request in
// flight: the last answer (a 429, say) says why.
func (s *scoring) timedOut(ctx context.Context, cause error) error {
	e := &Error{Kind: KindTimedOut, Op: OpScore, Endpoint: s.ep.Name, Attempts: s.attempts}
	if s.last != nil {
		*e = *s.last
		e.Kind = KindTimedOut
		e.Attempts = s.attempts
	}
	why := "the deadline passed"
	if errors.Is(ctx.Err(), context.Canceled) {
		why = "canceled"
	}
	switch {
	case cause != nil:
		e.Err = fmt.Errorf("%s while getting a credential: %w", why, cause)
		e.StatusCode = 0
	case s.last != nil && s.last.StatusCode != 0:
		e.Hint = fmt.Sprintf("%s while the endpoint was still answering %d; it is over capacity (raise its instance count or max_concurrent_requests_per_instance, or lower batchd's max_concurrent_requests)", why, s.last.StatusCode)
	case e.Err == nil:
		e.Err = fmt.Errorf("%w before the request could be sent", errDeadline)
	}
	return e
}

// timedOutInFlight: the deadline passed with the request in flight. When
// earlier attempts were refused (429/503), the error keeps that answer: it
// is why the time ran out.
func (s *scoring) timedOutInFlight(ctx context.Context, cause error) error {
	why := "the deadline passed"
	if errors.Is(ctx.Err(), context.Canceled) {
		why = "canceled"
	}
	e := &Error{Kind: KindTimedOut, Op: OpScore, Endpoint: s.ep.Name}
	if s.last != nil && s.last.StatusCode != 0 {
		*e = *s.last
		e.Kind = KindTimedOut
		e.Hint = fmt.Sprintf("%s with a request in flight, after the endpoint answered %d; it is over capacity (raise its instance count or max_concurrent_requests_per_instance, or lower batchd's max_concurrent_requests)", why, s.last.StatusCode)
	}
	e.Attempts, e.Sent = s.attempts, true
	e.Err = fmt.Errorf("%s with the request in flight; it may have been scored: %w", why, cause)
	return e
}

// answerError turns a non-2xx answer into an *Error, its message cut to one
// redacted line and scrubbed of the credential that was sent.
func (s *scoring) answerError(kind Kind, resp *Response) *Error {
	code, msg := parseErrorBody(resp.Body)
	if msg == "" && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		if m := wwwAuthDesc(resp.header.Get("WWW-Authenticate")); m != "" {
			msg = m
		}
	}
	e := &Error{Kind: kind, Op: OpScore, Endpoint: s.ep.Name, StatusCode: resp.StatusCode,
		Code: s.scrub(code), Message: s.scrub(msg), Response: resp, Attempts: s.attempts, Sent: true}
	e.Hint = scoreHint(s.ep, resp.StatusCode, code+" "+msg, s.c.mlScope)
	return e
}

// onUnauthorized decides whether a 401 is worth another attempt with a
// fresh credential, and prepares it: aml_token fetches a new token once;
// key fetches the keys again once, then tries the secondary key. An Entra
// token the credential just gave is not fetched again (it would be the
// same one).
func (s *scoring) onUnauthorized(resp *Response) bool {
	switch s.ep.mode() {
	case AuthAMLToken:
		if s.refreshed {
			return false
		}
		s.refreshed, s.refreshNext = true, true
		s.last = s.answerError(KindRejected, resp)
		return true
	case AuthKey:
		s.tried[s.key] = true
		s.last = s.answerError(KindRejected, resp)
		if !s.refreshed {
			s.refreshed, s.refreshNext = true, true
			return true // authorization fetches the keys again first
		}
		return s.cred != nil && s.nextKey(s.cred) != ""
	}
	return false
}

// nextKey is the first of the endpoint's keys not refused yet (the
// secondary first once it proved the one that works).
func (s *scoring) nextKey(sec *secret) string {
	order := []string{sec.keys.Primary, sec.keys.Secondary}
	if sec.preferSecondary.Load() {
		order[0], order[1] = order[1], order[0]
	}
	for _, k := range order {
		if k != "" && !s.tried[k] {
			return k
		}
	}
	return ""
}

// scrub removes the credentials this call knows from text that may reach
// an error: a misbehaving endpoint may echo its Authorization header.
func (s *scoring) scrub(text string) string {
	if s.cred != nil {
		for _, v := range []string{s.cred.value, s.cred.keys.Primary, s.cred.keys.Secondary} {
			if len(v) >= 8 {
				text = strings.ReplaceAll(text, v, jobs.Redacted)
			}
		}
	}
	for k := range s.tried {
		if len(k) >= 8 {
			text = strings.ReplaceAll(text, k, jobs.Redacted)
		}
	}
	return jobs.OneLine(text, 500)
}

// scrubBody removes the credentials this call sent from an answer's body:
// an endpoint that echoes its request headers must not carry a key or a
// token into a run record, a reply or a log. Bodies without one are
// returned as they are.
func (s *scoring) scrubBody(b []byte) []byte {
	if s.cred == nil {
		return b
	}
	for _, v := range []string{s.cred.value, s.cred.keys.Primary, s.cred.keys.Secondary} {
		if len(v) >= 8 && bytes.Contains(b, []byte(v)) {
			b = bytes.ReplaceAll(b, []byte(v), []byte(jobs.Redacted))
		}
	}
	return b
}

// sendTrace tracks whether an attempt's request may have reached the endpoint.
type sendTrace struct{ wroteHeaders atomic.Bool }

// send makes one attempt. sent is false only when the request certainly
// did not reach the endpoint.
func (s *scoring) send(ctx context.Context, auth string) (resp *Response, sent bool, err error) {
	c, ep := s.c, s.ep
	actx, cancel := context.WithTimeout(ctx, ep.Timeout)
	defer cancel()
	st := &sendTrace{}
	actx = httptrace.WithClientTrace(actx, &httptrace.ClientTrace{WroteHeaders: func() { st.wroteHeaders.Store(true) }})
	hreq, err := http.NewRequestWithContext(actx, http.MethodPost, ep.ScoringURI, bytes.NewReader(s.req.Body))
	if err != nil {
		return nil, false, err
	}
	h := hreq.Header
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
	h.Set("Authorization", auth)
	h.Set(headerClientReqID, s.req.RequestID)
	h.Set("User-Agent", "batchd")
	deployment := s.req.Deployment
	if deployment == "" {
		deployment = ep.Deployment
	}
	if deployment != "" {
		h.Set(HeaderDeployment, deployment)
	}
	start := time.Now()
	hresp, err := c.transport.Do(hreq)
	if err != nil {
		return nil, st.wroteHeaders.Load() && !neverSent(err), err
	}
	defer hresp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(hresp.Body, c.maxBody+1))
	if err != nil {
		return nil, true, fmt.Errorf("read the %d answer: %w", hresp.StatusCode, err)
	}
	if int64(len(body)) > c.maxBody {
		return nil, true, fmt.Errorf("the %d answer is larger than %d bytes", hresp.StatusCode, c.maxBody)
	}
	return &Response{
		StatusCode:  hresp.StatusCode,
		Body:        body,
		ContentType: hresp.Header.Get("Content-Type"),
		Deployment:  hresp.Header.Get(HeaderDeployment),
		Latency:     time.Since(start),
		header:      hresp.Header,
	}, true, nil
}

// neverSent: errors that happen before a byte of the request is written.
func neverSent(err error) bool {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return true
	}
	var opErr *net.OpError
	return errors.As(err, &opErr) && (opErr.Op == "dial" || opErr.Op == "proxyconnect")
}

func newRequestID() string { return uuid.NewString() }

// parseErrorBody reads code and message from an error answer: the ARM
// shape {"error":{"code","message"}}, a flat {"code","message"} or
// {"message"}, or plain text.
func parseErrorBody(body []byte) (code, msg string) {
	var w struct {
		Error   json.RawMessage `json:"error"`
		Code    string          `json:"code"`
		Message string          `json:"message"`
	}
	if json.Unmarshal(body, &w) == nil {
		var o struct{ Code, Message string }
		if json.Unmarshal(w.Error, &o) == nil && (o.Code != "" || o.Message != "") {
			return jobs.OneLine(o.Code, 100), jobs.OneLine(o.Message, 500)
		}
		var s string
		if json.Unmarshal(w.Error, &s) == nil && s != "" {
			return "", jobs.OneLine(s, 500)
		}
		return jobs.OneLine(w.Code, 100), jobs.OneLine(w.Message, 500)
	}
	return "", jobs.OneLine(string(body), 300)
}

func wwwAuthDesc(h string) string {
	const k = `error_description="`
	i := strings.Index(h, k)
	if i < 0 {
		return ""
	}
	rest := h[i+len(k):]
	if j := strings.IndexByte(rest, '"'); j >= 0 {
		return jobs.OneLine(rest[:j], 300)
	}
	return ""
}
