package config

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/triggers/blob"
	"github.com/batchd/batchd/triggers/cron"
	"github.com/batchd/batchd/triggers/natsmsg"
)

// File is the loaded, validated pipelines file, compiled into the runtime
// types of the packages that use it.
type File struct {
	Path string
	// Hash identifies the file's content (the first 16 hex digits of its
	// SHA-256): replicas compare it to find config drift.
	Hash       string
	Endpoints  map[string]orchestrator.Endpoint
	Datastores map[string]datastores.Datastore
	// Accounts say how batchd itself reaches storage accounts (the
	// `storage.accounts` section), with key and SAS files already read.
	Accounts  map[string]datastores.Account
	Pipelines map[string]*orchestrator.Pipeline
	Triggers  Triggers
}

// Triggers are the pipelines' trigger sections, keyed by pipeline name.
type Triggers struct {
	Blob map[string]blob.Config
	Cron map[string]cron.Config
	NATS map[string]natsmsg.Config
}

// The pipelines file as written. Field names are the YAML keys; these types
// exist only to be decoded and validated, then compiled into File.
type rawFile struct {
	Endpoints  map[string]*rawEndpoint          `yaml:"endpoints"`
	Datastores map[string]*datastores.Datastore `yaml:"datastores"`
	Storage    *rawStorage                      `yaml:"storage"`
	Pipelines  map[string]*rawPipeline          `yaml:"pipelines"`
}

type rawEndpoint struct {
	// Kind is batch (default) or online.
	Kind           string        `yaml:"kind"`
	URI            string        `yaml:"uri"`
	Deployment     string        `yaml:"deployment"`
	DeploymentKind string        `yaml:"deployment_kind"`
	MaxRunningJobs int           `yaml:"max_running_jobs"`
	Workspace      *rawWorkspace `yaml:"workspace"`

	// Online endpoints only.
	AuthMode              string        `yaml:"auth_mode"`
	KeyFile               string        `yaml:"key_file"`
	EndpointName          string        `yaml:"endpoint_name"`
	Timeout               time.Duration `yaml:"timeout"`
	MaxConcurrentRequests int           `yaml:"max_concurrent_requests"`
}

type rawWorkspace struct {
	Subscription  string `yaml:"subscription"`
	ResourceGroup string `yaml:"resource_group"`
	Name          string `yaml:"name"`
}

type rawStorage struct {
	Accounts map[string]*rawAccount `yaml:"accounts"`
}

type rawAccount struct {
	BlobEndpoint string `yaml:"blob_endpoint"`
	Auth         string `yaml:"auth"`
	KeyFile      string `yaml:"key_file"`
	SASFile      string `yaml:"sas_file"`
}

type rawPipeline struct {
	Endpoint       string                `yaml:"endpoint"`
	Deployment     string                `yaml:"deployment"`
	Trigger        *rawTrigger           `yaml:"trigger"`
	Inputs         map[string]*rawIO     `yaml:"inputs"`
	Outputs        map[string]*rawIO     `yaml:"outputs"`
	ExperimentName string                `yaml:"experiment_name"`
	Settings       *rawSettings          `yaml:"settings"`
	Allow          *datastores.AllowList `yaml:"allow"`
	Timeout        time.Duration         `yaml:"timeout"`
	Retry          *rawRetry             `yaml:"retry"`
	Retention      time.Duration         `yaml:"retention"`

	// Pipelines of online endpoints only.
	Request      string       `yaml:"request"`
	SafeToRepeat bool         `yaml:"safe_to_repeat"`
	Response     *rawResponse `yaml:"response"`
}

type rawResponse struct {
	Store    *bool `yaml:"store"`
	MaxBytes int   `yaml:"max_bytes"`
}

type rawTrigger struct {
	Blob *blob.Config    `yaml:"blob"`
	Cron *cron.Config    `yaml:"cron"`
	NATS *natsmsg.Config `yaml:"nats"`
}

type rawIO struct {
	Type  string `yaml:"type"`
	URI   string `yaml:"uri"`
	Value string `yaml:"value"`
	Mode  string `yaml:"mode"`
}

type rawSettings struct {
	MiniBatchSize  *int64         `yaml:"mini_batch_size"`
	InstanceCount  *int           `yaml:"instance_count"`
	ErrorThreshold *int           `yaml:"error_threshold"`
	MaxRetries     *int           `yaml:"max_retries"`
	RetryTimeout   *time.Duration `yaml:"retry_timeout"`
}

type rawRetry struct {
	MaxAttempts int           `yaml:"max_attempts"`
	Backoff     time.Duration `yaml:"backoff"`
}

// MaxFileSize bounds the pipelines file; anything larger is a mistake.
const MaxFileSize = 4 << 20

// LoadFile reads, decodes (strictly: unknown keys are errors), validates and
// compiles the pipelines file at path. A returned error is an *Error listing
// every problem with its path, e.g.
// "pipelines.score.inputs.data.uri: unknown field .Blob.Nmae (line 12)".
func LoadFile(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Problems: []error{&FieldError{Path: "BATCHD_PIPELINES", Msg: err.Error()}}}
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, &Error{File: path, Problems: []error{&FieldError{Path: "BATCHD_PIPELINES", Msg: err.Error()}}}
	}
	if len(data) > MaxFileSize {
		return nil, &Error{File: path, Problems: []error{&FieldError{Path: "BATCHD_PIPELINES", Msg: fmt.Sprintf("%s is larger than %d bytes", path, MaxFileSize)}}}
	}
	file, err := Parse(data)
	if err != nil {
		var ce *Error
		if errors.As(err, &ce) {
			ce.File = path
		}
		return nil, err
	}
	file.Path = path
	return file, nil
}

