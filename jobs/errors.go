package jobs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"
)

// Sentinels for conditions callers branch on.
var (
	// ErrNoWorkspace: the operation needs the ARM jobs API and the endpoint has
	// no Workspace configured.
	ErrNoWorkspace = errors.New("endpoint has no workspace configured (subscription, resource group, workspace)")
	// ErrInvalidRequest: the request was refused before anything was sent
	// (bad scoring URI, input without a URI, empty job name, ...). Sending it
	// again cannot help.
	ErrInvalidRequest = errors.New("invalid request")
)

// Operations, as recorded in APIError.Op and TransportError.Op. Only OpSubmit
// creates anything; the others are idempotent and safe to repeat.
const (
	OpSubmit = "submit"
	OpGet    = "get"
	OpCancel = "cancel"
	OpList   = "list"
)

// APIError is an HTTP answer outside 2xx from the batch endpoint or ARM.
// Message is the service's own message (any token-shaped text removed);
// Hint, when set, names the likely cause in batchd's terms.
type APIError struct {
	Op         string // OpSubmit, OpGet, OpCancel, OpList
	Method     string
	URL        string // scheme, host and path only: never a query string
	StatusCode int
	Code       string // the service's error code, e.g. "UserError"
	Message    string
	// RetryAfter is the service's Retry-After (or retry-after-ms) value; 0 if
	// it sent none.
	RetryAfter time.Duration
	// RequestID is the client request id that was sent (x-ms-client-request-id).
	RequestID string
	Hint      string
}

