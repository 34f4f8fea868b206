package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/streaming"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/google/uuid"
	"github.com/nats-io/nats.go"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator"
	blobtrigger "github.com/batchd/batchd/triggers/blob"
)

// devPipelineParams fill the sample pipelines file.
type devPipelineParams struct {
	ScoringURI   string
	Workspace    jobs.Workspace
	AccountURL   string // Azurite's development account, with a trailing slash
	KeyFile      string
	PollInterval string // the uploads poller
	Schedule     string // the nightly cron schedule
}

// devPipelinesTemplate is the sample pipelines file; <<NAME>> are filled
// by devPipelinesYAML ({{ }} belongs to the pipelines' own templates).
const devPipelinesTemplate = `# The sample pipelines of ` + "`batchd-dev`" + `. Written at every start of batchd-dev
# (edits here are overwritten: copy the file to experiment, and check it with
# ` + "`batchd check --config FILE`" + `).
#
# One batch endpoint on the Azure ML simulator, storage in Azurite, and one
# pipeline per trigger kind.

endpoints:
  demo:
    uri: <<SCORING_URI>>
    # Status, cancel and reconciliation go through the (simulated) ARM API.
    workspace:
      subscription: <<SUBSCRIPTION>>
      resource_group: <<RESOURCE_GROUP>>
      name: <<WORKSPACE>>

# Azure ML datastores the jobs read and write. Azure ML holds their
# registration; batchd needs to know where they point.
datastores:
  demo_data:
    kind: blob
    account: devstoreaccount1
    container: data
    credentials: account_key
  demo_outputs:
    kind: blob
    account: devstoreaccount1
    container: outputs
    credentials: account_key

# How batchd itself reaches the storage account (poller, preflight checks):
# Azurite, with its well-known development key, from a file.
storage:
  accounts:
    devstoreaccount1:
      blob_endpoint: <<ACCOUNT_URL>>
      auth: shared_key
      key_file: <<KEY_FILE>>

pipelines:
  # A file arriving in container "incoming". Event Grid delivers BlobCreated
  # events to /eventgrid (batchd-dev posts them itself: Azurite has no Event
  # Grid); the poller sweeps the container and catches what Event Grid
  # dropped. Both derive the run id from the blob's URL and eTag, so a file
  # is submitted once, whoever saw it first.
  uploads:
    endpoint: demo
    trigger:
      blob:
        account: devstoreaccount1
        container: incoming
        source: both
        poll_interval: <<POLL_INTERVAL>>
    inputs:
      data: {type: UriFile, uri: "{{ .Blob.URL }}"}
    outputs:
      predictions: {type: UriFile, uri: "azureml://datastores/demo_outputs/paths/uploads/{{ .Run.ID }}/predictions.csv"}
    # The input URI comes from an event: keep it to known places.
    allow:
      accounts: [devstoreaccount1]
      containers: [incoming, outputs]

  # A schedule that scores the files of one folder.
  nightly:
    endpoint: demo
    trigger:
      cron:
        schedule: "<<SCHEDULE>>"
    inputs:
      data: {type: UriFolder, uri: "azureml://datastores/demo_data/paths/nightly/"}
    outputs:
      predictions: {type: UriFile, uri: "azureml://datastores/demo_outputs/paths/nightly/{{ .Run.ID }}/predictions.csv"}

  # A NATS message on demo.score whose JSON body names the file to score:
  # {"uri": "http://127.0.0.1:10000/devstoreaccount1/incoming/sample-1.csv"}
  on-message:
    endpoint: demo
    trigger:
      nats:
        subject: demo.score
    inputs:
      data: {type: UriFile, uri: "{{ .Message.Data.uri }}"}
    outputs:
      predictions: {type: UriFile, uri: "azureml://datastores/demo_outputs/paths/on-message/{{ .Run.ID }}/predictions.csv"}
    allow:
      accounts: [devstoreaccount1]
      containers: [incoming, data, outputs]
`

// devPipelinesYAML renders the sample pipelines file.
func devPipelinesYAML(p devPipelineParams) string {
	return strings.NewReplacer(
		"<<SCORING_URI>>", yamlString(p.ScoringURI),
		"<<SUBSCRIPTION>>", yamlString(p.Workspace.Subscription),
		"<<RESOURCE_GROUP>>", yamlString(p.Workspace.ResourceGroup),
		"<<WORKSPACE>>", yamlString(p.Workspace.Name),
		"<<ACCOUNT_URL>>", yamlString(p.AccountURL),
		"<<KEY_FILE>>", yamlString(p.KeyFile),
		"<<POLL_INTERVAL>>", p.PollInterval,
		"<<SCHEDULE>>", p.Schedule,
	).Replace(devPipelinesTemplate)
}

