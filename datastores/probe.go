package datastores

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/container"
)

// Listing bounds of a folder probe: batch inputs can hold many files, and a
// preflight must stay cheap. Most folders are decided by the first page.
const (
	listPageSize = 1000
	listMaxPages = 4
	maxNamedSubs = 5
)

type probeState int

const (
	stFound       probeState = iota
	stMissing                // the blob, or anything under the folder, is not there
	stNoContainer            // the container (filesystem) does not exist
	stRefused                // 401/403: batchd's own access was refused
	stUnreachable            // no connection to the endpoint
	stTimeout                // no answer within ProbeTimeout
	stInterrupted            // the caller's context ended
	stFailed                 // any other error
)

// probe is what storage said about one path. detail is safe to show: an HTTP
// status and error code, or a network error without URLs.
type probe struct {
	state  probeState
	detail string

	// File probes.
	size       int64
	etag       string
	dirMarker  bool // an ADLS Gen2 directory, not a file
	folderHint bool // the file is missing but blobs exist under path + "/"

	// Folder probes.
	top, topNonEmpty int
	subs             []string // first few sub-folders
	subsMore         bool
	partial          bool // the listing bound was reached before the answer was certain

	// Output probes: an existing blob.
	existing string

	cached bool
}

type probeKey struct {
	endpoint, container, path string
	folder                    bool
}

type cacheEntry struct {
	p   probe
	exp time.Time
}

