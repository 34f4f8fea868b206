package online

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

func TestRefreshTime(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		life      time.Duration
		suggested time.Duration // from now; 0: none
		want      time.Duration // from now
	}{
		{"an hour: at 80%, earlier than five minutes before expiry", time.Hour, 0, 48 * time.Minute},
		{"a day: at 80%", 24 * time.Hour, 0, 24 * time.Hour * 8 / 10},
		{"ten minutes: five minutes before expiry, earlier than 80%", 10 * time.Minute, 0, 5 * time.Minute},
		{"the service's suggestion when earlier", time.Hour, 30 * time.Minute, 30 * time.Minute},
		{"a suggestion after both is ignored", time.Hour, 55 * time.Minute, 48 * time.Minute},
		{"a suggestion in the past is ignored", time.Hour, -time.Minute, 48 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sug time.Time
			if tt.suggested != 0 {
				sug = now.Add(tt.suggested)
			}
			if got := refreshTime(now, now.Add(tt.life), sug).Sub(now); got != tt.want {
				t.Errorf("refresh after %s, want %s", got, tt.want)
			}
		})
	}
	if !refreshTime(now, time.Time{}, time.Time{}).IsZero() {
		t.Errorf("a credential without expiry gets a refresh time")
	}
}

// The cache's time logic on fake time: a fresh credential is served from
// the cache; one past its refresh point is fetched again; a failed refresh
// falls back to the old one while it is usable, and not after.
func TestCacheRefreshAndFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newCache()
		var fallbacks int
		c.onRefreshError = func(string, error) { fallbacks++ }
		fetches, fail := 0, false
		fetch := func(context.Context) (*secret, error) {
			fetches++
			if fail {
				return nil, errors.New("identity service down")
			}
			now := time.Now()
			exp := now.Add(time.Hour)
			return &secret{value: "v" + string(rune('0'+fetches)), expires: exp, refreshAt: refreshTime(now, exp, time.Time{})}, nil
		}
		get := func() (*secret, error) { return c.get(context.Background(), "k", fetch) }
		s1, err := get()
		if err != nil || s1.value != "v1" {
			t.Fatalf("first get = %v, %v", s1, err)
		}
		time.Sleep(47 * time.Minute)
		if s, _ := get(); s != s1 || fetches != 1 {
			t.Fatalf("at 47m: fetches %d, want the cached credential", fetches)
		}
		time.Sleep(2 * time.Minute) // 49m: past the refresh point (48m)
		fail = true
		if s, err := get(); err != nil || s != s1 || fallbacks != 1 {
			t.Fatalf("failed refresh at 49m = %v, %v (fallbacks %d), want the old credential", s, err, fallbacks)
		}
		time.Sleep(11 * time.Minute) // 60m: expired
		if _, err := get(); err == nil {
			t.Fatal("get after expiry with the service down succeeded, want the error")
		}
		fail = false
		if s, err := get(); err != nil || s.value == "v1" {
			t.Fatalf("get with the service back = %v, %v, want a new credential", s, err)
		}
	})
}

// refresh replaces a refused credential once for all callers that saw it.
func TestCacheRefreshReplacesOnce(t *testing.T) {
	c := newCache()
	n := 0
	fetch := func(context.Context) (*secret, error) {
		n++
		return &secret{value: "v" + string(rune('0'+n))}, nil
	}
	old, _ := c.get(context.Background(), "k", fetch)
	a, _ := c.refresh(context.Background(), "k", old, fetch)
	b, _ := c.refresh(context.Background(), "k", old, fetch)
	if a != b || a == old || n != 2 {
		t.Errorf("two refreshes of the same stale credential fetched %d times (a=%s b=%s), want one new one", n, a.value, b.value)
	}
}
