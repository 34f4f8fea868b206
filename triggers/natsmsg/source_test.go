package natsmsg

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/broker"
	"github.com/batchd/batchd/triggers/triggertest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func runSource(t *testing.T, o Options) func() {
	t.Helper()
	src, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run after cancel = %v, want nil", err)
		}
	}
}

func stream(t *testing.T, b *broker.Broker, name string) jetstream.Stream {
	t.Helper()
	st, err := b.JS.CreateStream(context.Background(), jetstream.StreamConfig{
		Name: name, Subjects: []string{strings.ToLower(name) + ".>"}, Duplicates: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	return st
}

// waitConsumerIdle polls the consumer until nothing is pending or unacked.
func waitConsumerIdle(t *testing.T, st jetstream.Stream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := st.Consumer(context.Background(), name)
		if err == nil {
			info, err := c.Info(context.Background())
			if err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream > 0 {
				return info
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer %s not idle after 60s", name)
		}
		time.Sleep(20 * time.Millisecond) // polling a condition to a deadline
	}
}

func publish(t *testing.T, js jetstream.JetStream, subj, id string, body []byte) *jetstream.PubAck {
	t.Helper()
	m := nats.NewMsg(subj)
	m.Data = body
	if id != "" {
		m.Header.Set(jetstream.MsgIDHeader, id)
	}
	ack, err := js.PublishMsg(context.Background(), m)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return ack
}

func TestJetStreamTenThousandMessages(t *testing.T) {
	b := triggertest.NATS(t)
	st := stream(t, b, "EVENTS")
	const unique, malformed, dups = 9000, 500, 500
	ctx := context.Background()
	var futures []jetstream.PubAckFuture
	pub := func(id string, body []byte) {
		m := nats.NewMsg("events.in")
		m.Data = body
		m.Header.Set(jetstream.MsgIDHeader, id)
		// The embedded server syncs every write: a burst can stall the
		// async window for longer than its default 200 ms.
		f, err := b.JS.PublishMsgAsync(m, jetstream.WithStallWait(30*time.Second))
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		futures = append(futures, f)
	}
	for i := range unique {
		pub(fmt.Sprintf("id-%d", i), fmt.Appendf(nil, `{"input":"file-%d.csv","n":%d}`, i, i))
		if i%malformedEvery == 0 && i/malformedEvery < malformed {
			pub(fmt.Sprintf("bad-%d", i), []byte(`{"input": "truncated`))
		}
	}
	select {
	case <-b.JS.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		t.Fatal("publishing took over 30s")
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		}
	}
	// Duplicates of earlier ids, past the stream's own dedupe window, so
	// the trigger really sees them: it must produce the same key.
	for i := range dups {
		id, body := fmt.Sprintf("id-%d", i*7), fmt.Appendf(nil, `{"input":"file-%d.csv","n":%d}`, i*7, i*7)
		deadline := time.Now().Add(5 * time.Second)
		for publish(t, b.JS, "events.in", id, body).Duplicate {
			if time.Now().After(deadline) {
				t.Fatal("stream still deduplicating after 5s")
			}
			time.Sleep(20 * time.Millisecond) // polling a condition to a deadline
		}
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != unique+malformed+dups {
		t.Fatalf("stream holds %d messages (%v), want %d", info.State.Msgs, err, unique+malformed+dups)
	}

	intake := triggertest.NewIntake()
	stop := runSource(t, Options{Pipeline: "score", Config: Config{Stream: "EVENTS", Consumer: "batchd-score"},
		Conn: b.Conn, Intake: intake, Concurrency: 16, RetryDelay: 50 * time.Millisecond})
	s := intake.Wait(t, 60*time.Second, "every message settled", func(s triggertest.Snapshot) bool {
		return len(s.Accepted) == unique && len(s.Records) == malformed && s.Duplicates == dups
	})
	ci := waitConsumerIdle(t, st, "batchd-score")
	stop()

	seen := map[string]int{}
	for _, ev := range s.Accepted {
		seen[ev.Key]++
	}
	for i := range unique {
		if n := seen[fmt.Sprintf("nats-msg-id:id-%d", i)]; n != 1 {
			t.Fatalf("id-%d accepted %d times, want 1", i, n)
		}
	}
	for _, r := range s.Records {
		if r.State != orchestrator.StateRejected || !strings.Contains(r.Reason, "not valid JSON") || !strings.HasPrefix(r.Event.Key, "nats-msg-id:bad-") {
			t.Fatalf("record = %+v, want a rejected malformed message", r)
		}
	}
	// Terminated, not redelivered: every message was delivered exactly once.
	if ci.Delivered.Consumer != unique+malformed+dups || ci.NumRedelivered != 0 {
		t.Errorf("consumer delivered %d (redelivered %d), want %d and 0", ci.Delivered.Consumer, ci.NumRedelivered, unique+malformed+dups)
	}
	if s.Emits != unique+dups {
		t.Errorf("emits = %d, want %d (malformed messages must not reach Emit)", s.Emits, unique+dups)
	}
}

const malformedEvery = 18 // 9000/18 = 500 malformed messages

func TestJetStreamSettles(t *testing.T) {
	b := triggertest.NATS(t)
	tests := []struct {
		name       string
		body       string
		emitErrs   []error
		validate   func(orchestrator.Event) error
		wantRuns   int
		wantRecord string // reason part, when recorded rejected
		wantEmits  int
		panics     bool // Emit panics (a bug): the worker loop records and terminates the message
	}{
		{name: "valid message is emitted once and acked", body: `{"input":"a.csv"}`, wantRuns: 1, wantEmits: 1},
		{name: "JSON array is rejected", body: `["a"]`, wantRecord: "not a JSON object"},
		{name: "transient error is nak'd and redelivered", body: `{"input":"a.csv"}`, emitErrs: []error{triggertest.ErrTransient}, wantRuns: 1, wantEmits: 2},
		{name: "permanent error is recorded and terminated", body: `{"input":"a.csv"}`,
			emitErrs: []error{orchestrator.Refuse(errors.New("pipeline paused"))}, wantRecord: "pipeline paused", wantEmits: 1},
		{name: "a panicking Emit is recorded and terminated", body: `{"input":"a.csv"}`, panics: true,
			wantRecord: "batchd panicked handling this message: emit exploded", wantEmits: 1},
		{name: "template validation rejects", body: `{"other":1}`, wantRecord: "no value for .Message.Data.input",
			validate: func(ev orchestrator.Event) error {
				var m map[string]any
				_ = json.Unmarshal(ev.Message.Data, &m)
				if _, ok := m["input"]; !ok {
					return errors.New("inputs.data.uri: no value for .Message.Data.input")
				}
				return nil
			}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := fmt.Sprintf("S%d", i)
			st := stream(t, b, name)
			intake := triggertest.NewIntake()
			intake.FailNext(tt.emitErrs...)
			if len(tt.emitErrs) == 0 {
				intake = triggertest.NewIntake()
			}
			if tt.panics {
				intake.FailWhen(func(orchestrator.Event) error { panic("emit exploded") })
			}
			stop := runSource(t, Options{Pipeline: "p", Config: Config{Stream: name, Consumer: "c"}, Conn: b.Conn,
				Intake: intake, Validate: tt.validate, RetryDelay: 20 * time.Millisecond})
			publish(t, b.JS, strings.ToLower(name)+".x", "", []byte(tt.body))
			ci := waitConsumerIdle(t, st, "c")
			stop()
			s := intake.Snapshot()
			if len(s.Accepted) != tt.wantRuns || s.Emits != tt.wantEmits {
				t.Errorf("runs %d, emits %d; want %d, %d", len(s.Accepted), s.Emits, tt.wantRuns, tt.wantEmits)
			}
			if tt.wantRecord != "" {
				if len(s.Records) != 1 || !strings.Contains(s.Records[0].Reason, tt.wantRecord) {
					t.Errorf("records = %+v, want one ~%q", s.Records, tt.wantRecord)
				}
				if ci.NumRedelivered != 0 {
					t.Errorf("a rejected message was redelivered")
				}
			}
			if tt.wantRuns == 1 {
				want := fmt.Sprintf("nats-seq:%s@%s:1", name, st.CachedInfo().Created.UTC().Format(time.RFC3339Nano))
				if got := s.Accepted[0].Key; got != want {
					t.Errorf("key = %q, want %q (no Nats-Msg-Id: the stream, its creation time and the sequence)", got, want)
				}
			}
		})
	}
}

func TestCoreRequestReply(t *testing.T) {
	intake, nc := coreSource(t, Config{Subject: "score.request", Queue: "batchd"})
	request := func(body string) replyBody {
		t.Helper()
		m := requestSubscribed(t, nc, "score.request", body)
		var r replyBody
		if err := json.Unmarshal(m.Data, &r); err != nil {
			t.Fatal(err)
		}
		return r
	}
	body := `{"input":"x.csv"}`
	wantID := orchestrator.RunID("p", Key("score.request", []byte(body), nil, "", time.Time{}, 0))
	if diff := cmp.Diff(replyBody{RunID: wantID}, request(body)); diff != "" {
		t.Errorf("first reply (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(replyBody{RunID: wantID, Duplicate: true}, request(body)); diff != "" {
		t.Errorf("same message again (-want +got):\n%s", diff)
	}
	if r := request(`nope`); r.State != "rejected" || r.Error != "body is not a JSON object" {
		t.Errorf("malformed reply = %+v", r)
	}
	intake.FailNext(triggertest.ErrTransient, triggertest.ErrTransient)
	if r := request(`{"input":"y.csv"}`); r.State != "failed" || !strings.Contains(r.Error, "not taken") {
		t.Errorf("reply after failed emits = %+v, want state failed", r)
	}
	if n := len(intake.Snapshot().Accepted); n != 1 {
		t.Errorf("accepted %d, want 1", n)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "one is required"},
		{Config{Subject: "a", Stream: "S", Consumer: "c"}, "set only one"},
		{Config{Stream: "S"}, "consumer: required"},
		{Config{Stream: "S", Consumer: "c", Queue: "q"}, "queue: only applies to subject"},
		{Config{Subject: "a", Creds: "/x"}, "creds: only applies with url"},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Validate(%+v) = %v, want ~%q", tt.cfg, err, tt.want)
		}
	}
	if err := (&Config{Stream: "S", Consumer: "c"}).Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

// A message without Nats-Msg-Id is keyed by its stream's sequence. A
// stream deleted and created again starts at sequence 1 once more: its
// first message is a new message, not a duplicate of the old stream's
// first, so the key carries the stream's creation time too.
func TestJetStreamRecreatedStreamIsNotDuplicate(t *testing.T) {
	b := triggertest.NATS(t)
	intake := triggertest.NewIntake()
	opts := Options{Pipeline: "p", Config: Config{Stream: "RECR", Consumer: "c"}, Conn: b.Conn, Intake: intake, RetryDelay: 20 * time.Millisecond}
	for i, body := range []string{`{"n":1}`, `{"n":2}`} {
		if i > 0 {
			if err := b.JS.DeleteStream(t.Context(), "RECR"); err != nil {
				t.Fatal(err)
			}
		}
		var st jetstream.Stream
		deadline := time.Now().Add(10 * time.Second)
		for { // the server removes a deleted stream's store asynchronously
			var err error
			st, err = b.JS.CreateStream(t.Context(), jetstream.StreamConfig{Name: "RECR", Subjects: []string{"recr.>"}})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("create stream: %v", err)
			}
			time.Sleep(20 * time.Millisecond) // polling a condition to a deadline
		}
		stop := runSource(t, opts)
		if ack := publish(t, b.JS, "recr.x", "", []byte(body)); ack.Sequence != 1 {
			t.Fatalf("sequence %d, want 1", ack.Sequence)
		}
		waitConsumerIdle(t, st, "c")
		stop()
	}
	s := intake.Snapshot()
	if len(s.Accepted) != 2 || s.Accepted[0].Key == s.Accepted[1].Key {
		t.Fatalf("accepted %d runs (keys %v), want 2 with different keys", len(s.Accepted), keysOf(s.Accepted))
	}
}

