package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/jobs"
)

// azureTransport carries every Azure request the binary makes (credential
// and jobs client; invoke, token and serve use it). Nil means azcore's
// default transport. Tests point it at the simulator's TLS client; nothing
// else may set it.
var azureTransport policy.Transporter

// Polling of `invoke --wait`: the first interval (--poll) grows by half each
// time up to invokePollMax; after invokeMaxFailedPolls status reads in a row
// fail (each already retried by the client), the wait gives up with exit 5.
const (
	invokePollMax        = 30 * time.Second
	invokeMaxFailedPolls = 10
)

const invokeUsage = `Usage: batchd invoke --endpoint URL [--deployment NAME] --input NAME=TYPE:URI
                     [--output NAME=TYPE:URI] [--experiment NAME] [--wait] [--timeout DUR] [--json]

Submits one job to an Azure ML batch endpoint (one POST, never retried: a
retried invoke can create a second job) and, with --wait, follows it to its end.

  --input  data=UriFolder:azureml://datastores/raw/paths/2026/11/
  --input  data=UriFile:https://acct.blob.core.windows.net/in/file.csv
  --input  score_mode=Literal:append          (pipeline deployments only)
  --output score=UriFile:azureml://datastores/workspaceblobstore/paths/out/p.csv

Credentials come from BATCHD_CREDENTIAL and the AZURE_* variables (see
'batchd token' to check which identity is used).

Exit codes: 0 completed (or submitted, without --wait); 1 the job Failed or
was Canceled; 2 usage or configuration error; 3 authentication or
authorization failure; 4 the endpoint rejected the request; 5 transient or
ambiguous failure, or --timeout reached (the job keeps running: --timeout
never cancels it).

Flags:
`

