package jobs

// OneLine returns the first line of s, at most n bytes of it, with anything
// shaped like a secret removed: JWTs, "Bearer <value>", SAS signatures,
// account keys and client secrets. Clients of other Azure ML services
// (jobs/online) pass service messages through it before they reach an
// error or a log, as this package does.
func OneLine(s string, n int) string { return oneLine(s, n) }

// Redacted is what stands in for a hidden value wherever batchd hides
// one (Redact, scrubbed events, the status page), so that every view of a
// run says the same and a value hidden once is recognised as hidden.
const Redacted = "[redacted]"

// Redact returns s with anything shaped like a secret replaced: JWTs,
// "Bearer <value>", SAS signatures (sig=, also JSON-escaped or URL-encoded),
// account keys and client secrets. It keeps the rest of s byte for byte, so
// it can run over JSON text and leave valid JSON.
func Redact(s string) string { return redact(s) }
