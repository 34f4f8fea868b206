package main

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

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
	d := startOnlineDaemon(b, jobstest.OnlineOptions{}, map[string]string{"BATCHD_LOG_LEVEL": "info"})
	direct, err := online.New(d.sim.Credential("bench-direct"), online.Options{ARMEndpoint: d.sim.ARMEndpoint(), Transport: d.sim.HTTPClient()})
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
		} else if _, err := direct.Score(ctx, ep, online.Request{Body: []byte(body)}); err != nil {
			b.Fatalf("direct POST: %v", err)
		}
		return time.Since(start)
	}
	for i := range 50 { // warm both paths: connections, tokens, JetStream
		one(-1-i, true)
		one(-1-i, false)
	}
	// Percentiles need samples: at least 500 pairs, even for -benchtime 1x
	// (make bench runs every benchmark once).
	samples := max(b.N, 500)
	viaT := make([]time.Duration, 0, samples)
	directT := make([]time.Duration, 0, samples)
	b.ResetTimer()
	for i := range samples {
		viaT = append(viaT, one(i, true))
		directT = append(directT, one(i, false))
	}
	b.StopTimer()
	pct := func(ds []time.Duration, p float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(p*float64(len(s))))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(viaT, 0.50), "batchd-p50-ms")
	b.ReportMetric(pct(viaT, 0.99), "batchd-p99-ms")
	b.ReportMetric(pct(directT, 0.50), "direct-p50-ms")
	b.ReportMetric(pct(directT, 0.99), "direct-p99-ms")
	b.ReportMetric(pct(viaT, 0.50)/pct(directT, 0.50), "p50-ratio")
	b.ReportMetric(0, "ns/op")
}
