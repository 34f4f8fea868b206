package jobs

import (
	"errors"
	"net/http"
)

// Outcome is what a call's error means for the work it carried: one name
// per way batchd goes on, so that callers switch over it exhaustively
// instead of combining IsAmbiguous, IsPermanent and IsRetryable.
type Outcome int

const (
	// Done means no error.
	Done Outcome = iota
	// Throttled means the service answered 429 before doing anything; wait
	// RetryAfter (or a default) and send the same request again.
	Throttled
	// Transient means nothing was created (the request was never sent, or no
	// token could be had), or the call is safe to repeat (a read, a
	// cancel); send it again after a back-off.
	Transient
	// Refused means a definite answer that sending the same request again
	// cannot change (a 4xx other than 408 and 429, a request refused before
	// sending, ErrNoWorkspace). Nothing was created.
	Refused
	// Failed means the service took the request and answered that it failed
	// (an online endpoint's 5xx after its retries).
	Failed
	// TimedOut means the caller's deadline passed before an answer (online
	// requests, which have a deadline of their own).
	TimedOut
	// Ambiguous means a submit may or may not have created a job: it was (or
	// may have been) sent and no definite answer came. Reconcile; never
	// send it again blindly. An error Classify cannot place is Ambiguous
	// too: a second job is worse than a run an operator has to look at.
	Ambiguous
)

var outcomeNames = [...]string{"done", "throttled", "transient", "refused", "failed", "timed_out", "ambiguous"}

func (o Outcome) String() string {
	if o < 0 || int(o) >= len(outcomeNames) {
		return "outcome(?)"
	}
	return outcomeNames[o]
}

// Classifier is implemented by errors of clients outside this package
// (jobs/online) that know their own outcome.
type Classifier interface {
	Outcome() Outcome
}

// Classify says what err means for the call that returned it. The order
// of the cases is the contract:
//
//  1. nil is Done; an error that classifies itself (Classifier) says so.
//  2. 429 on any operation is Throttled: the service did nothing.
//  3. IsPermanent (400, 401, 403, 404, 409, 422, ErrInvalidRequest,
//     ErrNoWorkspace) is Refused.
//  4. IsAmbiguous (a submit sent without a definite answer: 408, 5xx, a
//     reset or timeout after sending, an unreadable 2xx) is Ambiguous.
//  5. IsRetryable (not sent, no token, or an idempotent operation's 408,
//     5xx or lost answer) is Transient.
//  6. Any other 4xx answer is Refused: the service answered, and refused.
//  7. Anything else is Ambiguous.
func Classify(err error) Outcome {
	if err == nil {
		return Done
	}
	var c Classifier
	if errors.As(err, &c) {
		return c.Outcome()
	}
	var ae *APIError
	isAPI := errors.As(err, &ae)
	switch {
	case isAPI && ae.StatusCode == http.StatusTooManyRequests:
		return Throttled
	case IsPermanent(err):
		return Refused
	case IsAmbiguous(err):
		return Ambiguous
	case IsRetryable(err):
		return Transient
	case isAPI && ae.StatusCode >= 400 && ae.StatusCode < 500:
		return Refused
	default:
		return Ambiguous
	}
}