// yamlString quotes s as a YAML double-quoted scalar (JSON strings are).
func yamlString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// devBlobs uploads to Azurite's development account with its shared key.
type devBlobs struct {
	client *azblob.Client
}

func newDevBlobs(accountURL string) (*devBlobs, error) {
	cred, err := azblob.NewSharedKeyCredential(azurite.Account, azurite.Key)
	if err != nil {
		return nil, fmt.Errorf("azurite credential: %w", err)
	}
	c, err := azblob.NewClientWithSharedKeyCredential(accountURL, cred, nil)
	if err != nil {
		return nil, fmt.Errorf("azurite client: %w", err)
	}
	return &devBlobs{client: c}, nil
}

func (b *devBlobs) ensureContainer(ctx context.Context, name string) error {
	_, err := b.client.CreateContainer(ctx, name, nil)
	if err != nil && !bloberror.HasCode(err, bloberror.ContainerAlreadyExists) {
		return fmt.Errorf("create container %s: %w", name, err)
	}
	return nil
}

// uploaded is one blob as Event Grid would describe it.
type uploaded struct {
	URL         string
	Container   string
	Name        string
	ETag        string // as the service answered it (quoted)
	Size        int64
	ContentType string
	RequestID   string
	At          time.Time
}

// errBlobExists is put's answer to onlyIfAbsent for a blob that exists.
var errBlobExists = errors.New("blob exists")

// put uploads data in one Put Blob request (so the event's api is PutBlob).
func (b *devBlobs) put(ctx context.Context, container, name string, data []byte, onlyIfAbsent bool) (uploaded, error) {
	ct := mime.TypeByExtension(path.Ext(name))
	if ct == "" {
		ct = "application/octet-stream"
	}
	bc := b.client.ServiceClient().NewContainerClient(container).NewBlockBlobClient(name)
	opts := &blockblob.UploadOptions{HTTPHeaders: &blob.HTTPHeaders{BlobContentType: &ct}}
	if onlyIfAbsent {
		any := azcore.ETagAny
		opts.AccessConditions = &blob.AccessConditions{ModifiedAccessConditions: &blob.ModifiedAccessConditions{IfNoneMatch: &any}}
	}
	resp, err := bc.Upload(ctx, streaming.NopCloser(bytes.NewReader(data)), opts)
	if err != nil {
		if onlyIfAbsent && (bloberror.HasCode(err, bloberror.BlobAlreadyExists) || bloberror.HasCode(err, bloberror.ConditionNotMet)) {
			return uploaded{}, errBlobExists
		}
		return uploaded{}, fmt.Errorf("upload %s/%s: %w", container, name, err)
	}
	u := uploaded{URL: bc.URL(), Container: container, Name: name, Size: int64(len(data)), ContentType: ct, At: time.Now().UTC()}
	if resp.ETag != nil {
		u.ETag = string(*resp.ETag)
	}
	if resp.RequestID != nil {
		u.RequestID = *resp.RequestID
	}
	return u, nil
}

// blobCreatedEvent is the Event Grid delivery (Event Grid schema, one
// event in an array) that Azure Storage would send for u. The sequencer is
// synthetic: the upload's time in nanoseconds, fixed-width hex, so that
// later uploads of one blob compare greater, as real sequencers do.
func blobCreatedEvent(u uploaded) []byte {
	id := newUUID()
	type data struct {
		API             string         `json:"api"`
		ClientRequestID string         `json:"clientRequestId"`
		RequestID       string         `json:"requestId"`
		ETag            string         `json:"eTag"`
		ContentType     string         `json:"contentType"`
		ContentLength   int64          `json:"contentLength"`
		BlobType        string         `json:"blobType"`
		URL             string         `json:"url"`
		Sequencer       string         `json:"sequencer"`
		Diagnostics     map[string]any `json:"storageDiagnostics"`
	}
	ev := []map[string]any{{
		"topic":     "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/batchd-dev/providers/Microsoft.Storage/storageAccounts/" + azurite.Account,
		"subject":   "/blobServices/default/containers/" + u.Container + "/blobs/" + u.Name,
		"eventType": "Microsoft.Storage.BlobCreated",
		"eventTime": u.At.Format(time.RFC3339Nano),
		"id":        id,
		"data": data{
			API: "PutBlob", ClientRequestID: newUUID(), RequestID: u.RequestID, ETag: u.ETag,
			ContentType: u.ContentType, ContentLength: u.Size, BlobType: "BlockBlob", URL: u.URL,
			Sequencer:   fmt.Sprintf("%032x", u.At.UnixNano()),
			Diagnostics: map[string]any{"batchId": newUUID()},
		},
		"dataVersion":     "",
		"metadataVersion": "1",
	}}
	b, _ := json.Marshal(ev)
	return b
}

