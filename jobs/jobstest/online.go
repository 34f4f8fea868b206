package jobstest

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/batchd/batchd/jobs/online"
)

// Online endpoints.
//
// An online endpoint answers POST {OnlineScoringURI} itself. It checks the
// credential of its auth mode:
//
//   - aad_token: an Entra token for https://ml.azure.com (a wrong audience
//     gets 401 InvalidAuthenticationTokenAudience), whose identity is not
//     denied ActionOnlineScore (403 naming it);
//   - aml_token: a token from the ARM token action, for this endpoint and in
//     date (an Entra token gets 401 naming the audience);
//   - key: the current primary or secondary key (RotateKey regenerates one;
//     the old value stops working at once).
//
// The ARM actions POST .../onlineEndpoints/{name}/token (aml_token
// endpoints) and .../listKeys (key endpoints) need a management token whose
// identity is not denied ActionOnlineToken / ActionListKeys.
//
// Over MaxConcurrent requests in flight the endpoint answers 429 with
// Retry-After (whole seconds) and retry-after-ms. Each scored request waits
// Latency (plus up to LatencyJitter) and is answered by Handler, by default
// an echo: {"deployment": D, "input": <the request body>}, with the
// azureml-model-deployment header naming D.

// Actions named in the online endpoints' 403 answers.
const (
	ActionOnlineScore = online.ActionScore
	ActionOnlineToken = online.ActionToken
	ActionListKeys    = online.ActionListKeys
)

// OnlineOptions declare an online endpoint.
type OnlineOptions struct {
	// AuthMode is online.AuthAADToken (default), AuthAMLToken or AuthKey.
	AuthMode string
	// Deployments are the endpoint's deployments (default: DefaultDeployment
	// only). A request naming another one gets 404.
	Deployments []string
	// DefaultDeployment serves requests without azureml-model-deployment
	// (default "blue").
	DefaultDeployment string
	// MaxConcurrent caps the requests in flight; over it the endpoint
	// answers 429 with RetryAfter. 0: no cap.
	MaxConcurrent int
	// RetryAfter of a 429 (default 1s).
	RetryAfter time.Duration
	// Latency is added to every scored request, plus a random part up to
	// LatencyJitter.
	Latency, LatencyJitter time.Duration
	// Handler answers a scored request (default: the echo).
	Handler func(OnlineRequest) (status int, body []byte)
	// AMLTokenLifetime is the life of tokens from the token action (default
	// 1h); their refreshAfterTimeUtc is halfway.
	AMLTokenLifetime time.Duration
}

// OnlineRequest is one request an online endpoint scored (it passed the
// credential and concurrency checks).
type OnlineRequest struct {
	Seq        int64
	Endpoint   string
	Deployment string
	RequestID  string
	Body       []byte // only with Options.RecordBodies
	At         time.Time
}

type onlineEndpoint struct {
	name string
	opts OnlineOptions

	inflight  atomic.Int64
	peak      atomic.Int64
	scored    atomic.Int64
	throttled atomic.Int64

	mu                 sync.Mutex
	primary, secondary string
	requests           []OnlineRequest
}

// AddOnlineEndpoint declares (or redeclares, with new keys) an online
// endpoint.
func (s *Sim) AddOnlineEndpoint(name string, opts OnlineOptions) error {
	if name == "" || strings.ContainsAny(name, "/?# ") {
		return fmt.Errorf("jobstest: bad online endpoint name %q", name)
	}
	if opts.AuthMode == "" {
		opts.AuthMode = online.AuthAADToken
	}
	if !slices.Contains(online.AuthModes, opts.AuthMode) {
		return fmt.Errorf("jobstest: auth mode %q is not one of %s", opts.AuthMode, strings.Join(online.AuthModes, ", "))
	}
	if opts.DefaultDeployment == "" {
		opts.DefaultDeployment = "blue"
	}
	if len(opts.Deployments) == 0 {
		opts.Deployments = []string{opts.DefaultDeployment}
	}
	if opts.RetryAfter <= 0 {
		opts.RetryAfter = time.Second
	}
	if opts.AMLTokenLifetime <= 0 {
		opts.AMLTokenLifetime = time.Hour
	}
	ep := &onlineEndpoint{name: name, opts: opts}
	ep.primary, ep.secondary = s.newKey(), s.newKey()
	s.mu.Lock()
	s.online[name] = ep
	s.mu.Unlock()
	return nil
}

