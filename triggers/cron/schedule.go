package cron

import (
	"errors"
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // time_zone must work on hosts without zoneinfo

	robfig "github.com/robfig/cron/v3"
)

// Schedule is a parsed cron schedule in a time zone.
//
// # Daylight saving time
//
// batchd evaluates a schedule on the wall clock of its time_zone, and
// differs from robfig/cron (which skips and doubles slots) on the two
// transition days:
//
//   - Spring forward (e.g. Europe/Amsterdam, last Sunday of March, 02:00
//     CET → 03:00 CEST): a slot whose wall time does not exist that day
//     (02:30) fires once, at the moment the clocks jump (03:00 CEST).
//     Several such slots (*/15 in the 02:00 hour) collapse into that one
//     firing. No daily job is lost.
//   - Fall back (last Sunday of October, 03:00 CEST → 02:00 CET): a slot
//     whose wall time occurs twice (02:30) fires once, at its first
//     occurrence (02:30 CEST), unless the schedule's hour field is "*"
//     (@hourly, "*/15 * * * *"), which fires in both passes because those
//     are two distinct hours of elapsed time.
//   - "@every <d>" ignores the wall clock: it fires at the multiples of d
//     counted from 0001-01-01 00:00 UTC (for intervals that divide a day:
//     aligned on the UTC day), the same instants on every replica.
//
// A slot's identity (the run's key) is its instant in UTC, so the two
// passes of a fall-back hour are two different slots.
type Schedule struct {
	spec     robfig.Schedule
	loc      *time.Location
	every    time.Duration
	hourStar bool
}

var parser = robfig.NewParser(robfig.SecondOptional | robfig.Minute | robfig.Hour | robfig.Dom | robfig.Month | robfig.Dow | robfig.Descriptor)

// ErrTZPrefix is returned for schedules with a TZ= or CRON_TZ= prefix
// (robfig/cron panics on some of them, and time_zone says it better).
var ErrTZPrefix = errors.New("TZ= and CRON_TZ= prefixes are not supported; set time_zone instead")

// Parse parses a schedule: 5 fields, 6 with seconds first, or a descriptor
// (@yearly, @monthly, @weekly, @daily, @hourly, @every <duration>), in the
// IANA zone tz ("" is UTC).
func Parse(spec, tz string) (s *Schedule, err error) {
	spec = strings.TrimSpace(spec)
	if spec == "" {
		return nil, errors.New("schedule: required")
	}
	up := strings.ToUpper(spec)
	if strings.HasPrefix(up, "TZ=") || strings.HasPrefix(up, "CRON_TZ=") {
		return nil, fmt.Errorf("schedule %q: %w", spec, ErrTZPrefix)
	}
	if rest, ok := strings.CutPrefix(spec, "@every "); ok {
		d, err := time.ParseDuration(strings.TrimSpace(rest))
		if err != nil || d < time.Second || d%time.Second != 0 {
			return nil, fmt.Errorf("schedule %q: @every takes a whole number of seconds, at least 1s", spec)
		}
	}
	loc := time.UTC
	if tz != "" {
		if loc, err = time.LoadLocation(tz); err != nil {
			return nil, fmt.Errorf("time_zone %q: not an IANA time zone name (e.g. Europe/Amsterdam)", tz)
		}
	}
	defer func() {
		// robfig/cron is unmaintained and has panicked on odd input before.
		if r := recover(); r != nil {
			s, err = nil, fmt.Errorf("schedule %q: cannot be parsed", spec)
		}
	}()
	sched, err := parser.Parse(spec)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: %w", spec, err)
	}
	s = &Schedule{spec: sched, loc: loc}
	switch c := sched.(type) {
	case robfig.ConstantDelaySchedule:
		s.every = c.Delay
	case *robfig.SpecSchedule:
		const all = 1<<24 - 1
		s.hourStar = c.Hour&all == all
	}
	if s.Next(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)).IsZero() {
		return nil, fmt.Errorf("schedule %q: never fires", spec)
	}
	return s, nil
}

