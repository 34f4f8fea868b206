package main

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/cmd/batchd/internal/benchtab"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/jobstest"
)

// BenchmarkServeTrackedRSS measures the resident memory of a batchd serve
// process (embedded NATS included) that tracks 10,000 running jobs.
//
//	go test -run '^$' -bench TrackedRSS -benchtime 1x ./cmd/batchd/
func BenchmarkServeTrackedRSS(b *testing.B) {
	runs := procEnvInt("BATCHD_RSS_RUNS", 10000)
	settle := time.Duration(procEnvInt("BATCHD_RSS_SETTLE_SECONDS", 30)) * time.Second
	dir := b.TempDir()
	bin := procBuild(b, dir)
	sim := jobstest.New(b, jobstest.Options{Lifecycle: jobstest.Stuck(jobs.StatusRunning)})
	env := procSimEnv(b, sim, dir)
	env["BATCHD_POLL_MIN"], env["BATCHD_POLL_MAX"], env["BATCHD_POLL_BUDGET"] = "10s", "5m", "200"
	env["BATCHD_LOG_LEVEL"] = "warn"
	var rss, hwm float64
	for n := 0; n < b.N; n++ {
		p := newProc(b, bin, env, "rss")
		p.start()
		ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
		sem := make(chan struct{}, 32)
		var wg sync.WaitGroup
		for i := range runs {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				key := "r" + strconv.Itoa(n) + "-" + strconv.Itoa(i)
				if err := procEmit(ctx, p.url, key, procInputURI(key)); err != nil {
					b.Error(err)
				}
			})
		}
		wg.Wait()
		deadline := time.Now().Add(5 * time.Minute)
		for {
			resp, err := http.Get(p.url() + "/metrics")
			tracked := 0
			if err == nil {
				var body strings.Builder
				buf := make([]byte, 64<<10)
				for {
					k, rerr := resp.Body.Read(buf)
					body.WriteString(string(buf[:k]))
					if rerr != nil {
						break
					}
				}
				resp.Body.Close()
				for _, line := range strings.Split(body.String(), "\n") {
					for _, st := range []string{"submitted", "running"} {
						if strings.HasPrefix(line, `batchd_runs{state="`+st+`"}`) {
							v, _ := strconv.ParseFloat(strings.Fields(line)[1], 64)
							tracked += int(v)
						}
					}
				}
			}
			if tracked >= runs {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d runs tracked after 5m, want %d", tracked, runs)
			}
			time.Sleep(200 * time.Millisecond)
		}
		cancel()
		rss, hwm = benchMemory(b, p.cmd.Process.Pid)
		b.Logf("%d runs tracked: VmRSS %.1f MB, VmHWM %.1f MB (embedded NATS included)", runs, rss, hwm)
		// After a while of steady tracking the runtime has returned what
		// the burst of submissions left behind.
		time.Sleep(settle)
		rss, _ = benchMemory(b, p.cmd.Process.Pid)
		b.Logf("after %s of steady tracking: VmRSS %.1f MB", settle, rss)
		p.stop(syscall.SIGTERM)
	}
	b.ReportMetric(rss, "rss_MB")
	b.ReportMetric(hwm, "peak_rss_MB")
	b.ReportMetric(0, "ns/op")
}

// benchMemory reads VmRSS and VmHWM (MiB) of pid.
func benchMemory(tb testing.TB, pid int) (rss, hwm float64) {
	rss, hwm, err := benchtab.ProcessMemory(pid)
	if err != nil {
		tb.Fatal(err)
	}
	return rss, hwm
}
