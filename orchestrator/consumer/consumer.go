// Package consumer is batchd's one JetStream worker loop, shared by the
// orchestrator's intake and tracker consumers and the NATS trigger. It
// pulls a durable consumer's messages, runs at most Concurrency handlers at
// once, and settles each message with its handler's verdict (ack, nak with
// a delay, term). Around that it keeps the promises every consumer needs:
//
//   - A handler's error settles its message with a back-off that grows with
//     the message's deliveries (1 s doubling to 30 s by default): the
//     message comes back. Transient errors never drop a message; losing an
//     acknowledged event is worse than retrying it.
//   - A handler that panics does not take the process down: the panic is
//     logged with its stack, OnPoison records the reason (the run, or the
//     event, says why it stopped) and the message is terminated.
//   - The poison path: an error marked with Poison (retrying cannot fix it:
//     a bug, a record that cannot be decoded) is retried at most
//     MaxFailures times in this process, then goes the same way as a panic.
//   - Iterator errors back off (RetryBase doubling to 5 s); a closed
//     iterator, or MaxIterFailures errors in a row, end Consume with
//     ErrReopen so that the caller opens the consumer again (it may have
//     gone with its stream).
//   - Two-phase stop: when the loop's context ends it fetches nothing more;
//     Drain gives handlers in flight Grace on the work context, then
//     cancels it and waits for them. Handlers get two contexts only: work
//     (survives the stop by Grace) and stop (ends with the loop's context).
package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/batchd/batchd/jobs/backoff"
)

// Kind is what happens to a message after its handler.
type Kind int

// The verdicts.
const (
	KindAck Kind = iota
	KindNak
	KindTerm
)

// Settle is a handler's verdict on its message.
type Settle struct {
	Kind  Kind
	Delay time.Duration // KindNak: redeliver after this (0: now)
	// Reason is sent with a term (TermWithReason: the server's advisory
	// carries it).
	Reason string
}

// Ack settles the message as done.
func Ack() Settle { return Settle{Kind: KindAck} }

// NakAfter hands the message back for redelivery after d.
func NakAfter(d time.Duration) Settle { return Settle{Kind: KindNak, Delay: max(d, 0)} }

// Term ends the message's deliveries, for the reason given.
func Term(reason string) Settle { return Settle{Kind: KindTerm, Reason: reason} }

// Handler handles one message. work survives the loop's context by Grace;
// stop ends with it (waits that need not finish select on it).
type Handler func(work, stop context.Context, m jetstream.Msg) (Settle, error)

// ErrReopen means Consume stopped because the consumer must be opened again.
var ErrReopen = errors.New("consumer: the message iterator closed or kept failing")

// Poison marks a handler error that retrying cannot fix. IsPoison finds
// the mark anywhere in the chain.
func Poison(err error) error {
	if err == nil {
		return nil
	}
	return &poisonError{err}
}

// IsPoison reports whether err was marked with Poison.
func IsPoison(err error) bool {
	var p *poisonError
	return errors.As(err, &p)
}

type poisonError struct{ err error }

func (e *poisonError) Error() string { return e.err.Error() }
func (e *poisonError) Unwrap() error { return e.err }

// Options configure a Loop. Zero values get the defaults named.
type Options struct {
	// Name is the loop's name in logs ("intake", "tracker", "nats trigger p").
	Name string
	// Concurrency is the number of handlers at once (default 1).
	Concurrency int
	// Pull is the number of messages the client buffers (default
	// Concurrency).
	Pull int
	// Grace is how long handlers in flight go on after the loop's context
	// ends, before their work context is canceled (default 30s).
	Grace time.Duration
	// RetryBase and RetryMax shape the delay of a failed handler's
	// message: RetryBase·2^(deliveries-1), at most RetryMax, ±20% (default
	// 1s and 30s). When stopping, a failed message is handed back at once
	// (another replica may take it).
	RetryBase, RetryMax time.Duration
	// MaxFailures is how many Poison errors one message may return in this
	// process before it goes to the poison path (default 5).
	MaxFailures int
	// MaxIterFailures is how many iterator errors in a row end Consume
	// with ErrReopen (0: never; a closed iterator always does). They back
	// off from IterBase (default 100ms) doubling to 5 s.
	MaxIterFailures int
	IterBase        time.Duration
	// OnPoison, when set, records why a message is taken out of the way
	// (a panic, or MaxFailures Poison errors) before it is terminated. It
	// runs on the work context; a panic in it is recovered and logged.
	OnPoison func(ctx context.Context, m jetstream.Msg, cause Cause, reason string)
	Logger   *slog.Logger
}

// Cause is why a message went to the poison path.
type Cause string

// The causes.
const (
	CausePanic Cause = "panic" // its handler panicked
	CauseError Cause = "error" // MaxFailures Poison errors
)

// Loop runs handlers over one consumer at a time. Its concurrency, its
// work context and its poison counts outlive each Consume, so that a
// consumer opened again shares them.
type Loop struct {
	o          Options
	sem        chan struct{}
	wg         sync.WaitGroup
	work       context.Context
	cancelWork context.CancelFunc

	mu       sync.Mutex
	failures map[uint64]int // by stream sequence
}

// maxTracked bounds the poison counts kept: beyond it they start again.
const maxTracked = 10000

