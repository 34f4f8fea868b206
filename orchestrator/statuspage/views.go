package statuspage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/batchd/batchd/datastores"
	"github.com/batchd/batchd/jobs"
	"github.com/batchd/batchd/orchestrator"
)

const (
	maxPageSize = 200
	// rowCacheSize bounds the cache of row details (input, duration) that
	// summaries do not carry.
	rowCacheSize = 4096
	// fetchConcurrency bounds the Gets one page load runs at once.
	fetchConcurrency = 8
	// window24h is the pipelines view's counting window.
	window24h = 24 * time.Hour
	// maxScan bounds the runs the pipelines view reads for its 24 h counts
	// (and the endpoints view for its running jobs); past it the counts say
	// "at least".
	maxScan = 20000
	// nextFires is how many cron fire times the pipelines view shows.
	nextFires = 3
)

// rowView is one line of the runs table.
type rowView struct {
	ID       string
	Short    string
	Pipeline string
	Source   string
	State    string
	Reason   string
	Input    string
	More     int
	JobName  string
	// StudioURL is an http(s) link to the job, or "".
	StudioURL  string
	CreatedISO string
	CreatedMS  int64
	Age        string
	Duration   string
	// Detail is false when the run's full record could not be read; input
	// and duration are then unknown.
	Detail bool
}

// rowExtra is what a row needs beyond the summary.
type rowExtra struct {
	input    string
	more     int
	dur      time.Duration
	finished bool
}

func extraOf(r *orchestrator.Run) rowExtra {
	in, more := mainInput(r)
	d, ok := runDuration(r)
	return rowExtra{input: in, more: more, dur: d, finished: ok}
}

func makeRow(s orchestrator.RunSummary, x *rowExtra, now time.Time) rowView {
	row := rowView{
		ID: s.ID, Short: shortID(s.ID), Pipeline: s.Pipeline, Source: s.Source, State: string(s.State),
		Reason: s.Reason, CreatedISO: isoTime(s.Created), CreatedMS: s.Created.UnixMilli(), Age: ageText(now, s.Created),
	}
	if s.Job != nil {
		row.JobName = s.Job.Name
		row.StudioURL = safeURL(s.Job.StudioURL)
	}
	if x != nil {
		row.Detail = true
		row.Input, row.More = x.input, x.more
		if x.finished {
			row.Duration = durText(x.dur)
		}
	}
	return row
}

// rowCache keeps row details by run id and the Updated time they were
// read at: a summary with the same Updated has the same details.
type rowCache struct {
	mu  sync.Mutex
	max int
	m   map[string]cachedRow
}

type cachedRow struct {
	updated time.Time
	x       rowExtra
}

func newRowCache(n int) *rowCache { return &rowCache{max: n, m: make(map[string]cachedRow, n)} }

func (c *rowCache) get(id string, updated time.Time) (rowExtra, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || !e.updated.Equal(updated) {
		return rowExtra{}, false
	}
	return e.x, true
}

func (c *rowCache) put(r *orchestrator.Run) rowExtra {
	x := extraOf(r)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[r.ID]; !ok && len(c.m) >= c.max {
		for k := range c.m { // map order is random: a random eviction
			delete(c.m, k)
			break
		}
	}
	c.m[r.ID] = cachedRow{updated: r.Updated, x: x}
	return x
}

// rowsFor builds the table rows of one page. Summaries lack the input and
// the history, so each run not in the cache is read with Get, a few at a
// time. A run that cannot be read still gets its row, without those.
func (p *Page) rowsFor(ctx context.Context, runs []orchestrator.RunSummary, now time.Time) []rowView {
	extras := make([]*rowExtra, len(runs))
	var missing []int
	for i, s := range runs {
		if x, ok := p.rows.get(s.ID, s.Updated); ok {
			extras[i] = &x
		} else {
			missing = append(missing, i)
		}
	}
	if len(missing) > 0 {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		sem := make(chan struct{}, fetchConcurrency)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var failed int
		var firstErr error
		for _, i := range missing {
			wg.Go(func() {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return
				}
				defer func() { <-sem }()
				r, err := p.opts.Source.Get(ctx, runs[i].ID)
				if err != nil {
					if !errors.Is(err, orchestrator.ErrRunNotFound) && ctx.Err() == nil {
						mu.Lock()
						failed++
						firstErr = cmpErr(firstErr, err)
						mu.Unlock()
					}
					return
				}
				x := p.rows.put(r)
				extras[i] = &x
			})
		}
		wg.Wait()
		if failed > 0 {
			p.log.Warn("status page: runs read without details", "runs", failed, "err", firstErr)
		}
	}
	rows := make([]rowView, len(runs))
	for i, s := range runs {
		rows[i] = makeRow(s, extras[i], now)
	}
	return rows
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// listError maps a List error to a status and a message for people.
func (p *Page) listError(err error) (int, string) {
	switch {
	case errors.Is(err, orchestrator.ErrIndexLoading):
		return http.StatusServiceUnavailable, "The run index is still loading. This page fills in as soon as it is ready."
	case errors.Is(err, orchestrator.ErrBadCursor):
		return http.StatusBadRequest, "That page link is not valid (bad cursor). Start again from the newest runs."
	case errors.Is(err, orchestrator.ErrInvalid):
		return http.StatusBadRequest, err.Error()
	}
	p.log.Error("status page: list runs", "err", err)
	return http.StatusInternalServerError, "The runs could not be read: " + err.Error()
}

