package orchestrator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"time"

	"github.com/batchd/batchd/jobs"
)

// Event is one trigger occurrence destined for one pipeline. Key is its
// idempotency key and is stable across redeliveries of the same occurrence:
// blob URL + eTag, the scheduled slot time, Nats-Msg-Id, or a caller's key.
// The same (Pipeline, Key) is the same run, forever (within retention).
//
// Exactly one of Blob, Schedule, Message or Fields describes the occurrence;
// it is what the pipeline's templates see.
type Event struct {
	Pipeline string    `json:"pipeline"`
	Key      string    `json:"key"`
	Source   string    `json:"source"` // eventgrid | poll | cron | nats | api | backfill | replay
	Time     time.Time `json:"time"`   // when it happened (the slot time for cron), UTC

	Blob     *BlobEvent        `json:"blob,omitempty"`
	Schedule *ScheduleEvent    `json:"schedule,omitempty"`
	Message  *MessageEvent     `json:"message,omitempty"`
	Fields   map[string]string `json:"fields,omitempty"`

	// ReplayOf is the run this event replays (Source replay), if any.
	ReplayOf string `json:"replay_of,omitempty"`
}

// Sources of events, as recorded on runs and in metrics.
const (
	SourceEventGrid = "eventgrid"
	SourcePoll      = "poll"
	SourceCron      = "cron"
	SourceNATS      = "nats"
	SourceAPI       = "api"
	SourceBackfill  = "backfill"
	SourceReplay    = "replay"
)

// BlobEvent is a blob that arrived, or a folder of them (micro-batching).
type BlobEvent struct {
	URL       string   `json:"url"`            // the blob URL, or the folder URL for a batch
	Account   string   `json:"account"`        // storage account name
	Container string   `json:"container"`      // container or filesystem
	Name      string   `json:"name,omitempty"` // blob path inside the container; empty for a folder batch
	Folder    string   `json:"folder"`         // the blob's folder inside the container, with a trailing "/" unless it is the root
	ETag      string   `json:"etag,omitempty"` // without quotes
	Size      int64    `json:"size,omitempty"` // content length in bytes
	API       string   `json:"api,omitempty"`  // data.api of the BlobCreated event
	Sequencer string   `json:"sequencer,omitempty"`
	Files     []string `json:"files,omitempty"` // for a folder batch: the blob names it holds
}

// ScheduleEvent is one cron slot.
type ScheduleEvent struct {
	Time     time.Time `json:"time"`              // the slot's scheduled time
	Previous time.Time `json:"previous,omitzero"` // the schedule's slot before it
}

// MessageEvent is one NATS message. Data is the decoded JSON body.
type MessageEvent struct {
	Subject  string            `json:"subject"`
	Data     json.RawMessage   `json:"data"`
	Headers  map[string]string `json:"headers,omitempty"`
	Stream   string            `json:"stream,omitempty"`
	Sequence uint64            `json:"sequence,omitempty"`
	// Reply is the message's reply subject, when it had one.
	Reply string `json:"reply,omitempty"`
	// ReplyDeferred: the trigger did not answer the request; whoever runs
	// the event answers on Reply (a pipeline targeting an online endpoint
	// replies with the scoring response).
	ReplyDeferred bool `json:"reply_deferred,omitempty"`
}

// scrub removes what looks like a secret (SAS signatures, account keys,
// client secrets, tokens: jobs.Redact) from the parts of ev that come from
// outside batchd: a message's body and a manual run's fields. Emit and Record
// scrub every event before it is stored, so no log line, API answer, page
// or completion message can show such a value. A job input that carried a
// SAS URL is rejected either way (URIs with a query string are not
// accepted); its record then shows sig=[redacted]. ev's Message and Fields
// are replaced, not modified, as the caller may still hold them.
func scrub(ev *Event) {
	if m := ev.Message; m != nil && len(m.Data) > 0 {
		if s := jobs.Redact(string(m.Data)); s != string(m.Data) {
			c := *m
			c.Data = json.RawMessage(s)
			ev.Message = &c
		}
	}
	if m := ev.Message; m != nil && len(m.Headers) > 0 {
		var h map[string]string
		for k, v := range m.Headers {
			s := jobs.Redact(v)
			if SecretHeader(k) {
				s = jobs.Redacted
			}
			if s != v {
				if h == nil {
					h = maps.Clone(m.Headers)
				}
				h[k] = s
			}
		}
		if h != nil {
			c := *ev.Message
			c.Headers = h
			ev.Message = &c
		}
	}
	var f map[string]string
	for k, v := range ev.Fields {
		if s := jobs.Redact(v); s != v {
			if f == nil {
				f = maps.Clone(ev.Fields)
			}
			f[k] = s
		}
	}
	if f != nil {
		ev.Fields = f
	}
}

// SecretHeader reports whether a message header's name says its value is
// a secret (Authorization, X-Api-Key, Cookie, …): such values are replaced
// at intake and never stored.
func SecretHeader(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"auth", "token", "secret", "password", "signature", "key", "cookie", "credential"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// RunID is the stable id of the run for (pipeline, key): the first 16 bytes
// of SHA-256 over both, hex encoded. It is safe as a NATS subject token, a KV
// key and a Nats-Msg-Id.
func RunID(pipeline, key string) string {
	h := sha256.New()
	h.Write([]byte(pipeline))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// Receipt is the answer to Emit and Record.
type Receipt struct {
	RunID string `json:"run_id"`
	// Duplicate is true when the event was already known (a redelivery).
	Duplicate bool `json:"duplicate,omitempty"`
}

// Intake is what triggers hand events to.
//
// Emit returns only once ev is durably accepted (the JetStream PubAck): after
// a nil error the trigger may acknowledge its own source, and the event will
// end in exactly one recorded run. Any error means "not taken": the trigger
// must let its source redeliver, unless IsRefused(err), in which case no
// redelivery can succeed and the trigger should record and drop the event.
//
// Record writes a decision that needs no work (StateFiltered, StateRejected,
// StateDuplicate) straight to the ledger, with its reason, so that "why did
// this not run?" always has an answer. ev.Pipeline may be empty when the event
// matched no pipeline. Record is idempotent on (ev.Pipeline, ev.Key).
type Intake interface {
	Emit(ctx context.Context, ev Event) (Receipt, error)
	Record(ctx context.Context, ev Event, state State, reason string) (Receipt, error)
}

// Runs reads and acts on recorded runs. Triggers use it for overlap policies.
type Runs interface {
	// Get returns the run, or an error matching ErrRunNotFound.
	Get(ctx context.Context, id string) (*Run, error)
	// Cancel asks for the run's job to be canceled and the run to end canceled.
	Cancel(ctx context.Context, id, reason string) error
}

// ErrRunNotFound is returned for a run id the ledger does not hold.
var ErrRunNotFound = errors.New("run not found")

// Refuse marks err as the intake's refusal for good: redelivery cannot fix
// it (a malformed event, a pipeline that does not exist). The trigger
// records the event rejected and drops it. (Not jobs.IsPermanent, which is
// about an Azure ML request.) IsRefused finds the mark anywhere in the
// chain.
func Refuse(err error) error {
	if err == nil {
		return nil
	}
	return &refusedError{err}
}

// IsRefused reports whether err, or any error it wraps, was marked by Refuse.
func IsRefused(err error) bool {
	var p *refusedError
	return errors.As(err, &p)
}

type refusedError struct{ err error }

func (e *refusedError) Error() string { return e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }
