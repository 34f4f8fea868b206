package orchestrator

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/batchd/batchd/jobs"
)

// API types: the JSON of /api/v1. The CLI (orchestrator/apiclient) decodes
// the same types.

// ErrorBody is every error answer: {"error": {"code", "message"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is the error's code (machine) and message (people).
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// PipelineInfo is one pipeline as GET /api/v1/pipelines shows it.
type PipelineInfo struct {
	Name           string            `json:"name"`
	Trigger        string            `json:"trigger,omitempty"`
	Endpoint       string            `json:"endpoint"`
	ScoringURI     string            `json:"scoring_uri"`
	Deployment     string            `json:"deployment,omitempty"`
	Workspace      bool              `json:"workspace"`
	MaxRunningJobs int               `json:"max_running_jobs,omitempty"`
	Inputs         map[string]IOInfo `json:"inputs"`
	Outputs        map[string]IOInfo `json:"outputs,omitempty"`
	ExperimentName string            `json:"experiment_name,omitempty"`
	Timeout        string            `json:"timeout,omitempty"`
	MaxAttempts    int               `json:"max_attempts"`
	RetryBackoff   string            `json:"retry_backoff,omitempty"`

	// Kind is "batch" or "online". The fields below are for online
	// pipelines.
	Kind                  string `json:"kind"`
	AuthMode              string `json:"auth_mode,omitempty"`
	Request               string `json:"request,omitempty"` // the request template
	SafeToRepeat          bool   `json:"safe_to_repeat,omitempty"`
	MaxConcurrentRequests int    `json:"max_concurrent_requests,omitempty"`
	StoreResponse         bool   `json:"store_response,omitempty"`
	ResponseMaxBytes      int    `json:"response_max_bytes,omitempty"`
}

// IOInfo is one input or output template.
type IOInfo struct {
	Type  string `json:"type"`
	URI   string `json:"uri,omitempty"`
	Value string `json:"value,omitempty"`
	Mode  string `json:"mode,omitempty"`
}

// PipelineList is the answer of GET /api/v1/pipelines.
type PipelineList struct {
	Pipelines []PipelineInfo `json:"pipelines"`
}

// ManualRunRequest is the body of POST /api/v1/pipelines/{name}/runs.
type ManualRunRequest struct {
	// Key is the idempotency key; empty means a fresh random one.
	Key    string            `json:"key,omitempty"`
	Fields map[string]string `json:"fields,omitempty"`
}

// ManualRunResponse answers a manual run: 202 for a new run, 200 for a key
// seen before (the same run).
type ManualRunResponse struct {
	RunID     string `json:"run_id"`
	State     State  `json:"state"`
	Duplicate bool   `json:"duplicate,omitempty"`
}

// ActionRequest is the body of POST /api/v1/runs/{id}/cancel and /retry.
type ActionRequest struct {
	Reason string `json:"reason,omitempty"`
}

// ReplayRequest is the body of POST /api/v1/runs/{id}/replay.
type ReplayRequest struct {
	// Key makes the request idempotent: the same key replays once. Empty
	// means a new replay every time.
	Key string `json:"key,omitempty"`
}

// ReplayResponse answers a replay: the new run.
type ReplayResponse struct {
	ManualRunResponse
	ReplayOf string `json:"replay_of"`
}

// BackfillRequest is the body of POST /api/v1/pipelines/{name}/backfill:
// a cron pipeline's schedule slots in (from, to], or a blob pipeline's
// blobs last modified in (from, to].
type BackfillRequest struct {
	From   time.Time `json:"from"`
	To     time.Time `json:"to"`
	Limit  int       `json:"limit,omitempty"` // default 100, at most 1000
	DryRun bool      `json:"dry_run,omitempty"`
}

// BackfillSlot is one slot (or blob) of a backfill and the run it is.
type BackfillSlot struct {
	// Time is the slot's time, or the blob's last modification.
	Time time.Time `json:"time"`
	// Blob is the blob's URL, for a blob pipeline.
	Blob  string `json:"blob,omitempty"`
	RunID string `json:"run_id"`
	// Duplicate: the slot already had a run; nothing new was submitted.
	Duplicate bool  `json:"duplicate,omitempty"`
	State     State `json:"state,omitempty"`
}

