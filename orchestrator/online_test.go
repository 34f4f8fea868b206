package orchestrator

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/jobs/online"
)

// onlineSim is an online endpoint on the simulator and a client for it.
type onlineSim struct {
	sim *jobstest.Sim
	c   *online.Client
}

func newOnlineSim(t *testing.T, eps map[string]jobstest.OnlineOptions) *onlineSim {
	t.Helper()
	sim := jobstest.New(t, jobstest.Options{RecordBodies: true})
	for name, opts := range eps {
		if err := sim.AddOnlineEndpoint(name, opts); err != nil {
			t.Fatal(err)
		}
	}
	c, err := online.New(sim.Credential("batchd-orchestrator-test"), online.Options{
		ARMEndpoint: sim.ARMEndpoint(), Transport: sim.HTTPClient(),
		BackoffBase: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &onlineSim{sim: sim, c: c}
}

func (s *onlineSim) scorer(o *Options) { o.Scorer = s.c }

// pipeline is an online pipeline on the simulator's endpoint epName whose
// request is tmpl.
func (s *onlineSim) pipeline(t *testing.T, name, epName, tmpl string) *Pipeline {
	t.Helper()
	req, err := CompileTemplate(tmpl)
	if err != nil {
		t.Fatal(err)
	}
	oep := s.sim.OnlineEndpoint(epName)
	oep.Timeout = 5 * time.Second
	p := &Pipeline{
		Name: name,
		Endpoint: Endpoint{Kind: EndpointOnline, Online: &oep,
			Endpoint: jobsEndpoint(oep)},
		Request:  req,
		Response: ResponsePolicy{Store: true},
		Timeout:  5 * time.Second,
	}
	return p
}

// subscribe collects the messages of subject.
func subscribe(t *testing.T, nc *nats.Conn, subject string) chan *nats.Msg {
	t.Helper()
	ch := make(chan *nats.Msg, 4096)
	sub, err := nc.ChanSubscribe(subject, ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func next(t *testing.T, ch chan *nats.Msg, what string) *nats.Msg {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10s", what)
		return nil
	}
}

// An online run: rendered, scored, recorded with its response and a
// not-applicable decision, and its outcome published on
// batchd.results.<pipeline> with the run id (no requester is waiting).
func TestOnlineRunCompletes(t *testing.T) {
	t.Parallel()
	s := newOnlineSim(t, map[string]jobstest.OnlineOptions{"ep": {}})
	p := s.pipeline(t, "score", "ep", `{"text": {{ json .Fields.text }}}`)
	h := newHarness(t, []*Pipeline{p}, newFakeSub(), s.scorer)
	results := subscribe(t, h.b.Conn, ResultsSubject("score"))
	completions := subscribe(t, h.b.Conn, CompletionSubject("score", StateCompleted))

	rc, err := h.o.Emit(t.Context(), Event{Pipeline: "score", Key: "k1", Source: SourceAPI, Fields: map[string]string{"text": `say "hi"`}})
	if err != nil {
		t.Fatal(err)
	}
	r := h.waitState(rc.RunID, StateCompleted, 10*time.Second)
	want := `{"deployment":"blue","input":{"text":"say \"hi\""}}` // the simulator's echo compacts the input
	if r.Online == nil || r.Online.Response == nil || r.Online.Response.Body != want || r.Online.Response.Status != 200 || r.Online.Response.Deployment != "blue" {
		t.Fatalf("run.Online = %+v, want the echo %s from blue", r.Online, want)
	}
	if r.Online.Request != `{"text": "say \"hi\""}` || r.Online.RequestID == "" {
		t.Errorf("recorded request = %q (id %q)", r.Online.Request, r.Online.RequestID)
	}
	if r.Decision == nil || r.Decision.Verdict != "allow" || len(r.Decision.Checks) != 1 || r.Decision.Checks[0].Name != "not-applicable" {
		t.Errorf("decision = %+v, want allow with one not-applicable check", r.Decision)
	}
	if got := states(r); !slicesEqual(got, []State{StateReceived, StateSubmitting, StateCompleted}) {
		t.Errorf("history %v, want received, submitting, completed", got)
	}
	if r.Job != nil {
		t.Errorf("an online run has a job: %+v", r.Job)
	}
	m := next(t, results, "results message")
	if string(m.Data) != want || m.Header.Get(HeaderRunID) != rc.RunID || m.Header.Get(HeaderState) != "completed" ||
		m.Header.Get(HeaderStatus) != "200" || m.Header.Get(HeaderDeployment) != "blue" {
		t.Errorf("results message %q headers %v", m.Data, m.Header)
	}
	var c Completion
	if err := json.Unmarshal(next(t, completions, "completion message").Data, &c); err != nil {
		t.Fatal(err)
	}
	if c.Response == nil || c.Response.Status != 200 || c.Response.BodyBytes != len(want) {
		t.Errorf("completion.Response = %+v", c.Response)
	}
	if got := s.sim.OnlineScored("ep"); got != 1 {
		t.Errorf("scored %d, want 1", got)
	}
}

func jobsEndpoint(e online.Endpoint) jobs.Endpoint {
	return jobs.Endpoint{Name: e.Name, ScoringURI: e.ScoringURI, Deployment: e.Deployment, Workspace: e.Workspace}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A request whose trigger deferred its reply gets the response as the
// reply; the results subject gets nothing.
func TestOnlineReplyGoesToTheRequester(t *testing.T) {
	t.Parallel()
	s := newOnlineSim(t, map[string]jobstest.OnlineOptions{"ep": {}})
	p := s.pipeline(t, "score", "ep", `{{ .Message.Body }}`)
	p.Trigger = "nats"
	h := newHarness(t, []*Pipeline{p}, newFakeSub(), s.scorer)
	results := subscribe(t, h.b.Conn, ResultsSubject("score"))
	inbox := nats.NewInbox()
	replies := subscribe(t, h.b.Conn, inbox)

	ev := Event{Pipeline: "score", Key: "nats-msg-id:1", Source: SourceNATS,
		Message: &MessageEvent{Subject: "score.in", Data: json.RawMessage(`{"n": 12345678901234567890}`), Reply: inbox, ReplyDeferred: true}}
	rc, err := h.o.Emit(t.Context(), ev)
	if err != nil {
		t.Fatal(err)
	}
	m := next(t, replies, "reply")
	if want := `{"deployment":"blue","input":{"n":12345678901234567890}}`; string(m.Data) != want || m.Header.Get(HeaderRunID) != rc.RunID {
		t.Errorf("reply %q (run %q), want %s for run %s: .Message.Body passes the body through unchanged", m.Data, m.Header.Get(HeaderRunID), want, rc.RunID)
	}
	h.waitState(rc.RunID, StateCompleted, 5*time.Second)
	select {
	case m := <-results:
		t.Errorf("a results message was published for a request with a requester: %q", m.Data)
	case <-time.After(100 * time.Millisecond):
	}

	// The same key again (a repeated Nats-Msg-Id): answered from the
	// run, marked duplicate, and not scored again.
	inbox2 := nats.NewInbox()
	replies2 := subscribe(t, h.b.Conn, inbox2)
	ev.Message.Reply = inbox2
	rc2, err := h.o.Emit(t.Context(), ev)
	if err != nil || !rc2.Duplicate {
		t.Fatalf("second Emit = %+v, %v; want a duplicate", rc2, err)
	}
	if err := h.o.AnswerDuplicate(t.Context(), ev.Pipeline, rc2.RunID, inbox2); err != nil {
		t.Fatal(err)
	}
	d := next(t, replies2, "duplicate's reply")
	if string(d.Data) != string(m.Data) || d.Header.Get(HeaderDuplicate) != "true" {
		t.Errorf("duplicate's reply %q (headers %v), want the stored response marked duplicate", d.Data, d.Header)
	}
	// After the intake's duplicate window the worker sees the duplicate:
	// it answers it the same way.
	inbox3 := nats.NewInbox()
	replies3 := subscribe(t, h.b.Conn, inbox3)
	ev.Message.Reply = inbox3
	b, _ := json.Marshal(ev)
	msg := nats.NewMsg(intakeSubject("score", rc.RunID))
	msg.Data = b
	msg.Header.Set("Nats-Msg-Id", rc.RunID+".late")
	if _, err := h.o.js.PublishMsg(t.Context(), msg); err != nil {
		t.Fatal(err)
	}
	if d := next(t, replies3, "late duplicate's reply"); string(d.Data) != string(m.Data) || d.Header.Get(HeaderDuplicate) != "true" {
		t.Errorf("late duplicate's reply %q", d.Data)
	}
	if got := s.sim.OnlineScored("ep"); got != 1 {
		t.Errorf("scored %d times, want once for one key", got)
	}
	r, _ := h.o.Get(t.Context(), rc.RunID)
	if r.Duplicates != 1 {
		t.Errorf("run.Duplicates = %d, want 1 (the late one)", r.Duplicates)
	}
}

// Outcomes other than completed: the run's state, its reason, and the
// requester's error reply.
func TestOnlineFailures(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		opts     jobstest.OnlineOptions
		tmpl     string
		faults   []jobstest.Fault
		timeout  time.Duration
		want     State
		reason   string
		status   string
		wantPOST int64
	}{
		{name: "request renders to something that is not JSON", tmpl: `{"x": {{ .Fields.x }}}`, want: StateRejected,
			reason: "renders to text that is not JSON", wantPOST: 0},
		{name: "the endpoint answers 400", tmpl: `{}`, opts: jobstest.OnlineOptions{Handler: func(jobstest.OnlineRequest) (int, []byte) {
			return 400, []byte(`{"message":"missing feature f3"}`)
		}}, want: StateRejected, reason: "missing feature f3", status: "400", wantPOST: 1},
		{name: "the scoring script fails", tmpl: `{}`, opts: jobstest.OnlineOptions{Handler: func(jobstest.OnlineRequest) (int, []byte) {
			return 500, []byte(`{"message":"division by zero"}`)
		}}, want: StateFailed, reason: "division by zero", status: "500", wantPOST: 1},
		{name: "the endpoint stays busy past the timeout", tmpl: `{}`, timeout: 300 * time.Millisecond,
			faults: []jobstest.Fault{{Status: 429, RetryAfter: 20 * time.Millisecond}}, want: StateTimedOut, reason: "429", status: "429"},
		{name: "the identity lacks the score action", tmpl: `{}`, want: StateRejected, reason: online.ActionScore, status: "403", wantPOST: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newOnlineSim(t, map[string]jobstest.OnlineOptions{"ep": tt.opts})
			if tt.status == "403" {
				s.sim.DenyAction("batchd-orchestrator-test", online.ActionScore)
			}
			if len(tt.faults) > 0 {
				s.sim.SetFaultRate(jobstest.RouteScore, 1, tt.faults...)
			}
			p := s.pipeline(t, "score", "ep", tt.tmpl)
			if tt.timeout > 0 {
				p.Timeout = tt.timeout
			}
			h := newHarness(t, []*Pipeline{p}, newFakeSub(), s.scorer)
			inbox := nats.NewInbox()
			replies := subscribe(t, h.b.Conn, inbox)
			rc, err := h.o.Emit(t.Context(), Event{Pipeline: "score", Key: "k", Source: SourceNATS, Fields: map[string]string{"x": "not json"},
				Message: &MessageEvent{Subject: "in", Data: json.RawMessage(`{}`), Reply: inbox, ReplyDeferred: true}})
			if err != nil {
				t.Fatal(err)
			}
			r := h.waitState(rc.RunID, tt.want, 10*time.Second)
			if !strings.Contains(r.lastReasonText(), tt.reason) {
				t.Errorf("reason %q does not say %q", r.lastReasonText(), tt.reason)
			}
			m := next(t, replies, "error reply")
			var e OnlineErrorBody
			if err := json.Unmarshal(m.Data, &e); err != nil {
				t.Fatalf("reply %q is not an error body: %v", m.Data, err)
			}
			if e.State != tt.want || e.RunID != rc.RunID || !strings.Contains(e.Error, tt.reason) || m.Header.Get(HeaderState) != string(tt.want) ||
				m.Header.Get(HeaderStatus) != tt.status {
				t.Errorf("reply %s (headers %v), want state %s saying %q with status %q", m.Data, m.Header, tt.want, tt.reason, tt.status)
			}
			if tt.wantPOST > 0 && s.sim.Count(jobstest.RouteScore) != tt.wantPOST {
				t.Errorf("POSTs = %d, want %d", s.sim.Count(jobstest.RouteScore), tt.wantPOST)
			}
		})
	}
}

func (r *Run) lastReasonText() string {
	if len(r.History) == 0 {
		return ""
	}
	return r.History[len(r.History)-1].Reason
}

// What a run keeps of the bodies follows the pipeline's response policy;
// the requester gets the whole response either way.
func TestOnlineResponsePolicy(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		policy        ResponsePolicy
		wantBody      string
		wantTruncated bool
		wantNotStored bool
	}{
		{"stored whole", ResponsePolicy{Store: true}, `{"deployment":"blue","input":{"text":"hello world"}}`, false, false},
		{"cut to max_bytes", ResponsePolicy{Store: true, MaxBytes: 10}, `{"deployme`, true, false},
		{"not stored", ResponsePolicy{Store: false}, "", false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newOnlineSim(t, map[string]jobstest.OnlineOptions{"ep": {}})
			p := s.pipeline(t, "score", "ep", `{"text":{{ json .Fields.text }}}`)
			p.Response = tt.policy
			h := newHarness(t, []*Pipeline{p}, newFakeSub(), s.scorer)
			inbox := nats.NewInbox()
			replies := subscribe(t, h.b.Conn, inbox)
			rc, err := h.o.Emit(t.Context(), Event{Pipeline: "score", Key: "k", Source: SourceNATS, Fields: map[string]string{"text": "hello world"},
				Message: &MessageEvent{Subject: "in", Data: json.RawMessage(`{}`), Reply: inbox, ReplyDeferred: true}})
			if err != nil {
				t.Fatal(err)
			}
			full := `{"deployment":"blue","input":{"text":"hello world"}}`
			if m := next(t, replies, "reply"); string(m.Data) != full {
				t.Errorf("reply %q, want the whole response %q", m.Data, full)
			}
			r := h.waitState(rc.RunID, StateCompleted, 5*time.Second)
			got := r.Online.Response
			if got.Body != tt.wantBody || got.Truncated != tt.wantTruncated || got.NotStored != tt.wantNotStored || got.BodyBytes != len(full) {
				t.Errorf("stored response %+v, want body %q truncated %v not_stored %v of %d bytes", got, tt.wantBody, tt.wantTruncated, tt.wantNotStored, len(full))
			}
			if !tt.policy.Store && r.Online.Request != "" {
				t.Errorf("request stored with store: false: %q", r.Online.Request)
			}
		})
	}
}

