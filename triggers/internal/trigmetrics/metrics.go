// Package trigmetrics holds the counters every trigger shares. Several
// triggers register the same families on one registerer; the second
// registration reuses the first's collector.
package trigmetrics

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Outcomes of one event at a trigger.
const (
	Received  = "received"
	Emitted   = "emitted"
	Filtered  = "filtered"
	Rejected  = "rejected"
	Duplicate = "duplicate"
	// Batched: a file was added to a folder batch (the batch itself counts
	// as emitted under trigger "batch" when it is emitted).
	Batched = "batched"
	// Failed: the orchestrator did not take the event (it stays with the
	// source for redelivery, or, for core NATS, is lost; see natsmsg).
	Failed = "failed"
	// Skipped: a cron slot not fired (catch-up or overlap policy).
	Skipped = "skipped"
	// History: a blob the poller found last modified before its horizon
	// (the pipeline's first sweep): not run; batchd backfill runs it.
	History = "history"
)

// Metrics are the shared trigger counters.
type Metrics struct {
	Events *prometheus.CounterVec
}

// New registers (or reuses) batchd_trigger_events_total on reg. A nil reg
// gives counters that are not exported (tests).
func New(reg prometheus.Registerer) *Metrics {
	ev := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_trigger_events_total",
		Help: "Events seen by triggers, by trigger kind, pipeline and outcome (received, emitted, filtered, rejected, duplicate, batched, failed, skipped, history).",
	}, []string{"trigger", "pipeline", "outcome"})
	return &Metrics{Events: Register(reg, ev)}
}

// Register registers c on reg, or returns the collector already registered
// under the same description.
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err) // a programming error: two different families with one name
	}
	return c
}

// Inc counts one event.
func (m *Metrics) Inc(trigger, pipeline, outcome string) {
	m.Events.WithLabelValues(trigger, pipeline, outcome).Inc()
}
