package orchestrator

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/batchd/batchd/jobs/backoff"
)

// BucketReplicas is the replica registry: one key per replica, rewritten
// at every heartbeat, gone a minute after the replica stopped writing it.
const BucketReplicas = "batchd_replicas"

// ReplicaIdentity is what main tells the orchestrator about this process
// for the registry.
type ReplicaIdentity struct {
	// Host is the machine's name (for people; the registry key is random).
	Host string
	// Version is batchd's version.
	Version string
	// ConfigHash identifies the pipelines file's content: replicas with
	// different hashes run different pipelines files (config drift).
	ConfigHash string
}

// ReplicaInfo is one replica's registry entry, as GET /api/v1/replicas,
// `batchd replicas` and the status page show it.
type ReplicaInfo struct {
	ID         string    `json:"id"`
	Host       string    `json:"host,omitempty"`
	Version    string    `json:"version,omitempty"`
	ConfigHash string    `json:"config_hash,omitempty"`
	Started    time.Time `json:"started"`
	Heartbeat  time.Time `json:"heartbeat"`
	// MaxRunningJobs is the cap this replica's pipelines file sets per batch
	// endpoint (endpoints without a cap are left out).
	MaxRunningJobs map[string]int `json:"max_running_jobs,omitempty"`
	// Self marks the replica that answered.
	Self bool `json:"self,omitempty"`
}

// ReplicaList is the live replicas and what they disagree on.
type ReplicaList struct {
	Replicas []ReplicaInfo `json:"replicas"`
	// ConfigDrift is true when live replicas run different pipelines files
	// (different config hashes); Drift says how.
	ConfigDrift bool   `json:"config_drift"`
	Drift       string `json:"drift,omitempty"`
}

// replicaView is what the last heartbeat saw, used by the limits that hold
// across replicas.
type replicaView struct {
	list ReplicaList
	// live counts live replicas, this one included (at least 1).
	live int
	// maxRunning is the agreed cap per endpoint: the smallest cap any live
	// replica's pipelines file sets for it.
	maxRunning map[string]int
}

func newReplicaID(host string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	h := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, host)
	if len(h) > 40 {
		h = h[:40]
	}
	if h == "" {
		h = "replica"
	}
	return h + "-" + hex.EncodeToString(b[:])
}

