// Package kvstate is batchd's one view of a JetStream KV bucket: a narrow
// Store (get, create-if-absent with an optional per-key TTL, CAS update,
// delete, list by prefix) that maps the KV API's errors onto three
// sentinels (ErrNotFound, ErrExists, ErrConflict) in one place. It has one
// implementation over jetstream.KeyValue and one in memory for tests that
// run under testing/synctest, where no network client can be used; a
// conformance test runs the same cases against both. The triggers keep
// their state through it, and the orchestrator its admission slots.
//
// Key layout of the triggers' bucket (every key starts with the trigger
// kind and the pipeline token, see Token):
//
//	cron.<pipeline>.state            last fired slot and the buffered slot (CAS)
//	cron.<pipeline>.claim.<unix>     a replica is firing this slot (short lease)
//	cron.<pipeline>.done.<unix>      this slot was emitted (TTL: retention)
//	blob.<pipeline>.seen.<hash(url)> newest eTag/sequencer handled for one blob
//	poll.<pipeline>.lease            the replica that sweeps (lease)
//	poll.<pipeline>.cursor           the last completed sweep (informational)
//	batch.<pipeline>.lease           the replica that flushes folder batches
//	batch.<pipeline>.folder.<hash>   the open batch of one folder
package kvstate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Errors every Store returns (wrapped or not).
var (
	ErrNotFound = errors.New("kv: key not found")
	ErrExists   = errors.New("kv: key exists")
	ErrConflict = errors.New("kv: revision mismatch")
)

// Entry is one stored value.
type Entry struct {
	Value    []byte
	Revision uint64
	Created  time.Time
}

// Store is the part of a KV bucket the triggers use. Implementations are safe
// for concurrent use.
type Store interface {
	Get(ctx context.Context, key string) (Entry, error)
	// Create writes value if key holds nothing (ErrExists otherwise). A ttl
	// > 0 asks the store to drop the key after ttl; stores that cannot do
	// that keep it (it is garbage collection, never correctness).
	Create(ctx context.Context, key string, value []byte, ttl time.Duration) (uint64, error)
	// Update writes value if key's revision is still rev (ErrConflict otherwise).
	Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error)
	// Delete removes key; rev > 0 makes it conditional (ErrConflict).
	Delete(ctx context.Context, key string, rev uint64) error
	// Keys lists the keys that start with prefix (which ends with ".").
	Keys(ctx context.Context, prefix string) ([]string, error)
	// Values returns every key under prefix with its entry, in one pass.
	Values(ctx context.Context, prefix string) (map[string]Entry, error)
	// EachKey calls fn for every key under prefix, in no set order,
	// without holding them all; an error from fn stops it and is returned.
	EachKey(ctx context.Context, prefix string, fn func(key string) error) error
}

var tokenOK = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Token makes s safe as one KV key token: names of letters, digits, "-" and
// "_" are kept as they are (so keys stay readable), anything else becomes
// "h" + 24 hex digits of its SHA-256.
func Token(s string) string {
	if tokenOK.MatchString(s) {
		return s
	}
	return "h" + Hash(s)
}

// Hash is 24 hex digits of SHA-256 of s: a fixed-size key token for URLs.
func Hash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:12])
}

// ---- JetStream ----

type jsStore struct {
	kv jetstream.KeyValue

	once  sync.Once
	ttlOK bool
}

// JetStream adapts a JetStream KV bucket. Per-key TTLs are used when the
// bucket allows them (LimitMarkerTTL > 0, nats-server 2.11+), else dropped.
func JetStream(kv jetstream.KeyValue) Store { return &jsStore{kv: kv} }

func (s *jsStore) Get(ctx context.Context, key string) (Entry, error) {
	e, err := s.kv.Get(ctx, key)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
			return Entry{}, ErrNotFound
		}
		return Entry{}, fmt.Errorf("kv get %s: %w", key, err)
	}
	return Entry{Value: e.Value(), Revision: e.Revision(), Created: e.Created()}, nil
}

func (s *jsStore) Create(ctx context.Context, key string, value []byte, ttl time.Duration) (uint64, error) {
	var opts []jetstream.KVCreateOpt
	if ttl > 0 && s.ttlSupported(ctx) {
		// The server's minimum per-message TTL is one second.
		opts = append(opts, jetstream.KeyTTL(max(ttl, time.Second)))
	}
	rev, err := s.kv.Create(ctx, key, value, opts...)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return 0, ErrExists
		}
		return 0, fmt.Errorf("kv create %s: %w", key, err)
	}
	return rev, nil
}

func (s *jsStore) ttlSupported(ctx context.Context) bool {
	s.once.Do(func() {
		st, err := s.kv.Status(ctx)
		s.ttlOK = err == nil && st.LimitMarkerTTL() > 0
	})
	return s.ttlOK
}

func (s *jsStore) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	n, err := s.kv.Update(ctx, key, value, rev)
	if err != nil {
		// On R1 streams a stale update matches both errors: test the
		// mismatch first (dependencies.md §5).
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return 0, ErrConflict
		}
		return 0, fmt.Errorf("kv update %s: %w", key, err)
	}
	return n, nil
}

