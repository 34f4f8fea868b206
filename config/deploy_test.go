package config

// Tests that keep deploy/ honest: the files there restate facts that live in
// code or in the shared seeds (variable names and defaults, role actions,
// timeouts), and these tests fail when the two drift apart.

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats-server/v2/server"
	"go.yaml.in/yaml/v3"
)

const (
	deployDir = "../deploy"
	// The shared seeds sit beside the checkout (CI clones next to ../shared).
	seedsDir = "../../shared/seeds"
	// assign-roles.sh replaces this assignable scope.
	scopePlaceholder = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}"
)

// roleDefinition is the shape `az role definition create` takes.
type roleDefinition struct {
	Name             string
	IsCustom         bool
	Description      string
	Actions          []string
	NotActions       []string
	DataActions      []string
	NotDataActions   []string
	AssignableScopes []string
}

func readRole(t *testing.T, path string) roleDefinition {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	var r roleDefinition
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if !r.IsCustom || r.Name == "" || r.Description == "" {
		t.Errorf("%s: Name %q, IsCustom %v, Description %q: want a named, described custom role", path, r.Name, r.IsCustom, r.Description)
	}
	if len(r.NotActions)+len(r.DataActions)+len(r.NotDataActions) != 0 {
		t.Errorf("%s: NotActions %v, DataActions %v, NotDataActions %v: want none", path, r.NotActions, r.DataActions, r.NotDataActions)
	}
	if diff := cmp.Diff([]string{scopePlaceholder}, r.AssignableScopes); diff != "" {
		t.Errorf("%s: AssignableScopes (-want +got), assign-roles.sh replaces exactly this placeholder:\n%s", path, diff)
	}
	return r
}

// seedActions extracts the quoted strings of the `"actions": [ ... ]` list
// of the batch-endpoint authorization seed.
func seedActions(text string) ([]string, error) {
	_, rest, ok := strings.Cut(text, `"actions": [`)
	if !ok {
		return nil, errors.New(`no "actions": [ list`)
	}
	list, _, ok := strings.Cut(rest, "]")
	if !ok {
		return nil, errors.New("the actions list is not closed")
	}
	var out []string
	for _, m := range regexp.MustCompile(`"([^"]+)"`).FindAllStringSubmatch(list, -1) {
		out = append(out, m[1])
	}
	return out, nil
}

