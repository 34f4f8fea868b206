package orchestrator

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the orchestrator's Prometheus metrics, registered on the
// Registerer main gives it (Options.Registerer; never the global one).
type metrics struct {
	reg prometheus.Registerer

	events         *prometheus.CounterVec   // source, outcome
	submissions    *prometheus.CounterVec   // endpoint, result
	finished       *prometheus.CounterVec   // pipeline, state
	jobDuration    *prometheus.HistogramVec // pipeline, state
	polls          *prometheus.CounterVec   // endpoint, result
	bulkLists      *prometheus.CounterVec   // endpoint, result
	jobEvents      *prometheus.CounterVec   // type, outcome
	admissionWaits *prometheus.CounterVec   // endpoint, reason
	reconciles     *prometheus.CounterVec   // endpoint, result
	orphansRevived prometheus.Counter
	replicas       prometheus.Gauge
	poisoned       *prometheus.CounterVec // consumer, cause
	configDrift    prometheus.Gauge

	online           *prometheus.CounterVec   // endpoint, result
	onlineLatency    *prometheus.HistogramVec // endpoint
	onlineDeliveries *prometheus.CounterVec   // pipeline, via, result
}

func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		reg = prometheus.NewRegistry() // a private one: nobody serves it
	}
	m := &metrics{reg: reg}
	m.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_events_total",
		Help: "Events handed to batchd, by source and intake outcome (accepted, duplicate, error, or the state recorded without work: filtered, rejected, duplicate).",
	}, []string{"source", "outcome"})
	m.submissions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_submissions_total",
		Help: "Job submissions (POSTs), by endpoint and result: accepted, rejected, throttled, transient, ambiguous.",
	}, []string{"endpoint", "result"})
	m.finished = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_runs_finished_total",
		Help: "Runs that reached a terminal state in this process, by pipeline and state.",
	}, []string{"pipeline", "state"})
	m.jobDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "batchd_job_duration_seconds",
		Help:    "Time from a job's submission to its terminal status, by pipeline and final state.",
		Buckets: []float64{10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400},
	}, []string{"pipeline", "state"})
	m.polls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_poll_requests_total",
		Help: "Job status looks, by endpoint and result: ok and error (a status request), list (answered by a bulk job list, no request).",
	}, []string{"endpoint", "result"})
	m.bulkLists = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_job_list_refreshes_total",
		Help: "ARM job lists read to refresh tracked jobs' status in bulk (each may be several page requests), by endpoint and result (ok, error). Status looks they answered count as batchd_poll_requests_total{result=\"list\"}.",
	}, []string{"endpoint", "result"})
	m.jobEvents = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_job_events_total",
		Help: "Azure ML workspace job events taken on /eventgrid, by type (run_status_changed, run_completed) and outcome: checked (one status request follows), progress, finished (the run had ended), stale (the run moved to another job), not_ours.",
	}, []string{"type", "outcome"})
	m.admissionWaits = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_admission_waits_total",
		Help: "Runs that had to wait for endpoint admission, by endpoint and reason (max_running_jobs, paused, backoff).",
	}, []string{"endpoint", "reason"})
	m.reconciles = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_reconciliations_total",
		Help: "Reconciliation outcomes of runs whose submission was ambiguous: adopted, resubmitted, operator.",
	}, []string{"endpoint", "result"})
	m.orphansRevived = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "batchd_orphans_revived_total",
		Help: "Unfinished runs that no intake or tracker message drove, found by the orphan scan and driven again.",
	})
	m.replicas = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "batchd_replicas",
		Help: "Live batchd replicas in the registry (heartbeat within three intervals), this one included.",
	})
	m.configDrift = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "batchd_config_drift",
		Help: "1 while live replicas run different pipelines files (config hashes differ), else 0.",
	})
	m.online = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_online_requests_total",
		Help: "Online endpoint requests, by endpoint and outcome: completed, rejected, failed, timed_out, unknown, interrupted (batchd stopped mid-request).",
	}, []string{"endpoint", "result"})
	m.onlineLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "batchd_online_request_duration_seconds",
		Help:    "Time of the online endpoint's answered attempt, from sending the request to reading the answer, by endpoint.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"endpoint"})
	m.onlineDeliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_online_deliveries_total",
		Help: "Online outcomes delivered over NATS, by pipeline, via (reply, results, duplicate) and result (ok, error).",
	}, []string{"pipeline", "via", "result"})
	m.poisoned = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "batchd_messages_poisoned_total",
		Help: "Intake or tracker messages taken out of the way, by consumer (intake, tracker) and cause: panic (a step panicked), error (a step failed 5 times with an error retrying cannot fix). Their runs end failed (or rejected) with the reason; alert on any.",
	}, []string{"consumer", "cause"})
	m.reg.MustRegister(m.events, m.submissions, m.finished, m.jobDuration,
		m.polls, m.bulkLists, m.jobEvents, m.admissionWaits, m.reconciles, m.orphansRevived, m.replicas, m.configDrift, m.online, m.onlineLatency, m.onlineDeliveries, m.poisoned)
	return m
}

// registerLive adds the gauges read at scrape time: runs by state (from the
// index) and the consumers' backlog (intake lag).
func (m *metrics) registerLive(o *Orchestrator) {
	m.reg.MustRegister(&liveCollector{o: o,
		runs: prometheus.NewDesc("batchd_runs", "Runs in the ledger by state.", []string{"state"}, nil),
		pending: prometheus.NewDesc("batchd_consumer_pending",
			"Messages not yet handed out (pending) and handed out but not settled (ack_pending), per consumer: workers is the intake lag, tracker the runs being tracked.",
			[]string{"consumer", "kind"}, nil),
	})
}

type liveCollector struct {
	o             *Orchestrator
	runs, pending *prometheus.Desc
}

func (c *liveCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.runs
	ch <- c.pending
}

func (c *liveCollector) Collect(ch chan<- prometheus.Metric) {
	if counts, ok := c.o.index.counts(); ok {
		for _, s := range States {
			ch <- prometheus.MustNewConstMetric(c.runs, prometheus.GaugeValue, float64(counts[s]), string(s))
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, cons := range []struct {
		name string
		c    jetstream.Consumer
	}{{"workers", c.o.h.workers}, {"tracker", c.o.h.tracker}} {
		info, err := cons.c.Info(ctx)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(info.NumPending), cons.name, "pending")
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(info.NumAckPending), cons.name, "ack_pending")
	}
}
