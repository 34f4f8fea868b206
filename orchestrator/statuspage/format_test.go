package statuspage

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator"
)

func TestSafeURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://ml.azure.com/runs/job-1?wsid=/subscriptions/x", "https://ml.azure.com/runs/job-1?wsid=/subscriptions/x"},
		{"http://127.0.0.1:8080/studio", "http://127.0.0.1:8080/studio"},
		{"HTTPS://ml.azure.com/x", "https://ml.azure.com/x"},
		{"javascript:alert(1)", ""},
		{"JavaScript:alert(1)", ""},
		{" javascript:alert(1)", ""},
		{"data:text/html,<script>alert(1)</script>", ""},
		{"//evil.example/x", ""},
		{"/relative", ""},
		{"", ""},
		{"https://", ""},
		{"vbscript:msgbox", ""},
	}
	for _, tt := range tests {
		if got := safeURL(tt.in); got != tt.want {
			t.Errorf("safeURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedactURI(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://a.blob.core.windows.net/c/x.csv", "https://a.blob.core.windows.net/c/x.csv"},
		{"https://a.blob.core.windows.net/c/x.csv?sv=2024-01-01&se=2030&sig=abc%2Bdef", "https://a.blob.core.windows.net/c/x.csv?sv=2024-01-01&se=2030&sig=[redacted]"},
		// What the ledger holds after intake's scrub shows as it is, so the
		// page and the API say the same and no audit takes the marker for
		// a signature.
		{"https://a.blob.core.windows.net/c/x.csv?sv=2025-01-05&sig=[redacted]", "https://a.blob.core.windows.net/c/x.csv?sv=2025-01-05&sig=[redacted]"},
		{"https://a.example/x?SIG=1&token=2&keep=3", "https://a.example/x?SIG=[redacted]&token=[redacted]&keep=3"},
		{"https://user:pa55@a.example/x", "https://user:[redacted]@a.example/x"},
		{"azureml://datastores/raw/paths/in/x.csv", "azureml://datastores/raw/paths/in/x.csv"},
		{"https://a.example/%zz?sig=secret", "https://a.example/%zz?[query hidden]"},
	}
	for _, tt := range tests {
		if got := redactURI(tt.in); got != tt.want {
			t.Errorf("redactURI(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestDurAndAge(t *testing.T) {
	durs := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0ms"}, {850 * time.Millisecond, "850ms"}, {12 * time.Second, "12s"},
		{3*time.Minute + 5*time.Second, "3m 05s"}, {2*time.Hour + 3*time.Minute, "2h 03m"},
		{76 * time.Hour, "3d 4h"},
	}
	for _, tt := range durs {
		if got := durText(tt.d); got != tt.want {
			t.Errorf("durText(%s) = %q, want %q", tt.d, got, tt.want)
		}
	}
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	ages := []struct {
		ago  time.Duration
		want string
	}{
		{time.Second, "just now"}, {30 * time.Second, "30s ago"}, {5 * time.Minute, "5m ago"},
		{3 * time.Hour, "3h ago"}, {47 * time.Hour, "47h ago"}, {72 * time.Hour, "3d ago"},
	}
	for _, tt := range ages {
		if got := ageText(now, now.Add(-tt.ago)); got != tt.want {
			t.Errorf("ageText(-%s) = %q, want %q", tt.ago, got, tt.want)
		}
	}
	if got := ageText(now, time.Time{}); got != "—" {
		t.Errorf("ageText(zero) = %q, want —", got)
	}
	if got := untilText(now, now.Add(42*time.Second)); got != "in 42s" {
		t.Errorf("untilText(+42s) = %q, want in 42s", got)
	}
}

func TestMainInput(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		run      orchestrator.Run
		want     string
		wantMore int
	}{
		{"the request's URI input, by name", orchestrator.Run{Request: &jobs.JobRequest{Inputs: map[string]jobs.Input{
			"z": {Type: jobs.TypeUriFile, URI: "https://a/z"}, "a": {Type: jobs.TypeLiteral, Value: "7"}, "m": {Type: jobs.TypeUriFolder, URI: "https://a/m/"},
		}}}, "https://a/m/", 2},
		{"only literals", orchestrator.Run{Request: &jobs.JobRequest{Inputs: map[string]jobs.Input{"n": {Type: jobs.TypeLiteral, Value: "7"}}}}, "n = 7", 0},
		{"a blob event", orchestrator.Run{Event: orchestrator.Event{Blob: &orchestrator.BlobEvent{URL: "https://a/b?sig=x"}}}, "https://a/b?sig=[redacted]", 0},
		{"a cron slot", orchestrator.Run{Event: orchestrator.Event{Schedule: &orchestrator.ScheduleEvent{Time: at}}}, "slot 2030-01-02 03:00:00 UTC", 0},
		{"a message", orchestrator.Run{Event: orchestrator.Event{Message: &orchestrator.MessageEvent{Subject: "jobs.in"}}}, "message on jobs.in", 0},
		{"nothing", orchestrator.Run{}, "", 0},
	}
	for _, tt := range tests {
		got, more := mainInput(&tt.run)
		if got != tt.want || more != tt.wantMore {
			t.Errorf("%s: mainInput = %q, +%d; want %q, +%d", tt.name, got, more, tt.want, tt.wantMore)
		}
	}
}

// luminance is the WCAG relative luminance of a #rrggbb colour.
func luminance(t *testing.T, hex string) float64 {
	t.Helper()
	hex = strings.TrimPrefix(hex, "#")
	if len(hex) == 3 {
		hex = string([]byte{hex[0], hex[0], hex[1], hex[1], hex[2], hex[2]})
	}
	if len(hex) != 6 {
		t.Fatalf("colour %q is not #rrggbb", hex)
	}
	var ch [3]float64
	for i := range 3 {
		v, err := strconv.ParseUint(hex[2*i:2*i+2], 16, 8)
		if err != nil {
			t.Fatalf("colour %q: %v", hex, err)
		}
		c := float64(v) / 255
		if c <= 0.04045 {
			ch[i] = c / 12.92
		} else {
			ch[i] = math.Pow((c+0.055)/1.055, 2.4)
		}
	}
	return 0.2126*ch[0] + 0.7152*ch[1] + 0.0722*ch[2]
}

func contrast(t *testing.T, fg, bg string) float64 {
	a, b := luminance(t, fg), luminance(t, bg)
	if a < b {
		a, b = b, a
	}
	return (a + 0.05) / (b + 0.05)
}

// TestColorContrast checks every text colour of the stylesheet against its
// background for WCAG AA (4.5:1): the block's own background-color, else
// the header's for .top rules, else the page's white; plus the pairs that
// only nesting makes (links and muted text on tinted panels, button hovers).
func TestColorContrast(t *testing.T) {
	css, err := staticFS.ReadFile("static/app.css")
	if err != nil {
		t.Fatal(err)
	}
	const page, header = "#ffffff", "#1d2530"
	colorRe := regexp.MustCompile(`(?:^|[;{\s])color:\s*(#[0-9a-fA-F]{3,6})\b`)
	bgRe := regexp.MustCompile(`background-color:\s*(#[0-9a-fA-F]{3,6})\b`)
	blockRe := regexp.MustCompile(`([^{}]+)\{([^{}]*)\}`)
	checked := 0
	for _, m := range blockRe.FindAllStringSubmatch(string(css), -1) {
		sel, decl := strings.TrimSpace(m[1]), m[2]
		c := colorRe.FindStringSubmatch(decl)
		if c == nil {
			continue
		}
		bg := page
		if b := bgRe.FindStringSubmatch(decl); b != nil {
			bg = b[1]
		} else if strings.HasPrefix(sel, ".top") {
			bg = header
		}
		checked++
		if r := contrast(t, c[1], bg); r < 4.5 {
			t.Errorf("%s: %s on %s has contrast %.2f, want ≥ 4.5", sel, c[1], bg, r)
		}
	}
	if checked < 30 {
		t.Fatalf("only %d colour rules found; the parser is broken", checked)
	}
	nested := []struct{ what, fg, bg string }{
		{"link on the filters panel", "#0b57d0", "#f6f7f9"},
		{"link on the many-new-runs note", "#0b57d0", "#fff1c2"},
		{"link on a hovered row", "#0b57d0", "#f6f7f9"},
		{"muted text on a panel or hovered row", "#545b64", "#f6f7f9"},
		{"muted text on the table header", "#545b64", "#eef0f3"},
		{"hovered link", "#083f9c", "#ffffff"},
		{"button text on hover", "#ffffff", "#083f9c"},
		{"danger button text on hover", "#ffffff", "#8c1d18"},
		{"header link", "#ffffff", header},
		{"state text on a hovered row is on its own badge", "#3d4451", "#e6e8eb"},
	}
	for _, n := range nested {
		if r := contrast(t, n.fg, n.bg); r < 4.5 {
			t.Errorf("%s: %s on %s has contrast %.2f, want ≥ 4.5", n.what, n.fg, n.bg, r)
		}
	}
	// Every state has its own text colour rule (state shown as text, coloured).
	for _, s := range orchestrator.States {
		if !strings.Contains(string(css), fmt.Sprintf(".state-%s {", s)) {
			t.Errorf("no style for state %s", s)
		}
	}
	// Focus is visible.
	if !strings.Contains(string(css), ":focus-visible {\n  outline: 3px solid") {
		t.Errorf("no visible focus outline")
	}
}
