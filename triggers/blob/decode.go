package blob

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/eventgrid/azsystemevents"

	"github.com/batchd/batchd/orchestrator"
)

// Event types the webhook knows.
const (
	TypeBlobCreated            = "Microsoft.Storage.BlobCreated"
	TypeBlobDeleted            = "Microsoft.Storage.BlobDeleted"
	TypeSubscriptionValidation = "Microsoft.EventGrid.SubscriptionValidationEvent"
	TypeSubscriptionDeletion   = "Microsoft.EventGrid.SubscriptionDeletionEvent"
)

// Schemas of a delivery.
const (
	SchemaEventGrid   = "eventgrid"
	SchemaCloudEvents = "cloudevents"
)

// Event is one delivered event in either schema, normalised: Topic is the
// Event Grid topic or the CloudEvents source, Type the eventType or type.
type Event struct {
	Schema  string
	ID      string
	Type    string
	Topic   string
	Subject string
	Time    time.Time // zero when absent or unparsable
	Data    json.RawMessage
	// Problem, when not empty, says why this event cannot be used; the
	// other events of the delivery still can.
	Problem string
}

// Data is the data of a Microsoft.Storage.Blob* event.
type Data struct {
	API           string `json:"api"`
	ETag          string `json:"eTag"`
	ContentType   string `json:"contentType"`
	ContentLength *int64 `json:"contentLength"`
	BlobType      string `json:"blobType"`
	URL           string `json:"url"`
	Sequencer     string `json:"sequencer"`
}

// ValidationData is the data of a SubscriptionValidationEvent.
type ValidationData struct {
	ValidationCode string `json:"validationCode"`
	ValidationURL  string `json:"validationUrl"`
}

// ErrMalformed is what every decoder error matches: the delivery as a whole
// cannot be read (the webhook answers 400 with the message).
var ErrMalformed = errors.New("malformed delivery")

func malformed(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, a...))
}

type gridEvent struct {
	ID        *string         `json:"id"`
	Topic     string          `json:"topic"`
	Subject   string          `json:"subject"`
	EventType *string         `json:"eventType"`
	EventTime string          `json:"eventTime"`
	Data      json.RawMessage `json:"data"`
}

type cloudEvent struct {
	ID          *string         `json:"id"`
	Source      string          `json:"source"`
	Subject     string          `json:"subject"`
	Type        *string         `json:"type"`
	Time        string          `json:"time"`
	SpecVersion *string         `json:"specversion"`
	Data        json.RawMessage `json:"data"`
	DataBase64  string          `json:"data_base64"`
}

// Decode reads a delivery in whichever schema it is: CloudEvents binary mode
// (ce-* headers), a CloudEvents object, or a JSON array of Event Grid or
// CloudEvents events.
func Decode(body []byte, h http.Header) ([]Event, error) {
	if h.Get("ce-specversion") != "" {
		return decodeCloudBinary(body, h)
	}
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return nil, malformed("empty body")
	}
	ct, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if b[0] == '{' || strings.HasPrefix(ct, "application/cloudevents") {
		return DecodeCloudEvents(b)
	}
	if b[0] != '[' {
		return nil, malformed("body is neither a JSON array (Event Grid schema) nor a CloudEvents object")
	}
	var elems []json.RawMessage
	if err := json.Unmarshal(b, &elems); err != nil {
		return nil, malformed("not a JSON array of events: %v", jsonErr(err))
	}
	if len(elems) > 0 && hasKey(elems[0], "specversion") {
		return DecodeCloudEvents(b)
	}
	return DecodeEventGrid(b)
}

func hasKey(raw json.RawMessage, key string) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return false
	}
	_, ok := m[key]
	return ok
}