func newUUID() string { return uuid.NewString() }

// webhookAnswer is the webhook's JSON answer to a delivery.
type webhookAnswer struct {
	Received  int    `json:"received"`
	Emitted   int    `json:"emitted"`
	Batched   int    `json:"batched"`
	Duplicate int    `json:"duplicate"`
	Filtered  int    `json:"filtered"`
	Rejected  int    `json:"rejected"`
	Error     string `json:"error"`
}

// postEvent delivers body to base/eventgrid as Event Grid does: the secret
// in ?code=, retried (like Event Grid) on a 5xx or no answer, not on a 4xx.
// Errors never contain the secret: the URL carrying it is not quoted.
func postEvent(ctx context.Context, base, secret string, body []byte) (webhookAnswer, error) {
	target := base + "/eventgrid?code=" + url.QueryEscape(secret)
	hc := &http.Client{Timeout: 35 * time.Second}
	var last error
	for attempt := range 4 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return webhookAnswer{}, last
			case <-time.After(time.Duration(attempt) * time.Second):
			}
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
		if err != nil {
			return webhookAnswer{}, fmt.Errorf("event for %s/eventgrid: %w", base, redactURLError(err))
		}
		req.Header.Set("Content-Type", "application/json; charset=utf-8")
		req.Header.Set("aeg-event-type", "Notification")
		req.Header.Set("aeg-subscription-name", "batchd-dev")
		req.Header.Set("aeg-delivery-count", strconv.Itoa(attempt))
		resp, err := hc.Do(req)
		if err != nil {
			last = fmt.Errorf("post event to %s/eventgrid: %w", base, redactURLError(err))
			if ctx.Err() != nil {
				return webhookAnswer{}, last
			}
			continue
		}
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		var a webhookAnswer
		_ = json.Unmarshal(raw, &a)
		switch {
		case resp.StatusCode >= 200 && resp.StatusCode < 300:
			return a, nil
		case resp.StatusCode >= 500:
			last = fmt.Errorf("post event to %s/eventgrid: %d %s", base, resp.StatusCode, strings.TrimSpace(a.Error))
		default:
			return a, fmt.Errorf("post event to %s/eventgrid: %d %s", base, resp.StatusCode, strings.TrimSpace(a.Error))
		}
	}
	return webhookAnswer{}, last
}

// redactURLError drops the URL (which carries the webhook secret) from a
// client error and keeps its cause.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// devRunIDs are the runs a BlobCreated event for u makes: one per blob
// pipeline watching its container (the trigger's prefix and suffix filters
// still apply; the webhook's answer says whether it was filtered).
func devRunIDs(st *devState, u uploaded) map[string]string {
	ref, err := blobtrigger.ParseURL(u.URL)
	if err != nil {
		return nil
	}
	ids := map[string]string{}
	for _, p := range st.BlobPipelines {
		if strings.EqualFold(p.Container, u.Container) && strings.EqualFold(p.Account, ref.Account) {
			ids[p.Pipeline] = orchestrator.RunID(p.Pipeline, blobtrigger.Key(ref, u.ETag))
		}
	}
	return ids
}

// natsReply is the NATS trigger's answer to a request.
type natsReply struct {
	RunID     string `json:"run_id"`
	Duplicate bool   `json:"duplicate"`
	Error     string `json:"error"`
	State     string `json:"state"`
}

