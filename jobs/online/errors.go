package online

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/batchd/batchd/jobs"
)

// Kind says what a failed Score means for the request, so that the caller
// can record it without knowing HTTP.
type Kind string

const (
	// KindRejected means the endpoint refused the request (a 4xx other than 408
	// and 429), or batchd could not authenticate (no credential, a missing
	// role, a wrong audience, a bad configuration). Sending it again as is
	// cannot help. The model did not run.
	KindRejected Kind = "rejected"
	// KindFailed means the endpoint answered with an error (a 5xx other than
	// 503): the scoring script or the service failed.
	KindFailed Kind = "failed"
	// KindUnknown means the request was sent and no answer came (a reset, an
	// attempt's timeout, an unreadable answer). The model may or may not
	// have scored it; without Request.SafeToRepeat it was not sent again.
	KindUnknown Kind = "unknown"
	// KindTimedOut means the caller's deadline passed before an answer: while
	// the endpoint kept answering 429/503, while waiting for a credential,
	// or with a request in flight (then it may have been scored).
	KindTimedOut Kind = "timed_out"
)

// Ops, as recorded in Error.Op.
const (
	OpScore    = "score"
	OpToken    = "token"    // the ARM token action (aml_token)
	OpListKeys = "listKeys" // the ARM listKeys action (key)
	OpKeyFile  = "keys"     // Endpoint.Keys
	OpEntra    = "entra"    // a Microsoft Entra token (aad_token)
)

// Error is a Score that did not get a 2xx answer. Its message names the
// endpoint's answer or the cause, and a likely fix (Hint); it never holds a
// key or a token.
type Error struct {
	Kind Kind
	Op   string
	// Endpoint is batchd's name for the endpoint.
	Endpoint string
	// StatusCode is the HTTP status of the answer (0: none).
	StatusCode int
	Code       string // the service's error code, when it sent one
	Message    string // the service's message, one line, redacted
	Hint       string // the likely cause, in batchd's terms
	// Response is the endpoint's answer to the scoring POST, when it sent
	// one (a 4xx or 5xx, or the last 429/503).
	Response *Response
	Attempts int
	// Sent: the last scoring request may have reached the endpoint.
	Sent bool
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	switch e.Op {
	case OpScore:
		fmt.Fprintf(&b, "score %s", e.Endpoint)
	case OpToken:
		fmt.Fprintf(&b, "score %s: get an Azure ML token (ARM token action)", e.Endpoint)
	case OpListKeys:
		fmt.Fprintf(&b, "score %s: get the keys (ARM listKeys action)", e.Endpoint)
	case OpKeyFile:
		fmt.Fprintf(&b, "score %s: read the key file", e.Endpoint)
	case OpEntra:
		fmt.Fprintf(&b, "score %s: get a Microsoft Entra token", e.Endpoint)
	default:
		fmt.Fprintf(&b, "score %s", e.Endpoint)
	}
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": %d %s", e.StatusCode, http.StatusText(e.StatusCode))
	}
	if e.Code != "" {
		b.WriteString(": " + e.Code)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.Err != nil && e.StatusCode == 0 {
		b.WriteString(": " + e.Err.Error())
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " (after %d attempts)", e.Attempts)
	}
	if e.Hint != "" {
		b.WriteString(" (likely cause: " + e.Hint + ")")
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Outcome is the Kind in jobs.Classify's terms: Refused, Failed, TimedOut
// or Ambiguous (unknown).
func (e *Error) Outcome() jobs.Outcome {
	switch e.Kind {
	case KindRejected:
		return jobs.Refused
	case KindFailed:
		return jobs.Failed
	case KindTimedOut:
		return jobs.TimedOut
	default: // KindUnknown
		return jobs.Ambiguous
	}
}

// KindOf returns the Kind of a Score error: the Error's, KindTimedOut for a
// bare context deadline, KindRejected for anything else (a bad request).
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	if errors.Is(err, errDeadline) {
		return KindTimedOut
	}
	return KindRejected
}

// IsAuth reports an authentication or authorization failure: no
// credential could be had, or the endpoint or ARM answered 401 or 403.
func IsAuth(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		var te *jobs.TokenError
		return errors.As(err, &te)
	}
	if e.StatusCode == http.StatusUnauthorized || e.StatusCode == http.StatusForbidden {
		return true
	}
	var te *jobs.TokenError
	return errors.As(e.Err, &te)
}

var errDeadline = errors.New("deadline passed")

// ErrInvalidRequest means the request was refused before anything was sent (a
// bad scoring URI, a body that is not JSON, a missing workspace).
var ErrInvalidRequest = errors.New("invalid request")

// scoreHint explains a 401 or 403 from the scoring URI in batchd's terms.
func scoreHint(ep *Endpoint, status int, msg, mlScope string) string {
	lower := strings.ToLower(msg)
	switch status {
	case http.StatusUnauthorized:
		switch ep.mode() {
		case AuthAADToken:
			if strings.Contains(lower, "audience") {
				return fmt.Sprintf("the Entra token has the wrong audience: batchd asked for scope %s (BATCHD_ML_SCOPE); online endpoints take https://ml.azure.com/.default", mlScope)
			}
			if strings.Contains(lower, "expired") {
				return "the Entra token had expired: check the machine's clock"
			}
			return fmt.Sprintf("the endpoint did not accept the Entra token: check that endpoint %s uses auth_mode aad_token (a key or aml_token endpoint refuses Entra tokens) and the tenant (AZURE_TENANT_ID)", ep.Name)
		case AuthAMLToken:
			return fmt.Sprintf("the endpoint refused a fresh Azure ML token: check that endpoint %s uses auth_mode aml_token", ep.Name)
		case AuthKey:
			if ep.Keys != nil {
				return fmt.Sprintf("neither key from the key file was accepted: the keys were regenerated, or endpoint %s does not use auth_mode key; update the key file", ep.Name)
			}
			return fmt.Sprintf("neither the primary nor the secondary key was accepted, even after fetching them again: check that endpoint %s uses auth_mode key", ep.Name)
		}
	case http.StatusForbidden:
		return fmt.Sprintf("the identity lacks a role that grants %s on the endpoint (deploy/azure/batchd-online-scorer-role.json, or AzureML Data Scientist)", ActionScore)
	}
	return ""
}

// armHint explains a failed ARM token or listKeys action.
func armHint(op string, status int, msg, armScope string) string {
	action := ActionToken
	if op == OpListKeys {
		action = ActionListKeys
	}
	lower := strings.ToLower(msg)
	switch status {
	case http.StatusUnauthorized:
		if strings.Contains(lower, "audience") {
			return fmt.Sprintf("the management token has the wrong audience: batchd asked for scope %s (BATCHD_ARM_SCOPE); ARM takes https://management.azure.com/.default", armScope)
		}
		return "ARM did not accept the management token: check the tenant (AZURE_TENANT_ID)"
	case http.StatusForbidden:
		return fmt.Sprintf("the identity lacks a role that grants %s on the endpoint (deploy/azure/batchd-online-scorer-role.json, or AzureML Data Scientist)", action)
	case http.StatusNotFound:
		return "the workspace or the endpoint does not exist: check the endpoint's workspace (subscription, resource_group, name) and endpoint_name"
	case http.StatusBadRequest, http.StatusConflict:
		if op == OpListKeys {
			return "the endpoint may not use key authentication: check auth_mode"
		}
		return "the endpoint may not use aml_token authentication: check auth_mode"
	}
	return ""
}
