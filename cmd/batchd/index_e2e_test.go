package main

import (
	"bufio"
	"encoding/json"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// The run index persists in the state directory: a restarted serve reads
// only what changed in the ledger since it stopped, whether it stopped
// cleanly or was SIGKILLed, and lists the same runs, newest first.
func TestServeRestartDoesNotReplayTheLedger(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the daemon as a process")
	}
	t.Parallel()
	p, _ := procWithSim(t, "index-restart", nil)
	const n = 60
	for i := range n {
		key := "idx-" + strconv.Itoa(i)
		if err := procEmit(t.Context(), p.url, key, procInputURI(key)); err != nil {
			t.Fatal(err)
		}
	}
	before := procWaitFinished(t, p.url, n, 2*time.Minute)
	ids := func(rs []orchestrator.RunSummary) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return out
	}
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		p.stop(sig)
		p.start()
		ready := lastIndexReady(t, p.log)
		if ready.Rebuilt || ready.Replayed > 5 {
			t.Errorf("after %s: the index was rebuilt (%v) or replayed %d ledger entries; want neither (%d runs in the ledger)", sig, ready.Rebuilt, ready.Replayed, n)
		}
		after, err := procListAll(p.url())
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids(before), ids(after)) {
			t.Errorf("after %s the list differs:\nbefore %v\nafter  %v", sig, ids(before), ids(after))
		}
	}
}

type indexReady struct {
	Replayed int64 `json:"replayed"`
	Rebuilt  bool  `json:"rebuilt"`
}

// lastIndexReady is the last "run index ready" line of a JSON log.
func lastIndexReady(t *testing.T, path string) indexReady {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	var last *indexReady
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if !strings.Contains(sc.Text(), `"run index ready"`) {
			continue
		}
		var r indexReady
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line %s: %v", sc.Text(), err)
		}
		last = &r
	}
	if last == nil {
		t.Fatal("no \"run index ready\" line in the log")
	}
	return *last
}
