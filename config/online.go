package config

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/online"
	"github.com/batchd/batchd/orchestrator"
)

// Online endpoints (kind: online) and the pipelines that target them.
//
//	endpoints:
//	  classifier:
//	    kind: online
//	    uri: https://classifier.westeurope.inference.ml.azure.com/score
//	    auth_mode: aml_token          # aad_token (default) | aml_token | key
//	    deployment: blue              # optional: azureml-model-deployment
//	    workspace: {subscription: ..., resource_group: ..., name: ...}  # aml_token; key without key_file
//	    endpoint_name: classifier     # its name in the workspace (default: the URI's first host label)
//	    key_file: /etc/batchd/classifier.keys  # key only: primary key, optional secondary on line 2
//	    timeout: 30s                  # one scoring attempt (default 60s)
//	    max_concurrent_requests: 32   # requests in flight per replica (default 0: no cap)
//	pipelines:
//	  classify:
//	    endpoint: classifier
//	    request: '{{ .Message.Body }}'  # the JSON body (required)
//	    timeout: 10s                  # the whole request, retries included (default: the endpoint's timeout)
//	    safe_to_repeat: false         # may a request whose outcome is unknown be sent again?
//	    response: {store: true, max_bytes: 65536}
//	    retention: 24h                # any pipeline: how long finished runs stay

// Limits of the online keys.
const (
	maxOnlineTimeout = time.Hour
	// maxKeyFileSize bounds a key file: two keys and some white space.
	maxKeyFileSize = 4 << 10
)

func (v *validator) declaredOnline(endpoint string) bool {
	r, ok := v.raw.Endpoints[endpoint]
	return ok && r != nil && r.Kind == orchestrator.EndpointOnline
}

// onlineEndpoint validates and compiles an endpoint of kind online. n is
// the problem count when the endpoint's checks began.
func (v *validator) onlineEndpoint(path, name string, r *rawEndpoint, n int) (orchestrator.Endpoint, bool) {
	for _, k := range []struct {
		key string
		set bool
	}{{"deployment_kind", r.DeploymentKind != ""}, {"max_running_jobs", r.MaxRunningJobs != 0}} {
		if k.set {
			v.add(path+"."+k.key, "applies only to batch endpoints; an online endpoint has no jobs (see max_concurrent_requests)")
		}
	}
	oep := &online.Endpoint{Name: name, ScoringURI: r.URI, Deployment: r.Deployment, AuthMode: r.AuthMode, Timeout: r.Timeout}
	switch u, err := url.Parse(r.URI); {
	case r.URI == "":
		v.add(path+".uri", "is required: the endpoint's scoring URI, https://<endpoint>.<region>.inference.ml.azure.com/score (az ml online-endpoint show --query scoring_uri)")
	case err != nil || u.Host == "":
		v.add(path+".uri", "%q is not a URL", r.URI)
	case !secureOrLoopback(u):
		v.add(path+".uri", "%q must be https (plain http is accepted only on loopback, for simulators)", r.URI)
	case strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/jobs"):
		v.add(path+".uri", "%q is a batch endpoint's invocation URI (it ends in /jobs); an online endpoint's scoring URI ends in /score, or remove kind: online", r.URI)
	case u.RawQuery != "" || u.User != nil:
		v.add(path+".uri", "must not carry a query string or credentials")
	default:
		oep.ARMName = armName(u.Hostname())
	}
	if r.EndpointName != "" {
		oep.ARMName = r.EndpointName
	}
	if oep.AuthMode == "" {
		oep.AuthMode = online.AuthAADToken
	}
	v.oneOf(path+".auth_mode", oep.AuthMode, online.AuthModes...)
	if r.Timeout < 0 || (r.Timeout > 0 && r.Timeout < 100*time.Millisecond) || r.Timeout > maxOnlineTimeout {
		v.add(path+".timeout", "must be from 100ms to %s, not %s", maxOnlineTimeout, r.Timeout)
	}
	if oep.Timeout <= 0 {
		oep.Timeout = online.DefaultTimeout
	}
	if r.MaxConcurrentRequests < 0 {
		v.add(path+".max_concurrent_requests", "must be 0 (no cap) or more, not %d", r.MaxConcurrentRequests)
	}
	if w := r.Workspace; w != nil {
		wp := path + ".workspace"
		for _, f := range []struct{ key, val string }{{"subscription", w.Subscription}, {"resource_group", w.ResourceGroup}, {"name", w.Name}} {
			if f.val == "" {
				v.add(wp+"."+f.key, "is required when workspace is set (the token and listKeys actions go through ARM)")
			}
		}
		oep.Workspace = &jobs.Workspace{Subscription: w.Subscription, ResourceGroup: w.ResourceGroup, Name: w.Name}
	}
	switch oep.AuthMode {
	case online.AuthAMLToken:
		if r.Workspace == nil {
			v.add(path+".workspace", "is required with auth_mode aml_token: batchd gets the endpoint's token from ARM (needs %s)", online.ActionToken)
		}
	case online.AuthKey:
		if r.Workspace == nil && r.KeyFile == "" {
			v.add(path+".workspace", "is required with auth_mode key unless key_file is set: batchd lists the keys through ARM (needs %s) or reads them from key_file", online.ActionListKeys)
		}
	}
	if r.KeyFile != "" {
		if oep.AuthMode != online.AuthKey {
			v.add(path+".key_file", "applies only with auth_mode key")
		} else if _, err := readKeyFile(r.KeyFile); err != nil {
			v.add(path+".key_file", "%v", err)
		} else {
			file := r.KeyFile
			oep.Keys = func(context.Context) (online.Keys, error) { return readKeyFile(file) }
		}
	}
	ep := orchestrator.Endpoint{
		Endpoint:              jobs.Endpoint{Name: name, ScoringURI: r.URI, Deployment: r.Deployment, Workspace: oep.Workspace},
		Kind:                  orchestrator.EndpointOnline,
		Online:                oep,
		MaxConcurrentRequests: r.MaxConcurrentRequests,
	}
	return ep, len(v.list) == n
}

