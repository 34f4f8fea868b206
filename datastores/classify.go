package datastores

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrInvalidURI is matched (errors.Is) by every error Classify returns; the
// error itself is a *URIError naming the offending part.
var ErrInvalidURI = errors.New("invalid data URI")

// URIError is why a URI was not classified. Part is the offending part of
// URI (a scheme, a host, a path segment, or the whole URI); Error() always
// shows it. Neither field ever holds a query string or a password: those are
// replaced by "<redacted>" before the error is built, because a SAS token in
// a URL is a secret.
type URIError struct {
	URI  string // the URI as given, redacted
	Part string // the offending part, redacted
	Msg  string // what is wrong and, where there is one, the accepted form
}

func (e *URIError) Error() string { return showURI(e.URI) + ": " + e.Msg }

// Unwrap makes errors.Is(err, ErrInvalidURI) hold.
func (e *URIError) Unwrap() error { return ErrInvalidURI }

// Location is a classified input or output URI.
//
// For blob and ADLS URLs, Account, Container and Path say where the data is.
// Datastore URIs carry only the datastore name until ResolveDatastore fills
// Account and Container from the declared datastore. Data assets cannot be
// resolved without Azure ML: they carry the asset's name and version only.
type Location struct {
	URI    string `json:"uri"`
	Kind   Kind   `json:"kind"`
	Scheme string `json:"scheme"` // lower case: azureml, https, http, wasbs, abfss, adl, or "arm" for an ARM id

	// Storage coordinates.
	Account   string `json:"account,omitempty"`
	Container string `json:"container,omitempty"` // blob container or ADLS Gen2 filesystem; empty for ADLS Gen1
	// Path is the percent-decoded path inside the container (or the Gen1
	// account), without a leading "/"; "" is the root. It has no empty, "."
	// or ".." segments, so a prefix test on it cannot be escaped.
	Path string `json:"path,omitempty"`
	// Folder: Path ends in "/" or is the root. The input or output's Type
	// (UriFile/UriFolder), when given, is the authority; this is the hint.
	Folder bool `json:"folder,omitempty"`

	// The blob service endpoint the URL names: EndpointScheme "https" (or
	// "http"/"https" for an Azurite URL on loopback), EndpointHost
	// "acct.blob.core.windows.net" or "127.0.0.1:10000", Suffix the storage
	// DNS suffix ("core.windows.net"; empty for Azurite). Empty for
	// datastores, data assets and ADLS Gen1. See BlobEndpoint.
	EndpointScheme string `json:"endpoint_scheme,omitempty"`
	EndpointHost   string `json:"endpoint_host,omitempty"`
	Suffix         string `json:"suffix,omitempty"`
	// PathStyle: the account is the first path segment (Azurite), not part
	// of the host name.
	PathStyle bool `json:"path_style,omitempty"`

	// Azure ML coordinates, where the URI names them.
	Datastore     string `json:"datastore,omitempty"`
	Subscription  string `json:"subscription,omitempty"`
	ResourceGroup string `json:"resource_group,omitempty"`
	Workspace     string `json:"workspace,omitempty"`
	Region        string `json:"region,omitempty"`
	Asset         string `json:"asset,omitempty"`
	AssetVersion  string `json:"asset_version,omitempty"` // empty when AssetLabel is set
	AssetLabel    string `json:"asset_label,omitempty"`   // "latest" for .../versions/labels/latest

	// Warning is set when the URI is accepted but something about it needs
	// attention (ADLS Gen1 is retired; a form reported to fail).
	Warning string `json:"warning,omitempty"`
}

// BlobEndpoint is the blob service URL the URI itself names, with a trailing
// slash, e.g. "https://acct.blob.core.windows.net/" (also for a dfs or abfss
// URL of that account) or "http://127.0.0.1:10000/devstoreaccount1/". Empty
// when the URI names no blob endpoint (datastores, data assets, Gen1).
func (l Location) BlobEndpoint() string {
	switch {
	case l.EndpointHost == "":
		return ""
	case l.PathStyle:
		return l.EndpointScheme + "://" + l.EndpointHost + "/" + l.Account + "/"
	default:
		return l.EndpointScheme + "://" + l.EndpointHost + "/"
	}
}

