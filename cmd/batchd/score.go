package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/cmd/internal/daemon"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/online"
	"github.com/batchd/batchd/orchestrator"
)

// maxScoreData bounds the request body `batchd score` reads.
const maxScoreData = 16 << 20

const scoreUsage = `Usage: batchd score --endpoint NAME [--config FILE] --data @FILE|-|JSON
                    [--deployment NAME] [--timeout DUR] [--json]

Sends one request to an online endpoint declared in the pipelines file
(kind: online) and prints the endpoint's answer on stdout; the status, the
latency and the deployment that served it go to stderr (or, with --json,
everything goes to stdout as one JSON object).

The endpoint's auth mode decides the credential: aad_token takes a
Microsoft Entra token for https://ml.azure.com from BATCHD_CREDENTIAL and
the AZURE_* variables; aml_token fetches an Azure ML token through ARM; key
lists the keys through ARM or reads the endpoint's key_file. 429 and 503
answers are retried within --timeout; nothing else is.

  batchd score --endpoint classifier --data @request.json
  echo '{"text":"hello"}' | batchd score --endpoint classifier --data -

Exit codes: 0 the endpoint answered 2xx; 1 it failed the request (5xx); 2
usage or configuration error; 3 authentication or authorization failure;
4 the endpoint rejected the request (other 4xx); 5 no answer in time, busy
(429/503) until --timeout, or the outcome is unknown (check before sending
it again).

Flags:
`

// scoreJSON is what --json prints.
type scoreJSON struct {
	Endpoint   string          `json:"endpoint"`
	Status     int             `json:"status,omitempty"`
	Deployment string          `json:"deployment,omitempty"`
	LatencyMS  float64         `json:"latency_ms,omitempty"`
	Attempts   int             `json:"attempts,omitempty"`
	RequestID  string          `json:"request_id,omitempty"`
	Body       json.RawMessage `json:"body,omitempty"`
	BodyText   string          `json:"body_text,omitempty"` // an answer that is not JSON
	Outcome    string          `json:"outcome"`             // completed | rejected | failed | timed_out | unknown
	Error      string          `json:"error,omitempty"`
}

