package jobs_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/bodies")

// txtar is the minimal subset of golang.org/x/tools/txtar the golden files
// use: a comment, then sections introduced by "-- name --" lines.
type txtar struct {
	comment string
	files   map[string][]byte
	order   []string
}

func parseTxtar(data []byte) txtar {
	a := txtar{files: map[string][]byte{}}
	name := ""
	var cur bytes.Buffer
	flush := func() {
		if name == "" {
			a.comment = cur.String()
		} else {
			a.files[name] = bytes.Clone(cur.Bytes())
			a.order = append(a.order, name)
		}
		cur.Reset()
	}
	for _, line := range strings.SplitAfter(string(data), "\n") {
		if strings.HasPrefix(line, "-- ") && strings.HasSuffix(strings.TrimRight(line, "\n"), " --") {
			flush()
			name = strings.TrimSuffix(strings.TrimPrefix(strings.TrimRight(line, "\n"), "-- "), " --")
			continue
		}
		cur.WriteString(line)
	}
	flush()
	return a
}

func (a txtar) format() []byte {
	var b bytes.Buffer
	b.WriteString(a.comment)
	for _, n := range a.order {
		b.WriteString("-- " + n + " --\n")
		b.Write(a.files[n])
	}
	return b.Bytes()
}

func indent(t *testing.T, b []byte) string {
	t.Helper()
	var out bytes.Buffer
	if err := json.Indent(&out, bytes.TrimSpace(b), "", "  "); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
	return out.String() + "\n"
}

// The exact bytes Submit puts on the wire, for each golden request. Each
// body is also sent to the simulator, which checks the schema and records
// the body it received.
func TestGoldenRequestBodies(t *testing.T) {
	files, err := filepath.Glob("testdata/bodies/*.txtar")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	sim := jobstest.New(t, jobstest.Options{RecordBodies: true})
	if err := sim.AddEndpoint("pipeline", jobstest.EndpointOptions{Kind: jobstest.KindPipeline, DefaultDeployment: "p"}); err != nil {
		t.Fatal(err)
	}
	h := newHarnessFor(t, sim, sim.Credential(uniqueID("golden")))
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			a := parseTxtar(data)
			var req jobs.JobRequest
			if err := json.Unmarshal(a.files["request.json"], &req); err != nil {
				t.Fatalf("request.json: %v", err)
			}
			body, err := jobs.RequestBody(req)
			if err != nil {
				t.Fatalf("RequestBody: %v", err)
			}
			got := indent(t, body)
			if *update {
				a.files["body.json"] = []byte(got)
				if err := os.WriteFile(file, a.format(), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if want := indent(t, a.files["body.json"]); got != want {
				t.Errorf("body for %s:\ngot:\n%s\nwant:\n%s", file, got, want)
			}

			ep := sim.Endpoint("model")
			if strings.Contains(file, "pipeline") {
				ep = sim.Endpoint("pipeline")
			}
			j, err := h.submit(ep, req)
			if err != nil {
				t.Fatalf("the simulator refused the golden body: %v", err)
			}
			view, _ := sim.Job(j.Name)
			if !bytes.Equal(view.Body, body) {
				t.Errorf("wire body:\n%s\nwant RequestBody's:\n%s", view.Body, body)
			}
		})
	}
}

// The documented example, byte for byte.
func TestSeedBodyVerbatim(t *testing.T) {
	const seed = `{"properties":{"InputData":{"mnistinput":{"JobInputType":"UriFolder","Uri":"https://azuremlexampledata.blob.core.windows.net/data/heart-disease-uci"}}}}`
	body, err := jobs.RequestBody(jobs.JobRequest{Inputs: map[string]jobs.Input{
		"mnistinput": {Type: jobs.TypeUriFolder, URI: "https://azuremlexampledata.blob.core.windows.net/data/heart-disease-uci"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != seed {
		t.Errorf("body = %s, want %s", body, seed)
	}
}

func TestRequestBodyErrors(t *testing.T) {
	neg := -time.Second
	tests := []struct {
		name string
		req  jobs.JobRequest
		want string
	}{
		{"input without uri", jobs.JobRequest{Inputs: map[string]jobs.Input{"d": {Type: "UriFile"}}}, `input "d" (UriFile) has no uri`},
		{"input without type", jobs.JobRequest{Inputs: map[string]jobs.Input{"d": {URI: "x"}}}, `input "d" has no type`},
		{"unnamed input", jobs.JobRequest{Inputs: map[string]jobs.Input{"": {Type: "UriFile", URI: "x"}}}, "empty name"},
		{"output without uri", jobs.JobRequest{Outputs: map[string]jobs.Output{"o": {Type: "UriFile"}}}, `output "o" has no uri`},
		{"output without type", jobs.JobRequest{Outputs: map[string]jobs.Output{"o": {URI: "x"}}}, `output "o" has no type`},
		{"negative retry timeout", jobs.JobRequest{Settings: jobs.Settings{RetryTimeout: &neg}}, "not positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := jobs.RequestBody(tt.req)
			if !errors.Is(err, jobs.ErrInvalidRequest) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want ErrInvalidRequest mentioning %q", err, tt.want)
			}
		})
	}
}

func TestISODuration(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{0, "PT0S"},
		{30 * time.Second, "PT30S"},
		{90 * time.Second, "PT1M30S"},
		{time.Hour, "PT1H"},
		{25*time.Hour + 2*time.Minute, "PT25H2M"},
		{1500 * time.Millisecond, "PT1.5S"},
	}
	for _, tt := range tests {
		if got := jobs.ISODuration(tt.d); got != tt.want {
			t.Errorf("ISODuration(%v) = %q, want %q", tt.d, got, tt.want)
		}
		if back, err := jobs.ParseISODuration(tt.want); err != nil || back != tt.d {
			t.Errorf("ParseISODuration(%q) = %v, %v, want %v", tt.want, back, err, tt.d)
		}
	}
	if d, err := jobs.ParseISODuration("P1DT2H"); err != nil || d != 26*time.Hour {
		t.Errorf("ParseISODuration(P1DT2H) = %v, %v, want 26h", d, err)
	}
	for _, bad := range []string{"", "1H", "PT", "PTxS", "P1H", "PT1Y"} {
		if _, err := jobs.ParseISODuration(bad); err == nil {
			t.Errorf("ParseISODuration(%q) succeeded, want an error", bad)
		}
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		in       string
		want     jobs.Status
		terminal bool
	}{
		{"Completed", jobs.StatusCompleted, true},
		{"completed", jobs.StatusCompleted, true},
		{"Succeeded", jobs.StatusCompleted, true},
		{"Failed", jobs.StatusFailed, true},
		{"Canceled", jobs.StatusCanceled, true},
		{"Cancelled", jobs.StatusCanceled, true},
		{"CANCELREQUESTED", jobs.StatusCancelRequested, false},
		{"NotResponding", jobs.StatusNotResponding, false},
		{"Paused", jobs.StatusPaused, false},
		{"running", jobs.StatusRunning, false},
		{"Scheduled", "Scheduled", false},
		{"", jobs.StatusUnknown, false},
	}
	for _, tt := range tests {
		got := jobs.ParseStatus(tt.in)
		if got != tt.want || got.Terminal() != tt.terminal {
			t.Errorf("ParseStatus(%q) = %q (terminal %v), want %q (terminal %v)", tt.in, got, got.Terminal(), tt.want, tt.terminal)
		}
	}
}
