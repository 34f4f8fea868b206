package broker_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/batchd/batchd/orchestrator/broker"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The embedded server keeps JetStream data in the store dir across restarts:
// that is what makes a single-VM daemon durable.
func TestEmbeddedKeepsStreamAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := t.Context()

	b, err := broker.Start(ctx, broker.Options{StoreDir: dir})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if !b.Embedded() {
		t.Errorf("Embedded() = false, want true")
	}
	if got := b.ClientURL(); got != "" {
		t.Errorf("ClientURL() = %q, want empty (no listener unless asked)", got)
	}
	if _, err := b.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatalf("CreateStream: %v", err)
	}
	if _, err := b.JS.Publish(ctx, "t.x", []byte("hello")); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	b.Close()

	b, err = broker.Start(ctx, broker.Options{StoreDir: dir})
	if err != nil {
		t.Fatalf("restart: %v", err)
	}
	defer b.Close()
	st, err := b.JS.Stream(ctx, "T")
	if err != nil {
		t.Fatalf("Stream after restart: %v", err)
	}
	msg, err := st.GetLastMsgForSubject(ctx, "t.x")
	if err != nil {
		t.Fatalf("GetLastMsgForSubject: %v", err)
	}
	if string(msg.Data) != "hello" {
		t.Errorf("message after restart = %q, want %q", msg.Data, "hello")
	}
}

func TestEmbeddedListenerAndExternalConnect(t *testing.T) {
	ctx := t.Context()
	srv, err := broker.Start(ctx, broker.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer srv.Close()
	url := srv.ClientURL()
	if !strings.HasPrefix(url, "nats://127.0.0.1:") {
		t.Fatalf("ClientURL() = %q, want a loopback nats:// URL", url)
	}

	client, err := broker.Start(ctx, broker.Options{URL: url})
	if err != nil {
		t.Fatalf("Start external: %v", err)
	}
	defer client.Close()
	if client.Embedded() {
		t.Errorf("external broker says Embedded")
	}
	if err := client.Ready(); err != nil {
		t.Errorf("Ready: %v", err)
	}
	sub, err := srv.Conn.SubscribeSync("ping")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := client.Conn.Publish("ping", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.NextMsgWithContext(ctxTimeout(t)); err != nil {
		t.Errorf("message across the listener: %v", err)
	}
}

func TestEmbeddedRefusesNonLoopbackListen(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:4222", "10.0.0.1:4222", ":4222", "nohost"} {
		_, err := broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir(), Listen: addr})
		if err == nil {
			t.Errorf("Start(Listen=%q) = nil error, want a refusal", addr)
		}
	}
}

func TestEmbeddedNeedsStoreDir(t *testing.T) {
	if _, err := broker.Start(t.Context(), broker.Options{}); err == nil || !strings.Contains(err.Error(), "state directory") {
		t.Errorf("Start without StoreDir = %v, want an error naming the state directory", err)
	}
}

func ctxTimeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 5e9)
	t.Cleanup(cancel)
	return ctx
}

// Acknowledged means on disk: the embedded server syncs every write before
// it acknowledges it (nats-server's sync_always; see Options.NoSync). A
// power loss cannot be simulated with SIGKILL, which leaves the page cache
// intact, so this checks the server's setting itself.
func TestEmbeddedSyncsBeforeAck(t *testing.T) {
	b, err := broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if !b.SyncsBeforeAck() {
		t.Errorf("the embedded server does not sync before it acknowledges (sync_always off)")
	}
	b.Close()
	b, err = broker.Start(t.Context(), broker.Options{StoreDir: t.TempDir(), NoSync: true})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer b.Close()
	if b.SyncsBeforeAck() {
		t.Errorf("NoSync: the server still syncs every write")
	}
}

// TestRetryable: only configuration errors end setup; the rest is retried.
func TestRetryable(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{context.DeadlineExceeded, true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement, peer offline"}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamNameInUse}, true},
		{&jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{&jetstream.APIError{Code: 400, ErrorCode: 10065, Description: "subjects overlap with an existing stream"}, false},
		{&jetstream.APIError{Code: 500, ErrorCode: 10074, Description: "replicas > 1 not supported in non-clustered mode"}, false},
		{fmt.Errorf("wrapped: %w", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeBadRequest}), false},
	} {
		if got := broker.Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
