package natsmsg

// Config is a pipeline's `trigger.nats` section of the pipelines file. Either
// Subject (core NATS, optionally with a queue group) or Stream (a JetStream
// stream read through the durable consumer Consumer) is set.
type Config struct {
	Subject  string `yaml:"subject,omitempty"`
	Queue    string `yaml:"queue,omitempty"`
	Stream   string `yaml:"stream,omitempty"`
	Consumer string `yaml:"consumer,omitempty"`
	// URL of another NATS cluster; empty uses the daemon's own NATS.
	URL string `yaml:"url,omitempty"`
	// Creds is a NATS credentials file for URL.
	Creds string `yaml:"creds,omitempty"`
}
