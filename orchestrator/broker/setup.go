package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs/backoff"
)

// setupAttempt bounds one attempt at creating or updating a stream,
// consumer or bucket. On a fresh cluster, a request that races another
// replica's creation of the same stream may get no answer at all (seen with
// nats-server 2.15: TestReplicasStartTogetherOnFreshCluster); a cluster
// electing a leader answers nothing until it has one.
const setupAttempt = 5 * time.Second

// Setup runs one creation step (a stream, a consumer, a bucket) until it
// succeeds, ctx ends or it fails in a way another attempt cannot change
// (see Retryable). Timeouts, no responders and the server's "temporarily
// unavailable" answers are retried with back-off, logged, so that any
// number of replicas can start together on a fresh or degraded cluster and
// wait for its quorum.
func Setup[T any](ctx context.Context, log *slog.Logger, what string, f func(context.Context) (T, error)) (T, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for n := 1; ; n++ {
		actx, cancel := context.WithTimeout(ctx, setupAttempt)
		v, err := f(actx)
		cancel()
		if err == nil {
			if n > 1 {
				log.Info("nats setup: succeeded after retries", "what", what, "attempts", n)
			}
			return v, nil
		}
		if ctx.Err() != nil || !Retryable(err) {
			return v, err
		}
		d := backoff.Delay(n, 250*time.Millisecond, 5*time.Second)
		log.Warn("nats setup: failed; retrying (the cluster may be starting or without quorum)", "what", what, "attempt", n, "retry_in", d, "err", err)
		if backoff.Sleep(ctx, d) != nil {
			return v, err
		}
	}
}

// KeyValue creates or updates the bucket cfg describes, retried as Setup
// does.
func KeyValue(ctx context.Context, js jetstream.JetStream, log *slog.Logger, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	kv, err := Setup(ctx, log, "bucket "+cfg.Bucket, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, cfg)
	})
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// Retryable reports whether another attempt at a setup step may succeed.
// Only configuration errors are final: a bad request, an invalid or
// overlapping stream configuration, and replicas on a server that is not
// clustered. Everything else (timeouts, no responders, no quorum, "no
// suitable peers for placement" while a node is offline, "name already in
// use" from a concurrent creation) may pass.
func Retryable(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeBadRequest, jsErrStreamInvalidConfig, jsErrStreamSubjectOverlap, jsErrReplicasNotSupported:
			return false
		}
	}
	return true
}

// JetStream API error codes nats.go has no names for.
const (
	jsErrStreamInvalidConfig  jetstream.ErrorCode = 10052
	jsErrStreamSubjectOverlap jetstream.ErrorCode = 10065
	jsErrReplicasNotSupported jetstream.ErrorCode = 10074
)
