package jobs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/google/uuid"
)

// Defaults for Options.
const (
	DefaultMLScope       = "https://ml.azure.com/.default"
	DefaultARMScope      = "https://management.azure.com/.default"
	DefaultARMEndpoint   = "https://management.azure.com"
	DefaultARMAPIVersion = "2024-04-01"
)

// Request headers.
const (
	headerDeployment  = "azureml-model-deployment"
	headerClientReqID = "x-ms-client-request-id"
	// headerRepeatability is spelled as the Azure ML Python SDK spells it
	// (REPEATABILITY_REQUEST_ID = "repeatability_request-id"); it is set
	// directly in the header map so Go does not canonicalise it.
	headerRepeatability = "repeatability_request-id"
)

// Options configure a Client. The zero value is valid: public-cloud scopes
// and ARM endpoint, azcore's default transport, no logging.
type Options struct {
	// MLScope is the token scope for the batch endpoint (data plane).
	MLScope string
	// ARMScope is the token scope for the ARM jobs API (control plane).
	ARMScope string
	// ARMEndpoint is the ARM base URL, without a trailing slash.
	ARMEndpoint string
	// ARMAPIVersion is the api-version of the ARM jobs API.
	ARMAPIVersion string
	// Transport carries every request (nil: azcore's default client).
	//
	// Submit relies on the transport never to replay a POST the service may
	// have acted on. azcore's default client qualifies: its HTTP/1 transport
	// (net/http) replays a request with a body only when not one byte of it
	// was written, and its HTTP/2 transport (golang.org/x/net/http2) only
	// after GOAWAY for a stream the server never processed or REFUSED_STREAM
	// (RFC 9113 §8.7). An *http.Client whose *http.Transport negotiates
	// HTTP/2 through net/http's bundled implementation does not: as of Go
	// 1.26 that also replays after a peer's RST_STREAM(PROTOCOL_ERROR), which
	// proves nothing. Such a client must be limited to HTTP/1.1, or wired
	// with http2.ConfigureTransports. An http.Client follows a 307/308 by
	// re-sending the POST to the new location: the server has then refused
	// to process it, so that is still one submission.
	Transport policy.Transporter
	// Logger receives Debug lines for each call. It never sees a token.
	Logger *slog.Logger
	// GetRetry is the retry policy of every call except Submit's POST, which
	// is never retried. Zero fields take defaults: 4 retries, 1 s growing to
	// 30 s, 30 s per try. Retry-After is honoured (up to MaxRetryDelay).
	GetRetry policy.RetryOptions
	// AllowHTTP lets bearer tokens travel over plain http. Tests only.
	AllowHTTP bool
	// SubmitTimeout bounds a Submit whose context has no deadline (default
	// 2m), so a POST the service never answers cannot hang a caller; the
	// outcome is then ambiguous, as for any timeout after sending.
	SubmitTimeout time.Duration
}

// Client talks to Azure ML batch endpoints and, when an endpoint has a
// workspace, to the ARM jobs API. It is safe for concurrent use. It holds one
// bearer-token policy per scope: tokens are cached and refreshed by azcore
// shortly before they expire, so a busy client fetches a token about once
// per token lifetime, not once per request.
type Client struct {
	ml, arm    runtime.Pipeline
	armBase    *url.URL
	apiVersion string
	allowHTTP  bool
	submitTO   time.Duration
	log        *slog.Logger
	mlScope    string
	armScope   string
}

// The methods the orchestrator consumes (orchestrator.Submitter); declared
// here without importing it, since jobs imports no batchd package.
var _ interface {
	Submit(ctx context.Context, ep Endpoint, req JobRequest) (*Job, error)
	Get(ctx context.Context, ep Endpoint, name string) (*Job, error)
	Cancel(ctx context.Context, ep Endpoint, name string) error
	List(ctx context.Context, ep Endpoint, since time.Time, opts ...ListOption) ([]Job, error)
} = (*Client)(nil)

