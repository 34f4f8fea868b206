package blob

import (
	"errors"
	"fmt"
	"path"
	"strings"
	"time"
)

// Sources of blob events for one pipeline.
const (
	SourceEventGrid = "eventgrid"
	SourcePoll      = "poll"
	SourceBoth      = "both"
)

// DefaultAPIs are the data.api values that mean "a blob was fully committed".
var DefaultAPIs = []string{"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"}

// Config is a pipeline's `trigger.blob` section of the pipelines file.
type Config struct {
	// Account and Container the blobs must be in. Required.
	Account   string `yaml:"account"`
	Container string `yaml:"container"`
	// Prefix and Suffix the blob name (inside the container) must have, and
	// Glob (path.Match syntax over the name), each optional.
	Prefix string `yaml:"prefix,omitempty"`
	Suffix string `yaml:"suffix,omitempty"`
	Glob   string `yaml:"glob,omitempty"`
	// API lists the accepted data.api values; empty means DefaultAPIs.
	API []string `yaml:"api,omitempty"`
	// MinSize is the smallest accepted contentLength; nil means 1 (no
	// zero-byte blobs). Set 0 to accept empty blobs.
	MinSize *int64 `yaml:"min_size,omitempty"`
	// Source is eventgrid (default), poll, or both (Event Grid plus a
	// reconciliation sweep that catches what Event Grid dropped).
	Source string `yaml:"source,omitempty"`
	// PollInterval is the sweep interval for poll and both (default 1m).
	PollInterval time.Duration `yaml:"poll_interval,omitempty"`
	// MarkTag, when set, is the blob index tag the poller sets on blobs it
	// emitted (tags do not change the eTag).
	MarkTag string `yaml:"mark_tag,omitempty"`
	// Batch, when set, turns the files arriving in one folder into one
	// UriFolder job.
	Batch *BatchConfig `yaml:"batch,omitempty"`

	// pageSize, when set, is the listing's page size (tests; the service's
	// default is 5,000).
	pageSize int32
}

// BatchConfig is per-folder micro-batching: a folder's files become one run
// when the folder has been quiet for Quiet, holds MaxFiles files, or receives
// the Marker file, whichever comes first.
type BatchConfig struct {
	By       string        `yaml:"by"` // "folder"
	Quiet    time.Duration `yaml:"quiet,omitempty"`
	MaxFiles int           `yaml:"max_files,omitempty"`
	Marker   string        `yaml:"marker,omitempty"`
}

// Defaults applied by Validate's callers through the accessors below.
const (
	DefaultPollInterval = time.Minute
	DefaultBatchQuiet   = 2 * time.Minute
	// DefaultBatchMaxFiles caps a folder batch when max_files is unset, so a
	// batch's state always fits in one KV value.
	DefaultBatchMaxFiles = 1000
	// BatchByFolder is the only batch.by value.
	BatchByFolder = "folder"
)

// Validate reports every problem of c, joined, each naming its yaml key.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if c.Account == "" {
		bad("account: required")
	}
	if c.Container == "" {
		bad("container: required")
	}
	if c.Glob != "" {
		if _, err := path.Match(c.Glob, ""); err != nil {
			bad("glob: %q is not a valid pattern: %v", c.Glob, err)
		}
	}
	for _, a := range c.API {
		if a == "" {
			bad("api: empty value")
		}
	}
	if c.MinSize != nil && *c.MinSize < 0 {
		bad("min_size: must be >= 0")
	}
	switch c.Source {
	case "", SourceEventGrid, SourcePoll, SourceBoth:
	default:
		bad("source: %q is not eventgrid, poll or both", c.Source)
	}
	if c.PollInterval < 0 || (c.PollInterval > 0 && c.PollInterval < time.Second) {
		bad("poll_interval: must be at least 1s")
	}
	if b := c.Batch; b != nil {
		if b.By != BatchByFolder {
			bad("batch.by: %q is not folder", b.By)
		}
		if b.Quiet < 0 {
			bad("batch.quiet: must be >= 0")
		}
		if b.MaxFiles < 0 || b.MaxFiles > 5000 {
			bad("batch.max_files: must be between 1 and 5000")
		}
		if strings.Contains(b.Marker, "/") {
			bad("batch.marker: a file name, not a path")
		}
	}
	return errors.Join(errs...)
}

// SourceOrDefault is Source, or eventgrid.
func (c *Config) SourceOrDefault() string {
	if c.Source == "" {
		return SourceEventGrid
	}
	return c.Source
}

// Polls reports whether the pipeline needs a storage poller.
func (c *Config) Polls() bool { s := c.SourceOrDefault(); return s == SourcePoll || s == SourceBoth }

// Webhooks reports whether the pipeline takes Event Grid deliveries.
func (c *Config) Webhooks() bool {
	s := c.SourceOrDefault()
	return s == SourceEventGrid || s == SourceBoth
}

// PollIntervalOrDefault is PollInterval, or DefaultPollInterval.
func (c *Config) PollIntervalOrDefault() time.Duration {
	if c.PollInterval <= 0 {
		return DefaultPollInterval
	}
	return c.PollInterval
}

// APIs is API, or DefaultAPIs.
func (c *Config) APIs() []string {
	if len(c.API) == 0 {
		return DefaultAPIs
	}
	return c.API
}

// MinSizeOrDefault is MinSize, or 1.
func (c *Config) MinSizeOrDefault() int64 {
	if c.MinSize == nil {
		return 1
	}
	return *c.MinSize
}

// QuietOrDefault is Quiet, or DefaultBatchQuiet.
func (b *BatchConfig) QuietOrDefault() time.Duration {
	if b.Quiet <= 0 {
		return DefaultBatchQuiet
	}
	return b.Quiet
}

// MaxFilesOrDefault is MaxFiles, or DefaultBatchMaxFiles.
func (b *BatchConfig) MaxFilesOrDefault() int {
	if b.MaxFiles <= 0 {
		return DefaultBatchMaxFiles
	}
	return b.MaxFiles
}