// Parse is LoadFile on bytes. Key and SAS files named in storage.accounts are
// read from disk.
func Parse(data []byte) (*File, error) {
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, &Error{Problems: []error{&FieldError{Path: "(file)", Msg: "is empty; it needs at least endpoints and pipelines"}}}
		}
		return nil, &Error{Problems: []error{&FieldError{Path: "(file)", Msg: "is not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}}}
	}
	v := &validator{lines: map[string]int{}}
	var raw rawFile
	v.walk(&root, "", typeOf(&raw))
	if err := root.Decode(&raw); err != nil {
		v.typeErrors(err)
	}
	// Compile even after structural problems, so that one run lists every
	// problem; add() drops a second problem on a path that already has one.
	v.structural = len(v.list)
	file := v.compile(&raw)
	if err := v.err(); err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	file.Hash = hex.EncodeToString(sum[:8])
	return file, nil
}

// Load reads the environment and then the pipelines file it names (or
// pipelinesPath when not empty), reporting the problems of both together.
func Load(ctx context.Context, l Lookuper, pipelinesPath string) (*Env, *File, error) {
	env, envErr := LoadEnv(ctx, l)
	path := pipelinesPath
	if path == "" && env != nil {
		path = env.PipelinesFile
	}
	if path == "" {
		// The environment failed before naming a file: report that alone.
		if envErr == nil {
			envErr = &Error{Problems: []error{&FieldError{Path: "BATCHD_PIPELINES", Msg: "must not be empty"}}}
		}
		return nil, nil, envErr
	}
	file, fileErr := LoadFile(path)
	if envErr == nil && fileErr == nil {
		if env.PipelinesFile != path {
			env.PipelinesFile = path
		}
		return env, file, nil
	}
	all := &Error{File: path}
	for _, err := range []error{envErr, fileErr} {
		var ce *Error
		switch {
		case err == nil:
		case errors.As(err, &ce):
			all.Problems = append(all.Problems, ce.Problems...)
		default:
			all.Problems = append(all.Problems, err)
		}
	}
	return nil, nil, all
}

// compile validates raw and turns it into File. Problems go to v.
func (v *validator) compile(raw *rawFile) *File {
	v.raw = raw
	f := &File{
		Endpoints:  map[string]orchestrator.Endpoint{},
		Datastores: map[string]datastores.Datastore{},
		Accounts:   map[string]datastores.Account{},
		Pipelines:  map[string]*orchestrator.Pipeline{},
		Triggers: Triggers{
			Blob: map[string]blob.Config{},
			Cron: map[string]cron.Config{},
			NATS: map[string]natsmsg.Config{},
		},
	}
	if len(raw.Endpoints) == 0 {
		v.add("endpoints", "at least one endpoint is required")
	}
	if len(raw.Pipelines) == 0 {
		v.add("pipelines", "at least one pipeline is required")
	}
	for _, name := range sortedKeys(raw.Endpoints) {
		if ep, ok := v.endpoint("endpoints."+name, name, raw.Endpoints[name]); ok {
			f.Endpoints[name] = ep
		}
	}
	for _, name := range sortedKeys(raw.Datastores) {
		if ds, ok := v.datastore("datastores."+name, name, raw.Datastores[name]); ok {
			f.Datastores[name] = ds
		}
	}
	if raw.Storage != nil {
		for _, name := range sortedKeys(raw.Storage.Accounts) {
			if a, ok := v.account("storage.accounts."+name, name, raw.Storage.Accounts[name]); ok {
				f.Accounts[name] = a
			}
		}
	}
	for _, name := range sortedKeys(raw.Pipelines) {
		p, ok := v.pipeline("pipelines."+name, name, raw.Pipelines[name], f)
		if !ok {
			continue
		}
		f.Pipelines[name] = p
	}
	return f
}

func (v *validator) endpoint(path, name string, r *rawEndpoint) (orchestrator.Endpoint, bool) {
	if r == nil {
		v.add(path, "is empty; it needs at least uri")
		return orchestrator.Endpoint{}, false
	}
	n := len(v.list)
	v.name(path, name)
	switch r.Kind {
	case "", orchestrator.EndpointBatch:
	case orchestrator.EndpointOnline:
		return v.onlineEndpoint(path, name, r, n)
	default:
		v.add(path+".kind", "%q is not one of batch, online", r.Kind)
		return orchestrator.Endpoint{}, false
	}
	for _, k := range []struct {
		key string
		set bool
	}{{"auth_mode", r.AuthMode != ""}, {"key_file", r.KeyFile != ""}, {"endpoint_name", r.EndpointName != ""},
		{"timeout", r.Timeout != 0}, {"max_concurrent_requests", r.MaxConcurrentRequests != 0}} {
		if k.set {
			v.add(path+"."+k.key, "applies only to online endpoints (kind: online)")
		}
	}
	ep := orchestrator.Endpoint{
		Endpoint:       jobs.Endpoint{Name: name, ScoringURI: r.URI, Deployment: r.Deployment},
		MaxRunningJobs: r.MaxRunningJobs,
		DeploymentKind: r.DeploymentKind,
		Kind:           orchestrator.EndpointBatch,
	}
	switch u, err := url.Parse(r.URI); {
	case r.URI == "":
		v.add(path+".uri", "is required: the endpoint's invocation URI, https://<endpoint>.<region>.inference.ml.azure.com/jobs (az ml batch-endpoint show --query scoring_uri)")
	case err != nil || u.Host == "":
		v.add(path+".uri", "%q is not a URL", r.URI)
	case !secureOrLoopback(u):
		v.add(path+".uri", "%q must be https (plain http is accepted only on loopback, for simulators)", r.URI)
	case !strings.HasSuffix(strings.TrimRight(u.Path, "/"), "/jobs"):
		v.add(path+".uri", "%q is not an invocation URI: it ends in /jobs (az ml batch-endpoint show --query scoring_uri)", r.URI)
	case u.RawQuery != "" || u.User != nil:
		v.add(path+".uri", "must not carry a query string or credentials")
	}
	if ep.DeploymentKind == "" {
		ep.DeploymentKind = datastores.DeploymentModel
	}
	v.oneOf(path+".deployment_kind", ep.DeploymentKind, datastores.DeploymentModel, datastores.DeploymentPipeline)
	if r.MaxRunningJobs < 0 {
		v.add(path+".max_running_jobs", "must be 0 (no cap) or more, not %d", r.MaxRunningJobs)
	}
	if r.MaxRunningJobs > orchestrator.MaxRunningJobsCap {
		v.add(path+".max_running_jobs", "must be at most %d, not %d: the running jobs of an endpoint are one NATS message, which must stay under NATS's 1 MiB max_payload (0 means no cap)",
			orchestrator.MaxRunningJobsCap, r.MaxRunningJobs)
	}
	if w := r.Workspace; w != nil {
		wp := path + ".workspace"
		for _, f := range []struct{ key, val string }{{"subscription", w.Subscription}, {"resource_group", w.ResourceGroup}, {"name", w.Name}} {
			if f.val == "" {
				v.add(wp+"."+f.key, "is required when workspace is set (status, cancel and reconciliation go through ARM)")
			}
		}
		ep.Workspace = &jobs.Workspace{Subscription: w.Subscription, ResourceGroup: w.ResourceGroup, Name: w.Name}
	}
	return ep, len(v.list) == n
}

func (v *validator) datastore(path, name string, d *datastores.Datastore) (datastores.Datastore, bool) {
	if d == nil {
		v.add(path, "is empty; it needs kind, account and credentials")
		return datastores.Datastore{}, false
	}
	n := len(v.list)
	ds := *d
	ds.Name = name
	v.validate(path, ds)
	return ds, len(v.list) == n
}

func (v *validator) account(path, name string, r *rawAccount) (datastores.Account, bool) {
	if r == nil {
		r = &rawAccount{}
	}
	n := len(v.list)
	v.name(path, name)
	a := datastores.Account{Name: name, BlobEndpoint: r.BlobEndpoint, Auth: r.Auth}
	if a.Auth == "" {
		a.Auth = datastores.AuthCredential
	}
	v.oneOf(path+".auth", a.Auth, datastores.AuthCredential, datastores.AuthSharedKey, datastores.AuthSAS, datastores.AuthAnonymous)
	if r.BlobEndpoint != "" {
		u, err := url.Parse(r.BlobEndpoint)
		switch {
		case err != nil || u.Host == "":
			v.add(path+".blob_endpoint", "%q is not a URL", r.BlobEndpoint)
		case !secureOrLoopback(u):
			v.add(path+".blob_endpoint", "%q must be https (plain http only on loopback, e.g. Azurite)", r.BlobEndpoint)
		case u.RawQuery != "":
			v.add(path+".blob_endpoint", "must not carry a query string: put a SAS in sas_file")
		}
	}
	readSecret := func(key, file string) string {
		if file == "" {
			v.add(path+"."+key, "is required with auth %s", a.Auth)
			return ""
		}
		b, err := os.ReadFile(file)
		if err != nil {
			v.add(path+"."+key, "%v", err)
			return ""
		}
		s := strings.TrimSpace(string(b))
		if s == "" {
			v.add(path+"."+key, "%s is empty", file)
		}
		return s
	}
	switch a.Auth {
	case datastores.AuthSharedKey:
		a.Key = readSecret("key_file", r.KeyFile)
	case datastores.AuthSAS:
		a.SAS = readSecret("sas_file", r.SASFile)
	}
	if a.Auth != datastores.AuthSharedKey && r.KeyFile != "" {
		v.add(path+".key_file", "applies only with auth shared_key")
	}
	if a.Auth != datastores.AuthSAS && r.SASFile != "" {
		v.add(path+".sas_file", "applies only with auth sas")
	}
	return a, len(v.list) == n
}

var ioTypes = []string{jobs.TypeUriFile, jobs.TypeUriFolder, jobs.TypeLiteral}

func (v *validator) pipeline(path, name string, r *rawPipeline, f *File) (*orchestrator.Pipeline, bool) {
	if r == nil {
		v.add(path, "is empty; it needs at least endpoint and inputs")
		return nil, false
	}
	n := len(v.list)
	v.name(path, name)
	p := &orchestrator.Pipeline{Name: name, Allow: derefAllow(r.Allow), Timeout: r.Timeout}

	switch ep, ok := f.Endpoints[r.Endpoint]; {
	case r.Endpoint == "":
		v.add(path+".endpoint", "is required: the name of an entry under endpoints")
	case !ok:
		if _, declared := v.raw.Endpoints[r.Endpoint]; declared {
			// The endpoint exists but is invalid; its own problems say why.
			break
		}
		v.add(path+".endpoint", "%q is not declared under endpoints (declared: %s)", r.Endpoint, list(sortedKeys(v.raw.Endpoints)))
	default:
		p.Endpoint = ep
		if r.Deployment != "" {
			p.Endpoint.Deployment = r.Deployment
		}
	}
	v.trigger(path, name, r, p, f)
	if r.Retention < 0 || (r.Retention > 0 && r.Retention < time.Minute) {
		v.add(path+".retention", "must be at least 1m (or unset: BATCHD_RETENTION)")
	}
	p.Retention = r.Retention
	if p.IsOnline() || (p.Endpoint.Name == "" && v.declaredOnline(r.Endpoint)) {
		return v.onlinePipeline(path, name, r, p, n)
	}
	for _, k := range []struct {
		key string
		set bool
	}{{"request", r.Request != ""}, {"safe_to_repeat", r.SafeToRepeat}, {"response", r.Response != nil}} {
		if k.set {
			v.add(path+"."+k.key, "applies only to pipelines of online endpoints (kind: online)")
		}
	}

	sample := orchestrator.SampleTemplateData(name, p.Trigger)

	// Inputs and outputs.
	if len(r.Inputs) == 0 {
		v.add(path+".inputs", "at least one input is required")
	}
	p.Inputs = map[string]orchestrator.IOTemplate{}
	dataInputs := 0
	for _, in := range sortedKeys(r.Inputs) {
		if r.Inputs[in] != nil && r.Inputs[in].Type != jobs.TypeLiteral {
			dataInputs++
		}
		if io, ok := v.io(path+".inputs."+in, in, r.Inputs[in], sample, true); ok {
			p.Inputs[in] = io
		}
	}
	if p.Endpoint.DeploymentKind == datastores.DeploymentModel && len(r.Inputs) > 0 {
		if dataInputs != 1 || len(r.Inputs) != 1 {
			v.add(path+".inputs", "endpoint %s serves a model deployment, which takes exactly one UriFile or UriFolder input (has %d); set deployment_kind: pipeline on the endpoint for pipeline-component deployments", r.Endpoint, len(r.Inputs))
		}
	}
	if len(r.Outputs) > 0 {
		p.Outputs = map[string]orchestrator.IOTemplate{}
	}
	for _, out := range sortedKeys(r.Outputs) {
		io, ok := v.io(path+".outputs."+out, out, r.Outputs[out], sample, false)
		if ok {
			p.Outputs[out] = io
		}
	}
	if r.ExperimentName != "" {
		p.ExperimentName = v.template(path+".experiment_name", r.ExperimentName, sample)
	}

	if s := r.Settings; s != nil {
		sp := path + ".settings"
		positive := func(key string, val *int, min int) {
			if val != nil && *val < min {
				v.add(sp+"."+key, "must be at least %d, not %d", min, *val)
			}
		}
		if s.MiniBatchSize != nil && *s.MiniBatchSize < 1 {
			v.add(sp+".mini_batch_size", "must be at least 1, not %d", *s.MiniBatchSize)
		}
		positive("instance_count", s.InstanceCount, 1)
		positive("error_threshold", s.ErrorThreshold, -1)
		positive("max_retries", s.MaxRetries, 0)
		if s.RetryTimeout != nil && *s.RetryTimeout < time.Second {
			v.add(sp+".retry_timeout", "must be at least 1s, not %s", *s.RetryTimeout)
		}
		p.Settings = jobs.Settings{MiniBatchSize: s.MiniBatchSize, InstanceCount: s.InstanceCount,
			ErrorThreshold: s.ErrorThreshold, MaxRetries: s.MaxRetries, RetryTimeout: s.RetryTimeout}
	}
	if r.Timeout < 0 {
		v.add(path+".timeout", "must not be negative")
	}
	p.Retry = orchestrator.DefaultRetry
	if rt := r.Retry; rt != nil {
		if rt.MaxAttempts != 0 {
			p.Retry.MaxAttempts = rt.MaxAttempts
		}
		if rt.Backoff != 0 {
			p.Retry.Backoff = rt.Backoff
		}
		if rt.MaxAttempts < 0 || (rt.MaxAttempts == 0 && rt.Backoff != 0) {
			v.add(path+".retry.max_attempts", "must be at least 1 (1 means no retry)")
		}
		if rt.MaxAttempts > 100 {
			v.add(path+".retry.max_attempts", "%d is more than 100", rt.MaxAttempts)
		}
		if rt.Backoff < 0 {
			v.add(path+".retry.backoff", "must not be negative")
		}
	}
	for _, ds := range p.Allow.Datastores {
		if _, ok := v.raw.Datastores[ds]; !ok {
			v.add(path+".allow.datastores", "%q is not declared under datastores", ds)
		}
	}
	return p, len(v.list) == n
}

// trigger checks the pipeline's trigger section (at most one kind; none
// means the pipeline runs only by hand) and files it under f.Triggers.
func (v *validator) trigger(path, name string, r *rawPipeline, p *orchestrator.Pipeline, f *File) {
	if t := r.Trigger; t != nil {
		kinds := 0
		if t.Blob != nil {
			kinds++
			p.Trigger = "blob"
			v.validate(path+".trigger.blob", t.Blob)
			f.Triggers.Blob[name] = *t.Blob
		}
		if t.Cron != nil {
			kinds++
			p.Trigger = "cron"
			v.validate(path+".trigger.cron", t.Cron)
			if t.Cron.Overlap == cron.OverlapCancelPrevious && p.Endpoint.Kind != orchestrator.EndpointOnline &&
				p.Endpoint.Name != "" && p.Endpoint.Workspace == nil {
				v.add(path+".trigger.cron.overlap", "cancel_previous needs endpoint %s to have a workspace: batchd cancels a job through the workspace's ARM API", p.Endpoint.Name)
			}
			f.Triggers.Cron[name] = *t.Cron
		}
		if t.NATS != nil {
			kinds++
			p.Trigger = "nats"
			v.validate(path+".trigger.nats", t.NATS)
			f.Triggers.NATS[name] = *t.NATS
		}
		switch kinds {
		case 0:
			v.add(path+".trigger", "names no trigger: use blob, cron or nats, or remove trigger to run the pipeline only by hand")
		case 1:
		default:
			v.add(path+".trigger", "has %d trigger kinds; a pipeline has one (make one pipeline per trigger)", kinds)
			p.Trigger = ""
		}
	}
}

func (v *validator) io(path, name string, r *rawIO, sample *orchestrator.TemplateData, input bool) (orchestrator.IOTemplate, bool) {
	if r == nil {
		v.add(path, "is empty; it needs type and uri")
		return orchestrator.IOTemplate{}, false
	}
	n := len(v.list)
	v.name(path, name)
	io := orchestrator.IOTemplate{Type: r.Type, Mode: r.Mode}
	allowed := ioTypes
	if !input {
		allowed = []string{jobs.TypeUriFile, jobs.TypeUriFolder}
	}
	switch r.Type {
	case "":
		v.add(path+".type", "is required: one of %s", strings.Join(allowed, ", "))
	case jobs.TypeMLTable:
		v.add(path+".type", "MLTable is not supported by batch endpoints; use UriFile or UriFolder")
	default:
		v.oneOf(path+".type", r.Type, allowed...)
	}
	if input && r.Type == jobs.TypeLiteral {
		if r.URI != "" {
			v.add(path+".uri", "a Literal input has a value, not a uri")
		}
		if r.Value == "" {
			v.add(path+".value", "is required for a Literal input")
		} else {
			io.Value = v.template(path+".value", r.Value, sample)
		}
	} else {
		if r.Value != "" {
			v.add(path+".value", "only Literal inputs have a value; this one needs a uri")
		}
		if r.URI == "" {
			v.add(path+".uri", "is required")
		} else if io.URI = v.template(path+".uri", r.URI, sample); io.URI != nil {
			v.classify(path+".uri", r.URI, io.URI, sample)
		}
	}
	if r.Mode != "" {
		modes := []string{"ReadOnlyMount", "ReadWriteMount", "Download", "Direct", "EvalMount", "EvalDownload"}
		if !input {
			modes = []string{"ReadWriteMount", "Upload"}
		}
		v.oneOf(path+".mode", r.Mode, modes...)
	}
	return io, len(v.list) == n
}

// classify checks the sample rendering of a URI template, when the template
// reads only fields known at load time: a URI batch endpoints cannot take, or
// a datastore that is not declared, is a load-time error rather than a
// rejected run hours later.
func (v *validator) classify(path, src string, t *orchestrator.Template, sample *orchestrator.TemplateData) {
	if strings.Contains(src, ".Fields") || strings.Contains(src, ".Message") {
		return
	}
	uri, err := t.Validate(sample)
	if err != nil {
		return
	}
	loc, err := datastores.Classify(uri)
	if err != nil {
		var ue *datastores.URIError
		if errors.As(err, &ue) && !strings.Contains(src, "{{") {
			v.add(path, "%s", ue.Msg)
			return
		}
		v.add(path, "renders to a URI batch endpoints do not take (with sample data: %v)", err)
		return
	}
	if loc.Kind == datastores.KindDatastore {
		if _, ok := v.raw.Datastores[loc.Datastore]; !ok {
			v.add(path, "datastore %q is not declared under datastores (declared: %s)", loc.Datastore, list(sortedKeys(v.raw.Datastores)))
		}
	}
}

// template compiles src and renders it with sample data, so that a typo in a
// field name is a load-time error that names the field.
func (v *validator) template(path, src string, sample *orchestrator.TemplateData) *orchestrator.Template {
	t, err := orchestrator.CompileTemplate(src)
	if err != nil {
		v.add(path, "%v", err)
		return nil
	}
	out, err := t.Validate(sample)
	if err != nil {
		v.add(path, "%v", err)
		return nil
	}
	if strings.TrimSpace(out) == "" && !strings.Contains(src, ".Fields") && !strings.Contains(src, ".Message.Data") {
		v.add(path, "renders to an empty string")
	}
	return t
}

// validate calls Validate on a component's config section when it has one,
// prefixing each problem with the section's path. Components report problems
// as "relative.path: message" (or a bare message for the section itself).
func (v *validator) validate(path string, cfg any) {
	val, ok := cfg.(interface{ Validate() error })
	if !ok {
		return
	}
	v.addErrs(path, val.Validate())
}

// addErrs files each error of err (one, or joined) under path; one that
// starts with a relative key path ("consumer: …") under that key.
func (v *validator) addErrs(path string, err error) {
	if err == nil {
		return
	}
	var errs []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	} else {
		errs = []error{err}
	}
	for _, e := range errs {
		msg := e.Error()
		if rel, rest, ok := strings.Cut(msg, ": "); ok && isRelPath(rel) {
			v.add(path+"."+rel, "%s", rest)
			continue
		}
		v.add(path, "%s", msg)
	}
}

