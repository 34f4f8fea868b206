package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// BenchmarkSubmit measures invokes per second against the simulator over
// loopback TLS, with a real ClientSecretCredential behind the client, and
// reports how many tokens were fetched per 1,000 submissions (the bearer
// policy should fetch one per token lifetime: the target is ≤ 1). Results
// are in BENCHMARKS.md.
//
//	go test -run '^$' -bench BenchmarkSubmit -benchtime 20000x ./jobs/
func BenchmarkSubmit(b *testing.B) {
	sim := jobstest.New(b, jobstest.Options{ClientSecrets: map[string]string{"bench-app": "bench-secret"}})
	cred, err := jobs.NewCredential(jobs.CredentialOptions{Kind: jobs.CredClientSecret, TenantID: "bench-tenant",
		ClientID: "bench-app", ClientSecret: "bench-secret", AuthorityHost: sim.AuthorityHost(),
		DisableInstanceDiscovery: true, Transport: sim.HTTPClient()})
	if err != nil {
		b.Fatal(err)
	}
	c, err := jobs.New(cred, jobs.Options{Transport: sim.HTTPClient()})
	if err != nil {
		b.Fatal(err)
	}
	ep := sim.Endpoint("bench")
	req := oneInput()
	b.SetParallelism(16) // many submissions in flight, as the daemon's workers would have
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Submit(context.Background(), ep, req); err != nil {
				b.Error(err)
				return
			}
		}
	})
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "submits/s")
	b.ReportMetric(float64(sim.Count(jobstest.RouteToken))*1000/float64(b.N), "tokens/1000submits")
	if got := sim.JobCount(); got != b.N {
		b.Errorf("simulator holds %d jobs, want %d", got, b.N)
	}
}
