package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/cmd/internal/daemon"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(s string) error { *m = append(*m, s); return nil }

// cmdExplain shows the data-access decision for input URIs: which
// credentials the job will read them with, what grants that access, and the
// preflight checks batchd would run before submitting.
func cmdExplain(ctx context.Context, c *cli, args []string) int {
	fset := flag.NewFlagSet("explain", flag.ContinueOnError)
	fset.SetOutput(c.stderr)
	pipeline := fset.String("pipeline", "", "apply this pipeline's allow-list and its endpoint's deployment kind")
	file := fset.String("config", "", "pipelines file (default: $BATCHD_PIPELINES; optional when that file does not exist)")
	typ := fset.String("type", "", "input type: UriFile or UriFolder (default: UriFolder when the URI ends in /, else UriFile)")
	kind := fset.String("deployment-kind", "", "model or pipeline (default: the pipeline's endpoint, else model)")
	asJSON := fset.Bool("json", false, "print the decisions as JSON")
	var outputs multiFlag
	fset.Var(&outputs, "output", "an output URI to check with each input (repeatable)")
	fset.Usage = func() {
		fmt.Fprintf(c.stderr, "Usage: batchd explain [--pipeline NAME] [--config FILE] [--output URI] [--json] URI...\n\n"+
			"For each input URI, shows the data-access rule that applies (who reads the data,\n"+
			"what grants that access) and runs the preflight checks batchd runs before it\n"+
			"submits a job. Storage is probed where the daemon's credential reaches it;\n"+
			"no Azure ML access is needed.\n"+
			"Exit 0: every verdict allows. 1: a verdict rejects. 2: usage or config error.\n\nFlags:\n")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		return cmdutil.FlagExit(err)
	}
	uris := fset.Args()
	if len(uris) == 0 {
		fmt.Fprintln(c.stderr, "batchd explain: give at least one URI")
		fset.Usage()
		return exitUsage
	}
	if *typ != "" && *typ != jobs.TypeUriFile && *typ != jobs.TypeUriFolder {
		fmt.Fprintf(c.stderr, "batchd explain: --type %q: want UriFile or UriFolder\n", *typ)
		return exitUsage
	}

	env, f, err := loadForExplain(ctx, c, *file)
	if err != nil {
		return cmdutil.ConfigExit(c.stderr, err)
	}
	req := datastores.Request{Deployment: datastores.DeploymentModel}
	if *pipeline != "" {
		p, ok := f.Pipelines[*pipeline]
		if !ok {
			fmt.Fprintf(c.stderr, "batchd explain: pipeline %q is not in %s (pipelines: %s)\n", *pipeline, f.Path, strings.Join(cmdutil.SortedNames(f.Pipelines), ", "))
			return exitUsage
		}
		req.Allow = p.Allow
		req.Deployment = p.Endpoint.DeploymentKind
	}
	if *kind != "" {
		if *kind != datastores.DeploymentModel && *kind != datastores.DeploymentPipeline {
			fmt.Fprintf(c.stderr, "batchd explain: --deployment-kind %q: want model or pipeline\n", *kind)
			return exitUsage
		}
		req.Deployment = *kind
	}
	for i, o := range outputs {
		req.Outputs = append(req.Outputs, datastores.IO{Name: fmt.Sprintf("output%d", i+1), Type: ioType("", o), URI: o})
	}

	log := cmdutil.NewLogger(io.Discard, "error", "text")
	_, checker := daemon.NewStorageChecker(env, f, daemon.NewLazyCredential(env.Credential), log)
	type result struct {
		URI      string              `json:"uri"`
		Decision datastores.Decision `json:"decision"`
	}
	var results []result
	code := exitOK
	for _, u := range uris {
		r := req
		r.Inputs = []datastores.IO{{Name: "data", Type: ioType(*typ, u), URI: u}}
		d := checker.Check(ctx, r)
		if d.Verdict != datastores.Allow {
			code = exitFailed
		}
		results = append(results, result{URI: u, Decision: d})
	}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(results)
		return code
	}
	for i, r := range results {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		printDecision(c.stdout, r.URI, r.Decision)
	}
	return code
}

// loadForExplain loads the environment and the pipelines file. Without
// --config and without an existing default file, explain still works for
// storage URLs: there are simply no datastores or pipelines declared.
func loadForExplain(ctx context.Context, c *cli, file string) (*config.Env, *config.File, error) {
	if file == "" {
		env, err := config.LoadEnv(ctx, c.env)
		if err != nil {
			return nil, nil, err
		}
		if _, statErr := os.Stat(env.PipelinesFile); errors.Is(statErr, fs.ErrNotExist) {
			fmt.Fprintf(c.stderr, "batchd explain: %s does not exist; checking without declared datastores or pipelines\n", env.PipelinesFile)
			return env, &config.File{Path: "(none)"}, nil
		}
	}
	return config.Load(ctx, c.env, file)
}

func ioType(flagType, uri string) string {
	if flagType != "" {
		return flagType
	}
	if strings.HasSuffix(uri, "/") {
		return jobs.TypeUriFolder
	}
	return jobs.TypeUriFile
}

func printDecision(w io.Writer, uri string, d datastores.Decision) {
	fmt.Fprintf(w, "%s\n", uri)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, a := range d.Access {
		where := string(a.Kind)
		if a.Datastore != "" {
			where += " (datastore " + a.Datastore + ")"
		} else if a.Account != "" {
			where += " (account " + a.Account + ")"
		}
		fmt.Fprintf(tw, "  %s %s\t%s, %s\n", a.Role, a.Name, where, a.Type)
		fmt.Fprintf(tw, "    credential in store\t%s\n", a.CredentialInStore)
		fmt.Fprintf(tw, "    credentials used\t%s\n", a.CredentialsUsed)
		fmt.Fprintf(tw, "    access granted by\t%s\n", a.AccessGrantedBy)
	}
	tw.Flush()
	fmt.Fprintln(w, "  checks:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, ch := range d.Checks {
		subject := ch.Subject
		if subject == "" {
			subject = "-"
		}
		fmt.Fprintf(tw, "    %s\t%s\t%s\t%s\n", strings.ToUpper(string(ch.Result)), ch.Name, subject, ch.Reason)
	}
	tw.Flush()
	verdict := strings.ToUpper(string(d.Verdict))
	if d.Reason != "" {
		fmt.Fprintf(w, "  verdict: %s: %s\n", verdict, d.Reason)
	} else {
		fmt.Fprintf(w, "  verdict: %s\n", verdict)
	}
}
