package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/jobs/backoff"
)

// record is what the ledger stores for one run: the Run the API shows, and
// the bookkeeping that drives it (sys). It is JSON; Run's fields are at the
// top level, so the stored value reads like the API's answer.
type record struct {
	Run
	Sys sysState `json:"sys"`
	// full is an online run's whole response body, in memory only, from the
	// answer to the delivery of the outcome (the stored one may be cut).
	full []byte
}

// Carriers: the message that drives a run. Every run that is not finished
// has exactly one live carrier message, in the stream its Carrier names; a
// message from the other stream is stale and is settled without acting.
const (
	carrierIntake  = "intake"
	carrierTracker = "tracker"
)

// sysState is the run's bookkeeping. None of it is secret.
type sysState struct {
	Carrier string `json:"carrier,omitempty"`
	// Gen counts operator retries; a retry message names the generation it
	// creates, so a repeated request does not retry twice.
	Gen int `json:"gen,omitempty"`
	// Endpoint is the endpoint the run was (or will be) submitted to, as it
	// was configured then: tracking survives a changed pipelines file.
	Endpoint *jobs.Endpoint `json:"endpoint,omitempty"`
	// SubmittingAt is when the last submitting state was written;
	// SubmitDeadline is after the end of any POST started then.
	SubmittingAt   time.Time `json:"submitting_at,omitzero"`
	SubmitDeadline time.Time `json:"submit_deadline,omitzero"`
	// ReconcileSince is when the attempt's first POST was prepared: listed
	// jobs created from then on (less the skew) may be its job.
	ReconcileSince time.Time `json:"reconcile_since,omitzero"`
	// Deadline is when the pipeline's timeout ends the job (zero: none).
	Deadline time.Time `json:"deadline,omitzero"`
	// NotBefore delays the next submission (retry backoff).
	NotBefore time.Time `json:"not_before,omitzero"`
	// Transient counts transient submission failures in a row.
	Transient int `json:"transient,omitempty"`
	// Resubmits counts submissions made by reconciliation (at most one).
	Resubmits int `json:"resubmits,omitempty"`
	// WaitReason is the last admission wait reason written to History, so a
	// long wait is one history entry, not one per look.
	WaitReason string `json:"wait_reason,omitempty"`
	// Operator requests, carried out by whoever holds the run's carrier.
	Cancel  *cancelRequest  `json:"cancel,omitempty"`
	Resolve *resolveRequest `json:"resolve,omitempty"`
}

type cancelRequest struct {
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

type resolveRequest struct {
	State  State     `json:"state,omitempty"`
	Job    string    `json:"job,omitempty"`
	Reason string    `json:"reason"`
	At     time.Time `json:"at"`
}

// maxHistory bounds a run's history; the oldest entries after the first few
// are dropped.
const maxHistory = 100

// lastReason is the reason of the latest history entry.
func (r *record) lastReason() string {
	if len(r.History) == 0 {
		return ""
	}
	return r.History[len(r.History)-1].Reason
}

var (
	// errConflict: the record changed since it was read (compare-and-set).
	errConflict = errors.New("run record changed concurrently")
	// errExists: a create found the run already recorded.
	errExists = errors.New("run already recorded")
	// errNoChange from an update function: nothing to write.
	errNoChange = errors.New("no change")
	// errCorrupt: a stored record cannot be decoded (reading it again
	// cannot help).
	errCorrupt = errors.New("the stored record cannot be decoded")
)

// ledger is the run table in a JetStream KV bucket. Every write is a
// compare-and-set on the key's revision, so two writers (workers, replicas,
// the API) can never both make the same transition.
//
// Retention: a finished run is written with a per-message TTL (Nats-TTL) of
// Retention; a run that is not finished is written without one, and since
// the bucket keeps one revision per key, each write replaces the TTL of the
// one before. So finished runs expire Retention after their last write and
// live runs never do, however long they wait or run. (The KV API's Update
// takes no TTL, hence the direct publish with the expected-last-sequence
// header, which is exactly what Update sends.)
type ledger struct {
	js        jetstream.JetStream
	kv        jetstream.KeyValue
	retention time.Duration
	// retentionOf, when set, gives a pipeline's own retention (0: the
	// default).
	retentionOf func(pipeline string) time.Duration
	// leaderReads: the bucket is replicated, so reads go to the stream
	// leader (see get).
	leaderReads bool
	// reads counts get calls (tests: what a look at a job costs).
	reads atomic.Int64
}

// ttl is how long r stays after it finished.
func (l *ledger) ttl(r *record) time.Duration { return l.ttlOf(r.Pipeline) }

// ttlOf is how long a finished run of pipeline stays.
func (l *ledger) ttlOf(pipeline string) time.Duration {
	if l.retentionOf != nil {
		if d := l.retentionOf(pipeline); d > 0 {
			return d
		}
	}
	return l.retention
}

func (l *ledger) subject(id string) string { return "$KV." + BucketRuns + "." + id }

// get returns the run and its revision, or ErrRunNotFound.
//
// It sees every write acknowledged before it (read-your-writes, also
// across replicas), because steps act on what they read without writing:
// a tracker message that finds no run, or the run carried by the other
// stream, is settled without acting, and a POST's answer that finds the
// run no longer submitting is dropped. On a replicated bucket a KV get is
// a direct get, which any replica answers, and a follower that has not yet
// applied the latest writes (one catching up after a restart, say) answers
// with an older revision or none: a run would lose its tracker message and
// stay submitted for ever, or its job name (TestLedgerReadsItsWritesOnCluster).
// So on a replicated bucket get asks the stream leader, through
// JetStream's message get API. A single replica is always current, and
// keeps the cheaper direct get.
func (l *ledger) get(ctx context.Context, id string) (*record, uint64, error) {
	if !validRunID(id) {
		return nil, 0, ErrRunNotFound
	}
	l.reads.Add(1)
	val, rev, err := kvGet(ctx, l.js, l.kv, id, l.leaderReads)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return nil, 0, ErrRunNotFound
		}
		return nil, 0, fmt.Errorf("ledger get %s: %w", id, err)
	}
	var r record
	if err := json.Unmarshal(val, &r); err != nil {
		return nil, 0, fmt.Errorf("ledger get %s: %w: %w", id, errCorrupt, err)
	}
	return &r, rev, nil
}