// cmdInvoke is `batchd invoke`.
func cmdInvoke(ctx context.Context, c *cli, args []string) int {
	fs := flag.NewFlagSet("invoke", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	endpoint := fs.String("endpoint", "", "scoring URI of the batch endpoint, https://<endpoint>.<region>.inference.ml.azure.com/jobs")
	deployment := fs.String("deployment", "", "deployment to run (azureml-model-deployment header); default: the endpoint's default deployment")
	var inputs, outputs invokeIOSpecs
	fs.Var(&inputs, "input", "job input `NAME=TYPE:URI` (TYPE UriFile or UriFolder; Literal:VALUE for pipeline deployments); repeatable")
	fs.Var(&outputs, "output", "job output `NAME=TYPE:URI` (TYPE UriFile or UriFolder); repeatable")
	experiment := fs.String("experiment", "", "experiment name (properties.experimentName)")
	wait := fs.Bool("wait", false, "follow the job until it is Completed, Failed or Canceled")
	timeout := fs.Duration("timeout", 0, "with --wait: stop waiting after this long and exit 5; the job is not canceled (0: no limit)")
	poll := fs.Duration("poll", 2*time.Second, "with --wait: first status poll interval; it grows to 30s")
	asJSON := fs.Bool("json", false, "print the job (name, status, studio link, error) as JSON on stdout")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, invokeUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	req, ep, err := invokeRequest(*endpoint, *deployment, *experiment, inputs, outputs, fs.Args())
	if err == nil && *poll < 10*time.Millisecond {
		err = errors.New("--poll must be at least 10ms")
	}
	if err == nil && *timeout < 0 {
		err = errors.New("--timeout must not be negative")
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd invoke: %v\nRun 'batchd invoke -h' for the flags.\n", err)
		return exitUsage
	}

	env, err := config.LoadEnv(ctx, c.env)
	if err != nil {
		return cmdutil.ConfigExit(c.stderr, err)
	}
	client, _, code := invokeClient(c, env)
	if client == nil {
		return code
	}

	sctx, cancel := context.WithTimeout(ctx, env.SubmitTimeout)
	job, err := client.Submit(sctx, ep, req)
	cancel()
	if err != nil {
		return invokeFailed(c, err, req.RequestID)
	}
	if !*wait {
		return invokePrintJob(c, job, *asJSON, "submitted")
	}

	wctx := ctx
	if *timeout > 0 {
		var cancel context.CancelFunc
		wctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	progressOut, live := c.stdout, c.isTerminal && !*asJSON
	if *asJSON {
		progressOut = c.stderr
	}
	if !*asJSON {
		fmt.Fprintf(c.stdout, "submitted job %s\n  studio: %s\n", job.Name, invokeOrDash(job.StudioURL))
	}
	final, err := invokeWait(wctx, client, ep, job, *poll, newInvokeProgress(progressOut, live, job.Name))
	switch {
	case err == nil:
	case wctx.Err() != nil:
		why := "interrupted"
		if ctx.Err() == nil {
			why = fmt.Sprintf("--timeout %s reached", *timeout)
		}
		if *asJSON {
			_ = invokePrintJSON(c.stdout, final)
		}
		fmt.Fprintf(c.stderr, "batchd invoke: %s: job %s is still %s and keeps running (it was not canceled).\n  studio: %s\n",
			why, final.Name, final.Status, invokeOrDash(final.StudioURL))
		return exitTransient
	default:
		if *asJSON {
			_ = invokePrintJSON(c.stdout, final)
		}
		fmt.Fprintf(c.stderr, "batchd invoke: following job %s: %v\n", final.Name, err)
		return invokeExitCode(err)
	}
	switch final.Status {
	case jobs.StatusCompleted:
		return invokePrintJob(c, final, *asJSON, "completed")
	default: // Failed or Canceled
		invokePrintJob(c, final, *asJSON, strings.ToLower(string(final.Status)))
		return exitFailed
	}
}

// invokeClient builds the process's credential and jobs client from the
// environment. On failure it prints why and returns the exit code.
func invokeClient(c *cli, env *config.Env) (*jobs.Client, azcore.TokenCredential, int) {
	copts := env.Credential
	copts.Transport = azureTransport
	cred, err := jobs.NewCredential(copts)
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd: %v\n", err)
		return nil, nil, exitUsage
	}
	client, err := jobs.New(cred, jobs.Options{
		MLScope:     env.MLScope,
		ARMScope:    env.ARMScope,
		ARMEndpoint: env.ARMEndpoint,
		Transport:   azureTransport,
		Logger:      cmdutil.NewLogger(c.stderr, env.LogLevel, env.LogFormat),
	})
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd: %v\n", err)
		return nil, nil, exitUsage
	}
	return client, cred, exitOK
}

// invokeRequest checks the flags and turns them into the request.
func invokeRequest(endpoint, deployment, experiment string, inputs, outputs invokeIOSpecs, rest []string) (jobs.JobRequest, jobs.Endpoint, error) {
	if len(rest) > 0 {
		return jobs.JobRequest{}, jobs.Endpoint{}, fmt.Errorf("unexpected argument %q", rest[0])
	}
	if endpoint == "" {
		return jobs.JobRequest{}, jobs.Endpoint{}, errors.New("--endpoint is required")
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return jobs.JobRequest{}, jobs.Endpoint{}, fmt.Errorf("--endpoint %q is not an https:// scoring URI like https://<endpoint>.<region>.inference.ml.azure.com/jobs", endpoint)
	}
	if len(inputs) == 0 {
		return jobs.JobRequest{}, jobs.Endpoint{}, errors.New("at least one --input is required")
	}
	req := jobs.JobRequest{Inputs: map[string]jobs.Input{}, ExperimentName: experiment, RequestID: jobs.NewRequestID()}
	for _, s := range inputs {
		if _, dup := req.Inputs[s.name]; dup {
			return jobs.JobRequest{}, jobs.Endpoint{}, fmt.Errorf("--input %s is given twice", s.name)
		}
		in := jobs.Input{Type: s.typ, URI: s.value}
		if s.typ == jobs.TypeLiteral {
			in = jobs.Input{Type: s.typ, Value: s.value}
		}
		req.Inputs[s.name] = in
	}
	for _, s := range outputs {
		if s.typ == jobs.TypeLiteral {
			return jobs.JobRequest{}, jobs.Endpoint{}, fmt.Errorf("--output %s: outputs are UriFile or UriFolder", s.name)
		}
		if req.Outputs == nil {
			req.Outputs = map[string]jobs.Output{}
		}
		if _, dup := req.Outputs[s.name]; dup {
			return jobs.JobRequest{}, jobs.Endpoint{}, fmt.Errorf("--output %s is given twice", s.name)
		}
		req.Outputs[s.name] = jobs.Output{Type: s.typ, URI: s.value}
	}
	ep := jobs.Endpoint{Name: u.Host, ScoringURI: endpoint, Deployment: deployment}
	return req, ep, nil
}

