package statuspage

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator"
)

// safeURL returns s when it is an absolute http or https URL, else "".
// Only such URLs become links: a javascript: or data: "studio URL" is shown
// as text.
func safeURL(s string) string {
	u, err := url.Parse(strings.TrimSpace(s))
	if err != nil || u.Host == "" {
		return ""
	}
	switch strings.ToLower(u.Scheme) {
	case "http", "https":
		return u.String()
	}
	return ""
}

// secretParams are query parameters whose values are credentials (a SAS
// signature, an access token). The ledger is not supposed to hold any; the
// page hides them anyway, should a trigger ever record such a URL.
var secretParams = []string{"sig", "signature", "token", "access_token", "code", "key", "apikey", "api_key",
	"password", "secret", "client_secret", "x-amz-signature", "x-goog-signature"}

// redactURI hides the values of secret-looking query parameters and any
// user:password in a URI.
func redactURI(s string) string {
	q := strings.IndexByte(s, '?')
	at := strings.IndexByte(s, '@')
	if q < 0 && at < 0 {
		return s
	}
	u, err := url.Parse(s)
	if err != nil {
		if q >= 0 {
			return s[:q] + "?[query hidden]"
		}
		return s
	}
	hidePass := false
	if _, hasPass := u.User.Password(); hasPass {
		// url.URL escapes brackets in a password, so a stand-in goes
		// through String and the marker replaces it after.
		u.User = url.UserPassword(u.User.Username(), passStandIn)
		hidePass = true
	}
	if u.RawQuery != "" {
		parts := strings.Split(u.RawQuery, "&")
		for i, part := range parts {
			k, _, _ := strings.Cut(part, "=")
			name, err := url.QueryUnescape(k)
			if err != nil {
				name = k
			}
			if slices.Contains(secretParams, strings.ToLower(name)) {
				parts[i] = k + "=" + redacted
			}
		}
		u.RawQuery = strings.Join(parts, "&")
	}
	out := u.String()
	if hidePass {
		out = strings.Replace(out, ":"+passStandIn+"@", ":"+redacted+"@", 1)
	}
	return out
}

// redacted is what the page shows for a hidden value: the marker intake's
// scrub writes into the ledger (sig=[redacted]), so the page and the API
// say the same, and a value already hidden is not hidden again.
const redacted = jobs.Redacted

const passStandIn = "batchd-hidden-password"

// secretHeader reports whether a message header's value should be hidden
// (runs stored before intake scrubbed headers may still hold one).
func secretHeader(name string) bool { return orchestrator.SecretHeader(name) }

// ageText says how long ago t was, coarsely ("3m ago").
func ageText(now, t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	d := now.Sub(t)
	switch {
	case d < 5*time.Second:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d/time.Minute))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d/time.Hour))
	default:
		return fmt.Sprintf("%dd ago", int(d/(24*time.Hour)))
	}
}

// untilText says how far in the future t is ("in 42s").
func untilText(now, t time.Time) string {
	d := t.Sub(now)
	if d <= 0 {
		return "now"
	}
	return "in " + durText(d)
}

// durText formats a duration for people: "850ms", "12s", "3m 05s",
// "2h 03m", "3d 4h".
func durText(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d/time.Millisecond)
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Round(time.Second)/time.Second))
	case d < time.Hour:
		d = d.Round(time.Second)
		return fmt.Sprintf("%dm %02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		d = d.Round(time.Minute)
		return fmt.Sprintf("%dh %02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		d = d.Round(time.Hour)
		return fmt.Sprintf("%dd %dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}

// isoTime is t in UTC, RFC 3339 with milliseconds, for <time datetime>.
func isoTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}

// clockTime is t in UTC for people.
func clockTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

// shortID is the first 12 characters of a run id.
func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// runDuration is the time from the first history entry to the terminal
// one; ok is false while the run is not finished.
func runDuration(r *orchestrator.Run) (time.Duration, bool) {
	if !r.State.Terminal() || len(r.History) == 0 {
		return 0, false
	}
	return r.History[len(r.History)-1].At.Sub(r.History[0].At), true
}

// mainInput is what the runs table shows as the run's input: the first URI
// input of the request (by name), else the event's blob URL, schedule slot
// or message subject. more counts the request's other inputs.
func mainInput(r *orchestrator.Run) (in string, more int) {
	if r.Request != nil && len(r.Request.Inputs) > 0 {
		names := make([]string, 0, len(r.Request.Inputs))
		for n := range r.Request.Inputs {
			names = append(names, n)
		}
		slices.Sort(names)
		pick := ""
		for _, n := range names {
			if r.Request.Inputs[n].URI != "" {
				pick = n
				break
			}
		}
		if pick == "" {
			pick = names[0]
		}
		i := r.Request.Inputs[pick]
		if i.URI != "" {
			in = redactURI(i.URI)
		} else {
			in = pick + " = " + i.Value
		}
		return in, len(names) - 1
	}
	switch ev := r.Event; {
	case ev.Blob != nil && ev.Blob.URL != "":
		return redactURI(ev.Blob.URL), 0
	case ev.Schedule != nil:
		return "slot " + clockTime(ev.Schedule.Time), 0
	case ev.Message != nil:
		return "message on " + ev.Message.Subject, 0
	}
	return "", 0
}
