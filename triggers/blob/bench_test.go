package blob

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/batchd/batchd/triggers/triggertest"
)

func batchBody(b *testing.B, round, n int) []byte {
	var evs []any
	for i := range n {
		evs = append(evs, blobEvent(fmt.Sprintf("b-%d-%d", round, i), "PutBlob",
			fmt.Sprintf("https://mystorage.blob.core.windows.net/inbox/in/r%d/f%d.csv", round, i), fmt.Sprintf("0x%d", i), fmt.Sprintf("%032d", i), 10))
	}
	body, err := json.Marshal(evs)
	if err != nil {
		b.Fatal(err)
	}
	return body
}

// BenchmarkWebhookBatch50 posts a 50-event Event Grid batch of new blobs to
// the webhook backed by a real embedded NATS KV and a fake intake: the cost
// of the request path (decode, route, sequencer read + write per event).
func BenchmarkWebhookBatch50(b *testing.B) {
	kv := triggertest.KV(b, triggertest.NATS(b), "triggers")
	hook, err := NewWebhook(WebhookOptions{Routes: []Route{inboxRoute()}, Secret: testSecret, Intake: triggertest.NewIntake(),
		KV: kv, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(hook)
	defer srv.Close()
	bodies := make([][]byte, b.N)
	for i := range b.N {
		bodies[i] = batchBody(b, i, 50)
	}
	b.ResetTimer()
	for i := range b.N {
		resp, err := http.Post(srv.URL+"/eventgrid?code="+testSecret, "application/json", bytes.NewReader(bodies[i]))
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.ReportMetric(float64(50*b.N)/b.Elapsed().Seconds(), "events/s")
}

func BenchmarkDecodeEventGrid(b *testing.B) {
	body := batchBody(b, 0, 50)
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := Decode(body, http.Header{}); err != nil {
			b.Fatal(err)
		}
	}
}
