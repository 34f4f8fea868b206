package cron

import "time"

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
