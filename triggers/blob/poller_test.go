package blob

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/triggertest"
)

type pollEnv struct {
	az        *azurite.Server
	container string
	client    *azblob.Client
	storage   *datastores.Storage
	kv        jetstream.KeyValue
	intake    *triggertest.Intake
}

func newPollEnv(t *testing.T) *pollEnv {
	t.Helper()
	az, client, container := sharedAzurite(t)
	e := &pollEnv{az: az, client: client, container: container, intake: triggertest.NewIntake()}
	e.storage = datastores.NewStorage(datastores.StorageOptions{Accounts: map[string]datastores.Account{
		azurite.Account: {Name: azurite.Account, BlobEndpoint: az.AccountURL(), Auth: datastores.AuthSharedKey, Key: azurite.Key},
	}})
	e.kv = triggertest.KV(t, triggertest.NATS(t), "triggers")
	return e
}

func (e *pollEnv) upload(t *testing.T, name, body string) {
	t.Helper()
	if _, err := e.client.UploadBuffer(context.Background(), e.container, name, []byte(body), nil); err != nil {
		t.Fatalf("upload %s: %v", name, err)
	}
}

func (e *pollEnv) poller(t *testing.T, cfg Config, holder string) *Poller {
	t.Helper()
	cfg.Container = e.container
	p, err := NewPoller(PollerOptions{Pipeline: "score", Config: cfg, Storage: e.storage, Intake: e.intake, KV: e.kv, Holder: holder})
	if err != nil {
		t.Fatalf("NewPoller: %v", err)
	}
	return p
}

func pollConfig() Config {
	return Config{Account: azurite.Account, Container: "inbox", Prefix: "in/", Suffix: ".csv", Source: SourcePoll}
}

func TestPollerHundredBlobsOnceAcrossRestart(t *testing.T) {
	e := newPollEnv(t)
	for i := range 100 {
		e.upload(t, fmt.Sprintf("in/f%03d.csv", i), "a,b\n1,2\n")
	}
	e.upload(t, "in/empty.csv", "")      // below min_size
	e.upload(t, "in/readme.txt", "hi")   // wrong suffix
	e.upload(t, "other/x.csv", "a,b\n1") // outside the prefix: never listed
	ctx := context.Background()

	st, err := e.poller(t, pollConfig(), "a").Sweep(ctx)
	if err != nil {
		t.Fatalf("Sweep: %v", err)
	}
	if st.Emitted != 100 || st.Filtered != 2 || st.Listed != 102 {
		t.Fatalf("first sweep = %+v, want 100 emitted, 2 filtered of 102 listed", st)
	}
	s := e.intake.Snapshot()
	if len(s.Accepted) != 100 || len(s.Records) != 2 {
		t.Fatalf("intake: %d accepted, %d records", len(s.Accepted), len(s.Records))
	}
	ev := s.Accepted[0]
	wantURL := e.az.AccountURL() + e.container + "/in/f000.csv"
	if ev.Blob.URL != wantURL || ev.Key != wantURL+"@"+ev.Blob.ETag || ev.Source != orchestrator.SourcePoll || ev.Blob.Size != 8 || strings.Contains(ev.Blob.ETag, `"`) {
		t.Errorf("event = %+v / %+v", ev, *ev.Blob)
	}

	// A restart: a new poller with the same KV emits and records nothing.
	st, err = e.poller(t, pollConfig(), "b").Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Emitted != 0 || st.Filtered != 0 || st.Skipped != 102 {
		t.Errorf("sweep after restart = %+v, want everything skipped", st)
	}
	if s := e.intake.Snapshot(); s.Emits != 100 || len(s.Records) != 2 {
		t.Errorf("after restart: %d emits, %d records; want 100, 2", s.Emits, len(s.Records))
	}

	// A re-upload is a new run; a deleted blob is forgotten.
	e.upload(t, "in/f000.csv", "a,b\n9,9\n")
	if _, err := e.client.DeleteBlob(ctx, e.container, "in/f001.csv", nil); err != nil {
		t.Fatal(err)
	}
	st, _ = e.poller(t, pollConfig(), "c").Sweep(ctx)
	if st.Emitted != 1 || st.Forgotten != 1 {
		t.Errorf("sweep after re-upload and delete = %+v, want 1 emitted, 1 forgotten", st)
	}
}

