package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/cmd/internal/daemon"
	"github.com/batchd/batchd/config"
	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker/brokertest"
	blobtrigger "github.com/batchd/batchd/triggers/blob"
)

// writeDevSample writes the sample pipelines file (with its key file and
// webhook secret) into dir as batchd-dev does, after edit, and loads it the
// way batchd-dev and batchd serve do.
func loadDevSample(t *testing.T, dir string, o devOptions, edit func(string) string) (*config.Env, *config.File, error) {
	t.Helper()
	key := filepath.Join(dir, devKeyFile)
	if err := os.WriteFile(key, []byte(azurite.Key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, devSecretFile), []byte("s3cret-webhook\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tm := o.timings()
	text := devPipelinesYAML(devPipelineParams{
		ScoringURI: "https://127.0.0.1:4443/demo/jobs",
		Workspace:  jobs.Workspace{Subscription: "00000000-0000-0000-0000-00000000cafe", ResourceGroup: "batchd-sim", Name: "sim"},
		AccountURL: "http://127.0.0.1:10000/devstoreaccount1/", KeyFile: key,
		PollInterval: tm.pollInterval, Schedule: tm.cron,
	})
	if edit != nil {
		text = edit(text)
	}
	if err := os.WriteFile(filepath.Join(dir, devPipelines), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env, f, err := config.Load(t.Context(), config.MapEnv(devEnv(dir, "127.0.0.1:8080", 4222, "https://127.0.0.1:4443", tm, nil)), "")
	if err == nil {
		err = daemon.Check(env)
	}
	return env, f, err
}

// TestDevSamplePipelines checks that the sample pipelines file batchd-dev
// writes passes the checks of `batchd check` and `batchd serve`, in both
// paces, with one pipeline per trigger kind.
func TestDevSamplePipelines(t *testing.T) {
	t.Parallel()
	for _, fast := range []bool{false, true} {
		t.Run(fmt.Sprintf("fast=%v", fast), func(t *testing.T) {
			o := devOptions{fast: fast}
			env, f, err := loadDevSample(t, t.TempDir(), o, nil)
			if err != nil {
				t.Fatalf("the sample pipelines file does not load:\n%v", err)
			}
			got := map[string]string{}
			for name, p := range f.Pipelines {
				got[name] = p.Trigger
			}
			want := map[string]string{"uploads": "blob", "nightly": "cron", "on-message": "nats"}
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("pipelines and their triggers (-want +got):\n%s", d)
			}
			if b := f.Triggers.Blob["uploads"]; b.SourceOrDefault() != "both" || b.Container != devUploadsCont {
				t.Errorf("uploads: source %q, container %q; want both, %s", b.SourceOrDefault(), b.Container, devUploadsCont)
			}
			if s := f.Triggers.Cron["nightly"].Schedule; s != o.timings().cron {
				t.Errorf("nightly schedule = %q, want %q", s, o.timings().cron)
			}
			if s := f.Triggers.NATS["on-message"].Subject; s != devSampleSubj {
				t.Errorf("on-message subject = %q, want %q", s, devSampleSubj)
			}
			for _, name := range []string{"uploads", "on-message"} {
				if a := f.Pipelines[name].Allow; len(a.Accounts) == 0 || len(a.Containers) == 0 {
					t.Errorf("pipeline %s takes its input URI from an event but has no allow-list: %+v", name, a)
				}
			}
			if env.Credential.Kind != jobs.CredManagedIdentity || env.NATS.Listen != "127.0.0.1:4222" || env.WebhookSecret != "s3cret-webhook" {
				t.Errorf("env: credential %q, NATS listen %q, webhook secret set %v; want managed-identity, 127.0.0.1:4222, true",
					env.Credential.Kind, env.NATS.Listen, env.WebhookSecret == "s3cret-webhook")
			}
		})
	}
}

// TestDevSampleValidationCatchesMistakes shows that the load in
// TestDevSamplePipelines is not vacuous: a broken sample fails it.
func TestDevSampleValidationCatchesMistakes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, old, new, wantErr string
	}{
		{"template field typo", "{{ .Blob.URL }}", "{{ .Blob.Nmae }}", "pipelines.uploads.inputs.data.uri"},
		{"undeclared datastore", "datastores/demo_data/paths", "datastores/nowhere/paths", "nowhere"},
		{"bad schedule", `schedule: "@every`, `schedule: "@sometimes`, "unrecognized descriptor"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := loadDevSample(t, t.TempDir(), devOptions{}, func(s string) string {
				if !strings.Contains(s, tt.old) {
					t.Fatalf("the sample has no %q", tt.old)
				}
				return strings.Replace(s, tt.old, tt.new, 1)
			})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("load error = %v, want one naming %q", err, tt.wantErr)
			}
		})
	}
}