// runsView is the runs page.
type runsView struct {
	Pipelines  []string
	States     []string
	Pipeline   string
	State      string
	Limit      int
	LimitParam bool // the page size is not the default
	Cursor     string
	Rows       []rowView
	FirstHref  string
	NextHref   string
	EventsHref string
	Error      string
	// Filtered is true when a pipeline or state filter is set.
	Filtered bool
}

func (p *Page) runs(w http.ResponseWriter, r *http.Request) {
	if !p.gate(w, r, "runs", "Runs") {
		return
	}
	now := time.Now()
	q := r.URL.Query()
	v := runsView{
		Pipelines: slices.Sorted(maps.Keys(p.opts.Source.Pipelines())),
		Pipeline:  q.Get("pipeline"), State: q.Get("state"), Cursor: q.Get("cursor"), Limit: p.opts.PageSize,
	}
	for _, s := range orchestrator.States {
		v.States = append(v.States, string(s))
	}
	v.Filtered = v.Pipeline != "" || v.State != ""
	status := http.StatusOK
	if v.State != "" && !orchestrator.State(v.State).Valid() {
		status, v.Error = http.StatusBadRequest, fmt.Sprintf("%q is not a run state.", v.State)
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxPageSize {
			status, v.Error = http.StatusBadRequest, fmt.Sprintf("The page size %q must be a number from 1 to %d.", l, maxPageSize)
		} else {
			v.Limit = n
		}
	}
	filter := url.Values{}
	if v.Pipeline != "" {
		filter.Set("pipeline", v.Pipeline)
	}
	if v.State != "" {
		filter.Set("state", v.State)
	}
	if v.Limit != p.opts.PageSize {
		v.LimitParam = true
		filter.Set("limit", strconv.Itoa(v.Limit))
	}
	v.FirstHref = "/" + querySuffix(filter)
	v.EventsHref = "/ui/events" + querySuffix(filter)
	if v.Error == "" {
		list, err := p.opts.Source.List(orchestrator.ListOptions{
			Pipeline: v.Pipeline, State: orchestrator.State(v.State), Limit: v.Limit, Cursor: v.Cursor,
		})
		if err != nil {
			status, v.Error = p.listError(err)
		} else {
			v.Rows = p.rowsFor(r.Context(), list.Runs, now)
			if list.NextCursor != "" {
				next := maps.Clone(filter)
				next.Set("cursor", list.NextCursor)
				v.NextHref = "/?" + next.Encode()
			}
		}
	}
	p.render(w, r, view{Page: "runs", Title: "Runs", Status: status, Content: v})
}

func querySuffix(v url.Values) string {
	if len(v) == 0 {
		return ""
	}
	return "?" + v.Encode()
}

// runView is the run detail page.
type runView struct {
	Row        rowView
	Key        string
	Endpoint   string
	Attempts   int
	Duplicates int
	Created    time.Time
	Updated    time.Time
	Duration   string
	JobStatus  string
	Errors     []labelled
	Timeline   []transitionView
	Decision   *decisionView
	Request    *requestView
	Online     *onlineView
	Event      eventView
	Previous   []jobView
	ActionsURL string
	CanCancel  bool
	CanRetry   bool
	CanResolve bool
}

type labelled struct {
	Label string
	Text  string
}

type transitionView struct {
	State  string
	At     time.Time
	Offset string // since the first entry
	Reason string
}