// armName is an online endpoint's name in its workspace, from its scoring
// URI's host (<endpoint>.<region>.inference.ml.azure.com and the sovereign
// clouds' equivalents); "" when the host does not say.
func armName(host string) string {
	if first, rest, ok := strings.Cut(host, "."); ok && strings.Contains(rest, ".inference.ml.") {
		return first
	}
	return ""
}

// readKeyFile reads an online endpoint's keys: the primary key on the first
// non-empty line, the secondary (optional) on the next. It is called again
// after the endpoint refuses a key, so an updated file is picked up without
// a restart. Errors never contain the file's contents.
func readKeyFile(path string) (online.Keys, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return online.Keys{}, fmt.Errorf("key file: %w", err)
	}
	if fi.Size() > maxKeyFileSize {
		return online.Keys{}, fmt.Errorf("key file %s is %d bytes; it holds one or two keys, one per line", path, fi.Size())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return online.Keys{}, fmt.Errorf("key file: %w", err)
	}
	var keys []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			keys = append(keys, line)
		}
	}
	switch len(keys) {
	case 1:
		return online.Keys{Primary: keys[0]}, nil
	case 2:
		return online.Keys{Primary: keys[0], Secondary: keys[1]}, nil
	case 0:
		return online.Keys{}, fmt.Errorf("key file %s is empty", path)
	}
	return online.Keys{}, fmt.Errorf("key file %s has %d lines; it holds the primary key and, optionally, the secondary on the next line", path, len(keys))
}

// onlinePipeline validates and compiles a pipeline of an online endpoint.
// n is the problem count when the pipeline's checks began.
func (v *validator) onlinePipeline(path, name string, r *rawPipeline, p *orchestrator.Pipeline, n int) (*orchestrator.Pipeline, bool) {
	for _, k := range []struct {
		key string
		set bool
	}{{"inputs", len(r.Inputs) > 0}, {"outputs", len(r.Outputs) > 0}, {"experiment_name", r.ExperimentName != ""},
		{"settings", r.Settings != nil}, {"allow", r.Allow != nil}, {"retry", r.Retry != nil}} {
		if k.set {
			v.add(path+"."+k.key, "applies only to batch endpoints; endpoint %s is online: the request template is the whole request", r.Endpoint)
		}
	}
	if p.Endpoint.Online != nil && r.Deployment != "" {
		oep := *p.Endpoint.Online
		oep.Deployment = r.Deployment
		p.Endpoint.Online = &oep
	}
	sample := orchestrator.SampleTemplateData(name, p.Trigger)
	switch r.Request {
	case "":
		v.add(path+".request", `is required for an online endpoint: the request body, a template rendering to JSON, e.g. '{{ .Message.Body }}' or '{"text": {{ json .Fields.text }}}'`)
	default:
		if t := v.template(path+".request", r.Request, sample); t != nil {
			p.Request = t
			v.addErrs(path+".request", t.CheckJSONSafe())
			// A template reading .Fields or .Message renders to run-time
			// shapes; the others must be JSON already.
			if !strings.Contains(r.Request, ".Fields") && !strings.Contains(r.Request, ".Message") {
				if out, err := t.Validate(sample); err == nil {
					if err := orchestrator.CheckJSON([]byte(out)); err != nil {
						v.add(path+".request", "%v", err)
					}
				}
			}
		}
	}
	if r.Timeout < 0 || r.Timeout > maxOnlineTimeout {
		v.add(path+".timeout", "must be from 0 (the endpoint's timeout) to %s, not %s", maxOnlineTimeout, r.Timeout)
	}
	p.SafeToRepeat = r.SafeToRepeat
	p.Response = orchestrator.ResponsePolicy{Store: true, MaxBytes: orchestrator.DefaultResponseMaxBytes}
	if rs := r.Response; rs != nil {
		if rs.Store != nil {
			p.Response.Store = *rs.Store
		}
		switch {
		case rs.MaxBytes < 0 || rs.MaxBytes > orchestrator.MaxResponseMaxBytes:
			v.add(path+".response.max_bytes", "must be from 1 to %d (a run is one ledger value), not %d", orchestrator.MaxResponseMaxBytes, rs.MaxBytes)
		case rs.MaxBytes > 0:
			if !p.Response.Store {
				v.add(path+".response.max_bytes", "applies only with store: true")
			}
			p.Response.MaxBytes = rs.MaxBytes
		}
	}
	return p, len(v.list) == n
}