// max_concurrent_requests bounds the requests in flight (per replica).
func TestOnlineMaxConcurrentRequests(t *testing.T) {
	t.Parallel()
	s := newOnlineSim(t, map[string]jobstest.OnlineOptions{"ep": {Latency: 30 * time.Millisecond}})
	p := s.pipeline(t, "score", "ep", `{"i":{{ json .Fields.i }}}`)
	p.Endpoint.MaxConcurrentRequests = 2
	h := newHarness(t, []*Pipeline{p}, newFakeSub(), s.scorer, func(o *Options) { o.Workers = 8 })
	var ids []string
	for i := range 10 {
		ids = append(ids, h.emitFields("score", "k"+itoa(i), map[string]string{"i": itoa(i)}))
	}
	for _, id := range ids {
		h.waitState(id, StateCompleted, 10*time.Second)
	}
	if peak := s.sim.OnlinePeak("ep"); peak > 2 || peak < 1 {
		t.Errorf("peak requests in flight = %d, want at most 2", peak)
	}
}

func (h *harness) emitFields(pipeline, key string, fields map[string]string) string {
	h.t.Helper()
	rc, err := h.o.Emit(h.t.Context(), Event{Pipeline: pipeline, Key: key, Source: SourceAPI, Fields: fields})
	if err != nil {
		h.t.Fatalf("Emit: %v", err)
	}
	return rc.RunID
}

