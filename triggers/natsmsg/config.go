package natsmsg

import (
	"errors"
	"fmt"
	"strings"
)

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
	// ReplyPrefix is where batchd answers core NATS requests (default
	// DefaultReplyPrefix). A request naming a reply subject elsewhere is
	// recorded rejected and answered nowhere: batchd publishes with its own
	// permissions, and a requester must not make it publish on subjects it
	// could not publish on itself ($KV..., $JS.API..., batchd.intake...).
	ReplyPrefix string `yaml:"reply_prefix,omitempty"`
}

// DefaultReplyPrefix is where NATS clients receive replies (nats.go's
// and the nats CLI's request inboxes).
const DefaultReplyPrefix = "_INBOX."

// ReplyPrefixOrDefault is ReplyPrefix, or DefaultReplyPrefix.
func (c *Config) ReplyPrefixOrDefault() string {
	if c.ReplyPrefix == "" {
		return DefaultReplyPrefix
	}
	return c.ReplyPrefix
}

// Validate reports every problem of c, joined, each naming its yaml key.
func (c *Config) Validate() error {
	var errs []error
	switch {
	case c.Subject == "" && c.Stream == "":
		errs = append(errs, errors.New("subject or stream: one is required"))
	case c.Subject != "" && c.Stream != "":
		errs = append(errs, errors.New("subject and stream: set only one (a stream is read through its durable consumer)"))
	}
	if c.Stream != "" && c.Consumer == "" {
		errs = append(errs, errors.New("consumer: required with stream (the durable consumer's name)"))
	}
	if c.Stream == "" && c.Consumer != "" {
		errs = append(errs, errors.New("consumer: only applies to stream"))
	}
	if c.Queue != "" && c.Subject == "" {
		errs = append(errs, errors.New("queue: only applies to subject"))
	}
	if strings.ContainsAny(c.Subject, " \t\r\n") {
		errs = append(errs, fmt.Errorf("subject: %q has white space", c.Subject))
	}
	if strings.ContainsAny(c.Stream+c.Consumer, " .*>\t") {
		errs = append(errs, errors.New("stream, consumer: names may not hold spaces, dots or wildcards"))
	}
	if c.ReplyPrefix != "" && (c.Stream != "" || strings.ContainsAny(c.ReplyPrefix, " \t*>") || strings.HasPrefix(c.ReplyPrefix, "$") || !strings.HasSuffix(c.ReplyPrefix, ".")) {
		errs = append(errs, fmt.Errorf("reply_prefix: %q must be a subject prefix ending in '.', without wildcards or a leading '$', on a core NATS subject", c.ReplyPrefix))
	}
	if c.Creds != "" && c.URL == "" {
		errs = append(errs, errors.New("creds: only applies with url"))
	}
	return errors.Join(errs...)
}
