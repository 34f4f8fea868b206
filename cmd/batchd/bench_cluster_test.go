package main

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/batchd/batchd/cmd/batchd/internal/benchtab"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
	"github.com/batchd/batchd/orchestrator/broker/brokertest"
)

// benchCluster: the intake and event → POST on a three-node NATS cluster
// (nats-server processes on this machine, streams and buckets at R3, each
// node with the default sync: durability comes from the replicas), against
// raw R3 JetStream publishes with PubAck in the same run and a bare HTTP
// client.
func benchCluster(b *testing.B, rep *benchtab.Report) {
	c := brokertest.StartCluster(b, 3)
	sim := jobstest.New(b, jobstest.Options{Lifecycle: jobstest.Stuck(jobs.StatusRunning)})
	st := newBenchStackOn(b, sim, benchIntakePipelines(sim), broker.Options{URL: c.URL()}, 3)
	_, js := c.Connect(b)
	benchRawStream(b, js, 3)

	const conc = 64
	n := benchScaled(10000)
	event := func(round string, i int) orchestrator.Event {
		key := round + strconv.Itoa(i)
		return orchestrator.Event{Pipeline: "score", Key: key, Source: orchestrator.SourceAPI,
			Fields: map[string]string{"uri": benchAssetURI(key)}}
	}
	emitT := benchParallel(b, n, conc, func(i int) error {
		_, err := st.orch.Emit(b.Context(), event("cl-", i))
		return err
	})
	rawT := benchParallel(b, n, conc, func(i int) error { return benchRawPublish(b, js, event("cl-", i)) })
	emitRate, rawRate := float64(n)/emitT.Seconds(), float64(n)/rawT.Seconds()
	b.Logf("cluster intake %d events: Emit %.0f/s, raw R3 publish %.0f/s", n, emitRate, rawRate)
	rep.Add(benchtab.Figure{Group: "cluster (3 nodes, R3)", Name: fmt.Sprintf("Emit, %d events, %d publishers", n, conc), Unit: "events/s",
		Batchd: emitRate, Reference: benchtab.Ref(rawRate), RefName: "raw R3 JetStream publish + PubAck",
		Target: "ratio ≥ 0.5", Met: benchtab.Met(emitRate/rawRate >= 0.5)})

	// Event → POST: the intake backlog of the figure above drains first.
	st.run(b)
	procWaitFor(b, 5*time.Minute, "the intake backlog to drain", func() bool { return sim.JobCount() >= n })
	e := newE2P(b, sim, st.orch)
	e.via(true, 200, 400)
	e.via(false, 200, 400)
	const rate = 1000
	m := benchScaled(6000)
	bd, ref := e.via(true, rate, m), e.via(false, rate, m)
	rep.Add(benchtab.Figure{Group: "cluster (3 nodes, R3)", Name: fmt.Sprintf("event → POST p99 at %d events/s (%d events)", rate, m), Unit: "ms",
		Batchd: bd.p(0.99), Reference: benchtab.Ref(ref.p(0.99)), RefName: "bare HTTP client",
		Target: fmt.Sprintf("p99 ≤ %d ms", benchE2PTarget.Milliseconds()), Met: benchtab.Met(bd.p(0.99) <= benchtab.Ms(benchE2PTarget)),
		Note: fmt.Sprintf("%.0f of %d events/s carried", bd.achieved, rate)})
	b.ReportMetric(0, "ns/op")
}