// The crash rule: batchd dies with a request in flight. The next start
// finds the run in submitting after its deadline and, since the pipeline
// is not safe_to_repeat, makes it unknown without sending the request
// again; with safe_to_repeat it scores it again.
func TestOnlineCrashMidRequest(t *testing.T) {
	for _, safe := range []bool{false, true} {
		t.Run(map[bool]string{false: "not safe to repeat", true: "safe to repeat"}[safe], func(t *testing.T) {
			t.Parallel()
			s := newOnlineSim(t, map[string]jobstest.OnlineOptions{"ep": {}, "slow": {Latency: time.Hour}})
			slow := s.pipeline(t, "score", "slow", `{}`)
			slow.Timeout = time.Second
			dir := t.TempDir()
			b := startBrokerIn(t, dir)
			h := startOn(t, b, []*Pipeline{slow}, newFakeSub(), s.scorer)
			inbox := nats.NewInbox()
			subscribe(t, b.Conn, inbox) // the requester listens before it asks
			rc, err := h.o.Emit(t.Context(), Event{Pipeline: "score", Key: "k", Source: SourceNATS,
				Message: &MessageEvent{Subject: "in", Data: json.RawMessage(`{}`), Reply: inbox, ReplyDeferred: true}})
			if err != nil {
				t.Fatal(err)
			}
			h.waitState(rc.RunID, StateSubmitting, 5*time.Second)
			waitFor(t, 5*time.Second, "the request to reach the endpoint", func() bool { return s.sim.Count(jobstest.RouteScore) == 1 })
			b = crash(t, h, dir)
			replies := subscribe(t, b.Conn, inbox) // the requester is still listening

			// The endpoint is fast now (same name, same run).
			fast := s.pipeline(t, "score", "ep", `{}`)
			fast.SafeToRepeat = safe
			h2 := startOn(t, b, []*Pipeline{fast}, newFakeSub(), s.scorer)
			if r, err := h2.o.Get(t.Context(), rc.RunID); err != nil || r.State != StateSubmitting {
				t.Fatalf("state after a crash mid-request = %v (%v), want submitting", r, err)
			}
			if !safe {
				// The intake message comes back after its AckWait (12 s here).
				r := h2.waitState(rc.RunID, StateUnknown, 30*time.Second)
				if !strings.Contains(r.lastReasonText(), "scoring outcome unknown: batchd stopped while the request was in flight") {
					t.Errorf("reason %q", r.lastReasonText())
				}
				if got := s.sim.Count(jobstest.RouteScore); got != 1 {
					t.Errorf("POSTs = %d, want 1: an unknown outcome is never sent again blindly", got)
				}
				m := next(t, replies, "error reply")
				if m.Header.Get(HeaderState) != string(StateUnknown) || !strings.Contains(string(m.Data), "batchd stopped while the request was in flight") {
					t.Errorf("reply %q (state %q)", m.Data, m.Header.Get(HeaderState))
				}
				// An operator resolves it.
				res, err := h2.o.Resolve(t.Context(), rc.RunID, ResolveRequest{State: StateFailed, Reason: "checked: not scored"})
				if err != nil || res.State != StateFailed {
					t.Fatalf("Resolve = %v, %v", res, err)
				}
				if _, err := h2.o.Resolve(t.Context(), rc.RunID, ResolveRequest{Job: "x"}); err == nil {
					t.Error("resolving an online run to a job was allowed")
				}
				return
			}
			r := h2.waitState(rc.RunID, StateCompleted, 30*time.Second)
			if r.Attempts != 2 || s.sim.OnlineScored("ep") != 1 {
				t.Errorf("attempts %d, scored %d; want 2 and 1", r.Attempts, s.sim.OnlineScored("ep"))
			}
			if m := next(t, replies, "reply"); m.Header.Get(HeaderState) != "completed" {
				t.Errorf("reply state %q", m.Header.Get(HeaderState))
			}
		})
	}
}

