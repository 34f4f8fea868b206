package orchestrator

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
)

// Template is one compiled pipeline template (an input URI, an output URI, a
// literal value, the experiment name). Templates are Go text/template over
// TemplateData with a small set of pure functions: nothing a template does
// reaches outside the process.
type Template struct {
	src string
	t   *template.Template
}

// templateFuncs are the only functions templates may call.
var templateFuncs = template.FuncMap{
	// date formats t with a Go layout: {{ date "2006/01/02" .Time }}.
	"date":       func(layout string, t time.Time) string { return t.UTC().Format(layout) },
	"trimPrefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
	"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
	"base":       path.Base,
	"dir":        path.Dir,
	"replace":    func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
	"lower":      strings.ToLower,
	"upper":      strings.ToUpper,
	// json encodes a value as JSON text: {{ json .Message.Data.features }},
	// {{ json .Fields.text }} (a quoted, escaped string). For request
	// templates of online pipelines.
	"json": templateJSON,
}

// TemplateFuncs lists the function names templates may use (for docs).
func TemplateFuncs() []string {
	return []string{"date", "trimPrefix", "trimSuffix", "base", "dir", "replace", "lower", "upper", "json"}
}

func templateJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("json: %w", err)
	}
	return string(b), nil
}

// CompileTemplate parses src. A syntax error or an unknown function is an
// error here, at load time.
func CompileTemplate(src string) (*Template, error) {
	t, err := template.New("t").Funcs(templateFuncs).Option("missingkey=error").Parse(src)
	if err != nil {
		return nil, errors.New(cleanTemplateError(err))
	}
	return &Template{src: src, t: t}, nil
}

// Source is the template's text.
func (t *Template) Source() string {
	if t == nil {
		return ""
	}
	return t.src
}

// Execute renders the template. Errors name the field at fault:
// "unknown field .Blob.Nmae", "no .Blob for this run (source cron)".
func (t *Template) Execute(data *TemplateData) (string, error) {
	var b bytes.Buffer
	if err := t.t.Execute(&b, data); err != nil {
		return "", errors.New(cleanTemplateError(err))
	}
	return b.String(), nil
}

// TemplateData is what templates see.
type TemplateData struct {
	Run      RunData
	Pipeline string
	Time     time.Time
	Blob     *BlobEvent
	Schedule *ScheduleEvent
	Message  *MessageData
	Fields   map[string]string
}

// RunData is the run as templates see it.
type RunData struct {
	ID string
}

// MessageData is a NATS message as templates see it: Data is the decoded
// JSON body, so {{ .Message.Data.path }} reads a field of it, and
// {{ .Message.Body }} is the body as received.
type MessageData struct {
	Subject string
	Data    any
	Headers map[string]string
	raw     []byte
}

// Body is the message body exactly as received (JSON text): the request
// body of an online pipeline that passes messages through unchanged, with
// no number or key order lost to decoding. "{}" for sample data.
func (m *MessageData) Body() (string, error) {
	if m == nil {
		return "", errors.New(".Message is not available for this trigger (.Message.Body)")
	}
	if len(m.raw) == 0 {
		return "{}", nil
	}
	return string(m.raw), nil
}

// NewTemplateData builds the data for ev and its run id.
func NewTemplateData(runID string, ev Event) (*TemplateData, error) {
	d := &TemplateData{
		Run:      RunData{ID: runID},
		Pipeline: ev.Pipeline,
		Time:     ev.Time.UTC(),
		Blob:     ev.Blob,
		Schedule: ev.Schedule,
		Fields:   ev.Fields,
	}
	if ev.Message != nil {
		m := &MessageData{Subject: ev.Message.Subject, Headers: ev.Message.Headers, raw: ev.Message.Data}
		if len(ev.Message.Data) > 0 {
			if err := json.Unmarshal(ev.Message.Data, &m.Data); err != nil {
				return nil, fmt.Errorf("message body is not JSON: %w", err)
			}
		}
		d.Message = m
	}
	return d, nil
}

// SampleTemplateData is plausible data for a pipeline triggered by trigger
// ("blob", "cron", "nats", or "" for manual runs), used to validate templates
// at load time with Validate.
func SampleTemplateData(pipeline, trigger string) *TemplateData {
	t := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	d := &TemplateData{Run: RunData{ID: RunID(pipeline, "sample")}, Pipeline: pipeline, Time: t, Fields: map[string]string{}}
	switch trigger {
	case "blob":
		d.Blob = &BlobEvent{
			URL: "https://account.blob.core.windows.net/container/folder/file.csv", Account: "account",
			Container: "container", Name: "folder/file.csv", Folder: "folder/", ETag: "0x8D4BCC2E4835CD0", Size: 1,
		}
	case "cron":
		d.Schedule = &ScheduleEvent{Time: t, Previous: t.Add(-time.Hour)}
	case "nats":
		d.Message = &MessageData{Subject: "subject", Data: map[string]any{}, Headers: map[string]string{}}
	}
	return d
}

