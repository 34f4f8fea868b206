package blob

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/batchd/batchd/orchestrator/kvstate"
)

// seenRec is the newest version of one blob a pipeline has handled, shared
// by the webhook and the poller: the webhook uses it to drop events older
// than one already seen (data.sequencer) and the poller to skip blobs it or
// the webhook already emitted. It is an optimisation and an ordering aid;
// the orchestrator's run-id dedupe is what keeps a blob version from
// running twice.
type seenRec struct {
	ETag string `json:"etag"`
	Seq  string `json:"seq,omitempty"`
	// Filtered: this version was recorded filtered (the poller records a
	// non-matching blob once, not on every sweep).
	Filtered bool `json:"filtered,omitempty"`
	// History: the poller found this version last modified before its
	// horizon and did not run it (batchd backfill may have, since).
	History bool `json:"history,omitempty"`
	// Modified is when this version was written: the listing's Last-Modified
	// (poller) or the event's time (webhook). It orders a late event against
	// a version the poller handled, which has no sequencer.
	Modified time.Time `json:"modified,omitzero"`
	At       time.Time `json:"at"`
}

func seenPrefix(pipeline string) string { return "blob." + kvstate.Token(pipeline) + ".seen." }

func seenKey(pipeline, url string) string { return seenPrefix(pipeline) + kvstate.Hash(url) }

// seqNewer reports whether sequencer a is newer than b. Sequencers are
// fixed-width hex strings; a longer one is larger.
func seqNewer(a, b string) bool {
	if len(a) != len(b) {
		return len(a) > len(b)
	}
	return a > b
}

type seenStore struct {
	kv kvstate.Store
	// ttl > 0 drops records of blobs nobody sweeps (eventgrid-only
	// pipelines); 0 keeps them until a sweep finds the blob gone.
	ttl time.Duration
}

func (s seenStore) get(ctx context.Context, pipeline, url string) (seenRec, uint64, error) {
	e, err := s.kv.Get(ctx, seenKey(pipeline, url))
	if errors.Is(err, kvstate.ErrNotFound) {
		return seenRec{}, 0, nil
	}
	if err != nil {
		return seenRec{}, 0, err
	}
	var r seenRec
	if json.Unmarshal(e.Value, &r) != nil {
		return seenRec{}, e.Revision, nil
	}
	return r, e.Revision, nil
}

// advance stores rec unless the stored record has a newer sequencer. It is
// a CAS loop, so replicas handling events of one blob at once keep the
// newest.
func (s seenStore) advance(ctx context.Context, pipeline, url string, rec seenRec) error {
	key := seenKey(pipeline, url)
	v, _ := json.Marshal(rec)
	for range 5 {
		cur, rev, err := s.get(ctx, pipeline, url)
		if err != nil {
			return err
		}
		if rev != 0 && rec.Seq != "" && cur.Seq != "" && seqNewer(cur.Seq, rec.Seq) {
			return nil
		}
		if rev != 0 && cur.ETag == rec.ETag && cur.Seq == rec.Seq && cur.Filtered == rec.Filtered && cur.History == rec.History {
			return nil
		}
		switch {
		case rev == 0:
			_, err = s.kv.Create(ctx, key, v, s.ttl)
		case s.ttl > 0:
			// An update would drop the key's TTL; replace it instead. A
			// concurrent writer makes the delete or the create fail, and
			// the loop reads again.
			if err = s.kv.Delete(ctx, key, rev); err == nil {
				_, err = s.kv.Create(ctx, key, v, s.ttl)
			}
		default:
			_, err = s.kv.Update(ctx, key, v, rev)
		}
		if errors.Is(err, kvstate.ErrExists) || errors.Is(err, kvstate.ErrConflict) {
			continue
		}
		return err
	}
	return errors.New("seen record: too much contention")
}
