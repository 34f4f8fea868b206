package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/orchestrator/broker"
	"github.com/batchd/batchd/orchestrator/consumer"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// setup starts an embedded nats-server with a work-queue stream and a
// durable consumer with a short AckWait, and publishes bodies.
func setup(t *testing.T, bodies ...string) (jetstream.JetStream, jetstream.Consumer) {
	t.Helper()
	b, err := broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("embedded nats: %v", err)
	}
	t.Cleanup(b.Close)
	ctx := t.Context()
	if _, err := b.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "W", Subjects: []string{"w.>"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	cons, err := b.JS.CreateOrUpdateConsumer(ctx, "W", jetstream.ConsumerConfig{
		Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: -1,
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, body := range bodies {
		if _, err := b.JS.Publish(ctx, fmt.Sprintf("w.%d", i), []byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	return b.JS, cons
}

// run consumes with h until stop is called; stop drains the loop.
func run(t *testing.T, cons jetstream.Consumer, o consumer.Options, h consumer.Handler) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := consumer.New(ctx, o)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			_ = l.Consume(ctx, cons, h)
		}
		l.Drain()
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond to a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition to a deadline
	}
}

// pending is the number of messages the stream still holds (a work queue
// drops acked and terminated ones).
func pending(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(t.Context(), "W")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

type seen struct {
	mu     sync.Mutex
	counts map[string]int
}

func (s *seen) add(body string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.counts == nil {
		s.counts = map[string]int{}
	}
	s.counts[body]++
	return s.counts[body]
}

func (s *seen) get(body string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[body]
}

// TestSettles: each verdict does what it says.
func TestSettles(t *testing.T) {
	t.Parallel()
	js, cons := setup(t, "ack", "nak", "term")
	var s seen
	run(t, cons, consumer.Options{Concurrency: 2}, func(_, _ context.Context, m jetstream.Msg) (consumer.Settle, error) {
		n := s.add(string(m.Data()))
		switch string(m.Data()) {
		case "nak":
			if n < 3 {
				return consumer.NakAfter(10 * time.Millisecond), nil
			}
			return consumer.Ack(), nil
		case "term":
			return consumer.Term("not wanted"), nil
		}
		return consumer.Ack(), nil
	})
	waitFor(t, "every message settled", func() bool { return pending(t, js) == 0 })
	if got := [3]int{s.get("ack"), s.get("nak"), s.get("term")}; got != [3]int{1, 3, 1} {
		t.Errorf("deliveries ack, nak, term = %v, want [1 3 1]", got)
	}
}

// TestPanicIsTakenOutOfTheWay: a panicking handler does not end the loop
// (or the process); the reason is recorded and the message terminated.
func TestPanicIsTakenOutOfTheWay(t *testing.T) {
	t.Parallel()
	js, cons := setup(t, "boom", "fine")
	var s seen
	var mu sync.Mutex
	var reasons []string
	var panics atomic.Int32
	stop := run(t, cons, consumer.Options{
		Concurrency: 1,
		OnPoison: func(_ context.Context, m jetstream.Msg, cause consumer.Cause, reason string) {
			if cause == consumer.CausePanic {
				panics.Add(1)
			}
			mu.Lock()
			reasons = append(reasons, string(m.Data())+": "+reason)
			mu.Unlock()
		},
	}, func(_, _ context.Context, m jetstream.Msg) (consumer.Settle, error) {
		s.add(string(m.Data()))
		if string(m.Data()) == "boom" {
			var none []int
			_ = none[len(m.Data())] // an index out of range: a real runtime panic
		}
		return consumer.Ack(), nil
	})
	waitFor(t, "both messages settled", func() bool { return pending(t, js) == 0 })
	stop()
	if s.get("boom") != 1 || s.get("fine") != 1 {
		t.Errorf("deliveries boom %d, fine %d; want 1 each (a panic is not redelivered)", s.get("boom"), s.get("fine"))
	}
	if panics.Load() != 1 || len(reasons) != 1 || !strings.Contains(reasons[0], "boom: batchd panicked handling this message: runtime error: index out of range [4] with length 0") {
		t.Errorf("panics %d, recorded %q; want one, naming the panic", panics.Load(), reasons)
	}
}

// TestPoisonAfterBoundedFailures: an error retrying cannot fix is given
// MaxFailures tries, then recorded and terminated; a transient error is
// retried for as long as it takes.
func TestPoisonAfterBoundedFailures(t *testing.T) {
	t.Parallel()
	js, cons := setup(t, "poison", "transient")
	var s seen
	var poisoned atomic.Value
	run(t, cons, consumer.Options{
		Concurrency: 2, RetryBase: time.Millisecond, RetryMax: 5 * time.Millisecond, MaxFailures: 3,
		OnPoison: func(_ context.Context, m jetstream.Msg, cause consumer.Cause, reason string) {
			poisoned.Store(string(m.Data()) + ": " + string(cause) + ": " + reason)
		},
	}, func(_, _ context.Context, m jetstream.Msg) (consumer.Settle, error) {
		n := s.add(string(m.Data()))
		switch {
		case string(m.Data()) == "poison":
			return consumer.Settle{}, consumer.Poison(errors.New("record cannot be decoded"))
		case n < 8: // more failures than MaxFailures: still retried
			return consumer.Settle{}, errors.New("nats: timeout")
		}
		return consumer.Ack(), nil
	})
	waitFor(t, "both messages settled", func() bool { return pending(t, js) == 0 })
	if s.get("poison") != 3 || s.get("transient") != 8 {
		t.Errorf("deliveries poison %d, transient %d; want 3 and 8", s.get("poison"), s.get("transient"))
	}
	if got, _ := poisoned.Load().(string); !strings.Contains(got, "poison: error: failed 3 times with an error retrying cannot fix: record cannot be decoded") {
		t.Errorf("recorded %q", got)
	}
}

// TestConcurrencyAndDrain: at most Concurrency handlers run at once; at
// stop, handlers in flight get Grace on their work context, which is then
// canceled, and the loop leaves no goroutine behind (goleak).
func TestConcurrencyAndDrain(t *testing.T) {
	t.Parallel()
	bodies := make([]string, 8)
	for i := range bodies {
		bodies[i] = fmt.Sprint(i)
	}
	_, cons := setup(t, bodies...)
	var running, peak atomic.Int32
	var started atomic.Int32
	release := make(chan struct{})
	var canceled atomic.Int32
	stop := run(t, cons, consumer.Options{Concurrency: 3, Grace: 50 * time.Millisecond},
		func(work, stop context.Context, m jetstream.Msg) (consumer.Settle, error) {
			n := running.Add(1)
			defer running.Add(-1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			started.Add(1)
			select {
			case <-release:
			case <-work.Done():
				canceled.Add(1)
				return consumer.NakAfter(0), nil
			}
			return consumer.Ack(), nil
		})
	waitFor(t, "three handlers running", func() bool { return running.Load() == 3 })
	stop() // the three never finish on their own: the grace ends them
	if peak.Load() != 3 || started.Load() != 3 {
		t.Errorf("peak %d, started %d; want 3 and 3 (Concurrency)", peak.Load(), started.Load())
	}
	if canceled.Load() != 3 {
		t.Errorf("%d handlers saw their work context canceled after the grace, want 3", canceled.Load())
	}
	close(release)
}