// Limits and accepted forms.
const (
	maxURILen      = 4096
	maxBlobNameLen = 1024
	// Gen1Retired is the warning every ADLS Gen1 location carries.
	Gen1Retired         = "Azure Data Lake Storage Gen1 was retired on 29 February 2024; migrate the data to ADLS Gen2 or Blob storage"
	armDatastoreWarning = "the ARM-id datastore form is reported to fail with the batch REST API; prefer azureml://datastores/<ds>/paths/<path>"
)

// Suffixes are the storage DNS suffixes accepted in blob, dfs, wasbs and
// abfss URLs: public cloud, Azure China, Azure US Government.
var Suffixes = []string{"core.windows.net", "core.chinacloudapi.cn", "core.usgovcloudapi.net"}

const gen1Suffix = "azuredatalakestore.net"

var (
	accountRE   = regexp.MustCompile(`^[a-z0-9]{3,24}$`)
	containerRE = regexp.MustCompile(`^(?:[a-z0-9](?:[a-z0-9]|-[a-z0-9]){2,62}|\$root|\$web|\$logs)$`)
	// Azure ML: "can only contain alphanumeric characters and _", case-insensitive.
	datastoreRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,255}$`)
	assetRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$`)
	versionRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	regionRE    = regexp.MustCompile(`^[A-Za-z0-9]{1,64}$`)
	workspaceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$`)
	subRE       = regexp.MustCompile(`^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$`)
	rgRE        = regexp.MustCompile(`^[-\w._()]{1,90}$`)
	schemeRE    = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.-]*$`)
)

// classifier carries the URI under classification so that every error can
// name it; the URI is redacted once, up front.
type classifier struct {
	raw   string // as given
	shown string // redacted
}

// fail builds the error. The message always shows the offending part: when
// the format does not quote it already, it is appended.
func (c *classifier) fail(part, format string, args ...any) (Location, error) {
	msg := fmt.Sprintf(format, args...)
	if part != c.shown && !strings.Contains(msg, strconv.Quote(part)) {
		msg += fmt.Sprintf(" (at %q)", part)
	}
	return Location{}, &URIError{URI: c.shown, Part: part, Msg: msg}
}

// Classify parses an input or output URI of a batch job and says what kind of
// storage it names. It accepts:
//
//   - datastores: azureml://datastores/<ds>/paths/<path> and
//     azureml://subscriptions/<sub>/resourcegroups/<rg>/workspaces/<ws>/datastores/<ds>/paths/<path>
//     (the ARM-id form azureml:/subscriptions/.../providers/Microsoft.MachineLearningServices/workspaces/<ws>/datastores/<ds>/paths/<path>
//     is accepted with a Warning);
//   - data assets: azureml://locations/<region>/workspaces/<ws>/data/<name>/versions/<v>,
//     .../versions/labels/latest, and the ARM id
//     [azureml:]/subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<ws>/data/<name>/versions/<v>;
//   - Azure Blob: https://<acct>.blob.<suffix>/<container>/<path>, wasbs://<container>@<acct>.blob.<suffix>/<path>;
//   - ADLS Gen2: abfss://<fs>@<acct>.dfs.<suffix>/<path>, https://<acct>.dfs.<suffix>/<fs>/<path>;
//   - ADLS Gen1: adl://<acct>.azuredatalakestore.net/<path> (with a Warning: retired);
//   - Azurite on loopback: http(s)://127.0.0.1:<port>/<account>/<container>/<path> (also localhost, [::1]).
//
// <suffix> is one of Suffixes. Anything else, including the CLI shorthands
// azureml:<name>:<v> and azureml:<name>@latest, query strings (SAS tokens),
// "." and ".." segments and empty segments, is an error wrapping
// ErrInvalidURI that names the offending part. Classify does no I/O.
func Classify(uri string) (Location, error) {
	c := &classifier{raw: uri, shown: redactURI(uri)}
	switch {
	case uri == "":
		return c.fail("", "URI is empty")
	case len(uri) > maxURILen:
		return c.fail(c.shown, "URI is %d bytes; the limit is %d", len(uri), maxURILen)
	case !utf8.ValidString(uri):
		return c.fail(c.shown, "URI is not valid UTF-8")
	case strings.TrimSpace(uri) != uri:
		return c.fail(c.shown, "URI has leading or trailing white space")
	}
	for _, r := range uri {
		if unicode.IsControl(r) || unicode.IsSpace(r) {
			return c.fail(string(r), "character %q is not allowed in a URI (percent-encode it)", string(r))
		}
	}
	// A query string is most often a SAS token: never echo it, and never let
	// a job carry one (batch inputs read through datastores or identities).
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return c.fail("?<redacted>", "query string %q is not accepted (a SAS token does not belong in a job URI: register a datastore with credentials, or grant the compute identity access)", "?<redacted>")
	}
	if i := strings.IndexByte(uri, '#'); i >= 0 {
		return c.fail(uri[i:], "fragment %q is not accepted", uri[i:])
	}
	if strings.HasPrefix(uri, "/") {
		return c.arm(uri, "arm")
	}
	i := strings.IndexByte(uri, ':')
	if i <= 0 || !schemeRE.MatchString(uri[:i]) {
		return c.fail(c.shown, "no scheme: want azureml://, https://, wasbs://, abfss:// or adl://")
	}
	scheme, rest := strings.ToLower(uri[:i]), uri[i+1:]
	switch scheme {
	case "azureml":
		switch {
		case strings.HasPrefix(rest, "//"):
			return c.azureml(rest[2:])
		case strings.HasPrefix(strings.ToLower(rest), "/subscriptions/"):
			return c.arm(rest, "azureml")
		default:
			return c.shorthand(strings.TrimPrefix(rest, "/"))
		}
	case "https", "http", "wasbs", "abfss", "adl":
		return c.storageURL(scheme, uri[:i], rest)
	case "wasb", "abfs":
		return c.fail(uri[:i], "scheme %q is not encrypted: use %ss://", uri[:i], scheme)
	default:
		return c.fail(uri[:i], "scheme %q is not supported: want azureml://, https://, wasbs://, abfss:// or adl://", uri[:i])
	}
}

