// Package jobstest is an in-process simulator of the Azure services batchd
// talks to: Microsoft Entra token endpoints and Azure ML batch endpoints with
// their jobs, plus the ARM jobs API. Tests, benchmarks, the chaos soak and
// `batchd-dev` use it; it imports no testing package (the TB helper New is in
// its own file) and listens on loopback only, on random ports.
//
// # Shape
//
// Start opens two listeners on 127.0.0.1:
//
//   - A TLS server, with a CA generated at start (CACertPEM, WriteCA,
//     Transport, HTTPClient trust it), serving
//     – batch endpoints: POST {URL}/{endpoint}/jobs creates a job,
//     GET {URL}/{endpoint}/jobs/{name} reads it (ScoringURI gives the URI);
//     – ARM: GET/POST {URL}/subscriptions/{sub}/resourceGroups/{rg}/providers/
//     Microsoft.MachineLearningServices/workspaces/{ws}/jobs[/{name}[/cancel]]
//     (ARMEndpoint is URL; Workspace names the one workspace);
//     – a Microsoft Entra authority (AuthorityHost):
//     GET /{tenant}/v2.0/.well-known/openid-configuration and
//     POST /{tenant}/oauth2/v2.0/token (client secret, certificate and
//     workload identity assertions).
//   - A plain-http listener speaking the managed identity App Service
//     protocol: IdentityEndpoint and IdentityHeader are the values of
//     IDENTITY_ENDPOINT and IDENTITY_HEADER.
//
// # Tokens
//
// Tokens are JWT-shaped (aud, iss, iat, nbf, exp, oid, tid, appid) and
// signed with an HMAC key shared by every Sim of the process (so a token
// that azidentity's process-wide managed identity cache hands out verifies
// in any Sim). The data plane accepts only the audience https://ml.azure.com
// and ARM only https://management.azure.com; a wrong audience gets 401 with
// an ARM-style body and WWW-Authenticate, a forged or expired token 401,
// a denied identity (DenyIdentity) 403 naming the missing action. Every token
// request is counted (RouteToken) and recorded (TokenRequests). Credential
// hands out tokens in-process (no HTTP, no azidentity) for tests that are
// not about credential wiring; Token mints one with any audience or
// lifetime; IssuedTokens lists them all for leak checks.
//
// # Jobs
//
// Endpoints are created on first POST (model kind, any deployment name,
// default deployment "default") or declared with AddEndpoint. A model
// deployment takes exactly one UriFile/UriFolder input; MLTable is refused;
// Literal inputs only go to pipeline deployments. Each job follows a
// Lifecycle (poll-counted or wall-clock steps), chosen by Options.Outcome,
// the endpoint's Lifecycle or DefaultLifecycle. Jobs are kept in memory (a
// map for O(1) reads and a slice in creation order for listing); Jobs
// returns a snapshot.
//
// # Faults
//
// Each route (RouteToken, RouteCreate, RouteGet, RouteARMGet,
// RouteARMCancel, RouteARMList) has a queue of faults, consumed one per
// request (Inject), and an optional random fault rate for soaks
// (SetFaultRate). A Fault answers with a status (and Retry-After, body),
// before or after the request is handled (AfterHandling on RouteCreate
// creates the job, then answers the status: a gateway failing after the
// service accepted), resets the connection before or after the request is
// handled (ResetAfter on RouteCreate creates the job, then resets: the
// ambiguous case), or delays the answer. Counts reports requests per route.
//
// The Sim is safe for concurrent use.
package jobstest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/big"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/batchd/batchd/jobs"
)

// Options configure a Sim. The zero value is a working simulator.
type Options struct {
	// TokenLifetime is the lifetime of issued tokens (default 1h).
	TokenLifetime time.Duration
	// Tenant is the tenant id of managed identity tokens (default a fixed
	// GUID). The authority accepts any tenant unless Tenants is set.
	Tenant string
	// Tenants, when set, are the only tenants the authority knows; others
	// get AADSTS90002.
	Tenants []string
	// ClientSecrets, when set, maps the client ids the authority knows to
	// their secrets: an unknown client id gets AADSTS700016, a wrong secret
	// AADSTS7000215. Nil accepts any client id and secret.
	ClientSecrets map[string]string
	// Workspace is the one workspace the ARM API serves (default
	// subscription 00000000-0000-0000-0000-00000000cafe, resource group
	// batchd-sim, workspace sim).
	Workspace jobs.Workspace
	// Lifecycle is the default lifecycle of endpoints created on first use
	// (zero: DefaultLifecycle).
	Lifecycle Lifecycle
	// Outcome, when set, decides each job's lifecycle at creation; a zero
	// Lifecycle falls back to the endpoint's. It runs on the request path:
	// keep it fast, and safe for concurrent use.
	Outcome func(JobView) Lifecycle
	// ListPageSize is the ARM list page size (default 100).
	ListPageSize int
	// ListOldestFirst lists jobs oldest first (default newest first), to
	// exercise clients that must not assume an order.
	ListOldestFirst bool
	// RecordBodies keeps each job's POST body for JobView.Body.
	RecordBodies bool
	// ARMLongURIs makes the ARM jobs API report short datastore URIs
	// (azureml://datastores/<ds>/paths/<p>) in their long, workspace-
	// qualified form, as a service may normalise what it was given.
	ARMLongURIs bool
	// Seed seeds the random fault rates (0: random).
	Seed uint64
	// Logger gets one Debug line per request (nil: none). It never sees a
	// token.
	Logger *slog.Logger
}