type decisionView struct {
	Verdict string
	Reason  string
	At      time.Time
	Access  []datastores.Access
	Checks  []datastores.Check
}

type ioView struct {
	Name  string
	Type  string
	URI   string
	Value string
	Mode  string
}

type requestView struct {
	Inputs     []ioView
	Outputs    []ioView
	Deployment string
	Experiment string
	RequestID  string
	Settings   []labelled
	JSON       string
}

// onlineView is the scoring request and answer of a run on an online
// endpoint (such a run has no job).
type onlineView struct {
	RequestID        string
	Deployment       string
	Request          string
	RequestBytes     int
	RequestTruncated bool
	Response         *orchestrator.OnlineResponse
	Latency          string
}

type eventView struct {
	Source   string
	Time     time.Time
	Blob     []labelled
	Files    []string
	Schedule []labelled
	Message  []labelled
	Data     string
	Fields   []labelled
}

type jobView struct {
	JobName     string
	StudioURL   string
	Status      string
	Error       string
	SubmittedAt time.Time
	FinishedAt  time.Time
}

func (p *Page) run(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !p.gate(w, r, "run", "Run "+shortID(id)) {
		return
	}
	run, err := p.opts.Source.Get(r.Context(), id)
	if err != nil {
		if errors.Is(err, orchestrator.ErrRunNotFound) {
			p.render(w, r, view{Page: "error", Title: "Run not found", Status: http.StatusNotFound,
				Content: errorView{Heading: "Run not found", Message: "The ledger holds no run " + id + ". Finished runs leave it after the retention period."}})
			return
		}
		p.log.Error("status page: get run", "run", id, "err", err)
		p.render(w, r, view{Page: "error", Title: "Error", Status: http.StatusServiceUnavailable,
			Content: errorView{Heading: "The run could not be read", Message: err.Error()}})
		return
	}
	now := time.Now()
	x := p.rows.put(run)
	v := runView{
		Row: makeRow(orchestrator.Summarize(run), &x, now), Key: run.Key, Endpoint: run.Endpoint,
		Attempts: run.Attempts, Duplicates: run.Duplicates, Created: run.Created, Updated: run.Updated,
		Duration:   "not finished",
		ActionsURL: p.opts.APIPrefix + "/runs/" + url.PathEscape(run.ID),
	}
	if d, ok := runDuration(run); ok {
		v.Duration = durText(d)
	}
	if run.Job != nil {
		v.JobStatus = string(run.Job.Status)
	}
	if run.Error != "" {
		v.Errors = append(v.Errors, labelled{"Run", run.Error})
	}
	if run.Job != nil && run.Job.Error != "" && run.Job.Error != run.Error {
		v.Errors = append(v.Errors, labelled{"Job " + run.Job.Name, run.Job.Error})
	}
	for i, tr := range run.History {
		tv := transitionView{State: string(tr.State), At: tr.At, Reason: tr.Reason}
		if i > 0 {
			tv.Offset = "+" + durText(tr.At.Sub(run.History[0].At))
		}
		v.Timeline = append(v.Timeline, tv)
	}
	if d := run.Decision; d != nil {
		dv := &decisionView{Verdict: string(d.Verdict), Reason: d.Reason, At: d.At, Checks: d.Checks}
		for _, a := range d.Access {
			a.URI = redactURI(a.URI)
			dv.Access = append(dv.Access, a)
		}
		v.Decision = dv
	}
	if run.Request != nil {
		v.Request = requestOf(run.Request)
	}
	if oc := run.Online; oc != nil {
		v.Online = &onlineView{RequestID: oc.RequestID, Deployment: oc.Deployment, Request: oc.Request,
			RequestBytes: oc.RequestBytes, RequestTruncated: oc.RequestTruncated, Response: oc.Response}
		if oc.Response != nil {
			v.Online.Latency = durText(time.Duration(oc.Response.LatencyMS * float64(time.Millisecond)))
		}
	}
	v.Event = eventOf(run.Event)
	for _, j := range run.PreviousJobs {
		v.Previous = append(v.Previous, jobView{JobName: j.Name, StudioURL: safeURL(j.StudioURL), Status: string(j.Status),
			Error: j.Error, SubmittedAt: j.SubmittedAt, FinishedAt: j.FinishedAt})
	}
	// Mirrors the orchestrator's rules, so that only buttons that can work
	// are offered; the API decides and explains in any case.
	switch st := run.State; {
	case st.Terminal():
		v.CanRetry = true
	case st == orchestrator.StateUnknown:
		v.CanRetry, v.CanResolve = true, true
	case st == orchestrator.StateSubmitting:
	default:
		v.CanCancel, v.CanResolve = true, true
	}
	p.render(w, r, view{Page: "run", Title: "Run " + shortID(run.ID), Content: v})
}