// TestDevBlobCreatedEvent checks the synthetic delivery against the
// webhook's own decoder and the Event Grid fields batchd uses.
func TestDevBlobCreatedEvent(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	u := uploaded{URL: "http://127.0.0.1:10000/devstoreaccount1/incoming/a%20b.csv", Container: "incoming", Name: "a b.csv",
		ETag: `"0x8DEADBEEF"`, Size: 42, ContentType: "text/csv", RequestID: "req-1", At: at}
	h := http.Header{"Content-Type": {"application/json; charset=utf-8"}, "Aeg-Event-Type": {"Notification"}}
	evs, err := blobtrigger.Decode(blobCreatedEvent(u), h)
	if err != nil || len(evs) != 1 {
		t.Fatalf("Decode = %d events, %v; want 1, nil", len(evs), err)
	}
	ev := evs[0]
	if ev.Problem != "" || ev.Type != "Microsoft.Storage.BlobCreated" || ev.Subject != "/blobServices/default/containers/incoming/blobs/a b.csv" ||
		!strings.HasSuffix(ev.Topic, "/storageAccounts/devstoreaccount1") || !ev.Time.Equal(at) || ev.ID == "" {
		t.Errorf("event = %+v", ev)
	}
	d, err := ev.BlobData()
	if err != nil {
		t.Fatal(err)
	}
	size := int64(42)
	want := blobtrigger.Data{API: "PutBlob", ETag: u.ETag, ContentType: "text/csv", ContentLength: &size, BlobType: "BlockBlob",
		URL: u.URL, Sequencer: fmt.Sprintf("%032x", at.UnixNano())}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("data (-want +got):\n%s", diff)
	}
	later := u
	later.At = at.Add(time.Millisecond)
	evs2, _ := blobtrigger.Decode(blobCreatedEvent(later), h)
	d2, _ := evs2[0].BlobData()
	if len(d2.Sequencer) != len(d.Sequencer) || d2.Sequencer <= d.Sequencer {
		t.Errorf("a later upload's sequencer %q does not compare greater than %q", d2.Sequencer, d.Sequencer)
	}
}

// TestDevPostEventKeepsSecret checks that a failed delivery's error does
// not carry the webhook secret (it travels in the URL).
func TestDevPostEventKeepsSecret(t *testing.T) {
	t.Parallel()
	const secret = "very-secret-webhook-code"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("code") != secret {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusBadRequest)
		_, _ = w.Write([]byte(`{"error":"malformed delivery"}`))
	}))
	_, err := postEvent(t.Context(), srv.URL, secret, []byte(`[]`))
	if err == nil || !strings.Contains(err.Error(), "400") || strings.Contains(err.Error(), secret) {
		t.Errorf("postEvent (400) = %v; want an error naming 400 and not the secret", err)
	}
	srv.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	_, err = postEvent(ctx, srv.URL, secret, []byte(`[]`))
	if err == nil || !strings.Contains(err.Error(), "/eventgrid: ") || strings.Contains(err.Error(), secret) {
		t.Errorf("postEvent (no server) = %v; want the transport error, without the secret", err)
	}
}