// Route names a group of requests for fault injection and counting.
type Route string

// Routes.
const (
	RouteToken     Route = "token"     // managed identity and authority token requests
	RouteDiscovery Route = "discovery" // openid-configuration
	RouteCreate    Route = "create"    // POST {endpoint}/jobs
	RouteGet       Route = "get"       // GET {endpoint}/jobs/{name}
	RouteARMGet    Route = "arm-get"   // GET .../workspaces/{ws}/jobs/{name}
	RouteARMCancel Route = "arm-cancel"
	RouteARMList   Route = "arm-list"
	// Online endpoints (online.go).
	RouteScore       Route = "score"        // POST {OnlineScoringURI}
	RouteOnlineToken Route = "online-token" // POST .../onlineEndpoints/{name}/token (ARM)
	RouteListKeys    Route = "list-keys"    // POST .../onlineEndpoints/{name}/listKeys (ARM)
)

var routes = []Route{RouteToken, RouteDiscovery, RouteCreate, RouteGet, RouteARMGet, RouteARMCancel, RouteARMList,
	RouteScore, RouteOnlineToken, RouteListKeys}

// numRoutes is len(routes), as a constant for the per-route arrays.
const numRoutes = 10

func routeIndex(r Route) int {
	for i, x := range routes {
		if x == r {
			return i
		}
	}
	return -1
}

// Sim is a running simulator. Close it when done.
type Sim struct {
	opts Options
	log  *slog.Logger

	url, miURL     string
	identityHeader string
	caPEM          []byte
	transport      *http.Transport
	srv, miSrv     *http.Server
	done           chan struct{}
	closeOnce      sync.Once
	serving        sync.WaitGroup // Serve loops
	handlers       sync.WaitGroup // requests in flight

	counts   [numRoutes]atomic.Int64
	seq      atomic.Int64
	verified sync.Map // token string -> *claims, for tokens that verified once

	mu        sync.Mutex
	jobs      map[string]*job
	order     []*job
	endpoints map[string]*endpoint
	denied    map[string]bool // oid or appid
	// deniedActions holds "<oid or appid> <action>" pairs (DenyAction).
	deniedActions map[string]bool
	online        map[string]*onlineEndpoint
	handler       http.Handler
	missing       map[string]bool // managed identity client ids ("" = system) that do not exist
	faults        [numRoutes][]Fault
	rates         [numRoutes]faultRate
	rng           *mrand.Rand
	events        *emitter // EmitEvents; nil until then
	tokenReqs     []TokenRequest
	issued        []string
}

// Start starts a simulator on loopback.
func Start(opts Options) (*Sim, error) {
	return listen(newSim(opts))
}

