package orchestrator

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/orchestrator/consumer"
)

// settle is a step's verdict on its message.
type settle = consumer.Settle

func ack() settle                     { return consumer.Ack() }
func nakAfter(d time.Duration) settle { return consumer.NakAfter(d) }

// consume runs one worker loop (orchestrator/consumer) over the consumer
// until ctx ends: up to n steps at once, each message settled with its
// step's verdict. At shutdown it stops fetching (messages still buffered in
// the client are redelivered after AckWait) and gives the steps in flight
// ShutdownGrace on their work context; then that context is canceled too,
// except for a POST (or scoring request) in flight, which always gets its
// submit timeout and the recording of its answer (submit runs it on a
// context without cancel).
func (o *Orchestrator) consume(ctx context.Context, cons jetstream.Consumer, n int, carrier string) error {
	h := o.handleTrack
	if carrier == carrierIntake {
		h = o.handleIntake
	}
	l := consumer.New(ctx, consumer.Options{
		Name: carrier, Concurrency: n, Grace: o.opts.ShutdownGrace, Logger: o.log,
		OnPoison: func(ctx context.Context, m jetstream.Msg, cause consumer.Cause, reason string) {
			o.met.poisoned.WithLabelValues(carrier, string(cause)).Inc()
			o.poisoned(ctx, carrier, m, reason)
		},
	})
	step := func(work, stop context.Context, m jetstream.Msg) (settle, error) {
		s, err := h(work, stop, m)
		var me *MoveError
		if errors.As(err, &me) || errors.Is(err, errCorrupt) {
			err = consumer.Poison(err) // a bug or a broken record: retrying cannot fix it
		}
		return s, err
	}
	for ctx.Err() == nil {
		if err := l.Consume(ctx, cons, step); err != nil && !errors.Is(err, consumer.ErrReopen) {
			o.log.Warn("consumer stopped; opening it again", "carrier", carrier, "err", err)
		}
	}
	l.Drain()
	return nil
}

// poisoned records why a message was taken out of the way (a panic, or an
// error retrying cannot fix): the run ends failed with the reason, or, for
// an event that has no run yet, is recorded rejected. Nothing is silent.
func (o *Orchestrator) poisoned(ctx context.Context, carrier string, m jetstream.Msg, reason string) {
	var ev Event
	id := strings.TrimPrefix(m.Subject(), SubjectTrack+".")
	if carrier == carrierIntake {
		if err := json.Unmarshal(m.Data(), &ev); err != nil || ev.Key == "" {
			o.log.Error("poisoned intake message cannot be decoded; terminated", "subject", m.Subject(), "reason", reason)
			return
		}
		id = RunID(ev.Pipeline, ev.Key)
	}
	why := reason + "; batchd stopped working on this run: check for its job in Azure ML, then `batchd runs retry` or `batchd runs resolve` it"
	r, rev, err := o.ledger.get(ctx, id)
	switch {
	case errors.Is(err, ErrRunNotFound) && carrier == carrierIntake:
		if _, err := o.Record(ctx, ev, StateRejected, "batchd could not process this event: "+reason); err != nil {
			o.log.Error("record a poisoned event", "run", id, "reason", reason, "err", err)
		}
	case err != nil:
		o.log.Error("poisoned message: its run cannot be read; terminated", "run", id, "reason", reason, "err", err)
	case r.State.Terminal():
	default:
		if _, err := o.finish(ctx, r, rev, StateFailed, why, reason); err != nil {
			o.log.Error("record a poisoned run", "run", id, "reason", reason, "err", err)
		}
	}
}
