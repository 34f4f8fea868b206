package cron

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseRejects(t *testing.T) {
	tests := []struct{ spec, tz, want string }{
		{"TZ=0", "", "TZ= and CRON_TZ= prefixes are not supported"},
		{"CRON_TZ=UTC", "", "TZ= and CRON_TZ= prefixes are not supported"},
		{"TZ=Europe/Amsterdam 0 6 * * *", "", "TZ= and CRON_TZ= prefixes"},
		{"cron_tz=UTC 0 6 * * *", "", "TZ= and CRON_TZ= prefixes"},
		{"0 6 * * *", "Mars/Olympus", "not an IANA time zone"},
		{"0 0 30 2 *", "", "never fires"},
		{"61 * * * *", "", "61"},
		{"", "", "required"},
		{"@every 0s", "", "at least 1s"},
		{"@every 1500ms", "", "whole number of seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.spec, func(t *testing.T) {
			_, err := Parse(tt.spec, tt.tz)
			if err == nil {
				t.Fatalf("Parse(%q, %q) = nil error, want one", tt.spec, tt.tz)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
	if _, err := Parse("TZ=0", ""); !errors.Is(err, ErrTZPrefix) {
		t.Errorf("TZ=0: error %v, want ErrTZPrefix", err)
	}
}

func TestParseAccepts(t *testing.T) {
	for _, spec := range []string{"*/5 * * * *", "30 */2 * * * *", "@hourly", "@daily", "@every 90s", "0 6 * * MON-FRI"} {
		if _, err := Parse(spec, "Europe/Amsterdam"); err != nil {
			t.Errorf("Parse(%q): %v", spec, err)
		}
	}
}

func ams(t *testing.T) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation("Europe/Amsterdam")
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// slotsBetween lists the schedule's slots in (from, to] as local clock
// strings with zone abbreviations.
func slotsBetween(t *testing.T, spec string, from, to time.Time) []string {
	t.Helper()
	s, err := Parse(spec, "Europe/Amsterdam")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	slots, _ := s.Slots(from, to, 1000)
	for _, sl := range slots {
		out = append(out, sl.In(s.Location()).Format("01-02 15:04 MST"))
	}
	return out
}

func TestScheduleDSTEuropeAmsterdam(t *testing.T) {
	loc := ams(t)
	spring := func(h, m int) time.Time { return time.Date(2026, 3, 29, h, m, 0, 0, loc) }
	tests := []struct {
		name     string
		spec     string
		from, to time.Time
		want     []string
	}{
		{"spring: nonexistent 02:30 fires once at the jump", "30 2 * * *",
			time.Date(2026, 3, 28, 0, 0, 0, 0, loc), time.Date(2026, 3, 31, 0, 0, 0, 0, loc),
			[]string{"03-28 02:30 CET", "03-29 03:00 CEST", "03-30 02:30 CEST"}},
		{"spring: every 15 minutes collapses the missing hour", "*/15 * * * *",
			spring(1, 30), spring(3, 30),
			[]string{"03-29 01:45 CET", "03-29 03:00 CEST", "03-29 03:15 CEST", "03-29 03:30 CEST"}},
		{"spring: hourly", "@hourly", spring(0, 30), spring(4, 30),
			[]string{"03-29 01:00 CET", "03-29 03:00 CEST", "03-29 04:00 CEST"}},
		{"fall: repeated 02:30 fires once, first pass", "30 2 * * *",
			time.Date(2026, 10, 24, 0, 0, 0, 0, loc), time.Date(2026, 10, 27, 0, 0, 0, 0, loc),
			[]string{"10-24 02:30 CEST", "10-25 02:30 CEST", "10-26 02:30 CET"}},
		{"fall: hourly fires in both passes", "0 * * * *",
			time.Date(2026, 10, 25, 0, 30, 0, 0, loc), time.Date(2026, 10, 25, 4, 30, 0, 0, loc),
			[]string{"10-25 01:00 CEST", "10-25 02:00 CEST", "10-25 02:00 CET", "10-25 03:00 CET", "10-25 04:00 CET"}},
		{"fall: every 30 minutes through the repeated hour", "*/30 * * * *",
			time.Date(2026, 10, 25, 1, 45, 0, 0, loc), time.Date(2026, 10, 25, 3, 0, 0, 0, loc),
			[]string{"10-25 02:00 CEST", "10-25 02:30 CEST", "10-25 02:00 CET", "10-25 02:30 CET", "10-25 03:00 CET"}},
		{"fall: daily at midnight unaffected", "@daily",
			time.Date(2026, 10, 24, 12, 0, 0, 0, loc), time.Date(2026, 10, 26, 12, 0, 0, 0, loc),
			[]string{"10-25 00:00 CEST", "10-26 00:00 CET"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := slotsBetween(t, tt.spec, tt.from, tt.to)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("slots (-want +got):\n%s", diff)
			}
		})
	}
}

func TestSchedulePrevAndEvery(t *testing.T) {
	s, _ := Parse("0 6 * * MON-FRI", "Europe/Amsterdam")
	loc := ams(t)
	mon := time.Date(2026, 6, 8, 6, 0, 0, 0, loc)
	if got, want := s.Prev(mon), time.Date(2026, 6, 5, 6, 0, 0, 0, loc); !got.Equal(want) {
		t.Errorf("Prev(Mon 06:00) = %v, want Fri 06:00 %v", got, want)
	}
	e, _ := Parse("@every 15m", "Europe/Amsterdam")
	at := time.Date(2026, 3, 29, 1, 7, 13, 0, time.UTC)
	if got, want := e.Next(at), time.Date(2026, 3, 29, 1, 15, 0, 0, time.UTC); !got.Equal(want) {
		t.Errorf("@every 15m Next = %v, want %v (aligned)", got, want)
	}
	if got := SlotKey(time.Date(2026, 3, 29, 3, 0, 0, 0, loc)); got != "slot:2026-03-29T01:00:00Z" {
		t.Errorf("SlotKey = %q", got)
	}
}
