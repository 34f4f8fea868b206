// Package config is the only place batchd reads its environment and its
// files. It turns BATCHD_* variables (and the standard AZURE_* ones) into Env,
// and the pipelines file into Pipelines, reporting every problem it finds
// with the path of the field at fault, before anything starts.
package config

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sethvargo/go-envconfig"

	"github.com/batchd/batchd/jobs"
)

// rawEnv is the environment as strings. Every value is parsed afterwards, so
// that one bad variable does not hide the next one: Load reports them all.
type rawEnv struct {
	Pipelines string `env:"BATCHD_PIPELINES, default=/etc/batchd/pipelines.yaml"`
	StateDir  string `env:"BATCHD_STATE_DIR, default=/var/lib/batchd"`

	NATSURL      string `env:"BATCHD_NATS_URL"`
	NATSListen   string `env:"BATCHD_NATS_LISTEN"`
	NATSCreds    string `env:"BATCHD_NATS_CREDS"`
	NATSNKey     string `env:"BATCHD_NATS_NKEY"`
	NATSTLSCA    string `env:"BATCHD_NATS_TLS_CA"`
	NATSTLSCert  string `env:"BATCHD_NATS_TLS_CERT"`
	NATSTLSKey   string `env:"BATCHD_NATS_TLS_KEY"`
	NATSReplicas string `env:"BATCHD_NATS_REPLICAS, default=1"`

	HTTPAddr         string `env:"BATCHD_HTTP_ADDR, default=127.0.0.1:8080"`
	HTTPReadTimeout  string `env:"BATCHD_HTTP_READ_TIMEOUT, default=30s"`
	HTTPWriteTimeout string `env:"BATCHD_HTTP_WRITE_TIMEOUT, default=60s"`
	HTTPHosts        string `env:"BATCHD_HTTP_HOSTS"`
	APIToken         string `env:"BATCHD_API_TOKEN"`
	APITokenFile     string `env:"BATCHD_API_TOKEN_FILE"`
	WebhookSecret    string `env:"BATCHD_WEBHOOK_SECRET"`
	WebhookFile      string `env:"BATCHD_WEBHOOK_SECRET_FILE"`

	WebhookEntraAudiences string `env:"BATCHD_WEBHOOK_ENTRA_AUDIENCES"`
	WebhookEntraIssuers   string `env:"BATCHD_WEBHOOK_ENTRA_ISSUERS"`
	WebhookEntraJWKSURL   string `env:"BATCHD_WEBHOOK_ENTRA_JWKS_URL"`
	WebhookEntraCallers   string `env:"BATCHD_WEBHOOK_ENTRA_CALLERS"`

	LogLevel  string `env:"BATCHD_LOG_LEVEL, default=info"`
	LogFormat string `env:"BATCHD_LOG_FORMAT, default=text"`
	// GoMemLimit is the Go runtime's own variable; batchd only looks at
	// whether it is set (see DefaultMemoryLimit).
	GoMemLimit string `env:"GOMEMLIMIT"`

	Credential    string `env:"BATCHD_CREDENTIAL, default=managed-identity"`
	MLScope       string `env:"BATCHD_ML_SCOPE, default=https://ml.azure.com/.default"`
	ARMScope      string `env:"BATCHD_ARM_SCOPE, default=https://management.azure.com/.default"`
	ARMEndpoint   string `env:"BATCHD_ARM_ENDPOINT, default=https://management.azure.com"`
	StorageScope  string `env:"BATCHD_STORAGE_SCOPE, default=https://storage.azure.com/.default"`
	StorageSuffix string `env:"BATCHD_STORAGE_SUFFIX, default=core.windows.net"`

	Workers        string `env:"BATCHD_WORKERS, default=64"`
	Retention      string `env:"BATCHD_RETENTION, default=168h"`
	ShutdownGrace  string `env:"BATCHD_SHUTDOWN_GRACE, default=60s"`
	SubmitTimeout  string `env:"BATCHD_SUBMIT_TIMEOUT, default=60s"`
	PollMin        string `env:"BATCHD_POLL_MIN, default=10s"`
	PollMax        string `env:"BATCHD_POLL_MAX, default=5m"`
	PollBudget     string `env:"BATCHD_POLL_BUDGET, default=20"`
	ReconcileGrace string `env:"BATCHD_RECONCILE_GRACE, default=10m"`
	// Pushed completion (Azure ML workspace events on /eventgrid).
	JobEventsSafetyPoll string `env:"BATCHD_JOB_EVENTS_SAFETY_POLL, default=10m"`
	JobEventsSilence    string `env:"BATCHD_JOB_EVENTS_SILENCE, default=30m"`
	// Bulk status from the ARM job list ("0": off).
	JobListInterval string `env:"BATCHD_JOB_LIST_INTERVAL, default=30s"`

	// The standard Azure SDK variables, read here and passed on explicitly.
	AzureClientID       string `env:"AZURE_CLIENT_ID"`
	AzureTenantID       string `env:"AZURE_TENANT_ID"`
	AzureClientSecret   string `env:"AZURE_CLIENT_SECRET"`
	AzureCertPath       string `env:"AZURE_CLIENT_CERTIFICATE_PATH"`
	AzureCertPassword   string `env:"AZURE_CLIENT_CERTIFICATE_PASSWORD"`
	AzureFederatedToken string `env:"AZURE_FEDERATED_TOKEN_FILE"`
	AzureAuthorityHost  string `env:"AZURE_AUTHORITY_HOST"`

	DisableInstanceDiscovery string `env:"BATCHD_DISABLE_INSTANCE_DISCOVERY, default=false"`
}