// DecodeEventGrid reads an Event Grid schema delivery: always a JSON array.
// An element that is not a usable event becomes an Event with a Problem.
func DecodeEventGrid(body []byte) ([]Event, error) {
	elems, err := array(body)
	if err != nil {
		return nil, err
	}
	out := make([]Event, 0, len(elems))
	for i, raw := range elems {
		var g gridEvent
		ev := Event{Schema: SchemaEventGrid}
		if err := json.Unmarshal(raw, &g); err != nil {
			ev.Problem = fmt.Sprintf("event %d is not an Event Grid event object: %v", i, jsonErr(err))
			out = append(out, ev)
			continue
		}
		ev.Topic, ev.Subject, ev.Data = g.Topic, normSubject(g.Subject), g.Data
		ev.Time = parseTime(g.EventTime)
		switch {
		case g.ID == nil || *g.ID == "":
			ev.Problem = fmt.Sprintf("event %d has no id", i)
		case g.EventType == nil || *g.EventType == "":
			ev.Problem = fmt.Sprintf("event %d (%s) has no eventType", i, *g.ID)
		}
		if g.ID != nil {
			ev.ID = *g.ID
		}
		if g.EventType != nil {
			ev.Type = *g.EventType
		}
		out = append(out, ev)
	}
	return out, nil
}

// DecodeCloudEvents reads a CloudEvents 1.0 structured-mode delivery: one
// event object, or a JSON array of them (batched mode).
func DecodeCloudEvents(body []byte) ([]Event, error) {
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return nil, malformed("empty body")
	}
	var elems []json.RawMessage
	if b[0] == '{' {
		elems = []json.RawMessage{b}
		if !json.Valid(b) {
			var v any
			return nil, malformed("not a CloudEvents object: %v", jsonErr(json.Unmarshal(b, &v)))
		}
	} else {
		var err error
		if elems, err = array(b); err != nil {
			return nil, err
		}
	}
	out := make([]Event, 0, len(elems))
	for i, raw := range elems {
		var c cloudEvent
		ev := Event{Schema: SchemaCloudEvents}
		if err := json.Unmarshal(raw, &c); err != nil {
			ev.Problem = fmt.Sprintf("event %d is not a CloudEvents object: %v", i, jsonErr(err))
			out = append(out, ev)
			continue
		}
		ev.Topic, ev.Subject, ev.Data = c.Source, normSubject(c.Subject), c.Data
		ev.Time = parseTime(c.Time)
		if c.ID != nil {
			ev.ID = *c.ID
		}
		if c.Type != nil {
			ev.Type = *c.Type
		}
		switch {
		case c.SpecVersion == nil || *c.SpecVersion != "1.0":
			ev.Problem = fmt.Sprintf("event %d: specversion must be \"1.0\"", i)
		case ev.ID == "":
			ev.Problem = fmt.Sprintf("event %d has no id", i)
		case ev.Type == "":
			ev.Problem = fmt.Sprintf("event %d (%s) has no type", i, ev.ID)
		case len(c.Data) == 0 && c.DataBase64 != "":
			ev.Problem = fmt.Sprintf("event %d (%s): data_base64 is not supported; deliver JSON data", i, ev.ID)
		}
		out = append(out, ev)
	}
	return out, nil
}

func decodeCloudBinary(body []byte, h http.Header) ([]Event, error) {
	ev := Event{
		Schema: SchemaCloudEvents, ID: h.Get("ce-id"), Type: h.Get("ce-type"), Topic: h.Get("ce-source"),
		Subject: normSubject(h.Get("ce-subject")), Time: parseTime(h.Get("ce-time")),
	}
	if b := bytes.TrimSpace(body); len(b) > 0 {
		if !json.Valid(b) {
			return nil, malformed("CloudEvents binary-mode body is not JSON")
		}
		ev.Data = b
	}
	switch {
	case h.Get("ce-specversion") != "1.0":
		ev.Problem = "ce-specversion must be 1.0"
	case ev.ID == "":
		ev.Problem = "no ce-id header"
	case ev.Type == "":
		ev.Problem = "no ce-type header"
	}
	return []Event{ev}, nil
}

func array(body []byte) ([]json.RawMessage, error) {
	var elems []json.RawMessage
	if err := json.Unmarshal(body, &elems); err != nil {
		return nil, malformed("not a JSON array of events: %v", jsonErr(err))
	}
	if len(elems) == 0 {
		return nil, malformed("empty event array")
	}
	return elems, nil
}

