// Package blob turns blob arrivals into runs, three ways that share one key
// and one state:
//
//   - Webhook: the Event Grid endpoint (POST /eventgrid) for both the Event
//     Grid schema and CloudEvents 1.0 (single, batched and binary mode),
//     with the validation handshakes, a shared secret (query "code" or
//     header X-Webhook-Secret, compared in constant time) and optional
//     Microsoft Entra bearer tokens. It routes Microsoft.Storage.BlobCreated
//     to every pipeline whose trigger matches (account, container, prefix,
//     suffix, glob, data.api, min_size) and records everything else as
//     filtered with the reason.
//   - Poller: lists a container on an interval, for accounts without Event
//     Grid and as the reconciliation sweep that catches what Event Grid
//     dropped (it drops events on 400/401/403/413 and has no latency
//     promise).
//   - Batcher: per-folder micro-batching; a folder's files become one
//     UriFolder run when the folder is quiet, full, or has its marker.
//
// The key of a blob version is its canonical URL (dfs and privatelink hosts
// mapped to the blob host; Azurite's path-style URLs kept) plus its
// unquoted eTag: a re-upload is a new run, a redelivery or a second
// observer (webhook and sweep) is the same one. data.sequencer orders the
// events of one blob: an event older than one already handled is recorded
// filtered as superseded.
//
// State lives in the triggers' KV bucket: blob.<pipeline>.seen.<hash(url)>
// (the newest version handled, shared by webhook and poller),
// poll.<pipeline>.lease, and batch.<pipeline>.folder.<hash> (open batches).
package blob
