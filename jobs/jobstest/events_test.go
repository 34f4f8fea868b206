package jobstest_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/batchd/batchd/jobs/jobstest"
)

// webhookRecorder records the events POSTed to it; it answers fail
// first, then 200.
type webhookRecorder struct {
	mu     sync.Mutex
	fail   int
	posts  int
	events []map[string]any
}

func (w *webhookRecorder) ServeHTTP(rw http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.posts++
	if w.fail > 0 {
		w.fail--
		rw.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var evs []map[string]any
	if err := json.Unmarshal(b, &evs); err != nil {
		rw.WriteHeader(http.StatusBadRequest)
		return
	}
	w.events = append(w.events, evs...)
}

func (w *webhookRecorder) statuses(job string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for _, ev := range w.events {
		data, _ := ev["data"].(map[string]any)
		if data["runId"] != job {
			continue
		}
		typ, _ := ev["eventType"].(string)
		if st, ok := data["runStatus"].(string); ok {
			out = append(out, strings.TrimPrefix(typ, "Microsoft.MachineLearningServices.")+":"+st)
		} else {
			out = append(out, strings.TrimPrefix(typ, "Microsoft.MachineLearningServices."))
		}
	}
	return out
}

// A job's status changes arrive as workspace events, in the Event Grid
// schema, even when nobody reads the job; a failed delivery is retried.
func TestSimEmitsWorkspaceEvents(t *testing.T) {
	rec := &webhookRecorder{fail: 1}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	sim := jobstest.New(t, jobstest.Options{Lifecycle: jobstest.Timed(50 * time.Millisecond)})
	sim.EmitEvents(t.Context(), jobstest.EventOptions{URL: srv.URL})
	tok := sim.Token(jobstest.AudienceML, "", "", time.Hour)
	got := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil)
	name, _ := got.body["name"].(string)
	if got.status != 200 || name == "" {
		t.Fatalf("create: %d %v", got.status, got.body)
	}
	want := []string{"RunStatusChanged:NotStarted", "RunStatusChanged:Queued", "RunStatusChanged:Running",
		"RunStatusChanged:Finalizing", "RunStatusChanged:Completed", "RunCompleted"}
	deadline := time.Now().Add(10 * time.Second)
	for sim.EventStats().Delivered < int64(len(want)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling to a deadline
	}
	// The retried first delivery may arrive after later ones, as with
	// Event Grid: compare the sets.
	if diff := cmp.Diff(want, rec.statuses(name), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	st := sim.EventStats()
	if st.Events != 6 || st.Delivered != 6 || st.Retried == 0 || st.Lost != 0 {
		t.Errorf("stats %+v; want 6 events, 6 delivered, a retry after the 503", st)
	}
	rec.mu.Lock()
	ev := rec.events[0]
	rec.mu.Unlock()
	ws := sim.Workspace()
	if topic := ev["topic"]; topic != "/subscriptions/"+ws.Subscription+"/resourceGroups/"+ws.ResourceGroup+"/providers/Microsoft.MachineLearningServices/workspaces/"+ws.Name {
		t.Errorf("topic %v", topic)
	}
	if subj, _ := ev["subject"].(string); !strings.HasPrefix(subj, "experiments/") || !strings.HasSuffix(subj, "/runs/"+name) {
		t.Errorf("subject %q, want experiments/<id>/runs/%s", subj, name)
	}
}

// LossRate 1 delivers nothing; DuplicateRate 1 delivers everything twice.
func TestSimEventFaults(t *testing.T) {
	for _, tc := range []struct {
		name       string
		opts       jobstest.EventOptions
		wantEvents int
	}{
		{"lost", jobstest.EventOptions{LossRate: 1}, 0},
		{"duplicated", jobstest.EventOptions{DuplicateRate: 1, Jitter: 20 * time.Millisecond}, 12},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &webhookRecorder{}
			srv := httptest.NewServer(rec)
			defer srv.Close()
			sim := jobstest.New(t, jobstest.Options{Lifecycle: jobstest.Timed(50 * time.Millisecond)})
			tc.opts.URL = srv.URL
			sim.EmitEvents(t.Context(), tc.opts)
			tok := sim.Token(jobstest.AudienceML, "", "", time.Hour)
			if got := call(t, sim, "POST", sim.ScoringURI("ep"), tok, body, nil); got.status != 200 {
				t.Fatalf("create: %d", got.status)
			}
			deadline := time.Now().Add(10 * time.Second)
			for sim.EventStats().Events < 6 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			for sim.EventStats().Delivered < int64(tc.wantEvents) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			rec.mu.Lock()
			n := len(rec.events)
			rec.mu.Unlock()
			if n != tc.wantEvents {
				t.Errorf("%d events delivered, want %d (stats %+v)", n, tc.wantEvents, sim.EventStats())
			}
		})
	}
}