// newSim builds a Sim with opts' defaults and its handler, listening on
// nothing (NewInProcess serves it through InProcessTransport).
func newSim(opts Options) *Sim {
	if opts.TokenLifetime <= 0 {
		opts.TokenLifetime = time.Hour
	}
	if opts.Tenant == "" {
		opts.Tenant = "00000000-0000-4000-8000-0000000000e1"
	}
	if opts.Workspace == (jobs.Workspace{}) {
		opts.Workspace = jobs.Workspace{Subscription: "00000000-0000-0000-0000-00000000cafe", ResourceGroup: "batchd-sim", Name: "sim"}
	}
	if opts.Lifecycle.IsZero() {
		opts.Lifecycle = DefaultLifecycle()
	}
	if opts.ListPageSize <= 0 {
		opts.ListPageSize = 100
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	seed := opts.Seed
	if seed == 0 {
		seed = mrand.Uint64()
	}
	s := &Sim{
		opts:      opts,
		log:       opts.Logger,
		done:      make(chan struct{}),
		jobs:      map[string]*job{},
		endpoints: map[string]*endpoint{},
		denied:    map[string]bool{},
		missing:   map[string]bool{},
		rng:       mrand.New(mrand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),

		deniedActions: map[string]bool{},
		online:        map[string]*onlineEndpoint{},
	}
	s.handler = s.mux()
	return s
}

func init() {
	if len(routes) != numRoutes {
		panic("jobstest: numRoutes does not match routes")
	}
}

// listen starts the TLS and managed identity servers of s.
func listen(s *Sim) (*Sim, error) {
	cert, caPEM, pool, err := newCerts()
	if err != nil {
		return nil, fmt.Errorf("jobstest: certificates: %w", err)
	}
	s.caPEM = caPEM
	s.identityHeader = randomHex(16)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("jobstest: listen: %w", err)
	}
	miLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("jobstest: listen: %w", err)
	}
	s.url = "https://" + ln.Addr().String()
	s.miURL = "http://" + miLn.Addr().String() + "/msi/token"
	s.transport = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     30 * time.Second,
		// No Proxy: the simulator is on loopback and must be reached directly.
	}

	quiet := log.New(io.Discard, "", 0) // TLS handshake noise from resets and probes
	s.srv = &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second, ErrorLog: quiet}
	s.miSrv = &http.Server{Handler: s.miMux(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: quiet}
	tlsLn := tls.NewListener(ln, &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"}, // HTTP/1.1 only, so faults can hijack the connection
		MinVersion:   tls.VersionTLS12,
	})
	s.serving.Add(2)
	go func() { defer s.serving.Done(); _ = s.srv.Serve(tlsLn) }()
	go func() { defer s.serving.Done(); _ = s.miSrv.Serve(miLn) }()
	return s, nil
}

// Close stops the servers, waits for requests in flight (delayed ones are
// cut short) and closes the idle connections of Transport.
func (s *Sim) Close() error {
	s.closeOnce.Do(func() {
		if s.srv != nil {
			_ = s.srv.Close() // connections first, so a released handler cannot answer
			_ = s.miSrv.Close()
		}
		close(s.done)
		s.serving.Wait()
		s.handlers.Wait()
		if s.transport != nil {
			s.transport.CloseIdleConnections()
		}
	})
	return nil
}

// URL is the base URL of the TLS server (https://127.0.0.1:port).
func (s *Sim) URL() string { return s.url }

// ScoringURI is the invocation URI of the named endpoint.
func (s *Sim) ScoringURI(endpoint string) string { return s.url + "/" + endpoint + "/jobs" }

// ARMEndpoint is the ARM base URL (BATCHD_ARM_ENDPOINT).
func (s *Sim) ARMEndpoint() string { return s.url }

// AuthorityHost is the Entra authority host (AZURE_AUTHORITY_HOST). Use it
// with DisableInstanceDiscovery.
func (s *Sim) AuthorityHost() string { return s.url + "/" }

// IdentityEndpoint is the managed identity endpoint (IDENTITY_ENDPOINT).
func (s *Sim) IdentityEndpoint() string { return s.miURL }

// IdentityHeader is the managed identity secret (IDENTITY_HEADER).
func (s *Sim) IdentityHeader() string { return s.identityHeader }

// Tenant is the tenant id of managed identity tokens.
func (s *Sim) Tenant() string { return s.opts.Tenant }

// Workspace is the workspace the ARM API serves.
func (s *Sim) Workspace() jobs.Workspace { return s.opts.Workspace }

// Endpoint returns a jobs.Endpoint for the named endpoint, without a
// workspace (status through the data plane).
func (s *Sim) Endpoint(name string) jobs.Endpoint {
	return jobs.Endpoint{Name: name, ScoringURI: s.ScoringURI(name)}
}

// WorkspaceEndpoint is Endpoint with the Sim's workspace (status, cancel
// and list through ARM).
func (s *Sim) WorkspaceEndpoint(name string) jobs.Endpoint {
	ep := s.Endpoint(name)
	ws := s.opts.Workspace
	ep.Workspace = &ws
	return ep
}

// CACertPEM is the PEM of the CA that signed the server certificate.
func (s *Sim) CACertPEM() []byte { return bytes.Clone(s.caPEM) }

// WriteCA writes CACertPEM to path, e.g. for a subprocess's SSL_CERT_FILE.
func (s *Sim) WriteCA(path string) error { return os.WriteFile(path, s.caPEM, 0o644) }

// Transport is an http.Transport that trusts the Sim's CA and uses no proxy.
// It is shared; Close closes its idle connections.
func (s *Sim) Transport() *http.Transport { return s.transport }

// HTTPClient is an http.Client over Transport (a policy.Transporter).
func (s *Sim) HTTPClient() *http.Client { return &http.Client{Transport: s.transport} }

