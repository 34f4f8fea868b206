package cron

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/triggertest"
)

func TestConformance(t *testing.T) {
	var (
		store  *kvstate.Memory
		intake orchestrator.Intake
		base   time.Time
	)
	slot := func(n int) time.Time { return base.Add(time.Duration(n) * 10 * time.Minute) }
	o := func(holder string) Options {
		return Options{Pipeline: "p", Config: Config{Schedule: "*/10 * * * *"}, Intake: intake, store: store,
			Holder: holder, RetryDelay: 30 * time.Second}
	}
	triggertest.Run(t, triggertest.Harness{
		NoFiltered: true, // catch-up and overlap skips are recorded; see source_test.go
		Timeout:    time.Hour,
		Bubble:     func(t *testing.T, f func(t *testing.T)) { synctest.Test(t, f) },
		Start: func(t *testing.T, in orchestrator.Intake) func() {
			store, intake, base = kvstate.NewMemory(), in, time.Now() // the bubble starts on the hour
			r := start(t, o("a"))
			return func() { r.stop(t) }
		},
		Occur: func(t *testing.T, n int) { sleepUntil(slot(n)) },
		// A replica that crashed after Emit, before marking the slot done,
		// fires it again on restart: the same key.
		Redeliver: func(t *testing.T, n int) {
			synctest.Wait() // the first replica has finished with the slot
			if err := store.Delete(context.Background(), fmt.Sprintf("cron.p.done.%d", slot(n).UnixNano()), 0); err != nil {
				t.Fatal(err)
			}
			src, err := New(o("b"))
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := src.fire(context.Background(), slot(n), ""); !ok || err != nil {
				t.Fatalf("refire: %v %v", ok, err)
			}
		},
		Retry: func(*testing.T, int) {}, // the source retries after RetryDelay
		Acked: func(t *testing.T, n int) bool {
			_, err := store.Get(context.Background(), fmt.Sprintf("cron.p.done.%d", slot(n).UnixNano()))
			if err != nil && !errors.Is(err, kvstate.ErrNotFound) {
				t.Fatal(err)
			}
			return err == nil
		},
	})
}
