package blob

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/triggertest"
)

func batchCfg(b BatchConfig) Config {
	b.By = BatchByFolder
	c := Config{Account: "mystorage", Container: "inbox", Prefix: "in/", Batch: &b}
	return c
}

func runBatcher(t *testing.T, intake orchestrator.Intake, store kvstate.Store, cfg Config, holder string) func() {
	t.Helper()
	b, err := NewBatcher(BatcherOptions{Pipeline: "score", Config: cfg, Intake: intake, store: store, Holder: holder})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}
}

func add(t *testing.T, store kvstate.Store, cfg Config, name, etag string) {
	t.Helper()
	ref, err := ParseURL("https://mystorage.blob.core.windows.net/inbox/" + name)
	if err != nil {
		t.Fatal(err)
	}
	if err := addToBatch(context.Background(), store, "score", orchestrator.SourceEventGrid, ref, etag, 10, cfg.isMarker(ref)); err != nil {
		t.Fatal(err)
	}
}

func filesOf(s triggertest.Snapshot) [][]string {
	var out [][]string
	for _, ev := range s.Accepted {
		out = append(out, ev.Blob.Files)
	}
	return out
}

func TestBatchFlushesWhenQuiet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		intake, store := triggertest.NewIntake(), kvstate.NewMemory()
		cfg := batchCfg(BatchConfig{Quiet: 2 * time.Minute})
		stop := runBatcher(t, intake, store, cfg, "a")
		add(t, store, cfg, "in/d1/b.csv", "0x1")
		time.Sleep(30 * time.Second)
		add(t, store, cfg, "in/d1/a.csv", "0x2")
		add(t, store, cfg, "in/d1/a.csv", "0x2") // a redelivery changes nothing
		add(t, store, cfg, "in/d2/c.csv", "0x3")
		time.Sleep(119 * time.Second)
		synctest.Wait()
		if n := len(intake.Snapshot().Accepted); n != 0 {
			t.Fatalf("emitted %d batches before the folder was quiet", n)
		}
		time.Sleep(31 * time.Second) // quiet + one tick
		synctest.Wait()
		stop()
		s := intake.Snapshot()
		if diff := cmp.Diff([][]string{{"in/d1/a.csv", "in/d1/b.csv"}, {"in/d2/c.csv"}}, filesOf(s), cmpSortFiles); diff != "" {
			t.Fatalf("batches (-want +got):\n%s", diff)
		}
		for _, ev := range s.Accepted {
			if ev.Blob.Name != "" || ev.Blob.URL != "https://mystorage.blob.core.windows.net/inbox/"+ev.Blob.Folder {
				t.Errorf("batch event blob = %+v, want the folder", *ev.Blob)
			}
		}
		if keys, _ := store.Keys(context.Background(), folderPrefix("score")); len(keys) != 0 {
			t.Errorf("folder state left after flush: %v", keys)
		}
	})
}

var cmpSortFiles = cmp.Transformer("sortBatches", func(in [][]string) [][]string {
	out := append([][]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j][0] < out[i][0] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

func TestBatchMaxFilesAndMarker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		intake, store := triggertest.NewIntake(), kvstate.NewMemory()
		cfg := batchCfg(BatchConfig{Quiet: time.Hour, MaxFiles: 3, Marker: "_SUCCESS"})
		stop := runBatcher(t, intake, store, cfg, "a")
		for _, n := range []string{"in/m/1.csv", "in/m/2.csv", "in/m/3.csv"} {
			add(t, store, cfg, n, "0x1")
		}
		add(t, store, cfg, "in/k/1.csv", "0x1")
		add(t, store, cfg, "in/k/_SUCCESS", "0x9")
		time.Sleep(6 * time.Second) // a tick is at most 5s
		synctest.Wait()
		// After a flush, the same folder starts a new batch: a new run.
		add(t, store, cfg, "in/m/4.csv", "0x1")
		add(t, store, cfg, "in/m/_SUCCESS", "0x2")
		time.Sleep(6 * time.Second)
		synctest.Wait()
		stop()
		s := intake.Snapshot()
		want := [][]string{{"in/k/1.csv"}, {"in/m/1.csv", "in/m/2.csv", "in/m/3.csv"}, {"in/m/4.csv"}}
		if diff := cmp.Diff(want, filesOf(s), cmpSortFiles); diff != "" {
			t.Fatalf("batches (-want +got):\n%s", diff)
		}
		if len(s.RunIDs()) != 3 || s.Duplicates != 0 {
			t.Errorf("runs %v, duplicates %d", s.RunIDs(), s.Duplicates)
		}
	})
}

func TestBatchDurableAcrossRestartAndFailures(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		intake, store := triggertest.NewIntake(), kvstate.NewMemory()
		cfg := batchCfg(BatchConfig{Quiet: time.Minute})
		stop := runBatcher(t, intake, store, cfg, "a")
		add(t, store, cfg, "in/r/1.csv", "0x1")
		time.Sleep(30 * time.Second)
		stop() // replica a goes away; its open batch stays in KV
		intake.FailNext()
		stop = runBatcher(t, intake, store, cfg, "b")
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		stop()
		s := intake.Snapshot()
		if diff := cmp.Diff([][]string{{"in/r/1.csv"}}, filesOf(s)); diff != "" {
			t.Errorf("batches (-want +got):\n%s", diff)
		}
		if s.Failed != 1 {
			t.Errorf("failed emits = %d, want 1 (then retried)", s.Failed)
		}
	})
}

// crashAfterEmit is an intake whose Emits go through and then fail, as if
// the process died right after the emit, before the folder's state was
// updated; then arrive adds a file to the folder in that window.
type crashAfterEmit struct {
	*triggertest.Intake
	crash  bool
	arrive func()
}

func (c *crashAfterEmit) Emit(ctx context.Context, ev orchestrator.Event) (orchestrator.Receipt, error) {
	rc, err := c.Intake.Emit(ctx, ev)
	if err != nil || !c.crash {
		return rc, err
	}
	c.crash = false
	c.arrive()
	return orchestrator.Receipt{}, errors.New("the process died after the emit")
}

// The files of an emitted batch never run again: not after a crash between
// the emit and the update of the folder's state, even when more files
// arrived in the folder meanwhile (they are the next batch, alone).
func TestBatchFilesOfAnEmittedBatchNeverRunAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := kvstate.NewMemory()
		cfg := batchCfg(BatchConfig{Quiet: time.Minute})
		intake := &crashAfterEmit{Intake: triggertest.NewIntake(), crash: true}
		intake.arrive = func() { add(t, store, cfg, "in/r/2.csv", "0x2") }
		add(t, store, cfg, "in/r/1.csv", "0x1")
		stop := runBatcher(t, intake, store, cfg, "a")
		time.Sleep(90 * time.Second) // 1.csv is quiet: emitted, then the "crash"
		synctest.Wait()
		stop()
		stop = runBatcher(t, intake, store, cfg, "b") // the next replica
		time.Sleep(5 * time.Minute)
		synctest.Wait()
		stop()
		s := intake.Snapshot()
		if diff := cmp.Diff([][]string{{"in/r/1.csv"}, {"in/r/2.csv"}}, filesOf(s)); diff != "" {
			t.Errorf("batches (-want +got):\n%s", diff)
		}
		if keys, _ := store.Keys(context.Background(), folderPrefix("score")); len(keys) != 0 {
			t.Errorf("folder state left behind: %v", keys)
		}
	})
}
