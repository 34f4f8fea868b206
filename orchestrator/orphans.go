package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs/backoff"
)

// unfinished are the states of runs that a message must drive: the intake
// message (received, waiting, submitting) or the tracker message
// (submitted, running, unknown, and online runs in submitting).
var unfinished = []State{StateReceived, StateWaiting, StateSubmitting, StateSubmitted, StateRunning, StateUnknown}

// orphanLoop scans for orphans once the run index is loaded, then every
// OrphanInterval.
func (o *Orchestrator) orphanLoop(ctx context.Context) error {
	for !o.index.isLoaded() {
		if backoff.Sleep(ctx, 50*time.Millisecond) != nil {
			return nil
		}
	}
	for {
		n, err := o.scanOrphans(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			o.log.Warn("orphan scan", "err", err)
		case n > 0:
			o.log.Warn("orphan scan drove runs that no message drove", "runs", n)
		}
		if backoff.Sleep(ctx, backoff.Jitter(o.opts.OrphanInterval, 0.2)) != nil {
			return nil
		}
	}
}

// scanOrphans finds unfinished runs, unchanged for OrphanAge, that neither
// an intake nor a tracker message drives, and drives each again. Every
// unfinished run should have a message (each step publishes the next
// carrier before it acks the current one); one without is what a JetStream
// write lost across a leader change, a purge, or a bug leaves behind, and
// nothing else would ever move it.
func (o *Orchestrator) scanOrphans(ctx context.Context) (int, error) {
	revived := 0
	now := time.Now()
	for _, st := range unfinished {
		cursor := ""
		for {
			page, err := o.index.list(ListOptions{State: st, Limit: 500, Cursor: cursor})
			if err != nil {
				return revived, err
			}
			for _, s := range page.Runs {
				if now.Sub(s.Updated) < o.opts.OrphanAge {
					continue
				}
				ok, err := o.reviveOrphan(ctx, s.ID, s.Pipeline)
				if err != nil {
					return revived, err
				}
				if ok {
					revived++
				}
			}
			if page.NextCursor == "" {
				break
			}
			cursor = page.NextCursor
		}
	}
	return revived, nil
}

// reviveOrphan drives run id (of pipeline) again if it is unfinished and
// no message drives it. A second message for a run is harmless (every
// transition is compare-and-set), so a race with a step that publishes one
// is safe.
//
// The streams are asked first: almost every run has its message, and
// reading a run loads the ledger's message block that holds it (a scan
// that read every unfinished run kept the whole ledger in memory).
func (o *Orchestrator) reviveOrphan(ctx context.Context, id, pipeline string) (bool, error) {
	if driven, err := o.driven(ctx, id, pipeline); driven || err != nil {
		return false, err
	}
	r, rev, err := o.ledger.get(ctx, id)
	if errors.Is(err, ErrRunNotFound) {
		return false, nil
	}
	if err != nil || r.State.Terminal() {
		return false, err
	}
	// A step may have moved the run (and published its message) since:
	// no message after this read, and no write since it, is an orphan.
	if driven, err := o.driven(ctx, id, r.Pipeline); driven || err != nil {
		return false, err
	}
	if _, rev2, err := o.ledger.get(ctx, id); err != nil || rev2 != rev {
		return false, err
	}
	if r.Sys.Carrier == carrierTracker {
		// A nudge has a fresh message id: the lost message's id may still
		// be in the stream's duplicate window.
		err = o.publishTracker(ctx, r, true)
	} else {
		err = o.republishIntake(ctx, r)
	}
	if err != nil {
		return false, fmt.Errorf("orphan scan: drive %s again: %w", id, err)
	}
	o.met.orphansRevived.Inc()
	o.log.Warn("orphan run driven again: no intake or tracker message drove it", "run", r.ID, "pipeline", r.Pipeline,
		"state", r.State, "carrier", r.Sys.Carrier)
	return true, nil
}

// driven reports whether run id (of pipeline) has a message in the tracker
// or the intake stream.
func (o *Orchestrator) driven(ctx context.Context, id, pipeline string) (bool, error) {
	for _, c := range []struct {
		st   jetstream.Stream
		subj string
	}{{o.h.track, trackSubject(id)}, {o.h.intake, intakeSubject(pipeline, id)}} {
		_, err := c.st.GetLastMsgForSubject(ctx, c.subj)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return false, fmt.Errorf("orphan scan %s: %w", id, err)
		}
	}
	return false, nil
}

// republishIntake publishes the run's event to the intake again, with a
// fresh message id (the original id may still be in the duplicate window):
// a first delivery that finds the run unfinished and carried by the intake
// side drives it.
func (o *Orchestrator) republishIntake(ctx context.Context, r *record) error {
	b, err := json.Marshal(r.Event)
	if err != nil {
		return err
	}
	m := nats.NewMsg(intakeSubject(r.Pipeline, r.ID))
	m.Data = b
	m.Header.Set(jetstream.MsgIDHeader, r.ID+".orphan."+strconv.FormatInt(time.Now().UnixNano(), 36))
	_, err = o.js.PublishMsg(ctx, m)
	return err
}