// publishRequest publishes body on subject as a request: the core NATS
// trigger answers with the run id (or why it took no run).
func publishRequest(ctx context.Context, natsURL, tokenFile, subject string, body []byte) (natsReply, error) {
	token, err := readSecretFile(tokenFile)
	if err != nil {
		return natsReply{}, fmt.Errorf("the NATS listener's token: %w", err)
	}
	nc, err := nats.Connect(natsURL, nats.Name("batchd-dev publish"), nats.Timeout(5*time.Second), nats.Token(token))
	if err != nil {
		return natsReply{}, fmt.Errorf("connect to %s: %w", natsURL, err)
	}
	defer nc.Close()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	msg, err := nc.RequestWithContext(rctx, subject, body)
	if errors.Is(err, nats.ErrNoResponders) {
		return natsReply{}, fmt.Errorf("no pipeline listens on %s (the sample listens on %s)", subject, devSampleSubj)
	}
	if err != nil {
		return natsReply{}, fmt.Errorf("publish on %s: %w", subject, err)
	}
	var r natsReply
	if err := json.Unmarshal(msg.Data, &r); err != nil {
		return natsReply{}, fmt.Errorf("answer on %s: %w", subject, err)
	}
	return r, nil
}

// devSample is one sample file and what batchd-dev does with it.
type devSample struct {
	container, name string
	event           bool // post its BlobCreated event
	twice           bool // and deliver the event a second time
	note            string
}

var devSamples = []devSample{
	{container: devUploadsCont, name: "sample-1.csv", event: true, twice: true},
	{container: devUploadsCont, name: "sample-2.csv", event: true},
	{container: devUploadsCont, name: "sample-fail.csv", event: true, note: "its job will fail: the name contains \"fail\""},
	{container: devUploadsCont, name: "sample-3.csv"},
	{container: devDataCont, name: devNightlyDir + "part-000.csv"},
	{container: devDataCont, name: devNightlyDir + "part-001.csv"},
}

func sampleCSV(name string) []byte {
	var b strings.Builder
	b.WriteString("id,feature_a,feature_b\n")
	for i := range 5 {
		fmt.Fprintf(&b, "%d,%d.%d,%s\n", i+1, len(name)+i, i*7%10, name)
	}
	return []byte(b.String())
}

// prepareStorage creates the containers and the nightly pipeline's input
// folder before batchd starts, so that neither the poller's first sweep nor
// the first cron slot finds them missing. With --keep, existing samples are
// left alone.
func (d *devRun) prepareStorage(ctx context.Context) error {
	blobs, err := newDevBlobs(d.state.AccountURL)
	if err != nil {
		return err
	}
	for _, c := range []string{devUploadsCont, devDataCont, devOutputsCont} {
		if err := blobs.ensureContainer(ctx, c); err != nil {
			return err
		}
	}
	for _, s := range devSamples {
		if s.container != devDataCont {
			continue
		}
		if _, err := blobs.put(ctx, s.container, s.name, sampleCSV(s.name), true); err != nil && !errors.Is(err, errBlobExists) {
			return err
		}
	}
	return nil
}

// seed uploads the sample files of the uploads pipeline, posts their
// events, and publishes one NATS message. With --keep, samples already in
// Azurite are not uploaded again (and so make no second run).
func (d *devRun) seed(ctx context.Context) error {
	t := d.o.timings()
	if every, err := time.ParseDuration(strings.TrimPrefix(t.cron, "@every ")); err == nil {
		next := time.Now().UTC().Truncate(every).Add(every)
		d.say("nightly", "scores the folder %s/%s (2 sample files) %s; next slot %s", devDataCont, devNightlyDir, t.cron, next.Local().Format("15:04:05"))
	}
	blobs, err := newDevBlobs(d.state.AccountURL)
	if err != nil {
		return err
	}
	// Upload after the poller's first sweep, so that the events, not the
	// poller, find the files that have one: the demo then shows both paths.
	d.waitFirstSweep(ctx, "uploads")

	var sample2 string
	kept := 0
	for _, s := range devSamples {
		if s.container != devUploadsCont {
			continue
		}
		where := s.container + "/" + s.name
		u, err := blobs.put(ctx, s.container, s.name, sampleCSV(s.name), true)
		if errors.Is(err, errBlobExists) {
			kept++ // and its runs (and the message below) exist already
			continue
		}
		if err != nil {
			return err
		}
		if s.name == "sample-2.csv" {
			sample2 = u.URL
		}
		if !s.event {
			d.say("uploads", "%s uploaded without an event (as if Event Grid lost it): the poller finds it within %s", where, t.pollInterval)
			continue
		}
		deliveries := 1
		if s.twice {
			deliveries = 2
		}
		body := blobCreatedEvent(u)
		for i := range deliveries {
			a, err := postEvent(ctx, d.state.URL, d.secret, body)
			if err != nil {
				return fmt.Errorf("%s: %w", where, err)
			}
			var msg string
			if i == 0 {
				msg = where + " uploaded, BlobCreated event posted " + describeDelivery(a, devRunIDs(&d.state, u))
			} else {
				msg = where + " the same event posted again (Event Grid delivers at least once) " + describeDelivery(a, nil)
			}
			if s.note != "" && i == 0 {
				msg += " (" + s.note + ")"
			}
			d.say("uploads", "%s", msg)
		}
	}
	if kept > 0 {
		d.say("uploads", "%d sample files were already in Azurite (--keep): not uploaded again, no message published", kept)
	}
	if sample2 == "" {
		return nil
	}
	body, _ := json.Marshal(map[string]string{"uri": sample2})
	r, err := publishRequest(ctx, d.state.NATSURL, d.state.NATSTokenFile, devSampleSubj, body)
	if err != nil {
		return err
	}
	d.say("on-message", "published %s on %s %s", body, devSampleSubj, describeNATSReply(r))
	return nil
}

