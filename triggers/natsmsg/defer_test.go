package natsmsg

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/triggers/triggertest"
)

// With DeferReply a core request that becomes a run is not answered by the
// source: the event carries the reply subject for the run to answer. What
// no run will answer still is: a rejection, a message not taken, and (via
// OnDuplicate) a duplicate.
func TestCoreDeferredReply(t *testing.T) {
	b := triggertest.NATS(t)
	intake := triggertest.NewIntake()
	var mu sync.Mutex
	var dups []string // "runID reply"
	stop := runSource(t, Options{Pipeline: "p", Config: Config{Subject: "score.request", Queue: "batchd"}, Conn: b.Conn,
		Intake: intake, RetryDelay: 10 * time.Millisecond, CoreRetries: 2, DeferReply: true,
		OnDuplicate: func(_ context.Context, runID, reply string) error {
			mu.Lock()
			dups = append(dups, runID+" "+reply)
			mu.Unlock()
			return b.Conn.Publish(reply, []byte(`{"answered":"by the daemon"}`))
		}})
	defer stop()
	nc, err := nats.Connect(b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	// Publish a request with our own inbox, so the test sees whether (and
	// what) anyone answers.
	inbox := nats.NewInbox()
	replies, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	sendTo := func(reply, body, msgID string) {
		t.Helper()
		m := nats.NewMsg("score.request")
		m.Reply, m.Data = reply, []byte(body)
		if msgID != "" {
			m.Header.Set(jetstream.MsgIDHeader, msgID)
		}
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	send := func(body, msgID string) { t.Helper(); sendTo(inbox, body, msgID) }
	// The queue subscription may not exist yet: send probes (each its own
	// run, never answered) until one is taken. They reply elsewhere: a
	// probe nobody took gets a no-responders status on its reply subject.
	deadline := time.Now().Add(5 * time.Second)
	for i := 0; len(intake.Snapshot().Accepted) == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatal("no request taken within 5s")
		}
		sendTo(nats.NewInbox(), `{"probe":1}`, "probe-"+string(rune('a'+i%26))+time.Now().Format("150405.000000"))
		time.Sleep(20 * time.Millisecond) // polling a condition to a deadline
	}
	n := len(intake.Snapshot().Accepted)
	send(`{"x":1}`, "first")
	s := intake.Wait(t, 5*time.Second, "the request taken", func(s triggertest.Snapshot) bool { return len(s.Accepted) > n })
	ev := s.Accepted[len(s.Accepted)-1]
	if !ev.Message.ReplyDeferred || ev.Message.Reply != inbox || ev.Key != "nats-msg-id:first" {
		t.Errorf("event message %+v key %q, want the reply subject deferred and the Nats-Msg-Id key", ev.Message, ev.Key)
	}
	// The same Nats-Msg-Id again: the intake says duplicate, OnDuplicate
	// answers it.
	send(`{"x":1}`, "first")
	m, err := replies.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("no answer to the duplicate: %v", err)
	}
	if string(m.Data) != `{"answered":"by the daemon"}` {
		t.Errorf("duplicate answered %q, want OnDuplicate's answer", m.Data)
	}
	mu.Lock()
	if len(dups) == 0 || dups[len(dups)-1] != orchestrator.RunID("p", "nats-msg-id:first")+" "+inbox {
		t.Errorf("OnDuplicate calls %v", dups)
	}
	mu.Unlock()
	// Without a Nats-Msg-Id, two requests with the same body from two
	// requesters are two runs.
	inbox2 := nats.NewInbox()
	m1, m2 := nats.NewMsg("score.request"), nats.NewMsg("score.request")
	m1.Reply, m1.Data = nats.NewInbox(), []byte(`{"same":true}`)
	m2.Reply, m2.Data = inbox2, []byte(`{"same":true}`)
	before := len(intake.Snapshot().Accepted)
	_ = nc.PublishMsg(m1)
	_ = nc.PublishMsg(m2)
	s = intake.Wait(t, 5*time.Second, "both requests taken", func(s triggertest.Snapshot) bool { return len(s.Accepted) == before+2 })
	if k1, k2 := s.Accepted[before].Key, s.Accepted[before+1].Key; k1 == k2 {
		t.Errorf("two requests with the same body share the key %q", k1)
	}
	// A malformed request is still answered by the source.
	r, err := nc.Request("score.request", []byte(`nope`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var rb replyBody
	if err := json.Unmarshal(r.Data, &rb); err != nil || rb.State != "rejected" {
		t.Errorf("malformed request answered %q", r.Data)
	}
	// Nothing else reached our inbox: the accepted requests were left to
	// their runs.
	if m, err := replies.NextMsg(200 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Errorf("unexpected answer %q (%v): the source must not answer a deferred request", m.Data, err)
	}
}
