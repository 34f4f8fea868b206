package orchestrator

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// recordN records n finished runs of pipeline p, with keys unique to the
// harness's process, and returns their ids, newest first.
func recordN(t *testing.T, h *harness, p string, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		rc, err := h.o.Record(t.Context(), Event{Pipeline: p, Key: fmt.Sprintf("%s-%d", p, recordSeq.Add(1)), Source: SourcePoll}, StateFiltered, "test")
		if err != nil {
			t.Fatalf("Record: %v", err)
		}
		ids = append([]string{rc.RunID}, ids...)
	}
	return ids
}

var recordSeq atomic.Int64

func listIDs(t *testing.T, h *harness, opts ListOptions) []string {
	t.Helper()
	var ids []string
	for {
		l, err := h.o.List(opts)
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		for _, r := range l.Runs {
			ids = append(ids, r.ID)
		}
		if l.NextCursor == "" {
			return ids
		}
		opts.Cursor = l.NextCursor
	}
}

// A restart reads only what changed in the ledger since the index file's
// revision, not the history: 300 finished runs cost nothing at the second
// start, and the changes made while the process was down are there.
func TestIndexRestartReadsOnlyChangesSince(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "index", "runs.db")
	b := startBroker(t)
	withPath := func(o *Options) { o.IndexPath = path }
	h := startOn(t, b, []*Pipeline{testPipeline(t, "a", nil)}, newFakeSub(), withPath)
	want := recordN(t, h, "a", 300)
	waitFor(t, 10*time.Second, "300 runs indexed", func() bool {
		c, err := h.o.Counts()
		return err == nil && c[StateFiltered] == 300
	})
	if err := h.stop(); err != nil {
		t.Fatal(err)
	}
	if h.o.index.rebuilds.Load() != 1 {
		t.Errorf("first start: %d rebuilds, want 1 (no file yet)", h.o.index.rebuilds.Load())
	}
	// While it is down, five more runs (another process: the ledger is
	// shared).
	other := startOn(t, b, []*Pipeline{testPipeline(t, "a", nil)}, newFakeSub())
	more := recordN(t, other, "a", 5)
	if err := other.stop(); err != nil {
		t.Fatal(err)
	}

	h2 := startOn(t, b, []*Pipeline{testPipeline(t, "a", nil)}, newFakeSub(), withPath)
	if got := h2.o.index.rebuilds.Load(); got != 0 {
		t.Errorf("restart: %d rebuilds, want 0", got)
	}
	if got := h2.o.index.replayed.Load(); got > 5 {
		t.Errorf("restart replayed %d ledger entries, want at most the 5 written since", got)
	}
	if diff := cmp.Diff(append(more, want...), listIDs(t, h2, ListOptions{Limit: 40})); diff != "" {
		t.Errorf("list after restart (-want +got):\n%s", diff)
	}
	if c, _ := h2.o.Counts(); c[StateFiltered] != 305 {
		t.Errorf("counts after restart %v, want 305 filtered", c)
	}
}

// A watch that fails resumes from the last revision applied: no rebuild,
// nothing replayed but the changes since, and List keeps answering.
func TestIndexWatchFailureResumesWithoutRebuild(t *testing.T) {
	t.Parallel()
	h := newHarness(t, []*Pipeline{testPipeline(t, "a", nil)}, newFakeSub(), func(o *Options) {
		o.IndexPath = filepath.Join(t.TempDir(), "runs.db")
	})
	first := recordN(t, h, "a", 50)
	waitFor(t, 10*time.Second, "50 runs indexed", func() bool { return len(listIDs(t, h, ListOptions{})) == 50 })
	before := h.o.index.replayed.Load()
	h.o.index.breakWatch <- struct{}{}
	if _, err := h.o.List(ListOptions{}); err != nil {
		t.Errorf("List while the watch restarts: %v", err)
	}
	second := recordN(t, h, "a", 10)
	waitFor(t, 10*time.Second, "60 runs indexed", func() bool { return len(listIDs(t, h, ListOptions{Limit: 100})) == 60 })
	if got := h.o.index.rebuilds.Load(); got != 1 {
		t.Errorf("%d rebuilds, want only the first start's", got)
	}
	if got := h.o.index.replayed.Load() - before; got > 10 {
		t.Errorf("the resumed watch replayed %d entries, want at most the 10 written since", got)
	}
	if diff := cmp.Diff(append(second, first...), listIDs(t, h, ListOptions{Limit: 100})); diff != "" {
		t.Errorf("list (-want +got):\n%s", diff)
	}
}