// TestDevProgress checks the progress lines: one per change, oldest
// change first, the first line of a run saying where it came from, and
// finished runs of a kept state summed up once.
func TestDevProgress(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 24, 10, 0, 0, 0, time.UTC)
	blobKey := "http://127.0.0.1:10000/devstoreaccount1/incoming/sample-3.csv@0x1"
	run := func(id, pipeline, source, key string, st orchestrator.State, job *orchestrator.JobRef, updated time.Duration) orchestrator.RunSummary {
		return orchestrator.RunSummary{ID: id, Pipeline: pipeline, Source: source, Key: key, State: st, Job: job,
			Created: t0, Updated: t0.Add(updated)}
	}
	queued := &orchestrator.JobRef{Name: "job-a", Status: jobs.StatusQueued}
	running := &orchestrator.JobRef{Name: "job-a", Status: jobs.StatusRunning}
	done := &orchestrator.JobRef{Name: "job-a", Status: jobs.StatusCompleted}
	old := run("old", "nightly", "cron", "slot:2026-11-23T00:00:00Z", orchestrator.StateCompleted, nil, 0)
	old.Created = t0.Add(-time.Hour)
	steps := []struct {
		name string
		runs []orchestrator.RunSummary // newest first, as the API lists them
		want []string
	}{
		{"first poll: earlier finished runs summed up; this session's runs shown, finished or not, with their origin",
			[]orchestrator.RunSummary{
				run("a", "uploads", "poll", blobKey, orchestrator.StateSubmitted, queued, time.Second),
				run("z", "uploads", "eventgrid", blobKey, orchestrator.StateFiltered, nil, 500*time.Millisecond), old},
			[]string{"1 finished runs from earlier (batchd runs list)",
				"uploads     z  filtered   · from eventgrid incoming/sample-3.csv",
				"uploads     a  submitted  job=job-a (Queued) · from poll incoming/sample-3.csv"}},
		{"nothing changed", []orchestrator.RunSummary{run("a", "uploads", "poll", blobKey, orchestrator.StateSubmitted, queued, time.Second), old}, nil},
		{"the job status changes; a new run arrives (printed in the order of change)",
			[]orchestrator.RunSummary{
				run("b", "on-message", "nats", "nats-sha256:x", orchestrator.StateReceived, nil, 2*time.Second),
				run("a", "uploads", "poll", blobKey, orchestrator.StateRunning, running, 3*time.Second), old},
			[]string{"on-message  b  received   from nats",
				"uploads     a  running    job=job-a (Running)"}},
		{"completion and failure",
			[]orchestrator.RunSummary{
				{ID: "b", Pipeline: "on-message", Source: "nats", State: orchestrator.StateFailed, Error: "bad\ninput", Created: t0, Updated: t0.Add(9 * time.Second)},
				run("a", "uploads", "poll", blobKey, orchestrator.StateCompleted, done, 13*time.Second), old},
			[]string{"on-message  b  failed     bad input",
				"uploads     a  completed  job=job-a in 13s"}},
		{"a rejected run says why",
			[]orchestrator.RunSummary{{ID: "c", Pipeline: "on-message", Source: "nats", State: orchestrator.StateRejected,
				Reason: "preflight check rejected the job: allow-list", Created: t0, Updated: t0.Add(20 * time.Second)}},
			[]string{"on-message  c  rejected   preflight check rejected the job: allow-list · from nats"}},
	}
	p := newProgress(t0)
	for _, st := range steps {
		var got []string
		for _, l := range p.update(st.runs) {
			got = append(got, l[len("15:04:05  "):]) // drop the time
		}
		for i, l := range got {
			if strings.HasPrefix(l, "            ") { // the summary line has an empty tag column
				got[i] = strings.TrimSpace(l)
			}
		}
		if d := cmp.Diff(st.want, got); d != "" {
			t.Errorf("%s (-want +got):\n%s", st.name, d)
		}
	}
}