// cmdScore is `batchd score`.
func cmdScore(ctx context.Context, c *cli, args []string) int {
	fs := flag.NewFlagSet("score", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	endpoint := fs.String("endpoint", "", "name of an online endpoint in the pipelines file (kind: online)")
	file := fs.String("config", "", "pipelines file (default: $BATCHD_PIPELINES)")
	data := fs.String("data", "", "the JSON request body: @FILE reads a file, - reads stdin, anything else is the body itself")
	deployment := fs.String("deployment", "", "deployment to score with (azureml-model-deployment); default: the endpoint's")
	timeout := fs.Duration("timeout", 0, "give up after this long, retries included (default: the endpoint's timeout)")
	asJSON := fs.Bool("json", false, "print status, deployment, latency and the body as one JSON object on stdout")
	fs.Usage = func() {
		fmt.Fprint(c.stderr, scoreUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cmdutil.FlagExit(err)
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(c.stderr, "batchd score: "+format+"\nRun 'batchd score -h' for the flags.\n", a...)
		return exitUsage
	}
	switch {
	case fs.NArg() > 0:
		return usage("unexpected argument %q", fs.Arg(0))
	case *endpoint == "":
		return usage("--endpoint is required: the name of an online endpoint in the pipelines file")
	case *data == "":
		return usage("--data is required: @FILE, - (stdin) or the JSON body")
	case *timeout < 0:
		return usage("--timeout must not be negative")
	}
	body, err := scoreData(*data, scoreStdin)
	if err != nil {
		return usage("--data: %v", err)
	}
	if err := orchestrator.CheckJSON(body); err != nil {
		return usage("--data is not JSON: %v", strings.TrimPrefix(err.Error(), "renders to text that is not JSON "))
	}

	env, f, err := config.Load(ctx, c.env, *file)
	if err != nil {
		return cmdutil.ConfigExit(c.stderr, err)
	}
	ep, ok := f.Endpoints[*endpoint]
	switch {
	case !ok:
		return usage("endpoint %q is not in %s (online endpoints: %s)", *endpoint, f.Path, strings.Join(onlineEndpointNames(f), ", "))
	case ep.Kind != orchestrator.EndpointOnline || ep.Online == nil:
		return usage("endpoint %q is a batch endpoint: use 'batchd invoke --endpoint %s'", *endpoint, ep.ScoringURI)
	}
	oep := *ep.Online
	copts := env.Credential
	copts.Transport = azureTransport
	cred, err := jobs.NewCredential(copts)
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd: %v\n", err)
		return exitUsage
	}
	client, err := daemon.NewScorer(env, cred, azureTransport, cmdutil.NewLogger(c.stderr, env.LogLevel, env.LogFormat), nil)
	if err != nil {
		return cmdutil.ConfigExit(c.stderr, err)
	}
	budget := oep.Timeout
	if *timeout > 0 {
		budget = *timeout
		oep.Timeout = min(oep.Timeout, budget)
	}
	sctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	resp, err := client.Score(sctx, oep, online.Request{Body: body, Deployment: *deployment})
	return scoreReport(c, *endpoint, resp, err, *asJSON)
}

// scoreStdin is where --data - reads from. Tests replace it; nothing else
// may.
var scoreStdin io.Reader = os.Stdin

// scoreData reads --data: @FILE, - (stdin), or the body itself.
func scoreData(v string, stdin io.Reader) ([]byte, error) {
	var r io.Reader
	switch {
	case v == "-":
		r = stdin
	case strings.HasPrefix(v, "@"):
		f, err := os.Open(v[1:])
		if err != nil {
			return nil, err
		}
		defer func() { _ = f.Close() }()
		r = f
	default:
		return []byte(v), nil
	}
	b, err := io.ReadAll(io.LimitReader(r, maxScoreData+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxScoreData {
		return nil, fmt.Errorf("the body is larger than %d bytes", maxScoreData)
	}
	return b, nil
}

func onlineEndpointNames(f *config.File) []string {
	var names []string
	for name, ep := range f.Endpoints {
		if ep.Kind == orchestrator.EndpointOnline {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	if len(names) == 0 {
		return []string{"none"}
	}
	return names
}

// scoreReport prints the answer or the failure and returns the exit code.
func scoreReport(c *cli, name string, resp *online.Response, err error, asJSON bool) int {
	out := scoreJSON{Endpoint: name, Outcome: string(orchestrator.StateCompleted)}
	answer := resp
	if err != nil {
		var oe *online.Error
		if errors.As(err, &oe) {
			answer = oe.Response
		}
		out.Outcome, out.Error = string(online.KindOf(err)), err.Error()
	}
	if answer != nil {
		out.Status, out.Deployment, out.Attempts, out.RequestID = answer.StatusCode, answer.Deployment, answer.Attempts, answer.RequestID
		out.LatencyMS = float64(answer.Latency.Microseconds()) / 1000
		if json.Valid(answer.Body) {
			out.Body = answer.Body
		} else {
			out.BodyText = string(answer.Body)
		}
	}
	code := scoreExitCode(err)
	if asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(out)
		return code
	}
	if err != nil {
		fmt.Fprintf(c.stderr, "batchd score: %v\n", err)
		if answer != nil && len(answer.Body) > 0 && out.Error != "" && !strings.Contains(out.Error, strings.TrimSpace(string(answer.Body))) {
			fmt.Fprintf(c.stderr, "  the endpoint's answer: %s\n", jobs.OneLine(string(answer.Body), 1000))
		}
		switch online.KindOf(err) {
		case online.KindUnknown:
			fmt.Fprintln(c.stderr, "The request was sent and no answer came: it may have been scored. batchd did not send it again.")
		case online.KindTimedOut:
			fmt.Fprintln(c.stderr, "No answer in time; the request may or may not have been scored (see the error).")
		}
		return code
	}
	_, _ = c.stdout.Write(resp.Body)
	if len(resp.Body) > 0 && resp.Body[len(resp.Body)-1] != '\n' && c.isTerminal {
		fmt.Fprintln(c.stdout)
	}
	dep := resp.Deployment
	if dep == "" {
		dep = "-"
	}
	fmt.Fprintf(c.stderr, "%d in %s from deployment %s (%d attempt(s), request id %s)\n",
		resp.StatusCode, resp.Latency.Round(10*time.Microsecond), dep, resp.Attempts, resp.RequestID)
	return exitOK
}

// scoreExitCode maps a Score error to the CLI's exit codes (as invoke's).
func scoreExitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	case online.IsAuth(err):
		return exitAuth
	case errors.Is(err, online.ErrInvalidRequest):
		return exitUsage
	}
	switch online.KindOf(err) {
	case online.KindRejected:
		return exitRejected
	case online.KindFailed:
		return exitFailed
	}
	return exitTransient
}
