package blob

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path"
	"strings"
)

// Ref is one blob, named the same way whatever told us about it.
type Ref struct {
	// URL is the canonical blob URL: https://<account>.blob.<suffix>/<container>/<name>
	// for Azure (dfs and privatelink hosts are mapped to it), or
	// <scheme>://<host>/<account>/<container>/<name> for path-style
	// endpoints (Azurite), always escaped the same way.
	URL       string
	Account   string
	Container string
	Name      string
}

// Folder is the blob's folder inside the container with a trailing "/", or
// "" at the container's root.
func (r Ref) Folder() string {
	if i := strings.LastIndex(r.Name, "/"); i >= 0 {
		return r.Name[:i+1]
	}
	return ""
}

// FolderURL is the URL of the blob's folder, with a trailing "/".
func (r Ref) FolderURL() string {
	return r.URL[:strings.LastIndex(r.URL, "/")+1]
}

// Key is the idempotency key of the blob's content version: the canonical
// URL and the unquoted eTag. The webhook and the poller build it the same
// way, so the orchestrator's run-id dedupe keeps them from double-submitting.
func Key(ref Ref, etag string) string { return ref.URL + "@" + UnquoteETag(etag) }

// UnquoteETag strips the quotes (and a weak W/ prefix) Azure puts around
// eTags in some answers but not others.
func UnquoteETag(etag string) string {
	etag = strings.TrimSpace(etag)
	etag = strings.TrimPrefix(etag, "W/")
	return strings.Trim(etag, `"`)
}

// ParseURL parses and canonicalises a blob URL.
func ParseURL(raw string) (Ref, error) {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil {
		return Ref{}, fmt.Errorf("blob url: %w", err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return Ref{}, fmt.Errorf("blob url %q: scheme must be http or https", raw)
	}
	host := strings.ToLower(u.Hostname())
	if host == "" {
		return Ref{}, fmt.Errorf("blob url %q: no host", raw)
	}
	segs := strings.SplitN(strings.TrimPrefix(u.Path, "/"), "/", 3)
	var ref Ref
	var canonHost, scheme, pathPrefix string
	if ip := net.ParseIP(host); ip != nil || host == "localhost" || !strings.Contains(host, ".") {
		// Path-style (Azurite, emulators): /<account>/<container>/<name>.
		if len(segs) < 3 {
			return Ref{}, fmt.Errorf("blob url %q: want /<account>/<container>/<blob> on a path-style endpoint", raw)
		}
		ref.Account, ref.Container, ref.Name = segs[0], segs[1], segs[2]
		scheme, canonHost, pathPrefix = u.Scheme, strings.ToLower(u.Host), "/"+ref.Account
	} else {
		labels := strings.Split(host, ".")
		i := 1
		if len(labels) > 2 && labels[1] == "privatelink" {
			i = 2
		}
		if len(labels) < i+3 || (labels[i] != "blob" && labels[i] != "dfs") {
			return Ref{}, fmt.Errorf("blob url %q: host is not <account>.blob.<suffix> or <account>.dfs.<suffix>", raw)
		}
		ref.Account = labels[0]
		segs = strings.SplitN(strings.TrimPrefix(u.Path, "/"), "/", 2)
		if len(segs) < 2 {
			return Ref{}, fmt.Errorf("blob url %q: want /<container>/<blob>", raw)
		}
		ref.Container, ref.Name = segs[0], segs[1]
		scheme, canonHost = "https", ref.Account+".blob."+strings.Join(labels[i+1:], ".")
	}
	if ref.Account == "" || ref.Container == "" || ref.Name == "" || strings.HasSuffix(ref.Name, "/") {
		return Ref{}, fmt.Errorf("blob url %q: empty account, container or blob name", raw)
	}
	ref.URL = scheme + "://" + canonHost + escapePath(pathPrefix+"/"+ref.Container+"/"+ref.Name)
	return ref, nil
}

// escapePath escapes p as net/url does for a path (so every producer of a
// URL for the same blob gets the same string).
func escapePath(p string) string { return (&url.URL{Path: p}).EscapedPath() }

// errNoAccount is returned by topicAccount for a topic without one.
var errNoAccount = errors.New("no storageAccounts segment")

// topicAccount extracts <acct> from an Event Grid topic
// /subscriptions/.../providers/Microsoft.Storage/storageAccounts/<acct>.
func topicAccount(topic string) (string, error) {
	const seg = "/storageaccounts/"
	i := strings.LastIndex(strings.ToLower(topic), seg)
	if i < 0 {
		return "", errNoAccount
	}
	acct := topic[i+len(seg):]
	if j := strings.IndexByte(acct, '/'); j >= 0 {
		acct = acct[:j]
	}
	if acct == "" {
		return "", errNoAccount
	}
	return acct, nil
}

// matchName applies the prefix/suffix/glob filters to a blob name.
func (c *Config) matchName(name string) (bool, string) {
	if c.Prefix != "" && !strings.HasPrefix(name, c.Prefix) {
		return false, fmt.Sprintf("name %q does not start with prefix %q", name, c.Prefix)
	}
	if c.Suffix != "" && !strings.HasSuffix(name, c.Suffix) {
		return false, fmt.Sprintf("name %q does not end with suffix %q", name, c.Suffix)
	}
	if c.Glob != "" {
		if ok, _ := path.Match(c.Glob, name); !ok {
			return false, fmt.Sprintf("name %q does not match glob %q", name, c.Glob)
		}
	}
	return true, ""
}

// isMarker reports whether ref is the batch marker file of a folder the
// pipeline watches (markers skip the suffix/glob/size filters: _SUCCESS is
// usually empty and has no .csv suffix).
func (c *Config) isMarker(ref Ref) bool {
	return c.Batch != nil && c.Batch.Marker != "" && path.Base(ref.Name) == c.Batch.Marker &&
		strings.HasPrefix(ref.Name, c.Prefix)
}

// blobFacts is what matching needs to know of a blob.
type blobFacts struct {
	ref     Ref
	api     string // "" for the poller (listings show committed blobs only)
	size    int64
	hasSize bool
}

// match reports whether the pipeline takes the blob, and why not.
func (c *Config) match(f blobFacts) (bool, string) {
	if !strings.EqualFold(f.ref.Account, c.Account) {
		return false, fmt.Sprintf("account %q is not %q", f.ref.Account, c.Account)
	}
	if f.ref.Container != c.Container {
		return false, fmt.Sprintf("container %q is not %q", f.ref.Container, c.Container)
	}
	if c.isMarker(f.ref) {
		return true, ""
	}
	if ok, why := c.matchName(f.ref.Name); !ok {
		return false, why
	}
	if f.api != "" {
		apis := c.APIs()
		ok := false
		for _, a := range apis {
			if strings.EqualFold(a, f.api) {
				ok = true
				break
			}
		}
		if !ok {
			return false, fmt.Sprintf("api %s is not one of %s", f.api, strings.Join(apis, ", "))
		}
	}
	if min := c.MinSizeOrDefault(); f.hasSize && f.size < min {
		return false, fmt.Sprintf("size %d is below min_size %d", f.size, min)
	}
	if !f.hasSize && c.MinSizeOrDefault() > 0 {
		return false, "the event has no contentLength and min_size is above 0"
	}
	return true, ""
}