// kvGet reads key from kv: from the bucket stream's leader when leader is
// set (see ledger.get), else with the KV API's direct get.
func kvGet(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, key string, leader bool) ([]byte, uint64, error) {
	if leader {
		bucket := kv.Bucket()
		return leaderGet(ctx, js, "KV_"+bucket, "$KV."+bucket+"."+key)
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		return nil, 0, err
	}
	return e.Value(), e.Revision(), nil
}

// leaderGet reads the last message on subject of a KV bucket's stream from
// the stream's leader ($JS.API.STREAM.MSG.GET, which only the leader
// answers), with the KV API's meaning: jetstream.ErrKeyNotFound when there
// is none, jetstream.ErrKeyDeleted when it is a delete, purge or expiry
// marker.
func leaderGet(ctx context.Context, js jetstream.JetStream, stream, subject string) ([]byte, uint64, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	req, err := json.Marshal(struct {
		LastBySubject string `json:"last_by_subj"`
	}{subject})
	if err != nil {
		return nil, 0, err
	}
	prefix := js.Options().APIPrefix
	if prefix == "" {
		prefix = jetstream.DefaultAPIPrefix
	}
	msg, err := js.Conn().RequestWithContext(ctx, prefix+"STREAM.MSG.GET."+stream, req)
	if err != nil {
		return nil, 0, err
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error"`
		Message *struct {
			Seq     uint64 `json:"seq"`
			Headers []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, 0, fmt.Errorf("message get: decode: %w", err)
	}
	if e := resp.Error; e != nil {
		if e.ErrCode == int(jetstream.JSErrCodeMessageNotFound) {
			return nil, 0, jetstream.ErrKeyNotFound
		}
		return nil, 0, fmt.Errorf("message get: %s (%d, %d)", e.Description, e.Code, e.ErrCode)
	}
	m := resp.Message
	if m == nil {
		return nil, 0, jetstream.ErrInvalidJetStreamResponse
	}
	if len(m.Headers) > 0 {
		h, err := nats.DecodeHeadersMsg(m.Headers)
		if err != nil {
			return nil, 0, fmt.Errorf("message get: headers: %w", err)
		}
		if h.Get("KV-Operation") != "" || h.Get(jetstream.MarkerReasonHeader) != "" {
			return nil, m.Seq, jetstream.ErrKeyDeleted
		}
	}
	return m.Data, m.Seq, nil
}

// create records a new run; errExists if the id is taken.
func (l *ledger) create(ctx context.Context, r *record) (uint64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("ledger create %s: %w", r.ID, err)
	}
	var opts []jetstream.KVCreateOpt
	if r.State.Terminal() {
		opts = append(opts, jetstream.KeyTTL(l.ttl(r)))
	}
	rev, err := l.kv.Create(ctx, r.ID, b, opts...)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, errExists
		}
		return 0, fmt.Errorf("ledger create %s: %w", r.ID, err)
	}
	return rev, nil
}

// put writes r if the stored revision is still rev; errConflict otherwise.
func (l *ledger) put(ctx context.Context, r *record, rev uint64) (uint64, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return 0, fmt.Errorf("ledger put %s: %w", r.ID, err)
	}
	m := nats.NewMsg(l.subject(r.ID))
	m.Data = b
	opts := []jetstream.PublishOpt{jetstream.WithExpectLastSequencePerSubject(rev)}
	if r.State.Terminal() {
		opts = append(opts, jetstream.WithMsgTTL(l.ttl(r)))
	}
	ack, err := l.js.PublishMsg(ctx, m, opts...)
	if err != nil {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
			return 0, errConflict
		}
		return 0, fmt.Errorf("ledger put %s: %w", r.ID, err)
	}
	return ack.Sequence, nil
}

// update applies fn to the current record and writes the result, reading
// again and re-applying fn after a concurrent change. fn returns errNoChange
// to write nothing, or any other error to stop; it must decide from the
// record it is given alone (it may run several times). update returns the
// record as stored afterwards.
func (l *ledger) update(ctx context.Context, id string, fn func(r *record) error) (*record, uint64, error) {
	for i := 0; ; i++ {
		r, rev, err := l.get(ctx, id)
		if err != nil {
			return nil, 0, err
		}
		if err := fn(r); err != nil {
			if errors.Is(err, errNoChange) {
				return r, rev, nil
			}
			return r, rev, err
		}
		rev, err = l.put(ctx, r, rev)
		if err == nil {
			return r, rev, nil
		}
		if !errors.Is(err, errConflict) || i >= 50 {
			return nil, 0, err
		}
		if err := backoff.Sleep(ctx, time.Duration(i)*time.Millisecond); err != nil {
			return nil, 0, err
		}
	}
}

// validRunID reports whether id looks like a RunID (32 lowercase hex
// digits); anything else cannot be in the ledger and must not reach a KV
// subject.
func validRunID(id string) bool {
	if len(id) != 32 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
