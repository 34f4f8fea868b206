package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/cmd/batchd/internal/benchtab"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
	"github.com/batchd/batchd/triggers"
	"github.com/batchd/batchd/triggers/blob"
)

// benchIntakePipelines: a manual pipeline (intake, event → POST) and a blob
// pipeline fed by the Event Grid webhook.
func benchIntakePipelines(sim *jobstest.Sim) string {
	return fmt.Sprintf(`endpoints:
  sim: {uri: %q}
pipelines:
  score:
    endpoint: sim
    inputs:
      data: {type: UriFile, uri: "{{ .Fields.uri }}"}
  blobs:
    endpoint: sim
    trigger:
      blob: {account: benchacct, container: inbox, prefix: in/}
    inputs:
      data: {type: UriFile, uri: "{{ .Blob.URL }}"}
    allow: {accounts: [benchacct], containers: [inbox]}
`, sim.ScoringURI("bench"))
}

// benchRawStream is the reference's stream: the intake stream's settings
// (work queue, file storage, discard new, the same duplicate window).
func benchRawStream(b *testing.B, js jetstream.JetStream, replicas int) {
	b.Helper()
	_, err := js.CreateOrUpdateStream(b.Context(), jetstream.StreamConfig{Name: "BENCH_RAW", Subjects: []string{"bench.raw.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Discard: jetstream.DiscardNew, Duplicates: 5 * time.Minute,
		Replicas: replicas})
	if err != nil {
		b.Fatal(err)
	}
}

// benchRawPublish publishes ev as Emit would, without batchd: the same
// JSON, subject shape and Nats-Msg-Id, waiting for the PubAck.
func benchRawPublish(b *testing.B, js jetstream.JetStream, ev orchestrator.Event) error {
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	data, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	id := orchestrator.RunID(ev.Pipeline, ev.Key)
	m := nats.NewMsg("bench.raw." + ev.Pipeline + "." + id)
	m.Data = data
	m.Header.Set(jetstream.MsgIDHeader, id)
	_, err = js.PublishMsg(b.Context(), m)
	return err
}

// benchIntake: events/s that Emit durably accepts (returns after the
// PubAck) against raw JetStream publishes with PubAck of the same payloads
// on the same embedded server, 64 publishers each, at three sizes. No
// worker consumes meanwhile: this is the intake alone.
func benchIntake(b *testing.B, rep *benchtab.Report) {
	sizes := []int{benchScaled(10000), benchScaled(30000), benchScaled(100000)}
	const conc = 64
	sim := jobstest.New(b, jobstest.Options{})
	st := newBenchStack(b, sim, benchIntakePipelines(sim))
	benchRawStream(b, st.br.JS, 1)
	// What syncing before every ack costs: the same raw publishes on an
	// embedded server with nats-server's default sync (every 2 minutes).
	unsynced, err := broker.Start(b.Context(), broker.Options{StoreDir: b.TempDir(), NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(unsynced.Close)
	benchRawStream(b, unsynced.JS, 1)
	event := func(round string, i int) orchestrator.Event {
		key := round + strconv.Itoa(i)
		return orchestrator.Event{Pipeline: "score", Key: key, Source: orchestrator.SourceAPI,
			Fields: map[string]string{"uri": benchAssetURI(key)}}
	}
	var emitS, rawS, xs []float64
	for k, n := range sizes {
		round := fmt.Sprintf("s%d-", k)
		emitT := benchParallel(b, n, conc, func(i int) error {
			_, err := st.orch.Emit(b.Context(), event(round, i))
			return err
		})
		rawT := benchParallel(b, n, conc, func(i int) error { return benchRawPublish(b, st.br.JS, event(round, i)) })
		noSyncT := benchParallel(b, n, conc, func(i int) error { return benchRawPublish(b, unsynced.JS, event(round, i)) })
		emitRate, rawRate, noSyncRate := float64(n)/emitT.Seconds(), float64(n)/rawT.Seconds(), float64(n)/noSyncT.Seconds()
		b.Logf("intake %d events: Emit %.0f/s, raw publish %.0f/s (synced), %.0f/s (not synced)", n, emitRate, rawRate, noSyncRate)
		rep.Add(benchtab.Figure{Group: "intake", Name: fmt.Sprintf("cost of sync before ack: raw publish, %d events, %d publishers", n, conc), Unit: "events/s",
			Batchd: rawRate, Reference: benchtab.Ref(noSyncRate), RefName: "the same without sync (nats-server default: every 2 min)",
			Note: "batchd's embedded server syncs every write before its ack; this is what that costs raw JetStream"})
		xs = append(xs, float64(n))
		emitS = append(emitS, emitT.Seconds())
		rawS = append(rawS, rawT.Seconds())
		f := benchtab.Figure{Group: "intake", Name: fmt.Sprintf("Emit, %d events, %d publishers", n, conc), Unit: "events/s",
			Batchd: emitRate, Reference: benchtab.Ref(rawRate), RefName: "raw JetStream publish + PubAck, same sync",
			Target: "ratio ≥ 0.5", Met: benchtab.Met(emitRate/rawRate >= 0.5)}
		rep.Add(f)
	}
	us := func(v []float64) []float64 {
		out := make([]float64, len(v))
		for i, s := range v {
			out[i] = s * 1e6
		}
		return out
	}
	rep.AddSlope(benchtab.Slope{Group: "intake", Name: "total time (µs) by events", Sizes: xs, Batchd: us(emitS), Reference: us(rawS),
		PerUnitName: "µs/event"})
	b.ReportMetric(0, "ns/op")
}

// benchWebhook: Event Grid deliveries of 50 BlobCreated events through
// /eventgrid (the real handler behind an http.Server configured as serve's)
// until the 200, 8 deliveries in flight, against the same number of raw
// JetStream publishes per batch with the same concurrency (8 deliveries in
// flight, 8 publishers inside each, as the webhook's per-delivery
// concurrency). The webhook also reads and writes each blob's sequencer in
// the triggers KV: that is part of its cost.
func benchWebhook(b *testing.B, rep *benchtab.Report) {
	batches := benchScaled(400)
	const perBatch, inFlight, inner = 50, 8, 8
	const secret = "bench-webhook-secret-0123456789"
	sim := jobstest.New(b, jobstest.Options{})
	st := newBenchStack(b, sim, benchIntakePipelines(sim))
	benchRawStream(b, st.br.JS, 1)
	var routes []blob.Route
	for name, cfg := range st.file.Triggers.Blob {
		routes = append(routes, blob.Route{Pipeline: name, Config: cfg})
	}
	kv, err := broker.KeyValue(b.Context(), st.br.JS, nil, triggers.StateBucketConfig(orchestrator.BucketTriggers, 1))
	if err != nil {
		b.Fatal(err)
	}
	hook, err := blob.NewWebhook(blob.WebhookOptions{Routes: routes, Secret: secret, Intake: st.orch, KV: kv,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/eventgrid", hook)
	srv := benchServer(mux)
	go func() { _ = srv.Serve(ln) }()
	b.Cleanup(func() { _ = srv.Close() })
	url := "http://" + ln.Addr().String() + "/eventgrid?code=" + secret
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: inFlight}}

	blobURL := func(batch, i int) string {
		return fmt.Sprintf("https://benchacct.blob.core.windows.net/inbox/in/b%d/f%d.csv", batch, i)
	}
	bodies := make([][]byte, batches)
	for k := range batches {
		var evs []map[string]any
		for i := range perBatch {
			evs = append(evs, map[string]any{
				"topic":     "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/benchacct",
				"subject":   fmt.Sprintf("/blobServices/default/containers/inbox/blobs/in/b%d/f%d.csv", k, i),
				"eventType": blob.TypeBlobCreated, "eventTime": time.Now().UTC().Format(time.RFC3339Nano),
				"id": fmt.Sprintf("evt-%d-%d", k, i), "dataVersion": "", "metadataVersion": "1",
				"data": map[string]any{"api": "PutBlob", "eTag": fmt.Sprintf("0x8D%012X", k*perBatch+i), "contentType": "text/csv",
					"contentLength": 1024, "blobType": "BlockBlob", "url": blobURL(k, i),
					"sequencer": fmt.Sprintf("%048x", k*perBatch+i+1)},
			})
		}
		bodies[k], _ = json.Marshal(evs)
	}

	hookLat := make([]time.Duration, batches)
	hookT := benchParallel(b, batches, inFlight, func(k int) error {
		start := time.Now()
		resp, err := client.Post(url, "application/json", bytes.NewReader(bodies[k]))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("delivery %d answered %d, want 200", k, resp.StatusCode)
		}
		hookLat[k] = time.Since(start)
		return nil
	})
	rawLat := make([]time.Duration, batches)
	rawT := benchParallel(b, batches, inFlight, func(k int) error {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, perBatch)
		sem := make(chan struct{}, inner)
		for i := range perBatch {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				u := blobURL(k, i)
				ev := orchestrator.Event{Pipeline: "blobs", Key: u + "@raw", Source: orchestrator.SourceEventGrid,
					Blob: &orchestrator.BlobEvent{URL: u, Account: "benchacct", Container: "inbox", Name: fmt.Sprintf("in/b%d/f%d.csv", k, i),
						Folder: fmt.Sprintf("in/b%d/", k), ETag: "0x8D", Size: 1024, API: "PutBlob"}}
				if err := benchRawPublish(b, st.br.JS, ev); err != nil {
					errs <- err
				}
			})
		}
		wg.Wait()
		close(errs)
		if err := <-errs; err != nil {
			return err
		}
		rawLat[k] = time.Since(start)
		return nil
	})
	// Every event became a run's intake message: the webhook did the work
	// it answered 200 for.
	info, err := st.br.JS.Stream(b.Context(), orchestrator.StreamIntake)
	if err != nil {
		b.Fatal(err)
	}
	si, err := info.Info(b.Context())
	if err != nil {
		b.Fatal(err)
	}
	if got, want := si.State.Msgs, uint64(batches*perBatch); got != want {
		b.Fatalf("intake stream holds %d events after the webhook, want %d", got, want)
	}
	hookRate, rawRate := float64(batches)/hookT.Seconds(), float64(batches)/rawT.Seconds()
	b.Logf("webhook %d batches of %d: %.1f batches/s (p50 %.1f ms, p99 %.1f ms); raw %.1f batches/s (p50 %.1f ms, p99 %.1f ms)",
		batches, perBatch, hookRate, benchPct(hookLat, 0.5), benchPct(hookLat, 0.99), rawRate, benchPct(rawLat, 0.5), benchPct(rawLat, 0.99))
	ref := "50 raw publishes + PubAck"
	rep.Add(
		benchtab.Figure{Group: "webhook", Name: fmt.Sprintf("%d Event Grid batches of %d BlobCreated, %d in flight", batches, perBatch, inFlight),
			Unit: "batches/s", Batchd: hookRate, Reference: benchtab.Ref(rawRate), RefName: ref,
			Note: fmt.Sprintf("%.0f events/s through /eventgrid", hookRate*perBatch)},
		benchtab.Figure{Group: "webhook", Name: "time to the 200, p50", Unit: "ms", Batchd: benchPct(hookLat, 0.5),
			Reference: benchtab.Ref(benchPct(rawLat, 0.5)), RefName: ref},
		benchtab.Figure{Group: "webhook", Name: "time to the 200, p99", Unit: "ms", Batchd: benchPct(hookLat, 0.99),
			Reference: benchtab.Ref(benchPct(rawLat, 0.99)), RefName: ref},
	)
	b.ReportMetric(0, "ns/op")
}

// benchServer is an http.Server configured as serve configures its own.
func benchServer(h http.Handler) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: 60 * time.Second, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
}