func TestPollerAndWebhookShareKeys(t *testing.T) {
	e := newPollEnv(t)
	e.upload(t, "in/both.csv", "a,b\n1,2\n")
	ctx := context.Background()
	props, err := e.client.ServiceClient().NewContainerClient(e.container).NewBlobClient("in/both.csv").GetProperties(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cfg := pollConfig()
	cfg.Source, cfg.Container = SourceBoth, e.container
	hook, err := NewWebhook(WebhookOptions{Routes: []Route{{Pipeline: "score", Config: cfg}}, Secret: testSecret, Intake: e.intake, KV: e.kv})
	if err != nil {
		t.Fatal(err)
	}
	// Event Grid's BlobCreated for the Azurite blob, quoted eTag and all.
	ev := blobEvent("eg-1", "PutBlob", e.az.AccountURL()+e.container+"/in/both.csv", string(*props.ETag), "0001", *props.ContentLength)
	ev["topic"] = "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/" + azurite.Account
	events, err := Decode(mustJSON(t, []any{ev}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hook.handle(ctx, events); err != nil {
		t.Fatal(err)
	}
	st, err := e.poller(t, cfg, "a").Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := e.intake.Snapshot()
	if len(s.Accepted) != 1 || s.Emits != 1 || st.Skipped != 1 {
		t.Errorf("accepted %d, emits %d, sweep %+v; want one run, one emit, the sweep skipping it", len(s.Accepted), s.Emits, st)
	}
}

func TestPollerMarkTagKeepsETag(t *testing.T) {
	e := newPollEnv(t)
	e.upload(t, "in/tagged.csv", "a\n1\n")
	ctx := context.Background()
	bc := e.client.ServiceClient().NewContainerClient(e.container).NewBlobClient("in/tagged.csv")
	before, _ := bc.GetProperties(ctx, nil)
	cfg := pollConfig()
	cfg.MarkTag = "batchd_run"
	if _, err := e.poller(t, cfg, "a").Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	tags, err := bc.GetTags(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := e.intake.Snapshot().RunIDs()[0]
	if len(tags.BlobTagSet) != 1 || *tags.BlobTagSet[0].Key != "batchd_run" || *tags.BlobTagSet[0].Value != want {
		t.Errorf("tags = %+v, want batchd_run=%s", tags.BlobTagSet, want)
	}
	after, _ := bc.GetProperties(ctx, nil)
	if *after.ETag != *before.ETag {
		t.Errorf("eTag changed by tagging: %s -> %s", *before.ETag, *after.ETag)
	}
}

func TestPollerReplicasShareTheLease(t *testing.T) {
	e := newPollEnv(t)
	for i := range 20 {
		e.upload(t, fmt.Sprintf("in/r%02d.csv", i), "x\n")
	}
	var stops []func()
	for _, h := range []string{"a", "b"} {
		p := e.poller(t, pollConfig(), h)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		stops = append(stops, func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run = %v", err)
			}
		})
	}
	e.intake.Wait(t, 30*time.Second, "20 runs", func(s triggertest.Snapshot) bool { return len(s.Accepted) == 20 })
	for _, stop := range stops {
		stop()
	}
	if s := e.intake.Snapshot(); s.Emits != 20 {
		t.Errorf("emits = %d, want 20: both replicas swept", s.Emits)
	}
}

func TestPollerEmitFailureRetriedNextSweep(t *testing.T) {
	e := newPollEnv(t)
	e.upload(t, "in/a.csv", "x\n")
	e.intake.FailNext()
	p := e.poller(t, pollConfig(), "a")
	if _, err := p.Sweep(context.Background()); err == nil {
		t.Fatal("Sweep with a failed emit returned nil")
	}
	st, err := p.Sweep(context.Background())
	if err != nil || st.Emitted != 1 {
		t.Errorf("second sweep = %+v, %v; want the blob emitted", st, err)
	}
}

// waitPast polls until the wall clock is in the second after t: Azure
// Storage's Last-Modified has one-second resolution.
func waitPast(t *testing.T, at time.Time) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !time.Now().Truncate(time.Second).After(at) {
		if time.Now().After(deadline) {
			t.Fatalf("the clock did not pass %v", at)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A poller added to a container with a past (a new pipeline, eventgrid
// switched to both, a lost triggers bucket) does not run that past: its
// first sweep records a horizon, and blobs last modified before it are
// remembered as history. What comes later runs, once, across restarts.
func TestPollerFirstSweepStartsAtAHorizon(t *testing.T) {
	e := newPollEnv(t)
	e.upload(t, "in/old-1.csv", "a\n1\n")
	e.upload(t, "in/old-2.csv", "a\n2\n")
	waitPast(t, time.Now())
	ctx := context.Background()
	p := e.poller(t, pollConfig(), "a")
	p.slack = 0 // the test's blobs are seconds old, not minutes

	st, err := p.Sweep(ctx)
	if err != nil || st.History != 2 || st.Emitted != 0 {
		t.Fatalf("first sweep = %+v, %v; want the 2 old blobs history, nothing emitted", st, err)
	}
	if n := len(e.intake.Snapshot().Accepted); n != 0 {
		t.Fatalf("%d events emitted for blobs older than the horizon", n)
	}
	e1, err := e.kv.Get(ctx, p.horizonKey())
	if err != nil {
		t.Fatalf("no horizon recorded: %v", err)
	}
	var h pollHorizon
	if err := json.Unmarshal(e1.Value(), &h); err != nil || h.From != "first sweep" {
		t.Fatalf("horizon %s, %v; want one from the first sweep", e1.Value(), err)
	}

	// After the horizon: a new blob, and a new version of an old one.
	waitPast(t, h.Since)
	e.upload(t, "in/new.csv", "a\n3\n")
	e.upload(t, "in/old-1.csv", "a\n1\nv2\n")
	st, err = e.poller(t, pollConfig(), "b").Sweep(ctx) // another replica, or a restart
	if err != nil || st.Emitted != 2 || st.History != 0 || st.Skipped != 1 {
		t.Fatalf("sweep after the horizon = %+v, %v; want 2 emitted (new, old-1 v2), old-2 skipped", st, err)
	}

	// A poller that swept before horizons existed: its last sweep is the
	// horizon, so what arrived while it was stopped (for the upgrade) runs.
	if err := e.kv.Delete(ctx, p.horizonKey()); err != nil {
		t.Fatal(err)
	}
	cur, _ := json.Marshal(pollCursor{Swept: h.Since.Add(-time.Hour)})
	if _, err := e.kv.Put(ctx, "poll.score.cursor", cur); err != nil {
		t.Fatal(err)
	}
	e.upload(t, "in/while-down.csv", "a\n4\n")
	st, err = e.poller(t, pollConfig(), "c").Sweep(ctx)
	if err != nil || st.Emitted != 1 {
		t.Fatalf("sweep of an upgraded poller = %+v, %v; want the blob uploaded while it was down emitted", st, err)
	}
	if e2, err := e.kv.Get(ctx, p.horizonKey()); err != nil || !strings.Contains(string(e2.Value()), `"last sweep"`) {
		t.Errorf("horizon of an upgraded poller: %v; want it taken from the last sweep", err)
	}
	if n := len(e.intake.Snapshot().Accepted); n != 3 {
		t.Errorf("%d events emitted in all, want 3 (new, old-1 v2, while-down)", n)
	}
}

// noValuesStore is the poller's store, refusing to hand out every record
// at once: a sweep must read the seen records page by page.
type noValuesStore struct{ kvstate.Store }

func (noValuesStore) Values(context.Context, string) (map[string]kvstate.Entry, error) {
	return nil, errors.New("the sweep loaded every seen record at once")
}

// A sweep over many listing pages reads the seen records of one page at a
// time (never all of them: the store refuses), and still emits each blob
// once, skips them all after a restart, and forgets deleted ones.
func TestPollerSweepsPageByPage(t *testing.T) {
	e := newPollEnv(t)
	const n = 230
	for i := range n {
		e.upload(t, fmt.Sprintf("in/p%03d.csv", i), "a,b\n1,2\n")
	}
	cfg := pollConfig()
	cfg.pageSize = 40
	sweep := func(holder string) SweepStats {
		t.Helper()
		p := e.poller(t, cfg, holder)
		p.store = noValuesStore{p.store}
		p.seen = seenStore{kv: p.store}
		p.lease = kvstate.NewLease(p.store, "poll.score.lease", holder, time.Minute)
		st, err := p.Sweep(context.Background())
		if err != nil {
			t.Fatalf("Sweep: %v", err)
		}
		return st
	}
	if st := sweep("a"); st.Emitted != n || st.Listed != n {
		t.Fatalf("first sweep = %+v, want %d emitted of %d listed", st, n, n)
	}
	if st := sweep("b"); st.Emitted != 0 || st.Skipped != n {
		t.Errorf("sweep after restart = %+v, want all %d skipped", st, n)
	}
	for _, name := range []string{"in/p000.csv", "in/p117.csv", "in/p229.csv"} {
		if _, err := e.client.DeleteBlob(context.Background(), e.container, name, nil); err != nil {
			t.Fatal(err)
		}
	}
	if st := sweep("c"); st.Forgotten != 3 || st.Skipped != n-3 || st.Emitted != 0 {
		t.Errorf("sweep after 3 deletions = %+v, want 3 forgotten, %d skipped", st, n-3)
	}
	if s := e.intake.Snapshot(); s.Emits != n {
		t.Errorf("%d emits in all, want %d", s.Emits, n)
	}
}

// leaseFailStore fails every operation on the sweep lease's key once
// failing is set, as a NATS node that lost its connection would.
type leaseFailStore struct {
	kvstate.Store
	failing atomic.Bool
}

var errLeaseStore = errors.New("nats: connection closed")

func (s *leaseFailStore) fail(key string) bool {
	return s.failing.Load() && strings.HasSuffix(key, ".lease")
}

func (s *leaseFailStore) Get(ctx context.Context, key string) (kvstate.Entry, error) {
	if s.fail(key) {
		return kvstate.Entry{}, errLeaseStore
	}
	return s.Store.Get(ctx, key)
}

func (s *leaseFailStore) Update(ctx context.Context, key string, v []byte, rev uint64) (uint64, error) {
	if s.fail(key) {
		return 0, errLeaseStore
	}
	return s.Store.Update(ctx, key, v, rev)
}

// A holder whose renewal fails stops sweeping once less than half its
// lease is left (here, it has lapsed):
// another replica may have taken it, and two sweeps at once emit twice.
func TestPollerStopsWhenTheLeaseLapsesUnrenewed(t *testing.T) {
	e := newPollEnv(t)
	const n = 120
	for i := range n {
		e.upload(t, fmt.Sprintf("in/l%03d.csv", i), "a,b\n1,2\n")
	}
	cfg := pollConfig()
	cfg.pageSize = 40
	p := e.poller(t, cfg, "a")
	fs := &leaseFailStore{Store: p.store}
	p.store = fs
	p.seen = seenStore{kv: fs}
	// Held for a millisecond: lapsed by the end of the first page.
	p.lease = kvstate.NewLease(fs, "poll.score.lease", "a", time.Millisecond)
	ctx := context.Background()
	if held, err := p.lease.Acquire(ctx); err != nil || !held {
		t.Fatalf("Acquire = %v, %v; want held", held, err)
	}
	fs.failing.Store(true)
	st, err := p.sweep(ctx, true)
	if err == nil || !strings.Contains(err.Error(), "lapsed") {
		t.Errorf("sweep error = %v, want the lease lapsed", err)
	}
	if st.Emitted != int(cfg.pageSize) {
		t.Errorf("sweep emitted %d, want the first page's %d only", st.Emitted, cfg.pageSize)
	}
}