// shorthand explains the CLI's azureml:<name>:<v> and azureml:<name>@latest.
func (c *classifier) shorthand(s string) (Location, error) {
	name, version, label := s, "<version>", ""
	if j := strings.LastIndexByte(s, '@'); j >= 0 {
		name, label = s[:j], s[j+1:]
	} else if j := strings.IndexByte(s, ':'); j >= 0 {
		name, version = s[:j], s[j+1:]
	}
	if !assetRE.MatchString(name) {
		name = "<name>"
	}
	if !versionRE.MatchString(version) {
		version = "<version>"
	}
	long := "azureml://locations/<region>/workspaces/<ws>/data/" + name + "/versions/" + version
	if label != "" {
		long = "azureml://locations/<region>/workspaces/<ws>/data/" + name + "/versions/labels/latest"
	}
	return c.fail(c.shown, "CLI shorthand is not accepted by the REST API; use %s", long)
}

// segments walks "/"-separated segments of an azureml:// or ARM path.
type segments struct {
	s   string
	pos int
}

func (g *segments) next() (string, bool) {
	if g.pos > len(g.s) {
		return "", false
	}
	rest := g.s[g.pos:]
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		g.pos += j + 1
		return rest[:j], true
	}
	g.pos = len(g.s) + 1
	return rest, true
}

// rest is everything after the segments consumed so far.
func (g *segments) rest() (string, bool) {
	if g.pos > len(g.s) {
		return "", false
	}
	r := g.s[g.pos:]
	g.pos = len(g.s) + 1
	return r, true
}

// expect consumes a keyword segment (case-insensitive).
func (c *classifier) expect(g *segments, keyword, form string) error {
	seg, ok := g.next()
	if !ok {
		_, err := c.fail(c.shown, "ends before %q: want %s", keyword, form)
		return err
	}
	if !strings.EqualFold(seg, keyword) {
		part := seg
		if part == "" {
			part = "/"
		}
		_, err := c.fail(part, "found %q where %q belongs: want %s", part, keyword, form)
		return err
	}
	return nil
}

// value consumes a named value segment and checks it against re.
func (c *classifier) value(g *segments, what string, re *regexp.Regexp, form string) (string, error) {
	seg, ok := g.next()
	if !ok || seg == "" {
		_, err := c.fail(c.shown, "%s is missing: want %s", what, form)
		return "", err
	}
	if !re.MatchString(seg) {
		_, err := c.fail(seg, "%s %q is not valid", what, seg)
		return "", err
	}
	return seg, nil
}