// MinAPITokenLength is the shortest BATCHD_API_TOKEN the daemon accepts.
const MinAPITokenLength = 16

// Env is batchd's process configuration from the environment.
type Env struct {
	PipelinesFile string
	StateDir      string

	NATS NATS

	HTTPAddr string
	// HTTPReadTimeout and HTTPWriteTimeout bound reading one request and
	// writing one response. The status page's live stream is exempt: it
	// sets a deadline per write instead.
	HTTPReadTimeout  time.Duration
	HTTPWriteTimeout time.Duration
	// HTTPHosts are the host names (besides loopback ones) the API and the
	// status page answer to; see orchestrator.BrowserGuard.
	HTTPHosts []string
	// APIToken, when set, is required as a bearer token on /api. Secret.
	APIToken string
	// WebhookSecret authenticates Event Grid deliveries. Secret.
	WebhookSecret string
	// WebhookEntra, when set, also requires Microsoft Entra-protected
	// delivery: a bearer JWT with one of these audiences and issuers,
	// signed by a key from JWKSURL.
	WebhookEntra *WebhookEntra

	LogLevel  string // debug | info | warn | error
	LogFormat string // text | json
	// GoMemLimitSet: GOMEMLIMIT is set, and the runtime applies it; else
	// serve sets DefaultMemoryLimit.
	GoMemLimitSet bool

	Credential jobs.CredentialOptions
	// Scopes and endpoints, configurable for sovereign clouds.
	MLScope       string
	ARMScope      string
	ARMEndpoint   string
	StorageScope  string
	StorageSuffix string

	Workers        int
	Retention      time.Duration
	ShutdownGrace  time.Duration
	SubmitTimeout  time.Duration
	PollMin        time.Duration
	PollMax        time.Duration
	PollBudget     float64 // status requests per second per endpoint host
	ReconcileGrace time.Duration
	// JobEventsSafetyPoll is the status request interval of a job whose
	// workspace delivers job events; JobEventsSilence how long without an
	// event before its jobs are polled at the full rate again.
	JobEventsSafetyPoll time.Duration
	JobEventsSilence    time.Duration
	// JobListInterval is how often the jobs of a workspace without job
	// events are refreshed from its ARM job list; negative: never.
	JobListInterval time.Duration
}

// WebhookEntra configures Entra-protected Event Grid delivery.
type WebhookEntra struct {
	Audiences []string
	Issuers   []string
	JWKSURL   string
	// Callers are the application ids a delivery's token may come from
	// (azp or appid); empty means Event Grid's in the public cloud.
	Callers []string
}

// NATS is how batchd reaches NATS.
type NATS struct {
	URL     string // empty: embedded server in StateDir
	Listen  string // embedded only: loopback host:port to accept clients on
	Creds   string
	NKey    string
	TLSCA   string
	TLSCert string
	TLSKey  string
	// Replicas is the replica count of batchd's streams and KV buckets on an
	// external cluster (3 for a 3-node JetStream cluster). Always 1 embedded.
	Replicas int
}