func (s *Sim) newKey() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	k := base64.RawURLEncoding.EncodeToString(b)
	s.mu.Lock()
	s.issued = append(s.issued, k)
	s.mu.Unlock()
	return k
}

func (s *Sim) onlineEP(name string) *onlineEndpoint {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.online[name]
}

// OnlineScoringURI is the scoring URI of the named online endpoint.
func (s *Sim) OnlineScoringURI(name string) string { return s.url + "/online/" + name + "/score" }

// OnlineEndpoint returns an online.Endpoint for the named endpoint, with
// its auth mode and the Sim's workspace. Declare it first.
func (s *Sim) OnlineEndpoint(name string) online.Endpoint {
	ep := online.Endpoint{Name: name, ScoringURI: s.OnlineScoringURI(name), AuthMode: online.AuthAADToken}
	if e := s.onlineEP(name); e != nil {
		ep.AuthMode = e.opts.AuthMode
	}
	ws := s.opts.Workspace
	ep.Workspace = &ws
	return ep
}

// OnlineKeys returns the endpoint's current keys.
func (s *Sim) OnlineKeys(name string) online.Keys {
	e := s.onlineEP(name)
	if e == nil {
		return online.Keys{}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return online.Keys{Primary: e.primary, Secondary: e.secondary}
}

// RotateKey regenerates the endpoint's "primary" or "secondary" key: the
// old value is refused from now on.
func (s *Sim) RotateKey(name, which string) {
	e := s.onlineEP(name)
	if e == nil {
		return
	}
	k := s.newKey()
	e.mu.Lock()
	defer e.mu.Unlock()
	if which == "secondary" {
		e.secondary = k
	} else {
		e.primary = k
	}
}

// OnlineScored is the number of requests the endpoint scored (not counting
// those refused for their credential or over MaxConcurrent).
func (s *Sim) OnlineScored(name string) int64 {
	if e := s.onlineEP(name); e != nil {
		return e.scored.Load()
	}
	return 0
}

// OnlinePeak is the most requests the endpoint had in flight at once
// (those over MaxConcurrent included).
func (s *Sim) OnlinePeak(name string) int64 {
	if e := s.onlineEP(name); e != nil {
		return e.peak.Load()
	}
	return 0
}

// OnlineThrottled is the number of 429 answers the endpoint gave.
func (s *Sim) OnlineThrottled(name string) int64 {
	if e := s.onlineEP(name); e != nil {
		return e.throttled.Load()
	}
	return 0
}

// OnlineRequests returns the requests the endpoint scored, in order.
func (s *Sim) OnlineRequests(name string) []OnlineRequest {
	e := s.onlineEP(name)
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.requests)
}

func amlAudience(endpoint string) string { return "https://ml.azure.com/onlineEndpoints/" + endpoint }

