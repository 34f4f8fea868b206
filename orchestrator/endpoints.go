package orchestrator

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// EndpointStatus is one endpoint's admission state, as the status page's
// endpoints view and operators see it.
type EndpointStatus struct {
	// Name is batchd's name for the endpoint (the key in the pipelines file).
	Name string
	// RunningJobs is the number of admission slots held (jobs batchd keeps
	// running on the endpoint, across replicas).
	RunningJobs int
	// MaxRunningJobs is the endpoint's cap agreed among live replicas (the
	// smallest their pipelines files set); 0 means no cap.
	MaxRunningJobs int
	// PausedUntil is set while the endpoint is paused after a 429.
	PausedUntil time.Time
	PauseReason string
	// PollBudget is the status requests per second this replica may send to
	// the endpoint's host (its share of BATCHD_POLL_BUDGET, split among live
	// replicas); PollBudgetInUse is the part of it used over the
	// last minute (requests per second). A negative PollBudgetInUse means
	// "not known".
	PollBudget      float64
	PollBudgetInUse float64
}

// Endpoints returns the admission state of every configured batch endpoint,
// sorted by name: the slots held and the 429 pause from the shared
// admission bucket (so across replicas), and this replica's poll budget and
// its use. Online endpoints have no admission state and are not listed.
func (o *Orchestrator) Endpoints(ctx context.Context) ([]EndpointStatus, error) {
	hosts := map[string]string{}
	for _, p := range o.pipelines {
		if p.IsOnline() {
			continue
		}
		hosts[p.Endpoint.Name] = endpointHost(&p.Endpoint.Endpoint)
	}
	out := make([]EndpointStatus, 0, len(hosts))
	now := time.Now()
	for _, name := range slices.Sorted(maps.Keys(hosts)) {
		s, _, err := o.adm.load(ctx, name)
		if err != nil {
			return out, err
		}
		out = append(out, EndpointStatus{
			Name: name, RunningJobs: len(s.Slots), MaxRunningJobs: o.capFor(name),
			PausedUntil: s.PausedUntil, PauseReason: s.PauseReason,
			PollBudget: o.pollShare(), PollBudgetInUse: o.pollsUsed(hosts[name]).rate(now),
		})
	}
	return out, nil
}

// pollsUsed is the meter of the polls sent to host.
func (o *Orchestrator) pollsUsed(host string) *meter {
	o.limMu.Lock()
	defer o.limMu.Unlock()
	m, ok := o.meters[host]
	if !ok {
		m = &meter{}
		o.meters[host] = m
	}
	return m
}

// meter counts events over the last minute, in one-second buckets.
type meter struct {
	mu  sync.Mutex
	sec [60]int64 // the Unix second each bucket counts
	n   [60]int
}

func (m *meter) add(now time.Time) {
	s := now.Unix()
	i := s % 60
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sec[i] != s {
		m.sec[i], m.n[i] = s, 0
	}
	m.n[i]++
}

// rate is the events per second over the minute before now.
func (m *meter) rate(now time.Time) float64 {
	s := now.Unix()
	m.mu.Lock()
	defer m.mu.Unlock()
	total := 0
	for i := range m.sec {
		if m.sec[i] > s-60 && m.sec[i] <= s {
			total += m.n[i]
		}
	}
	return float64(total) / 60
}
