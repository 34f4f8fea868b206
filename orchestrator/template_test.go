package orchestrator

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/jobs"
)

func TestTemplateValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, src, trigger string
		want               string // rendered sample, when no error
		wantErr            string
	}{
		{"blob url", "{{ .Blob.URL }}", "blob", "https://account.blob.core.windows.net/container/folder/file.csv", ""},
		{"typo names the field", "{{ .Blob.Nmae }}", "blob", "", "unknown field .Blob.Nmae"},
		{"blob field on a cron pipeline", "{{ .Blob.URL }}", "cron", "", ".Blob is not available for this trigger (.Blob.URL)"},
		{"date of the slot", `azureml://datastores/ws/paths/{{ date "2006/01/02" .Schedule.Time }}/`, "cron", "azureml://datastores/ws/paths/2026/01/02/", ""},
		{"message data is free-form", "{{ .Message.Data.path }}", "nats", "<no value>", ""},
		{"nested message data", "{{ .Message.Data.a.b }}", "nats", "", ""},
		{"fields are free-form", "{{ .Fields.day }}", "", "", ""},
		{"run id", "out/{{ .Run.ID }}.csv", "", "out/" + RunID("p", "sample") + ".csv", ""},
		{"functions", `{{ base .Blob.Name | upper }} {{ dir .Blob.Name }} {{ trimSuffix ".csv" .Blob.Name }} {{ replace "/" "-" .Blob.Folder }}`, "blob", "FILE.CSV folder folder/file folder-", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tpl, err := CompileTemplate(tt.src)
			if err != nil {
				t.Fatalf("CompileTemplate(%q): %v", tt.src, err)
			}
			got, err := tpl.Validate(SampleTemplateData("p", tt.trigger))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Validate(%q) error = %v, want %q", tt.src, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Validate(%q): %v", tt.src, err)
			}
			if tt.want != "" && got != tt.want {
				t.Errorf("Validate(%q) = %q, want %q", tt.src, got, tt.want)
			}
		})
	}
}

func TestCompileTemplateRejectsUnknownFunction(t *testing.T) {
	t.Parallel()
	for _, src := range []string{`{{ env "HOME" }}`, `{{ .Blob.URL `, `{{ exec "ls" }}`} {
		if _, err := CompileTemplate(src); err == nil {
			t.Errorf("CompileTemplate(%q) = nil error, want one", src)
		}
	}
}

// At run time a missing message field is an error that names it, so the run
// is rejected with a reason instead of posting a job with "<no value>".
func TestTemplateExecuteMissingMessageField(t *testing.T) {
	t.Parallel()
	tpl, err := CompileTemplate("{{ .Message.Data.path }}")
	if err != nil {
		t.Fatal(err)
	}
	ev := Event{Pipeline: "p", Key: "k", Message: &MessageEvent{Subject: "s", Data: json.RawMessage(`{"other":1}`)}}
	data, err := NewTemplateData("id", ev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tpl.Execute(data); err == nil || err.Error() != "no value for .Message.Data.path" {
		t.Errorf("Execute error = %v, want %q", err, "no value for .Message.Data.path")
	}
}

func TestPipelineRender(t *testing.T) {
	t.Parallel()
	must := func(s string) *Template {
		tpl, err := CompileTemplate(s)
		if err != nil {
			t.Fatal(err)
		}
		return tpl
	}
	p := &Pipeline{
		Name:     "score",
		Endpoint: Endpoint{Endpoint: jobs.Endpoint{Name: "ep"}, DeploymentKind: "model"},
		Inputs:   map[string]IOTemplate{"data": {Type: jobs.TypeUriFile, URI: must("{{ .Blob.URL }}")}},
		Outputs: map[string]IOTemplate{"score": {Type: jobs.TypeUriFile,
			URI: must(`azureml://datastores/out/paths/{{ date "2006-01-02" .Time }}/{{ .Run.ID }}.csv`)}},
		ExperimentName: must("exp-{{ .Pipeline }}"),
	}
	ev := Event{Pipeline: "score", Key: "k", Time: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC),
		Blob: &BlobEvent{URL: "https://a.blob.core.windows.net/c/x.csv"}}
	req, check, err := p.Render("rid", ev)
	if err != nil {
		t.Fatalf("Render: %v", err)
	}
	want := jobs.JobRequest{
		Inputs:         map[string]jobs.Input{"data": {Type: "UriFile", URI: "https://a.blob.core.windows.net/c/x.csv"}},
		Outputs:        map[string]jobs.Output{"score": {Type: "UriFile", URI: "azureml://datastores/out/paths/2026-03-04/rid.csv"}},
		ExperimentName: "exp-score",
	}
	if diff := cmp.Diff(want, req); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
	if len(check.Inputs) != 1 || check.Inputs[0].URI != want.Inputs["data"].URI || check.Deployment != "model" {
		t.Errorf("check request = %+v", check)
	}
}