// No key or token reaches a run record, the API, the logs, a reply or a
// results message.
func TestOnlineSecretsStayOut(t *testing.T) {
	t.Parallel()
	s := newOnlineSim(t, map[string]jobstest.OnlineOptions{
		"keys": {AuthMode: online.AuthKey}, "aml": {AuthMode: online.AuthAMLToken}, "aad": {},
	})
	var ps []*Pipeline
	for _, ep := range []string{"keys", "aml", "aad"} {
		ps = append(ps, s.pipeline(t, "p-"+ep, ep, `{"v":1}`))
	}
	h := newHarness(t, ps, newFakeSub(), s.scorer)
	all := subscribe(t, h.b.Conn, "batchd.>")
	var ids []string
	for _, p := range ps {
		ids = append(ids, h.emit(p.Name, "k", ""))
	}
	for _, id := range ids {
		h.waitState(id, StateCompleted, 10*time.Second)
	}
	s.sim.RotateKey("keys", "primary") // the next run sees a 401 first
	ids = append(ids, h.emit("p-keys", "k2", ""))
	srv := httptest.NewServer(h.o.Handler(HandlerOptions{}))
	defer srv.Close()
	var text strings.Builder
	for _, id := range ids {
		h.waitState(id, StateCompleted, 10*time.Second)
		resp, err := http.Get(srv.URL + "/api/v1/runs/" + id)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		text.Write(b)
		e, err := h.o.h.ledger.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		text.Write(e.Value())
	}
	for len(all) > 0 {
		m := <-all
		text.Write(m.Data)
		for k, v := range m.Header {
			text.WriteString(k + strings.Join(v, ","))
		}
	}
	text.WriteString(h.logs.String())
	if s.sim.Count(jobstest.RouteListKeys) != 2 {
		t.Errorf("listKeys = %d, want 2 (the rotation was noticed)", s.sim.Count(jobstest.RouteListKeys))
	}
	for _, secret := range s.sim.IssuedTokens() {
		if strings.Contains(text.String(), secret) || strings.Contains(text.String(), secret[strings.LastIndex(secret, ".")+1:]) {
			t.Errorf("a token or key reached a record, the API, a message or the log")
		}
	}
}

