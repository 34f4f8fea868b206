package orchestrator

import (
	"context"
	"errors"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/orchestrator/broker/brokertest"
)

// TestLedgerReadsItsWritesOnCluster: on an R3 cluster of nats-server
// processes, a ledger read right after a write (the next step of the same
// run, maybe on another replica connected to another node) sees that
// write, while nodes are SIGKILLed and restarted. A stale read makes the
// tracker drop a run's carrier (a tracker message that finds no run, or
// the run still carried by the intake, is settled without acting), leaving
// the run submitted for ever, or drops a POST's answer (the run is not
// "ours" any more), leaving it unknown without its job name. With KV direct
// gets (which followers answer) this found 17 stale reads in 9,000.
func TestLedgerReadsItsWritesOnCluster(t *testing.T) {
	t.Parallel()
	c := brokertest.StartCluster(t, 3)
	ctx := t.Context()
	o := &Options{Replicas: 3}
	o.setDefaults()
	// The writer and the readers are replicas on their own connections:
	// one per node, so that each node's replica answers its reads.
	var ls []*ledger
	for _, nd := range c.Nodes {
		_, js := nd.Connect(t)
		h, err := setup(ctx, js, o)
		if err != nil {
			t.Fatalf("setup: %v", err)
		}
		ls = append(ls, &ledger{js: js, kv: h.ledger, retention: time.Hour, leaderReads: true})
	}
	var mu sync.Mutex
	reads, stale, missing := 0, 0, 0
	const rounds, perRound = 3, 1000
	for round := range rounds {
		// A node restarts: it catches up while the writes go on.
		c.Nodes[round].Stop(syscall.SIGKILL)
		c.Nodes[round].Start(t)
		var wg sync.WaitGroup
		sem := make(chan struct{}, 16)
		for i := range perRound {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				w := ls[(round+1+i%2)%3] // a writer on a node that stayed up
				r := newRecord(Event{Pipeline: "p", Key: time.Now().String(), Source: SourceAPI}, time.Now().UTC())
				rev, err := w.create(ctx, r)
				if err != nil {
					return // the cluster is electing: not a read
				}
				if err := r.move(StateSubmitted, "x", time.Now().UTC()); err != nil {
					t.Error(err)
					return
				}
				if rev, err = w.put(ctx, r, rev); err != nil {
					return
				}
				for _, rd := range ls {
					got, grev, err := rd.get(ctx, r.ID)
					mu.Lock()
					switch {
					case errors.Is(err, ErrRunNotFound):
						reads++
						missing++
					case err != nil: // unavailable: an error, never a wrong answer
					case grev != rev || got.State != StateSubmitted:
						reads++
						stale++
					default:
						reads++
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	t.Logf("%d reads after a write", reads)
	if reads < rounds*perRound {
		t.Errorf("only %d reads were answered; want most of %d", reads, 3*rounds*perRound)
	}
	if stale+missing > 0 {
		t.Errorf("%d of %d reads after a write returned an older revision and %d found no run; want every read to see the write",
			stale, reads, missing)
	}
}

// leaderGet means what a KV get means: a value with its revision, or not
// found, or deleted (delete, purge, and the marker an expiry leaves).
func TestLeaderGetMeansWhatKVGetMeans(t *testing.T) {
	t.Parallel()
	b := startBroker(t)
	ctx := t.Context()
	kv, err := b.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "lg", LimitMarkerTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rev, _ := kv.Put(ctx, "live", []byte("v1"))
	_, _ = kv.Put(ctx, "gone", []byte("x"))
	_ = kv.Delete(ctx, "gone")
	_, _ = kv.Put(ctx, "purged", []byte("x"))
	_ = kv.Purge(ctx, "purged")
	_, _ = kv.Create(ctx, "expires", []byte("x"), jetstream.KeyTTL(time.Second))
	waitFor(t, 10*time.Second, "the key with a TTL to expire", func() bool {
		_, err := kv.Get(ctx, "expires")
		return errors.Is(err, jetstream.ErrKeyDeleted) || errors.Is(err, jetstream.ErrKeyNotFound)
	})
	for _, tc := range []struct {
		key     string
		val     string
		rev     uint64
		wantErr error
	}{
		{key: "live", val: "v1", rev: rev},
		{key: "never", wantErr: jetstream.ErrKeyNotFound},
		{key: "gone", wantErr: jetstream.ErrKeyDeleted},
		{key: "purged", wantErr: jetstream.ErrKeyDeleted},
		{key: "expires", wantErr: jetstream.ErrKeyDeleted},
	} {
		val, grev, err := leaderGet(ctx, b.JS, "KV_lg", "$KV.lg."+tc.key)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("%s: err = %v, want %v", tc.key, err, tc.wantErr)
			}
			continue
		}
		if err != nil || string(val) != tc.val || grev != tc.rev {
			t.Errorf("%s = %q rev %d, %v; want %q rev %d", tc.key, val, grev, err, tc.val, tc.rev)
		}
	}
}

// Any number of replicas can start together on a fresh cluster: stream,
// consumer and bucket creation at start is idempotent and retried.
func TestReplicasStartTogetherOnFreshCluster(t *testing.T) {
	t.Parallel()
	c := brokertest.StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const replicas = 6
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		_, js := c.Nodes[i%3].Connect(t)
		wg.Go(func() {
			_, errs[i] = New(ctx, Options{JS: js, Replicas: 3, Submitter: newFakeSub(), Checker: fakeChecker{}})
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("replica %d: New = %v", i, err)
		}
	}
}
