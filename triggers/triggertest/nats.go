package triggertest

import (
	"context"
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/orchestrator/broker"
	"github.com/batchd/batchd/triggers"
)

// NATS starts a real embedded nats-server with JetStream in a temporary
// directory, listening on a loopback port, and closes it at cleanup. A test
// that cannot start it fails.
func NATS(t testing.TB) *broker.Broker {
	t.Helper()
	b, err := broker.Start(context.Background(), broker.Options{
		StoreDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatalf("embedded nats: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

// KV creates the triggers' state bucket (triggers.StateBucketConfig) on b.
func KV(t testing.TB, b *broker.Broker, name string) jetstream.KeyValue {
	t.Helper()
	kv, err := b.JS.CreateKeyValue(context.Background(), triggers.StateBucketConfig(name, 1))
	if err != nil {
		t.Fatalf("create kv %s: %v", name, err)
	}
	return kv
}
