package blob

import "time"

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