const (
	formShortDS = "azureml://datastores/<ds>/paths/<path>"
	formLongDS  = "azureml://subscriptions/<sub>/resourcegroups/<rg>/workspaces/<ws>/datastores/<ds>/paths/<path>"
	formAsset   = "azureml://locations/<region>/workspaces/<ws>/data/<name>/versions/<version>"
	formARM     = "/subscriptions/<sub>/resourcegroups/<rg>/providers/Microsoft.MachineLearningServices/workspaces/<ws>/data/<name>/versions/<version>"
)

func (c *classifier) azureml(rest string) (Location, error) {
	g := &segments{s: rest}
	first, _ := g.next()
	loc := Location{URI: c.raw, Scheme: "azureml"}
	var err error
	switch strings.ToLower(first) {
	case "datastores":
		return c.datastorePath(g, loc, formShortDS)
	case "subscriptions":
		if loc.Subscription, err = c.value(g, "subscription", subRE, formLongDS); err != nil {
			return Location{}, err
		}
		if err = c.expect(g, "resourcegroups", formLongDS); err != nil {
			return Location{}, err
		}
		if loc.ResourceGroup, err = c.value(g, "resource group", rgRE, formLongDS); err != nil {
			return Location{}, err
		}
		if err = c.expect(g, "workspaces", formLongDS); err != nil {
			return Location{}, err
		}
		if loc.Workspace, err = c.value(g, "workspace", workspaceRE, formLongDS); err != nil {
			return Location{}, err
		}
		if err = c.expect(g, "datastores", formLongDS); err != nil {
			return Location{}, err
		}
		return c.datastorePath(g, loc, formLongDS)
	case "locations":
		if loc.Region, err = c.value(g, "region", regionRE, formAsset); err != nil {
			return Location{}, err
		}
		if err = c.expect(g, "workspaces", formAsset); err != nil {
			return Location{}, err
		}
		if loc.Workspace, err = c.value(g, "workspace", workspaceRE, formAsset); err != nil {
			return Location{}, err
		}
		if err = c.expect(g, "data", formAsset); err != nil {
			return Location{}, err
		}
		return c.assetVersion(g, loc, formAsset, true)
	case "":
		return c.fail(c.shown, "nothing after azureml://: want %s or %s", formShortDS, formAsset)
	default:
		return c.fail(first, "%q is not a known azureml:// form: want %s, %s or %s", first, formShortDS, formLongDS, formAsset)
	}
}

// arm parses an ARM id (bare, or after "azureml:"): a data asset version or,
// with a warning, a datastore path.
func (c *classifier) arm(s, scheme string) (Location, error) {
	g := &segments{s: strings.TrimPrefix(s, "/")}
	loc := Location{URI: c.raw, Scheme: scheme}
	var err error
	if err = c.expect(g, "subscriptions", formARM); err != nil {
		return Location{}, err
	}
	if loc.Subscription, err = c.value(g, "subscription", subRE, formARM); err != nil {
		return Location{}, err
	}
	if err = c.expect(g, "resourcegroups", formARM); err != nil {
		return Location{}, err
	}
	if loc.ResourceGroup, err = c.value(g, "resource group", rgRE, formARM); err != nil {
		return Location{}, err
	}
	if err = c.expect(g, "providers", formARM); err != nil {
		return Location{}, err
	}
	if err = c.expect(g, "Microsoft.MachineLearningServices", formARM); err != nil {
		return Location{}, err
	}
	if err = c.expect(g, "workspaces", formARM); err != nil {
		return Location{}, err
	}
	if loc.Workspace, err = c.value(g, "workspace", workspaceRE, formARM); err != nil {
		return Location{}, err
	}
	kind, ok := g.next()
	switch {
	case ok && strings.EqualFold(kind, "data"):
		return c.assetVersion(g, loc, formARM, false)
	case ok && strings.EqualFold(kind, "datastores"):
		loc, err := c.datastorePath(g, loc, formARM)
		if err == nil {
			loc.Warning = armDatastoreWarning
		}
		return loc, err
	case !ok || kind == "":
		return c.fail(c.shown, "ends after the workspace: want %s", formARM)
	default:
		return c.fail(kind, "%q is not a data asset or datastore: want %s", kind, formARM)
	}
}