// BackfillResponse lists the slots; More says the range had more than Limit.
type BackfillResponse struct {
	Slots  []BackfillSlot `json:"slots"`
	More   bool           `json:"more,omitempty"`
	DryRun bool           `json:"dry_run,omitempty"`
}

// BackfillFunc lists the events of a pipeline's schedule slots (cron) or
// blobs (blob) in (from, to]; the daemon builds it from the triggers (the
// orchestrator does not know them).
type BackfillFunc func(ctx context.Context, pipeline string, from, to time.Time, limit int) (evs []Event, more bool, err error)

// HandlerOptions configure Handler.
type HandlerOptions struct {
	// Backfill, when set, serves POST /api/v1/pipelines/{name}/backfill.
	Backfill BackfillFunc
	// APIToken, when set, is required as "Authorization: Bearer <token>" on
	// /api/. It is compared in constant time and never logged.
	APIToken string
	Logger   *slog.Logger
}

// maxBody bounds request bodies.
const maxBody = 1 << 20

// Handler serves /healthz, /readyz and the JSON API under
// /api/v1/.
func (o *Orchestrator) Handler(opts HandlerOptions) http.Handler {
	log := opts.Logger
	if log == nil {
		log = o.log
	}
	a := &api{o: o, log: log, backfillFn: opts.Backfill}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := o.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = io.WriteString(w, "not ready: "+err.Error()+"\n")
			return
		}
		// Config drift is reported, not made a failure: during a rolling
		// change of the pipelines file every replica would leave the load
		// balancer at once.
		if l := o.Replicas(); l.ConfigDrift {
			_, _ = io.WriteString(w, "ok; warning: "+l.Drift+"\n")
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})

	api := http.NewServeMux()
	api.HandleFunc("GET /api/v1/runs", a.listRuns)
	api.HandleFunc("GET /api/v1/runs/{id}", a.getRun)
	api.HandleFunc("POST /api/v1/runs/{id}/cancel", a.cancelRun)
	api.HandleFunc("POST /api/v1/runs/{id}/retry", a.retryRun)
	api.HandleFunc("POST /api/v1/runs/{id}/resolve", a.resolveRun)
	api.HandleFunc("POST /api/v1/runs/{id}/replay", a.replayRun)
	api.HandleFunc("GET /api/v1/pipelines", a.listPipelines)
	api.HandleFunc("GET /api/v1/replicas", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, o.Replicas())
	})
	api.HandleFunc("POST /api/v1/pipelines/{name}/runs", a.runPipeline)
	api.HandleFunc("POST /api/v1/pipelines/{name}/backfill", a.backfill)
	api.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such API path: "+r.Method+" "+r.URL.Path)
	})
	mux.Handle("/api/", bearer(opts.APIToken, api))
	return mux
}

