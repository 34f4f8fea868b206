package online

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Refresh rules for cached credentials. They are the one place that decides
// when a token is fetched again, and read the clock only through time.Now,
// so a test can drive them with fake time (testing/synctest).
const (
	// refreshMargin: a credential is refreshed this long before it
	// expires, or at refreshFraction of its lifetime, whichever comes
	// first, or at the service's suggestion (refreshAfterTimeUtc,
	// AccessToken.RefreshOn) when that is earlier still.
	refreshMargin   = 5 * time.Minute
	refreshFraction = 0.8
	// expirySkew: a credential this close to its expiry is not sent any
	// more, even when a refresh failed (it could expire in flight, or on a
	// server whose clock runs ahead).
	expirySkew = 30 * time.Second
)

// refreshTime is when a credential fetched at now and valid until expires
// is fetched again: the earliest of refreshMargin before expiry,
// refreshFraction of its life, and suggested (when still ahead). A zero
// expires never refreshes on time (keys).
func refreshTime(now, expires, suggested time.Time) time.Time {
	if expires.IsZero() {
		return time.Time{}
	}
	life := expires.Sub(now)
	at := expires.Add(-refreshMargin)
	if early := now.Add(time.Duration(float64(life) * refreshFraction)); early.Before(at) {
		at = early
	}
	if !suggested.IsZero() && suggested.After(now) && suggested.Before(at) {
		at = suggested
	}
	return at
}

// secret is one cached credential: a token (value) or an endpoint's keys.
// It is never logged or encoded.
type secret struct {
	value     string
	keys      Keys
	expires   time.Time // zero: does not expire
	refreshAt time.Time // zero: not refreshed on time
	// preferSecondary: the primary key was refused and the secondary
	// accepted since these keys were fetched.
	preferSecondary atomic.Bool
}

// fresh: no refresh is due.
func (s *secret) fresh(now time.Time) bool {
	return s.refreshAt.IsZero() || now.Before(s.refreshAt)
}

// usable: it may still be sent, refresh due or not.
func (s *secret) usable(now time.Time) bool {
	return s.expires.IsZero() || now.Before(s.expires.Add(-expirySkew))
}

// fetchFunc gets a new credential.
type fetchFunc func(ctx context.Context) (*secret, error)

// cache holds one credential per key (an endpoint and its auth mode; one
// for the Entra token all aad_token endpoints share). At most one fetch per
// key is in flight; other callers wait for it (or for their context).
type cache struct {
	mu      sync.Mutex
	entries map[string]*cacheEntry
	// onRefreshError, when set, hears about a failed refresh whose old
	// credential was still usable and was used instead.
	onRefreshError func(key string, err error)
}

type cacheEntry struct {
	sem chan struct{} // held by the fetcher
	cur *secret
}

func newCache() *cache { return &cache{entries: map[string]*cacheEntry{}} }

func (c *cache) entry(key string) *cacheEntry {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.entries[key]
	if e == nil {
		e = &cacheEntry{sem: make(chan struct{}, 1)}
		c.entries[key] = e
	}
	return e
}

func (c *cache) current(e *cacheEntry) *secret {
	c.mu.Lock()
	defer c.mu.Unlock()
	return e.cur
}

// get returns the cached credential when no refresh is due; otherwise it
// fetches one (once for all callers). A failed refresh falls back to the
// cached credential while that is still usable: a short outage of Entra or
// ARM does not stop scoring.
func (c *cache) get(ctx context.Context, key string, fetch fetchFunc) (*secret, error) {
	e := c.entry(key)
	if s := c.current(e); s != nil && s.fresh(time.Now()) && s.usable(time.Now()) {
		return s, nil
	}
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-e.sem }()
	old := c.current(e)
	if old != nil && old.fresh(time.Now()) && old.usable(time.Now()) {
		return old, nil // fetched while we waited
	}
	s, err := fetch(ctx)
	if err != nil {
		if old != nil && old.usable(time.Now()) {
			if c.onRefreshError != nil {
				c.onRefreshError(key, err)
			}
			return old, nil
		}
		return nil, err
	}
	c.mu.Lock()
	e.cur = s
	c.mu.Unlock()
	return s, nil
}

// refresh replaces stale (a credential the service refused) with a new
// one, unless another caller already did: then that one is returned. It
// never falls back to stale.
func (c *cache) refresh(ctx context.Context, key string, stale *secret, fetch fetchFunc) (*secret, error) {
	e := c.entry(key)
	select {
	case e.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-e.sem }()
	if cur := c.current(e); cur != nil && cur != stale && cur.usable(time.Now()) {
		return cur, nil
	}
	s, err := fetch(ctx)
	if err != nil {
		c.mu.Lock()
		if e.cur == stale {
			e.cur = nil // refused: never send it again
		}
		c.mu.Unlock()
		return nil, err
	}
	c.mu.Lock()
	e.cur = s
	c.mu.Unlock()
	return s, nil
}