// Lookuper finds environment variables; envconfig.OsLookuper() in main,
// envconfig.MapLookuper in tests.
type Lookuper = envconfig.Lookuper

// OSEnv looks variables up in the process environment.
func OSEnv() Lookuper { return envconfig.OsLookuper() }

// MapEnv looks variables up in m (tests, and batchd-dev).
func MapEnv(m map[string]string) Lookuper { return envconfig.MapLookuper(m) }

// LoadEnv reads and validates the environment. The error lists every
// problem, one per line, each starting with the variable's name.
func LoadEnv(ctx context.Context, l Lookuper) (*Env, error) {
	var raw rawEnv
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &raw, Lookuper: l}); err != nil {
		return nil, fmt.Errorf("environment: %w", err)
	}
	p := &problems{}
	e := &Env{
		PipelinesFile: raw.Pipelines,
		StateDir:      raw.StateDir,
		NATS: NATS{
			URL: raw.NATSURL, Listen: raw.NATSListen, Creds: raw.NATSCreds, NKey: raw.NATSNKey,
			TLSCA: raw.NATSTLSCA, TLSCert: raw.NATSTLSCert, TLSKey: raw.NATSTLSKey,
		},
		HTTPAddr:      raw.HTTPAddr,
		LogLevel:      strings.ToLower(raw.LogLevel),
		LogFormat:     strings.ToLower(raw.LogFormat),
		GoMemLimitSet: raw.GoMemLimit != "",
		MLScope:       raw.MLScope,
		ARMScope:      raw.ARMScope,
		ARMEndpoint:   strings.TrimRight(raw.ARMEndpoint, "/"),
		StorageScope:  raw.StorageScope,
		StorageSuffix: raw.StorageSuffix,
		Credential: jobs.CredentialOptions{
			Kind:                raw.Credential,
			ClientID:            raw.AzureClientID,
			TenantID:            raw.AzureTenantID,
			ClientSecret:        raw.AzureClientSecret,
			CertificatePath:     raw.AzureCertPath,
			CertificatePassword: raw.AzureCertPassword,
			FederatedTokenFile:  raw.AzureFederatedToken,
			AuthorityHost:       raw.AzureAuthorityHost,
		},
	}
	switch strings.ToLower(raw.DisableInstanceDiscovery) {
	case "true", "1", "yes":
		e.Credential.DisableInstanceDiscovery = true
	case "false", "0", "no", "":
	default:
		p.add("BATCHD_DISABLE_INSTANCE_DISCOVERY", "%q is not true or false", raw.DisableInstanceDiscovery)
	}
	e.APIToken = secret(p, "BATCHD_API_TOKEN", raw.APIToken, raw.APITokenFile)
	if n := len(e.APIToken); n > 0 && n < MinAPITokenLength {
		p.add("BATCHD_API_TOKEN", "is %d characters; use at least %d (for example: openssl rand -hex 24)", n, MinAPITokenLength)
	}
	e.WebhookSecret = secret(p, "BATCHD_WEBHOOK_SECRET", raw.WebhookSecret, raw.WebhookFile)

	if raw.WebhookEntraAudiences != "" || raw.WebhookEntraIssuers != "" || raw.WebhookEntraJWKSURL != "" {
		w := &WebhookEntra{Audiences: splitList(raw.WebhookEntraAudiences), Issuers: splitList(raw.WebhookEntraIssuers), JWKSURL: raw.WebhookEntraJWKSURL,
			Callers: splitList(raw.WebhookEntraCallers)}
		if len(w.Audiences) == 0 {
			p.add("BATCHD_WEBHOOK_ENTRA_AUDIENCES", "required for Entra-protected delivery: the app's client id or application id URI")
		}
		if len(w.Issuers) == 0 {
			p.add("BATCHD_WEBHOOK_ENTRA_ISSUERS", "required for Entra-protected delivery, e.g. https://login.microsoftonline.com/<tenant>/v2.0")
		}
		if u, err := url.Parse(w.JWKSURL); err != nil || u.Scheme != "https" || u.Host == "" {
			p.add("BATCHD_WEBHOOK_ENTRA_JWKS_URL", "%q must be an https URL such as https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys", w.JWKSURL)
		}
		e.WebhookEntra = w
	}
	if raw.StateDir == "" {
		p.add("BATCHD_STATE_DIR", "must not be empty")
	}
	if raw.Pipelines == "" {
		p.add("BATCHD_PIPELINES", "must not be empty")
	}
	if _, port, err := net.SplitHostPort(raw.HTTPAddr); err != nil {
		p.add("BATCHD_HTTP_ADDR", "%q is not host:port", raw.HTTPAddr)
	} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		p.add("BATCHD_HTTP_ADDR", "%q has no valid port", raw.HTTPAddr)
	}
	if raw.NATSListen != "" && raw.NATSURL != "" {
		p.add("BATCHD_NATS_LISTEN", "only applies to the embedded server; unset it or BATCHD_NATS_URL")
	}
	e.NATS.Replicas = positiveInt(p, "BATCHD_NATS_REPLICAS", raw.NATSReplicas)
	if e.NATS.Replicas > 5 {
		p.add("BATCHD_NATS_REPLICAS", "%d is more than JetStream's maximum of 5", e.NATS.Replicas)
	}
	if raw.NATSURL == "" && e.NATS.Replicas > 1 {
		p.add("BATCHD_NATS_REPLICAS", "needs BATCHD_NATS_URL: the embedded server is a single node")
	}
	if raw.NATSURL != "" {
		for _, u := range strings.Split(raw.NATSURL, ",") {
			if pu, err := url.Parse(strings.TrimSpace(u)); err != nil || pu.Host == "" {
				p.add("BATCHD_NATS_URL", "%q is not a URL like nats://host:4222", u)
			}
		}
	}
	oneOf(p, "BATCHD_LOG_LEVEL", e.LogLevel, "debug", "info", "warn", "error")
	oneOf(p, "BATCHD_LOG_FORMAT", e.LogFormat, "text", "json")
	oneOf(p, "BATCHD_CREDENTIAL", e.Credential.Kind, jobs.CredentialKinds...)
	switch e.Credential.Kind {
	case jobs.CredClientSecret:
		need(p, "AZURE_TENANT_ID", raw.AzureTenantID, "BATCHD_CREDENTIAL=client-secret")
		need(p, "AZURE_CLIENT_ID", raw.AzureClientID, "BATCHD_CREDENTIAL=client-secret")
		need(p, "AZURE_CLIENT_SECRET", raw.AzureClientSecret, "BATCHD_CREDENTIAL=client-secret")
	case jobs.CredClientCertificate:
		need(p, "AZURE_TENANT_ID", raw.AzureTenantID, "BATCHD_CREDENTIAL=client-certificate")
		need(p, "AZURE_CLIENT_ID", raw.AzureClientID, "BATCHD_CREDENTIAL=client-certificate")
		need(p, "AZURE_CLIENT_CERTIFICATE_PATH", raw.AzureCertPath, "BATCHD_CREDENTIAL=client-certificate")
	case jobs.CredWorkloadIdentity:
		need(p, "AZURE_TENANT_ID", raw.AzureTenantID, "BATCHD_CREDENTIAL=workload-identity")
		need(p, "AZURE_CLIENT_ID", raw.AzureClientID, "BATCHD_CREDENTIAL=workload-identity")
		need(p, "AZURE_FEDERATED_TOKEN_FILE", raw.AzureFederatedToken, "BATCHD_CREDENTIAL=workload-identity")
	}
	for name, v := range map[string]string{"BATCHD_ML_SCOPE": raw.MLScope, "BATCHD_ARM_SCOPE": raw.ARMScope, "BATCHD_STORAGE_SCOPE": raw.StorageScope} {
		if !strings.HasPrefix(v, "https://") {
			p.add(name, "%q must be an https:// scope such as https://ml.azure.com/.default", v)
		}
	}
	if u, err := url.Parse(e.ARMEndpoint); err != nil || u.Scheme != "https" || u.Host == "" {
		p.add("BATCHD_ARM_ENDPOINT", "%q must be an https:// URL", raw.ARMEndpoint)
	}

	for _, h := range strings.Split(raw.HTTPHosts, ",") {
		h = strings.TrimSpace(h)
		switch {
		case h == "":
		case strings.ContainsAny(h, ":/ "):
			p.add("BATCHD_HTTP_HOSTS", "%q is not a host name or address (no scheme, port or path)", h)
		default:
			e.HTTPHosts = append(e.HTTPHosts, h)
		}
	}
	e.HTTPReadTimeout = duration(p, "BATCHD_HTTP_READ_TIMEOUT", raw.HTTPReadTimeout, time.Second)
	e.HTTPWriteTimeout = duration(p, "BATCHD_HTTP_WRITE_TIMEOUT", raw.HTTPWriteTimeout, time.Second)
	e.Workers = positiveInt(p, "BATCHD_WORKERS", raw.Workers)
	e.Retention = duration(p, "BATCHD_RETENTION", raw.Retention, time.Hour)
	e.ShutdownGrace = duration(p, "BATCHD_SHUTDOWN_GRACE", raw.ShutdownGrace, time.Second)
	e.SubmitTimeout = duration(p, "BATCHD_SUBMIT_TIMEOUT", raw.SubmitTimeout, time.Second)
	e.PollMin = duration(p, "BATCHD_POLL_MIN", raw.PollMin, 100*time.Millisecond)
	e.PollMax = duration(p, "BATCHD_POLL_MAX", raw.PollMax, 100*time.Millisecond)
	e.ReconcileGrace = duration(p, "BATCHD_RECONCILE_GRACE", raw.ReconcileGrace, time.Second)
	e.JobEventsSafetyPoll = duration(p, "BATCHD_JOB_EVENTS_SAFETY_POLL", raw.JobEventsSafetyPoll, 100*time.Millisecond)
	e.JobEventsSilence = duration(p, "BATCHD_JOB_EVENTS_SILENCE", raw.JobEventsSilence, time.Second)
	if raw.JobListInterval == "0" {
		e.JobListInterval = -1
	} else {
		e.JobListInterval = duration(p, "BATCHD_JOB_LIST_INTERVAL", raw.JobListInterval, 100*time.Millisecond)
	}
	if e.PollMin > 0 && e.PollMax > 0 && e.PollMax < e.PollMin {
		p.add("BATCHD_POLL_MAX", "%s is less than BATCHD_POLL_MIN (%s)", e.PollMax, e.PollMin)
	}
	if f, err := strconv.ParseFloat(raw.PollBudget, 64); err != nil || f <= 0 {
		p.add("BATCHD_POLL_BUDGET", "%q must be a positive number of status requests per second", raw.PollBudget)
	} else {
		e.PollBudget = f
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return e, nil
}