// New returns a Client that authenticates with cred.
func New(cred azcore.TokenCredential, opts Options) (*Client, error) {
	if cred == nil {
		return nil, errors.New("jobs: nil credential")
	}
	if opts.MLScope == "" {
		opts.MLScope = DefaultMLScope
	}
	if opts.ARMScope == "" {
		opts.ARMScope = DefaultARMScope
	}
	if opts.ARMEndpoint == "" {
		opts.ARMEndpoint = DefaultARMEndpoint
	}
	if opts.ARMAPIVersion == "" {
		opts.ARMAPIVersion = DefaultARMAPIVersion
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.SubmitTimeout <= 0 {
		opts.SubmitTimeout = 2 * time.Minute
	}
	r := opts.GetRetry
	if r.MaxRetries == 0 {
		r.MaxRetries = 4
	}
	if r.RetryDelay == 0 {
		r.RetryDelay = time.Second
	}
	if r.MaxRetryDelay == 0 {
		r.MaxRetryDelay = 30 * time.Second
	}
	if r.TryTimeout == 0 {
		r.TryTimeout = 30 * time.Second
	}
	armBase, err := url.Parse(strings.TrimRight(opts.ARMEndpoint, "/"))
	if err != nil || armBase.Host == "" || !(armBase.Scheme == "https" || opts.AllowHTTP && armBase.Scheme == "http") {
		return nil, fmt.Errorf("jobs: ARM endpoint %q must be an https:// URL", opts.ARMEndpoint)
	}
	cred = guardCredential{cred}
	pipeline := func(scope string) runtime.Pipeline {
		return runtime.NewPipeline("batchd/jobs", "v1", runtime.PipelineOptions{
			PerRetry: []policy.Policy{
				runtime.NewBearerTokenPolicy(cred, []string{scope},
					&policy.BearerTokenOptions{InsecureAllowCredentialWithHTTP: opts.AllowHTTP}),
				tracePolicy{},
			},
		}, &policy.ClientOptions{
			Transport: opts.Transport,
			Retry:     r,
			Telemetry: policy.TelemetryOptions{ApplicationID: "batchd"},
		})
	}
	return &Client{
		ml:         pipeline(opts.MLScope),
		arm:        pipeline(opts.ARMScope),
		armBase:    armBase,
		apiVersion: opts.ARMAPIVersion,
		allowHTTP:  opts.AllowHTTP,
		submitTO:   opts.SubmitTimeout,
		log:        opts.Logger,
		mlScope:    opts.MLScope,
		armScope:   opts.ARMScope,
	}, nil
}

// Submit invokes the batch endpoint: one POST to ep.ScoringURI, never
// retried. On success the job's name is known. On failure the error says,
// through IsRetryable, IsPermanent and IsAmbiguous, whether the POST may be
// sent again, must not be, or may already have created a job.
//
// The request id (req.RequestID, or a fresh one) is sent as
// x-ms-client-request-id and repeatability_request-id.
//
// The retry policy is off for the POST. The one resend azcore still makes
// is its answer to a 401 carrying a Continuous Access Evaluation claims
// challenge: the service refused the first POST, so nothing was created
// (TestSubmitClaimsChallenge). What the transport itself may replay is in
// Options.Transport.
func (c *Client) Submit(ctx context.Context, ep Endpoint, req JobRequest) (*Job, error) {
	if err := c.checkScoringURI(ep.ScoringURI); err != nil {
		return nil, err
	}
	body, err := RequestBody(req)
	if err != nil {
		return nil, err
	}
	rid := req.RequestID
	if rid == "" {
		rid = newRequestID()
	}
	deployment := req.Deployment
	if deployment == "" {
		deployment = ep.Deployment
	}
	// net/http refuses such header values itself, but only inside the round
	// trip, after the request has passed the point from which Submit can
	// prove it unsent: caught there, a bad value would read as ambiguous.
	for _, hv := range [][2]string{{"deployment", deployment}, {"request id", rid}} {
		if !validHeaderValue(hv[1]) {
			return nil, fmt.Errorf("%w: %s %q holds a control character", ErrInvalidRequest, hv[0], hv[1])
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, &TransportError{Op: OpSubmit, Method: http.MethodPost, URL: cleanURL(ep.ScoringURI), Sent: false, RequestID: rid, Err: err}
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.submitTO)
		defer cancel()
	}
	st := &sendTrace{}
	rctx := policy.WithRetryOptions(context.WithValue(ctx, traceKey{}, st), policy.RetryOptions{MaxRetries: -1})
	hreq, err := runtime.NewRequest(rctx, http.MethodPost, ep.ScoringURI)
	if err != nil {
		return nil, fmt.Errorf("%w: scoring uri %q: %v", ErrInvalidRequest, ep.ScoringURI, err) //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
	}
	if err := hreq.SetBody(streaming.NopCloser(bytes.NewReader(body)), "application/json"); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidRequest, err) //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
	}
	h := hreq.Raw().Header
	h.Set("Accept", "application/json")
	h.Set(headerClientReqID, rid)
	h[headerRepeatability] = []string{rid}
	if deployment != "" {
		h.Set(headerDeployment, deployment)
	}

	start := time.Now()
	resp, err := c.ml.Do(hreq) //nolint:bodyclose // runtime.Payload (here or in apiError) reads and closes it
	if !answered(resp, err) {
		return nil, noAnswer(OpSubmit, http.MethodPost, ep.ScoringURI, rid, st, err)
	}
	if !isSuccess(resp.StatusCode) {
		return nil, c.apiError(OpSubmit, false, http.MethodPost, ep.ScoringURI, resp, rid)
	}
	payload, err := runtime.Payload(resp)
	if err != nil {
		return nil, &TransportError{Op: OpSubmit, Method: http.MethodPost, URL: cleanURL(ep.ScoringURI), Sent: true, RequestID: rid,
			Err: fmt.Errorf("read the %d answer: %w", resp.StatusCode, err)}
	}
	job, err := parseJob(payload)
	if err == nil && job.Name == "" {
		err = errors.New("it names no job")
	}
	if err != nil {
		// The service said yes but we cannot tell to what: a job probably
		// exists. That is the ambiguous case, not a failure to retry.
		return nil, &TransportError{Op: OpSubmit, Method: http.MethodPost, URL: cleanURL(ep.ScoringURI), Sent: true, RequestID: rid,
			Err: fmt.Errorf("unusable %d answer: %w", resp.StatusCode, err)}
	}
	if job.Status == StatusUnknown {
		job.Status = StatusNotStarted
	}
	c.log.Debug("job submitted", "endpoint", ep.Name, "deployment", deployment, "job", job.Name,
		"request_id", rid, "http_status", resp.StatusCode, "took", time.Since(start).Round(time.Microsecond))
	return job, nil
}

