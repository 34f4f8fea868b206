package orchestrator

import (
	"fmt"
	"testing"
	"time"

	"github.com/batchd/batchd/jobs"
)

// Runs waiting for admission on one endpoint do not hold the intake's
// capacity: with more runs waiting on a saturated endpoint than the intake
// hands out at once (MaxIntakePending), every one of them is taken in
// (recorded waiting, or running) and another pipeline's event still
// reaches its POST at once.
func TestRunsWaitingOnOneEndpointDoNotBlockAnother(t *testing.T) {
	t.Parallel()
	sub := newFakeSub()
	sub.final = jobs.StatusRunning // A's one job never ends while B's event comes in
	a := testPipeline(t, "a", nil)
	a.Endpoint.MaxRunningJobs = 1
	b := testPipeline(t, "b", nil)
	const pending, waiting = 10, 30
	h := newHarness(t, []*Pipeline{a, b}, sub, func(o *Options) { o.MaxIntakePending = pending })

	var ids []string
	for i := range waiting + 1 {
		ids = append(ids, h.emit("a", fmt.Sprintf("a%02d", i), fmt.Sprintf("https://acct.blob.core.windows.net/c/a%02d", i)))
	}
	waitFor(t, 15*time.Second, "A's runs all waiting or running", func() bool {
		n := 0
		for _, id := range ids {
			if r, err := h.o.Get(t.Context(), id); err == nil && (r.State == StateWaiting || r.State == StateSubmitted || r.State == StateRunning) {
				n++
			}
		}
		return n == len(ids)
	})
	start := time.Now()
	id := h.emit("b", "b1", "https://acct.blob.core.windows.net/c/b1")
	h.waitState(id, StateSubmitted, 10*time.Second)
	t.Logf("B's event reached its POST %s after it was emitted, with %d runs waiting on A", time.Since(start).Round(time.Millisecond), waiting)
}
