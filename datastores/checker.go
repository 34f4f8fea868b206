package datastores

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// Check names. They are stable identifiers: operators grep for them, and
// `batchd explain` prints them.
//
//	deployment-kind        the request's deployment kind is known (emitted only when it is not)
//	input-count            model deployments take exactly one input
//	output-count           model deployments take at most one output
//	input-type             UriFile | UriFolder; Literal only for pipeline deployments; MLTable rejected
//	output-type            UriFile | UriFolder
//	classify               the URI is one of the accepted forms (Classify); warn for ADLS Gen1
//	datastore-declared     an azureml:// datastore is declared under datastores: in the pipelines file
//	allow-list             the location is inside the pipeline's allow-list
//	input-exists           the file exists / the folder holds at least one file
//	input-nonempty         the file is not empty / the folder has a non-empty file at its top level
//	folder-flat            the folder has files at its top level, not only in sub-folders
//	output-datastore       the output is a path in a declared Blob datastore
//	output-absent          the output path does not exist yet
//	rbac-compute-identity  which identity needs which storage role (warn when RBAC applies)
//	posix-acls             POSIX ACLs the job's identities need (ADLS Gen1/Gen2)
const (
	CheckDeploymentKind    = "deployment-kind"
	CheckInputCount        = "input-count"
	CheckOutputCount       = "output-count"
	CheckInputType         = "input-type"
	CheckOutputType        = "output-type"
	CheckClassify          = "classify"
	CheckDatastoreDeclared = "datastore-declared"
	CheckAllowList         = "allow-list"
	CheckInputExists       = "input-exists"
	CheckInputNonEmpty     = "input-nonempty"
	CheckFolderFlat        = "folder-flat"
	CheckOutputDatastore   = "output-datastore"
	CheckOutputAbsent      = "output-absent"
	CheckRBAC              = "rbac-compute-identity"
	CheckPOSIX             = "posix-acls"
)

// Input and output types of batch jobs.
const (
	TypeUriFile   = "UriFile"
	TypeUriFolder = "UriFolder"
	TypeMLTable   = "MLTable"
	TypeLiteral   = "Literal"
)

// Defaults of CheckerOptions.
const (
	DefaultCacheTTL     = 30 * time.Second
	DefaultProbeTimeout = 10 * time.Second
	defaultIdentity     = "the daemon's Microsoft Entra credential"
	maxCacheEntries     = 4096
)

// CheckerOptions configure a Checker.
type CheckerOptions struct {
	// Datastores are the pipelines file's `datastores:` entries, by name.
	Datastores map[string]Datastore
	// Storage reaches storage accounts; nil leaves every storage check a
	// warning ("not checked").
	Storage *Storage
	// CacheTTL is how long a positive input probe (the file exists and is
	// not empty; the folder has a non-empty file at its top level) is reused.
	// 0 means DefaultCacheTTL; negative disables the cache.
	CacheTTL time.Duration
	Logger   *slog.Logger
	// Now is the clock (Decision.At and cache expiry); nil is time.Now.
	Now func() time.Time
	// ProbeTimeout bounds each storage request of a check; 0 means
	// DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// Identity names the daemon's own Entra identity in messages, e.g.
	// "managed identity (client id 1234…)"; empty says "the daemon's
	// Microsoft Entra credential". It must not hold a secret.
	Identity string
}

// Checker runs the data-access preflight of a job: it classifies every
// input and output, applies the rule table, and asks storage what it can
// with batchd's own access. It is safe for concurrent use and starts no
// goroutine.
//
// How an account is reached: always through Storage. Datastore URIs resolve
// to the declared datastore's account and container, and that account's
// endpoint comes from Storage (an explicit BlobEndpoint, or the public
// endpoint under Storage's suffix). A blob or dfs URL is checked at the
// account's configured endpoint when there is one (so a production URL can
// be checked against Azurite); otherwise only when the URL's own endpoint is
// the one Storage would use. A URL naming any other endpoint (another cloud,
// an unconfigured Azurite, a loopback port) is not contacted: the check is a
// warning that says so. An event therefore cannot make batchd send requests
// to a host outside the operator's configuration: the explicit endpoints,
// and the public endpoints <account>.blob.<Suffix> of the configured cloud.
// Which accounts of that cloud an event may name is the pipeline's
// allow-list (AllowList.Accounts), which is applied before any request: an
// event outside it reaches no storage at all. Without one, the public
// endpoint of any account the event names is asked, with the daemon's
// credential when the account is not configured.
//
// Caching: positive input probes are cached per (endpoint, container, path,
// file|folder) for CacheTTL. The eTag is not part of the key because it is
// not known before asking; it is recorded in the cached result and shown in
// the reason. Negative results (missing, empty, nested-only) are never cached,
// since a file may arrive a moment later; nor are output-absent results (a job
// may create the output) or results that could not be obtained (403,
// unreachable).
type Checker struct {
	datastores   map[string]Datastore
	storage      *Storage
	ttl          time.Duration
	probeTimeout time.Duration
	log          *slog.Logger
	now          func() time.Time
	identity     string
	scrubber     *strings.Replacer

	mu    sync.Mutex
	cache map[probeKey]cacheEntry
}