func (s *Sim) handleScore(w http.ResponseWriter, r *http.Request) {
	e := s.onlineEP(r.PathValue("endpoint"))
	if e == nil {
		writeError(w, http.StatusNotFound, "EndpointNotFound", fmt.Sprintf("Online endpoint '%s' was not found.", r.PathValue("endpoint")))
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, 16<<20))
	if err != nil {
		return
	}
	if !s.authorizeOnline(w, r, e) {
		return
	}
	deployment := r.Header.Get(online.HeaderDeployment)
	if deployment == "" {
		deployment = e.opts.DefaultDeployment
	}
	if !slices.Contains(e.opts.Deployments, deployment) {
		writeError(w, http.StatusNotFound, "DeploymentNotFound", fmt.Sprintf("The deployment '%s' was not found on endpoint '%s'.", deployment, e.name))
		return
	}
	n := e.inflight.Add(1)
	defer e.inflight.Add(-1)
	for p := e.peak.Load(); n > p && !e.peak.CompareAndSwap(p, n); p = e.peak.Load() {
	}
	if m := e.opts.MaxConcurrent; m > 0 && n > int64(m) {
		e.throttled.Add(1)
		secs := (e.opts.RetryAfter + time.Second - 1) / time.Second
		w.Header().Set("Retry-After", strconv.FormatInt(int64(secs), 10))
		w.Header().Set("retry-after-ms", strconv.FormatInt(e.opts.RetryAfter.Milliseconds(), 10))
		writeError(w, http.StatusTooManyRequests, "TooManyRequests",
			fmt.Sprintf("Too many requests: deployment %s has %d requests in flight (max_concurrent_requests_per_instance).", deployment, m))
		return
	}
	if d := e.opts.Latency + s.jitter(e.opts.LatencyJitter); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		case <-s.done:
			t.Stop()
			panic(http.ErrAbortHandler)
		}
	}
	req := OnlineRequest{Endpoint: e.name, Deployment: deployment, RequestID: r.Header.Get("x-ms-client-request-id"), At: time.Now()}
	if s.opts.RecordBodies {
		req.Body = body
	}
	status, out := http.StatusOK, []byte(nil)
	switch {
	case e.opts.Handler != nil:
		status, out = e.opts.Handler(OnlineRequest{Endpoint: e.name, Deployment: deployment, RequestID: req.RequestID, Body: body, At: req.At})
	case !json.Valid(body):
		status, out = http.StatusBadRequest, []byte(`{"message":"the request body is not JSON"}`)
	default:
		out, _ = json.Marshal(map[string]any{"deployment": deployment, "input": json.RawMessage(body)})
	}
	e.mu.Lock()
	req.Seq = e.scored.Add(1)
	e.requests = append(e.requests, req)
	e.mu.Unlock()
	w.Header().Set(online.HeaderDeployment, deployment)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(out)
}

func (s *Sim) jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Duration(s.rng.Int64N(int64(d)))
}

// authorizeOnline checks the scoring request's credential for e's auth
// mode, and writes the 401/403 answer when it fails.
func (s *Sim) authorizeOnline(w http.ResponseWriter, r *http.Request, e *onlineEndpoint) bool {
	if e.opts.AuthMode == online.AuthAADToken {
		_, ok := s.authorize(w, r, AudienceML, ActionOnlineScore)
		return ok
	}
	unauthorized := func(code, msg string) bool {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		writeError(w, http.StatusUnauthorized, code, msg)
		return false
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || tok == "" {
		return unauthorized("AuthenticationFailed", "The 'Authorization' header is missing.")
	}
	if e.opts.AuthMode == online.AuthKey {
		e.mu.Lock()
		valid := tok == e.primary || tok == e.secondary
		e.mu.Unlock()
		if !valid {
			return unauthorized("InvalidKey", "The key is not valid for this endpoint (keys may have been regenerated).")
		}
		return true
	}
	c, err := s.verify(tok)
	if err != nil {
		return unauthorized("InvalidAuthenticationToken", "The Azure ML token is invalid.")
	}
	if c.Aud != amlAudience(e.name) {
		return unauthorized("InvalidAuthenticationTokenAudience",
			fmt.Sprintf("The token has audience '%s'; endpoint '%s' uses aml_token authentication and takes tokens from its token action.", c.Aud, e.name))
	}
	if time.Now().Unix() >= c.Exp {
		return unauthorized("ExpiredAuthenticationToken", "The Azure ML token has expired.")
	}
	return true
}

// handleOnlineToken is the ARM token action of an aml_token endpoint.
func (s *Sim) handleOnlineToken(w http.ResponseWriter, r *http.Request) {
	if !s.armCheck(w, r, ActionOnlineToken) {
		return
	}
	e := s.armOnline(w, r)
	if e == nil {
		return
	}
	if e.opts.AuthMode != online.AuthAMLToken {
		writeError(w, http.StatusBadRequest, "BadArgument", fmt.Sprintf("Endpoint '%s' uses auth mode %s; tokens are only issued for aml_token endpoints.", e.name, e.opts.AuthMode))
		return
	}
	life := e.opts.AMLTokenLifetime
	tok, c := s.mint(amlAudience(e.name), s.opts.Tenant, "aml-"+e.name, life)
	s.mu.Lock()
	s.issued = append(s.issued, tok)
	s.tokenReqs = append(s.tokenReqs, TokenRequest{Protocol: "aml-token", Tenant: s.opts.Tenant, ClientID: e.name, Audience: c.Aud, At: time.Now()})
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{
		"accessToken":         tok,
		"expiryTimeUtc":       c.Exp,
		"refreshAfterTimeUtc": c.Iat + int64(life/time.Second)/2,
		"tokenType":           "Bearer",
	})
}

