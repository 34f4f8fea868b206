// Package orchestrator is batchd's durable core. It takes events from the
// triggers (Intake), records every run in a ledger, checks, admits and
// submits jobs, tracks them to their end, and publishes what happened.
// Everything it knows lives in NATS JetStream, so a crash, a restart or a
// second replica loses nothing and doubles nothing.
//
// # JetStream objects (created idempotently by New)
//
//	BATCHD_INTAKE     work queue of accepted events, batchd.intake.<pipeline>.<run id>,
//	                  Nats-Msg-Id = run id; no age or size limit: an event leaves it
//	                  only when a worker acks it. Consumer batchd_workers.
//	BATCHD_TRACK      work queue, one message per run being tracked, reconciled or
//	                  parked (batchd.track.<run id>, one per subject). Each look ends
//	                  with NakWithDelay(next interval). Consumer batchd_tracker.
//	BATCHD_RUNS       completion messages batchd.runs.<pipeline>.<state> (limits,
//	                  max age CompletionMaxAge), for downstream consumers.
//	KV batchd_runs    the ledger: one record per run (Run + bookkeeping).
//	KV batchd_admission  per endpoint: runs holding its slots; paused-until after a 429.
//	KV batchd_jobs    job name -> run id: a job is adopted by one run only.
//	KV batchd_triggers   the triggers' own state.
//
// # The carrier rule
//
// Every run that is not finished has a live carrier message: its intake
// message until the job is submitted (or the submission is unknown, or the
// run must wait for admission), then its tracker message. A carrier is acked only after the run is finished or
// the next carrier is published. The ledger record names the carrier
// (sys.carrier); a message from the other stream is stale and is settled
// without acting. Every transition is a compare-and-set on the record's KV
// revision, so two deliveries, two workers or two replicas acting on one run
// can never both make the same transition; the loser reads again and
// continues from what the winner wrote.
//
// # Write order, and what a crash at each point leaves
//
// Intake (Emit): publish to BATCHD_INTAKE and wait for the PubAck; only then
// may the trigger ack its source. Crash before the PubAck: the trigger
// still holds the event and emits it again (same run id, deduplicated).
//
// Worker, for one intake message:
//
//  1. Create the record (received). Crash after: the message is redelivered
//     and finds the record; it continues from it.
//  2. Render, preflight check; record the decision. Rejected: see "finish".
//  3. Take an admission slot (admission KV), or record waiting with the
//     tracker as the carrier, publish the tracker message and ack (a
//     delayed message would keep counting against the intake's
//     MaxAckPending: runs waiting on one endpoint would block every other
//     pipeline); the tracker looks again with NakWithDelay. Crash after taking the slot: the redelivery takes it
//     again (idempotent); a slot left by a run that never got further is
//     freed by repair.
//  4. Write submitting (with the request id and SubmitDeadline) BEFORE the
//     POST. Crash between this write and the POST's recorded answer: the
//     redelivery finds submitting. Once SubmitDeadline has passed (no POST
//     started then can still be in flight, on any replica), the crash rule
//     applies: the run becomes unknown — it may or may not have a job — and
//     is never posted again blindly.
//  5. POST. Then write the answer: submitted (+ job, carrier = tracker);
//     waiting (429: the endpoint is paused until Retry-After; transient:
//     backoff), with the slot given back after the write; rejected (4xx);
//     unknown (no definite answer: reset, timeout, 5xx, unreadable 2xx).
//  6. Publish the tracker message (Nats-Msg-Id names the submission), then
//     ack the intake message. Crash in between: the redelivered intake
//     message finds the run with the tracker and publishes again (deduped,
//     or replacing the pending one: one message per run).
//
// Tracker, for one tracker message: GET the job's status (a failing GET is
// no state change: look again later); record running; on a terminal status
// finish the run; on Failed with attempts left in the retry policy record
// waiting with a backoff and submit again (steps 3–5, the tracker message
// staying the carrier); past the pipeline's timeout cancel the job (ARM)
// and finish timed_out.
//
// Pushed completion (jobevents.go): an Azure ML workspace event about a job
// (JobChanged, from the webhook) only nudges the run's tracker message, so
// the next look — one status request, the same step as a poll — happens
// now; the event itself writes nothing to the run. While a workspace sends
// events, its jobs' routine looks wait the safety interval.
//
// Finish (any terminal state): publish the completion message (Nats-Msg-Id =
// run id, generation, state), then write the terminal record, then give the
// slot back, then ack. Crash after the message: the run is found unfinished
// and decided again; the same outcome publishes the message again under the
// same id, which the stream drops. (Only if the world changed in between —
// say the input appeared after a preflight rejection — does downstream see
// a second message; the later one is the run's outcome.) Crash after the write: the redelivery
// finds the run finished, gives the slot back and acks; repair frees the
// slot if nothing else does.
//
// Unknown runs (tracker): with a workspace, list the endpoint's jobs created
// since the submission (less ReconcileSkew) and adopt the one whose inputs
// match that no other run has claimed (claim first, in batchd_jobs, then
// write submitted). If none appears within ReconcileGrace, submit once more
// (the resubmission count is written with the submitting state, so it
// happens at most once); a second ambiguity waits for an operator. Without
// a workspace the run waits for an operator: its tracker message stays
// alive (parked) so that an operator's request reaches it.
//
// Operator actions (API) never write a state themselves: cancel and resolve
// record a request on the run and nudge its carrier; retry publishes a retry
// message to the intake stream, which the worker turns into a new attempt.
// So there is one writer of state transitions per run at a time, and the
// order above covers them too.
//
// # Online runs
//
// A pipeline whose endpoint is an online endpoint (Pipeline.IsOnline)
// scores each event with one request (Scorer) instead of submitting a job,
// through the same intake, ledger and completion messages, under the same
// carrier rule and compare-and-set writes (online.go has the details):
//
//  1. Create the record (received), as above.
//  2. Render the request body (it must be JSON; else rejected) and record
//     the decision: allow, one "not-applicable" check (an online request
//     names no URIs for the data-access preflight).
//  3. Take a request slot of the endpoint (max_concurrent_requests, per
//     replica, in process; waiting counts against the request's timeout).
//  4. Write submitting (request id, SubmitDeadline = the request's deadline
//     plus the submit margin) BEFORE the POST.
//  5. POST (429/503 retried within the deadline; a sent request without an
//     answer only when the pipeline is safe_to_repeat). Then write the
//     outcome: completed, rejected, failed, timed_out (finish: completion
//     message, then the write), or unknown (carrier = tracker, parked for an
//     operator: there is no job to reconcile).
//  6. Deliver the outcome (a reply to the requester of a core NATS request,
//     or batchd.results.<pipeline>), then ack. A delivery never precedes the
//     write that records it.
//
// A crash between 4 and 5's write leaves submitting: after SubmitDeadline
// the redelivery scores again if safe_to_repeat, else makes the run
// unknown ("scoring outcome unknown: batchd stopped while the request was in
// flight") and tells the requester. A crash between 5's write and 6: the
// redelivered intake message finds the run finished and delivers again
// from the stored response (at least once). A duplicate request (same key)
// is answered from the run (AnswerDuplicate, or the worker's duplicate
// path) and never scored again.
//
// # Retention
//
// Finished runs are written with a per-message TTL (Nats-TTL) of Retention;
// runs that are not finished are written without one. The ledger keeps one
// revision per key, so every write replaces the previous TTL: a run expires
// Retention after it finished, and a live run never expires. Expiry leaves a
// delete marker that the run index sees. (Needs nats-server 2.11 or later.)
//
// # The run index
//
// List, Counts and Watch read a per-replica index of the ledger in a bbolt
// file (Options.IndexPath; see index in index.go): summaries ordered newest
// first with pipeline, state and pipeline+state buckets, the counts in its
// meta. It is a cache: memory holds only the counts, a start resumes the
// ledger watch from the revision the file last applied, and a missing,
// unreadable or foreign file is rebuilt from the ledger. Entries past their
// TTL leave it even when the delete marker was missed.
//
// # Durability
//
// The embedded server writes every message to its file before the PubAck
// (R1 streams flush in place), so a killed process loses nothing it
// acknowledged. It does not fsync each write: a power loss can lose the
// last writes; a replicated external cluster does not have that limit.
package orchestrator
