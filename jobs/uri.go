package jobs

import (
	"net/url"
	"strings"
)

// CanonicalURI is the form in which two URIs that name the same data
// compare equal, for matching a job the service lists against the request
// batchd sent:
//   - a workspace-qualified datastore URI,
//     azureml://subscriptions/<s>/resourcegroups/<rg>/workspaces/<ws>/datastores/<ds>/paths/<p>,
//     becomes the short form azureml://datastores/<ds>/paths/<p> (the
//     service may write either);
//   - the scheme and host are lower-cased (they are case-insensitive);
//   - the path is percent-decoded (a service may encode what it was given
//     unencoded, or the other way round);
//   - a trailing slash is dropped (a folder with and without it).
//
// It does not resolve data asset versions or datastores to storage URLs:
// those are different names for the data, and a job that used one is not
// assumed to be the job that used the other.
func CanonicalURI(uri string) string {
	s := strings.TrimSpace(uri)
	if i := strings.Index(s, "://"); i > 0 {
		s = strings.ToLower(s[:i]) + s[i:]
	}
	if rest, ok := strings.CutPrefix(s, "azureml://"); ok {
		parts := strings.Split(rest, "/")
		for i := 0; i+1 < len(parts); i++ {
			if strings.EqualFold(parts[i], "datastores") && i > 0 && strings.EqualFold(parts[0], "subscriptions") {
				rest = strings.Join(parts[i:], "/")
				break
			}
		}
		s = "azureml://" + rest
	} else if u, err := url.Parse(s); err == nil && u.Host != "" {
		u.Host = strings.ToLower(u.Host)
		s = u.Scheme + "://" + u.Host + u.EscapedPath()
		if u.RawQuery != "" {
			s += "?" + u.RawQuery
		}
	}
	if p, err := url.PathUnescape(s); err == nil {
		s = p
	}
	return strings.TrimRight(s, "/")
}

// AzureName is the endpoint's name in Azure ML, read from its scoring URI:
// the first label of https://<name>.<region>.inference.ml.azure.com/jobs,
// or, for a URI without an inference host (a gateway, the simulator), the
// path segment before /jobs. Empty when neither is there.
func (e Endpoint) AzureName() string {
	u, err := url.Parse(e.ScoringURI)
	if err != nil {
		return ""
	}
	host := u.Hostname()
	if i := strings.Index(host, ".inference."); i > 0 {
		name, _, _ := strings.Cut(host, ".")
		return name
	}
	segs := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(segs) >= 2 && segs[len(segs)-1] == "jobs" {
		return segs[len(segs)-2]
	}
	return ""
}
