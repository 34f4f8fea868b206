package orchestrator

import (
	"encoding/json"
	"hash/maphash"
	"sync"
	"time"

	"github.com/batchd/batchd/jobs"
)

// pollView is what a routine look at a tracked job needs from its run. The
// tracker keeps one for each run it has looked at (pollViews), so that a
// look that finds the job as the view has it, which is most looks, neither
// reads nor writes the ledger. Reading a run loads the ledger's whole
// message block that holds it into the NATS server's cache; with every
// tracked run looked at in turn that kept the live part of the whole
// ledger in memory: about 5 KiB per tracked job (issue 16).
//
// A view is never written back and never decides a change: a look whose
// answer differs from it in anything that matters (status, studio URL, an
// error, a deadline passed) goes the full way, which reads the run and
// writes with compare-and-set. What a look could miss with a stale view is
// a change of the run that needs the tracker without a change of the job
// (an operator's resolve, a run another replica moved on). So views are
// kept current by the ledger watch, which drops a view of a run written
// since (late, by the watch's lag: a nudge's first delivery, which carries
// operator requests, always goes the full way); and a step does not keep a
// view of what it read when the watch reported a newer write meanwhile
// (pollViews.busy).
type pollView struct {
	rev       uint64 // the ledger revision the view was taken at
	id        string
	endpoint  string         // Run.Endpoint: the metrics label
	ep        *jobs.Endpoint // shared by the views of one endpoint configuration
	job       string
	status    jobs.Status
	studio    uint64 // hash of the job's studio URL
	submitted time.Time
	deadline  time.Time
	running   bool   // the run's state is running (else submitted)
	failing   string // Run.Error: the last status request's failure
}

// pollViews holds the tracker's views by run id. Its size is the number of
// runs being tracked (each view is about 250 bytes).
type pollViews struct {
	mu    sync.Mutex
	views map[string]*pollView
	// busy holds the runs whose tracker message is being handled, with the
	// newest revision the watch reported meanwhile: a step that read the
	// run before that write must not keep a view of what it read.
	busy map[string]*busyRun
	// eps interns endpoint configurations, so that views share them.
	eps  map[string]*jobs.Endpoint
	seed maphash.Seed
}

type busyRun struct {
	n    int    // deliveries in hand (more than one only after an AckWait ran out)
	seen uint64 // the newest revision the watch reported since the first began
}

func newPollViews() *pollViews {
	return &pollViews{views: map[string]*pollView{}, busy: map[string]*busyRun{}, eps: map[string]*jobs.Endpoint{}, seed: maphash.MakeSeed()}
}

// begin and end bracket the handling of a tracker message of run id.
func (p *pollViews) begin(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.busy[id]
	if b == nil {
		b = &busyRun{}
		p.busy[id] = b
	}
	b.n++
}

func (p *pollViews) end(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.busy[id]; b != nil {
		if b.n--; b.n <= 0 {
			delete(p.busy, id)
		}
	}
}

func (p *pollViews) get(id string) *pollView {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.views[id]
}

// ids lists the runs with a view (tests).
func (p *pollViews) ids() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.views))
	for id := range p.views {
		out = append(out, id)
	}
	return out
}

func (p *pollViews) len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.views)
}

// studioHash is what a view keeps of a studio URL.
func (p *pollViews) studioHash(url string) uint64 { return maphash.String(p.seed, url) }

// put keeps r at revision rev as its view, if r is a job being polled with
// no operator request pending; else it drops any view of r. It returns r's
// view, kept or not (for the next look's delay).
func (p *pollViews) put(r *record, rev uint64) *pollView {
	v := p.view(r, rev)
	if r.Job == nil || r.Sys.Endpoint == nil || r.Sys.Cancel != nil || r.Sys.Resolve != nil ||
		r.Sys.Carrier != carrierTracker || (r.State != StateSubmitted && r.State != StateRunning) {
		p.drop(r.ID)
		return v
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.busy[r.ID]; b != nil && b.seen > rev {
		delete(p.views, r.ID) // written since it was read
		return v
	}
	v.ep = p.intern(r.Sys.Endpoint)
	p.views[r.ID] = v
	return v
}

// view is r's view at rev (not kept; it shares r's endpoint).
func (p *pollViews) view(r *record, rev uint64) *pollView {
	v := &pollView{rev: rev, id: r.ID, endpoint: r.Endpoint, ep: r.Sys.Endpoint, deadline: r.Sys.Deadline,
		running: r.State == StateRunning, failing: r.Error}
	if j := r.Job; j != nil {
		v.job, v.status, v.studio, v.submitted = j.Name, j.Status, p.studioHash(j.StudioURL), j.SubmittedAt
	}
	return v
}

// intern returns the shared copy of ep. The caller holds p.mu.
func (p *pollViews) intern(ep *jobs.Endpoint) *jobs.Endpoint {
	k, err := json.Marshal(ep) // every field: a field added later is part of the key
	if err != nil {
		return ep
	}
	key := string(k)
	if e, ok := p.eps[key]; ok {
		return e
	}
	c := *ep
	if ep.Workspace != nil {
		w := *ep.Workspace
		c.Workspace = &w
	}
	// Configurations change rarely; forget them all rather than track
	// which views still use one, should they ever pile up.
	if len(p.eps) >= 1024 {
		p.eps = map[string]*jobs.Endpoint{}
	}
	p.eps[key] = &c
	return &c
}

func (p *pollViews) drop(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.views, id)
}

// changed is the ledger watch's report of a write (or delete) of run id at
// rev: a view taken before it is dropped. (A watch that stops resumes from
// the revision after the last it applied, with history: no write goes
// unreported, only late.)
func (p *pollViews) changed(id string, rev uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if v, ok := p.views[id]; ok && v.rev < rev {
		delete(p.views, id)
	}
	if b := p.busy[id]; b != nil {
		b.seen = max(b.seen, rev)
	}
}

// answers reports whether job, as a look found it, is what the view
// says: nothing to record. A job that moved on, changed its studio URL,
// or answered after a failing look needs the full step.
func (v *pollView) answers(p *pollViews, job *jobs.Job) bool {
	switch {
	case v.failing != "", job.Status != v.status, job.Status.Normal().Terminal():
		return false
	case !v.running && job.Status.Running():
		return false
	case job.StudioURL != "" && p.studioHash(job.StudioURL) != v.studio:
		return false
	}
	return true
}
