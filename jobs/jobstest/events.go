package jobstest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/eventgrid/azsystemevents"

	"github.com/batchd/batchd/jobs"
)

// Workspace events. With EmitEvents, the Sim publishes its jobs' status
// changes as an Azure ML workspace does through Event Grid: a
// Microsoft.MachineLearningServices.RunStatusChanged event for every new
// status a job reaches (and RunCompleted when it completes), POSTed to a
// webhook in batches, in the Event Grid or the CloudEvents schema. A job
// moves on by wall-clock steps (Timed) whether or not anyone reads it; the
// Sim looks at its live jobs every Tick (a status shorter than a Tick may
// be skipped, as if its event were lost). Delivery can be made as bad as
// Event Grid's promise allows: late, lost, duplicated and out of order; a
// failed POST is retried, as Event Grid does, then dropped.

// Schemas of EmitEvents.
const (
	SchemaEventGrid   = "eventgrid"
	SchemaCloudEvents = "cloudevents"
)

// EventOptions configure EmitEvents.
type EventOptions struct {
	// URL receives the events (a batchd /eventgrid URL with its ?code=).
	URL string
	// Client sends them (nil: a client without proxy).
	Client *http.Client
	// Schema is SchemaEventGrid (default) or SchemaCloudEvents.
	Schema string
	// Delay is added to every event's delivery, and a random part of
	// Jitter on top: events whose delivery times cross arrive out of order.
	Delay, Jitter time.Duration
	// LossRate is the fraction of events never delivered; DuplicateRate
	// the fraction delivered twice (the copy up to Jitter later).
	LossRate, DuplicateRate float64
	// Tick is how often live jobs are looked at and due events sent
	// (default 20ms).
	Tick time.Duration
	// MaxBatch is the most events per POST (default 100).
	MaxBatch int
	// Attempts is how many times a delivery is tried before it is dropped
	// (default 5; the retries 100ms apart, doubling).
	Attempts int
}

// EventStats counts what EmitEvents did.
type EventStats struct {
	Events     int64 // status changes published (before loss and duplication)
	Lost       int64 // dropped by LossRate
	Duplicated int64 // sent twice by DuplicateRate
	Delivered  int64 // events in deliveries answered 2xx
	Retried    int64 // failed deliveries tried again
	Dropped    int64 // events given up after Attempts
}

type pendingEvent struct {
	due      time.Time
	attempts int
	body     json.RawMessage
}

type emitter struct {
	s       *Sim
	o       EventOptions
	cursor  int    // s.order already taken into live
	live    []*job // jobs not finished
	last    map[*job]jobs.Status
	pending []pendingEvent

	mu    sync.Mutex
	stats EventStats
}

// EmitEvents starts publishing the Sim's job status changes to o.URL until
// ctx ends or Close. Call it once.
func (s *Sim) EmitEvents(ctx context.Context, o EventOptions) {
	if o.Client == nil {
		o.Client = &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	}
	if o.Schema == "" {
		o.Schema = SchemaEventGrid
	}
	if o.Tick <= 0 {
		o.Tick = 20 * time.Millisecond
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 100
	}
	if o.Attempts <= 0 {
		o.Attempts = 5
	}
	e := &emitter{s: s, o: o, last: map[*job]jobs.Status{}}
	s.mu.Lock()
	s.events = e
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	s.serving.Add(1)
	go func() {
		defer s.serving.Done()
		select {
		case <-s.done:
		case <-ctx.Done():
		}
		cancel()
	}()
	s.serving.Add(1)
	go func() {
		defer s.serving.Done()
		e.run(ctx)
	}()
}