// invokeIOSpec is one --input or --output, NAME=TYPE:URI.
type invokeIOSpec struct{ name, typ, value string }

type invokeIOSpecs []invokeIOSpec

func (s *invokeIOSpecs) String() string { return "" }

func (s *invokeIOSpecs) Set(v string) error {
	name, rest, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("%q: want NAME=TYPE:URI, e.g. data=UriFolder:azureml://datastores/raw/paths/in/", v)
	}
	typ, value, ok := strings.Cut(rest, ":")
	if !ok || value == "" {
		return fmt.Errorf("%q: want NAME=TYPE:URI, e.g. %s=UriFile:%s", v, name, rest)
	}
	switch strings.ToLower(strings.ReplaceAll(typ, "_", "")) {
	case "urifile":
		typ = jobs.TypeUriFile
	case "urifolder":
		typ = jobs.TypeUriFolder
	case "literal":
		typ = jobs.TypeLiteral
	case "mltable":
		return fmt.Errorf("%q: MLTable inputs are not supported by batch endpoints; use UriFile or UriFolder", v)
	case "https", "http", "azureml":
		return fmt.Errorf("%q: the type is missing: did you mean %s=UriFile:%s or %s=UriFolder:%s?", v, name, rest, name, rest)
	default:
		return fmt.Errorf("%q: unknown type %q (UriFile, UriFolder or Literal)", v, typ)
	}
	*s = append(*s, invokeIOSpec{name: name, typ: typ, value: value})
	return nil
}

// invokeFailed explains a failed submit and returns its exit code.
func invokeFailed(c *cli, err error, requestID string) int {
	fmt.Fprintf(c.stderr, "batchd invoke: %v\n", err)
	switch {
	case jobs.IsAmbiguous(err):
		fmt.Fprintf(c.stderr, "The request was sent but no definite answer came back: a job may have been created.\n"+
			"batchd did not retry. Look for a job created just now (request id %s) in the studio or with\n"+
			"'az ml job list' before invoking again.\n", requestID)
	case jobs.IsAuth(err):
		fmt.Fprintln(c.stderr, "No job was created. Run 'batchd token' to see which identity and audience batchd uses.")
	case jobs.IsRetryable(err):
		if d, ok := jobs.RetryAfter(err); ok {
			fmt.Fprintf(c.stderr, "No job was created. The endpoint asked to retry after %s.\n", d)
		} else {
			fmt.Fprintln(c.stderr, "No job was created; it is safe to try again.")
		}
	}
	return invokeExitCode(err)
}

// invokeExitCode maps a jobs error to the CLI's exit codes.
func invokeExitCode(err error) int {
	var ae *jobs.APIError
	switch {
	case jobs.IsAuth(err):
		return exitAuth
	case errors.Is(err, jobs.ErrInvalidRequest):
		return exitUsage
	case jobs.IsAmbiguous(err), jobs.IsRetryable(err):
		return exitTransient
	case jobs.IsPermanent(err):
		return exitRejected
	case errors.As(err, &ae) && ae.StatusCode >= 400 && ae.StatusCode < 500:
		return exitRejected
	}
	return exitTransient
}

