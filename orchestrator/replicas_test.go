package orchestrator

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Two replicas on one NATS find each other in the registry and hold the
// limits together: the poll budget is split between them, max_running_jobs
// is the smallest either's pipelines file sets (they differ: config
// drift, reported), and when one stops the other takes the whole budget
// and its own cap again.
func TestReplicaRegistryHoldsLimitsAcrossReplicas(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	sub := newFakeSub()
	sub.polls = 8 // jobs stay running for a while, so that the cap binds
	capped := testPipeline(t, "score", nil)
	capped.Endpoint.MaxRunningJobs = 2
	uncapped := testPipeline(t, "score", nil) // the same pipeline, no cap: another file
	fast := func(hash string) harnessOpt {
		return func(o *Options) {
			o.Heartbeat = 200 * time.Millisecond
			o.PollBudget = 40
			o.Replica = ReplicaIdentity{Host: "h-" + hash, Version: "test", ConfigHash: hash}
		}
	}
	a := startOn(t, b, []*Pipeline{uncapped}, sub, fast("aaaa"))
	c := startOn(t, b, []*Pipeline{capped}, sub, fast("cccc"))

	waitFor(t, 10*time.Second, "both replicas to see each other", func() bool {
		return len(a.o.Replicas().Replicas) == 2 && len(c.o.Replicas().Replicas) == 2
	})
	for name, h := range map[string]*harness{"a": a, "c": c} {
		l := h.o.Replicas()
		if !l.ConfigDrift || l.Drift == "" {
			t.Errorf("replica %s: ConfigDrift %v (%q); want drift between aaaa and cccc", name, l.ConfigDrift, l.Drift)
		}
		if got := h.o.capFor("ep-score"); got != 2 {
			t.Errorf("replica %s: max_running_jobs of ep-score = %d, want 2 (the smaller of the two files)", name, got)
		}
		if got := h.o.pollShare(); got != 20 {
			t.Errorf("replica %s: poll budget share = %v, want 20 (40 split by 2)", name, got)
		}
	}
	if got := testutil.ToFloat64(a.o.met.configDrift); got != 1 {
		t.Errorf("batchd_config_drift = %v, want 1", got)
	}
	// Events arrive at the replica whose own file has no cap: the agreed
	// cap holds anyway.
	var ids []string
	for i := range 8 {
		ids = append(ids, a.emit("score", fmt.Sprint("k", i), fmt.Sprintf("https://a.blob.core.windows.net/c/%d", i)))
	}
	for _, id := range ids {
		a.waitState(id, StateCompleted, 30*time.Second)
	}
	sub.mu.Lock()
	peak := sub.maxLive
	sub.mu.Unlock()
	if peak > 2 {
		t.Errorf("at most %d jobs ran at once, want at most 2 (the agreed max_running_jobs)", peak)
	}

	// c stops (its entry is deleted): a takes the whole budget and its
	// own (absent) cap again, and the drift is over.
	if err := c.stop(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "a to see c gone", func() bool { return len(a.o.Replicas().Replicas) == 1 })
	if l := a.o.Replicas(); l.ConfigDrift {
		t.Errorf("drift after c stopped: %q", l.Drift)
	}
	if got := a.o.capFor("ep-score"); got != 0 {
		t.Errorf("max_running_jobs after c stopped = %d, want 0 (a's own file: no cap)", got)
	}
	if got := a.o.pollShare(); got != 40 {
		t.Errorf("poll budget share after c stopped = %v, want 40", got)
	}
	if got := a.o.limiter("ep-score.westeurope.inference.ml.azure.com").Limit(); float64(got) != 40 {
		t.Errorf("limiter after c stopped = %v/s, want 40", got)
	}
}

// A replica whose heartbeats stopped (killed, not stopped) is no longer
// counted after three intervals, though its entry is still in the bucket.
func TestReplicaViewDropsStaleHeartbeats(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil, newFakeSub(), func(o *Options) { o.Heartbeat = time.Hour })
	now := time.Now()
	self := h.o.self
	for _, tc := range []struct {
		name  string
		other time.Time
		want  int
	}{
		{"fresh", now.Add(-time.Second), 2},
		{"within three intervals", now.Add(-2 * time.Hour), 2},
		{"stale", now.Add(-4 * time.Hour), 1},
	} {
		h.o.setView(self, []ReplicaInfo{{ID: "other", Heartbeat: tc.other, ConfigHash: self.ConfigHash}}, now)
		if got := h.o.liveReplicas(); got != tc.want {
			t.Errorf("%s: live = %d, want %d", tc.name, got, tc.want)
		}
	}
}

// dropKeyLister is a registry bucket whose key listing ends before one
// key, as nats.go's lister does when its watcher stops early: no error,
// just fewer keys.
type dropKeyLister struct {
	jetstream.KeyValue
	drop string
}

func (d dropKeyLister) ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error) {
	kl, err := d.KeyValue.ListKeys(ctx, opts...)
	if err != nil {
		return nil, err
	}
	out := &sliceLister{ch: make(chan string, 16)}
	for k := range kl.Keys() {
		if k != d.drop {
			out.ch <- k
		}
	}
	close(out.ch)
	return out, nil
}

type sliceLister struct{ ch chan string }

func (s *sliceLister) Keys() <-chan string { return s.ch }
func (s *sliceLister) Stop() error         { return nil }

// A registry listing that silently misses a replica's key does not lift
// that replica's max_running_jobs; a deleted entry (a clean stop) does.
func TestReplicaCapSurvivesAShortKeyListing(t *testing.T) {
	t.Parallel()
	rig := newStepRig(t, testPipeline(t, "score", nil)) // no cap in this replica's file
	o, ctx := rig.o, t.Context()
	other, _ := json.Marshal(ReplicaInfo{ID: "other", Host: "h2", Heartbeat: time.Now().UTC(), ConfigHash: "x",
		MaxRunningJobs: map[string]int{"ep-score": 2}})
	if _, err := o.h.replicas.Put(ctx, "other", other); err != nil {
		t.Fatal(err)
	}
	if err := o.heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if got := o.capFor("ep-score"); got != 2 {
		t.Fatalf("cap after a whole read = %d, want 2 (the other replica's)", got)
	}
	real := o.h.replicas
	o.h.replicas = dropKeyLister{KeyValue: real, drop: "other"}
	if err := o.heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if got := o.capFor("ep-score"); got != 2 {
		t.Errorf("cap after a listing that missed the other replica = %d, want still 2", got)
	}
	if err := real.Delete(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	if err := o.heartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	if got := o.capFor("ep-score"); got != 0 {
		t.Errorf("cap after the other replica's entry was deleted = %d, want 0 (this replica's file)", got)
	}
}