func TestDeployInvokerRoleHasExactlyTheSeedActions(t *testing.T) {
	f, err := os.Open(filepath.Join(deployDir, "azure/seed-actions.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var vendored []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		vendored = append(vendored, line)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if got := len(vendored); got != 35 {
		t.Errorf("seed-actions.txt has %d actions, want 35", got)
	}
	for _, a := range vendored {
		if !strings.HasPrefix(a, "Microsoft.MachineLearningServices/workspaces/") {
			t.Errorf("seed-actions.txt: %q is not a workspace action", a)
		}
	}

	role := readRole(t, filepath.Join(deployDir, "azure/batchd-invoker-role.json"))
	if got := len(role.Actions); got != 35 {
		t.Errorf("batchd-invoker-role.json has %d actions, want 35", got)
	}
	if dup := duplicates(role.Actions); len(dup) > 0 {
		t.Errorf("batchd-invoker-role.json repeats %v", dup)
	}
	if diff := cmp.Diff(sorted(vendored), sorted(role.Actions)); diff != "" {
		t.Errorf("batchd-invoker-role.json Actions differ from seed-actions.txt (-vendored +role):\n%s", diff)
	}

	seed, err := os.ReadFile(filepath.Join(seedsDir, "batch-endpoint-authorization.txt"))
	if errors.Is(err, fs.ErrNotExist) {
		t.Logf("%s/batch-endpoint-authorization.txt is not here; compared with the vendored list only", seedsDir)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	fromSeed, err := seedActions(string(seed))
	if err != nil {
		t.Fatalf("batch-endpoint-authorization.txt: %v", err)
	}
	if diff := cmp.Diff(fromSeed, vendored); diff != "" {
		t.Errorf("seed-actions.txt differs from the seed (-seed +vendored):\n%s", diff)
	}
}

func TestDeployOnlineScorerRole(t *testing.T) {
	const p = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/"
	want := []string{p + "read", p + "score/action", p + "token/action", p + "listKeys/action"}
	role := readRole(t, filepath.Join(deployDir, "azure/batchd-online-scorer-role.json"))
	if diff := cmp.Diff(sorted(want), sorted(role.Actions)); diff != "" {
		t.Errorf("batchd-online-scorer-role.json Actions (-want +got):\n%s", diff)
	}
	seed, err := os.ReadFile(filepath.Join(seedsDir, "online-endpoint-client-auth.txt"))
	if errors.Is(err, fs.ErrNotExist) {
		t.Logf("%s/online-endpoint-client-auth.txt is not here; skipped the comparison with it", seedsDir)
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range role.Actions {
		if !strings.Contains(string(seed), a) {
			t.Errorf("%s is not an action the online-endpoint seed names", a)
		}
	}
}

// envVar is one variable config reads, from a struct tag.
type envVar struct{ name, def string }

// envVars lists the env:"..." tags of the structs config loads.
func envVars(t *testing.T, structs ...any) []envVar {
	t.Helper()
	seen := map[string]string{}
	var out []envVar
	for _, s := range structs {
		typ := reflect.TypeOf(s)
		for i := range typ.NumField() {
			tag, ok := typ.Field(i).Tag.Lookup("env")
			if !ok {
				continue
			}
			name, opts, _ := strings.Cut(tag, ",")
			name = strings.TrimSpace(name)
			v := envVar{name: name}
			if _, d, ok := strings.Cut(opts, "default="); ok {
				v.def = d
			}
			if prev, ok := seen[name]; ok {
				if prev != v.def {
					t.Errorf("%s has defaults %q and %q in different structs", name, prev, v.def)
				}
				continue
			}
			seen[name] = v.def
			out = append(out, v)
		}
	}
	if len(out) < 30 {
		t.Fatalf("found %d env tags; is the reflection reading the right structs?", len(out))
	}
	return out
}

// envAssignment matches "NAME=value" and "# NAME=value" lines.
var envAssignment = regexp.MustCompile(`^#?\s*([A-Z][A-Z0-9_]*)=(.*)$`)

func TestDeployEnvExampleListsEveryVariable(t *testing.T) {
	path := filepath.Join(deployDir, "systemd/batchd.env.example")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	example := map[string][]string{} // name → values shown
	for line := range strings.Lines(string(b)) {
		if m := envAssignment.FindStringSubmatch(strings.TrimRight(line, "\n")); m != nil {
			example[m[1]] = append(example[m[1]], strings.TrimSpace(m[2]))
		}
	}
	known := map[string]bool{}
	for _, v := range envVars(t, rawEnv{}, rawClient{}) {
		known[v.name] = true
		got, ok := example[v.name]
		switch {
		case !ok:
			t.Errorf("%s: %s is missing", path, v.name)
		case len(got) != 1:
			t.Errorf("%s: %s appears %d times, want once", path, v.name, len(got))
		case got[0] != v.def:
			t.Errorf("%s: %s=%q, want the default %q", path, v.name, got[0], v.def)
		}
	}
	for name := range example {
		if !known[name] {
			t.Errorf("%s: %s is not a variable batchd reads", path, name)
		}
	}
}

// defaultOf is the env tag default of name in rawEnv.
func defaultOf(t *testing.T, name string) string {
	t.Helper()
	for _, v := range envVars(t, rawEnv{}, rawClient{}) {
		if v.name == name {
			return v.def
		}
	}
	t.Fatalf("no variable %s", name)
	return ""
}

// stopMargin is how much longer than BATCHD_SHUTDOWN_GRACE a supervisor must
// wait before it kills batchd: time to close NATS and flush JetStream.
const stopMargin = 10 * time.Second

func shutdownGrace(t *testing.T) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(defaultOf(t, "BATCHD_SHUTDOWN_GRACE"))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestDeploySystemdUnitMatchesConfig(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(deployDir, "systemd/batchd.service"))
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string][]string{}
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("batchd.service: %q is not Key=Value", line)
			continue
		}
		unit[k] = append(unit[k], v)
	}
	one := func(k string) string {
		if len(unit[k]) != 1 {
			t.Errorf("batchd.service: %s set %d times, want once", k, len(unit[k]))
			return ""
		}
		return unit[k][0]
	}
	for k, want := range map[string]string{
		"User":            "batchd",
		"EnvironmentFile": "/etc/batchd/batchd.env",
		"ExecStart":       "/usr/local/bin/batchd serve",
		"KillSignal":      "SIGTERM",
		"Restart":         "on-failure",
		"UMask":           "0077",
	} {
		if got := one(k); got != want {
			t.Errorf("batchd.service: %s=%s, want %s", k, got, want)
		}
	}
	if got, want := "/var/lib/"+one("StateDirectory"), defaultOf(t, "BATCHD_STATE_DIR"); got != want {
		t.Errorf("StateDirectory makes %s, but BATCHD_STATE_DIR defaults to %s", got, want)
	}
	stop, err := time.ParseDuration(one("TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if grace := shutdownGrace(t); stop < grace+stopMargin {
		t.Errorf("TimeoutStopSec=%s, want at least BATCHD_SHUTDOWN_GRACE (%s) + %s", stop, grace, stopMargin)
	}
	if got := one("RestrictAddressFamilies"); got != "AF_INET AF_INET6 AF_UNIX" {
		t.Errorf("RestrictAddressFamilies=%s", got)
	}
	for _, k := range []string{"NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "LockPersonality",
		"MemoryDenyWriteExecute", "RestrictNamespaces", "RestrictRealtime", "ProtectKernelTunables", "ProtectKernelModules"} {
		if got := one(k); got != "yes" {
			t.Errorf("%s=%s, want yes", k, got)
		}
	}
	if got := one("ProtectSystem"); got != "strict" {
		t.Errorf("ProtectSystem=%s, want strict", got)
	}
	if got := one("CapabilityBoundingSet"); got != "" {
		t.Errorf("CapabilityBoundingSet=%s, want empty", got)
	}
}

