// Package online is the Azure Machine Learning online endpoint client: it
// authenticates in the endpoint's auth mode, POSTs one scoring request and
// returns the endpoint's answer. Batch endpoints (package jobs) create jobs
// that run for minutes; an online endpoint answers the request itself, in
// milliseconds.
//
// # Authentication
//
// An online endpoint takes one of three credentials on the data plane
// (seed: "Authenticate clients for online endpoints"):
//
//   - aad_token: a Microsoft Entra token for https://ml.azure.com, from the
//     process credential (Options.MLScope). The identity needs
//     Microsoft.MachineLearningServices/workspaces/onlineEndpoints/score/action.
//   - aml_token: an Azure ML token from the endpoint's ARM token action
//     (POST .../onlineEndpoints/{name}/token), fetched with a management
//     token (Options.ARMScope). Needs .../onlineEndpoints/token/action.
//   - key: the endpoint's primary or secondary key, from the ARM listKeys
//     action (.../onlineEndpoints/listKeys/action) or from Endpoint.Keys
//     (a key file named in the pipelines file).
//
// Every credential is cached per endpoint and refreshed before it expires
// (see cache.go for the exact rules); a 401 makes the client fetch a fresh
// AML token or fresh keys once (keys rotate), and in key mode fall back to
// the secondary key. No credential ever reaches a log line, an error or a
// Response: errors name the role action that is missing instead.
//
// # Retries
//
// Score sends the request, and sends it again only when that cannot score
// it twice: a 429 or 503 (refused before the model ran; the wait is the
// answer's Retry-After, else a growing backoff), a request that provably
// never left (dial failure, no credential yet), or a 401 answered as above.
// A request that was sent and got no answer (a reset, a per-attempt timeout)
// is sent again only when Request.SafeToRepeat says scoring has no side
// effects. All of it happens within the caller's context deadline.
package online

import (
	"context"
	"net/http"
	"time"

	"github.com/batchd/batchd/jobs"
)

// Auth modes of an online endpoint (its auth_mode).
const (
	AuthAADToken = "aad_token"
	AuthAMLToken = "aml_token"
	AuthKey      = "key"
)

// AuthModes lists the accepted auth modes.
var AuthModes = []string{AuthAADToken, AuthAMLToken, AuthKey}

// Role actions an identity needs, per auth mode (seed: "Authenticate clients
// for online endpoints"). Errors name the one that is missing.
const (
	ActionScore    = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/score/action"
	ActionToken    = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/token/action"
	ActionListKeys = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/listKeys/action"
	ActionRead     = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/read"
)

// Endpoint is one Azure ML online endpoint. It is plain data that may be
// recorded (a run keeps the endpoint it scored against) except Keys, which
// is never encoded.
type Endpoint struct {
	// Name is batchd's name for the endpoint (the key in the pipelines file).
	Name string `json:"name"`
	// ARMName is the endpoint's name in the workspace, for the ARM token and
	// listKeys actions (default: Name).
	ARMName string `json:"arm_name,omitempty"`
	// ScoringURI is https://<endpoint>.<region>.inference.ml.azure.com/score.
	ScoringURI string `json:"scoring_uri"`
	// Deployment, when set, is sent as azureml-model-deployment; empty lets
	// the endpoint's traffic rules choose.
	Deployment string `json:"deployment,omitempty"`
	// AuthMode is AuthAADToken (default), AuthAMLToken or AuthKey.
	AuthMode string `json:"auth_mode"`
	// Workspace is needed for aml_token, and for key unless Keys is set.
	Workspace *jobs.Workspace `json:"workspace,omitempty"`
	// Timeout bounds one scoring attempt (default 60s). The caller's context
	// deadline bounds all of them together.
	Timeout time.Duration `json:"timeout,omitempty"`
	// Keys, in key mode, supplies the keys instead of ARM listKeys (a key
	// file). It is called again after a 401, so a rotated file is picked up.
	Keys KeySource `json:"-"`
}

// armName is the endpoint's name in its workspace.
func (e *Endpoint) armName() string {
	if e.ARMName != "" {
		return e.ARMName
	}
	return e.Name
}

// mode is the auth mode with its default.
func (e *Endpoint) mode() string {
	if e.AuthMode == "" {
		return AuthAADToken
	}
	return e.AuthMode
}

// Keys are an endpoint's two keys. Secondary may be empty. String never
// shows them.
type Keys struct {
	Primary, Secondary string
}

// String and GoString never print a key (fmt's %v and %#v).
func (Keys) String() string { return "[keys redacted]" }

// GoString is String for %#v.
func (Keys) GoString() string { return "online.Keys{[redacted]}" }

// KeySource returns an endpoint's keys (from a file, say). It must be safe
// for concurrent use; its errors must not contain a key.
type KeySource func(ctx context.Context) (Keys, error)

// Request is one scoring request.
type Request struct {
	// Body is the JSON body, sent as is.
	Body []byte
	// Deployment overrides Endpoint.Deployment when set.
	Deployment string
	// RequestID is sent as x-ms-client-request-id (empty: a fresh one).
	RequestID string
	// SafeToRepeat says scoring this request twice does no harm, so a
	// request that was sent and got no answer may be sent again (within the
	// deadline). Without it such a request ends as KindUnknown.
	SafeToRepeat bool
}

// Response is the endpoint's answer to a scoring request.
type Response struct {
	StatusCode  int    `json:"status"`
	Body        []byte `json:"-"`
	ContentType string `json:"content_type,omitempty"`
	// Deployment is the deployment that served the request, from the
	// answer's azureml-model-deployment header.
	Deployment string `json:"deployment,omitempty"`
	// Latency is the time of the attempt that got this answer, from sending
	// the request to reading the whole body.
	Latency time.Duration `json:"latency"`
	// Attempts counts the requests sent, this one included.
	Attempts  int    `json:"attempts"`
	RequestID string `json:"request_id,omitempty"`

	header http.Header // of the answer, for Retry-After and WWW-Authenticate
}
