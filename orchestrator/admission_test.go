package orchestrator

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"
)

// An endpoint's admission state at MaxRunningJobsCap slots, with the
// longest ids and times, fits in one NATS message with room to spare
// (the default max_payload is 1 MiB), and the store takes it.
func TestAdmissionStateAtTheCapFitsInOneMessage(t *testing.T) {
	t.Parallel()
	s := &endpointState{Slots: map[string]time.Time{}, PausedUntil: time.Now(), PauseReason: "429 Too Many Requests: Retry-After 60 s"}
	at := time.Date(2026, 12, 5, 19, 0, 0, 123456789, time.UTC)
	for len(s.Slots) < MaxRunningJobsCap {
		b := make([]byte, 16)
		_, _ = rand.Read(b)
		s.Slots[hex.EncodeToString(b)] = at
	}
	v, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	if limit := 1 << 20; len(v) > limit*3/4 {
		t.Errorf("the state at %d slots is %d bytes, over 3/4 of NATS's default max_payload (%d)", MaxRunningJobsCap, len(v), limit)
	}
	h := newHarness(t, nil, newFakeSub())
	if err := h.o.adm.store(t.Context(), "ep", s, 0); err != nil {
		t.Errorf("storing the state at the cap: %v", err)
	}
}