// yamlDocs decodes every document of a (multi-document) YAML file.
func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	dec := yaml.NewDecoder(f)
	var docs []map[string]any
	for {
		var d map[string]any
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: document %d: %v", path, len(docs)+1, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML document", path)
	}
	return docs
}

// dig walks maps and lists: dig(doc, "spec", "template", "spec", "containers", 0).
func dig(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func TestDeployKubernetesManifests(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join(deployDir, "kubernetes/*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string]map[string]any{}
	policies := map[string]map[string]any{} // NetworkPolicies by namespace
	var natsValues map[string]any
	for _, p := range paths {
		docs := yamlDocs(t, p)
		if filepath.Base(p) == "nats-values.yaml" { // Helm values, not a manifest
			natsValues = docs[0]
			continue
		}
		for i, d := range docs {
			api, _ := d["apiVersion"].(string)
			kind, _ := d["kind"].(string)
			if api == "" || kind == "" {
				t.Errorf("%s: document %d has no apiVersion or kind", p, i+1)
				continue
			}
			byKind[kind] = d
			if kind == "NetworkPolicy" {
				ns, _ := dig(d, "metadata", "namespace").(string)
				policies[ns] = d
			}
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "Kustomization"} {
		if byKind[k] == nil {
			t.Errorf("no %s in deploy/kubernetes", k)
		}
	}
	if t.Failed() {
		return
	}

	// Every file in the directory is either in the kustomization or
	// deliberately optional (ingress) or not a manifest (Helm values).
	var resources []string
	for _, r := range byKind["Kustomization"]["resources"].([]any) {
		resources = append(resources, r.(string))
	}
	for _, p := range paths {
		b := filepath.Base(p)
		if b == "kustomization.yaml" || b == "nats-values.yaml" || b == "ingress.yaml" {
			continue
		}
		if !slices.Contains(resources, b) {
			t.Errorf("kustomization.yaml does not list %s", b)
		}
	}

	// The pipelines file in the ConfigMap is valid.
	pipelines, _ := dig(byKind["ConfigMap"], "data", "pipelines.yaml").(string)
	pf := filepath.Join(t.TempDir(), "pipelines.yaml")
	if err := os.WriteFile(pf, []byte(pipelines), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(pf); err != nil {
		t.Errorf("configmap.yaml pipelines.yaml: %v", err)
	}

	dep := byKind["Deployment"]
	if got := dig(dep, "spec", "replicas"); got != 2 {
		t.Errorf("Deployment replicas = %v, want 2", got)
	}
	if got := dig(dep, "spec", "template", "metadata", "labels", "azure.workload.identity/use"); got != "true" {
		t.Errorf(`pod label azure.workload.identity/use = %#v, want "true"`, got)
	}
	if got := dig(byKind["ServiceAccount"], "metadata", "annotations", "azure.workload.identity/client-id"); got == nil {
		t.Error("the ServiceAccount has no azure.workload.identity/client-id annotation")
	}
	if grace, ok := dig(dep, "spec", "template", "spec", "terminationGracePeriodSeconds").(int); !ok ||
		time.Duration(grace)*time.Second < shutdownGrace(t)+stopMargin {
		t.Errorf("terminationGracePeriodSeconds = %v, want at least BATCHD_SHUTDOWN_GRACE + %s", grace, stopMargin)
	}
	c := dig(dep, "spec", "template", "spec", "containers", 0)
	for probe, want := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		if got := dig(c, probe, "httpGet", "path"); got != want {
			t.Errorf("%s path = %v, want %s", probe, got, want)
		}
	}
	sc := dig(c, "securityContext")
	if dig(sc, "readOnlyRootFilesystem") != true || dig(sc, "allowPrivilegeEscalation") != false ||
		!reflect.DeepEqual(dig(sc, "capabilities", "drop"), []any{"ALL"}) {
		t.Errorf("container securityContext = %v, want read-only root, no privilege escalation, drop ALL", sc)
	}
	if dig(dep, "spec", "template", "spec", "securityContext", "runAsNonRoot") != true {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}

	// The container's environment loads: names are real variables, values
	// valid, and a non-loopback address comes with an API token.
	env := map[string]string{
		// What the workload identity webhook injects.
		"AZURE_CLIENT_ID":            "00000000-0000-0000-0000-000000000000",
		"AZURE_TENANT_ID":            "00000000-0000-0000-0000-000000000000",
		"AZURE_FEDERATED_TOKEN_FILE": "/var/run/secrets/azure/tokens/azure-identity-token",
	}
	known := map[string]bool{}
	for _, v := range envVars(t, rawEnv{}, rawClient{}) {
		known[v.name] = true
	}
	secrets := t.TempDir()
	for _, e := range dig(c, "env").([]any) {
		name, _ := dig(e, "name").(string)
		value, hasValue := dig(e, "value").(string)
		if strings.HasPrefix(name, "BATCHD_") && !known[name] {
			t.Errorf("Deployment sets %s, which batchd does not read", name)
		}
		if !hasValue {
			continue
		}
		if strings.HasSuffix(name, "_FILE") { // a mounted secret: stand one in
			value = filepath.Join(secrets, filepath.Base(value))
			if err := os.WriteFile(value, []byte("s3cret-for-the-test"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		env[name] = value
	}
	e, err := LoadEnv(t.Context(), MapEnv(env))
	if err != nil {
		t.Fatalf("the Deployment's environment does not load:\n%v", err)
	}
	if e.Credential.Kind != "workload-identity" {
		t.Errorf("BATCHD_CREDENTIAL = %s, want workload-identity", e.Credential.Kind)
	}
	if !e.HTTPLoopback() && e.APIToken == "" {
		t.Errorf("BATCHD_HTTP_ADDR=%s is not loopback but no API token is set", e.HTTPAddr)
	}
	if e.NATS.URL == "" {
		t.Error("BATCHD_NATS_URL is empty: replicas would each run their own embedded NATS")
	}

	// NATS: batchd authenticates with its NKey and verifies the servers'
	// certificate, both from the mounted Secret; the chart's values turn on
	// client and route TLS and admit only that NKey; a policy in the NATS
	// namespace admits clients only from batchd's pods.
	if e.NATS.NKey == "" || e.NATS.TLSCA == "" {
		t.Errorf("BATCHD_NATS_NKEY %q, BATCHD_NATS_TLS_CA %q: want both set", e.NATS.NKey, e.NATS.TLSCA)
	}
	mounted := map[string]string{} // mount path → volume
	for _, m := range dig(c, "volumeMounts").([]any) {
		mounted[dig(m, "mountPath").(string)] = dig(m, "name").(string)
	}
	secretOf := map[string]string{} // volume → Secret
	for _, v := range dig(dep, "spec", "template", "spec", "volumes").([]any) {
		if name, _ := dig(v, "secret", "secretName").(string); name != "" {
			secretOf[dig(v, "name").(string)] = name
		}
	}
	for _, f := range []string{e.NATS.NKey, e.NATS.TLSCA} {
		if got := secretOf[mounted[filepath.Dir(f)]]; got != "batchd-nats" {
			t.Errorf("%s is not in a mount of the Secret batchd-nats (mounted from %q)", f, got)
		}
	}
	for _, path := range [][]any{{"config", "nats", "tls", "enabled"}, {"config", "cluster", "tls", "enabled"}, {"tlsCA", "enabled"}} {
		if dig(natsValues, path...) != true {
			t.Errorf("nats-values.yaml %v is not true", path)
		}
	}
	if nk, _ := dig(natsValues, "config", "merge", "authorization", "users", 0, "nkey").(string); !strings.HasPrefix(nk, "U") {
		t.Errorf("nats-values.yaml admits no NKey user (config.merge.authorization.users[0].nkey = %q)", nk)
	}
	np := policies["nats"]
	clients := map[string]any{}
	for _, rule := range toAny(dig(np, "spec", "ingress")) {
		for _, port := range toAny(dig(rule, "ports")) {
			if dig(port, "port") == 4222 {
				clients = rule.(map[string]any)
			}
		}
	}
	from := dig(clients, "from", 0)
	if len(toAny(dig(clients, "from"))) != 1 || dig(from, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name") != "batchd" ||
		dig(from, "podSelector", "matchLabels", "app.kubernetes.io/name") != "batchd" {
		t.Errorf("the NATS NetworkPolicy's rule for port 4222 admits %v, want only batchd's pods in namespace batchd", dig(clients, "from"))
	}
	if dig(np, "spec", "podSelector", "matchLabels", "app.kubernetes.io/name") != "nats" {
		t.Errorf("the NATS NetworkPolicy selects %v, want the chart's nats pods", dig(np, "spec", "podSelector"))
	}
	if ports := toAny(dig(policies["batchd"], "spec", "ingress", 0, "ports")); len(ports) != 1 || dig(ports[0], "port") != 8080 {
		t.Errorf("batchd's NetworkPolicy admits ports %v, want 8080 only", ports)
	}
}

func toAny(v any) []any {
	l, _ := v.([]any)
	return l
}

func TestDeployCloudInitCarriesTheRepositoryFiles(t *testing.T) {
	path := filepath.Join(deployDir, "azure/cloud-init.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), "#cloud-config\n") {
		t.Errorf("%s does not start with #cloud-config", path)
	}
	docs := yamlDocs(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s has %d documents, want 1", path, len(docs))
	}
	sources := map[string]string{
		"install.sh":         filepath.Join(deployDir, "azure/install.sh"),
		"batchd.service":     filepath.Join(deployDir, "systemd/batchd.service"),
		"batchd.env.example": filepath.Join(deployDir, "systemd/batchd.env.example"),
	}
	files, _ := docs[0]["write_files"].([]any)
	found := map[string]bool{}
	for _, f := range files {
		target, _ := dig(f, "path").(string)
		content, _ := dig(f, "content").(string)
		src, ok := sources[filepath.Base(target)]
		if !ok {
			t.Errorf("%s writes %s, which has no source here", path, target)
			continue
		}
		found[filepath.Base(target)] = true
		want, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if content != string(want) {
			t.Errorf("%s: the copy of %s is stale; run deploy/azure/sync-cloud-init.sh\n%s",
				path, src, cmp.Diff(string(want), content))
		}
	}
	for name := range sources {
		if !found[name] {
			t.Errorf("%s does not write %s", path, name)
		}
	}
	runcmd := dig(docs[0], "runcmd", 0)
	if !strings.Contains(strings.Join(toStrings(runcmd), " "), "install.sh") {
		t.Errorf("%s runcmd[0] = %v, want it to run install.sh", path, runcmd)
	}
}

// The cluster files parse as nats-server reads them (with the TLS files
// make-tls.sh makes in place of /etc/nats/tls): cmd/batchd's
// TestDeployNATSClusterFilesServeBatchd runs them as a cluster.
func TestDeployNATSClusterConfigs(t *testing.T) {
	tlsDir := t.TempDir()
	if out, err := exec.Command("bash", filepath.Join(deployDir, "nats", "make-tls.sh"), "--out", tlsDir, "--names", "n1,n2,n3").CombinedOutput(); err != nil {
		t.Fatalf("make-tls.sh: %v\n%s", err, out)
	}
	for i := 1; i <= 3; i++ {
		path := filepath.Join(deployDir, "nats", "nats-"+strconv.Itoa(i)+".conf")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		local := filepath.Join(tlsDir, filepath.Base(path))
		if err := os.WriteFile(local, []byte(strings.ReplaceAll(string(b), "/etc/nats/tls/", tlsDir+"/")), 0o600); err != nil {
			t.Fatal(err)
		}
		opts, err := server.ProcessConfigFile(local)
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if opts.TLSConfig == nil {
			t.Errorf("%s: no client TLS", path)
		}
		if opts.Cluster.TLSConfig == nil || opts.Cluster.TLSConfig.ClientAuth != tls.RequireAndVerifyClientCert {
			t.Errorf("%s: routes without mutual TLS", path)
		}
		if want := "n" + strconv.Itoa(i); opts.ServerName != want {
			t.Errorf("%s: server_name %s, want %s", path, opts.ServerName, want)
		}
		if !opts.JetStream || opts.StoreDir == "" {
			t.Errorf("%s: JetStream %v, store_dir %q: want JetStream with a store", path, opts.JetStream, opts.StoreDir)
		}
		if opts.Cluster.Name != "batchd" || opts.Cluster.Port != 6222 || len(opts.Routes) != 3 {
			t.Errorf("%s: cluster %q port %d with %d routes, want batchd on 6222 with 3", path, opts.Cluster.Name, opts.Cluster.Port, len(opts.Routes))
		}
		if len(opts.Nkeys) != 1 {
			t.Errorf("%s: %d NKey users, want 1 (batchd)", path, len(opts.Nkeys))
		}
		if opts.HTTPHost != "127.0.0.1" {
			t.Errorf("%s: monitoring on %q, want loopback", path, opts.HTTPHost)
		}
	}
}

func toStrings(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

func duplicates(s []string) []string {
	seen := map[string]bool{}
	var dup []string
	for _, x := range s {
		if seen[x] {
			dup = append(dup, x)
		}
		seen[x] = true
	}
	return dup
}

// The Event Grid subscription script's workspace form subscribes the
// workspace's two job event types and nothing else, with the secret only
// in a file az reads. az is a stand-in that records its arguments.
func TestDeployEventGridSubscriptionWorkspaceForm(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	calls := filepath.Join(dir, "calls")
	fakeAz := `#!/usr/bin/env bash
printf '%s\n' "$*" >>"` + calls + `"
case "$1 $2 $3" in
  "account show "*) echo 00000000-0000-0000-0000-000000000001 ;;
  "provider show "*) echo Registered ;;
  "resource show "*) echo /subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/ml-rg/providers/Microsoft.MachineLearningServices/workspaces/ml-ws ;;
  "eventgrid event-subscription show") [[ -f "` + dir + `/created" ]] || exit 3 ;;
  "eventgrid event-subscription create")
    for a in "$@"; do [[ $a == @* ]] && cp "${a#@}" "` + dir + `/endpoint"; done
    touch "` + dir + `/created" ;;
esac
`
	if err := os.WriteFile(filepath.Join(dir, "az"), []byte(fakeAz), 0o755); err != nil {
		t.Fatal(err)
	}
	secret := "0123456789abcdef0123456789abcdef"
	if err := os.WriteFile(filepath.Join(dir, "secret"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", "../deploy/azure/create-eventgrid-subscription.sh", "--workspace", "ml-ws",
		"--resource-group", "ml-rg", "--host", "batchd.example.com", "--secret-file", filepath.Join(dir, "secret"))
	cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("script: %v\n%s", err, out)
	}
	b, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	var create string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "eventgrid event-subscription create") {
			create = line
		}
	}
	for _, want := range []string{
		"--name batchd-jobs-ml-ws",
		"--source-resource-id /subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/ml-rg/providers/Microsoft.MachineLearningServices/workspaces/ml-ws",
		"--included-event-types Microsoft.MachineLearningServices.RunStatusChanged Microsoft.MachineLearningServices.RunCompleted",
	} {
		if !strings.Contains(create, want) {
			t.Errorf("az eventgrid event-subscription create %q lacks %q", create, want)
		}
	}
	if strings.Contains(create, "data.api") || strings.Contains(create, "BlobCreated") {
		t.Errorf("the workspace subscription carries blob filters: %s", create)
	}
	if strings.Contains(string(b), secret) || strings.Contains(string(out), secret) {
		t.Error("the webhook secret reached az's arguments or the script's output")
	}
	if ep, _ := os.ReadFile(filepath.Join(dir, "endpoint")); strings.TrimSpace(string(ep)) != "https://batchd.example.com/eventgrid?code="+secret {
		t.Errorf("endpoint file %q", ep)
	}
}

// The minimal invoker role: invoke, job read and cancel; every action it
// has is Microsoft's or one of batchd's two ARM job actions; the README's
// table explains every action of both roles and marks exactly the minimal
// role's; assign-roles.sh --minimal-role creates and assigns it.
func TestDeployMinimalInvokerRole(t *testing.T) {
	t.Parallel()
	full := readRole(t, filepath.Join(deployDir, "azure/batchd-invoker-role.json"))
	minimal := readRole(t, filepath.Join(deployDir, "azure/batchd-invoker-minimal-role.json"))
	const ws = "Microsoft.MachineLearningServices/workspaces/"
	jobActions := []string{ws + "jobs/read", ws + "jobs/cancel/action"}
	for _, a := range minimal.Actions {
		if !slices.Contains(full.Actions, a) && !slices.Contains(jobActions, a) {
			t.Errorf("the minimal role has %s, which is neither Microsoft's nor a job action batchd calls", a)
		}
	}
	for _, a := range append([]string{ws + "batchEndpoints/jobs/write", ws + "batchEndpoints/deployments/jobs/write"}, jobActions...) {
		if !slices.Contains(minimal.Actions, a) {
			t.Errorf("the minimal role lacks %s, which batchd calls", a)
		}
	}
	if dup := duplicates(minimal.Actions); len(dup) > 0 {
		t.Errorf("the minimal role repeats %v", dup)
	}

	b, err := os.ReadFile(filepath.Join(deployDir, "azure/README.md"))
	if err != nil {
		t.Fatal(err)
	}
	marked := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `([a-zA-Z/]+)`[^|]* \\| .+ \\| (yes|no) \\|$").FindAllStringSubmatch(string(b), -1) {
		marked[ws+m[1]] = m[2]
	}
	var inMinimal []string
	for a, m := range marked {
		if m == "yes" {
			inMinimal = append(inMinimal, a)
		}
	}
	if diff := cmp.Diff(sorted(minimal.Actions), sorted(inMinimal)); diff != "" {
		t.Errorf("README marks the minimal role's actions wrongly (-role +README):\n%s", diff)
	}
	for _, a := range append(slices.Clone(full.Actions), jobActions...) {
		if _, ok := marked[a]; !ok {
			t.Errorf("README's action table has no row for %s", a)
		}
	}

	// assign-roles.sh --minimal-role, with az a stand-in that records what
	// it is asked and keeps the role definition it is given.
	dir := t.TempDir()
	fakeAz := `#!/usr/bin/env bash
printf '%s\n' "$*" >>"` + dir + `/calls"
case "$1 $2 $3" in
  "account show "*) echo 00000000-0000-0000-0000-000000000001 ;;
  "vm show "*) echo 00000000-0000-0000-0000-0000000000bb ;;
  "role definition create") for a in "$@"; do [[ -f $a ]] && cp "$a" "` + dir + `/role.json"; done ;;
  "role assignment list") echo 0 ;;
esac
exit 0
`
	if err := os.WriteFile(filepath.Join(dir, "az"), []byte(fakeAz), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(deployDir, "azure/assign-roles.sh"), "--resource-group", "ml-rg", "--workspace", "ml-ws",
		"--vm", "batchd-vm", "--minimal-role")
	cmd.Env = append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("assign-roles.sh --minimal-role: %v\n%s", err, out)
	}
	var created roleDefinition
	rb, err := os.ReadFile(filepath.Join(dir, "role.json"))
	if err != nil {
		t.Fatalf("no role definition was created: %v", err)
	}
	if err := json.Unmarshal(rb, &created); err != nil {
		t.Fatalf("the created role is not JSON: %v\n%s", err, rb)
	}
	if created.Name != "batchd batch-endpoint invoker (minimal)" || !slices.Equal(created.Actions, minimal.Actions) {
		t.Errorf("created role %q with %d actions, want the minimal role's %d", created.Name, len(created.Actions), len(minimal.Actions))
	}
	calls, _ := os.ReadFile(filepath.Join(dir, "calls"))
	if !strings.Contains(string(calls), `role assignment create --subscription 00000000-0000-0000-0000-000000000001 --assignee-object-id 00000000-0000-0000-0000-0000000000bb --assignee-principal-type ServicePrincipal --role batchd batch-endpoint invoker (minimal) --scope /subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/ml-rg/providers/Microsoft.MachineLearningServices/workspaces/ml-ws`) {
		t.Errorf("the minimal role was not assigned on the workspace; az calls:\n%s", calls)
	}
}