// bearer requires the token on every request, when one is configured.
func bearer(token string, next http.Handler) http.Handler {
	if token == "" {
		return next
	}
	// Compared over SHA-256 digests: constant time, and the token's length
	// does not show either.
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
		if !ok || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="batchd"`)
			writeError(w, http.StatusUnauthorized, "unauthorized", "a valid API token is required: Authorization: Bearer <BATCHD_API_TOKEN>")
			return
		}
		next.ServeHTTP(w, r)
	})
}

type api struct {
	o          *Orchestrator
	log        *slog.Logger
	backfillFn BackfillFunc
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, ErrorBody{Error: ErrorDetail{Code: code, Message: msg}})
}

// fail maps an error to its status code and writes it.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrRunNotFound):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ErrUnknownPipeline):
		writeError(w, http.StatusNotFound, "not_found", err.Error())
	case errors.Is(err, ErrNotAllowed):
		writeError(w, http.StatusConflict, "conflict", err.Error())
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrBadCursor):
		writeError(w, http.StatusBadRequest, "invalid_request", err.Error())
	case errors.Is(err, ErrIndexLoading):
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	case errors.Is(err, ErrUnavailable) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, "unavailable", err.Error())
	case jobs.IsAuth(err):
		writeError(w, http.StatusBadGateway, "upstream_auth", err.Error())
	case jobs.IsPermanent(err) || jobs.IsRetryable(err) || jobs.IsAmbiguous(err):
		writeError(w, http.StatusBadGateway, "upstream", err.Error())
	default:
		a.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", err.Error())
	}
}

// decode reads a JSON body (an empty one is the zero value).
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body := http.MaxBytesReader(w, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		return fmt.Errorf("%w: body: %v", ErrInvalid, err) //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
	}
	if dec.More() {
		return fmt.Errorf("%w: body: more than one JSON value", ErrInvalid)
	}
	return nil
}

func (a *api) listRuns(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	opts := ListOptions{Pipeline: q.Get("pipeline"), State: State(q.Get("state")), Cursor: q.Get("cursor")}
	if opts.State != "" && !opts.State.Valid() {
		a.fail(w, r, fmt.Errorf("%w: state %q is not one of %s", ErrInvalid, opts.State, stateNames()))
		return
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > 1000 {
			a.fail(w, r, fmt.Errorf("%w: limit %q must be a number from 1 to 1000", ErrInvalid, l))
			return
		}
		opts.Limit = n
	}
	list, err := a.o.List(opts)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func stateNames() string {
	s := make([]string, len(States))
	for i, st := range States {
		s[i] = string(st)
	}
	return strings.Join(s, ", ")
}

func (a *api) getRun(w http.ResponseWriter, r *http.Request) {
	run, err := a.o.Get(r.Context(), r.PathValue("id"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, run)
}

// actionStatus is 200 when the action has taken effect, 202 when it is
// still being carried out.
func actionStatus(done bool) int {
	if done {
		return http.StatusOK
	}
	return http.StatusAccepted
}

func (a *api) cancelRun(w http.ResponseWriter, r *http.Request) {
	var req ActionRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	run, err := a.o.CancelRun(r.Context(), r.PathValue("id"), req.Reason)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, actionStatus(run.State == StateCanceled), run)
}

func (a *api) retryRun(w http.ResponseWriter, r *http.Request) {
	var req ActionRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	id := r.PathValue("id")
	before, err := a.o.Get(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	run, err := a.o.Retry(r.Context(), id, req.Reason)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, actionStatus(len(run.History) > len(before.History) && run.State != before.State), run)
}

func (a *api) resolveRun(w http.ResponseWriter, r *http.Request) {
	var req ResolveRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	run, err := a.o.Resolve(r.Context(), r.PathValue("id"), req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	done := run.State.Terminal() || (req.Job != "" && run.Job != nil && run.Job.Name == req.Job)
	writeJSON(w, actionStatus(done), run)
}

func (a *api) listPipelines(w http.ResponseWriter, _ *http.Request) {
	out := PipelineList{Pipelines: []PipelineInfo{}}
	for _, name := range sortedKeys(a.o.pipelines) {
		out.Pipelines = append(out.Pipelines, pipelineInfo(a.o.pipelines[name]))
	}
	writeJSON(w, http.StatusOK, out)
}

func pipelineInfo(p *Pipeline) PipelineInfo {
	info := PipelineInfo{
		Name: p.Name, Trigger: p.Trigger, Endpoint: p.Endpoint.Name, ScoringURI: p.Endpoint.ScoringURI,
		Deployment: p.Endpoint.Deployment, Workspace: p.Endpoint.Workspace != nil,
		MaxRunningJobs: p.Endpoint.MaxRunningJobs, Inputs: map[string]IOInfo{},
		ExperimentName: p.ExperimentName.Source(), MaxAttempts: max(p.Retry.MaxAttempts, 1),
	}
	for name, io := range p.Inputs {
		info.Inputs[name] = IOInfo{Type: io.Type, URI: io.URI.Source(), Value: io.Value.Source(), Mode: io.Mode}
	}
	if len(p.Outputs) > 0 {
		info.Outputs = map[string]IOInfo{}
		for name, io := range p.Outputs {
			info.Outputs[name] = IOInfo{Type: io.Type, URI: io.URI.Source(), Mode: io.Mode}
		}
	}
	if p.Timeout > 0 {
		info.Timeout = p.Timeout.String()
	}
	if p.Retry.Backoff > 0 {
		info.RetryBackoff = p.Retry.Backoff.String()
	}
	info.Kind = EndpointBatch
	if p.IsOnline() {
		info.Kind = EndpointOnline
		info.MaxAttempts = 1
		if p.Endpoint.Online != nil {
			info.AuthMode = p.Endpoint.Online.AuthMode
		}
		info.Request = p.Request.Source()
		info.SafeToRepeat = p.SafeToRepeat
		info.MaxConcurrentRequests = p.Endpoint.MaxConcurrentRequests
		info.StoreResponse = p.Response.Store
		if p.Response.Store {
			info.ResponseMaxBytes = p.maxBytes()
		}
		info.Timeout = p.budget().String()
	}
	return info
}

func (a *api) runPipeline(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, ok := a.o.pipelines[name]
	if !ok {
		a.fail(w, r, fmt.Errorf("%w: %q (configured: %s)", ErrUnknownPipeline, name, strings.Join(sortedKeys(a.o.pipelines), ", ")))
		return
	}
	var req ManualRunRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	key := req.Key
	if key == "" {
		b := make([]byte, 12)
		_, _ = rand.Read(b)
		key = "api-" + hex.EncodeToString(b)
	}
	ev := Event{Pipeline: name, Key: key, Source: SourceAPI, Time: time.Now().UTC(), Fields: req.Fields}
	id := RunID(name, key)
	ctx := r.Context()
	if run, err := a.o.Get(ctx, id); err == nil {
		writeJSON(w, http.StatusOK, ManualRunResponse{RunID: id, State: run.State, Duplicate: true})
		return
	} else if !errors.Is(err, ErrRunNotFound) {
		a.fail(w, r, err)
		return
	}
	if _, _, err := p.Render(id, ev); err != nil {
		a.fail(w, r, fmt.Errorf("%w: the fields do not fit pipeline %s: %v (fields given: %s)", ErrInvalid, name, err, fieldNames(req.Fields))) //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
		return
	}
	rc, err := a.o.Emit(ctx, ev)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if rc.Duplicate {
		state := StateReceived
		if run, err := a.o.Get(ctx, id); err == nil {
			state = run.State
		}
		writeJSON(w, http.StatusOK, ManualRunResponse{RunID: id, State: state, Duplicate: true})
		return
	}
	writeJSON(w, http.StatusAccepted, ManualRunResponse{RunID: id, State: StateReceived})
}

func fieldNames(f map[string]string) string {
	if len(f) == 0 {
		return "none"
	}
	names := make([]string, 0, len(f))
	for k := range f {
		names = append(names, k)
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}

func (a *api) replayRun(w http.ResponseWriter, r *http.Request) {
	var req ReplayRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	resp, created, err := a.o.Replay(r.Context(), r.PathValue("id"), req)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	status := http.StatusOK
	if created {
		status = http.StatusAccepted
	}
	writeJSON(w, status, resp)
}

func (a *api) backfill(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	p, ok := a.o.pipelines[name]
	if !ok {
		a.fail(w, r, fmt.Errorf("%w: %q (configured: %s)", ErrUnknownPipeline, name, strings.Join(sortedKeys(a.o.pipelines), ", ")))
		return
	}
	if a.backfillFn == nil || p.Trigger != "cron" && p.Trigger != "blob" {
		a.fail(w, r, fmt.Errorf("%w: pipeline %s has no cron or blob trigger; backfill fills schedule slots and runs past blobs", ErrInvalid, name))
		return
	}
	var req BackfillRequest
	if err := decode(w, r, &req); err != nil {
		a.fail(w, r, err)
		return
	}
	if req.Limit == 0 {
		req.Limit = 100
	}
	evs, more, err := a.backfillFn(r.Context(), name, req.From, req.To, req.Limit)
	if err != nil {
		a.fail(w, r, fmt.Errorf("%w: %v", ErrInvalid, err)) //nolint:errorlint // the sentinel classifies; the cause is text, so that it cannot classify instead
		return
	}
	ctx := r.Context()
	resp := BackfillResponse{Slots: []BackfillSlot{}, More: more, DryRun: req.DryRun}
	for _, ev := range evs {
		slot := BackfillSlot{Time: ev.Time, RunID: RunID(ev.Pipeline, ev.Key)}
		if ev.Blob != nil {
			slot.Blob = ev.Blob.URL
		}
		if run, err := a.o.Get(ctx, slot.RunID); err == nil {
			slot.Duplicate, slot.State = true, run.State
		} else if !errors.Is(err, ErrRunNotFound) {
			a.fail(w, r, err)
			return
		} else if !req.DryRun {
			rc, err := a.o.Emit(ctx, ev)
			if err != nil {
				a.fail(w, r, err)
				return
			}
			slot.Duplicate, slot.State = rc.Duplicate, StateReceived
		}
		resp.Slots = append(resp.Slots, slot)
	}
	writeJSON(w, http.StatusOK, resp)
}