func (c *classifier) datastorePath(g *segments, loc Location, form string) (Location, error) {
	var err error
	if loc.Datastore, err = c.value(g, "datastore name", datastoreRE, form); err != nil {
		return Location{}, err
	}
	if err = c.expect(g, "paths", form); err != nil {
		return Location{}, err
	}
	raw, ok := g.rest()
	if !ok {
		return c.fail(c.shown, "path is missing after paths/: want %s (a trailing / for the datastore's root)", form)
	}
	if loc.Path, err = c.blobPath(raw); err != nil {
		return Location{}, err
	}
	loc.Kind = KindDatastore
	loc.Folder = loc.Path == "" || strings.HasSuffix(loc.Path, "/")
	return loc, nil
}

func (c *classifier) assetVersion(g *segments, loc Location, form string, labels bool) (Location, error) {
	var err error
	if loc.Asset, err = c.value(g, "data asset name", assetRE, form); err != nil {
		return Location{}, err
	}
	if err = c.expect(g, "versions", form); err != nil {
		return Location{}, err
	}
	v, ok := g.next()
	switch {
	case !ok || v == "":
		return c.fail(c.shown, "version is missing: want %s", form)
	case labels && v == "labels":
		label, ok := g.next()
		if !ok || label != "latest" {
			part := label
			if !ok || part == "" {
				part = c.shown
			}
			return c.fail(part, "label %q is not supported: want .../versions/labels/latest", label)
		}
		loc.AssetLabel = label
	case !versionRE.MatchString(v):
		return c.fail(v, "version %q is not valid", v)
	default:
		loc.AssetVersion = v
	}
	if extra, ok := g.rest(); ok {
		part := extra
		if part == "" {
			part = "/"
		}
		return c.fail(part, "unexpected %q after the version: want %s", part, form)
	}
	loc.Kind = KindDataAsset
	return loc, nil
}