func isRelPath(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t") {
		return false
	}
	for _, r := range s {
		if !(r == '.' || r == '_' || r == '[' || r == ']' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// secureOrLoopback: https, or plain http to a loopback host (simulators).
func secureOrLoopback(u *url.URL) bool {
	return u.Scheme == "https" || u.Scheme == "http" && isLoopbackHost(u.Hostname())
}

func (v *validator) oneOf(path, val string, allowed ...string) {
	if !slices.Contains(allowed, val) {
		if val == "" {
			v.add(path, "is required: one of %s", strings.Join(allowed, ", "))
			return
		}
		v.add(path, "%q is not one of %s", val, strings.Join(allowed, ", "))
	}
}

// name checks a map key used as a name: it appears in NATS subjects, KV keys
// and metric labels, so it is kept to a safe alphabet.
func (v *validator) name(path, name string) {
	if name == "" || len(name) > 64 {
		v.add(path, "name must be 1 to 64 characters")
		return
	}
	for _, r := range name {
		if !(r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			v.add(path, "name %q may only contain letters, digits, '-' and '_'", name)
			return
		}
	}
}

func derefAllow(a *datastores.AllowList) datastores.AllowList {
	if a == nil {
		return datastores.AllowList{}
	}
	return *a
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	return strings.HasPrefix(h, "127.") || h == "::1"
}

func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
