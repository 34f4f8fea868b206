package orchestrator

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs/jobstest"
)

// BenchmarkIntake measures Emit (events/s, each returning after its
// PubAck) and, in the same run and with the same concurrency, message size
// and stream settings, raw JetStream publishes: the ratio is Emit's
// overhead. No worker consumes meanwhile.
//
//	go test -run '^$' -bench Intake -benchtime 1x ./orchestrator/
func BenchmarkIntake(b *testing.B) {
	const events, concurrency = 20000, 64
	br := startBroker(b)
	ctx := b.Context()
	o, err := New(ctx, Options{JS: br.JS, Submitter: newFakeSub(), Checker: fakeChecker{},
		Pipelines: map[string]*Pipeline{"score": testPipeline(b, "score", nil)}})
	if err != nil {
		b.Fatal(err)
	}
	_, err = br.JS.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "BENCH_RAW", Subjects: []string{"bench.raw.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage, Duplicates: 5 * time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	run := func(f func(i int) error) float64 {
		start := time.Now()
		var next atomic.Int64
		var wg sync.WaitGroup
		for range concurrency {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= events {
						return
					}
					if err := f(i); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return float64(events) / time.Since(start).Seconds()
	}
	var emitRate, rawRate float64
	for n := 0; n < b.N; n++ {
		round := fmt.Sprintf("r%d-", n)
		emitRate = run(func(i int) error {
			_, err := o.Emit(ctx, Event{Pipeline: "score", Key: round + fmt.Sprint(i), Source: SourceAPI,
				Fields: map[string]string{"uri": "https://acct.blob.core.windows.net/c/in/file-" + fmt.Sprint(i) + ".csv"}})
			return err
		})
		rawRate = run(func(i int) error {
			ev := Event{Pipeline: "score", Key: round + fmt.Sprint(i), Source: SourceAPI, Time: time.Now().UTC(),
				Fields: map[string]string{"uri": "https://acct.blob.core.windows.net/c/in/file-" + fmt.Sprint(i) + ".csv"}}
			data, _ := json.Marshal(ev)
			m := nats.NewMsg("bench.raw." + RunID(ev.Pipeline, ev.Key))
			m.Data = data
			m.Header.Set(jetstream.MsgIDHeader, RunID(ev.Pipeline, ev.Key))
			_, err := br.JS.PublishMsg(ctx, m)
			return err
		})
	}
	b.ReportMetric(emitRate, "events/s")
	b.ReportMetric(rawRate, "raw_publish/s")
	b.ReportMetric(emitRate/rawRate, "emit/raw")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkEventToPOST measures the latency from Emit to the POST reaching
// the Azure ML simulator (the job's creation time there), at a fixed rate,
// through the real jobs client: p50 and p99.
//
//	go test -run '^$' -bench EventToPOST -benchtime 1x ./orchestrator/
func BenchmarkEventToPOST(b *testing.B) {
	const events, rate = 1000, 100 // events/s
	sim := jobstest.New(b, jobstest.Options{Lifecycle: jobstest.Stuck("Running")})
	var lat []time.Duration
	for n := 0; n < b.N; n++ {
		h := newHarness(b, []*Pipeline{simPipelineTB(b, sim, "score")}, simClientTB(b, sim), func(o *Options) {
			o.PollMin, o.PollMax = time.Minute, time.Minute // tracking stays out of the way
		})
		sent := make(map[string]time.Time, events)
		tick := time.NewTicker(time.Second / rate)
		for i := range events {
			<-tick.C
			uri := fmt.Sprintf("https://acct.blob.core.windows.net/c/in/r%d-%d.csv", n, i)
			sent[uri] = time.Now()
			if _, err := h.o.Emit(b.Context(), Event{Pipeline: "score", Key: uri, Source: SourceAPI, Fields: map[string]string{"uri": uri}}); err != nil {
				b.Fatal(err)
			}
		}
		tick.Stop()
		waitFor(b, time.Minute, "every POST", func() bool { return sim.JobCount() >= (n+1)*events })
		for _, j := range sim.Jobs() {
			if t0, ok := sent[j.Inputs["data"].URI]; ok {
				lat = append(lat, j.CreatedAt.Sub(t0))
			}
		}
		if err := h.stop(); err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
	b.ReportMetric(float64(rate), "events/s")
	b.ReportMetric(0, "ns/op")
}

func simPipelineTB(tb testing.TB, sim *jobstest.Sim, name string) *Pipeline {
	p := testPipeline(tb, name, nil)
	p.Endpoint.Endpoint = sim.Endpoint("ep-" + name)
	return p
}

func simClientTB(tb testing.TB, sim *jobstest.Sim) Submitter {
	c, err := newSimClient(sim)
	if err != nil {
		tb.Fatal(err)
	}
	return c
}
