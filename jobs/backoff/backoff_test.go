package backoff

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestExp(t *testing.T) {
	t.Parallel()
	tests := []struct {
		n           int
		base, limit time.Duration
		want        time.Duration
	}{
		{0, time.Second, time.Minute, time.Second},
		{1, time.Second, time.Minute, time.Second},
		{2, time.Second, time.Minute, 2 * time.Second},
		{6, time.Second, time.Minute, 32 * time.Second},
		{7, time.Second, time.Minute, time.Minute},
		{1 << 20, time.Second, time.Minute, time.Minute}, // no overflow
		{3, time.Minute, 6 * time.Hour, 4 * time.Minute},
		{2, 10 * time.Second, 5 * time.Second, 5 * time.Second}, // base above the limit
	}
	for _, tt := range tests {
		if got := Exp(tt.n, tt.base, tt.limit); got != tt.want {
			t.Errorf("Exp(%d, %s, %s) = %s, want %s", tt.n, tt.base, tt.limit, got, tt.want)
		}
	}
}

func TestJitterStaysInItsBand(t *testing.T) {
	t.Parallel()
	seen := map[time.Duration]bool{}
	for range 1000 {
		d := Delay(3, time.Second, time.Minute) // 4 s ± 20%
		if d < 3200*time.Millisecond || d >= 4800*time.Millisecond {
			t.Fatalf("Delay = %s, want within [3.2s, 4.8s)", d)
		}
		seen[d] = true
	}
	if len(seen) < 100 {
		t.Errorf("only %d distinct delays in 1000: no jitter", len(seen))
	}
	if Jitter(0, 0.5) != 0 || Jitter(-time.Second, 0.5) != -time.Second {
		t.Error("Jitter changes a wait of zero or less")
	}
}

func TestSleep(t *testing.T) {
	t.Parallel()
	if err := Sleep(t.Context(), 0); err != nil {
		t.Errorf("Sleep(0) = %v, want nil", err)
	}
	if err := Sleep(t.Context(), time.Millisecond); err != nil {
		t.Errorf("Sleep(1ms) = %v, want nil", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	if err := Sleep(ctx, time.Hour); !errors.Is(err, context.Canceled) {
		t.Errorf("Sleep on a canceled context = %v, want context.Canceled", err)
	}
	if time.Since(start) > time.Minute {
		t.Error("Sleep on a canceled context waited")
	}
}