// Request templates: json quotes values, .Message.Body passes the body
// through, and a rendering that is not JSON is an error naming the spot.
func TestRenderRequest(t *testing.T) {
	t.Parallel()
	ev := Event{Pipeline: "p", Key: "k", Fields: map[string]string{"text": `a "quoted" word`, "n": "3"},
		Message: &MessageEvent{Subject: "s", Data: json.RawMessage(`{"features":[1.5,2],"id":9007199254740993}`)}}
	tests := []struct {
		tmpl, want, wantErr string
	}{
		{`{"text":{{ json .Fields.text }}}`, `{"text":"a \"quoted\" word"}`, ""},
		{`{"x":{{ json .Message.Data.features }}}`, `{"x":[1.5,2]}`, ""},
		{`{{ .Message.Body }}`, `{"features":[1.5,2],"id":9007199254740993}`, ""},
		{`{"inputs":[{{ .Fields.n }}]}`, `{"inputs":[3]}`, ""},
		{`{"text":"{{ .Fields.text }}"}`, "", "renders to text that is not JSON"},
		{`{"x": {{ .Fields.missing }}}`, "", "no value for .Fields.missing"},
	}
	for _, tt := range tests {
		t.Run(tt.tmpl, func(t *testing.T) {
			tpl, err := CompileTemplate(tt.tmpl)
			if err != nil {
				t.Fatal(err)
			}
			p := &Pipeline{Name: "p", Endpoint: Endpoint{Kind: EndpointOnline}, Request: tpl}
			got, err := p.RenderRequest("id", ev)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("RenderRequest = %q, %v; want an error saying %q", got, err, tt.wantErr)
				}
				if _, _, rerr := p.Render("id", ev); rerr == nil {
					t.Errorf("Render of an online pipeline does not check the request")
				}
				return
			}
			if err != nil || string(got) != tt.want {
				t.Fatalf("RenderRequest = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	// Sample data renders for load-time validation.
	tpl, _ := CompileTemplate(`{{ .Message.Body }}`)
	if got, err := tpl.Validate(SampleTemplateData("p", "nats")); err != nil || got != "{}" {
		t.Errorf("Validate(.Message.Body) = %q, %v; want {}", got, err)
	}
}

// .Message.Body on a pipeline without a NATS trigger is an error that says
// so, at load time (sample data) and at run time.
func TestMessageBodyWithoutMessage(t *testing.T) {
	t.Parallel()
	tpl, err := CompileTemplate(`{{ .Message.Body }}`)
	if err != nil {
		t.Fatal(err)
	}
	const want = ".Message is not available for this trigger (.Message.Body)"
	if _, err := tpl.Validate(SampleTemplateData("p", "cron")); err == nil || err.Error() != want {
		t.Errorf("Validate on a cron pipeline = %v, want %q", err, want)
	}
	p := &Pipeline{Name: "p", Endpoint: Endpoint{Kind: EndpointOnline}, Request: tpl}
	if _, err := p.RenderRequest("id", Event{Pipeline: "p", Key: "k", Fields: map[string]string{}}); err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("RenderRequest without a message = %v, want %q", err, want)
	}
}

// keepInProgress tells JetStream about a long request until stopped.
func TestKeepInProgress(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		m := &progressMsg{}
		stop := keepInProgress(m, 10*time.Second)
		time.Sleep(35 * time.Second)
		stop()
		time.Sleep(time.Minute)
		if got := m.n.Load(); got != 3 {
			t.Errorf("InProgress calls = %d over 35s every 10s, then none after stop; want 3", got)
		}
	})
}

type progressMsg struct {
	jetstream.Msg
	n atomic.Int64
}

func (m *progressMsg) InProgress() error { m.n.Add(1); return nil }
