package natsmsg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
	"github.com/batchd/batchd/triggers/triggertest"
)

func body(n int) []byte { return fmt.Appendf(nil, `{"input":"f%d.csv"}`, n) }

func TestJetStreamConformance(t *testing.T) {
	var (
		b    *broker.Broker
		st   jetstream.Stream
		mu   sync.Mutex
		seqs = map[int]uint64{}
	)
	triggertest.Run(t, triggertest.Harness{
		Start: func(t *testing.T, intake orchestrator.Intake) func() {
			b = triggertest.NATS(t)
			st = stream(t, b, "CONF")
			clear(seqs)
			return runSource(t, Options{Pipeline: "p", Config: Config{Stream: "CONF", Consumer: "c"}, Conn: b.Conn,
				Intake: intake, RetryDelay: time.Second})
		},
		Occur: func(t *testing.T, n int) {
			ack := publish(t, b.JS, "conf.in", fmt.Sprintf("m-%d", n), body(n))
			mu.Lock()
			seqs[n] = ack.Sequence
			mu.Unlock()
		},
		// The producer publishes the same message again, after the stream's
		// own dedupe window.
		Redeliver: func(t *testing.T, n int) {
			deadline := time.Now().Add(5 * time.Second)
			for publish(t, b.JS, "conf.in", fmt.Sprintf("m-%d", n), body(n)).Duplicate {
				if time.Now().After(deadline) {
					t.Fatal("still deduplicated by the stream after 5s")
				}
				time.Sleep(20 * time.Millisecond) // polling a condition to a deadline
			}
		},
		Retry: func(*testing.T, int) {}, // the server redelivers after the Nak delay
		Acked: func(t *testing.T, n int) bool {
			mu.Lock()
			seq := seqs[n]
			mu.Unlock()
			// Acks are published asynchronously on the source's connection:
			// a flush makes the server have them all.
			if err := b.Conn.Flush(); err != nil {
				t.Fatal(err)
			}
			c, err := st.Consumer(context.Background(), "c")
			if err != nil {
				t.Fatal(err)
			}
			info, err := c.Info(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			return info.AckFloor.Stream >= seq
		},
		OccurFiltered: func(t *testing.T) { publish(t, b.JS, "conf.in", "bad", []byte("not json")) },
	})
}

func TestCoreConformance(t *testing.T) {
	var (
		nc      *nats.Conn
		mu      sync.Mutex
		replies = map[int]replyBody{}
	)
	request := func(t *testing.T, n int, data []byte) {
		deadline := time.Now().Add(5 * time.Second)
		for {
			m, err := nc.Request("core.in", data, 5*time.Second)
			if errors.Is(err, nats.ErrNoResponders) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond) // polling a condition to a deadline
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			var r replyBody
			_ = json.Unmarshal(m.Data, &r)
			mu.Lock()
			replies[n] = r
			mu.Unlock()
			return
		}
	}
	triggertest.Run(t, triggertest.Harness{
		NoRedelivery: true,
		Start: func(t *testing.T, intake orchestrator.Intake) func() {
			b := triggertest.NATS(t)
			c, err := nats.Connect(b.ClientURL())
			if err != nil {
				t.Fatal(err)
			}
			nc = c
			clear(replies)
			stop := runSource(t, Options{Pipeline: "p", Config: Config{Subject: "core.in", Queue: "q"}, Conn: b.Conn, Intake: intake})
			return func() { stop(); c.Close() }
		},
		Occur:     func(t *testing.T, n int) { request(t, n, body(n)) },
		Redeliver: func(t *testing.T, n int) { request(t, n, body(n)) },
		Retry:     func(*testing.T, int) {},
		Acked: func(t *testing.T, n int) bool {
			mu.Lock()
			defer mu.Unlock()
			return replies[n].RunID != "" && replies[n].Error == ""
		},
		OccurFiltered: func(t *testing.T) { request(t, -1, []byte("[1]")) },
	})
}