// Get reads a job's status: through the ARM jobs API when ep has a
// workspace, else through GET {scoring_uri}/{name} on the endpoint. GETs are
// retried with backoff and honour Retry-After.
func (c *Client) Get(ctx context.Context, ep Endpoint, name string) (*Job, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: empty job name", ErrInvalidRequest)
	}
	var u string
	arm := ep.Workspace != nil
	if arm {
		base, err := c.workspaceURL(ep.Workspace)
		if err != nil {
			return nil, err
		}
		u = base + "/jobs/" + url.PathEscape(name) + "?api-version=" + url.QueryEscape(c.apiVersion)
	} else {
		if err := c.checkScoringURI(ep.ScoringURI); err != nil {
			return nil, err
		}
		u = strings.TrimRight(ep.ScoringURI, "/") + "/" + url.PathEscape(name)
	}
	body, err := c.do(ctx, OpGet, arm, http.MethodGet, u)
	if err != nil {
		return nil, err
	}
	job, err := parseJob(body)
	if err != nil {
		return nil, &TransportError{Op: OpGet, Method: http.MethodGet, URL: cleanURL(u), Sent: true, Err: err}
	}
	if job.Name == "" {
		job.Name = name
	}
	return job, nil
}

// Cancel asks ARM to cancel the job (POST .../jobs/{name}/cancel). It needs
// ep.Workspace (ErrNoWorkspace otherwise). The service cancels
// asynchronously: the job passes through CancelRequested to Canceled. A
// cancel is idempotent, so it is retried like a GET.
func (c *Client) Cancel(ctx context.Context, ep Endpoint, name string) error {
	if ep.Workspace == nil {
		return fmt.Errorf("cancel %s: %w", name, ErrNoWorkspace)
	}
	if name == "" {
		return fmt.Errorf("%w: empty job name", ErrInvalidRequest)
	}
	base, err := c.workspaceURL(ep.Workspace)
	if err != nil {
		return err
	}
	u := base + "/jobs/" + url.PathEscape(name) + "/cancel?api-version=" + url.QueryEscape(c.apiVersion)
	_, err = c.do(ctx, OpCancel, true, http.MethodPost, u)
	if err == nil {
		c.log.Debug("job cancel requested", "endpoint", ep.Name, "job", name)
	}
	return err
}