// storageURL parses https/http/wasbs/abfss/adl URLs. rawScheme is as written.
func (c *classifier) storageURL(scheme, rawScheme, rest string) (Location, error) {
	if !strings.HasPrefix(rest, "//") {
		return c.fail(c.shown, "want %s://<host>/...", scheme)
	}
	rest = rest[2:]
	authority, path := rest, ""
	if j := strings.IndexByte(rest, '/'); j >= 0 {
		authority, path = rest[:j], rest[j+1:]
	}
	userinfo := ""
	if j := strings.LastIndexByte(authority, '@'); j >= 0 {
		userinfo, authority = authority[:j], authority[j+1:]
	}
	host, port, err := c.splitHostPort(authority)
	if err != nil {
		return Location{}, err
	}
	loc := Location{URI: c.raw, Scheme: scheme}

	if isLoopback(host) {
		if scheme != "http" && scheme != "https" {
			return c.fail(host, "%s:// on loopback host %q is not supported: Azurite URLs are http(s)://<host>:<port>/<account>/<container>/<path>", rawScheme, host)
		}
		if userinfo != "" {
			return c.fail("<redacted>@", "user information %q in the URL is not accepted", "<redacted>@")
		}
		return c.azurite(loc, scheme, authority, path)
	}
	if scheme == "http" {
		return c.fail(rawScheme, "plain http is accepted only for Azurite on loopback: use https://")
	}
	if port != "" && port != "443" {
		return c.fail(":"+port, "port %q is not accepted on an Azure Storage host", port)
	}

	if scheme == "adl" {
		acct, ok := strings.CutSuffix(host, "."+gen1Suffix)
		if !ok {
			return c.fail(host, "host %q is not an ADLS Gen1 host: want adl://<account>.%s/<path>", host, gen1Suffix)
		}
		if userinfo != "" {
			return c.fail("<redacted>@", "user information %q in the URL is not accepted", "<redacted>@")
		}
		if !accountRE.MatchString(acct) {
			return c.fail(acct, "account name %q is not valid (3-24 lower-case letters and digits)", acct)
		}
		if loc.Path, err = c.blobPath(path); err != nil {
			return Location{}, err
		}
		loc.Kind, loc.Account = KindADLSGen1, acct
		loc.Folder = loc.Path == "" || strings.HasSuffix(loc.Path, "/")
		loc.Warning = Gen1Retired
		return loc, nil
	}

	acct, service, suffix, ok := splitStorageHost(host)
	if !ok {
		if strings.HasSuffix(host, "."+gen1Suffix) {
			return c.fail(host, "host %q is ADLS Gen1: use adl://%s/<path>", host, host)
		}
		return c.fail(host, "host %q is not an Azure Storage endpoint: want <account>.blob.<suffix> or <account>.dfs.<suffix> with suffix %s", host, strings.Join(Suffixes, ", "))
	}
	if !accountRE.MatchString(acct) {
		return c.fail(acct, "account name %q is not valid (3-24 lower-case letters and digits)", acct)
	}
	loc.Account, loc.Suffix = acct, suffix
	loc.EndpointScheme, loc.EndpointHost = "https", acct+".blob."+suffix

	switch scheme {
	case "https":
		if userinfo != "" {
			return c.fail("<redacted>@", "user information %q in the URL is not accepted", "<redacted>@")
		}
		loc.Kind = KindBlob
		if service == "dfs" {
			loc.Kind = KindADLSGen2
		}
		cont, p, _ := strings.Cut(path, "/")
		if cont == "" {
			return c.fail(c.shown, "container is missing: want https://%s/<container>/<path>", host)
		}
		loc.Container = cont
		path = p
	case "wasbs", "abfss":
		want := map[string]string{"wasbs": "blob", "abfss": "dfs"}[scheme]
		if service != want {
			return c.fail(host, "%s:// needs a <account>.%s.<suffix> host, not %q", rawScheme, want, host)
		}
		if userinfo == "" {
			return c.fail(c.shown, "container is missing: want %s://<container>@%s/<path>", rawScheme, host)
		}
		if strings.ContainsRune(userinfo, ':') {
			return c.fail("<redacted>@", "user information %q in the URL is not accepted", "<redacted>@")
		}
		loc.Kind = KindBlob
		if scheme == "abfss" {
			loc.Kind = KindADLSGen2
		}
		loc.Container = userinfo
	}
	if !containerRE.MatchString(loc.Container) {
		return c.fail(loc.Container, "container %q is not valid (3-63 lower-case letters, digits and single hyphens)", loc.Container)
	}
	if loc.Path, err = c.blobPath(path); err != nil {
		return Location{}, err
	}
	loc.Folder = loc.Path == "" || strings.HasSuffix(loc.Path, "/")
	return loc, nil
}

// azurite parses http(s)://<loopback>:<port>/<account>/<container>/<path>.
func (c *classifier) azurite(loc Location, scheme, authority, path string) (Location, error) {
	acct, rest, _ := strings.Cut(path, "/")
	if acct == "" {
		return c.fail(c.shown, "account is missing: want %s://%s/<account>/<container>/<path>", scheme, authority)
	}
	if !accountRE.MatchString(acct) {
		return c.fail(acct, "account name %q is not valid (3-24 lower-case letters and digits)", acct)
	}
	cont, p, _ := strings.Cut(rest, "/")
	if cont == "" {
		return c.fail(c.shown, "container is missing: want %s://%s/%s/<container>/<path>", scheme, authority, acct)
	}
	if !containerRE.MatchString(cont) {
		return c.fail(cont, "container %q is not valid (3-63 lower-case letters, digits and single hyphens)", cont)
	}
	var err error
	if loc.Path, err = c.blobPath(p); err != nil {
		return Location{}, err
	}
	loc.Kind, loc.Account, loc.Container = KindBlob, acct, cont
	loc.EndpointScheme, loc.EndpointHost, loc.PathStyle = scheme, strings.ToLower(authority), true
	loc.Folder = loc.Path == "" || strings.HasSuffix(loc.Path, "/")
	return loc, nil
}

