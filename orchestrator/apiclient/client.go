// Package apiclient is the client of batchd's HTTP API (/api/v1), used by
// the CLI's `runs` and `pipelines` commands. It speaks the JSON types of
// package orchestrator.
package apiclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// Client talks to one daemon. It is safe for concurrent use.
type Client struct {
	base  string
	token string // secret: sent as a bearer token, never in an error
	hc    *http.Client
}

// New returns a client for the daemon at baseURL (e.g.
// http://127.0.0.1:8080). token may be empty; hc nil means a client with a
// 30 s timeout.
func New(baseURL, token string, hc *http.Client) *Client {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), token: token, hc: hc}
}

// Error is an error answer of the API.
type Error struct {
	Status  int
	Code    string
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return fmt.Sprintf("%d %s", e.Status, http.StatusText(e.Status))
	}
	return e.Message
}

// StatusOf returns the HTTP status of an API error, or 0 for any other
// error (the daemon was not reached, or answered something else).
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// do sends one request and decodes a 2xx answer into out. It returns the
// status code.
func (c *Client) do(ctx context.Context, method, path string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil || method != http.MethodGet {
		// batchd refuses a mutating request that is not JSON (a web page
		// could send it cross-origin otherwise).
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("batchd at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("batchd at %s: reading the answer: %w", c.base, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		var eb orchestrator.ErrorBody
		if json.Unmarshal(b, &eb) == nil && eb.Error.Message != "" {
			return resp.StatusCode, &Error{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message}
		}
		return resp.StatusCode, &Error{Status: resp.StatusCode, Message: fmt.Sprintf("%s %s: %d %s", method, path, resp.StatusCode, http.StatusText(resp.StatusCode))}
	}
	if out != nil {
		if raw, ok := out.(*json.RawMessage); ok {
			*raw = append((*raw)[:0], b...)
			return resp.StatusCode, nil
		}
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("batchd at %s: decoding the answer: %w", c.base, err)
		}
	}
	return resp.StatusCode, nil
}

// ListRuns returns one page of runs, newest first.
func (c *Client) ListRuns(ctx context.Context, opts orchestrator.ListOptions) (*orchestrator.RunList, error) {
	q := url.Values{}
	if opts.Pipeline != "" {
		q.Set("pipeline", opts.Pipeline)
	}
	if opts.State != "" {
		q.Set("state", string(opts.State))
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	path := "/api/v1/runs"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	var out orchestrator.RunList
	if _, err := c.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// ListRunsRaw is ListRuns returning the answer as it came.
func (c *Client) ListRunsRaw(ctx context.Context, opts orchestrator.ListOptions) (json.RawMessage, error) {
	q := url.Values{}
	if opts.Pipeline != "" {
		q.Set("pipeline", opts.Pipeline)
	}
	if opts.State != "" {
		q.Set("state", string(opts.State))
	}
	if opts.Limit > 0 {
		q.Set("limit", strconv.Itoa(opts.Limit))
	}
	if opts.Cursor != "" {
		q.Set("cursor", opts.Cursor)
	}
	var raw json.RawMessage
	_, err := c.do(ctx, http.MethodGet, "/api/v1/runs?"+q.Encode(), nil, &raw)
	return raw, err
}

// GetRun returns one run with its decision and history.
func (c *Client) GetRun(ctx context.Context, id string) (*orchestrator.Run, error) {
	var out orchestrator.Run
	if _, err := c.do(ctx, http.MethodGet, "/api/v1/runs/"+url.PathEscape(id), nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// GetRunRaw is GetRun returning the answer as it came (every field the
// daemon sent).
func (c *Client) GetRunRaw(ctx context.Context, id string) (json.RawMessage, error) {
	var raw json.RawMessage
	_, err := c.do(ctx, http.MethodGet, "/api/v1/runs/"+url.PathEscape(id), nil, &raw)
	return raw, err
}

// Cancel asks for the run to be canceled. done is false when the daemon
// accepted the request (202) but the run has not reached its end yet.
func (c *Client) Cancel(ctx context.Context, id, reason string) (run *orchestrator.Run, done bool, err error) {
	return c.action(ctx, id, "cancel", orchestrator.ActionRequest{Reason: reason})
}

// Retry starts a new attempt of a finished or unknown run.
func (c *Client) Retry(ctx context.Context, id, reason string) (run *orchestrator.Run, done bool, err error) {
	return c.action(ctx, id, "retry", orchestrator.ActionRequest{Reason: reason})
}

// Resolve records an operator's verdict on a run.
func (c *Client) Resolve(ctx context.Context, id string, req orchestrator.ResolveRequest) (run *orchestrator.Run, done bool, err error) {
	return c.action(ctx, id, "resolve", req)
}

func (c *Client) action(ctx context.Context, id, verb string, body any) (*orchestrator.Run, bool, error) {
	var out orchestrator.Run
	code, err := c.do(ctx, http.MethodPost, "/api/v1/runs/"+url.PathEscape(id)+"/"+verb, body, &out)
	if err != nil {
		return nil, false, err
	}
	return &out, code == http.StatusOK, nil
}

// Pipelines lists the configured pipelines.
func (c *Client) Pipelines(ctx context.Context) (*orchestrator.PipelineList, error) {
	var out orchestrator.PipelineList
	if _, err := c.do(ctx, http.MethodGet, "/api/v1/pipelines", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// Replicas lists the live replicas (GET /api/v1/replicas).
func (c *Client) Replicas(ctx context.Context) (*orchestrator.ReplicaList, error) {
	var out orchestrator.ReplicaList
	if _, err := c.do(ctx, http.MethodGet, "/api/v1/replicas", nil, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// RunPipeline starts a manual run. created is true for a new run (202),
// false when the key was seen before (200, the same run).
func (c *Client) RunPipeline(ctx context.Context, name string, req orchestrator.ManualRunRequest) (resp *orchestrator.ManualRunResponse, created bool, err error) {
	var out orchestrator.ManualRunResponse
	code, err := c.do(ctx, http.MethodPost, "/api/v1/pipelines/"+url.PathEscape(name)+"/runs", req, &out)
	if err != nil {
		return nil, false, err
	}
	return &out, code == http.StatusAccepted, nil
}

// Replay starts a new run of run id's event. created is false when a replay
// with the same key already existed (the same run is returned).
func (c *Client) Replay(ctx context.Context, id string, req orchestrator.ReplayRequest) (resp *orchestrator.ReplayResponse, created bool, err error) {
	var out orchestrator.ReplayResponse
	code, err := c.do(ctx, http.MethodPost, "/api/v1/runs/"+url.PathEscape(id)+"/replay", req, &out)
	if err != nil {
		return nil, false, err
	}
	return &out, code == http.StatusAccepted, nil
}

// Backfill emits (or, with DryRun, lists) the schedule slots of a cron
// pipeline in (From, To].
func (c *Client) Backfill(ctx context.Context, name string, req orchestrator.BackfillRequest) (*orchestrator.BackfillResponse, error) {
	var out orchestrator.BackfillResponse
	if _, err := c.do(ctx, http.MethodPost, "/api/v1/pipelines/"+url.PathEscape(name)+"/backfill", req, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