// Location is the schedule's time zone.
func (s *Schedule) Location() *time.Location { return s.loc }

// wall is t's wall clock in loc as a UTC time (a zone with no transitions).
func wall(t time.Time, loc *time.Location) time.Time {
	t = t.In(loc)
	y, mo, d := t.Date()
	h, mi, se := t.Clock()
	return time.Date(y, mo, d, h, mi, se, t.Nanosecond(), time.UTC)
}

// lookback is more than any zone's DST shift.
const lookback = 3 * time.Hour

// Next returns the first slot strictly after after, or the zero time if
// the schedule never fires again.
func (s *Schedule) Next(after time.Time) time.Time {
	if s.every > 0 {
		return after.UTC().Truncate(s.every).Add(s.every)
	}
	// Fast path: no zone transition near after and the answer.
	local := after.In(s.loc)
	if start, end := local.ZoneBounds(); start.IsZero() || after.Sub(start) > lookback {
		if r := s.spec.Next(local); !r.IsZero() && (end.IsZero() || r.Before(end)) {
			return r
		}
	}
	wa := wall(after, s.loc)
	var best time.Time
	w := s.spec.Next(wa.Add(-lookback))
	for i := 0; i < 1_000_000 && !w.IsZero(); i++ {
		for _, inst := range s.instants(w) {
			if inst.After(after) && (best.IsZero() || inst.Before(best)) {
				best = inst
			}
		}
		if !best.IsZero() && w.Sub(wall(best, s.loc)) > lookback {
			break
		}
		w = s.spec.Next(w)
	}
	return best
}

// instants are the moments at which wall time w happens in the zone: one
// normally, the end of the jump for a time skipped by spring forward, and
// both passes of a fall-back hour (only the first unless the hour field is
// "*").
func (s *Schedule) instants(w time.Time) []time.Time {
	y, mo, d := w.Date()
	h, mi, se := w.Clock()
	t := time.Date(y, mo, d, h, mi, se, 0, s.loc)
	if !wall(t, s.loc).Equal(w) { // skipped by a forward jump
		start, end := t.ZoneBounds()
		if wall(t, s.loc).After(w) {
			return []time.Time{start}
		}
		return []time.Time{end}
	}
	out := []time.Time{t}
	start, end := t.ZoneBounds()
	_, off := t.Zone()
	if !start.IsZero() {
		_, poff := start.Add(-time.Second).Zone()
		if c := t.Add(time.Duration(off-poff) * time.Second); c.Before(start) && wall(c, s.loc).Equal(w) {
			out = append([]time.Time{c}, out...)
		}
	}
	if !end.IsZero() {
		_, noff := end.Zone()
		if c := t.Add(time.Duration(off-noff) * time.Second); !c.Before(end) && wall(c, s.loc).Equal(w) {
			out = append(out, c)
		}
	}
	if !s.hourStar && len(out) > 1 {
		out = out[:1]
	}
	return out
}

// Prev returns the last slot strictly before before, or the zero time.
func (s *Schedule) Prev(before time.Time) time.Time {
	for lb := time.Minute; lb < 6*366*24*time.Hour; lb *= 4 {
		t := s.Next(before.Add(-lb))
		if t.IsZero() || !t.Before(before) {
			continue
		}
		for {
			n := s.Next(t)
			if n.IsZero() || !n.Before(before) {
				return t
			}
			t = n
		}
	}
	return time.Time{}
}

// Slots returns the slots in (from, to], at most limit of them (oldest
// first), and whether there were more.
func (s *Schedule) Slots(from, to time.Time, limit int) ([]time.Time, bool) {
	var out []time.Time
	for t := s.Next(from); !t.IsZero() && !t.After(to); t = s.Next(t) {
		if len(out) == limit {
			return out, true
		}
		out = append(out, t)
	}
	return out, false
}

// SlotKey is the idempotency key of the slot at t: its UTC instant. The
// backfill and replay commands use it too, so a slot is one run whoever
// fires it.
func SlotKey(t time.Time) string { return "slot:" + t.UTC().Format(time.RFC3339Nano) }
