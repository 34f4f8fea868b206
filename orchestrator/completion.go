package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs"
)

// Completion is the message batchd publishes on
// batchd.runs.<pipeline>.<state> (stream BATCHD_RUNS) when a run reaches a
// terminal state, so that downstream systems can chain on it. Its
// Nats-Msg-Id is "<run id>.<generation>.<state>": a replay after a crash is
// dropped by the stream's duplicate window.
type Completion struct {
	RunID    string `json:"run_id"`
	Pipeline string `json:"pipeline"`
	Key      string `json:"key"`
	Source   string `json:"source"`
	State    State  `json:"state"`
	// Reason says why the run ended so (the last history entry).
	Reason   string         `json:"reason,omitempty"`
	Error    string         `json:"error,omitempty"`
	Attempts int            `json:"attempts"`
	Job      *CompletionJob `json:"job,omitempty"`
	// Response summarises an online run's answer (the body is on the run,
	// and in the reply or results message).
	Response *CompletionResponse `json:"response,omitempty"`
	Inputs   map[string]string   `json:"inputs,omitempty"`  // name -> URI or literal value
	Outputs  map[string]string   `json:"outputs,omitempty"` // name -> URI
	Created  time.Time           `json:"created"`
	Finished time.Time           `json:"finished"`
	// Durations in seconds: Queued from the event's acceptance to the
	// submission, Running from the submission to the end, Total both.
	Durations Durations `json:"durations"`
}

// CompletionJob is the job part of a Completion.
type CompletionJob struct {
	Name      string      `json:"name"`
	Status    jobs.Status `json:"status"`
	StudioURL string      `json:"studio_url,omitempty"`
}

// CompletionResponse is the online part of a Completion.
type CompletionResponse struct {
	Status     int     `json:"status"`
	Deployment string  `json:"deployment,omitempty"`
	LatencyMS  float64 `json:"latency_ms"`
	BodyBytes  int     `json:"body_bytes"`
}

// Durations of a run, in seconds.
type Durations struct {
	Queued  float64 `json:"queued_seconds"`
	Running float64 `json:"running_seconds"`
	Total   float64 `json:"total_seconds"`
}

func completionOf(r *record) *Completion {
	c := &Completion{
		RunID: r.ID, Pipeline: r.Pipeline, Key: r.Key, Source: r.Source, State: r.State,
		Reason: r.lastReason(), Error: r.Error, Attempts: r.Attempts, Created: r.Created, Finished: r.Updated,
	}
	if r.Job != nil {
		c.Job = &CompletionJob{Name: r.Job.Name, Status: r.Job.Status, StudioURL: r.Job.StudioURL}
		if !r.Job.SubmittedAt.IsZero() {
			c.Durations.Queued = r.Job.SubmittedAt.Sub(r.Created).Seconds()
			c.Durations.Running = r.Updated.Sub(r.Job.SubmittedAt).Seconds()
		}
	}
	c.Durations.Total = r.Updated.Sub(r.Created).Seconds()
	if r.Online != nil && r.Online.Response != nil {
		a := r.Online.Response
		c.Response = &CompletionResponse{Status: a.Status, Deployment: a.Deployment, LatencyMS: a.LatencyMS, BodyBytes: a.BodyBytes}
	}
	if r.Request != nil {
		if len(r.Request.Inputs) > 0 {
			c.Inputs = map[string]string{}
			for name, in := range r.Request.Inputs {
				if in.URI != "" {
					c.Inputs[name] = in.URI
				} else {
					c.Inputs[name] = in.Value
				}
			}
		}
		if len(r.Request.Outputs) > 0 {
			c.Outputs = map[string]string{}
			for name, out := range r.Request.Outputs {
				c.Outputs[name] = out.URI
			}
		}
	}
	return c
}

// publishCompletion publishes r's completion message and waits for the
// PubAck. It must come before the terminal ledger write: if batchd dies in
// between, the run is found unfinished, decided again, and the message is
// published again under the same id, which the stream drops.
func publishCompletion(ctx context.Context, js jetstream.JetStream, r *record) error {
	b, err := json.Marshal(completionOf(r))
	if err != nil {
		return err
	}
	m := nats.NewMsg(CompletionSubject(r.Pipeline, r.State))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, r.ID+"."+strconv.Itoa(r.Sys.Gen)+"."+string(r.State))
	if _, err := js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("completion message %s: %w", r.ID, err)
	}
	return nil
}