// An index file that cannot be read, or that belongs to another ledger
// (the bucket was recreated), is rebuilt from the ledger.
func TestIndexRebuildsAnUnusableFile(t *testing.T) {
	t.Parallel()
	for name, spoil := range map[string]func(t *testing.T, path string){
		"garbage": func(t *testing.T, path string) {
			if err := os.WriteFile(path, bytes.Repeat([]byte("not a bbolt file "), 1000), 0o600); err != nil {
				t.Fatal(err)
			}
		},
		"another ledger": func(t *testing.T, path string) {
			// Made by a process on another NATS: its ledger stream has
			// another creation time.
			h := newHarness(t, []*Pipeline{testPipeline(t, "x", nil)}, newFakeSub(), func(o *Options) { o.IndexPath = path })
			recordN(t, h, "x", 3)
			waitFor(t, 5*time.Second, "3 runs", func() bool { return len(listIDs(t, h, ListOptions{})) == 3 })
			if err := h.stop(); err != nil {
				t.Fatal(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "runs.db")
			spoil(t, path)
			h := newHarness(t, []*Pipeline{testPipeline(t, "a", nil)}, newFakeSub(), func(o *Options) { o.IndexPath = path })
			want := recordN(t, h, "a", 4)
			waitFor(t, 5*time.Second, "4 runs", func() bool { return len(listIDs(t, h, ListOptions{})) == 4 })
			if diff := cmp.Diff(want, listIDs(t, h, ListOptions{})); diff != "" {
				t.Errorf("list (-want +got):\n%s", diff)
			}
			if got := h.o.index.rebuilds.Load(); got != 1 {
				t.Errorf("%d rebuilds, want 1", got)
			}
		})
	}
}

// Entries past their TTL (with the slack) leave the index even when the
// ledger's delete marker never came (it expired while batchd was down);
// live runs never do.
func TestIndexDropsEntriesPastTheirRetention(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = "Running"
	h := newHarness(t, []*Pipeline{testPipeline(t, "a", nil)}, sub)
	live := h.emit("a", "live", "https://a.blob.core.windows.net/c/live")
	h.waitState(live, StateRunning, 10*time.Second)
	recordN(t, h, "a", 3)
	waitFor(t, 5*time.Second, "4 runs", func() bool { return len(listIDs(t, h, ListOptions{})) == 4 })
	x := h.o.index
	x.now = func() time.Time { return time.Now().Add(DefaultRetention + 2*indexPruneSlack) }
	if err := x.prune(); err != nil {
		t.Fatal(err)
	}
	if got := listIDs(t, h, ListOptions{}); !slices.Equal(got, []string{live}) {
		t.Errorf("after the finished runs' retention the index lists %v, want only the live run %s", got, live)
	}
	if c, _ := h.o.Counts(); c[StateFiltered] != 0 || c[StateRunning] != 1 {
		t.Errorf("counts %v, want the live run only", c)
	}
}

// The order key sorts as List's order: newest first, and on equal times
// the greater id first.
func TestOrderKeySortsNewestFirst(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	sums := []RunSummary{
		{ID: "0000000000000000000000000000000a", Created: t0},
		{ID: "ffffffffffffffffffffffffffffffff", Created: t0},
		{ID: "00000000000000000000000000000001", Created: t0.Add(time.Nanosecond)},
		{ID: "00000000000000000000000000000002", Created: t0.Add(-time.Hour)},
		{ID: "0000000000000000000000000000000b", Created: t0},
	}
	byKey := slices.Clone(sums)
	slices.SortFunc(byKey, func(a, b RunSummary) int {
		return bytes.Compare(orderKey(a.Created, a.ID), orderKey(b.Created, b.ID))
	})
	byNewer := slices.Clone(sums)
	slices.SortFunc(byNewer, func(a, b RunSummary) int {
		switch {
		case newer(&a, &b):
			return -1
		case newer(&b, &a):
			return 1
		}
		return 0
	})
	if diff := cmp.Diff(byNewer, byKey); diff != "" {
		t.Errorf("order key order (-newer +key):\n%s", diff)
	}
}