// New makes a loop whose work context is derived from ctx's values (not
// its cancellation). It starts nothing.
func New(ctx context.Context, o Options) *Loop {
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Pull <= 0 {
		o.Pull = o.Concurrency
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	if o.RetryBase <= 0 {
		o.RetryBase = time.Second
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 30 * time.Second
	}
	if o.MaxFailures <= 0 {
		o.MaxFailures = 5
	}
	if o.IterBase <= 0 {
		o.IterBase = 100 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	return &Loop{o: o, sem: make(chan struct{}, o.Concurrency), work: work, cancelWork: cancel, failures: map[uint64]int{}}
}

// Consume hands cons's messages to h until ctx ends (nil) or the consumer
// must be opened again (ErrReopen). Handlers it started may still run:
// Drain waits for them.
func (l *Loop) Consume(ctx context.Context, cons jetstream.Consumer, h Handler) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(l.o.Pull))
	if err != nil {
		l.o.Logger.Warn("consumer: cannot fetch; opening again", "loop", l.o.Name, "err", err)
		if backoff.Sleep(ctx, l.o.RetryBase) != nil {
			return nil
		}
		return ErrReopen
	}
	defer it.Stop()
	stopIt := context.AfterFunc(ctx, it.Stop)
	defer stopIt()
	fails := 0
	for {
		select {
		case l.sem <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		msg, err := it.Next()
		if err != nil {
			<-l.sem
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return ErrReopen
			}
			fails++
			delay := backoff.Exp(fails, l.o.IterBase, max(l.o.IterBase, 5*time.Second))
			l.o.Logger.Warn("consumer: next message failed; backing off", "loop", l.o.Name, "err", err, "failures", fails, "retry_in", delay)
			if l.o.MaxIterFailures > 0 && fails >= l.o.MaxIterFailures {
				return ErrReopen
			}
			if backoff.Sleep(ctx, delay) != nil {
				return nil
			}
			continue
		}
		fails = 0
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			defer func() { <-l.sem }()
			l.handle(ctx, msg, h)
		}()
	}
}

// Drain waits for the handlers in flight: Grace on their work context,
// then it cancels that context and waits for them to return.
func (l *Loop) Drain() {
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	grace := time.NewTimer(l.o.Grace)
	defer grace.Stop()
	select {
	case <-done:
	case <-grace.C:
		l.o.Logger.Warn("shutdown grace over; canceling the steps in flight (their messages come back)", "loop", l.o.Name)
		l.cancelWork()
		<-done
	}
	l.cancelWork()
}

// handle runs h on m and settles m.
func (l *Loop) handle(stop context.Context, m jetstream.Msg, h Handler) {
	s, panicked, err := l.run(stop, m, h)
	seq, n := uint64(0), uint64(1)
	if md, mdErr := m.Metadata(); mdErr == nil {
		seq, n = md.Sequence.Stream, md.NumDelivered
	}
	switch {
	case panicked != "":
		l.poison(m, seq, CausePanic, panicked)
		return
	case err != nil && IsPoison(err) && l.failed(seq) >= l.o.MaxFailures:
		l.poison(m, seq, CauseError, fmt.Sprintf("failed %d times with an error retrying cannot fix: %v", l.o.MaxFailures, err))
		return
	case err != nil:
		d := backoff.Delay(int(n), l.o.RetryBase, l.o.RetryMax)
		if stop.Err() != nil {
			d = 0 // stopping: another replica may have it now
		}
		level := slog.LevelWarn
		if IsPoison(err) {
			level = slog.LevelError
		}
		l.o.Logger.Log(stop, level, "step failed; will retry", "loop", l.o.Name, "subject", m.Subject(), "retry_in", d, "err", err)
		s = NakAfter(d)
	default:
		l.forget(seq)
	}
	if err := settle(m, s); err != nil {
		l.o.Logger.Debug("settle message", "loop", l.o.Name, "subject", m.Subject(), "err", err)
	}
}

// run calls h, turning a panic into its reason.
func (l *Loop) run(stop context.Context, m jetstream.Msg, h Handler) (s Settle, panicked string, err error) {
	defer func() {
		if r := recover(); r != nil {
			panicked = fmt.Sprintf("batchd panicked handling this message: %v", r)
			l.o.Logger.Error("handler panicked; the message is taken out of the way", "loop", l.o.Name,
				"subject", m.Subject(), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	s, err = h(l.work, stop, m)
	return s, "", err
}

// poison records why m is taken out of the way and terminates it.
func (l *Loop) poison(m jetstream.Msg, seq uint64, cause Cause, reason string) {
	l.forget(seq)
	if l.o.OnPoison != nil {
		func() {
			defer func() {
				if r := recover(); r != nil {
					l.o.Logger.Error("recording a poisoned message panicked", "loop", l.o.Name, "subject", m.Subject(), "panic", fmt.Sprint(r))
				}
			}()
			l.o.OnPoison(l.work, m, cause, reason)
		}()
	}
	if err := settle(m, Term(reason)); err != nil {
		l.o.Logger.Warn("terminate a poisoned message", "loop", l.o.Name, "subject", m.Subject(), "err", err)
	}
}

func (l *Loop) failed(seq uint64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.failures) >= maxTracked {
		clear(l.failures)
	}
	l.failures[seq]++
	return l.failures[seq]
}

func (l *Loop) forget(seq uint64) {
	l.mu.Lock()
	delete(l.failures, seq)
	l.mu.Unlock()
}

// settle sends the verdict to the server.
func settle(m jetstream.Msg, s Settle) error {
	switch s.Kind {
	case KindAck:
		return m.Ack()
	case KindNak:
		if s.Delay > 0 {
			return m.NakWithDelay(s.Delay)
		}
		return m.Nak()
	case KindTerm:
		if s.Reason != "" {
			return m.TermWithReason(truncate(s.Reason, 256))
		}
		return m.Term()
	}
	return fmt.Errorf("consumer: unknown settle kind %d", s.Kind)
}

// truncate cuts s to at most n bytes, never inside a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "")
}