func requestOf(req *jobs.JobRequest) *requestView {
	rv := &requestView{Deployment: req.Deployment, Experiment: req.ExperimentName, RequestID: req.RequestID}
	shown := jobs.JobRequest{Inputs: map[string]jobs.Input{}, Deployment: req.Deployment,
		ExperimentName: req.ExperimentName, Settings: req.Settings, RequestID: req.RequestID}
	for _, n := range slices.Sorted(maps.Keys(req.Inputs)) {
		in := req.Inputs[n]
		in.URI = redactURI(in.URI)
		shown.Inputs[n] = in
		rv.Inputs = append(rv.Inputs, ioView{Name: n, Type: in.Type, URI: in.URI, Value: in.Value, Mode: in.Mode})
	}
	if len(req.Outputs) > 0 {
		shown.Outputs = map[string]jobs.Output{}
	}
	for _, n := range slices.Sorted(maps.Keys(req.Outputs)) {
		out := req.Outputs[n]
		out.URI = redactURI(out.URI)
		shown.Outputs[n] = out
		rv.Outputs = append(rv.Outputs, ioView{Name: n, Type: out.Type, URI: out.URI, Mode: out.Mode})
	}
	s := req.Settings
	if s.MiniBatchSize != nil {
		rv.Settings = append(rv.Settings, labelled{"Mini-batch size", strconv.FormatInt(*s.MiniBatchSize, 10)})
	}
	if s.InstanceCount != nil {
		rv.Settings = append(rv.Settings, labelled{"Instance count", strconv.Itoa(*s.InstanceCount)})
	}
	if s.ErrorThreshold != nil {
		rv.Settings = append(rv.Settings, labelled{"Error threshold", strconv.Itoa(*s.ErrorThreshold)})
	}
	if s.MaxRetries != nil {
		rv.Settings = append(rv.Settings, labelled{"Max retries", strconv.Itoa(*s.MaxRetries)})
	}
	if s.RetryTimeout != nil {
		rv.Settings = append(rv.Settings, labelled{"Retry timeout", s.RetryTimeout.String()})
	}
	if b, err := json.MarshalIndent(shown, "", "  "); err == nil {
		rv.JSON = string(b)
	}
	return rv
}

// maxShownData bounds the message body shown on the detail page.
const maxShownData = 4096

func eventOf(ev orchestrator.Event) eventView {
	v := eventView{Source: ev.Source, Time: ev.Time}
	if b := ev.Blob; b != nil {
		add := func(label, val string) {
			if val != "" {
				v.Blob = append(v.Blob, labelled{label, val})
			}
		}
		add("URL", redactURI(b.URL))
		add("Account", b.Account)
		add("Container", b.Container)
		add("Blob", b.Name)
		add("Folder", b.Folder)
		add("ETag", b.ETag)
		if b.Size > 0 {
			add("Size", strconv.FormatInt(b.Size, 10)+" bytes")
		}
		add("API", b.API)
		add("Sequencer", b.Sequencer)
		v.Files = b.Files
	}
	if s := ev.Schedule; s != nil {
		v.Schedule = append(v.Schedule, labelled{"Slot", clockTime(s.Time)})
		if !s.Previous.IsZero() {
			v.Schedule = append(v.Schedule, labelled{"Previous slot", clockTime(s.Previous)})
		}
	}
	if m := ev.Message; m != nil {
		v.Message = append(v.Message, labelled{"Subject", m.Subject})
		if m.Stream != "" {
			v.Message = append(v.Message, labelled{"Stream", m.Stream + " #" + strconv.FormatUint(m.Sequence, 10)})
		}
		for _, h := range slices.Sorted(maps.Keys(m.Headers)) {
			val := m.Headers[h]
			if secretHeader(h) {
				val = redacted
			}
			v.Message = append(v.Message, labelled{"Header " + h, val})
		}
		d := string(m.Data)
		if len(d) > maxShownData {
			d = d[:maxShownData] + "\n… (" + strconv.Itoa(len(m.Data)) + " bytes in all)"
		}
		v.Data = d
	}
	for _, k := range slices.Sorted(maps.Keys(ev.Fields)) {
		v.Fields = append(v.Fields, labelled{k, ev.Fields[k]})
	}
	return v
}

