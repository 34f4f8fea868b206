package kvstate

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"
)

// Lease is a lock that one replica holds at a time, kept under one key:
// {"holder": id, "until": time}. The holder renews it (CAS update) well
// before until; a replica that dies stops renewing, and once until has
// passed any other replica takes it over with a CAS update on the revision
// it read, so exactly one of several contenders wins. A lease never depends
// on the bucket's per-key TTL (that only removes abandoned keys); it does
// depend on the replicas' clocks agreeing to well within the TTL (run NTP).
//
// A Lease is used by one goroutine.
type Lease struct {
	store  Store
	key    string
	holder string
	ttl    time.Duration
	// until is when the lease written by this holder's last successful
	// Acquire lapses (zero before one). One goroutine uses a Lease.
	until time.Time
}

type leaseValue struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

// NewLease returns a lease on key for holder with the given time to live.
func NewLease(store Store, key, holder string, ttl time.Duration) *Lease {
	return &Lease{store: store, key: key, holder: holder, ttl: ttl}
}

// TTL is the lease's time to live.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Holder is this lease's holder id.
func (l *Lease) Holder() string { return l.holder }

// Acquire takes the lease, or renews it when this holder has it. It reports
// whether this holder holds it until at least now + ttl.
func (l *Lease) Acquire(ctx context.Context) (bool, error) {
	for range 3 {
		now := time.Now()
		v, _ := json.Marshal(leaseValue{Holder: l.holder, Until: now.Add(l.ttl)})
		e, err := l.store.Get(ctx, l.key)
		switch {
		case errors.Is(err, ErrNotFound):
			// The key TTL only cleans up after a holder that never renewed.
			_, err := l.store.Create(ctx, l.key, v, 2*l.ttl)
			if errors.Is(err, ErrExists) {
				continue
			}
			if err == nil {
				l.until = now.Add(l.ttl)
			}
			return err == nil, err
		case err != nil:
			return false, fmt.Errorf("lease %s: %w", l.key, err)
		}
		var cur leaseValue
		if json.Unmarshal(e.Value, &cur) != nil {
			cur = leaseValue{} // unreadable: treat as expired
		}
		if cur.Holder != l.holder && now.Before(cur.Until) {
			return false, nil
		}
		_, err = l.store.Update(ctx, l.key, v, e.Revision)
		if errors.Is(err, ErrConflict) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("lease %s: %w", l.key, err)
		}
		l.until = now.Add(l.ttl)
		return true, nil
	}
	return false, nil
}

// HeldUntil is when the lease this holder last took or renewed lapses: a
// holder whose renewal failed still holds it until then, and must stop
// acting on it afterwards, as another holder may have taken it.
func (l *Lease) HeldUntil() time.Time { return l.until }

// Release gives the lease up if this holder has it, so that another replica
// need not wait for it to expire.
func (l *Lease) Release(ctx context.Context) error {
	e, err := l.store.Get(ctx, l.key)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	var cur leaseValue
	if json.Unmarshal(e.Value, &cur) == nil && cur.Holder == l.holder {
		if err := l.store.Delete(ctx, l.key, e.Revision); err != nil && !errors.Is(err, ErrConflict) {
			return err
		}
	}
	return nil
}

// NewHolderID is a replica id: the host name and 8 random hex digits.
func NewHolderID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "batchd"
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return Token(host) + "-" + hex.EncodeToString(b)
}
