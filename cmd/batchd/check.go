package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/config"
)

// cmdCheck validates the environment and the pipelines file without starting
// anything: exit 0 with a summary, or exit 2 listing every problem.
func cmdCheck(ctx context.Context, c *cli, args []string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	file := fs.String("config", "", "pipelines file to check (default: $BATCHD_PIPELINES)")
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	fs.Usage = func() {
		fmt.Fprintf(c.stderr, "Usage: batchd check [--config FILE] [--json]\n\n"+
			"Validates the BATCHD_* environment and the pipelines file. Every problem is\n"+
			"listed with its path (and line), e.g.\n"+
			"  pipelines.score.inputs.data.uri: unknown field .Blob.Nmae (line 12)\n"+
			"Exit 0: valid (prints a summary). Exit 2: problems found.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cmdutil.FlagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(c.stderr, "batchd check: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	env, f, err := config.Load(ctx, c.env, *file)
	if err == nil {
		err = env.DeployProblems()
	}
	if err != nil {
		return cmdutil.ConfigExit(c.stderr, err)
	}
	sum := summarize(env, f)
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(sum)
		return exitOK
	}
	fmt.Fprintf(c.stdout, "%s is valid: %d endpoint(s), %d datastore(s), %d pipeline(s).\n\n",
		f.Path, len(sum.Endpoints), len(f.Datastores), len(sum.Pipelines))
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tURI\tDEPLOYMENT\tMAX RUNNING\tWORKSPACE")
	for _, e := range sum.Endpoints {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", e.Name, e.URI, cmdutil.Dash(e.Deployment), capText(e.MaxRunningJobs), cmdutil.Dash(e.Workspace))
	}
	tw.Flush()
	fmt.Fprintln(c.stdout)
	tw = tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PIPELINE\tTRIGGER\tENDPOINT\tINPUTS\tOUTPUTS")
	for _, p := range sum.Pipelines {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, cmdutil.Dash(p.Trigger), p.Endpoint, strings.Join(p.Inputs, ", "), cmdutil.Dash(strings.Join(p.Outputs, ", ")))
	}
	tw.Flush()
	fmt.Fprintf(c.stdout, "\nCredential: %s. NATS: %s. HTTP: %s.\n", env.Credential.Kind, natsText(env), env.HTTPAddr)
	if len(sum.Warnings) > 0 {
		fmt.Fprintln(c.stdout, "\nWarnings:")
		for _, w := range sum.Warnings {
			fmt.Fprintf(c.stdout, "  %s\n", w)
		}
	}
	return exitOK
}

type checkSummary struct {
	File      string            `json:"file"`
	Endpoints []endpointSummary `json:"endpoints"`
	Pipelines []pipelineSummary `json:"pipelines"`
	// Datastores are the declared datastore names.
	Datastores []string `json:"datastores"`
	Credential string   `json:"credential"`
	NATS       string   `json:"nats"`
	HTTPAddr   string   `json:"http_addr"`
	// Warnings are settings that work but weaken a promise.
	Warnings []string `json:"warnings,omitempty"`
}

type endpointSummary struct {
	Name           string `json:"name"`
	URI            string `json:"uri"`
	Deployment     string `json:"deployment,omitempty"`
	MaxRunningJobs int    `json:"max_running_jobs"`
	Workspace      string `json:"workspace,omitempty"`
}

type pipelineSummary struct {
	Name     string   `json:"name"`
	Trigger  string   `json:"trigger,omitempty"`
	Endpoint string   `json:"endpoint"`
	Inputs   []string `json:"inputs"`
	Outputs  []string `json:"outputs,omitempty"`
}

func summarize(env *config.Env, f *config.File) checkSummary {
	s := checkSummary{File: f.Path, Credential: env.Credential.Kind, NATS: natsText(env), HTTPAddr: env.HTTPAddr,
		Warnings: env.Warnings()}
	for _, name := range cmdutil.SortedNames(f.Endpoints) {
		e := f.Endpoints[name]
		es := endpointSummary{Name: name, URI: e.ScoringURI, Deployment: e.Deployment, MaxRunningJobs: e.MaxRunningJobs}
		if w := e.Workspace; w != nil {
			es.Workspace = w.Subscription + "/" + w.ResourceGroup + "/" + w.Name
		}
		s.Endpoints = append(s.Endpoints, es)
	}
	for _, name := range cmdutil.SortedNames(f.Pipelines) {
		p := f.Pipelines[name]
		ps := pipelineSummary{Name: name, Trigger: p.Trigger, Endpoint: p.Endpoint.Name}
		for _, in := range cmdutil.SortedNames(p.Inputs) {
			ps.Inputs = append(ps.Inputs, in+"="+p.Inputs[in].Type)
		}
		for _, out := range cmdutil.SortedNames(p.Outputs) {
			ps.Outputs = append(ps.Outputs, out+"="+p.Outputs[out].Type)
		}
		s.Pipelines = append(s.Pipelines, ps)
	}
	s.Datastores = cmdutil.SortedNames(f.Datastores)
	return s
}

func natsText(env *config.Env) string {
	if env.NATS.URL != "" {
		return env.RedactedNATSURL()
	}
	return "embedded in " + env.StateDir
}

func capText(n int) string {
	if n == 0 {
		return "no cap"
	}
	return fmt.Sprint(n)
}