// invokeWait polls the job's status with backoff until it is terminal, ctx
// ends, a status read fails permanently, or invokeMaxFailedPolls reads in a
// row fail. It always returns the last known job.
func invokeWait(ctx context.Context, client *jobs.Client, ep jobs.Endpoint, job *jobs.Job, first time.Duration, p *invokeProgress) (*jobs.Job, error) {
	defer p.finish()
	p.update(job.Status)
	if job.Status.Terminal() {
		return job, nil
	}
	interval, failures := first, 0
	timer := time.NewTimer(interval)
	defer timer.Stop()
	var tick <-chan time.Time
	if p.live {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return job, ctx.Err()
		case <-tick:
			p.redraw()
			continue
		case <-timer.C:
		}
		j, err := client.Get(ctx, ep, job.Name)
		switch {
		case err != nil && ctx.Err() != nil:
			return job, ctx.Err()
		case err != nil && jobs.IsRetryable(err) && failures+1 < invokeMaxFailedPolls:
			failures++
			p.note(fmt.Sprintf("status unavailable (%d in a row): %v", failures, err))
		case err != nil:
			return job, err
		default:
			failures = 0
			job = j
			p.update(j.Status)
			if j.Status.Terminal() {
				return job, nil
			}
		}
		interval = min(interval*3/2, invokePollMax)
		timer.Reset(interval)
	}
}

// invokeProgress shows a job's status while waiting: on a terminal, one line
// rewritten in place with the elapsed time; otherwise one plain line per
// status change.
type invokeProgress struct {
	w      io.Writer
	live   bool
	name   string
	start  time.Time
	status jobs.Status
	drawn  bool
}

func newInvokeProgress(w io.Writer, live bool, name string) *invokeProgress {
	return &invokeProgress{w: w, live: live, name: name, start: time.Now()}
}

func (p *invokeProgress) elapsed() time.Duration { return time.Since(p.start).Round(time.Second) }

func (p *invokeProgress) update(s jobs.Status) {
	changed := s != p.status
	p.status = s
	if p.live {
		p.redraw()
		return
	}
	if changed {
		fmt.Fprintf(p.w, "job %s: %s (%s)\n", p.name, s, p.elapsed())
	}
}

func (p *invokeProgress) redraw() {
	if !p.live {
		return
	}
	fmt.Fprintf(p.w, "\r\033[Kjob %s: %s  %s", p.name, p.status, p.elapsed())
	p.drawn = true
}

func (p *invokeProgress) note(msg string) {
	if p.live && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
	fmt.Fprintf(p.w, "%s\n", msg)
	p.redraw()
}

func (p *invokeProgress) finish() {
	if p.live && p.drawn {
		fmt.Fprintln(p.w)
	}
}

// invokeJobJSON is what --json prints.
type invokeJobJSON struct {
	Name      string      `json:"name"`
	Status    jobs.Status `json:"status"`
	StudioURL string      `json:"studio_url,omitempty"`
	Error     string      `json:"error,omitempty"`
}

func invokePrintJSON(w io.Writer, j *jobs.Job) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // studio links carry '&'
	return enc.Encode(invokeJobJSON{Name: j.Name, Status: j.Status, StudioURL: j.StudioURL, Error: j.Error})
}

func invokePrintJob(c *cli, j *jobs.Job, asJSON bool, verb string) int {
	if asJSON {
		_ = invokePrintJSON(c.stdout, j)
		return exitOK
	}
	fmt.Fprintf(c.stdout, "job %s %s (status %s)\n", j.Name, verb, j.Status)
	if j.Error != "" {
		fmt.Fprintf(c.stdout, "  error:  %s\n", j.Error)
	}
	fmt.Fprintf(c.stdout, "  studio: %s\n", invokeOrDash(j.StudioURL))
	return exitOK
}

func invokeOrDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