// Hostile message fields never change the shape of a JSON request: with
// every value written through json, the keys stay the template's.
func TestRequestTemplateKeepsItsKeys(t *testing.T) {
	t.Parallel()
	p := hostileRequestPipeline(t)
	for _, v := range []string{
		`x","extra":{"a":1},"y":"`, `\`, `\"}`, "}\n{", `\u0022,"k":1`, "</script>", "\x00\x1f", `{"a":1}`, strings.Repeat(`"`, 100),
	} {
		checkRequestKeys(t, p, v)
	}
}

// FuzzRequestTemplate: any field value keeps the request's keys.
func FuzzRequestTemplate(f *testing.F) {
	for _, s := range []string{`x","extra":1,"y":"`, `\`, "}\n{", `\u0022`} {
		f.Add(s)
	}
	p := hostileRequestPipeline(f)
	f.Fuzz(func(t *testing.T, v string) { checkRequestKeys(t, p, v) })
}

func hostileRequestPipeline(t testing.TB) *Pipeline {
	t.Helper()
	tmpl, err := CompileTemplate(`{"text": {{ json .Fields.text }}, "run": {{ json .Run.ID }}}`)
	if err != nil {
		t.Fatal(err)
	}
	if err := tmpl.CheckJSONSafe(); err != nil {
		t.Fatalf("the safe template is refused: %v", err)
	}
	return &Pipeline{Name: "p", Request: tmpl}
}

func checkRequestKeys(t *testing.T, p *Pipeline, v string) {
	t.Helper()
	out, err := p.RenderRequest("0123456789abcdef0123456789abcdef", Event{Pipeline: "p", Key: "k", Fields: map[string]string{"text": v}})
	if err != nil {
		t.Fatalf("render with %q: %v", v, err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("render with %q is not JSON: %s", v, out)
	}
	if len(m) != 2 || m["run"] == nil || m["text"] == nil {
		t.Errorf("render with %q has keys %v, want text and run", v, m)
	}
	if utf8.ValidString(v) && m["text"] != v {
		t.Errorf("text = %q, want the field as it was, %q", m["text"], v)
	}
}

// Unsafe placements are refused at load time, naming the line.
func TestCheckJSONSafe(t *testing.T) {
	t.Parallel()
	tests := []struct {
		src  string
		want string // "" means safe
	}{
		{`{{ .Message.Body }}`, ""},
		{`{"a": {{ json .Fields.a }}, {{ if .Fields.b }}"b": {{ json .Fields.b }}{{ end }}}`, ""},
		{`{{ $x := .Fields.a }}{"a": {{ json $x }}}`, ""},
		{`{"a": "{{ .Fields.a }}"}`, "line 1: {{.Fields.a}} is inside a JSON string's quotes"},
		{`{"a": "{{ json .Fields.a }}"}`, "inside a JSON string's quotes"},
		{"{\n\"a\": {{ .Fields.a }}}", "line 2: {{.Fields.a}} writes a value into the JSON as raw text"},
		{`{"a": {{ .Fields.a | lower }}}`, "as raw text"},
		{`{"a": {{ range .Fields }}{{ . }}{{ end }}}`, "as raw text"},
	}
	for _, tt := range tests {
		tmpl, err := CompileTemplate(tt.src)
		if err != nil {
			t.Fatalf("compile %q: %v", tt.src, err)
		}
		err = tmpl.CheckJSONSafe()
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%q: %v, want safe", tt.src, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%q: %v, want %q", tt.src, err, tt.want)
		}
	}
}
