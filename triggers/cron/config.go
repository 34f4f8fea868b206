// Package cron fires pipelines on schedules. robfig/cron/v3 is used only to
// parse the expression (5 fields, 6 with seconds, or a descriptor); the
// timer loop, time zones, daylight saving time (see Schedule), catch-up
// after downtime (skip, latest, all within catch_up_window) and the overlap
// policies (allow, skip, buffer_one, cancel_previous) are this package's.
// A slot's key is its UTC instant (SlotKey), so a slot is one run whether
// it is fired by a replica, fired again after a crash, or backfilled; and
// KV claims keep replicas from even emitting it twice. Every slot that is
// not fired (a catch-up or overlap decision) is recorded with the reason.
package cron

import (
	"errors"
	"fmt"
	"time"
)

// Catch-up policies after downtime.
const (
	CatchUpSkip   = "skip"   // fire nothing that was missed
	CatchUpLatest = "latest" // fire only the most recent missed slot (default)
	CatchUpAll    = "all"    // fire every missed slot within the window, oldest first
)

// Overlap policies while the previous slot's job is still running.
const (
	OverlapAllow          = "allow" // default
	OverlapSkip           = "skip"
	OverlapBufferOne      = "buffer_one"
	OverlapCancelPrevious = "cancel_previous"
)

// Config is a pipeline's `trigger.cron` section of the pipelines file.
type Config struct {
	// Schedule is a 5-field cron expression, a 6-field one with seconds, or
	// a descriptor (@hourly, @every 30s). TZ= and CRON_TZ= prefixes are
	// rejected: use TimeZone.
	Schedule string `yaml:"schedule"`
	// TimeZone is an IANA zone name (default UTC).
	TimeZone string `yaml:"time_zone,omitempty"`
	// CatchUp is skip, latest (default) or all.
	CatchUp string `yaml:"catch_up,omitempty"`
	// CatchUpWindow bounds how far back catch-up looks (default 24h).
	CatchUpWindow time.Duration `yaml:"catch_up_window,omitempty"`
	// Overlap is allow (default), skip, buffer_one or cancel_previous.
	Overlap string `yaml:"overlap,omitempty"`
}

// DefaultCatchUpWindow bounds how far back catch-up looks.
const DefaultCatchUpWindow = 24 * time.Hour

// Validate reports every problem of c, joined, each naming its yaml key.
func (c *Config) Validate() error {
	var errs []error
	if _, err := Parse(c.Schedule, c.TimeZone); err != nil {
		errs = append(errs, err)
	}
	switch c.CatchUp {
	case "", CatchUpSkip, CatchUpLatest, CatchUpAll:
	default:
		errs = append(errs, fmt.Errorf("catch_up: %q is not skip, latest or all", c.CatchUp))
	}
	if c.CatchUpWindow < 0 {
		errs = append(errs, errors.New("catch_up_window: must be >= 0"))
	}
	switch c.Overlap {
	case "", OverlapAllow, OverlapSkip, OverlapBufferOne, OverlapCancelPrevious:
	default:
		errs = append(errs, fmt.Errorf("overlap: %q is not allow, skip, buffer_one or cancel_previous", c.Overlap))
	}
	return errors.Join(errs...)
}

// CatchUpOrDefault is CatchUp, or latest.
func (c *Config) CatchUpOrDefault() string {
	if c.CatchUp == "" {
		return CatchUpLatest
	}
	return c.CatchUp
}

// CatchUpWindowOrDefault is CatchUpWindow, or DefaultCatchUpWindow.
func (c *Config) CatchUpWindowOrDefault() time.Duration {
	if c.CatchUpWindow <= 0 {
		return DefaultCatchUpWindow
	}
	return c.CatchUpWindow
}

// OverlapOrDefault is Overlap, or allow.
func (c *Config) OverlapOrDefault() string {
	if c.Overlap == "" {
		return OverlapAllow
	}
	return c.Overlap
}
