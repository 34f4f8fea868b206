// Package triggers is the home of batchd's event sources: blob arrivals
// (triggers/blob: the Event Grid webhook, the storage poller and per-folder
// micro-batching), schedules (triggers/cron) and NATS messages
// (triggers/natsmsg). Each turns its source into orchestrator.Events and
// hands them to an orchestrator.Intake.
//
// # The contract every trigger keeps
//
//   - Stable keys. An event's idempotency key depends only on the
//     occurrence: blob URL + eTag (the same from the webhook and the
//     poller), pipeline + scheduled slot time, Nats-Msg-Id (or a hash of
//     subject and body for core NATS, or the stream sequence). A redelivery
//     is the same run; the orchestrator's run-id dedupe ignores it.
//   - Ack after Emit. A trigger acknowledges its source (HTTP 200, JetStream
//     Ack, the cron slot marked done, the poller's seen record) only after
//     Intake.Emit returned nil, which happens after the intake stream's
//     PubAck. A transient Emit error leaves the event with its source
//     (Event Grid and JetStream redeliver; cron and the poller retry); a
//     permanent one (orchestrator.IsRefused) is recorded rejected and
//     dropped.
//   - Every decision is recorded. An event that is not run (filtered by a
//     rule, superseded by a newer version, a malformed message, a cron slot
//     skipped by a catch-up or overlap policy) is written to the ledger with
//     Intake.Record and a reason, and counted.
//   - Components are Run(ctx) error: they block, return nil after cancel,
//     start no goroutine in their constructor, and leave none behind.
//
// # State
//
// Trigger state lives in one JetStream KV bucket the daemon creates with
// StateBucketConfig: cron's last fired slot and buffered slot, slot claims,
// the per-blob newest eTag/sequencer, the poller's lease, and the open
// folder batches. Keys start with the trigger kind and the pipeline
// (cron.<pipeline>..., blob.<pipeline>..., poll.<pipeline>...,
// batch.<pipeline>...). Leases (the poller's, the batcher's) hold
// {holder, until}; the holder renews them by CAS update, and when a replica
// dies its lease is taken over by another once until has passed (the TTL,
// 30s by default). Per-key TTLs (nats-server 2.11+, the bucket's
// LimitMarkerTTL) only garbage-collect keys nobody will read again; no
// correctness depends on them.
//
// # Metrics
//
// batchd_trigger_events_total{trigger, pipeline, outcome} counts events by
// trigger kind (eventgrid, poll, batch, cron, nats), pipeline ("" for events
// that matched none) and outcome: received, emitted, duplicate, filtered,
// rejected, batched (added to a folder batch), skipped (a cron slot not
// fired), failed (Emit failed; the event stays with its source).
package triggers
