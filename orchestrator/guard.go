package orchestrator

import (
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// BrowserGuard keeps web pages the operator's browser opens from driving
// batchd's API and status page. Without an API token a loopback install
// trusts whoever can reach 127.0.0.1, and that includes any page: it can
// send simple cross-origin requests (a form, text/plain, mode: 'no-cors')
// without a preflight, and a DNS-rebinding page can read the answers.
//   - Host must be a loopback name or address, or one of Hosts: a
//     rebinding page's requests carry its own name (421 Misdirected
//     Request). Checked when CheckHost is set.
//   - A request whose Origin is not the host it was sent to, or that says
//     Sec-Fetch-Site: cross-site, is refused (403). The CLI and curl send
//     neither; the status page's own requests are same-origin. A GET that
//     is a top-level navigation (a link from another site) is let through:
//     the page is shown to the user, and the linking site cannot read it.
//   - A POST, PUT, PATCH or DELETE must be Content-Type: application/json
//     (415): a page cannot send that cross-origin without a preflight,
//     which batchd never answers.
type BrowserGuard struct {
	// Hosts are further Host names (or addresses) to answer, without port:
	// the names batchd is reached by (BATCHD_HTTP_HOSTS).
	Hosts []string
	// CheckHost enables the Host check (on without an API token, or when
	// Hosts are set).
	CheckHost bool
}

// Wrap returns next behind the guard.
func (g BrowserGuard) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.CheckHost && !g.hostAllowed(r.Host) {
			writeError(w, http.StatusMisdirectedRequest, "misdirected",
				"batchd does not answer to this host name; add it to BATCHD_HTTP_HOSTS if batchd is really reached by it")
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
			writeError(w, http.StatusForbidden, "cross_origin", "requests from another web origin are refused")
			return
		}
		navigation := (r.Method == http.MethodGet || r.Method == http.MethodHead) && strings.EqualFold(r.Header.Get("Sec-Fetch-Mode"), "navigate")
		if strings.EqualFold(r.Header.Get("Sec-Fetch-Site"), "cross-site") && !navigation {
			writeError(w, http.StatusForbidden, "cross_origin", "requests from another web site are refused")
			return
		}
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
			if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
				writeError(w, http.StatusUnsupportedMediaType, "unsupported_media_type", "send the request body as Content-Type: application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

func (g BrowserGuard) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.ToLower(strings.Trim(host, "[]")), ".")
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return true
	}
	for _, h := range g.Hosts {
		if strings.EqualFold(strings.TrimSuffix(h, "."), host) {
			return true
		}
	}
	return false
}

// sameOrigin reports whether origin (scheme://host[:port]) names host, the
// request's Host header.
func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false // includes "null"
	}
	return strings.EqualFold(u.Host, host)
}