// Validate renders the template against sample data (SampleTemplateData) and
// returns the result. Unknown fields and fields the trigger does not provide
// are errors; keys under .Fields and .Message.Data are not, because their
// shape is only known at run time.
func (t *Template) Validate(sample *TemplateData) (string, error) {
	c, err := t.t.Clone()
	if err != nil {
		return "", err
	}
	var b bytes.Buffer
	if err := c.Option("missingkey=zero").Execute(&b, sample); err != nil {
		msg := err.Error()
		if strings.Contains(msg, "at <.Fields.") || strings.Contains(msg, "at <.Message.Data.") {
			return b.String(), nil
		}
		return "", errors.New(cleanTemplateError(err))
	}
	return b.String(), nil
}

var (
	reCantEval = regexp.MustCompile(`at <([^>]*)>: can't evaluate field (\w+) in type`)
	reNilPtr   = regexp.MustCompile(`at <([^>]*)>: nil pointer evaluating \*?[\w.]+\.(\w+)`)
	reNoEntry  = regexp.MustCompile(`at <([^>]*)>: map has no entry for key "([^"]*)"`)
	reNilData  = regexp.MustCompile(`at <([^>]*)>: nil data; no entry for key "([^"]*)"`)
	reCallErr  = regexp.MustCompile(`at <[^>]*>: error calling \w+: (.*)$`)
	rePrefix   = regexp.MustCompile(`^template: t:\d+(:\d+)?: `)
)

// cleanTemplateError turns text/template's messages into ones that name the
// field: "unknown field .Blob.Nmae", "no value for .Message.Data.id".
func cleanTemplateError(err error) string {
	msg := err.Error()
	if m := reCantEval.FindStringSubmatch(msg); m != nil {
		return "unknown field " + m[1]
	}
	if m := reNilPtr.FindStringSubmatch(msg); m != nil {
		field := strings.TrimSuffix(m[1], "."+m[2])
		return fmt.Sprintf("%s is not available for this trigger (%s)", field, m[1])
	}
	if m := reNoEntry.FindStringSubmatch(msg); m != nil {
		return "no value for " + m[1]
	}
	if m := reNilData.FindStringSubmatch(msg); m != nil {
		return "no value for " + m[1]
	}
	if m := reCallErr.FindStringSubmatch(msg); m != nil {
		return m[1]
	}
	msg = rePrefix.ReplaceAllString(msg, "")
	msg = strings.TrimPrefix(msg, `executing "t" `)
	return msg
}

// CheckJSONSafe reports the places where a request template puts a value
// into its JSON as raw text, so that a message field like
// `x","extra":{…},"y":"` could add keys to the scoring request. A value
// must be written through the json function ({{ json .Fields.text }}, a
// JSON value with its quotes), or be .Message.Body, which the NATS trigger
// has already checked to be one JSON object; and never inside a JSON
// string's quotes. Control structures (if, range, with) and variable
// declarations write nothing themselves; their bodies are checked.
// Each problem names its line.
func (t *Template) CheckJSONSafe() error {
	var errs []error
	var walk func(n parse.Node, prev string)
	walk = func(n parse.Node, prev string) {
		switch n := n.(type) {
		case *parse.ListNode:
			if n == nil {
				return
			}
			p := prev
			for _, c := range n.Nodes {
				walk(c, p)
				if tn, ok := c.(*parse.TextNode); ok {
					p = string(tn.Text)
				} else {
					p = ""
				}
			}
		case *parse.ActionNode:
			if len(n.Pipe.Decl) > 0 || len(n.Pipe.Cmds) == 0 {
				return
			}
			loc, _ := t.t.ErrorContext(n)
			line := loc
			if i := strings.Index(loc, ":"); i >= 0 {
				line = strings.SplitN(loc[i+1:], ":", 2)[0]
			}
			switch {
			case strings.HasSuffix(strings.TrimRight(prev, " \t"), `"`):
				errs = append(errs, fmt.Errorf("line %s: %s is inside a JSON string's quotes, where a value can end the string and add keys; write it outside the quotes with json: \"key\": {{ json … }}", line, n.String()))
			case jsonSafe(n.Pipe):
			default:
				errs = append(errs, fmt.Errorf("line %s: %s writes a value into the JSON as raw text, where a message field can add keys; use {{ json … }} (a JSON value, quotes included)", line, n.String()))
			}
		case *parse.IfNode:
			walk(n.List, prev)
			walk(n.ElseList, prev)
		case *parse.RangeNode:
			walk(n.List, prev)
			walk(n.ElseList, prev)
		case *parse.WithNode:
			walk(n.List, prev)
			walk(n.ElseList, prev)
		}
	}
	walk(t.t.Root, "")
	return errors.Join(errs...)
}

// jsonSafe reports whether a pipeline writes a JSON value: its last command
// is the json function, or it is exactly .Message.Body.
func jsonSafe(p *parse.PipeNode) bool {
	last := p.Cmds[len(p.Cmds)-1]
	if len(last.Args) > 0 {
		if id, ok := last.Args[0].(*parse.IdentifierNode); ok && id.Ident == "json" {
			return true
		}
	}
	if len(p.Cmds) == 1 && len(last.Args) == 1 {
		if f, ok := last.Args[0].(*parse.FieldNode); ok && len(f.Ident) == 2 && f.Ident[0] == "Message" && f.Ident[1] == "Body" {
			return true
		}
	}
	return false
}
