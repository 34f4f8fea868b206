package jobstest

import (
	"encoding/json"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"
)

// memWriter is an in-memory ResponseWriter: the benchmarks call the
// simulator's handler directly, to measure the simulator and not loopback.
type memWriter struct {
	h      http.Header
	status int
	body   []byte
}

func (m *memWriter) Header() http.Header         { return m.h }
func (m *memWriter) WriteHeader(s int)           { m.status = s }
func (m *memWriter) Write(b []byte) (int, error) { m.body = append(m.body, b...); return len(b), nil }

func serve(s *Sim, method, path, token, body string) *memWriter {
	req, _ := http.NewRequest(method, s.url+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	w := &memWriter{h: http.Header{}, status: 200}
	s.srv.Handler.ServeHTTP(w, req)
	return w
}

// BenchmarkSim100kJobs creates 100,000 jobs and then measures a status GET
// among them. It reports the heap held per job.
//
//	go test -run '^$' -bench BenchmarkSim100kJobs -benchtime 100000x ./jobs/jobstest/
func BenchmarkSim100kJobs(b *testing.B) {
	s, err := Start(Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	tok := s.Token(AudienceML, s.Tenant(), "bench", time.Hour)
	const n = 100_000
	const body = `{"properties":{"InputData":{"d":{"JobInputType":"UriFile","Uri":"https://acct.blob.core.windows.net/in/2026/11/24/file-000000.csv"}}}}`
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	names := make([]string, 0, n)
	for range n {
		w := serve(s, "POST", "/ep/jobs", tok, body)
		if w.status != 200 {
			b.Fatalf("create: %d %s", w.status, w.body)
		}
		var resp struct{ Name string }
		_ = json.Unmarshal(w.body, &resp)
		names = append(names, resp.Name)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perJob := float64(after.HeapAlloc-before.HeapAlloc) / n
	b.ResetTimer()
	for i := range b.N {
		w := serve(s, "GET", "/ep/jobs/"+names[i%n], tok, "")
		if w.status != 200 {
			b.Fatalf("get: %d", w.status)
		}
	}
	b.StopTimer()
	b.ReportMetric(perJob, "heapB/job")
	if s.JobCount() != n {
		b.Errorf("jobs = %d, want %d", s.JobCount(), n)
	}
}