// waitFirstSweep waits (up to 15 s) until the pipeline's poller finished a
// sweep, read from /metrics.
func (d *devRun) waitFirstSweep(ctx context.Context, pipeline string) {
	series := `batchd_trigger_poll_sweeps_total{pipeline="` + pipeline + `",result="complete"}`
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if v, ok := readMetric(hc, d.state.URL, series); ok && v >= 1 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// readMetric reads one sample from base/metrics.
func readMetric(hc *http.Client, base, series string) (float64, bool) {
	resp, err := hc.Get(base + "/metrics")
	if err != nil {
		return 0, false
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v, err == nil
		}
	}
	return 0, false
}

// describeDelivery says what the webhook did with one delivery: "→ new
// run ID", "→ duplicate: …", "→ filtered: …".
func describeDelivery(a webhookAnswer, ids map[string]string) string {
	var parts []string
	if a.Emitted > 0 {
		s := "new run"
		for _, p := range cmdutil.SortedNames(ids) {
			s += " " + ids[p]
		}
		parts = append(parts, s)
	}
	if a.Duplicate > 0 {
		parts = append(parts, "duplicate: the run exists, no second job")
	}
	if a.Batched > 0 {
		parts = append(parts, "added to a folder batch")
	}
	if a.Filtered > 0 {
		parts = append(parts, "filtered: no blob pipeline takes it (batchd runs list --state filtered)")
	}
	if a.Rejected > 0 {
		parts = append(parts, "rejected (batchd runs list --state rejected)")
	}
	if len(parts) == 0 {
		return "→ delivered"
	}
	return "→ " + strings.Join(parts, "; ")
}

func describeNATSReply(r natsReply) string {
	switch {
	case r.Error != "":
		return fmt.Sprintf("→ %s: %s", cmdutil.Dash(r.State), r.Error)
	case r.Duplicate:
		return "→ run " + r.RunID + " (the same message again: the same run, no second job)"
	default:
		return "→ run " + r.RunID
	}
}