// jsonErr keeps JSON errors short and free of the input.
func jsonErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		if te.Field != "" {
			return fmt.Sprintf("field %s has the wrong type (%s)", te.Field, te.Value)
		}
		return fmt.Sprintf("wrong JSON type (%s)", te.Value)
	}
	if err == nil || errors.Is(err, io.ErrUnexpectedEOF) || err.Error() == "unexpected end of JSON input" {
		return "invalid JSON (truncated)"
	}
	return "invalid JSON"
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t.UTC()
}

// normSubject puts the leading "/" back on subjects that lack it (one
// CloudEvents sample does).
func normSubject(s string) string {
	if s != "" && !strings.HasPrefix(s, "/") {
		return "/" + s
	}
	return s
}

// BlobData decodes the event's data as blob event data.
func (e Event) BlobData() (Data, error) {
	var d Data
	if len(e.Data) == 0 {
		return d, errors.New("no data")
	}
	if err := json.Unmarshal(e.Data, &d); err != nil {
		return d, fmt.Errorf("data is not blob event data: %s", jsonErr(err))
	}
	return d, nil
}

// maxJobName bounds data.runId: Azure ML job names are at most 255
// characters.
const maxJobName = 255

// JobEvent decodes an Azure ML workspace event (RunStatusChanged,
// RunCompleted) into what the orchestrator takes. The topic must be a
// workspace's ARM id and the subject experiments/<id>/runs/<runId>, naming
// the same run as data.runId; an error says what is wrong.
func (e Event) JobEvent() (orchestrator.JobEvent, error) {
	je := orchestrator.JobEvent{ID: e.ID, Type: e.Type, Workspace: e.Topic, Time: e.Time}
	if !isWorkspaceID(e.Topic) {
		return je, fmt.Errorf("topic %q is not an Azure ML workspace (/subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<name>)", clip(e.Topic, 300))
	}
	if len(e.Data) == 0 {
		return je, errors.New("no data")
	}
	var runID, status *string
	switch e.Type {
	case orchestrator.TypeRunStatusChanged:
		var d azsystemevents.MachineLearningServicesRunStatusChangedEventData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return je, fmt.Errorf("data is not RunStatusChanged data: %s", jsonErr(err))
		}
		runID, status = d.RunID, d.RunStatus
		if status == nil || *status == "" {
			return je, errors.New("data.runStatus is missing")
		}
	case orchestrator.TypeRunCompleted:
		var d azsystemevents.MachineLearningServicesRunCompletedEventData
		if err := json.Unmarshal(e.Data, &d); err != nil {
			return je, fmt.Errorf("data is not RunCompleted data: %s", jsonErr(err))
		}
		completed := "Completed"
		runID, status = d.RunID, &completed
	default:
		return je, fmt.Errorf("event type %s is not an Azure ML run event", e.Type)
	}
	subjRun := ""
	if parts := strings.Split(strings.TrimPrefix(e.Subject, "/"), "/"); len(parts) == 4 && parts[0] == "experiments" && parts[2] == "runs" {
		subjRun = parts[3]
	} else if e.Subject != "" {
		return je, fmt.Errorf("subject %q is not experiments/<id>/runs/<runId>", clip(e.Subject, 300))
	}
	switch {
	case runID == nil || *runID == "":
		if subjRun == "" {
			return je, errors.New("data.runId is missing")
		}
		je.Job = subjRun
	case subjRun != "" && subjRun != *runID:
		return je, fmt.Errorf("subject names run %q, data.runId %q", clip(subjRun, 300), clip(*runID, 300))
	default:
		je.Job = *runID
	}
	if len(je.Job) > maxJobName || strings.ContainsFunc(je.Job, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return je, fmt.Errorf("run id %q is not a job name", clip(je.Job, 300))
	}
	je.Status = *status
	return je, nil
}

// isWorkspaceID reports whether id is the ARM id of an Azure ML workspace.
func isWorkspaceID(id string) bool {
	p := strings.Split(id, "/")
	return len(p) == 9 && p[0] == "" && strings.EqualFold(p[1], "subscriptions") && p[2] != "" &&
		strings.EqualFold(p[3], "resourceGroups") && p[4] != "" && strings.EqualFold(p[5], "providers") &&
		strings.EqualFold(p[6], "Microsoft.MachineLearningServices") && strings.EqualFold(p[7], "workspaces") && p[8] != ""
}

// clip shortens s to n bytes for an error message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