// handleListKeys is the ARM listKeys action of a key endpoint.
func (s *Sim) handleListKeys(w http.ResponseWriter, r *http.Request) {
	if !s.armCheck(w, r, ActionListKeys) {
		return
	}
	e := s.armOnline(w, r)
	if e == nil {
		return
	}
	if e.opts.AuthMode != online.AuthKey {
		writeError(w, http.StatusBadRequest, "BadArgument", fmt.Sprintf("Endpoint '%s' uses auth mode %s; keys exist only for key endpoints.", e.name, e.opts.AuthMode))
		return
	}
	e.mu.Lock()
	p, sec := e.primary, e.secondary
	e.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"primaryKey": p, "secondaryKey": sec})
}

func (s *Sim) armOnline(w http.ResponseWriter, r *http.Request) *onlineEndpoint {
	e := s.onlineEP(r.PathValue("endpoint"))
	if e == nil {
		writeError(w, http.StatusNotFound, "ResourceNotFound",
			fmt.Sprintf("The Resource 'Microsoft.MachineLearningServices/workspaces/%s/onlineEndpoints/%s' under resource group '%s' was not found.",
				r.PathValue("ws"), r.PathValue("endpoint"), r.PathValue("rg")))
	}
	return e
}

// ---- in-process serving ----

// NewInProcess builds a Sim that listens on nothing and starts no
// goroutine: it serves only through InProcessTransport, on the caller's
// goroutine. Tests inside a testing/synctest bubble build it there, so that
// its tokens' times and its handlers' timers run on fake time. Its URLs are
// https://jobstest.invalid; the managed identity endpoint does not exist
// (use Credential). Close it when done.
func NewInProcess(opts Options) *Sim {
	s := newSim(opts)
	s.url = "https://jobstest.invalid"
	s.identityHeader = randomHex(16)
	return s
}

// InProcessTransport serves each request with the Sim's handler on the
// calling goroutine, without sockets (for a Sim from NewInProcess, or any
// Sim). It reports the request as written (httptrace WroteHeaders) before
// handling it; a fault that resets the connection becomes an error, after
// the handler ran for ResetAfter.
func (s *Sim) InProcessTransport() policy.Transporter { return inProcess{s} }

type inProcess struct{ s *Sim }

var errInProcessReset = errors.New("jobstest: connection reset by peer (in-process)")

func (t inProcess) Do(req *http.Request) (resp *http.Response, err error) {
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	if tr := httptrace.ContextClientTrace(req.Context()); tr != nil {
		if tr.GetConn != nil {
			tr.GetConn(req.URL.Host)
		}
		if tr.WroteHeaders != nil {
			tr.WroteHeaders()
		}
	}
	sreq := req.Clone(req.Context())
	sreq.RequestURI = req.URL.RequestURI()
	sreq.RemoteAddr = "127.0.0.1:1"
	if sreq.Body == nil {
		sreq.Body = http.NoBody
	}
	rec := &recorder{header: http.Header{}}
	defer func() {
		if p := recover(); p != nil {
			if err, ok := p.(error); !ok || !errors.Is(err, http.ErrAbortHandler) {
				panic(p)
			}
			resp, err = nil, errInProcessReset
		}
	}()
	t.s.handler.ServeHTTP(rec, sreq)
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	if rec.code == 0 {
		rec.code = http.StatusOK
	}
	return &http.Response{
		Status: strconv.Itoa(rec.code) + " " + http.StatusText(rec.code), StatusCode: rec.code,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: rec.header, Body: io.NopCloser(bytes.NewReader(rec.body.Bytes())),
		ContentLength: int64(rec.body.Len()), Request: req,
	}, nil
}

type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
}
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.body.Write(b)
}
