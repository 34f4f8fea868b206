package kvstate_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/orchestrator/kvstate"
	"github.com/batchd/batchd/triggers/triggertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStores runs the same cases on the JetStream store (a real embedded
// nats-server) and on Memory, so tests that use Memory under synctest test
// the semantics production has.
func TestStores(t *testing.T) {
	b := triggertest.NATS(t)
	stores := map[string]func(t *testing.T) kvstate.Store{
		"jetstream": func(t *testing.T) kvstate.Store {
			return kvstate.JetStream(triggertest.KV(t, b, "kv"+kvstate.Hash(t.Name())[:8]))
		},
		"memory": func(*testing.T) kvstate.Store { return kvstate.NewMemory() },
	}
	for name, mk := range stores {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			s := mk(t)
			if _, err := s.Get(ctx, "a.b"); !errors.Is(err, kvstate.ErrNotFound) {
				t.Fatalf("Get missing: %v, want ErrNotFound", err)
			}
			r1, err := s.Create(ctx, "a.b", []byte("1"), 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Create(ctx, "a.b", []byte("2"), 0); !errors.Is(err, kvstate.ErrExists) {
				t.Fatalf("second Create: %v, want ErrExists", err)
			}
			r2, err := s.Update(ctx, "a.b", []byte("2"), r1)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Update(ctx, "a.b", []byte("3"), r1); !errors.Is(err, kvstate.ErrConflict) {
				t.Fatalf("stale Update: %v, want ErrConflict", err)
			}
			e, err := s.Get(ctx, "a.b")
			if err != nil || string(e.Value) != "2" || e.Revision != r2 {
				t.Fatalf("Get = %q rev %d, %v; want 2 rev %d", e.Value, e.Revision, err, r2)
			}
			if err := s.Delete(ctx, "a.b", r1); !errors.Is(err, kvstate.ErrConflict) {
				t.Fatalf("stale Delete: %v, want ErrConflict", err)
			}
			_, _ = s.Create(ctx, "a.c", []byte("x"), 0)
			_, _ = s.Create(ctx, "z.c", []byte("x"), 0)
			keys, err := s.Keys(ctx, "a.")
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"a.b", "a.c"}, keys); diff != "" {
				t.Errorf("Keys (-want +got):\n%s", diff)
			}
			vals, err := s.Values(ctx, "a.")
			if err != nil || len(vals) != 2 || string(vals["a.b"].Value) != "2" || vals["a.b"].Revision != r2 {
				t.Errorf("Values = %v, %v; want a.b=2 (rev %d) and a.c", vals, err, r2)
			}
			if vals, err := s.Values(ctx, "none."); err != nil || len(vals) != 0 {
				t.Errorf("Values of an empty prefix = %v, %v", vals, err)
			}
			var each []string
			if err := s.EachKey(ctx, "a.", func(k string) error { each = append(each, k); return nil }); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"a.b", "a.c"}, sorted(each)); diff != "" {
				t.Errorf("EachKey (-want +got):\n%s", diff)
			}
			stop := errors.New("stop")
			if err := s.EachKey(ctx, "a.", func(string) error { return stop }); !errors.Is(err, stop) {
				t.Errorf("EachKey with fn failing = %v, want its error", err)
			}
			if err := s.EachKey(ctx, "none.", func(k string) error { t.Errorf("EachKey of an empty prefix: %s", k); return nil }); err != nil {
				t.Errorf("EachKey of an empty prefix: %v", err)
			}
			if err := s.Delete(ctx, "a.b", r2); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Create(ctx, "a.b", []byte("again"), 0); err != nil {
				t.Fatalf("Create after Delete: %v", err)
			}
			if keys, _ := s.Keys(ctx, "none."); len(keys) != 0 {
				t.Errorf("Keys of an empty prefix = %v", keys)
			}
		})
	}
}

func TestJetStreamKeyTTL(t *testing.T) {
	b := triggertest.NATS(t)
	s := kvstate.JetStream(triggertest.KV(t, b, "ttl"))
	ctx := context.Background()
	if _, err := s.Create(ctx, "k", []byte("v"), time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.Get(ctx, "k")
		if errors.Is(err, kvstate.ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key with a 1s TTL still there after 10s (err %v)", err)
		}
		time.Sleep(100 * time.Millisecond) // polling a condition to a deadline
	}
}

func TestLease(t *testing.T) {
	b := triggertest.NATS(t)
	s := kvstate.JetStream(triggertest.KV(t, b, "lease"))
	ctx := context.Background()
	a := kvstate.NewLease(s, "poll.p.lease", "a", 500*time.Millisecond)
	c := kvstate.NewLease(s, "poll.p.lease", "c", 500*time.Millisecond)
	if ok, err := a.Acquire(ctx); !ok || err != nil {
		t.Fatalf("a.Acquire = %v, %v", ok, err)
	}
	if ok, _ := c.Acquire(ctx); ok {
		t.Fatal("c took a live lease")
	}
	if ok, _ := a.Acquire(ctx); !ok {
		t.Fatal("a could not renew")
	}
	// a dies (stops renewing): c takes over once until has passed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok, err := c.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("c never took over an expired lease")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if ok, _ := a.Acquire(ctx); ok {
		t.Fatal("a took the lease back from a live holder")
	}
	if err := c.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if ok, _ := a.Acquire(ctx); !ok {
		t.Fatal("a could not take a released lease")
	}
}

func TestToken(t *testing.T) {
	if got := kvstate.Token("score-daily_1"); got != "score-daily_1" {
		t.Errorf("Token kept name = %q", got)
	}
	if got := kvstate.Token("a.b c"); len(got) != 25 || got[0] != 'h' {
		t.Errorf("Token(a.b c) = %q, want h + 24 hex", got)
	}
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}