// NewChecker returns a Checker. It connects to nothing until Check.
func NewChecker(opts CheckerOptions) *Checker {
	c := &Checker{
		datastores:   make(map[string]Datastore, len(opts.Datastores)),
		storage:      opts.Storage,
		ttl:          opts.CacheTTL,
		probeTimeout: opts.ProbeTimeout,
		log:          opts.Logger,
		now:          opts.Now,
		identity:     opts.Identity,
		cache:        map[probeKey]cacheEntry{},
	}
	for name, d := range opts.Datastores {
		if d.Name == "" {
			d.Name = name
		}
		c.datastores[name] = d
	}
	if c.ttl == 0 {
		c.ttl = DefaultCacheTTL
	}
	if c.probeTimeout <= 0 {
		c.probeTimeout = DefaultProbeTimeout
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.identity == "" {
		c.identity = defaultIdentity
	}
	var pairs []string
	if c.storage != nil {
		secrets := c.storage.secrets()
		// Longest first, so that a SAS string is replaced whole before its
		// signature is.
		slices.SortFunc(secrets, func(a, b string) int { return len(b) - len(a) })
		for _, s := range secrets {
			pairs = append(pairs, s, "<redacted>")
		}
	}
	c.scrubber = strings.NewReplacer(pairs...)
	return c
}

// decision accumulates checks.
type decision struct {
	Decision
	c *Checker
}

func (d *decision) add(name, subject string, r Result, format string, args ...any) {
	reason := fmt.Sprintf(format, args...)
	d.Checks = append(d.Checks, Check{Name: name, Subject: subject, Result: r, Reason: d.c.scrub(reason)})
}

// scrub removes configured secrets and query strings from text that leaves
// the package: reasons and log lines.
func (c *Checker) scrub(s string) string {
	return scrubQueries(c.scrubber.Replace(s))
}

// Check runs the preflight for one job. It never fails: what it cannot
// check is a warning in the Decision. The verdict is Reject exactly when
// some check failed; Reason is then the first failing check, as
// "<check> <subject>: <reason>".
//
// If ctx ends during Check, the storage checks not yet answered are
// warnings ("the check was interrupted") and the verdict can be Allow: such
// a Decision was not a complete preflight. A caller that acts on the
// verdict checks ctx.Err() first.
func (c *Checker) Check(ctx context.Context, req Request) Decision {
	d := &decision{Decision: Decision{At: c.now(), Access: []Access{}, Checks: []Check{}}, c: c}
	kind := req.Deployment
	if kind == "" {
		kind = DeploymentModel
	}
	if kind != DeploymentModel && kind != DeploymentPipeline {
		d.add(CheckDeploymentKind, "", Fail, "deployment kind %q is unknown: want %q or %q", kind, DeploymentModel, DeploymentPipeline)
		kind = DeploymentModel // check the rest by the stricter rules
	}
	c.checkCounts(d, kind, req)
	for _, in := range req.Inputs {
		c.checkIO(ctx, d, req, kind, in, false)
	}
	for _, out := range req.Outputs {
		c.checkIO(ctx, d, req, kind, out, true)
	}

	d.Verdict = Allow
	warnings := 0
	for _, ch := range d.Checks {
		switch ch.Result {
		case Fail:
			if d.Verdict == Allow {
				d.Verdict = Reject
				d.Reason = ch.Name
				if ch.Subject != "" {
					d.Reason += " " + ch.Subject
				}
				d.Reason += ": " + ch.Reason
			}
		case Warn:
			warnings++
		}
		if ch.Result != Pass {
			c.log.Debug("preflight check", "check", ch.Name, "subject", ch.Subject, "result", ch.Result, "reason", ch.Reason)
		}
	}
	c.log.Debug("preflight", "verdict", d.Verdict, "checks", len(d.Checks), "warnings", warnings, "reason", d.Reason)
	return d.Decision
}

func (c *Checker) checkCounts(d *decision, kind string, req Request) {
	if kind == DeploymentPipeline {
		d.add(CheckInputCount, "", Pass, "pipeline deployments take any number of inputs; got %d", len(req.Inputs))
		d.add(CheckOutputCount, "", Pass, "pipeline deployments take any number of outputs; got %d", len(req.Outputs))
		return
	}
	names := func(ios []IO) string {
		var n []string
		for _, io := range ios {
			n = append(n, io.Name)
		}
		return strings.Join(n, ", ")
	}
	switch len(req.Inputs) {
	case 1:
		d.add(CheckInputCount, "", Pass, "one input, as model deployments require")
	case 0:
		d.add(CheckInputCount, "", Fail, "model deployments take exactly one data input; the job has none")
	default:
		d.add(CheckInputCount, "", Fail, "model deployments take exactly one data input; the job has %d (%s)", len(req.Inputs), names(req.Inputs))
	}
	if len(req.Outputs) <= 1 {
		d.add(CheckOutputCount, "", Pass, "%s; model deployments take at most one", count(len(req.Outputs), false, "output"))
	} else {
		d.add(CheckOutputCount, "", Fail, "model deployments produce at most one data output; the job has %d (%s)", len(req.Outputs), names(req.Outputs))
	}
}

// ioTarget is one input or output under check.
type ioTarget struct {
	io      IO
	output  bool
	subject string
	typ     string // canonical type after checkType
	loc     Location
	ds      *Datastore
	rule    Rule
	hasRule bool
}

func (t *ioTarget) folder() bool { return t.typ == TypeUriFolder }

func (c *Checker) checkIO(ctx context.Context, d *decision, req Request, kind string, io IO, output bool) {
	t := &ioTarget{io: io, output: output, subject: "inputs." + io.Name}
	if output {
		t.subject = "outputs." + io.Name
	}
	if !c.checkType(d, t, kind) {
		return
	}
	if t.typ == TypeLiteral {
		return
	}
	if !c.classify(d, t) {
		return
	}
	if t.loc.Kind == KindDatastore && !c.resolve(d, t) {
		return
	}
	if !c.checkTypeAgainstPath(d, t) {
		return
	}
	d.Access = append(d.Access, c.access(t))
	if !c.checkAllow(d, t, req.Allow) {
		// Outside the allow-list: do not touch the storage an event pointed at.
		return
	}
	if output {
		c.checkOutputDatastore(d, t)
		c.checkOutputAbsent(ctx, d, t)
	} else {
		c.checkInputData(ctx, d, t)
	}
	c.checkIdentities(d, t)
}

// checkType validates io.Type and sets t.typ. It reports false when the IO
// cannot be checked further.
func (c *Checker) checkType(d *decision, t *ioTarget, kind string) bool {
	name := CheckInputType
	if t.output {
		name = CheckOutputType
	}
	typ := canonicalType(t.io.Type)
	switch {
	case t.io.Type == "":
		// Decided from the path once it is classified.
		return true
	case typ == "":
		hint := ""
		switch strings.ToLower(t.io.Type) {
		case "uri_file":
			hint = " (the CLI's uri_file is UriFile in the REST API)"
		case "uri_folder":
			hint = " (the CLI's uri_folder is UriFolder in the REST API)"
		case "mltable":
			hint = " (mltable is MLTable)"
		}
		d.add(name, t.subject, Fail, "type %q is unknown: want %s or %s%s", t.io.Type, TypeUriFile, TypeUriFolder, hint)
		return false
	}
	t.typ = typ
	switch {
	case typ == TypeLiteral && t.output:
		d.add(name, t.subject, Fail, "an output cannot be Literal: want %s or %s", TypeUriFile, TypeUriFolder)
		return false
	case typ == TypeLiteral && kind == DeploymentPipeline:
		d.add(name, t.subject, Pass, "Literal input to a pipeline deployment (a value; no storage is read)")
		return true
	case typ == TypeLiteral:
		d.add(name, t.subject, Fail, "Literal inputs work only with pipeline-component deployments; a model deployment takes one %s or %s input", TypeUriFile, TypeUriFolder)
		return false
	case typ == TypeMLTable && !t.output:
		d.add(name, t.subject, Fail, "MLTable inputs are not supported by batch endpoints: use %s or %s", TypeUriFile, TypeUriFolder)
		return false
	case typ == TypeMLTable:
		d.add(name, t.subject, Warn, "MLTable outputs are not documented for batch endpoints; %s or %s is the supported form", TypeUriFile, TypeUriFolder)
		t.typ = TypeUriFolder // an MLTable output is a folder
		return true
	}
	// UriFile / UriFolder: reported after classification, against the path.
	return true
}

func canonicalType(s string) string {
	for _, t := range []string{TypeUriFile, TypeUriFolder, TypeMLTable, TypeLiteral} {
		if strings.EqualFold(s, t) {
			return t
		}
	}
	return ""
}

func (c *Checker) classify(d *decision, t *ioTarget) bool {
	loc, err := Classify(t.io.URI)
	if err != nil {
		d.add(CheckClassify, t.subject, Fail, "%s", err.Error())
		return false
	}
	t.loc = loc
	if loc.Warning != "" {
		d.add(CheckClassify, t.subject, Warn, "%s: %s", describe(loc), loc.Warning)
	} else {
		d.add(CheckClassify, t.subject, Pass, "%s", describe(loc))
	}
	return true
}

// describe says in words what a Location names.
func describe(l Location) string {
	switch l.Kind {
	case KindDatastore:
		return fmt.Sprintf("datastore %q, path %q", l.Datastore, l.Path)
	case KindDataAsset:
		v := "version " + l.AssetVersion
		if l.AssetLabel != "" {
			v = "label " + l.AssetLabel
		}
		if l.Region != "" {
			return fmt.Sprintf("data asset %q %s in workspace %q (%s)", l.Asset, v, l.Workspace, l.Region)
		}
		return fmt.Sprintf("data asset %q %s in workspace %q", l.Asset, v, l.Workspace)
	case KindADLSGen1:
		return fmt.Sprintf("ADLS Gen1 account %q, path %q", l.Account, l.Path)
	case KindADLSGen2:
		return fmt.Sprintf("ADLS Gen2 account %q, filesystem %q, path %q", l.Account, l.Container, l.Path)
	default:
		return fmt.Sprintf("Azure Blob account %q, container %q, path %q", l.Account, l.Container, l.Path)
	}
}

func (c *Checker) resolve(d *decision, t *ioTarget) bool {
	loc, ds, err := ResolveDatastore(t.loc, c.datastores)
	if err != nil {
		d.add(CheckDatastoreDeclared, t.subject, Fail, "%s", err.Error())
		return false
	}
	t.loc, t.ds = loc, &ds
	where := fmt.Sprintf("container %q", ds.Container)
	switch ds.Kind {
	case DatastoreADLSGen2:
		where = fmt.Sprintf("filesystem %q", ds.Filesystem)
	case DatastoreADLSGen1:
		where = "the account root"
	}
	if ds.Kind == DatastoreADLSGen1 {
		d.add(CheckDatastoreDeclared, t.subject, Warn, "datastore %q (%s, credentials: %s) is account %q, %s: %s", ds.Name, ds.Kind, ds.Credentials, ds.Account, where, Gen1Retired)
		return true
	}
	d.add(CheckDatastoreDeclared, t.subject, Pass, "datastore %q (%s, credentials: %s) is account %q, %s", ds.Name, ds.Kind, ds.Credentials, ds.Account, where)
	return true
}

// checkTypeAgainstPath settles UriFile/UriFolder: the given type is the
// authority; without one, a trailing "/" means a folder.
func (c *Checker) checkTypeAgainstPath(d *decision, t *ioTarget) bool {
	name := CheckInputType
	if t.output {
		name = CheckOutputType
	}
	if t.loc.Kind == KindDataAsset {
		if t.typ == "" {
			t.typ = TypeUriFolder
			d.add(name, t.subject, Warn, "no type given for a data asset; the asset's own type decides (UriFile or UriFolder)")
		} else if t.typ != TypeMLTable {
			d.add(name, t.subject, Pass, "%s (must match the data asset's own type, which only Azure ML knows)", t.typ)
		}
		return true
	}
	switch t.typ {
	case "":
		t.typ = TypeUriFile
		if t.loc.Folder {
			t.typ = TypeUriFolder
		}
		d.add(name, t.subject, Pass, "no type given; %s from the path %q", t.typ, t.loc.Path)
	case TypeUriFile:
		if t.loc.Folder {
			d.add(name, t.subject, Fail, "type UriFile but the path %q is a folder (it is empty or ends in \"/\"): use UriFolder, or name the file", t.loc.Path)
			return false
		}
		d.add(name, t.subject, Pass, "UriFile")
	case TypeUriFolder:
		d.add(name, t.subject, Pass, "UriFolder")
	}
	return true
}

// access is the rule-table row for one IO.
func (c *Checker) access(t *ioTarget) Access {
	a := Access{
		Name: t.io.Name, Role: "input", URI: redactURI(t.io.URI), Type: t.typ, Kind: t.loc.Kind,
		Datastore: t.loc.Datastore, Account: t.loc.Account,
	}
	if t.output {
		a.Role = "output"
	}
	inStore := InStoreNotApply
	switch t.loc.Kind {
	case KindDatastore:
		inStore = InStoreNo
		if t.ds.Credentials == CredentialsAccountKey || t.ds.Credentials == CredentialsSAS {
			inStore = InStoreYes
		}
	case KindDataAsset:
		a.CredentialInStore = InStoreUnknown
		a.CredentialsUsed = CredentialsDatastore + " if the asset's datastore holds credentials; otherwise " + CredentialsJobAndCompute
		a.AccessGrantedBy = GrantedByKeyOrSAS + ", or " + GrantedByRBAC
		return a
	}
	r, ok := LookupRule(t.loc.Kind, inStore)
	t.rule, t.hasRule = r, ok
	a.CredentialInStore, a.CredentialsUsed, a.AccessGrantedBy = inStore, r.CredentialsUsed, r.AccessGrantedBy
	return a
}

// checkAllow applies the pipeline's allow-list. Every non-empty list must
// admit the location: Accounts by account name, Containers by container (or
// "account/container"), Datastores by datastore name (a storage URL has none,
// so a Datastores list admits only datastore URIs), Prefixes by the path
// inside the container (a folder is matched with its trailing "/"). A data
// asset's location is unknown without Azure ML, so any non-empty list
// rejects it.
func (c *Checker) checkAllow(d *decision, t *ioTarget, a AllowList) bool {
	if len(a.Accounts)+len(a.Containers)+len(a.Datastores)+len(a.Prefixes) == 0 {
		d.add(CheckAllowList, t.subject, Pass, "the pipeline has no allow-list; any location is accepted")
		return true
	}
	l := t.loc
	if l.Kind == KindDataAsset {
		d.add(CheckAllowList, t.subject, Fail, "a data asset's storage location is known only to Azure ML, so it cannot be matched against the pipeline's allow-list: use a datastore path instead")
		return false
	}
	if len(a.Accounts) > 0 && !slices.ContainsFunc(a.Accounts, func(s string) bool { return strings.EqualFold(s, l.Account) }) {
		d.add(CheckAllowList, t.subject, Fail, "storage account %q is not in the allow-list (accounts: %s)", l.Account, strings.Join(a.Accounts, ", "))
		return false
	}
	if len(a.Containers) > 0 && !slices.ContainsFunc(a.Containers, func(s string) bool {
		acct, cont, scoped := strings.Cut(s, "/")
		if !scoped {
			return strings.EqualFold(s, l.Container)
		}
		return strings.EqualFold(acct, l.Account) && strings.EqualFold(cont, l.Container)
	}) {
		d.add(CheckAllowList, t.subject, Fail, "container %q of account %q is not in the allow-list (containers: %s)", l.Container, l.Account, strings.Join(a.Containers, ", "))
		return false
	}
	if len(a.Datastores) > 0 && (l.Datastore == "" || !slices.ContainsFunc(a.Datastores, func(s string) bool { return strings.EqualFold(s, l.Datastore) })) {
		what := fmt.Sprintf("datastore %q", l.Datastore)
		if l.Datastore == "" {
			what = "a storage URL (not a datastore path)"
		}
		d.add(CheckAllowList, t.subject, Fail, "%s is not in the allow-list (datastores: %s)", what, strings.Join(a.Datastores, ", "))
		return false
	}
	p := l.Path
	if t.folder() && p != "" && !strings.HasSuffix(p, "/") {
		p += "/"
	}
	if len(a.Prefixes) > 0 && !slices.ContainsFunc(a.Prefixes, func(s string) bool { return strings.HasPrefix(p, strings.TrimPrefix(s, "/")) }) {
		d.add(CheckAllowList, t.subject, Fail, "path %q is not under an allowed prefix (prefixes: %s)", p, strings.Join(a.Prefixes, ", "))
		return false
	}
	d.add(CheckAllowList, t.subject, Pass, "inside the pipeline's allow-list")
	return true
}

func (c *Checker) checkOutputDatastore(d *decision, t *ioTarget) {
	l := t.loc
	switch {
	case l.Kind == KindDatastore && t.ds.Kind == DatastoreBlob:
		d.add(CheckOutputDatastore, t.subject, Pass, "datastore %q is a Blob datastore", l.Datastore)
	case l.Kind == KindDatastore:
		d.add(CheckOutputDatastore, t.subject, Fail, "datastore %q is %s: batch job outputs go only to Blob datastores (register ADLS Gen2 storage as a Blob datastore to write to it)", l.Datastore, t.ds.Kind)
	case l.Kind == KindADLSGen1:
		d.add(CheckOutputDatastore, t.subject, Fail, "ADLS Gen1 cannot take batch job outputs (and is retired): use a Blob datastore path azureml://datastores/<ds>/paths/<path>")
	case l.Kind == KindDataAsset:
		d.add(CheckOutputDatastore, t.subject, Fail, "a data asset cannot be a batch job output: use a Blob datastore path azureml://datastores/<ds>/paths/<path>")
	default:
		hint := "azureml://datastores/<ds>/paths/<path>"
		if name, ok := c.datastoreFor(l.Account, l.Container); ok {
			hint = "azureml://datastores/" + name + "/paths/" + l.Path
		}
		d.add(CheckOutputDatastore, t.subject, Fail, "batch job outputs go only to a registered Blob datastore, not to a storage URL: use %s", hint)
	}
}

// datastoreFor finds a declared Blob datastore on account/container, for hints.
func (c *Checker) datastoreFor(account, container string) (string, bool) {
	var names []string
	for name, ds := range c.datastores {
		if ds.Kind == DatastoreBlob && strings.EqualFold(ds.Account, account) && strings.EqualFold(ds.Container, container) {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return "", false
	}
	slices.Sort(names)
	return names[0], true
}

// checkIdentities names the identities and roles the job needs.
func (c *Checker) checkIdentities(d *decision, t *ioTarget) {
	l := t.loc
	role, verb, noun := "Storage Blob Data Reader", "read", "input"
	if t.output {
		role, verb, noun = "Storage Blob Data Contributor", "write", "output"
	}
	if l.Kind == KindDataAsset {
		d.add(CheckRBAC, t.subject, Warn, "if the data asset's datastore holds no credentials, the job %ss it with its own identity and the compute cluster's managed identity: the compute cluster's managed identity needs at least %s on the asset's storage account (batchd cannot tell which without Azure ML)", verb, role)
		return
	}
	if !t.hasRule {
		return
	}
	target := fmt.Sprintf("storage account %q", l.Account)
	if !t.rule.usesCompute() {
		d.add(CheckRBAC, t.subject, Pass, "the workspace %ss datastore %q with its %s (%s); the compute cluster needs no storage role for it", verb, l.Datastore, credName(t.ds.Credentials), t.rule.AccessGrantedBy)
		return
	}
	if t.rule.needsRBAC() {
		d.add(CheckRBAC, t.subject, Warn, "the job %ss this %s with the identity that invokes it plus the compute cluster's managed identity (%s): the compute cluster's managed identity needs at least %s on %s, and the invoking identity needs %s access to the data; batchd cannot see role assignments", verb, noun, t.rule.AccessGrantedBy, role, target, verb)
	}
	gen2Store := l.Kind == KindDatastore && (t.ds.Kind == DatastoreADLSGen2 || t.ds.Kind == DatastoreADLSGen1)
	if t.rule.needsPOSIX() || gen2Store {
		perm := "read (r) on the file"
		if t.folder() {
			perm = "read and execute (r-x) on the folder and read (r) on its files"
		}
		if t.output {
			perm = "write and execute (-wx) on the output folder"
		}
		d.add(CheckPOSIX, t.subject, Warn, "ADLS access also goes through POSIX ACLs: the job's identity and the compute cluster's managed identity need execute (--x) on every parent folder of %q and %s; batchd cannot see ACLs", l.Path, perm)
	}
}

func credName(c string) string {
	if c == CredentialsSAS {
		return "SAS token"
	}
	return "account key"
}