func (c *Checker) cacheGet(k probeKey) (probe, bool) {
	if c.ttl < 0 {
		return probe{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cache[k]
	if !ok {
		return probe{}, false
	}
	if !c.now().Before(e.exp) {
		delete(c.cache, k)
		return probe{}, false
	}
	e.p.cached = true
	return e.p, true
}

func (c *Checker) cachePut(k probeKey, p probe) {
	if c.ttl < 0 {
		return
	}
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cache) >= maxCacheEntries {
		for k, e := range c.cache {
			if !now.Before(e.exp) {
				delete(c.cache, k)
			}
		}
		for k := range c.cache { // still full: drop any one
			if len(c.cache) < maxCacheEntries {
				break
			}
			delete(c.cache, k)
		}
	}
	c.cache[k] = cacheEntry{p: p, exp: now.Add(c.ttl)}
}

// target finds how to reach a location's storage, always through Storage
// (see Checker). A nil client comes with the reason it cannot be checked.
func (c *Checker) target(l Location) (*azblob.Client, string, string) {
	if c.storage == nil {
		return nil, "", "batchd has no storage access configured"
	}
	endpoint := c.storage.Endpoint(l.Account)
	if l.Kind != KindDatastore && !c.storage.Configured(l.Account) && l.BlobEndpoint() != endpoint {
		return nil, "", fmt.Sprintf("the URL's blob endpoint %s is not where batchd reaches account %q (%s), and batchd contacts only endpoints it is configured for: configure the account under storage.accounts to check it", l.BlobEndpoint(), l.Account, endpoint)
	}
	cl, err := c.storage.Client(l.Account)
	if err != nil {
		return nil, "", fmt.Sprintf("no client for account %q: %v", l.Account, err)
	}
	return cl, endpoint, ""
}

// checkInputData runs input-exists, folder-flat and input-nonempty for one
// input; what batchd cannot look at is a warning each.
func (c *Checker) checkInputData(ctx context.Context, d *decision, t *ioTarget) {
	l := t.loc
	notChecked := func(why string) {
		d.add(CheckInputExists, t.subject, Warn, "not checked: %s", why)
		if t.folder() {
			d.add(CheckFolderFlat, t.subject, Warn, "not checked: %s", why)
		}
		d.add(CheckInputNonEmpty, t.subject, Warn, "not checked: %s", why)
	}
	switch {
	case l.Kind == KindDataAsset:
		d.add(CheckInputExists, t.subject, Warn, "not checked: a data asset cannot be resolved without Azure ML, so batchd does not know where it is; its existence, size and folder layout are checked only when the job runs")
		return
	case l.Kind == KindADLSGen1 || (t.ds != nil && t.ds.Kind == DatastoreADLSGen1):
		notChecked("batchd has no ADLS Gen1 client (Gen1 is retired)")
		return
	}
	cl, endpoint, why := c.target(l)
	if cl == nil {
		notChecked(why)
		return
	}
	if t.folder() {
		c.checkFolder(ctx, d, t, cl, endpoint)
	} else {
		c.checkFile(ctx, d, t, cl, endpoint)
	}
}

func (c *Checker) checkFile(ctx context.Context, d *decision, t *ioTarget, cl *azblob.Client, endpoint string) {
	l := t.loc
	key := probeKey{endpoint: endpoint, container: l.Container, path: l.Path}
	p, ok := c.cacheGet(key)
	if !ok {
		p = c.probeFile(ctx, cl, l.Container, l.Path, true)
		if p.state == stFound && !p.dirMarker && p.size > 0 {
			c.cachePut(key, p)
		}
	}
	what := fmt.Sprintf("blob %q in container %q of account %q", l.Path, l.Container, l.Account)
	switch p.state {
	case stFound:
		if p.dirMarker {
			d.add(CheckInputExists, t.subject, Fail, "%s is a directory, not a file: use UriFolder", what)
			return
		}
		d.add(CheckInputExists, t.subject, Pass, "%s exists (eTag %s%s)", what, p.etag, cachedNote(p))
		if p.size > 0 {
			d.add(CheckInputNonEmpty, t.subject, Pass, "%d bytes", p.size)
		} else {
			d.add(CheckInputNonEmpty, t.subject, Fail, "%s is empty (0 bytes): the job would have nothing to read", what)
		}
	case stMissing:
		if p.folderHint {
			d.add(CheckInputExists, t.subject, Fail, "%s does not exist, but blobs exist under %q: it is a folder, use UriFolder", what, l.Path+"/")
			return
		}
		d.add(CheckInputExists, t.subject, Fail, "%s does not exist", what)
	case stNoContainer:
		d.add(CheckInputExists, t.subject, Fail, "container %q does not exist in account %q", l.Container, l.Account)
	default:
		why := c.cannot(p, l, what)
		d.add(CheckInputExists, t.subject, Warn, "%s", why)
		d.add(CheckInputNonEmpty, t.subject, Warn, "not checked: the blob could not be read (see %s)", CheckInputExists)
	}
}

func (c *Checker) checkFolder(ctx context.Context, d *decision, t *ioTarget, cl *azblob.Client, endpoint string) {
	l := t.loc
	prefix := folderPrefix(l.Path)
	key := probeKey{endpoint: endpoint, container: l.Container, path: prefix, folder: true}
	p, ok := c.cacheGet(key)
	if !ok {
		p = c.probeFolder(ctx, cl, l.Container, prefix)
		if p.state == stFound && p.topNonEmpty > 0 {
			c.cachePut(key, p)
		}
	}
	what := fmt.Sprintf("folder %q in container %q of account %q", prefix, l.Container, l.Account)
	if prefix == "" {
		what = fmt.Sprintf("the root of container %q of account %q", l.Container, l.Account)
	}
	switch p.state {
	case stFound:
	case stMissing:
		if name := strings.TrimSuffix(prefix, "/"); name != "" {
			// Cheap hint for the other common mistake: a file typed UriFolder.
			// (No folder hint: the folder was just listed and is empty.)
			if q := c.probeFile(ctx, cl, l.Container, name, false); q.state == stFound && !q.dirMarker {
				d.add(CheckInputExists, t.subject, Fail, "%s holds no files, but %q is a file: use UriFile", what, name)
				return
			}
		}
		d.add(CheckInputExists, t.subject, Fail, "%s holds no files (it is empty or does not exist)", what)
		return
	case stNoContainer:
		d.add(CheckInputExists, t.subject, Fail, "container %q does not exist in account %q", l.Container, l.Account)
		return
	default:
		why := c.cannot(p, l, what)
		d.add(CheckInputExists, t.subject, Warn, "%s", why)
		d.add(CheckFolderFlat, t.subject, Warn, "not checked: the folder could not be listed (see %s)", CheckInputExists)
		d.add(CheckInputNonEmpty, t.subject, Warn, "not checked: the folder could not be listed (see %s)", CheckInputExists)
		return
	}
	subs := strings.Join(quoteAll(p.subs), ", ")
	if p.subsMore {
		subs += ", …"
	}
	switch {
	case p.top > 0:
		d.add(CheckInputExists, t.subject, Pass, "%s holds %s at its top level%s", what, count(p.top, p.partial, "file"), cachedNote(p))
		if len(p.subs) > 0 {
			d.add(CheckFolderFlat, t.subject, Warn, "files at the top level will be read, but batch jobs do not read nested folders: the files in sub-folders %s are ignored", subs)
		} else {
			d.add(CheckFolderFlat, t.subject, Pass, "files are at the top level")
		}
		switch {
		case p.topNonEmpty > 0:
			d.add(CheckInputNonEmpty, t.subject, Pass, "%s at the top level with data (more than 0 bytes)", count(p.topNonEmpty, p.partial, "file"))
		case p.partial:
			d.add(CheckInputNonEmpty, t.subject, Warn, "the first %d top-level files are all empty (0 bytes); the listing stopped there, so not verified", p.top)
		default:
			d.add(CheckInputNonEmpty, t.subject, Fail, "all %d files at the top level of %s are empty (0 bytes): the job would have nothing to read", p.top, what)
		}
	case len(p.subs) > 0 && p.partial:
		d.add(CheckInputExists, t.subject, Pass, "%s holds sub-folders (%s)", what, subs)
		d.add(CheckFolderFlat, t.subject, Warn, "no file at the top level in the first %d entries (only sub-folders %s); the listing stopped there, so not verified", listPageSize*listMaxPages, subs)
		d.add(CheckInputNonEmpty, t.subject, Warn, "no file at the top level in the first %d entries; the listing stopped there, so not verified", listPageSize*listMaxPages)
	case len(p.subs) > 0:
		// input-nonempty is implied by folder-flat here: one failure, one reason.
		d.add(CheckInputExists, t.subject, Pass, "%s holds files, in sub-folders only", what)
		d.add(CheckFolderFlat, t.subject, Fail, "the files of %s are only in sub-folders (%s), and batch jobs do not read nested folders: point the input at a sub-folder, or move the files up", what, subs)
	default:
		d.add(CheckInputExists, t.subject, Fail, "%s holds no files (it is empty or does not exist)", what)
	}
}

func (c *Checker) checkOutputAbsent(ctx context.Context, d *decision, t *ioTarget) {
	l := t.loc
	if l.Kind == KindDataAsset || l.Kind == KindADLSGen1 || (t.ds != nil && t.ds.Kind == DatastoreADLSGen1) {
		return // output-datastore has failed already; there is nothing batchd can look at
	}
	cl, _, why := c.target(l)
	if cl == nil {
		d.add(CheckOutputAbsent, t.subject, Warn, "not checked: %s", why)
		return
	}
	// Never cached: the output may be created at any moment.
	var p probe
	var what string
	if t.folder() {
		prefix := folderPrefix(l.Path)
		what = fmt.Sprintf("output folder %q in container %q of account %q", prefix, l.Container, l.Account)
		p = c.probeAny(ctx, cl, l.Container, prefix)
	} else {
		what = fmt.Sprintf("output blob %q in container %q of account %q", l.Path, l.Container, l.Account)
		p = c.probeFile(ctx, cl, l.Container, l.Path, false)
		p.existing = l.Path
	}
	switch p.state {
	case stMissing:
		d.add(CheckOutputAbsent, t.subject, Pass, "%s does not exist yet", what)
	case stFound:
		if t.folder() {
			d.add(CheckOutputAbsent, t.subject, Fail, "%s already holds files (e.g. %q): batch jobs fail when the output path exists; make the output path unique per run", what, p.existing)
		} else {
			d.add(CheckOutputAbsent, t.subject, Fail, "%s already exists: batch jobs fail when the output path exists (\"path already exists\"); make the output path unique per run", what)
		}
	case stNoContainer:
		d.add(CheckOutputAbsent, t.subject, Warn, "container %q does not exist in account %q, so the output is absent, but the job may not be able to write there", l.Container, l.Account)
	default:
		d.add(CheckOutputAbsent, t.subject, Warn, "%s", c.cannot(p, l, what))
	}
}

// cannot explains a probe that got no answer.
func (c *Checker) cannot(p probe, l Location, what string) string {
	switch p.state {
	case stRefused:
		who, need := c.whoNeeds(l, p.detail)
		return fmt.Sprintf("not verified: batchd's own read of %s was refused (%s): %s may not read container %q of account %q; it needs %s", what, p.detail, who, l.Container, l.Account, need)
	case stUnreachable:
		return fmt.Sprintf("not verified: storage account %q is not reachable from batchd (%s)", l.Account, p.detail)
	case stTimeout:
		return fmt.Sprintf("not verified: storage account %q did not answer within %s", l.Account, c.probeTimeout)
	case stInterrupted:
		return fmt.Sprintf("not verified: the check was interrupted (%s)", p.detail)
	default:
		return fmt.Sprintf("not verified: storage account %q answered %s", l.Account, p.detail)
	}
}

// whoNeeds names batchd's identity for account and what it lacks after a
// refusal.
func (c *Checker) whoNeeds(l Location, detail string) (who, need string) {
	switch c.storage.AuthMode(l.Account) {
	case AuthSharedKey:
		return fmt.Sprintf("the account key configured for %q", l.Account),
			"a valid account key (a refused key is wrong, or shared-key access is disabled on the account); to use RBAC instead, give batchd's identity the Storage Blob Data Reader role"
	case AuthSAS:
		return fmt.Sprintf("the SAS token configured for %q", l.Account),
			fmt.Sprintf("a SAS that covers container %q with read (r) and list (l) permissions and has not expired (SAS access is not granted by a role)", l.Container)
	case AuthAnonymous:
		return "anonymous access",
			fmt.Sprintf("public read access on container %q, or a credential configured for the account", l.Container)
	default:
		need = fmt.Sprintf("the Storage Blob Data Reader role on storage account %q (or on container %q)", l.Account, l.Container)
		if strings.Contains(detail, "AuthenticationFailed") || strings.Contains(detail, "InvalidAuthenticationInfo") {
			// Not a missing role: the token itself was not accepted.
			need += "; the account did not accept the token itself, so check the identity's tenant and the storage audience (https://storage.azure.com)"
		}
		return c.identity, need
	}
}

// probeFile reads a blob's properties. With hint, a missing blob costs one
// more request: a listing of path + "/", to tell a folder typed UriFile.
func (c *Checker) probeFile(ctx context.Context, cl *azblob.Client, cont, path string, hint bool) probe {
	pctx, cancel := context.WithTimeout(ctx, c.probeTimeout)
	defer cancel()
	bc := cl.ServiceClient().NewContainerClient(cont).NewBlobClient(path)
	props, err := bc.GetProperties(pctx, nil)
	if err != nil {
		p := c.failure(ctx, err)
		if hint && p.state == stMissing {
			// Cheap hint for the commonest mistake: a folder typed UriFile.
			if q := c.probeAny(ctx, cl, cont, path+"/"); q.state == stFound {
				p.folderHint = true
			}
		}
		return p
	}
	p := probe{state: stFound}
	if props.ContentLength != nil {
		p.size = *props.ContentLength
	}
	if props.ETag != nil {
		p.etag = string(*props.ETag)
	}
	p.dirMarker = isFolderMarker(props.Metadata)
	return p
}

// probeAny reports stFound when at least one blob exists under prefix.
func (c *Checker) probeAny(ctx context.Context, cl *azblob.Client, cont, prefix string) probe {
	pctx, cancel := context.WithTimeout(ctx, c.probeTimeout)
	defer cancel()
	pager := cl.ServiceClient().NewContainerClient(cont).NewListBlobsFlatPager(&container.ListBlobsFlatOptions{
		Prefix: to.Ptr(prefix), MaxResults: to.Ptr(int32(1)),
	})
	page, err := pager.NextPage(pctx)
	if err != nil {
		return c.failure(ctx, err)
	}
	for _, b := range page.Segment.BlobItems {
		if b.Name != nil {
			return probe{state: stFound, existing: *b.Name}
		}
	}
	return probe{state: stMissing}
}

// probeFolder lists one level of prefix.
func (c *Checker) probeFolder(ctx context.Context, cl *azblob.Client, cont, prefix string) probe {
	pctx, cancel := context.WithTimeout(ctx, c.probeTimeout)
	defer cancel()
	pager := cl.ServiceClient().NewContainerClient(cont).NewListBlobsHierarchyPager("/", &container.ListBlobsHierarchyOptions{
		Prefix: to.Ptr(prefix), MaxResults: to.Ptr(int32(listPageSize)),
		Include: container.ListBlobsInclude{Metadata: true},
	})
	var p probe
	subs := 0
	for pages := 0; pager.More(); pages++ {
		if pages == listMaxPages {
			p.partial = true
			break
		}
		page, err := pager.NextPage(pctx)
		if err != nil {
			return c.failure(ctx, err)
		}
		for _, b := range page.Segment.BlobItems {
			if b.Name == nil || *b.Name == prefix || strings.HasSuffix(*b.Name, "/") || isFolderMarker(b.Metadata) {
				continue // directory placeholders (ADLS Gen2, tools that create "folders")
			}
			p.top++
			if b.Properties != nil && b.Properties.ContentLength != nil && *b.Properties.ContentLength > 0 {
				p.topNonEmpty++
			}
		}
		for _, s := range page.Segment.BlobPrefixes {
			if s.Name == nil {
				continue
			}
			subs++
			if len(p.subs) < maxNamedSubs {
				p.subs = append(p.subs, *s.Name)
			} else {
				p.subsMore = true
			}
		}
		if p.topNonEmpty > 0 {
			// Decided: exists, not empty, has top-level files. Later
			// pages could only name more sub-folders.
			p.partial = pager.More()
			break
		}
	}
	switch {
	case p.top > 0 || subs > 0:
		p.state = stFound
	default:
		p.state = stMissing
	}
	return p
}

func isFolderMarker(md map[string]*string) bool {
	for k, v := range md {
		if strings.EqualFold(k, "hdi_isfolder") && v != nil && strings.EqualFold(*v, "true") {
			return true
		}
	}
	return false
}

// failure turns a storage error into a probe state with a safe detail. It
// never uses the error's own text when that may hold a URL (and so a SAS).
func (c *Checker) failure(parent context.Context, err error) probe {
	var re *azcore.ResponseError
	switch {
	case errors.As(err, &re):
		detail := fmt.Sprintf("HTTP %d", re.StatusCode)
		if re.ErrorCode != "" {
			detail += " " + re.ErrorCode
		}
		switch {
		case re.StatusCode == 404 && (re.ErrorCode == "ContainerNotFound" || re.ErrorCode == "FilesystemNotFound"):
			return probe{state: stNoContainer, detail: detail}
		case re.StatusCode == 404:
			return probe{state: stMissing, detail: detail}
		case re.StatusCode == 401 || re.StatusCode == 403:
			return probe{state: stRefused, detail: detail}
		}
		return probe{state: stFailed, detail: detail}
	case parent.Err() != nil:
		return probe{state: stInterrupted, detail: parent.Err().Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return probe{state: stTimeout, detail: "timeout"}
	}
	var op *net.OpError
	if errors.As(err, &op) {
		return probe{state: stUnreachable, detail: op.Error()}
	}
	var dns *net.DNSError
	if errors.As(err, &dns) {
		return probe{state: stUnreachable, detail: dns.Error()}
	}
	return probe{state: stFailed, detail: c.scrub(err.Error())}
}

func folderPrefix(p string) string {
	if p == "" || strings.HasSuffix(p, "/") {
		return p
	}
	return p + "/"
}

func cachedNote(p probe) string {
	if p.cached {
		return "; cached"
	}
	return ""
}

func count(n int, atLeast bool, noun string) string {
	s := fmt.Sprintf("%d %s", n, noun)
	if n != 1 {
		s += "s"
	}
	if atLeast {
		s = "at least " + s
	}
	return s
}

func quoteAll(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = fmt.Sprintf("%q", s)
	}
	return out
}

// queryRE matches a query string in text (an error quoting a request URL).
var queryRE = regexp.MustCompile(`\?[^\s"'<>]+`)

// scrubQueries replaces every query string in s with "?<redacted>".
func scrubQueries(s string) string {
	if !strings.Contains(s, "?") {
		return s
	}
	return queryRE.ReplaceAllString(s, "?<redacted>")
}
