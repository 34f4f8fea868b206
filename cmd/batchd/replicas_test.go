package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs/jobstest"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
)

// TestTwoReplicas runs two batchd processes on one NATS server (as on a
// cluster of VMs): events go to either, work spreads over both, and every
// run is submitted exactly once.
//
// BATCHD_REPLICA_EVENTS makes it bigger (make soak).
func TestTwoReplicas(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("subprocess replica test: skipped with -short")
	}
	events := procEnvInt("BATCHD_REPLICA_EVENTS", 1000)
	dir := t.TempDir()
	bin := procBuild(t, dir)
	sim := jobstest.New(t, jobstest.Options{Lifecycle: procQuickLifecycle()})

	// The NATS server the replicas share; here it lives in the test process.
	nb, err := broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("nats: %v", err)
	}
	t.Cleanup(nb.Close)
	env := procSimEnv(t, sim, dir)
	env["BATCHD_NATS_URL"] = nb.ClientURL()
	a := newProc(t, bin, env, "replica-a")
	b := newProc(t, bin, env, "replica-b")
	a.start()
	b.start()

	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Int64
	sem := make(chan struct{}, 16)
	for i := range events {
		target := a
		if i%2 == 1 {
			target = b
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			key := "ev-" + strconv.Itoa(i)
			if err := procEmit(ctx, target.url, key, procInputURI(key)); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d events were not accepted", n)
	}
	runs := procWaitFinished(t, a.url, events, 3*time.Minute)
	procCheckOneJobPerRun(t, sim, runs, procInputURI)

	sa, sb := replicaSubmissions(t, a), replicaSubmissions(t, b)
	t.Logf("%d events: replica a submitted %d jobs, replica b %d", events, sa, sb)
	if sa == 0 || sb == 0 {
		t.Errorf("submissions per replica = %d, %d; want both to take part", sa, sb)
	}
	if sa+sb != events {
		t.Errorf("submissions = %d + %d, want %d in all", sa, sb, events)
	}

	// The registry: both replicas (each sees the other within one
	// heartbeat), one pipelines file.
	procWaitFor(t, 30*time.Second, "replica a to list both replicas", func() bool {
		l, code := replicasCLI(t, a)
		return code == exitOK && len(l.Replicas) == 2 && !l.ConfigDrift
	})
	if v := metricValue(t, a.url(), "batchd_replicas"); v != 2 {
		t.Errorf("batchd_replicas = %v, want 2", v)
	}
	// A third replica with another pipelines file (a cap the others lack):
	// drift, reported by every replica, and the agreed cap is its.
	pf, err := os.ReadFile(env["BATCHD_PIPELINES"])
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "pipelines-other.yaml")
	capped := strings.Replace(string(pf), "    workspace:", "    max_running_jobs: 3\n    workspace:", 1)
	if err := os.WriteFile(other, []byte(capped), 0o644); err != nil {
		t.Fatal(err)
	}
	envC := maps.Clone(env)
	envC["BATCHD_PIPELINES"] = other
	c := newProc(t, bin, envC, "replica-c")
	c.start()
	procWaitFor(t, 30*time.Second, "replica a to report the drift", func() bool {
		l, code := replicasCLI(t, a)
		return code == exitFailed && l.ConfigDrift && len(l.Replicas) == 3
	})
	if v := metricValue(t, a.url(), "batchd_config_drift"); v != 1 {
		t.Errorf("batchd_config_drift = %v, want 1", v)
	}
	var ready string
	procWaitFor(t, 30*time.Second, "replica b's /readyz to warn of the drift", func() bool {
		resp, err := http.Get(b.url() + "/readyz")
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		ready = fmt.Sprintf("%d %s", resp.StatusCode, body)
		return strings.HasPrefix(ready, "200 ok; warning: live replicas run different pipelines files")
	})
	if code := c.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("replica c: exit code after SIGTERM = %d, want 0", code)
	}
	procWaitFor(t, 30*time.Second, "the drift to end when replica c stopped", func() bool {
		l, code := replicasCLI(t, a)
		return code == exitOK && !l.ConfigDrift && len(l.Replicas) == 2
	})

	for _, p := range []*batchdProc{a, b} {
		if code := p.stop(syscall.SIGTERM); code != 0 {
			t.Errorf("exit code after SIGTERM = %d, want 0", code)
		}
	}
}

// replicasCLI runs `batchd replicas --json` against p.
func replicasCLI(t *testing.T, p *batchdProc) (orchestrator.ReplicaList, int) {
	t.Helper()
	code, out, errOut := runCLI(t, map[string]string{"BATCHD_URL": p.url()}, "replicas", "--json")
	var l orchestrator.ReplicaList
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("batchd replicas --json: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	return l, code
}

// submissions reads batchd_submissions_total{result="accepted"} from a
// replica's /metrics.
func replicaSubmissions(t *testing.T, p *batchdProc) int {
	t.Helper()
	resp, err := http.Get(p.url() + "/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	n := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "batchd_submissions_total{") && strings.Contains(line, `result="accepted"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += int(v)
		}
	}
	return n
}