func keysOf(evs []orchestrator.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Key)
	}
	return out
}

// Attack: a client allowed to publish on the trigger subject names a reply
// subject it should not be able to make batchd publish on (another
// service's subject, the ledger's $KV subjects, the intake). batchd answers
// only under the reply prefix (_INBOX. by default): such a request is
// recorded rejected with the reason, not run, and answered nowhere.
func TestReplyOnlyUnderThePrefix(t *testing.T) {
	intake, nc := coreSource(t, Config{Subject: "score.request"})
	// A legitimate request first, so the source's subscription is known to
	// be up (before the spy's: a spy on ">" would be a responder to it).
	requestSubscribed(t, nc, "score.request", `{"input":"ok.csv"}`)
	spy, err := nc.SubscribeSync(">")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil { // the server has the spy's interest
		t.Fatal(err)
	}
	evil := []string{"orders.evil", "$KV.batchd_runs.0123456789abcdef0123456789abcdef", "batchd.intake.p.x", "$JS.API.STREAM.DELETE.BATCHD_INTAKE"}
	for _, reply := range evil {
		if err := nc.PublishMsg(&nats.Msg{Subject: "score.request", Reply: reply, Data: []byte(`{"input":"evil.csv"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	waitUntilRecorded := time.Now().Add(5 * time.Second)
	for len(intake.Snapshot().Records) < len(evil) && time.Now().Before(waitUntilRecorded) {
		time.Sleep(10 * time.Millisecond) // polling a condition to a deadline
	}
	s := intake.Snapshot()
	if len(s.Records) != len(evil) || len(s.Accepted) != 1 {
		t.Fatalf("records %d, accepted %d; want %d rejections and only the legitimate run", len(s.Records), len(s.Accepted), len(evil))
	}
	for _, rec := range s.Records {
		if rec.State != orchestrator.StateRejected || !strings.Contains(rec.Reason, "not under \"_INBOX.\"") {
			t.Errorf("record %s %q, want rejected naming the reply prefix", rec.State, rec.Reason)
		}
	}
	// Everything published while this ran: the requests and the one answer
	// to the legitimate request's inbox; nothing on an evil subject.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := spy.NextMsg(200 * time.Millisecond)
		if err != nil {
			break
		}
		for _, e := range evil {
			if m.Subject == e {
				t.Errorf("batchd published on %s: %s", e, m.Data)
			}
		}
	}
}

// requestSubscribed sends a request and returns the answer, retrying while
// nobody is subscribed yet (the source may still be starting).
func requestSubscribed(t *testing.T, nc *nats.Conn, subject, body string) *nats.Msg {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		m, err := nc.Request(subject, []byte(body), 5*time.Second)
		if errors.Is(err, nats.ErrNoResponders) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond) // polling a condition to a deadline
			continue
		}
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		return m
	}
}

// coreSource runs a core NATS source of pipeline p with cfg on a new
// embedded server, and connects a client to it; both stop at cleanup.
func coreSource(t *testing.T, cfg Config) (*triggertest.Intake, *nats.Conn) {
	t.Helper()
	b := triggertest.NATS(t)
	intake := triggertest.NewIntake()
	stop := runSource(t, Options{Pipeline: "p", Config: cfg, Conn: b.Conn,
		Intake: intake, RetryDelay: 10 * time.Millisecond, CoreRetries: 2})
	t.Cleanup(stop)
	nc, err := nats.Connect(b.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return intake, nc
}
