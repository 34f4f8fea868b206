package orchestrator

import (
	"testing"
	"time"
)

// The poll meter counts the last minute, in one-second buckets: older
// buckets are forgotten, and a bucket reused a minute later starts at zero.
func TestMeterRate(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_000_000, 0)
	var m meter
	for i := range 120 {
		m.add(t0.Add(time.Duration(i) * 500 * time.Millisecond)) // 2/s for 60 s
	}
	tests := []struct {
		at   time.Duration
		want float64
	}{
		{59 * time.Second, 2},
		{89 * time.Second, 1},  // half the minute has passed since the last poll
		{120 * time.Second, 0}, // all forgotten
	}
	for _, tt := range tests {
		if got := m.rate(t0.Add(tt.at)); got != tt.want {
			t.Errorf("rate at +%s = %v, want %v", tt.at, got, tt.want)
		}
	}
	m.add(t0.Add(125 * time.Second)) // reuses bucket 5 of the first minute
	if got := m.rate(t0.Add(125 * time.Second)); got != 1.0/60 {
		t.Errorf("rate after one new poll = %v, want 1/60", got)
	}
}