// pipelinesView is the pipelines page.
type pipelinesView struct {
	Pipelines []pipelineView
	// Scanned counts the runs read for the 24 h counts; Capped is true
	// when the window held more than maxScan runs.
	Scanned int
	Capped  bool
	Error   string
}

type pipelineView struct {
	Name           string
	Trigger        string
	Endpoint       string
	MaxRunningJobs int
	// NextFires is nil when not available (no NextFires function).
	NextFires      []time.Time
	FiresAvailable bool
	Last           *rowView
	Counts         []stateCount
	Total          int
	RunsHref       string
}

type stateCount struct {
	State string
	N     int
	Href  string
}

func (p *Page) pipelines(w http.ResponseWriter, r *http.Request) {
	if !p.gate(w, r, "pipelines", "Pipelines") {
		return
	}
	now := time.Now()
	conf := p.opts.Source.Pipelines()
	v := pipelinesView{}
	status := http.StatusOK

	// One pass over the index, newest first, stopping at 24 h: every
	// pipeline's counts and last run at once.
	counts := map[string]map[orchestrator.State]int{}
	last := map[string]orchestrator.RunSummary{}
	since := now.Add(-window24h)
	cursor := ""
scan:
	for {
		list, err := p.opts.Source.List(orchestrator.ListOptions{Limit: 1000, Cursor: cursor})
		if err != nil {
			status, v.Error = p.listError(err)
			break
		}
		for _, s := range list.Runs {
			if s.Created.Before(since) {
				break scan
			}
			if v.Scanned >= maxScan {
				v.Capped = true
				break scan
			}
			v.Scanned++
			if counts[s.Pipeline] == nil {
				counts[s.Pipeline] = map[orchestrator.State]int{}
				last[s.Pipeline] = s
			}
			counts[s.Pipeline][s.State]++
		}
		if list.NextCursor == "" {
			break
		}
		cursor = list.NextCursor
	}

	var lastRuns []orchestrator.RunSummary
	for _, name := range slices.Sorted(maps.Keys(conf)) {
		pl := conf[name]
		pv := pipelineView{Name: name, Trigger: pl.Trigger, Endpoint: pl.Endpoint.Name,
			MaxRunningJobs: pl.Endpoint.MaxRunningJobs, RunsHref: "/?" + url.Values{"pipeline": {name}}.Encode()}
		if pl.Trigger == "cron" && p.opts.NextFires != nil {
			pv.FiresAvailable = true
			pv.NextFires = p.opts.NextFires(name, nextFires)
		}
		for _, st := range orchestrator.States {
			if n := counts[name][st]; n > 0 {
				pv.Counts = append(pv.Counts, stateCount{State: string(st), N: n,
					Href: "/?" + url.Values{"pipeline": {name}, "state": {string(st)}}.Encode()})
				pv.Total += n
			}
		}
		s, ok := last[name]
		if !ok && v.Error == "" {
			// Nothing in the window: the newest run ever, if any.
			if l, err := p.opts.Source.List(orchestrator.ListOptions{Pipeline: name, Limit: 1}); err == nil && len(l.Runs) > 0 {
				s, ok = l.Runs[0], true
			}
		}
		if ok {
			lastRuns = append(lastRuns, s)
		} else {
			lastRuns = append(lastRuns, orchestrator.RunSummary{})
		}
		v.Pipelines = append(v.Pipelines, pv)
	}
	var present []orchestrator.RunSummary
	for _, s := range lastRuns {
		if s.ID != "" {
			present = append(present, s)
		}
	}
	rows := p.rowsFor(r.Context(), present, now)
	j := 0
	for i, s := range lastRuns {
		if s.ID != "" {
			v.Pipelines[i].Last = &rows[j]
			j++
		}
	}
	p.render(w, r, view{Page: "pipelines", Title: "Pipelines", Status: status, Content: v})
}

// endpointsView is the endpoints page.
type endpointsView struct {
	Endpoints []endpointView
	// Available is false without Options.Endpoints: running jobs are then
	// counted from the run index, and pause and budget are not known.
	Available bool
	Capped    bool
	Error     string
	// Replicas is the replica registry's view (nil without
	// Options.Replicas).
	Replicas *orchestrator.ReplicaList
}