func (e *APIError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d %s", e.Method, e.URL, e.StatusCode, http.StatusText(e.StatusCode))
	if e.Code != "" {
		b.WriteString(": " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.Hint != "" {
		b.WriteString(" (likely cause: " + e.Hint + ")")
	}
	return b.String()
}

// TransportError is a request that got no usable HTTP answer: the connection
// failed or was reset, the context ended, or a 2xx answer could not be read.
type TransportError struct {
	Op     string
	Method string
	URL    string // scheme, host and path only
	// Sent is false only when it is certain that no complete request reached
	// the server (dial, DNS or TLS handshake failure, or the transport reports
	// that the request headers were never written). When in doubt it is true.
	Sent      bool
	RequestID string
	Err       error
}

func (e *TransportError) Error() string {
	state := "no answer"
	switch {
	case !e.Sent:
		state = "not sent"
	case e.Op == OpSubmit:
		state = "sent, no answer (a job may or may not have been created)"
	}
	return fmt.Sprintf("%s %s: %s: %v", e.Method, e.URL, state, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// IsRetryable reports whether the failed request may be sent again as is.
//
// Rules and reasons:
//   - The request provably never reached the server (dial, DNS, TLS handshake
//     or token acquisition failure): sending it again cannot duplicate anything.
//   - 429 on any operation, the POST included: the service refused the request
//     before doing anything; wait RetryAfter(err) first.
//   - 408, 500, 502, 503, 504, or no answer at all, on an idempotent operation
//     (get, list, cancel): repeating a read or a cancel is harmless.
//
// A submit that may have reached the service is never retryable: see
// IsAmbiguous.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var te *TokenError
	if errors.As(err, &te) {
		return true
	}
	var ae *APIError
	if errors.As(err, &ae) {
		if ae.StatusCode == http.StatusTooManyRequests {
			return true
		}
		return ae.Op != OpSubmit && transientStatus(ae.StatusCode)
	}
	var tr *TransportError
	if errors.As(err, &tr) {
		return !tr.Sent || tr.Op != OpSubmit
	}
	return false
}

// IsPermanent reports whether sending the same request again cannot succeed:
// 400, 401, 403, 404, 409 and 422 answers (the request, the identity's rights
// or the target must change first), a request refused before sending
// (ErrInvalidRequest), and ErrNoWorkspace.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrInvalidRequest) || errors.Is(err, ErrNoWorkspace) {
		return true
	}
	var ae *APIError
	if errors.As(err, &ae) {
		switch ae.StatusCode {
		case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden,
			http.StatusNotFound, http.StatusConflict, http.StatusUnprocessableEntity:
			return true
		}
	}
	return false
}

// IsAmbiguous reports whether a submit may or may not have created a job: the
// POST was (or may have been) sent and no definite answer came back. That is
// a timeout or a reset after sending, an unreadable 2xx answer, or a 5xx or
// 408 (a gateway can fail after the service accepted the job). Such a submit
// must be reconciled (List, or a look in the studio), never blindly repeated:
// a retried invoke can create a second job.
func IsAmbiguous(err error) bool {
	if err == nil {
		return false
	}
	var te *TokenError
	if errors.As(err, &te) {
		return false // no token, so nothing was sent
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Op == OpSubmit && ae.StatusCode != http.StatusTooManyRequests && transientStatus(ae.StatusCode)
	}
	var tr *TransportError
	if errors.As(err, &tr) {
		return tr.Op == OpSubmit && tr.Sent
	}
	return false
}

// IsAuth reports an authentication or authorization failure: no token could
// be had, or the service answered 401 or 403. batchd's CLI exits 3 on these.
func IsAuth(err error) bool {
	if err == nil {
		return false
	}
	var te *TokenError
	if errors.As(err, &te) {
		return true
	}
	var ae *APIError
	return errors.As(err, &ae) && (ae.StatusCode == http.StatusUnauthorized || ae.StatusCode == http.StatusForbidden)
}

// RetryAfter returns the wait the service asked for, if it asked.
func RetryAfter(err error) (time.Duration, bool) {
	var ae *APIError
	if errors.As(err, &ae) && ae.RetryAfter > 0 {
		return ae.RetryAfter, true
	}
	return 0, false
}

func transientStatus(code int) bool {
	switch code {
	case http.StatusRequestTimeout, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return code >= 500
}

// neverSent reports whether err proves that no complete request reached the
// server: a DNS failure, a dial error, a proxy CONNECT failure or a TLS
// certificate failure all happen before the first byte of the request is
// written. Anything else (a reset, EOF, a timeout) may have come after the
// server read the request, so it does not count.
func neverSent(err error) bool {
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && (opErr.Op == "dial" || opErr.Op == "proxyconnect") {
		return true
	}
	var certErr *tls.CertificateVerificationError
	var unknownCA x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalidCert x509.CertificateInvalidError
	return errors.As(err, &certErr) || errors.As(err, &unknownCA) ||
		errors.As(err, &hostErr) || errors.As(err, &invalidCert)
}

// isContextErr reports whether err is the caller's context ending.
func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// jwtLike matches anything shaped like a JWT (three base64url parts, the
// first starting with the encoding of `{"`). Service and identity messages
// are passed through redact before they reach an error, so a token echoed
// by a misbehaving server never reaches a log.
var jwtLike = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`)

// bearerLike matches "Bearer <anything token-like>".
var bearerLike = regexp.MustCompile(`(?i)bearer\s+[A-Za-z0-9._~+/=-]{16,}`)

// secretParam matches the value of a SAS signature (sig=), an account key in
// a connection string (AccountKey=) and a client secret in a form
// (client_secret=): a service that echoes the job's input URIs, or a proxy
// that echoes a request, must not put them into an error.
// Inside JSON the separator before the name is often escaped ("\u0026sig="),
// which has no word boundary, and inside another URL the "=" is encoded
// ("sig%3D"); both are matched.
var secretParam = regexp.MustCompile(`(?i)(\b|\\u0026|\\u003f|%26|%3f)(sig|accountkey|client_secret)(=|%3D)[^&;\s"'<>\\]+`)

func redact(s string) string {
	s = jwtLike.ReplaceAllString(s, "[redacted token]")
	s = bearerLike.ReplaceAllString(s, "Bearer "+Redacted)
	return secretParam.ReplaceAllString(s, "$1$2$3"+Redacted)
}

// oneLine keeps the first line of s, at most n bytes of it, redacted.
//
// It redacts before it cuts: a token or signature that straddles the cut is
// still recognised whole, rather than leaving its first part behind. The cut
// never splits a UTF-8 sequence.
func oneLine(s string, n int) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	s = redact(s)
	if len(s) > n {
		for n > 0 && !utf8.RuneStart(s[n]) {
			n--
		}
		s = s[:n] + "…"
	}
	return s
}

// authHint explains a 401 or 403 in batchd's terms. arm says which API
// answered; scope is the scope batchd requested its token for.
func authHint(op string, arm bool, status int, code, msg, scope string) string {
	lower := strings.ToLower(code + " " + msg)
	switch status {
	case http.StatusUnauthorized:
		switch {
		case strings.Contains(lower, "audience"):
			if arm {
				return fmt.Sprintf("the token has the wrong audience for ARM: batchd asked for scope %s (BATCHD_ARM_SCOPE); ARM takes https://management.azure.com/.default (an ml.azure.com token is refused)", scope)
			}
			return fmt.Sprintf("the token has the wrong audience for the batch endpoint: batchd asked for scope %s (BATCHD_ML_SCOPE); the endpoint takes https://ml.azure.com/.default (a management.azure.com token is refused)", scope)
		case strings.Contains(lower, "expired"):
			return "the token had expired: check the machine's clock"
		default:
			return fmt.Sprintf("the service did not accept the token for %s: check the tenant (AZURE_TENANT_ID) and that the endpoint uses Microsoft Entra (aad_token) authentication", scope)
		}
	case http.StatusForbidden:
		action := ""
		if m := actionRe.FindStringSubmatch(msg); m != nil {
			action = m[1]
		}
		if action == "" {
			if op == OpSubmit {
				action = "Microsoft.MachineLearningServices/workspaces/batchEndpoints/jobs/write"
			} else {
				action = "Microsoft.MachineLearningServices/workspaces/jobs/read"
			}
		}
		return fmt.Sprintf("the identity lacks a role that grants %s: assign AzureML Data Scientist on the workspace, "+
			"or a custom role with the batch-invoke actions (jobs.InvokeActions)", action)
	}
	return ""
}

var actionRe = regexp.MustCompile(`action '([^']+)'`)

// InvokeActions are the RBAC actions an identity needs to invoke a batch
// endpoint, from "Authorization on batch endpoints" (Azure ML docs). The
// built-in roles AzureML Data Scientist, Contributor and Owner include them.
var InvokeActions = []string{
	"Microsoft.MachineLearningServices/workspaces/read",
	"Microsoft.MachineLearningServices/workspaces/data/versions/write",
	"Microsoft.MachineLearningServices/workspaces/datasets/registered/read",
	"Microsoft.MachineLearningServices/workspaces/datasets/registered/write",
	"Microsoft.MachineLearningServices/workspaces/datasets/unregistered/read",
	"Microsoft.MachineLearningServices/workspaces/datasets/unregistered/write",
	"Microsoft.MachineLearningServices/workspaces/datastores/read",
	"Microsoft.MachineLearningServices/workspaces/datastores/write",
	"Microsoft.MachineLearningServices/workspaces/datastores/listsecrets/action",
	"Microsoft.MachineLearningServices/workspaces/listStorageAccountKeys/action",
	"Microsoft.MachineLearningServices/workspaces/batchEndpoints/read",
	"Microsoft.MachineLearningServices/workspaces/batchEndpoints/write",
	"Microsoft.MachineLearningServices/workspaces/batchEndpoints/deployments/read",
	"Microsoft.MachineLearningServices/workspaces/batchEndpoints/deployments/write",
	"Microsoft.MachineLearningServices/workspaces/batchEndpoints/deployments/jobs/write",
	"Microsoft.MachineLearningServices/workspaces/batchEndpoints/jobs/write",
	"Microsoft.MachineLearningServices/workspaces/computes/read",
	"Microsoft.MachineLearningServices/workspaces/computes/listKeys/action",
	"Microsoft.MachineLearningServices/workspaces/metadata/secrets/read",
	"Microsoft.MachineLearningServices/workspaces/metadata/snapshots/read",
	"Microsoft.MachineLearningServices/workspaces/metadata/artifacts/read",
	"Microsoft.MachineLearningServices/workspaces/metadata/artifacts/write",
	"Microsoft.MachineLearningServices/workspaces/experiments/read",
	"Microsoft.MachineLearningServices/workspaces/experiments/runs/submit/action",
	"Microsoft.MachineLearningServices/workspaces/experiments/runs/read",
	"Microsoft.MachineLearningServices/workspaces/experiments/runs/write",
	"Microsoft.MachineLearningServices/workspaces/metrics/resource/write",
	"Microsoft.MachineLearningServices/workspaces/modules/read",
	"Microsoft.MachineLearningServices/workspaces/models/read",
	"Microsoft.MachineLearningServices/workspaces/endpoints/pipelines/read",
	"Microsoft.MachineLearningServices/workspaces/endpoints/pipelines/write",
	"Microsoft.MachineLearningServices/workspaces/environments/read",
	"Microsoft.MachineLearningServices/workspaces/environments/write",
	"Microsoft.MachineLearningServices/workspaces/environments/build/action",
	"Microsoft.MachineLearningServices/workspaces/environments/readSecrets/action",
}

// HeaderRetryAfter is how long an answer with headers h asks to wait: the
// headers azcore's retry policy reads, in its order (retry-after-ms,
// x-ms-retry-after-ms, then Retry-After in seconds or as an HTTP date);
// 0 when none says.
func HeaderRetryAfter(h http.Header) time.Duration {
	for _, k := range []string{"retry-after-ms", "x-ms-retry-after-ms"} {
		if v := h.Get(k); v != "" {
			var ms int64
			if _, err := fmt.Sscan(v, &ms); err == nil && ms > 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	v := h.Get("Retry-After")
	if v == "" {
		return 0
	}
	var s int64
	if _, err := fmt.Sscan(v, &s); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := time.Until(t); d > 0 {
			return d
		}
	}
	return 0
}
