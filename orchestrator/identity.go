package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// identity is what batchd remembers of a finished run after its record
// leaves the ledger, until IdentityHorizon: enough to answer a redelivery
// of its event as the same run, and to say what that run did.
type identity struct {
	RunID    string    `json:"run_id"`
	Pipeline string    `json:"pipeline"`
	Key      string    `json:"key"`
	State    State     `json:"state"`
	Job      string    `json:"job,omitempty"`
	ETag     string    `json:"etag,omitempty"`
	Finished time.Time `json:"finished"`
}

// remember writes r's identity record when its full record would leave
// the ledger before IdentityHorizon (a pipeline retention shorter than
// that). Runs kept longer need none: the ledger answers for them.
func (o *Orchestrator) remember(ctx context.Context, r *record) error {
	if o.ledger.ttl(r) >= IdentityHorizon {
		return nil
	}
	id := identity{RunID: r.ID, Pipeline: r.Pipeline, Key: r.Event.Key, State: r.State, Finished: time.Now().UTC()}
	if r.Job != nil {
		id.Job = r.Job.Name
	}
	if b := r.Event.Blob; b != nil {
		id.ETag = b.ETag
	}
	data, err := json.Marshal(id)
	if err != nil {
		return err
	}
	if _, err := o.h.identity.Put(ctx, r.ID, data); err != nil {
		return fmt.Errorf("identity %s: %w", r.ID, err)
	}
	return nil
}

// forgottenDuplicate handles an intake message for a run the ledger no
// longer has: if its identity is remembered, the event is a redelivery of
// a run that already ended, recorded as a duplicate with what that run did
// and acked (done). Otherwise the caller makes the run.
func (o *Orchestrator) forgottenDuplicate(ctx context.Context, d *delivery) (settle, bool, error) {
	// A leader read on a cluster: a node catching up after a restart may
	// not have the identity yet, and a miss here submits the event again.
	val, _, err := kvGet(ctx, o.js, o.h.identity, d.id, o.opts.Replicas > 1)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return settle{}, false, nil
	}
	if err != nil {
		return settle{}, false, fmt.Errorf("identity %s: %w", d.id, err)
	}
	var id identity
	if err := json.Unmarshal(val, &id); err != nil {
		return settle{}, false, fmt.Errorf("identity %s: decode: %w", d.id, err)
	}
	now := time.Now().UTC()
	r := newRecord(*d.ev, now)
	what := string(id.State)
	if id.Job != "" {
		what += ", job " + id.Job
	}
	r.Duplicates = 1
	reason := fmt.Sprintf("this event already ran as this run (%s, finished %s); its full record has expired (the pipeline's retention), "+
		"but the same key stays the same run for %s: not submitted again", what, id.Finished.Format(time.RFC3339), IdentityHorizon)
	if err := r.toFinished(StateDuplicate, reason, "", now); err != nil {
		return settle{}, false, err
	}
	if _, err := o.ledger.create(ctx, r); err != nil && !errors.Is(err, errExists) {
		return settle{}, false, err
	}
	o.met.events.WithLabelValues(d.ev.Source, "duplicate").Inc()
	o.logRun(r)
	return ack(), true, nil
}