// EventStats returns what EmitEvents did so far (zero without it).
func (s *Sim) EventStats() EventStats {
	s.mu.Lock()
	e := s.events
	s.mu.Unlock()
	if e == nil {
		return EventStats{}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats
}

func (e *emitter) run(ctx context.Context) {
	t := time.NewTicker(e.o.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		e.scan(now)
		e.send(ctx, now)
	}
}

// scan turns the status changes of live jobs into pending events.
func (e *emitter) scan(now time.Time) {
	s := e.s
	s.mu.Lock()
	e.live = append(e.live, s.order[e.cursor:]...)
	e.cursor = len(s.order)
	type change struct {
		j  *job
		st jobs.Status
	}
	var changes []change
	keep := e.live[:0]
	for _, j := range e.live {
		st := j.status(now, false)
		if st != e.last[j] {
			e.last[j] = st
			changes = append(changes, change{j, st})
		}
		if st.Terminal() {
			delete(e.last, j)
			continue
		}
		keep = append(keep, j)
	}
	clear(e.live[len(keep):])
	e.live = keep
	ws := s.opts.Workspace
	rng := func() float64 { return s.rng.Float64() }
	jitter := func() time.Duration { return time.Duration(s.rng.Int64N(int64(e.o.Jitter) + 1)) }
	var add []pendingEvent
	var st EventStats
	for _, c := range changes {
		types := []string{string(azsystemevents.TypeMachineLearningServicesRunStatusChanged)}
		if c.st == jobs.StatusCompleted {
			types = append(types, string(azsystemevents.TypeMachineLearningServicesRunCompleted))
		}
		for _, typ := range types {
			body := e.event(typ, ws, c.j, c.st, now)
			st.Events++
			if rng() < e.o.LossRate {
				st.Lost++
				continue
			}
			add = append(add, pendingEvent{due: now.Add(e.o.Delay + jitter()), body: body})
			if rng() < e.o.DuplicateRate {
				st.Duplicated++
				add = append(add, pendingEvent{due: now.Add(e.o.Delay + jitter()), body: body})
			}
		}
	}
	s.mu.Unlock()
	e.mu.Lock()
	e.pending = append(e.pending, add...)
	e.stats.Events += st.Events
	e.stats.Lost += st.Lost
	e.stats.Duplicated += st.Duplicated
	e.mu.Unlock()
}

// event is one event in the configured schema.
func (e *emitter) event(typ string, ws jobs.Workspace, j *job, st jobs.Status, now time.Time) json.RawMessage {
	topic := "/subscriptions/" + ws.Subscription + "/resourceGroups/" + ws.ResourceGroup +
		"/providers/Microsoft.MachineLearningServices/workspaces/" + ws.Name
	expName := j.experiment
	if expName == "" {
		expName = j.endpoint
	}
	expID := guidOf("experiment:" + expName)
	runType := "azureml.PipelineRun"
	props := map[string]any{"azureml.runsource": runType}
	tags := map[string]any{}
	var data any
	if typ == string(azsystemevents.TypeMachineLearningServicesRunCompleted) {
		data = azsystemevents.MachineLearningServicesRunCompletedEventData{ExperimentID: &expID, ExperimentName: &expName,
			RunID: &j.name, RunType: &runType, RunProperties: props, RunTags: tags}
	} else {
		status := string(st)
		data = azsystemevents.MachineLearningServicesRunStatusChangedEventData{ExperimentID: &expID, ExperimentName: &expName,
			RunID: &j.name, RunType: &runType, RunStatus: &status, RunProperties: props, RunTags: tags}
	}
	id := newGUID()
	subject := "experiments/" + expID + "/runs/" + j.name
	var ev map[string]any
	if e.o.Schema == SchemaCloudEvents {
		ev = map[string]any{"specversion": "1.0", "id": id, "type": typ, "source": topic, "subject": subject,
			"time": now.UTC().Format(time.RFC3339Nano), "datacontenttype": "application/json", "data": data}
	} else {
		ev = map[string]any{"id": id, "topic": topic, "subject": subject, "eventType": typ,
			"eventTime": now.UTC().Format(time.RFC3339Nano), "data": data, "dataVersion": "2", "metadataVersion": "1"}
	}
	b, err := json.Marshal(ev)
	if err != nil {
		panic(fmt.Sprintf("jobstest: marshal event: %v", err)) // only our own types
	}
	return b
}

// send POSTs the due events, MaxBatch at a time, in due order.
func (e *emitter) send(ctx context.Context, now time.Time) {
	e.mu.Lock()
	slices.SortFunc(e.pending, func(a, b pendingEvent) int { return a.due.Compare(b.due) })
	n := 0
	for n < len(e.pending) && !e.pending[n].due.After(now) {
		n++
	}
	due := slices.Clone(e.pending[:n])
	e.pending = slices.Delete(e.pending, 0, n)
	e.mu.Unlock()
	for len(due) > 0 && ctx.Err() == nil {
		batch := due[:min(len(due), e.o.MaxBatch)]
		due = due[len(batch):]
		err := e.post(ctx, batch)
		e.mu.Lock()
		switch {
		case err == nil:
			e.stats.Delivered += int64(len(batch))
		case ctx.Err() != nil:
		default:
			for _, p := range batch {
				p.attempts++
				if p.attempts >= e.o.Attempts {
					e.stats.Dropped++
					continue
				}
				e.stats.Retried++
				p.due = now.Add(100 * time.Millisecond << (p.attempts - 1))
				e.pending = append(e.pending, p)
			}
		}
		e.mu.Unlock()
	}
}

func (e *emitter) post(ctx context.Context, batch []pendingEvent) error {
	var buf bytes.Buffer
	buf.WriteByte('[')
	for i, p := range batch {
		if i > 0 {
			buf.WriteByte(',')
		}
		buf.Write(p.body)
	}
	buf.WriteByte(']')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.o.URL, &buf)
	if err != nil {
		return err
	}
	if e.o.Schema == SchemaCloudEvents {
		req.Header.Set("Content-Type", "application/cloudevents-batch+json; charset=utf-8")
	} else {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("aeg-event-type", "Notification")
	}
	resp, err := e.o.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}

// guidOf is a stable GUID-shaped id for a name.
func guidOf(name string) string {
	h := sha256.Sum256([]byte(name))
	x := fmt.Sprintf("%x", h[:16])
	return strings.Join([]string{x[0:8], x[8:12], x[12:16], x[16:20], x[20:32]}, "-")
}