// TestDevLogTee checks which log lines reach the terminal.
func TestDevLogTee(t *testing.T) {
	t.Parallel()
	var file, term bytes.Buffer
	tee := &logTee{file: &file, terminal: &term, skipRunLines: true}
	in := "time=1 level=INFO msg=\"batchd starting\"\n" +
		"time=2 level=WARN msg=\"sweep incomplete\" err=x\n" +
		"time=3 level=WARN msg=run run=a state=failed\n" +
		"time=4 level=ERROR msg=\"batchd stopped\"\n" +
		"batchd: 1 problem(s) in f:\n"
	// Written in pieces that split lines, as a logger may.
	for _, part := range []string{in[:10], in[10:50], in[50:]} {
		if _, err := tee.Write([]byte(part)); err != nil {
			t.Fatal(err)
		}
	}
	if file.String() != in {
		t.Errorf("the log file got %q, want everything", file.String())
	}
	want := "time=2 level=WARN msg=\"sweep incomplete\" err=x\ntime=4 level=ERROR msg=\"batchd stopped\"\nbatchd: 1 problem(s) in f:\n"
	if term.String() != want {
		t.Errorf("the terminal got %q, want %q", term.String(), want)
	}
}

// TestDevFlags checks flag parsing and the port rules.
func TestDevFlags(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	o, _, ok := parseDevFlags(&stderr, []string{"--http", "127.0.0.1:0", "--nats-port", "0", "--state", "x", "--keep"})
	if !ok || !o.keep || o.stateDir != "x" || !o.explicit["http"] || !o.explicit["nats-port"] || o.explicit["azurite-port"] {
		t.Errorf("parse = %+v, %v", o, ok)
	}
	for _, args := range [][]string{{"--nats-port", "70000"}, {"extra"}, {"--state", ""}} {
		if _, code, ok := parseDevFlags(&stderr, args); ok || code != exitUsage {
			t.Errorf("parse %q = ok %v, code %d; want exit 2", args, ok, code)
		}
	}

	// A taken port given as a flag is an error; a taken default falls back.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	taken := l.Addr().String()
	_, port, _ := strings.Cut(taken, ":")
	n, _ := strconv.Atoi(port)
	for _, tt := range []struct {
		name     string
		explicit bool
		wantCode int
	}{{"explicit", true, exitUsage}, {"default", false, exitOK}} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			d := &devRun{c: &cli{stdout: &out, stderr: &errOut}, out: &syncWriter{w: &out},
				o: devOptions{httpAddr: "127.0.0.1:0", natsPort: n, azuritePort: 0, explicit: map[string]bool{"nats-port": tt.explicit}}}
			if code := d.choosePorts(); code != tt.wantCode {
				t.Fatalf("choosePorts = %d, want %d (stderr %q)", code, tt.wantCode, errOut.String())
			}
			if tt.wantCode == exitOK && (d.natsPort == n || d.natsPort == 0 || !strings.Contains(out.String(), "is taken; using")) {
				t.Errorf("nats port = %d (taken: %d); output %q", d.natsPort, n, out.String())
			}
		})
	}
	d := &devRun{c: &cli{stdout: &bytes.Buffer{}, stderr: &stderr}, out: &syncWriter{w: &bytes.Buffer{}},
		o: devOptions{httpAddr: "0.0.0.0:8080", explicit: map[string]bool{}}}
	if code := d.choosePorts(); code != exitUsage {
		t.Errorf("choosePorts with --http 0.0.0.0:8080 = %d, want %d (loopback only)", code, exitUsage)
	}
}