func (c *classifier) splitHostPort(authority string) (host, port string, err error) {
	hasPort := false
	switch {
	case strings.HasPrefix(authority, "["):
		end := strings.IndexByte(authority, ']')
		if end < 0 {
			_, err = c.fail(authority, "host %q has an unclosed [", authority)
			return "", "", err
		}
		host = authority[:end+1]
		if after := authority[end+1:]; after != "" {
			if after[0] != ':' {
				_, err = c.fail(authority, "host %q is not valid", authority)
				return "", "", err
			}
			port, hasPort = after[1:], true
		}
	default:
		host = authority
		if j := strings.LastIndexByte(authority, ':'); j >= 0 {
			host, port, hasPort = authority[:j], authority[j+1:], true
		}
	}
	if host == "" || host == "[]" {
		_, err = c.fail(c.shown, "host is missing")
		return "", "", err
	}
	if hasPort {
		if n, perr := strconv.Atoi(port); perr != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
			_, err = c.fail(":"+port, "port %q is not valid", port)
			return "", "", err
		}
	}
	return strings.ToLower(host), port, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	a, err := netip.ParseAddr(strings.Trim(host, "[]"))
	return err == nil && a.IsLoopback()
}

// splitStorageHost splits "<acct>.<blob|dfs>.<suffix>".
func splitStorageHost(host string) (acct, service, suffix string, ok bool) {
	for _, sfx := range Suffixes {
		head, found := strings.CutSuffix(host, "."+sfx)
		if !found {
			continue
		}
		a, svc, found := strings.Cut(head, ".")
		if !found || (svc != "blob" && svc != "dfs") {
			return "", "", "", false
		}
		return a, svc, sfx, true
	}
	return "", "", "", false
}

// blobPath percent-decodes and validates the path inside a container. A
// trailing "/" (a folder) is kept; empty, "." and ".." segments are refused
// so that an allow-list prefix cannot be escaped.
func (c *classifier) blobPath(raw string) (string, error) {
	p, err := url.PathUnescape(raw)
	if err != nil {
		var esc url.EscapeError
		part := raw
		if errors.As(err, &esc) {
			part = string(esc)
		}
		_, err := c.fail(part, "bad percent-encoding %q in the path", part)
		return "", err
	}
	if len(p) > maxBlobNameLen {
		_, err := c.fail(c.shown, "path is %d bytes; a blob name is at most %d", len(p), maxBlobNameLen)
		return "", err
	}
	for _, r := range p {
		if unicode.IsControl(r) || r == utf8.RuneError {
			_, err := c.fail(string(r), "path holds character %q, which a blob name cannot hold", r)
			return "", err
		}
	}
	if strings.ContainsRune(p, '\\') {
		_, err := c.fail(`\`, `path holds "\\"; use "/" between folders`)
		return "", err
	}
	segs := strings.Split(p, "/")
	for i, s := range segs {
		last := i == len(segs)-1
		switch {
		case s == "" && last:
			// "" (the root) or a trailing "/" (a folder)
		case s == "":
			_, err := c.fail("//", "path has an empty segment (%q)", "//")
			return "", err
		case s == "." || s == "..":
			_, err := c.fail(s, "path segment %q is not allowed", s)
			return "", err
		}
	}
	return p, nil
}

// showURI is how an error or a reason prints a URI: as given when it is
// plain text of reasonable length, otherwise quoted and cut.
func showURI(s string) string {
	const max = 512
	cut := false
	if len(s) > max {
		end := 0
		for i := range s { // rune starts, so the cut never splits a rune
			if i > max {
				break
			}
			end = i
		}
		s, cut = s[:end], true
	}
	plain := s != ""
	for _, r := range s {
		if !unicode.IsGraphic(r) || unicode.IsSpace(r) || r == utf8.RuneError {
			plain = false
			break
		}
	}
	if !plain {
		s = strconv.Quote(s)
	}
	if cut {
		s += "…"
	}
	return s
}

// redactURI removes what may be secret in a URI: the query string (a SAS
// token) and a password in user information.
func redactURI(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		s = s[:i] + "?<redacted>"
	}
	if i := strings.Index(s, "://"); i >= 0 {
		auth := s[i+3:]
		if j := strings.IndexAny(auth, "/?"); j >= 0 {
			auth = auth[:j]
		}
		if at := strings.LastIndexByte(auth, '@'); at >= 0 && strings.ContainsRune(auth[:at], ':') {
			s = s[:i+3] + "<redacted>" + s[i+3+at:]
		}
	}
	return s
}