type endpointView struct {
	Name          string
	Host          string
	Online        bool
	MaxConcurrent int
	// Reported is true when Options.Endpoints returned this endpoint.
	Reported       bool
	Pipelines      []string
	RunningJobs    int
	MaxRunningJobs int
	Full           bool
	Paused         bool
	PausedUntil    time.Time
	PausedIn       string
	PauseReason    string
	PollBudget     float64
	PollInUse      float64
	PollKnown      bool
	PollPercent    int
}

func (p *Page) endpoints(w http.ResponseWriter, r *http.Request) {
	if !p.gate(w, r, "endpoints", "Endpoints") {
		return
	}
	now := time.Now()
	status := http.StatusOK
	byName := map[string]*endpointView{}
	v := endpointsView{Available: p.opts.Endpoints != nil}
	conf := p.opts.Source.Pipelines()
	for _, name := range slices.Sorted(maps.Keys(conf)) {
		ep := conf[name].Endpoint
		e := byName[ep.Name]
		if e == nil {
			e = &endpointView{Name: ep.Name, MaxRunningJobs: ep.MaxRunningJobs,
				Online: ep.Kind == orchestrator.EndpointOnline, MaxConcurrent: ep.MaxConcurrentRequests}
			if u, err := url.Parse(ep.ScoringURI); err == nil {
				e.Host = u.Host
			}
			byName[ep.Name] = e
		}
		e.Pipelines = append(e.Pipelines, name)
	}
	if p.opts.Endpoints != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		list, err := p.opts.Endpoints(ctx)
		cancel()
		if err != nil {
			p.log.Error("status page: endpoints", "err", err)
			status, v.Error = http.StatusServiceUnavailable, "The endpoints' admission state could not be read: "+err.Error()
		}
		for _, st := range list {
			e := byName[st.Name]
			if e == nil {
				e = &endpointView{Name: st.Name}
				byName[st.Name] = e
			}
			e.Reported = true
			e.RunningJobs, e.MaxRunningJobs = st.RunningJobs, st.MaxRunningJobs
			if st.PausedUntil.After(now) {
				e.Paused, e.PausedUntil, e.PausedIn, e.PauseReason = true, st.PausedUntil, untilText(now, st.PausedUntil), st.PauseReason
			}
			e.PollBudget, e.PollInUse, e.PollKnown = st.PollBudget, st.PollBudgetInUse, st.PollBudgetInUse >= 0
			if e.PollKnown && st.PollBudget > 0 {
				e.PollPercent = min(100, int(st.PollBudgetInUse/st.PollBudget*100+0.5))
			}
		}
	} else {
		capped, err := p.countActive(byName)
		if err != nil {
			status, v.Error = p.listError(err)
		}
		v.Capped = capped
	}
	if p.opts.Replicas != nil {
		l := p.opts.Replicas()
		v.Replicas = &l
	}
	for _, name := range slices.Sorted(maps.Keys(byName)) {
		e := byName[name]
		e.Full = e.MaxRunningJobs > 0 && e.RunningJobs >= e.MaxRunningJobs
		v.Endpoints = append(v.Endpoints, *e)
	}
	p.render(w, r, view{Page: "endpoints", Title: "Endpoints", Status: status, Content: v})
}

// activeStates are the states in which a run holds (or is about to hold)
// a job on its endpoint.
var activeStates = []orchestrator.State{orchestrator.StateSubmitting, orchestrator.StateSubmitted, orchestrator.StateRunning}

// countActive counts, per endpoint, the runs of the index in an active
// state: the fallback for running jobs when the orchestrator's admission
// state is not wired in.
func (p *Page) countActive(byName map[string]*endpointView) (capped bool, err error) {
	seen := 0
	for _, st := range activeStates {
		cursor := ""
		for {
			list, err := p.opts.Source.List(orchestrator.ListOptions{State: st, Limit: 1000, Cursor: cursor})
			if err != nil {
				return false, err
			}
			for _, s := range list.Runs {
				if seen >= maxScan {
					return true, nil
				}
				seen++
				if e := byName[s.Endpoint]; e != nil {
					e.RunningJobs++
				}
			}
			if list.NextCursor == "" {
				break
			}
			cursor = list.NextCursor
		}
	}
	return false, nil
}

// stateLabel is the text shown for a state (the state's own name, with
// the underscore of timed_out as a space).
func stateLabel(s string) string { return strings.ReplaceAll(s, "_", " ") }
