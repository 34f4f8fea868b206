package statuspage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/batchd/batchd/orchestrator"
)

// runEvent is the data of one "run" event.
type runEvent struct {
	ID       string `json:"id"`
	Pipeline string `json:"pipeline,omitempty"`
	State    string `json:"state,omitempty"`
	// Created is the run's creation time in Unix milliseconds (the table's
	// order).
	Created int64 `json:"created,omitempty"`
	// Match is whether the run passes the stream's filters.
	Match bool `json:"match"`
	// Removed is true when the run left the ledger (retention).
	Removed bool `json:"removed,omitempty"`
	// Row is the run's table row, rendered by the page's template.
	Row string `json:"row,omitempty"`
}

// maxBatch bounds the changes coalesced into one write.
const maxBatch = 256

// events streams ledger changes as server-sent events until the client
// goes away or StopStreams is called.
func (p *Page) events(w http.ResponseWriter, r *http.Request) {
	switch p.access(r) {
	case accessShell, accessDenied:
		w.Header().Set("WWW-Authenticate", `Bearer realm="batchd"`)
		http.Error(w, "a valid API token is required: Authorization: Bearer <BATCHD_API_TOKEN>", http.StatusUnauthorized)
		return
	}
	select {
	case <-p.stop:
		http.Error(w, "the server is shutting down", http.StatusServiceUnavailable)
		return
	default:
	}
	q := r.URL.Query()
	pipeline, state := q.Get("pipeline"), orchestrator.State(q.Get("state"))
	if state != "" && !state.Valid() {
		http.Error(w, fmt.Sprintf("state %q is not a run state", state), http.StatusBadRequest)
		return
	}
	select {
	case p.streams <- struct{}{}:
		defer func() { <-p.streams }()
	default:
		w.Header().Set("Retry-After", "10")
		http.Error(w, fmt.Sprintf("too many live streams are open (%d); try again later", cap(p.streams)), http.StatusServiceUnavailable)
		return
	}
	rc := http.NewResponseController(w)

	// Subscribe before saying hello: the client re-reads the page after
	// hello, so nothing between its page and this subscription is lost.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	changes := p.opts.Source.Watch(ctx, p.opts.WatchBuffer)

	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	// The server's WriteTimeout would cut a stream; each write gets its own
	// deadline instead (a client that stops reading is dropped after it).
	writeTimeout := max(2*p.opts.Heartbeat, 30*time.Second)
	send := func(b []byte) bool {
		if err := rc.SetWriteDeadline(time.Now().Add(writeTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		if _, err := w.Write(b); err != nil {
			return false
		}
		if err := rc.Flush(); err != nil {
			return false
		}
		return true
	}
	if !send([]byte("retry: 3000\nevent: hello\ndata: {}\n\n")) {
		return
	}
	tick := time.NewTicker(p.opts.Heartbeat)
	defer tick.Stop()
	var buf bytes.Buffer
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.stop:
			return
		case <-tick.C:
			if !send([]byte(": ping\n\n")) {
				return
			}
		case c, ok := <-changes:
			if !ok {
				return
			}
			// The buffer was full before this receive: changes may have been
			// dropped, so the client must re-read.
			resync := len(changes)+1 >= cap(changes)
			// Coalesce what is already queued: the latest state of each run.
			batch := map[string]orchestrator.RunChange{c.ID: c}
			order := []string{c.ID}
		drain:
			for len(batch) < maxBatch {
				select {
				case c, ok := <-changes:
					if !ok {
						break drain
					}
					if _, seen := batch[c.ID]; !seen {
						order = append(order, c.ID)
					}
					batch[c.ID] = c
				default:
					break drain
				}
			}
			buf.Reset()
			if resync {
				buf.WriteString("event: resync\ndata: {}\n\n")
			}
			now := time.Now()
			for _, id := range order {
				if err := p.writeRunEvent(&buf, batch[id], pipeline, state, now); err != nil {
					p.log.Error("status page: render event", "run", id, "err", err)
				}
			}
			if !send(buf.Bytes()) {
				return
			}
		}
	}
}

func (p *Page) writeRunEvent(buf *bytes.Buffer, c orchestrator.RunChange, pipeline string, state orchestrator.State, now time.Time) error {
	ev := runEvent{ID: c.ID}
	if c.Run == nil {
		ev.Removed = true
	} else {
		run := c.Run
		x := p.rows.put(run)
		s := orchestrator.Summarize(run)
		ev.Pipeline, ev.State, ev.Created = run.Pipeline, string(run.State), run.Created.UnixMilli()
		ev.Match = (pipeline == "" || run.Pipeline == pipeline) && (state == "" || run.State == state)
		var row bytes.Buffer
		if err := p.pages["runs"].ExecuteTemplate(&row, "row", makeRow(s, &x, now)); err != nil {
			return err
		}
		ev.Row = row.String()
	}
	b, err := json.Marshal(ev)
	if err != nil {
		return err
	}
	// json.Marshal output has no newline, so it is one data line.
	buf.WriteString("event: run\ndata: ")
	buf.Write(b)
	buf.WriteString("\n\n")
	return nil
}