// registryLoop writes this replica's entry every Heartbeat and reads
// everyone's, until ctx ends; then it deletes its entry, so that the
// others take over its share of the limits at their next heartbeat.
func (o *Orchestrator) registryLoop(ctx context.Context) error {
	for {
		if err := o.heartbeat(ctx); err != nil && ctx.Err() == nil {
			o.log.Warn("replica registry: heartbeat failed", "err", err)
		}
		if backoff.Sleep(ctx, backoff.Jitter(o.opts.Heartbeat, 0.1)) != nil {
			break
		}
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = o.h.replicas.Delete(dctx, o.self.ID)
	return nil
}

// heartbeat writes this replica's entry and refreshes the view of all.
func (o *Orchestrator) heartbeat(ctx context.Context) error {
	self := o.self
	self.Heartbeat = time.Now().UTC()
	b, err := json.Marshal(self)
	if err != nil {
		return err
	}
	_, perr := o.h.replicas.Put(ctx, self.ID, b)
	if perr != nil && ctx.Err() == nil {
		o.storeErr.Store(&perr)
	} else if perr == nil {
		o.storeErr.Store(nil)
	}
	entries, lerr := o.readReplicas(ctx, o.registryIDs)
	if lerr != nil {
		// A partial read would drop replicas from the view and lift
		// their caps: keep the last view until a whole read.
		return errors.Join(perr, lerr)
	}
	o.registryIDs = o.registryIDs[:0]
	for _, e := range entries {
		o.registryIDs = append(o.registryIDs, e.ID)
	}
	o.setView(self, entries, time.Now())
	return perr
}

// readReplicas reads every registry entry. A key listing can end early
// without an error (nats.go's lister closes its channel when its watcher
// does), which would drop a replica from the view and lift its cap; so an
// entry of the last read (known) that the listing lacks is read directly,
// and only a deleted or expired entry leaves the view.
func (o *Orchestrator) readReplicas(ctx context.Context, known []string) ([]ReplicaInfo, error) {
	keys, err := o.h.replicas.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	listed := map[string]bool{}
	for k := range keys.Keys() {
		listed[k] = true
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("list replicas: %w", err)
	}
	for _, id := range known {
		listed[id] = true
	}
	var out []ReplicaInfo
	var errs []error
	for k := range listed {
		e, err := o.h.replicas.Get(ctx, k)
		if err != nil {
			if !errors.Is(err, jetstream.ErrKeyNotFound) && !errors.Is(err, jetstream.ErrKeyDeleted) {
				errs = append(errs, err)
			}
			continue
		}
		var ri ReplicaInfo
		if json.Unmarshal(e.Value(), &ri) == nil && ri.ID != "" {
			out = append(out, ri)
		}
	}
	return out, errors.Join(errs...)
}

// setView computes the live replicas (heartbeat within three intervals;
// this one always) and what follows from them: config drift, the agreed
// max_running_jobs per endpoint, and this replica's share of the poll
// budget.
func (o *Orchestrator) setView(self ReplicaInfo, entries []ReplicaInfo, now time.Time) {
	liveFor := 3 * o.opts.Heartbeat
	self.Self = true
	list := []ReplicaInfo{self}
	for _, e := range entries {
		if e.ID == self.ID || now.Sub(e.Heartbeat) > liveFor {
			continue
		}
		e.Self = false
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	v := &replicaView{list: ReplicaList{Replicas: list}, live: len(list), maxRunning: map[string]int{}}
	hashes := map[string][]string{}
	for _, r := range list {
		hashes[r.ConfigHash] = append(hashes[r.ConfigHash], r.ID)
	}
	if len(hashes) > 1 {
		v.list.ConfigDrift = true
		var parts []string
		for _, h := range slices.Sorted(maps.Keys(hashes)) {
			parts = append(parts, fmt.Sprintf("config %s on %s", orDash(h), strings.Join(hashes[h], ", ")))
		}
		v.list.Drift = "live replicas run different pipelines files: " + strings.Join(parts, "; ")
	}
	// The agreed cap: the smallest any replica in the registry sets (live
	// or with a late heartbeat: its entry stays until it stops cleanly or
	// for a minute), so that no replica admits more than another's file
	// allows, even while a slow heartbeat makes that one look gone.
	for _, p := range o.pipelines {
		if !p.IsOnline() {
			v.maxRunning[p.Endpoint.Name] = o.maxRunning[p.Endpoint.Name]
		}
	}
	for _, r := range append([]ReplicaInfo{self}, entries...) {
		for name, n := range r.MaxRunningJobs {
			cur, ok := v.maxRunning[name]
			if n > 0 && ok && (cur <= 0 || n < cur) {
				v.maxRunning[name] = n
			}
		}
	}
	prev := o.view.Swap(v)
	if prev == nil || prev.live != v.live {
		o.setPollShare(v.live)
	}
	if prev == nil || prev.list.ConfigDrift != v.list.ConfigDrift || prev.list.Drift != v.list.Drift {
		if v.list.ConfigDrift {
			o.log.Warn("replica registry: config drift", "drift", v.list.Drift)
		} else if prev != nil {
			o.log.Info("replica registry: live replicas agree on the pipelines file")
		}
	}
	o.met.replicas.Set(float64(v.live))
	drift := 0.0
	if v.list.ConfigDrift {
		drift = 1
	}
	o.met.configDrift.Set(drift)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Replicas returns the live replicas as the last heartbeat saw them.
func (o *Orchestrator) Replicas() ReplicaList {
	if v := o.view.Load(); v != nil {
		return v.list
	}
	self := o.self
	self.Self = true
	return ReplicaList{Replicas: []ReplicaInfo{self}}
}

// liveReplicas is the number of live replicas, this one included.
func (o *Orchestrator) liveReplicas() int {
	if v := o.view.Load(); v != nil && v.live > 0 {
		return v.live
	}
	return 1
}

// capFor is the agreed max_running_jobs of endpoint (0: no cap).
func (o *Orchestrator) capFor(endpoint string) int {
	if v := o.view.Load(); v != nil {
		if n, ok := v.maxRunning[endpoint]; ok {
			return n
		}
	}
	return o.maxRunning[endpoint]
}

// pollShare is this replica's part of the poll budget of one endpoint
// host: the budget is the cluster's, split evenly among live replicas.
func (o *Orchestrator) pollShare() float64 {
	return o.opts.PollBudget / float64(o.liveReplicas())
}

// setPollShare applies a new number of live replicas to every host's
// limiter.
func (o *Orchestrator) setPollShare(live int) {
	share := o.opts.PollBudget / float64(max(live, 1))
	o.limMu.Lock()
	defer o.limMu.Unlock()
	for _, l := range o.limiters {
		l.SetLimit(rate.Limit(share))
		l.SetBurst(max(1, int(share)))
	}
}

// concurrencyShare is this replica's part of an online endpoint's
// max_concurrent_requests (n > 0): an even split among live replicas,
// rounded down, at least 1 (so with more live replicas than n, the cap
// across replicas is the number of replicas).
func (o *Orchestrator) concurrencyShare(n int) int {
	return max(1, int(math.Floor(float64(n)/float64(o.liveReplicas()))))
}