// Counts returns the number of requests per route so far.
func (s *Sim) Counts() map[Route]int64 {
	m := make(map[Route]int64, len(routes))
	for i, r := range routes {
		m[r] = s.counts[i].Load()
	}
	return m
}

// Count returns the number of requests on one route so far.
func (s *Sim) Count(r Route) int64 {
	if i := routeIndex(r); i >= 0 {
		return s.counts[i].Load()
	}
	return 0
}

// DenyAction makes calls by the identity (object id or app/client id) that
// need action (ActionOnlineScore, ActionOnlineToken, ActionListKeys, ...)
// fail with 403 AuthorizationFailed naming it, as a missing role does.
func (s *Sim) DenyAction(id, action string) {
	s.mu.Lock()
	s.deniedActions[id+" "+action] = true
	s.mu.Unlock()
}

// DenyIdentity makes every data-plane and ARM call by the identity (object
// id or app/client id) fail with 403 AuthorizationFailed.
func (s *Sim) DenyIdentity(id string) {
	s.mu.Lock()
	s.denied[id] = true
	s.mu.Unlock()
}

// AllowIdentity undoes DenyIdentity.
func (s *Sim) AllowIdentity(id string) {
	s.mu.Lock()
	delete(s.denied, id)
	s.mu.Unlock()
}

// SetIdentityMissing makes managed identity token requests for clientID
// ("" = the system-assigned identity) fail as for an identity that is not
// attached to the machine.
func (s *Sim) SetIdentityMissing(clientID string, missing bool) {
	s.mu.Lock()
	if missing {
		s.missing[clientID] = true
	} else {
		delete(s.missing, clientID)
	}
	s.mu.Unlock()
}

// mux routes the TLS server. Every handler is wrapped by route, which
// counts it and applies faults.
func (s *Sim) mux() *http.ServeMux {
	m := http.NewServeMux()
	const ws = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.MachineLearningServices/workspaces/{ws}"
	m.Handle("GET /{tenant}/v2.0/.well-known/openid-configuration", s.route(RouteDiscovery, s.handleDiscovery))
	m.Handle("POST /{tenant}/oauth2/v2.0/token", s.route(RouteToken, s.handleAuthorityToken))
	m.Handle("POST /{endpoint}/jobs", s.route(RouteCreate, s.handleCreate))
	m.Handle("GET /{endpoint}/jobs/{name}", s.route(RouteGet, s.handleGet))
	m.Handle("GET "+ws+"/jobs/{name}", s.route(RouteARMGet, s.handleARMGet))
	m.Handle("POST "+ws+"/jobs/{name}/cancel", s.route(RouteARMCancel, s.handleARMCancel))
	m.Handle("GET "+ws+"/jobs", s.route(RouteARMList, s.handleARMList))
	m.Handle("POST /online/{endpoint}/score", s.route(RouteScore, s.handleScore))
	m.Handle("POST "+ws+"/onlineEndpoints/{endpoint}/token", s.route(RouteOnlineToken, s.handleOnlineToken))
	m.Handle("POST "+ws+"/onlineEndpoints/{endpoint}/listKeys", s.route(RouteListKeys, s.handleListKeys))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "NotFound", fmt.Sprintf("no route for %s %s in the simulator", r.Method, r.URL.Path))
	})
	return m
}

func (s *Sim) miMux() *http.ServeMux {
	m := http.NewServeMux()
	m.Handle("GET /msi/token", s.route(RouteToken, s.handleMIToken))
	return m
}

// newCerts makes a CA and a server certificate for 127.0.0.1, ::1 and
// localhost, signed by it.
func newCerts() (tls.Certificate, []byte, *x509.CertPool, error) {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "batchd jobstest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(2 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(now.UnixNano() + 1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(365 * 24 * time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:     []string{"localhost"},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return tls.Certificate{Certificate: [][]byte{leafDER, caDER}, PrivateKey: key, Leaf: nil}, caPEM, pool, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	const hexd = "0123456789abcdef"
	out := make([]byte, 2*n)
	for i, c := range b {
		out[2*i], out[2*i+1] = hexd[c>>4], hexd[c&15]
	}
	return string(out)
}

// newGUID returns a random RFC 4122 version 4 id.
func newGUID() string {
	h := randomHex(16)
	b := []byte(h)
	b[12] = '4'
	b[16] = "89ab"[int(b[16])%4]
	h = string(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

var errClosed = errors.New("jobstest: simulator closed")

func hasFold(list []string, v string) bool {
	for _, x := range list {
		if strings.EqualFold(x, v) {
			return true
		}
	}
	return false
}
