package main

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/batchd/batchd/cmd/internal/cmdutil"
	"github.com/batchd/batchd/orchestrator"
	"github.com/batchd/batchd/orchestrator/apiclient"
)

// devProgressPage is how many of the newest runs each poll reads. Runs
// still in flight are among the newest in a demo; an older run that
// changes is still in `batchd runs list`.
const devProgressPage = 200

// followRuns prints one line per run state change until ctx ends. It polls
// GET /api/v1/runs (the completion stream on NATS carries only terminal
// states): simple, and what any client of the API sees.
func (d *devRun) followRuns(ctx context.Context) {
	cl := apiclient.New(d.state.URL, "", nil)
	p := newProgress(d.state.Started)
	every := d.o.timings().progressEvery
	for {
		if list, err := cl.ListRuns(ctx, orchestrator.ListOptions{Limit: devProgressPage}); err == nil {
			for _, l := range p.update(list.Runs) {
				d.out.line(l)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// progress remembers what it printed for each run.
type progress struct {
	seen  map[string]string // run id → the last printed state and job status
	since time.Time         // runs created before and already finished are from an earlier session
	first bool
}

func newProgress(since time.Time) *progress {
	return &progress{seen: map[string]string{}, since: since, first: true}
}

// update returns the lines for the runs that are new or changed since the
// last call, oldest first. On the first call, runs of an earlier session
// (a kept state) that had finished are summed up in one line instead.
func (p *progress) update(runs []orchestrator.RunSummary) []string {
	var changed []orchestrator.RunSummary
	var isNew []bool
	first := p.first
	p.first = false
	earlier := 0
	for _, r := range slices.Backward(runs) { // the API lists newest first
		mark := string(r.State)
		if r.Job != nil {
			mark += "/" + string(r.Job.Status)
		}
		prev, known := p.seen[r.ID]
		if prev == mark {
			continue
		}
		p.seen[r.ID] = mark
		if first && r.State.Terminal() && r.Created.Before(p.since) {
			earlier++
			continue
		}
		changed = append(changed, r)
		isNew = append(isNew, !known)
	}
	// In the order the changes happened (runs are listed by creation).
	order := make([]int, len(changed))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int { return changed[a].Updated.Compare(changed[b].Updated) })
	lines := make([]string, 0, len(changed)+1)
	for _, i := range order {
		lines = append(lines, progressLine(changed[i], isNew[i]))
	}
	if earlier > 0 {
		lines = slices.Insert(lines, 0, fmt.Sprintf("%s  %-11s %d finished runs from earlier (batchd runs list)", time.Now().Format("15:04:05"), "", earlier))
	}
	return lines
}

// progressLine is one run's state, e.g.
//
//	12:00:01  uploads     6c1fd0a3b1e2…(32 hex)  submitted  job=… (Queued)
//
// The first line of a run says where it came from.
func progressLine(r orchestrator.RunSummary, first bool) string {
	pipeline := r.Pipeline
	if pipeline == "" {
		pipeline = "-"
	}
	at := r.Updated
	if at.IsZero() {
		at = time.Now()
	}
	detail := progressDetail(r)
	if first && r.State != orchestrator.StateReceived && r.Source != "" {
		detail = strings.TrimSpace(detail + " · from " + r.Source + describeKey(r))
	}
	return strings.TrimRight(fmt.Sprintf("%s  %-11s %s  %-10s %s", at.Local().Format("15:04:05"), pipeline, r.ID, r.State, detail), " ")
}

func progressDetail(r orchestrator.RunSummary) string {
	job := ""
	if r.Job != nil && r.Job.Name != "" {
		job = "job=" + r.Job.Name
	}
	switch r.State {
	case orchestrator.StateReceived:
		return "from " + r.Source + describeKey(r)
	case orchestrator.StateSubmitting:
		return "posting the job to " + cmdutil.Dash(r.Endpoint)
	case orchestrator.StateSubmitted, orchestrator.StateRunning:
		if r.Job != nil && r.Job.Status != "" {
			return job + " (" + string(r.Job.Status) + ")"
		}
		return job
	case orchestrator.StateCompleted:
		return strings.TrimSpace(job + " in " + r.Updated.Sub(r.Created).Round(100*time.Millisecond).String())
	case orchestrator.StateFailed, orchestrator.StateCanceled, orchestrator.StateTimedOut:
		msg := r.Error
		if msg == "" {
			msg = r.Reason
		}
		return strings.TrimSpace(job + " " + oneLine(msg))
	default: // rejected, filtered, duplicate, waiting, unknown: the reason says why
		return oneLine(r.Reason)
	}
}

// describeKey names what a received run is about: the blob for blob
// events, nothing for others (their key is an opaque hash or a slot).
func describeKey(r orchestrator.RunSummary) string {
	switch r.Source {
	case orchestrator.SourceEventGrid, orchestrator.SourcePoll:
		raw, _, _ := strings.Cut(r.Key, "@")
		if u, err := url.Parse(raw); err == nil {
			// Path-style (Azurite): /<account>/<container>/<name>.
			parts := strings.SplitN(strings.TrimPrefix(u.Path, "/"), "/", 2)
			if len(parts) == 2 && !strings.Contains(u.Host, ".blob.") {
				return " " + parts[1]
			}
			return " " + strings.TrimPrefix(u.Path, "/")
		}
	case orchestrator.SourceCron:
		return " slot " + strings.TrimPrefix(r.Key, "slot:")
	}
	return ""
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 240 {
		s = s[:240] + "…"
	}
	return s
}
