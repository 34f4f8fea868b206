// Package backoff is batchd's one exponential back-off: the wait before
// attempt n+1 of anything retried (a step, a POST, a scoring request, a
// NATS redelivery, stream setup), and the jitter that spreads waits so that
// replicas and runs do not retry in step.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Exp is base·2^(n-1), at most limit (n ≤ 1: base). It never overflows:
// the doubling stops at limit.
func Exp(n int, base, limit time.Duration) time.Duration {
	d := base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// Delay is Exp with ±20% jitter.
func Delay(n int, base, limit time.Duration) time.Duration {
	return Jitter(Exp(n, base, limit), 0.2)
}

// Jitter spreads d by ±f (0 ≤ f < 1): a value in [d·(1-f), d·(1+f)).
func Jitter(d time.Duration, f float64) time.Duration {
	if d <= 0 {
		return d
	}
	return time.Duration(float64(d) * (1 - f + 2*f*rand.Float64()))
}

// Sleep waits d, or less if ctx ends first (then it returns ctx's error).
// A d of zero or less returns at once.
func Sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
