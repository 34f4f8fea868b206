package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/datastores/azurite"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/triggertest"
)

func TestWebhookConformance(t *testing.T) {
	var (
		mu     sync.Mutex
		srv    *httptest.Server
		status = map[int]int{}
	)
	post := func(t *testing.T, n int) {
		ev := blobEvent(fmt.Sprintf("id-%d", n), "PutBlob", fmt.Sprintf("https://mystorage.blob.core.windows.net/inbox/in/c%d.csv", n),
			fmt.Sprintf("0x%d", n), fmt.Sprintf("%032d", n), 10)
		resp, err := http.Post(srv.URL+"/eventgrid?code="+testSecret, "application/json", bytes.NewReader(mustJSON(t, []any{ev})))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		mu.Lock()
		status[n] = resp.StatusCode
		mu.Unlock()
	}
	triggertest.Run(t, triggertest.Harness{
		Start: func(t *testing.T, intake orchestrator.Intake) func() {
			kv := triggertest.KV(t, triggertest.NATS(t), "triggers")
			hook, err := NewWebhook(WebhookOptions{Routes: []Route{inboxRoute()}, Secret: testSecret, Intake: intake, KV: kv})
			if err != nil {
				t.Fatal(err)
			}
			srv = httptest.NewServer(hook)
			clear(status)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- hook.Run(ctx) }()
			return func() {
				srv.Close()
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run = %v", err)
				}
			}
		},
		Occur:     post,
		Redeliver: post,
		Retry:     post, // Event Grid redelivers after a non-2xx answer
		Acked: func(t *testing.T, n int) bool {
			mu.Lock()
			defer mu.Unlock()
			return status[n] == http.StatusOK
		},
		OccurFiltered: func(t *testing.T) {
			resp, err := http.Post(srv.URL+"/eventgrid?code="+testSecret, "application/json", bytes.NewReader(fixture(t, "blobdeleted.json")))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		},
	})
}

func TestPollerConformance(t *testing.T) {
	az, client, _ := sharedAzurite(t)
	storage := datastores.NewStorage(datastores.StorageOptions{Accounts: map[string]datastores.Account{
		azurite.Account: {Name: azurite.Account, BlobEndpoint: az.AccountURL(), Auth: datastores.AuthSharedKey, Key: azurite.Key},
	}})
	var (
		container string
		kv        kvstate.Store
		intakeNow orchestrator.Intake
	)
	cfg := func() Config {
		c := pollConfig()
		c.Container, c.PollInterval = container, minPollInterval
		return c
	}
	name := func(n int) string { return fmt.Sprintf("in/p%d.csv", n) }
	upload := func(t *testing.T, blob string) {
		if _, err := client.UploadBuffer(context.Background(), container, blob, []byte("a,b\n"), nil); err != nil {
			t.Fatal(err)
		}
	}
	triggertest.Run(t, triggertest.Harness{
		Start: func(t *testing.T, intake orchestrator.Intake) func() {
			container = fmt.Sprintf("conf%03d", azSeq.Add(1))
			if _, err := client.CreateContainer(context.Background(), container, nil); err != nil {
				t.Fatal(err)
			}
			jkv := triggertest.KV(t, triggertest.NATS(t), "triggers")
			kv, intakeNow = kvstate.JetStream(jkv), intake
			p, err := NewPoller(PollerOptions{Pipeline: "score", Config: cfg(), Storage: storage, Intake: intake, KV: jkv, Holder: "a"})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- p.Run(ctx) }()
			return func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("Run = %v", err)
				}
			}
		},
		Occur: func(t *testing.T, n int) { upload(t, name(n)) },
		// A restarted replica sweeping the same container.
		Redeliver: func(t *testing.T, n int) {
			p, err := NewPoller(PollerOptions{Pipeline: "score", Config: cfg(), Storage: storage, Intake: intakeNow, store: kv, Holder: "b"})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := p.Sweep(context.Background()); err != nil {
				t.Fatal(err)
			}
		},
		Retry: func(*testing.T, int) {}, // the next sweep
		Acked: func(t *testing.T, n int) bool {
			ref, _ := ParseURL(az.AccountURL() + container + "/" + name(n))
			_, err := kv.Get(context.Background(), seenKey("score", ref.URL))
			if err != nil && !errors.Is(err, kvstate.ErrNotFound) {
				t.Fatal(err)
			}
			return err == nil
		},
		OccurFiltered: func(t *testing.T) { upload(t, "in/notes.txt") },
	})
}