// banner prints what runs where and what to try.
func (d *devRun) banner() {
	st := &d.state
	cmd := devCommandName()
	stateFlag := ""
	if d.o.stateDir != devDefaultState {
		stateFlag = " --state " + shellQuote(d.rel(d.dir))
	}
	t := d.o.timings()
	var b strings.Builder
	fmt.Fprintf(&b, "\nbatchd-dev: batchd serve and everything it talks to, on this machine (no Azure account).\n\n")
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  batchd\t%s\tAPI /api/v1, /healthz, /readyz, /metrics, Event Grid webhook /eventgrid\n", st.URL)
	fmt.Fprintf(tw, "  status page\t%s/\t\n", st.URL)
	fmt.Fprintf(tw, "  NATS\t%s\tembedded, JetStream data in %s\n", st.NATSURL, d.rel(filepath.Join(d.dir, devNATSDir)))
	fmt.Fprintf(tw, "  Azurite\t%s\tpid %d, data in %s\n", st.AccountURL, d.az.Pid(), d.rel(filepath.Join(d.dir, devAzuriteDir)))
	fmt.Fprintf(tw, "  Azure ML\t%s\tsimulator of the batch endpoint, Entra and ARM; its workspace sends job events to /eventgrid (pushed completion); its CA is trusted only in this process\n", d.sim.ScoringURI(devEndpointName))
	fmt.Fprintf(tw, "  pipelines\t%s\tuploads (blob, container incoming), nightly (cron %s), on-message (NATS %s)\n", d.rel(st.PipelinesFile), t.cron, devSampleSubj)
	fmt.Fprintf(tw, "  state\t%s\t%s\n", d.rel(d.dir), map[bool]string{true: "resumed from the previous run (--keep)", false: "fresh: this start cleared the previous run's; start with --keep to resume from it"}[d.o.keep])
	fmt.Fprintf(tw, "  log\t%s\twarnings and errors are also printed here\n", d.rel(d.logPath))
	tw.Flush()
	sampleURI := st.AccountURL + devUploadsCont + "/sample-1.csv"
	msg := shellQuote(`{"uri":"` + sampleURI + `"}`)
	fmt.Fprintf(&b, "\nTry, in another terminal:\n")
	fmt.Fprintf(&b, "  # a new file in incoming/ makes a run; a name containing \"fail\" makes a job that fails\n")
	fmt.Fprintf(&b, "  %s upload%s FILE\n", cmd, stateFlag)
	fmt.Fprintf(&b, "  %s upload%s --name my-fail.csv FILE\n", cmd, stateFlag)
	fmt.Fprintf(&b, "  # a NATS message makes a run; a URI outside the pipeline's allow-list is rejected, with the reason\n")
	fmt.Fprintf(&b, "  %s publish%s %s %s\n", cmd, stateFlag, devSampleSubj, msg)
	fmt.Fprintf(&b, "  %s publish%s %s '{\"uri\":\"https://elsewhere.blob.core.windows.net/data/x.csv\"}'\n", cmd, stateFlag, devSampleSubj)
	fmt.Fprintf(&b, "  # the same with the nats CLI, if you have it\n")
	natsURL := strings.Replace(st.NATSURL, "nats://", `nats://$(cat `+shellQuote(d.rel(st.NATSTokenFile))+`)@`, 1)
	fmt.Fprintf(&b, "  nats -s \"%s\" pub %s %s\n", natsURL, devSampleSubj, msg)
	fmt.Fprintf(&b, "  # the API: run the scheduled pipeline by hand, list runs, explain one\n")
	if st.URL != "http://127.0.0.1:8080" {
		fmt.Fprintf(&b, "  export BATCHD_URL=%s\n", st.URL)
	}
	batchd := batchdCommandName()
	fmt.Fprintf(&b, "  %s pipelines run nightly --wait\n", batchd)
	fmt.Fprintf(&b, "  %s runs list\n", batchd)
	fmt.Fprintf(&b, "  %s runs show ID\n", batchd)
	fmt.Fprintf(&b, "\nRuns, as they happen (Ctrl-C stops everything):\n")
	d.out.write(b.String())
}

// devCommandName is how the user ran this binary, for copy-paste commands:
// "batchd-dev" when that is what PATH finds, else a path relative to the
// working directory (./bin/batchd-dev), else the absolute path.
func devCommandName() string {
	exe, err := os.Executable()
	if err != nil {
		return "batchd-dev"
	}
	return commandName("batchd-dev", exe)
}

// batchdCommandName is how to call the batchd CLI that came with this
// binary (make build puts both in bin/), for copy-paste commands: "batchd"
// when there is none beside it.
func batchdCommandName() string {
	exe, err := os.Executable()
	if err != nil {
		return "batchd"
	}
	sibling := filepath.Join(filepath.Dir(exe), "batchd")
	if _, err := os.Stat(sibling); err != nil {
		return "batchd"
	}
	return commandName("batchd", sibling)
}

// commandName is name when PATH finds path under it, else path relative
// to the working directory, else path, quoted for a shell.
func commandName(name, path string) string {
	if p, err := exec.LookPath(name); err == nil {
		if a, err := filepath.Abs(p); err == nil && a == path {
			return name
		}
	}
	if wd, err := os.Getwd(); err == nil {
		if r, err := filepath.Rel(wd, path); err == nil && !strings.HasPrefix(r, "..") {
			return shellQuote("./" + r)
		}
	}
	return shellQuote(path)
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		safe := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:=@,+", r)
		return !safe
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
