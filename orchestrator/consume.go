package orchestrator

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs/backoff"
)

// settleKind is what happens to a message after a step.
type settleKind int

const (
	settleAck settleKind = iota
	settleNak
	settleTerm
)

// settle is a step's verdict on its message.
type settle struct {
	kind  settleKind
	delay time.Duration
}

func ack() settle                     { return settle{kind: settleAck} }
func nakAfter(d time.Duration) settle { return settle{kind: settleNak, delay: max(d, 0)} }

// consume hands the consumer's messages to up to n handlers at once until
// ctx ends. Then it stops fetching (messages still buffered in the client
// are redelivered after AckWait) and waits for the handlers: they run on a
// context that survives ctx by ShutdownGrace; after the grace that context
// is canceled too, except for a POST (or scoring request) in flight, which
// always gets its submit timeout and the recording of its answer.
func (o *Orchestrator) consume(ctx context.Context, cons jetstream.Consumer, n int, carrier string) error {
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg sync.WaitGroup
	sem := make(chan struct{}, n)

	var it jetstream.MessagesContext
	defer func() {
		if it != nil {
			it.Stop()
		}
	}()
loop:
	for {
		if it == nil {
			var err error
			it, err = cons.Messages(jetstream.PullMaxMessages(n))
			if err != nil {
				it = nil
				o.log.Warn("consumer: cannot fetch; retrying", "carrier", carrier, "err", err)
				if sleepCtx(ctx, time.Second) != nil {
					break loop
				}
				continue
			}
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			break loop
		}
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			<-sem
			if ctx.Err() != nil {
				break loop
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				it = nil
			} else {
				o.log.Debug("consumer: next", "carrier", carrier, "err", err)
			}
			if sleepCtx(ctx, 100*time.Millisecond) != nil {
				break loop
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			o.handle(work, ctx, carrier, msg)
		}()
	}
	if it != nil {
		it.Stop()
		it = nil
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	grace := time.NewTimer(o.opts.ShutdownGrace)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		o.log.Warn("shutdown grace over; abandoning steps in flight (they resume on the next start) except POSTs, which finish and record their answers", "carrier", carrier)
		cancelWork()
		<-done
	}
	return nil
}

// handle runs one message through the state machine and settles it.
// ctx is the work context (survives shutdown by the grace period); stop ends
// at shutdown and bounds waits that need not finish.
func (o *Orchestrator) handle(ctx, stop context.Context, carrier string, m jetstream.Msg) {
	var s settle
	var err error
	if carrier == carrierIntake {
		s, err = o.handleIntake(ctx, stop, m)
	} else {
		s, err = o.handleTrack(ctx, stop, m)
	}
	if err != nil {
		n := uint64(1)
		if md, mdErr := m.Metadata(); mdErr == nil {
			n = md.NumDelivered
		}
		d := backoff.Delay(int(n), time.Second, 30*time.Second)
		if stop.Err() != nil {
			d = 0 // shutting down: let another replica have it now
		}
		var me *MoveError
		if errors.As(err, &me) {
			// A bug in batchd: nothing was written, the run stays as it was.
			o.log.Error("the state graph refused a step's move; will retry", "carrier", carrier, "subject", m.Subject(), "retry_in", d, "err", err)
		} else {
			o.log.Warn("step failed; will retry", "carrier", carrier, "subject", m.Subject(), "retry_in", d, "err", err)
		}
		s = nakAfter(d)
	}
	switch s.kind {
	case settleAck:
		err = m.Ack()
	case settleNak:
		if s.delay > 0 {
			err = m.NakWithDelay(s.delay)
		} else {
			err = m.Nak()
		}
	case settleTerm:
		err = m.Term()
	}
	if err != nil {
		o.log.Debug("settle message", "carrier", carrier, "subject", m.Subject(), "err", err)
	}
}