// RedactedNATSURL is BATCHD_NATS_URL with any user:password replaced, for
// logs and summaries.
func (e *Env) RedactedNATSURL() string {
	parts := strings.Split(e.NATS.URL, ",")
	for i, raw := range parts {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			parts[i] = "(unparsable URL)"
			continue
		}
		if u.User != nil {
			u.User = url.User("redacted")
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// DeployProblems are settings that are each valid but together break a
// promise once deployed: `batchd check` reports them as problems (exit 2),
// `batchd serve` logs them as warnings and runs.
//   - A shutdown grace shorter than the submit timeout: a POST in flight at
//     SIGTERM always finishes (batchd records its answer), so the process
//     may outlive the grace, and the process manager's stop timeout
//     (TimeoutStopSec, terminationGracePeriodSeconds), set from the grace,
//     would kill it mid-POST.
func (e *Env) DeployProblems() error {
	p := &problems{}
	if e.ShutdownGrace < e.SubmitTimeout {
		p.add("BATCHD_SHUTDOWN_GRACE", "%s is shorter than BATCHD_SUBMIT_TIMEOUT (%s): a POST in flight at shutdown takes up to the submit timeout, and a process manager that stops batchd after the grace would kill it before its answer is recorded; set the grace to at least the submit timeout",
			e.ShutdownGrace, e.SubmitTimeout)
	}
	return p.err()
}

// Warnings are settings that work but weaken a promise; `batchd check`
// prints them and `batchd serve` logs them.
func (e *Env) Warnings() []string {
	var w []string
	if e.NATS.URL != "" && e.NATS.Replicas < 3 {
		w = append(w, fmt.Sprintf("BATCHD_NATS_REPLICAS is %d on an external NATS cluster: every acknowledged event, run and schedule rests on %s disk; use 3 on a cluster of 3 or more JetStream nodes",
			e.NATS.Replicas, map[bool]string{true: "one node's", false: "two nodes'"}[e.NATS.Replicas < 2]))
	}
	return w
}

// HTTPLoopback reports whether HTTPAddr binds only the loopback interface.
func (e *Env) HTTPLoopback() bool {
	host, _, err := net.SplitHostPort(e.HTTPAddr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// secret takes a secret from its variable or from the file its _FILE variable
// names (the form systemd credentials and Kubernetes secrets produce).
func secret(p *problems, name, value, file string) string {
	if value != "" && file != "" {
		p.add(name, "set either %s or %s_FILE, not both", name, name)
		return ""
	}
	if file == "" {
		return value
	}
	b, err := os.ReadFile(file)
	if err != nil {
		p.add(name+"_FILE", "%v", err)
		return ""
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		p.add(name+"_FILE", "%s is empty", file)
	}
	return s
}

// splitList splits a comma-separated value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

func oneOf(p *problems, name, v string, allowed ...string) {
	if !slices.Contains(allowed, v) {
		p.add(name, "%q is not one of %s", v, strings.Join(allowed, ", "))
	}
}

func need(p *problems, name, v, because string) {
	if v == "" {
		p.add(name, "required with %s", because)
	}
}

func positiveInt(p *problems, name, v string) int {
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		p.add(name, "%q must be a positive integer", v)
		return 0
	}
	return n
}

func duration(p *problems, name, v string, min time.Duration) time.Duration {
	d, err := time.ParseDuration(v)
	if err != nil {
		p.add(name, "%q is not a duration like 30s, 5m or 168h", v)
		return 0
	}
	if d < min {
		p.add(name, "%s is below the minimum of %s", d, min)
		return 0
	}
	return d
}

// problems collects configuration errors so that all are reported at once.
type problems struct{ list []error }

func (p *problems) add(path, format string, args ...any) {
	p.list = append(p.list, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

func (p *problems) err() error {
	if len(p.list) == 0 {
		return nil
	}
	return &Error{Problems: p.list}
}

// FieldError is one configuration problem at one path: an environment
// variable, or a dotted path into the pipelines file.
type FieldError struct {
	Path string
	Line int // line in the pipelines file, when known
	Msg  string
}

func (e *FieldError) Error() string {
	if e.Line > 0 {
		return e.Path + ": " + e.Msg + " (line " + strconv.Itoa(e.Line) + ")"
	}
	return e.Path + ": " + e.Msg
}

// Error is every problem found in one load. Its message has one problem per
// line. errors.As finds it; cmd maps it to exit code 2.
type Error struct {
	// File is the pipelines file, when the problems are in it.
	File     string
	Problems []error
}

func (e *Error) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(p.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() []error { return e.Problems }

// IsConfigError reports whether err is (or wraps) a configuration problem.
func IsConfigError(err error) bool {
	var ce *Error
	var fe *FieldError
	return errors.As(err, &ce) || errors.As(err, &fe)
}

// Client is what the CLI's client commands (runs, pipelines) need to reach a
// running daemon: its address and API token. It ignores everything else, so a
// client shell does not need the daemon's credential settings.
type Client struct {
	// URL is the daemon's base URL, from BATCHD_URL or else
	// http://BATCHD_HTTP_ADDR.
	URL      string
	APIToken string // secret
}

type rawClient struct {
	URL          string `env:"BATCHD_URL"`
	HTTPAddr     string `env:"BATCHD_HTTP_ADDR, default=127.0.0.1:8080"`
	APIToken     string `env:"BATCHD_API_TOKEN"`
	APITokenFile string `env:"BATCHD_API_TOKEN_FILE"`
}

// LoadClient reads BATCHD_URL (or BATCHD_HTTP_ADDR) and the API token.
func LoadClient(ctx context.Context, l Lookuper) (*Client, error) {
	var raw rawClient
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &raw, Lookuper: l}); err != nil {
		return nil, fmt.Errorf("environment: %w", err)
	}
	p := &problems{}
	c := &Client{URL: strings.TrimRight(raw.URL, "/")}
	if c.URL == "" {
		host, port, err := net.SplitHostPort(raw.HTTPAddr)
		if err != nil {
			p.add("BATCHD_HTTP_ADDR", "%q is not host:port", raw.HTTPAddr)
		}
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		c.URL = "http://" + net.JoinHostPort(host, port)
	} else if u, err := url.Parse(c.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		p.add("BATCHD_URL", "%q is not an http(s) URL", raw.URL)
	}
	c.APIToken = secret(p, "BATCHD_API_TOKEN", raw.APIToken, raw.APITokenFile)
	if err := p.err(); err != nil {
		return nil, err
	}
	return c, nil
}