// List returns the workspace's jobs created at or after since (jobs without
// a creation time are included), through the ARM jobs list API, following
// nextLink. It exists to reconcile an ambiguous Submit: Job.Inputs and
// Job.CreatedAt let the caller recognise its job. It needs ep.Workspace.
//
// Paging stops early only when the service visibly returns jobs newest first
// and a whole page is older than since; otherwise every page is read and
// filtered, because stopping on a guess could hide the very job that the
// caller must not submit twice. "Visibly" means the creation times seen so
// far have gone down at least once and never up: a first page of one job, or
// of jobs with equal times, proves no order and does not stop the paging.
//
// A BeforePage option is called before every page after the first (a
// caller's request budget); its error ends the listing with that error. A
// Keep option filters the jobs and may end the listing early.
func (c *Client) List(ctx context.Context, ep Endpoint, since time.Time, opts ...ListOption) ([]Job, error) {
	var lo listOptions
	for _, o := range opts {
		o(&lo)
	}
	if ep.Workspace == nil {
		return nil, fmt.Errorf("list jobs of %s: %w", ep.Name, ErrNoWorkspace)
	}
	base, err := c.workspaceURL(ep.Workspace)
	if err != nil {
		return nil, err
	}
	next := base + "/jobs?api-version=" + url.QueryEscape(c.apiVersion)
	var (
		out []Job
		// descending: no creation time so far was later than the one before
		// it; decreased: at least one was earlier. Both are needed to stop.
		descending = true
		decreased  bool
		last       time.Time
	)
	for page := 0; next != ""; page++ {
		if page > 0 && lo.beforePage != nil {
			if err := lo.beforePage(ctx); err != nil {
				return nil, err
			}
		}
		body, err := c.do(ctx, OpList, true, http.MethodGet, next)
		if err != nil {
			return nil, err
		}
		var p struct {
			Value    []json.RawMessage `json:"value"`
			NextLink string            `json:"nextLink"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return nil, &TransportError{Op: OpList, Method: http.MethodGet, URL: cleanURL(next), Sent: true, Err: fmt.Errorf("job list page %d is not JSON: %w", page, err)}
		}
		allOlder := len(p.Value) > 0
		for _, raw := range p.Value {
			j, err := parseJob(raw)
			if err != nil {
				return nil, &TransportError{Op: OpList, Method: http.MethodGet, URL: cleanURL(next), Sent: true, Err: err}
			}
			if j.CreatedAt.IsZero() {
				descending, allOlder = false, false
				if stop := lo.take(&out, j); stop {
					return out, nil
				}
				continue
			}
			switch {
			case last.IsZero():
			case j.CreatedAt.After(last):
				descending = false
			case j.CreatedAt.Before(last):
				decreased = true
			}
			last = j.CreatedAt
			if j.CreatedAt.Before(since) {
				continue
			}
			allOlder = false
			if stop := lo.take(&out, j); stop {
				return out, nil
			}
		}
		if descending && decreased && allOlder {
			break
		}
		next = p.NextLink
		if next != "" {
			if err := c.checkNextLink(next); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// ListOption configures List.
type ListOption func(*listOptions)

type listOptions struct {
	beforePage func(ctx context.Context) error
	keep       func(Job) (keep, more bool)
}

// take adds j to out unless a Keep option drops it, and reports whether
// the Keep option wants no more.
func (o *listOptions) take(out *[]Job, j *Job) (stop bool) {
	if o.keep == nil {
		*out = append(*out, *j)
		return false
	}
	keep, more := o.keep(*j)
	if keep {
		*out = append(*out, *j)
	}
	return !more
}

// Keep makes List pass every job it would return to f, in the service's
// order (newest first): List returns only the jobs f keeps, and stops
// paging as soon as f answers more = false, with the jobs kept so far and
// no error. A caller that wants a few known jobs holds only those, and
// reads only the pages down to the last of them.
func Keep(f func(j Job) (keep, more bool)) ListOption {
	return func(o *listOptions) { o.keep = f }
}

// BeforePage makes List call f before it requests each page after the
// first: a caller that budgets its requests takes one there.
func BeforePage(f func(ctx context.Context) error) ListOption {
	return func(o *listOptions) { o.beforePage = f }
}

// do sends one retryable request (GET, or the idempotent cancel POST) and
// returns the 2xx body.
func (c *Client) do(ctx context.Context, op string, arm bool, method, u string) ([]byte, error) {
	pl := c.ml
	if arm {
		pl = c.arm
	}
	rid := newRequestID()
	st := &sendTrace{}
	req, err := runtime.NewRequest(context.WithValue(ctx, traceKey{}, st), method, u)
	if err != nil {
		return nil, fmt.Errorf("%w: %s %s: %v", ErrInvalidRequest, method, cleanURL(u), err) //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
	}
	req.Raw().Header.Set("Accept", "application/json")
	req.Raw().Header.Set(headerClientReqID, rid)
	start := time.Now()
	resp, err := pl.Do(req) //nolint:bodyclose // runtime.Payload (here or in apiError) reads and closes it
	if !answered(resp, err) {
		return nil, noAnswer(op, method, u, rid, st, err)
	}
	if !isSuccess(resp.StatusCode) {
		return nil, c.apiError(op, arm, method, u, resp, rid)
	}
	body, err := runtime.Payload(resp)
	if err != nil {
		return nil, &TransportError{Op: op, Method: method, URL: cleanURL(u), Sent: true, RequestID: rid, Err: err}
	}
	c.log.Debug("azure ml call", "op", op, "method", method, "url", cleanURL(u), "request_id", rid,
		"http_status", resp.StatusCode, "took", time.Since(start).Round(time.Microsecond))
	return body, nil
}

func (c *Client) apiError(op string, arm bool, method, u string, resp *http.Response, rid string) error {
	body, _ := runtime.Payload(resp)
	code, msg := parseErrorBody(body)
	e := &APIError{
		Op:         op,
		Method:     method,
		URL:        cleanURL(u),
		StatusCode: resp.StatusCode,
		Code:       code,
		Message:    msg,
		RetryAfter: HeaderRetryAfter(resp.Header),
		RequestID:  rid,
	}
	if e.Message == "" && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		// Some front doors answer 401 with an empty body and say why only in
		// WWW-Authenticate (error_description="...").
		if m := wwwAuthDesc.FindStringSubmatch(resp.Header.Get("WWW-Authenticate")); m != nil {
			e.Message = oneLine(m[1], 300)
		}
	}
	scope := c.mlScope
	if arm {
		scope = c.armScope
	}
	e.Hint = authHint(op, arm, resp.StatusCode, e.Code, e.Message, scope)
	return e
}

func isSuccess(code int) bool { return code >= 200 && code < 300 }

// validHeaderValue is net/http's rule for a header field value: no control
// character other than horizontal tab.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if b := v[i]; b < ' ' && b != '\t' || b == 0x7f {
			return false
		}
	}
	return true
}

// answered reports whether the pipeline's result is an HTTP answer to
// classify by its status (else noAnswer classifies err). azcore can return
// an error together with a non-2xx answer: when it cannot parse a 401's
// claims challenge, when an answer's body cannot be read, and when the
// context ends just after the answer arrived. The service's status then
// decides: the request did get an answer. Two exceptions: a 2xx with an
// error stays a request without a usable answer (a job may exist), and a
// failure to get the token a claims challenge asked for stays a *TokenError
// (the resend was not sent; the first request was refused).
func answered(resp *http.Response, err error) bool {
	if err == nil {
		return true
	}
	var te *TokenError
	return resp != nil && resp.StatusCode > 0 && !isSuccess(resp.StatusCode) && !errors.As(err, &te)
}

func (c *Client) checkScoringURI(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%w: scoring uri %q is not a URL like https://<endpoint>.<region>.inference.ml.azure.com/jobs", ErrInvalidRequest, s)
	}
	if u.Scheme != "https" && !(c.allowHTTP && u.Scheme == "http") {
		return fmt.Errorf("%w: scoring uri %q must be https", ErrInvalidRequest, s)
	}
	return nil
}

func (c *Client) workspaceURL(ws *Workspace) (string, error) {
	if ws.Subscription == "" || ws.ResourceGroup == "" || ws.Name == "" {
		return "", fmt.Errorf("%w: workspace needs subscription, resource group and name", ErrInvalidRequest)
	}
	return c.armBase.String() + "/subscriptions/" + url.PathEscape(ws.Subscription) +
		"/resourceGroups/" + url.PathEscape(ws.ResourceGroup) +
		"/providers/Microsoft.MachineLearningServices/workspaces/" + url.PathEscape(ws.Name), nil
}

// checkNextLink refuses to follow a nextLink off the ARM host: the pipeline
// would send it the management token.
func (c *Client) checkNextLink(next string) error {
	u, err := url.Parse(next)
	if err != nil || !strings.EqualFold(u.Host, c.armBase.Host) || u.Scheme != c.armBase.Scheme {
		return &TransportError{Op: OpList, Method: http.MethodGet, URL: cleanURL(next), Sent: true,
			Err: fmt.Errorf("nextLink leaves the ARM endpoint %s; not following it", c.armBase.Host)}
	}
	return nil
}

// noAnswer classifies a request that got no HTTP answer.
func noAnswer(op, method, u, rid string, st *sendTrace, err error) error {
	var te *TokenError
	if errors.As(err, &te) {
		return te // no token: the request was not sent
	}
	sent := !(neverSent(err) || st.provenUnsent())
	return &TransportError{Op: op, Method: method, URL: cleanURL(u), Sent: sent, RequestID: rid, Err: err}
}

// cleanURL drops the query and fragment: errors and logs carry where a
// request went, not its parameters.
func cleanURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(invalid url)"
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}

var wwwAuthDesc = regexp.MustCompile(`error_description="([^"]*)"`)

// NewRequestID returns a fresh request id (a random UUID) for
// JobRequest.RequestID. Callers that must be able to find a job after an
// ambiguous submit record it before calling Submit.
func NewRequestID() string { return newRequestID() }

func newRequestID() string { return uuid.NewString() }

// sendTrace records whether a request reached the transport (tracePolicy
// ran: every policy before it, the bearer policy included, let it through)
// and, through net/http's client trace, whether the transport began it
// (GetConn) and wrote its headers. A request that never reached the
// transport was not sent; nor was one the transport began but never wrote
// the headers of. A transport that does not report traces leaves began and
// wroteHeaders false, and then only the error's type can prove anything
// (neverSent).
//
// Why "never reached" matters: azcore's retry policy replaces the error of a
// request whose context has ended with the bare context error, so a context
// that ends while the bearer policy waits for a token loses its *TokenError.
type sendTrace struct {
	reached, began, wroteHeaders atomic.Bool
}

// provenUnsent is read after the pipeline returned. For HTTP/1, net/http's
// round trip waits for its write loop before returning an error, and for
// HTTP/2 an aborted stream writes no body after the abort, so a later
// WroteHeaders can at most announce headers without a body: never a request
// the service could act on.
func (s *sendTrace) provenUnsent() bool {
	return s != nil && (!s.reached.Load() || s.began.Load() && !s.wroteHeaders.Load())
}

type traceKey struct{}

// tracePolicy attaches the request's sendTrace right before the transport,
// after the bearer policy, so the token requests a credential makes with the
// same context do not touch it.
type tracePolicy struct{}

func (tracePolicy) Do(req *policy.Request) (*http.Response, error) {
	st, _ := req.Raw().Context().Value(traceKey{}).(*sendTrace)
	if st == nil {
		return req.Next()
	}
	st.reached.Store(true)
	ctx := httptrace.WithClientTrace(req.Raw().Context(), &httptrace.ClientTrace{
		GetConn:      func(string) { st.began.Store(true) },
		WroteHeaders: func() { st.wroteHeaders.Store(true) },
	})
	return req.Clone(ctx).Next()
}
