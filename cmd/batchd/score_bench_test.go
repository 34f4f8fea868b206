package main

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/batchd/batchd/cmd/batchd/internal/benchtab"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/jobs/online"
)

// BenchmarkOnlineRequestReply measures the latency batchd adds to an online
// request: a core NATS request through the daemon (trigger, intake stream,
// ledger writes, scoring POST, completion message, reply) against a direct
// POST to the same simulated endpoint with the same client, alternating,
// one request at a time. It reports p50 and p99 of both, in milliseconds,
// and the ratio of the p50s. It measures max(b.N, 500) pairs.
//
//	go test -run '^$' -bench BenchmarkOnlineRequestReply -benchtime 2000x ./cmd/batchd/
func BenchmarkOnlineRequestReply(b *testing.B) {
	viaT, directT := measureOnlineRequestReply(b, max(b.N, 500))
	b.ReportMetric(benchPct(viaT, 0.50), "batchd-p50-ms")
	b.ReportMetric(benchPct(viaT, 0.99), "batchd-p99-ms")
	b.ReportMetric(benchPct(directT, 0.50), "direct-p50-ms")
	b.ReportMetric(benchPct(directT, 0.99), "direct-p99-ms")
	b.ReportMetric(benchPct(viaT, 0.50)/benchPct(directT, 0.50), "p50-ratio")
	b.ReportMetric(0, "ns/op")
}

// benchOnline is the online figure of make bench (BenchmarkBatchd).
func benchOnline(b *testing.B, rep *benchtab.Report) {
	n := benchScaled(1000)
	viaT, directT := measureOnlineRequestReply(b, n)
	ref := fmt.Sprintf("direct POST to the simulator (%d pairs, one at a time)", n)
	rep.Add(
		benchtab.Figure{Group: "online", Name: "NATS request-reply through batchd, p50", Unit: "ms",
			Batchd: benchPct(viaT, 0.5), Reference: benchtab.Ref(benchPct(directT, 0.5)), RefName: ref},
		benchtab.Figure{Group: "online", Name: "NATS request-reply through batchd, p99", Unit: "ms",
			Batchd: benchPct(viaT, 0.99), Reference: benchtab.Ref(benchPct(directT, 0.99)), RefName: ref},
	)
}

// measureOnlineRequestReply times n core NATS requests through a batchd
// process (trigger, intake stream, ledger writes, scoring POST, completion
// message, reply) and n direct POSTs to the same simulated endpoint with the
// same client, alternating, one at a time, after 50 warm-up pairs.
func measureOnlineRequestReply(b *testing.B, n int) (viaBatchd, direct []time.Duration) {
	d := startOnlineDaemon(b, jobstest.OnlineOptions{}, map[string]string{"BATCHD_LOG_LEVEL": "info"})
	client, err := online.New(d.sim.Credential("bench-direct"), online.Options{ARMEndpoint: d.sim.ARMEndpoint(), Transport: d.sim.HTTPClient()})
	if err != nil {
		b.Fatal(err)
	}
	ep := d.sim.OnlineEndpoint("ep")
	ctx := context.Background()
	one := func(i int, viaBatchd bool) time.Duration {
		body := fmt.Sprintf(`{"i":%d}`, i)
		start := time.Now()
		if viaBatchd {
			if _, err := d.request(ctx, fmt.Sprintf("bench-%d", i), body, 30*time.Second); err != nil {
				b.Fatalf("request through batchd: %v", err)
			}
		} else if _, err := client.Score(ctx, ep, online.Request{Body: []byte(body)}); err != nil {
			b.Fatalf("direct POST: %v", err)
		}
		return time.Since(start)
	}
	for i := range 50 { // warm both paths: connections, tokens, JetStream
		one(-1-i, true)
		one(-1-i, false)
	}
	viaBatchd = make([]time.Duration, 0, n)
	direct = make([]time.Duration, 0, n)
	b.ResetTimer()
	for i := range n {
		viaBatchd = append(viaBatchd, one(i, true))
		direct = append(direct, one(i, false))
	}
	b.StopTimer()
	return viaBatchd, direct
}