// TestDevEndToEnd runs `batchd-dev` as a process with free ports and the
// hidden --fast pace: the sample runs of all three pipelines finish through
// the simulator (one job per file although the webhook and the poller both
// see every file), `dev upload`, `dev publish` and `pipelines run` work
// against it, SIGINT stops it with exit 0, and no process it started is
// left.
func TestDevEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds batchd and runs batchd-dev with Azurite")
	}
	t.Parallel()
	// As a user runs it: from a checkout with the binary in bin/, the
	// default state directory, so that the README's and the banner's
	// commands run verbatim.
	dir := t.TempDir()
	bin := procBuild(t, filepath.Join(dir, "bin"))
	tools, err := filepath.Abs(filepath.Join("..", "..", "tools"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(tools, filepath.Join(dir, "tools")); err != nil { // Azurite, as in a checkout
		t.Fatal(err)
	}
	state := filepath.Join(dir, devDefaultState)
	httpAddr := procFreeAddr(t)
	base := "http://" + httpAddr
	natsPort, azPort := freePortT(t), freePortT(t)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}

	var stdout, stderr lockedBuffer
	cmd := exec.Command(bin, "--fast", "--http", httpAddr, "--nats-port", strconv.Itoa(natsPort),
		"--azurite-port", strconv.Itoa(azPort))
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	running := true
	t.Cleanup(func() {
		if running {
			_ = cmd.Process.Kill()
			<-exited //nolint:errcheck // the exit status of a process we killed
		}
		if t.Failed() {
			t.Logf("batchd-dev stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
			if b, err := os.ReadFile(filepath.Join(state, devLogFile)); err == nil {
				lines := strings.Split(string(b), "\n")
				t.Logf("last lines of batchd.log:\n%s", strings.Join(lines[max(0, len(lines)-30):], "\n"))
			}
		}
	})
	alive := func() {
		t.Helper()
		select {
		case err := <-exited:
			running = false
			t.Fatalf("batchd-dev exited early: %v", err)
		default:
		}
	}
	devWaitFor(t, 90*time.Second, "/healthz", alive, func() bool {
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// The sample runs: three uploads complete, sample-fail fails with the
	// simulator's error, and the schedule and the NATS message complete.
	want := map[string]orchestrator.State{
		"uploads/sample-1.csv": orchestrator.StateCompleted, "uploads/sample-2.csv": orchestrator.StateCompleted,
		"uploads/sample-3.csv": orchestrator.StateCompleted, "uploads/sample-fail.csv": orchestrator.StateFailed,
		"nightly": orchestrator.StateCompleted, "on-message": orchestrator.StateCompleted,
	}
	var runs []orchestrator.RunSummary
	devWaitFor(t, 90*time.Second, "the sample runs", alive, func() bool {
		var err error
		if runs, err = procListAll(base); err != nil {
			return false
		}
		got := devRunStates(runs)
		for k, st := range want {
			if got[k] != st {
				return false
			}
		}
		return true
	})
	byName := map[string]orchestrator.RunSummary{}
	uploads := 0
	for _, r := range runs {
		if r.Pipeline == "uploads" {
			uploads++
			byName[devBlobName(r.Key)] = r
		}
	}
	for name, src := range map[string]string{"sample-1.csv": "eventgrid", "sample-2.csv": "eventgrid", "sample-fail.csv": "eventgrid", "sample-3.csv": "poll"} {
		if got := byName[name].Source; got != src {
			t.Errorf("the run of %s came from %q, want %q", name, got, src)
		}
	}
	if r := byName["sample-fail.csv"]; !strings.Contains(r.Error, "simulated failure") {
		t.Errorf("the failed run's error = %q, want the simulator's message", r.Error)
	}
	// Never twice: after another complete sweep of the poller (which sees
	// every file, those with events included) there is still one run per
	// file, although sample-1's event was also delivered twice.
	hc := &http.Client{Timeout: 5 * time.Second}
	sweeps := `batchd_trigger_poll_sweeps_total{pipeline="uploads",result="complete"}`
	before, _ := readMetric(hc, base, sweeps)
	devWaitFor(t, 30*time.Second, "another poller sweep", alive, func() bool {
		v, _ := readMetric(hc, base, sweeps)
		return v >= before+1
	})
	after, err := procListAll(base)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range after {
		if r.Pipeline == "uploads" {
			n++
		}
	}
	if uploads != 4 || n != 4 {
		t.Errorf("uploads has %d runs, then %d after another sweep; want 4 (one per file)", uploads, n)
	}
	if dup, _ := readMetric(hc, base, `batchd_trigger_events_total{outcome="duplicate",pipeline="uploads",trigger="eventgrid"}`); dup < 1 {
		t.Errorf("the second delivery of sample-1's event was not counted a duplicate (%v)", dup)
	}

	// The API and the printed instructions.
	var pl orchestrator.PipelineList
	if err := devGetJSON(base+"/api/v1/pipelines", &pl); err != nil || len(pl.Pipelines) != 3 {
		t.Errorf("GET /api/v1/pipelines = %d pipelines, %v; want 3", len(pl.Pipelines), err)
	}
	out := stdout.String()
	for _, s := range []string{base + "/", "nats://127.0.0.1:" + strconv.Itoa(natsPort), "./bin/batchd-dev upload FILE", "./bin/batchd-dev publish demo.score",
		"pipelines run nightly --wait", "runs show ID", "export BATCHD_URL=" + base, filepath.Join(devDefaultState, devPipelines),
		"fresh: this start cleared"} {
		if !strings.Contains(out, s) {
			t.Errorf("the output does not show %q", s)
		}
	}

	// The subcommands, as a user would run them from another terminal.
	file := filepath.Join(dir, "extra.csv")
	if err := os.WriteFile(file, []byte("id,x\n1,2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runCLI := func(args ...string) (string, int) {
		t.Helper()
		name := bin
		if args[0] != "upload" && args[0] != "publish" {
			name = filepath.Join(filepath.Dir(bin), "batchd")
		}
		c := exec.Command(name, args...)
		c.Env = env
		b, err := c.CombinedOutput()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return string(b), ee.ExitCode()
		case err != nil:
			t.Fatalf("%v: %v", args, err)
		}
		return string(b), 0
	}
	idRE := regexp.MustCompile(`Run ([0-9a-f]{32})`)
	upOut, code := runCLI("upload", "--state", state, "--wait", file)
	m := idRE.FindStringSubmatch(upOut)
	if code != exitOK || m == nil || !strings.Contains(upOut, "completed") {
		t.Errorf("batchd-dev upload --wait: exit %d, output:\n%s\nwant exit 0, a run id and completed", code, upOut)
	}
	pubOut, code := runCLI("publish", "--state", state, "--wait", devSampleSubj,
		`{"uri":"http://127.0.0.1:`+strconv.Itoa(azPort)+`/devstoreaccount1/incoming/extra.csv"}`)
	if code != exitOK || !idRE.MatchString(pubOut) || !strings.Contains(pubOut, "completed") {
		t.Errorf("batchd-dev publish --wait: exit %d, output:\n%s\nwant exit 0, a run id and completed", code, pubOut)
	}
	again, code := runCLI("publish", "--state", state, devSampleSubj,
		`{"uri":"http://127.0.0.1:`+strconv.Itoa(azPort)+`/devstoreaccount1/incoming/extra.csv"}`)
	if code != exitOK || !strings.Contains(again, "exists already") {
		t.Errorf("publishing the same message again: exit %d, output:\n%s\nwant exit 0 and that the run exists already", code, again)
	}
	rejOut, code := runCLI("publish", "--state", state, "--wait", devSampleSubj, `{"uri":"https://elsewhere.blob.core.windows.net/data/x.csv"}`)
	if code != exitRejected || !strings.Contains(rejOut, "allow-list") {
		t.Errorf("publishing a URI outside the allow-list: exit %d, output:\n%s\nwant exit %d and the allow-list reason", code, rejOut, exitRejected)
	}
	if runOut, code := runCLI("pipelines", "run", "nightly", "--wait", "--url", base); code != exitOK {
		t.Errorf("batchd pipelines run nightly --wait: exit %d, output:\n%s", code, runOut)
	}

	// The simulated workspace's job events reached batchd (pushed
	// completion), as the banner says.
	if resp, err := http.Get(base + "/metrics"); err != nil {
		t.Errorf("GET /metrics: %v", err)
	} else {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !regexp.MustCompile(`batchd_job_events_total\{outcome="checked",type="run_status_changed"\} [1-9]`).Match(b) {
			t.Errorf("/metrics shows no job event that batchd checked:\n%s", grepLines(string(b), "batchd_job_events"))
		}
	}

	devWalkthrough(t, dir, base, stdout.String())

	// Shutdown: every process batchd-dev started goes with it.
	kids := devDescendants(t, cmd.Process.Pid)
	azuriteSeen := false
	for pid, p := range kids {
		if strings.Contains(p.cmdline, "azurite") {
			azuriteSeen = true
		}
		t.Logf("child process %d: %s", pid, p.cmdline)
	}
	if !azuriteSeen {
		t.Errorf("no Azurite among the child processes %v", kids)
	}
	secret, _ := os.ReadFile(filepath.Join(state, devSecretFile))
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		running = false
		if err != nil {
			t.Errorf("batchd-dev after SIGINT: %v, want exit 0", err)
		}
		if out := stdout.String(); !strings.Contains(out, "'batchd-dev --keep' resumes from it, 'batchd-dev' starts afresh") {
			t.Errorf("the stop message does not say what happens to the state:\n%s", out[max(0, len(out)-400):])
		}
	case <-time.After(60 * time.Second):
		t.Fatal("batchd-dev did not exit within 60s of SIGINT")
	}
	devWaitFor(t, 10*time.Second, "the child processes to go", func() {}, func() bool {
		for pid, p := range kids {
			if devAlive(pid, p.start) {
				return false
			}
		}
		return true
	})

	// Secrets stay out of the output and the log.
	logText, _ := os.ReadFile(filepath.Join(state, devLogFile))
	all := stdout.String() + stderr.String() + upOut + pubOut + string(logText)
	if s := strings.TrimSpace(string(secret)); s == "" || strings.Contains(all, s) {
		t.Errorf("the webhook secret (%d bytes) is empty or reached the output or the log", len(s))
	}
	if strings.Contains(all, azurite.Key) {
		t.Errorf("the Azurite account key reached the output or the log")
	}
	// With batchd-dev gone, the subcommands say so.
	if msg, code := runCLI("upload", "--state", state, file); code != exitUsage || !strings.Contains(msg, "no batchd-dev is running") {
		t.Errorf("dev upload with batchd-dev stopped: exit %d, %q; want 2 and why", code, msg)
	}
}

// devRunStates maps "uploads/<blob name>", "nightly" and "on-message" to
// the best state seen (completed wins).
func devRunStates(runs []orchestrator.RunSummary) map[string]orchestrator.State {
	got := map[string]orchestrator.State{}
	for _, r := range runs {
		k := r.Pipeline
		if r.Pipeline == "uploads" {
			k += "/" + devBlobName(r.Key)
		}
		if got[k] != orchestrator.StateCompleted {
			got[k] = r.State
		}
	}
	return got
}

func devBlobName(key string) string {
	u, _, _ := strings.Cut(key, "@")
	return u[strings.LastIndex(u, "/")+1:]
}

func devGetJSON(url string, v any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d", url, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// devWaitFor polls cond to a deadline; check runs first on every round
// (it fails the test when the process under test died).
func devWaitFor(t *testing.T, d time.Duration, what string, check func(), cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		check()
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePortT(t *testing.T) int {
	t.Helper()
	return brokertest.FreePort(t)
}

type procInfo struct {
	start   string // start time in clock ticks since boot: tells a process from a reused pid
	cmdline string
}

// devDescendants walks /proc for every process below pid.
func devDescendants(t *testing.T, pid int) map[int]procInfo {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	parent := map[int]int{}
	info := map[int]procInfo{}
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, start, _, ok := procStat(p)
		if !ok {
			continue
		}
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", p))
		parent[p] = ppid
		info[p] = procInfo{start: start, cmdline: strings.ReplaceAll(string(cmdline), "\x00", " ")}
	}
	out := map[int]procInfo{}
	for p := range parent {
		for q := parent[p]; q > 1; q = parent[q] {
			if q == pid {
				out[p] = info[p]
				break
			}
		}
	}
	return out
}

// devAlive reports whether the process pid that started at start still
// exists (a zombie counts as gone: it has exited).
func devAlive(pid int, start string) bool {
	_, st, state, ok := procStat(pid)
	return ok && st == start && state != "Z" && state != "X"
}

// procStat reads ppid, start time and state from /proc/PID/stat.
func procStat(pid int) (ppid int, start, state string, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, "", "", false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // the command name may hold spaces and parentheses
	if i < 0 {
		return 0, "", "", false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 20 {
		return 0, "", "", false
	}
	ppid, _ = strconv.Atoi(f[1])
	return ppid, f[19], f[0], true
}

// lockedBuffer is a bytes.Buffer safe for the process's writes and the
// test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