func (s *jsStore) Delete(ctx context.Context, key string, rev uint64) error {
	var opts []jetstream.KVDeleteOpt
	if rev > 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	if err := s.kv.Delete(ctx, key, opts...); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
			return ErrConflict
		}
		return fmt.Errorf("kv delete %s: %w", key, err)
	}
	return nil
}

func (s *jsStore) Keys(ctx context.Context, prefix string) ([]string, error) {
	l, err := s.kv.ListKeysFiltered(ctx, prefix+">")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil, nil
		}
		return nil, fmt.Errorf("kv keys %s: %w", prefix, err)
	}
	defer func() { _ = l.Stop() }()
	var keys []string
	for {
		select {
		case k, ok := <-l.Keys():
			if !ok {
				sort.Strings(keys)
				return keys, nil
			}
			keys = append(keys, k)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (s *jsStore) EachKey(ctx context.Context, prefix string, fn func(key string) error) error {
	l, err := s.kv.ListKeysFiltered(ctx, prefix+">")
	if err != nil {
		if errors.Is(err, jetstream.ErrNoKeysFound) {
			return nil
		}
		return fmt.Errorf("kv keys %s: %w", prefix, err)
	}
	defer func() { _ = l.Stop() }()
	for {
		select {
		case k, ok := <-l.Keys():
			if !ok {
				return nil
			}
			if err := fn(k); err != nil {
				return err
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (s *jsStore) Values(ctx context.Context, prefix string) (map[string]Entry, error) {
	w, err := s.kv.Watch(ctx, prefix+">", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("kv values %s: %w", prefix, err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string]Entry{}
	for {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				return out, nil
			}
			if e == nil { // all current values delivered
				return out, nil
			}
			out[e.Key()] = Entry{Value: e.Value(), Revision: e.Revision(), Created: e.Created()}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// ---- memory ----

// Memory is an in-memory Store for tests. Its TTLs follow time.Now, so under
// testing/synctest they expire on the bubble's clock.
type Memory struct {
	mu   sync.Mutex
	rev  uint64
	data map[string]memEntry
	// Fail, when set, is called before every operation; a non-nil result
	// is returned instead of doing it (fault injection).
	Fail func(op, key string) error
}

type memEntry struct {
	Entry
	expires time.Time
}

// NewMemory returns an empty Memory store.
func NewMemory() *Memory { return &Memory{data: map[string]memEntry{}} }

func (m *Memory) live(key string) (memEntry, bool) {
	e, ok := m.data[key]
	if ok && !e.expires.IsZero() && !time.Now().Before(e.expires) {
		delete(m.data, key)
		return memEntry{}, false
	}
	return e, ok
}

func (m *Memory) fail(op, key string) error {
	if m.Fail != nil {
		return m.Fail(op, key)
	}
	return nil
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, key string) (Entry, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail("get", key); err != nil {
		return Entry{}, err
	}
	e, ok := m.live(key)
	if !ok {
		return Entry{}, ErrNotFound
	}
	e.Value = append([]byte(nil), e.Value...)
	return e.Entry, nil
}

func (m *Memory) put(key string, value []byte, ttl time.Duration) uint64 {
	m.rev++
	e := memEntry{Entry: Entry{Value: append([]byte(nil), value...), Revision: m.rev, Created: time.Now()}}
	if ttl > 0 {
		e.expires = e.Created.Add(ttl)
	}
	m.data[key] = e
	return m.rev
}

// Create implements Store; a ttl > 0 expires the key.
func (m *Memory) Create(ctx context.Context, key string, value []byte, ttl time.Duration) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail("create", key); err != nil {
		return 0, err
	}
	if _, ok := m.live(key); ok {
		return 0, ErrExists
	}
	return m.put(key, value, ttl), nil
}

// Update implements Store.
func (m *Memory) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail("update", key); err != nil {
		return 0, err
	}
	e, ok := m.live(key)
	if !ok || e.Revision != rev {
		return 0, ErrConflict
	}
	// Like JetStream, an update carries no TTL.
	return m.put(key, value, 0), nil
}

// Delete implements Store.
func (m *Memory) Delete(ctx context.Context, key string, rev uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail("delete", key); err != nil {
		return err
	}
	e, ok := m.live(key)
	if rev > 0 && (!ok || e.Revision != rev) {
		return ErrConflict
	}
	delete(m.data, key)
	return nil
}

// Keys implements Store.
func (m *Memory) Keys(ctx context.Context, prefix string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.fail("keys", prefix); err != nil {
		return nil, err
	}
	var keys []string
	for k := range m.data {
		if strings.HasPrefix(k, prefix) {
			if _, ok := m.live(k); ok {
				keys = append(keys, k)
			}
		}
	}
	sort.Strings(keys)
	return keys, nil
}

// EachKey implements Store (over a snapshot of the keys).
func (m *Memory) EachKey(ctx context.Context, prefix string, fn func(key string) error) error {
	keys, err := m.Keys(ctx, prefix)
	if err != nil {
		return err
	}
	for _, k := range keys {
		if err := fn(k); err != nil {
			return err
		}
	}
	return nil
}

// Values implements Store.
func (m *Memory) Values(ctx context.Context, prefix string) (map[string]Entry, error) {
	keys, err := m.Keys(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := map[string]Entry{}
	for _, k := range keys {
		if e, err := m.Get(ctx, k); err == nil {
			out[k] = e
		}
	}
	return out, nil
}
